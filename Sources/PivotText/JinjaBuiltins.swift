import Foundation

// The filters, tests and methods templates call, each as jinja2 3.1 and Python 3 define it.

enum JinjaFilters {
  static func apply(_ name: String, _ value: JinjaValue, _ arguments: JinjaArguments, interpreter: JinjaInterpreter)
    throws -> JinjaValue
  {
    let limit = interpreter.limits.maxOutputBytes
    func sized(_ text: String) throws -> JinjaValue {
      guard text.utf8.count <= limit else { throw JinjaOperators.tooLarge(limit) }
      return .string(text)
    }
    func text(_ v: JinjaValue) throws -> String { try PythonText.str(v) }
    switch name {
    case "abs":
      _ = try arguments.bind(name, [], [])
      switch value {
      case .bool, .int: return try JinjaOperators.binary("*", value, .int(value.integer! < 0 ? -1 : 1), limit: limit)
      case .float(let d): return .float(abs(d))
      case .undefined(let hint): throw JinjaFailure(hint)
      default: throw JinjaFailure("bad operand type for abs(): '\(value.typeName)'")
      }
    case "attr":
      let a = try arguments.bind(name, ["name"], [nil])
      return try JinjaOperators.attribute(value, try text(a[0]))
    case "capitalize":
      return .string(PythonText.capitalize(try text(value)))
    case "center":
      let a = try arguments.bind(name, ["width"], [.int(80)])
      return try sized(PythonText.pad(try text(value), width: a[0].integer ?? 80, align: "^", fill: " "))
    case "count", "length":
      return .int(try JinjaOperators.length(value))
    case "d", "default":
      let a = try arguments.bind(name, ["default_value", "boolean"], [.string(""), .bool(false)])
      if value.isUndefined || (a[1].truthy && !value.truthy) { return a[0] }
      return value
    case "dictsort":
      let a = try arguments.bind(
        name, ["case_sensitive", "by", "reverse"], [.bool(false), .string("key"), .bool(false)])
      guard case .dict(let dict) = value else {
        throw JinjaFailure("dictsort requires a mapping, not \(value.typeName)")
      }
      let position: Int
      switch try text(a[1]) {
      case "key": position = 0
      case "value": position = 1
      default: throw JinjaFailure("You can only sort by either \"key\" or \"value\"")
      }
      let pairs = dict.items.map { JinjaValue.tuple([$0.key, $0.value]) }
      return .list(
        try JinjaOperators.sorted(
          pairs,
          key: { pair in
            guard case .tuple(let p) = pair else { return pair }
            return caseFolded(p[position], sensitive: a[0].truthy)
          }, reverse: a[2].truthy))
    case "e", "escape", "forceescape":
      return try sized(PythonText.escapeHTML(try text(value)))
    case "first":
      return try JinjaOperators.iterate(value).first ?? .undefined(hint: "No first item, sequence was empty.")
    case "last":
      return try JinjaOperators.iterate(value).last ?? .undefined(hint: "No last item, sequence was empty.")
    case "float":
      let a = try arguments.bind(name, ["default"], [.float(0)])
      if case .undefined(let hint) = value { throw JinjaFailure(hint) }
      return PythonNumbers.float(value).map { .float($0) } ?? a[0]
    case "format":
      let values: JinjaValue
      if !arguments.keywords.isEmpty {
        var d = JinjaDict()
        for (k, v) in arguments.keywords { d.set(k, v) }
        values = .dict(d)
      } else {
        values = .tuple(arguments.positional)
      }
      return try sized(PythonFormat.percent(try text(value), values, limit: limit))
    case "indent":
      let a = try arguments.bind(name, ["width", "first", "blank"], [.int(4), .bool(false), .bool(false)])
      let indentation: String
      if case .string(let s) = a[0] {
        indentation = s
      } else {
        indentation = String(repeating: " ", count: max(0, a[0].integer ?? 4))
      }
      let lines = PythonText.splitlines(try text(value) + "\n")
      var result: String
      if a[2].truthy {
        result = lines.joined(separator: "\n" + indentation)
      } else {
        result = lines.first ?? ""
        if lines.count > 1 {
          result += "\n" + lines.dropFirst().map { $0.isEmpty ? $0 : indentation + $0 }.joined(separator: "\n")
        }
      }
      if a[1].truthy { result = indentation + result }
      return try sized(result)
    case "int":
      let a = try arguments.bind(name, ["default", "base"], [.int(0), .int(10)])
      if case .undefined(let hint) = value { throw JinjaFailure(hint) }
      return PythonNumbers.int(value, base: a[1].integer ?? 10).map { .int($0) } ?? a[0]
    case "items":
      switch value {
      case .undefined: return .list([])
      case .dict(let d): return .list(d.items.map { .tuple([$0.key, $0.value]) })
      default: throw JinjaFailure("Can only get item pairs from a mapping.")
      }
    case "join":
      let a = try arguments.bind(name, ["d", "attribute"], [.string(""), .null])
      var items = try JinjaOperators.iterate(value)
      if case .null = a[1] {
      } else {
        let getter = try attributeGetter(a[1])
        items = try items.map(getter)
      }
      return try sized(items.map(text).joined(separator: try text(a[0])))
    case "list":
      return .list(try JinjaOperators.iterate(value))
    case "lower":
      return .string(PythonText.lower(try text(value)))
    case "upper":
      return .string(try text(value).uppercased())
    case "map":
      let items = try JinjaOperators.iterate(value)
      if arguments.positional.isEmpty, let attribute = arguments.keywords.first(where: { $0.0 == "attribute" })?.1 {
        let fallback = arguments.keywords.first(where: { $0.0 == "default" })?.1
        let getter = try attributeGetter(attribute)
        return .list(
          try items.map { item in
            let found = try getter(item)
            if found.isUndefined, let fallback { return fallback }
            return found
          })
      }
      guard case .string(let filter)? = arguments.positional.first else {
        throw JinjaFailure("map requires a filter argument")
      }
      guard JinjaParser.filters.contains(filter) else { throw JinjaFailure("No filter named '\(filter)'.") }
      let rest = JinjaArguments(positional: Array(arguments.positional.dropFirst()), keywords: arguments.keywords)
      return .list(try items.map { try apply(filter, $0, rest, interpreter: interpreter) })
    case "max", "min":
      let a = try arguments.bind(name, ["case_sensitive", "attribute"], [.bool(false), .null])
      let items = try JinjaOperators.iterate(value)
      let getter: (JinjaValue) throws -> JinjaValue
      if case .null = a[1] { getter = { $0 } } else { getter = try attributeGetter(a[1]) }
      let ordered = try JinjaOperators.sorted(
        items, key: { caseFolded(try getter($0), sensitive: a[0].truthy) }, reverse: name == "max")
      return ordered.first ?? .undefined(hint: "No aggregated item, sequence was empty.")
    case "reject", "select", "rejectattr", "selectattr":
      let byAttribute = name.hasSuffix("attr")
      let keep = name.hasPrefix("select")
      var rest = arguments.positional
      var getter: (JinjaValue) throws -> JinjaValue = { $0 }
      if byAttribute {
        guard !rest.isEmpty else { throw JinjaFailure("\(name) requires an attribute name") }
        getter = try attributeGetter(rest.removeFirst())
      }
      let test: String? = rest.isEmpty ? nil : try text(rest.removeFirst())
      if let test, !JinjaParser.tests.contains(test) { throw JinjaFailure("No test named '\(test)'.") }
      let testArguments = JinjaArguments(positional: rest, keywords: arguments.keywords)
      return .list(
        try JinjaOperators.iterate(value).filter { item in
          let subject = try getter(item)
          let passed = try test.map { try JinjaTests.run($0, subject, testArguments) } ?? subject.truthy
          return passed == keep
        })
    case "replace":
      let a = try arguments.bind(name, ["old", "new", "count"], [nil, nil, .null])
      return try sized(
        PythonText.replace(try text(value), try text(a[0]), try text(a[1]), count: a[2].integer ?? -1, limit: limit))
    case "reverse":
      if case .string(let s) = value { return .string(PythonText.string(s.unicodeScalars.reversed())) }
      return .list(try JinjaOperators.iterate(value).reversed())
    case "round":
      let a = try arguments.bind(name, ["precision", "method"], [.int(0), .string("common")])
      return try PythonNumbers.round(value, precision: a[0].integer ?? 0, method: try text(a[1]))
    case "safe", "string":
      return .string(try text(value))
    case "sort":
      let a = try arguments.bind(
        name, ["reverse", "case_sensitive", "attribute"], [.bool(false), .bool(false), .null])
      let getter: (JinjaValue) throws -> JinjaValue
      if case .null = a[2] { getter = { $0 } } else { getter = try attributeGetter(a[2]) }
      return .list(
        try JinjaOperators.sorted(
          try JinjaOperators.iterate(value), key: { caseFolded(try getter($0), sensitive: a[1].truthy) },
          reverse: a[0].truthy))
    case "sum":
      let a = try arguments.bind(name, ["attribute", "start"], [.null, .int(0)])
      var items = try JinjaOperators.iterate(value)
      if case .null = a[0] {
      } else {
        let getter = try attributeGetter(a[0])
        items = try items.map(getter)
      }
      return try items.reduce(a[1]) { try JinjaOperators.binary("+", $0, $1, limit: limit) }
    case "title":
      return .string(PythonText.titleFilter(try text(value)))
    case "tojson":
      let a = try arguments.bind(
        name, ["ensure_ascii", "indent", "separators", "sort_keys"], [.bool(false), .null, .null, .bool(false)])
      var indent: String?
      switch a[1] {
      case .null: indent = nil
      case .string(let s): indent = s
      default:
        guard let n = a[1].integer else { throw JinjaFailure("tojson: indent must be an integer or a string") }
        indent = String(repeating: " ", count: max(0, n))
      }
      var separators = indent == nil ? (", ", ": ") : (",", ": ")
      switch a[2] {
      case .null: break
      case .list(let pair), .tuple(let pair):
        guard pair.count == 2 else { throw JinjaFailure("tojson: separators must be a pair of strings") }
        separators = (try text(pair[0]), try text(pair[1]))
      default: throw JinjaFailure("tojson: separators must be a pair of strings")
      }
      var out = ""
      try PythonText.json(
        value,
        style: .init(
          indent: indent, itemSeparator: separators.0, keySeparator: separators.1,
          sortKeys: a[3].truthy, ensureASCII: a[0].truthy), into: &out)
      return try sized(out)
    case "trim":
      let a = try arguments.bind(name, ["chars"], [.null])
      if case .null = a[0] { return .string(PythonText.strip(try text(value))) }
      return .string(PythonText.strip(try text(value), characters: Set(try text(a[0]).unicodeScalars)))
    case "unique":
      let a = try arguments.bind(name, ["case_sensitive", "attribute"], [.bool(false), .null])
      let getter: (JinjaValue) throws -> JinjaValue
      if case .null = a[1] { getter = { $0 } } else { getter = try attributeGetter(a[1]) }
      var seen = Set<JinjaHashKey>()
      var result: [JinjaValue] = []
      for item in try JinjaOperators.iterate(value)
      where seen.insert(try caseFolded(try getter(item), sensitive: a[0].truthy).hashKey()).inserted {
        result.append(item)
      }
      return .list(result)
    case "wordcount":
      var count = 0
      var inWord = false
      for scalar in try text(value).unicodeScalars {
        let isWord = scalar == "_" || scalar.properties.isAlphabetic || scalar.properties.numericType != nil
        if isWord && !inWord { count += 1 }
        inWord = isWord
      }
      return .int(count)
    default:
      throw JinjaFailure("No filter named '\(name)'.")
    }
  }

  /// Strings compare case-insensitively unless `sensitive` (jinja2's ignore_case).
  private static func caseFolded(_ value: JinjaValue, sensitive: Bool) -> JinjaValue {
    if !sensitive, case .string(let s) = value { return .string(PythonText.lower(s)) }
    return value
  }

  /// jinja2's make_attrgetter: "a.b.0" reads item a, then b, then index 0.
  static func attributeGetter(_ attribute: JinjaValue) throws -> (JinjaValue) throws -> JinjaValue {
    let parts: [JinjaValue]
    switch attribute {
    case .string(let s):
      parts = s.split(separator: ".", omittingEmptySubsequences: false).map {
        Int($0).map(JinjaValue.int) ?? .string(String($0))
      }
    case .int: parts = [attribute]
    default: throw JinjaFailure("attribute must be a string or an integer")
    }
    return { item in try parts.reduce(item) { try JinjaOperators.item($0, $1) } }
  }
}

enum JinjaTests {
  static func run(_ name: String, _ value: JinjaValue, _ arguments: JinjaArguments) throws -> Bool {
    func argument() throws -> JinjaValue {
      guard let a = arguments.positional.first ?? arguments.keywords.first?.1 else {
        throw JinjaFailure("the '\(name)' test needs an argument")
      }
      return a
    }
    switch name {
    case "defined": return !value.isUndefined
    case "undefined": return value.isUndefined
    case "none": if case .null = value { return true } else { return false }
    case "boolean": if case .bool = value { return true } else { return false }
    case "true": if case .bool(true) = value { return true } else { return false }
    case "false": if case .bool(false) = value { return true } else { return false }
    case "integer": if case .int = value { return true } else { return false }
    case "float": if case .float = value { return true } else { return false }
    case "number": return value.number != nil
    case "string": if case .string = value { return true } else { return false }
    case "mapping": if case .dict = value { return true } else { return false }
    case "iterable", "sequence":
      switch value {
      case .string, .list, .tuple, .dict, .undefined: return true
      default: return false
      }
    case "callable":
      switch value {
      case .callable, .undefined: return true
      default: return false
      }
    case "sameas":
      let other = try argument()
      switch (value, other) {
      case (.namespace(let a), .namespace(let b)): return a === b
      case (.callable(let a), .callable(let b)): return a === b
      case (.null, .null): return true
      case (.bool(let a), .bool(let b)): return a == b
      case (.int(let a), .int(let b)): return a == b
      case (.string(let a), .string(let b)): return a == b
      default: return false
      }
    case "escaped": return false
    case "in": return try JinjaOperators.contains(try argument(), value)
    case "odd", "even":
      let remainder = try JinjaOperators.binary("%", value, .int(2), limit: .max)
      return JinjaOperators.equal(remainder, .int(name == "odd" ? 1 : 0))
    case "divisibleby":
      return JinjaOperators.equal(try JinjaOperators.binary("%", value, try argument(), limit: .max), .int(0))
    case "eq", "equalto", "==": return try JinjaOperators.compare(value, "==", try argument())
    case "ne", "!=": return try JinjaOperators.compare(value, "!=", try argument())
    case "lt", "lessthan", "<": return try JinjaOperators.compare(value, "<", try argument())
    case "le", "<=": return try JinjaOperators.compare(value, "<=", try argument())
    case "gt", "greaterthan", ">": return try JinjaOperators.compare(value, ">", try argument())
    case "ge", ">=": return try JinjaOperators.compare(value, ">=", try argument())
    case "lower": return PythonText.isCased(try PythonText.str(value), upper: false)
    case "upper": return PythonText.isCased(try PythonText.str(value), upper: true)
    case "filter": return JinjaParser.filters.contains(try PythonText.str(value))
    case "test": return JinjaParser.tests.contains(try PythonText.str(value))
    default: throw JinjaFailure("No test named '\(name)'.")
    }
  }
}

enum JinjaMethods {
  static let string: Set<String> = [
    "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "upper", "lower", "title",
    "capitalize", "replace", "format", "join", "find", "rfind", "index", "rindex", "count", "isdigit", "isalpha",
    "isalnum",
    "isspace", "islower", "isupper", "isnumeric", "isdecimal", "partition", "rpartition", "removeprefix",
    "removesuffix",
    "zfill", "center", "ljust", "rjust", "swapcase", "casefold",
  ]
  /// Python str methods Pivot does not provide; calling one is an error that says so.
  static let otherString: Set<String> = [
    "encode", "expandtabs", "format_map", "isascii", "isidentifier", "isprintable", "istitle", "maketrans", "translate",
  ]
  static let dict: Set<String> = ["items", "keys", "values", "get", "copy"]
  static let unsafeDict: Set<String> = ["pop", "popitem", "setdefault", "update", "clear"]
  static let unsafeList: Set<String> = ["append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"]

  static func call(_ receiver: JinjaValue, _ name: String, _ arguments: JinjaArguments, limit: Int) throws -> JinjaValue
  {
    switch receiver {
    case .string(let s): return try stringMethod(s, name, arguments, limit: limit)
    case .dict(let d):
      switch name {
      case "items":
        _ = try arguments.bind(name, [], [])
        return .list(d.items.map { .tuple([$0.key, $0.value]) })
      case "keys":
        _ = try arguments.bind(name, [], [])
        return .list(d.keys)
      case "values":
        _ = try arguments.bind(name, [], [])
        return .list(d.values)
      case "get":
        let a = try arguments.bind(name, ["key", "default"], [nil, JinjaValue.null])
        return try d.value(for: a[0]) ?? a[1]
      default: return receiver
      }
    case .list(let items), .tuple(let items):
      switch name {
      case "count":
        let a = try arguments.bind(name, ["value"], [nil])
        return .int(items.filter { JinjaOperators.equal($0, a[0]) }.count)
      case "index":
        let a = try arguments.bind(name, ["value"], [nil])
        guard let at = items.firstIndex(where: { JinjaOperators.equal($0, a[0]) }) else {
          throw JinjaFailure("\(try PythonText.repr(a[0], depth: 0)) is not in list")
        }
        return .int(at)
      default: return receiver
      }
    case .loop(let loop):
      guard !arguments.positional.isEmpty else { throw JinjaFailure("no items for cycling given") }
      return arguments.positional[loop.index0 % arguments.positional.count]
    default:
      throw JinjaFailure("'\(receiver.typeName)' object has no method '\(name)'")
    }
  }

  private static func stringMethod(_ s: String, _ name: String, _ arguments: JinjaArguments, limit: Int) throws
    -> JinjaValue
  {
    func text(_ v: JinjaValue) throws -> String {
      guard case .string(let t) = v else { throw JinjaFailure("str.\(name)() argument must be str, not \(v.typeName)") }
      return t
    }
    func sized(_ t: String) throws -> JinjaValue {
      guard t.utf8.count <= limit else { throw JinjaOperators.tooLarge(limit) }
      return .string(t)
    }
    let scalars = Array(s.unicodeScalars)
    /// The [start, end) window of optional start/end arguments, as Python clamps them.
    func window(_ a: [JinjaValue], from k: Int) -> Range<Int> {
      func clamp(_ v: JinjaValue, _ fallback: Int) -> Int {
        guard let i = v.integer else { return fallback }
        return i < 0 ? max(0, i + scalars.count) : min(i, scalars.count)
      }
      let start = clamp(a[k], 0)
      let end = clamp(a[k + 1], scalars.count)
      return start..<max(start, end)
    }
    switch name {
    case "strip", "lstrip", "rstrip":
      let a = try arguments.bind(name, ["chars"], [JinjaValue.null])
      let characters: Set<Unicode.Scalar>? = a[0].isNoneValue ? nil : Set(try text(a[0]).unicodeScalars)
      return .string(PythonText.strip(s, leading: name != "rstrip", trailing: name != "lstrip", characters: characters))
    case "split", "rsplit":
      let a = try arguments.bind(name, ["sep", "maxsplit"], [JinjaValue.null, .int(-1)])
      let separator: String? = a[0].isNoneValue ? nil : try text(a[0])
      if separator == "" { throw JinjaFailure("empty separator") }
      let parts = PythonText.split(s, separator: separator, maxSplit: a[1].integer ?? -1, fromRight: name == "rsplit")
      return .list(parts.map { .string($0) })
    case "splitlines":
      let a = try arguments.bind(name, ["keepends"], [.bool(false)])
      return .list(PythonText.splitlines(s, keepEnds: a[0].truthy).map { .string($0) })
    case "startswith", "endswith":
      let a = try arguments.bind(name, ["prefix", "start", "end"], [nil, JinjaValue.null, JinjaValue.null])
      let candidates: [JinjaValue]
      if case .tuple(let items) = a[0] { candidates = items } else { candidates = [a[0]] }
      let part = Array(scalars[window(a, from: 1)])
      for candidate in candidates {
        let affix = Array(try text(candidate).unicodeScalars)
        if name == "startswith" ? part.starts(with: affix) : part.reversed().starts(with: affix.reversed()) {
          return .bool(true)
        }
      }
      return .bool(false)
    case "upper": return .string(s.uppercased())
    case "lower", "casefold": return .string(PythonText.lower(s))
    case "title": return .string(PythonText.title(s))
    case "capitalize": return .string(PythonText.capitalize(s))
    case "swapcase":
      return .string(
        PythonText.string(
          s.unicodeScalars.flatMap { c -> [Unicode.Scalar] in
            let p = c.properties
            if p.isUppercase { return Array(p.lowercaseMapping.unicodeScalars) }
            if p.isLowercase { return Array(p.uppercaseMapping.unicodeScalars) }
            return [c]
          }))
    case "replace":
      let a = try arguments.bind(name, ["old", "new", "count"], [nil, nil, .int(-1)])
      return try sized(PythonText.replace(s, try text(a[0]), try text(a[1]), count: a[2].integer ?? -1, limit: limit))
    case "format":
      return try sized(PythonFormat.braces(s, arguments))
    case "join":
      let a = try arguments.bind(name, ["iterable"], [nil])
      let items = try JinjaOperators.iterate(a[0]).enumerated().map { k, item -> String in
        guard case .string(let t) = item else {
          throw JinjaFailure("sequence item \(k): expected str instance, \(item.typeName) found")
        }
        return t
      }
      return try sized(items.joined(separator: s))
    case "find", "rfind", "index", "rindex", "count":
      let a = try arguments.bind(name, ["sub", "start", "end"], [nil, JinjaValue.null, JinjaValue.null])
      let needle = Array(try text(a[0]).unicodeScalars)
      let range = window(a, from: 1)
      if name == "count" { return .int(PythonText.count(needle, in: scalars, range)) }
      let found =
        name.hasPrefix("r")
        ? PythonText.lastIndex(of: needle, in: scalars, range) : PythonText.index(of: needle, in: scalars, range)
      if let found { return .int(found) }
      if name.hasSuffix("index") { throw JinjaFailure("substring not found") }
      return .int(-1)
    case "isdigit", "isnumeric", "isdecimal":
      return .bool(
        !scalars.isEmpty
          && scalars.allSatisfy {
            guard let type = $0.properties.numericType else { return false }
            return name == "isnumeric" || type == .decimal || (name == "isdigit" && type == .digit)
          })
    case "isalpha": return .bool(!scalars.isEmpty && scalars.allSatisfy(PythonText.isLetter))
    case "isalnum":
      return .bool(
        !scalars.isEmpty && scalars.allSatisfy { PythonText.isLetter($0) || $0.properties.numericType != nil })
    case "isspace": return .bool(!scalars.isEmpty && scalars.allSatisfy(PythonText.isSpace))
    case "islower": return .bool(PythonText.isCased(s, upper: false))
    case "isupper": return .bool(PythonText.isCased(s, upper: true))
    case "partition", "rpartition":
      let a = try arguments.bind(name, ["sep"], [nil])
      let separator = Array(try text(a[0]).unicodeScalars)
      if separator.isEmpty { throw JinjaFailure("empty separator") }
      let found =
        name == "partition"
        ? PythonText.index(of: separator, in: scalars, 0..<scalars.count)
        : PythonText.lastIndex(of: separator, in: scalars, 0..<scalars.count)
      guard let found else {
        return name == "partition"
          ? .tuple([.string(s), .string(""), .string("")]) : .tuple([.string(""), .string(""), .string(s)])
      }
      return .tuple([
        .string(PythonText.string(scalars[..<found])), .string(PythonText.string(separator)),
        .string(PythonText.string(scalars[(found + separator.count)...])),
      ])
    case "removeprefix", "removesuffix":
      let a = try arguments.bind(name, ["affix"], [nil])
      let affix = Array(try text(a[0]).unicodeScalars)
      if name == "removeprefix", scalars.starts(with: affix) {
        return .string(PythonText.string(scalars.dropFirst(affix.count)))
      }
      if name == "removesuffix", !affix.isEmpty, scalars.reversed().starts(with: affix.reversed()) {
        return .string(PythonText.string(scalars.dropLast(affix.count)))
      }
      return .string(s)
    case "zfill":
      let a = try arguments.bind(name, ["width"], [nil])
      let width = a[0].integer ?? 0
      guard scalars.count < width else { return .string(s) }
      guard width <= limit else { throw JinjaOperators.tooLarge(limit) }
      let zeros = String(repeating: "0", count: width - scalars.count)
      if let first = scalars.first, first == "-" || first == "+" {
        return .string(String(first) + zeros + PythonText.string(scalars.dropFirst()))
      }
      return .string(zeros + s)
    case "center", "ljust", "rjust":
      let a = try arguments.bind(name, ["width", "fillchar"], [nil, .string(" ")])
      let width = a[0].integer ?? 0
      guard width <= limit else { throw JinjaOperators.tooLarge(limit) }
      return .string(
        PythonText.pad(
          s, width: width, align: name == "center" ? "^" : name == "ljust" ? "<" : ">",
          fill: try text(a[1]).unicodeScalars.first ?? " "))
    default:
      throw JinjaFailure("str.\(name)() is not supported by Pivot's template interpreter")
    }
  }
}

extension JinjaValue {
  var isNoneValue: Bool {
    if case .null = self { return true }
    return false
  }
}

// MARK: Python text helpers

extension PythonText {
  /// Python's str.lower(): full lower-case mappings, with Greek capital sigma becoming final "ς" at a word's end.
  static func lower(_ s: String) -> String {
    guard s.unicodeScalars.contains("\u{03A3}") else { return s.lowercased() }
    let scalars = Array(s.unicodeScalars)
    func cased(_ c: Unicode.Scalar) -> Bool { c.properties.isCased }
    func ignorable(_ c: Unicode.Scalar) -> Bool { c.properties.isCaseIgnorable }
    var out = ""
    for (k, c) in scalars.enumerated() {
      guard c == "\u{03A3}" else {
        out += c.properties.lowercaseMapping
        continue
      }
      var before = k - 1
      while before >= 0 && ignorable(scalars[before]) { before -= 1 }
      var after = k + 1
      while after < scalars.count && ignorable(scalars[after]) { after += 1 }
      let final = before >= 0 && cased(scalars[before]) && !(after < scalars.count && cased(scalars[after]))
      out += final ? "\u{03C2}" : "\u{03C3}"
    }
    return out
  }

  static func isLetter(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.properties.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
    default: return false
    }
  }

  /// Python's islower/isupper: at least one cased character, and all cased characters in that case.
  static func isCased(_ s: String, upper: Bool) -> Bool {
    var sawCased = false
    for scalar in s.unicodeScalars {
      let p = scalar.properties
      if p.isUppercase || p.isLowercase || p.generalCategory == .titlecaseLetter {
        if upper ? !p.isUppercase : !p.isLowercase { return false }
        sawCased = true
      }
    }
    return sawCased
  }

  /// Python's str.title(): a cased character after an uncased one is title-cased, the rest lower-cased.
  static func title(_ s: String) -> String {
    var out = ""
    var previousCased = false
    for scalar in s.unicodeScalars {
      let p = scalar.properties
      let cased = p.isUppercase || p.isLowercase || p.generalCategory == .titlecaseLetter
      if cased {
        out += previousCased ? p.lowercaseMapping : p.titlecaseMapping
      } else {
        out.unicodeScalars.append(scalar)
      }
      previousCased = cased
    }
    return out
  }

  /// Python's str.capitalize(): the first character title-cased, the rest lower-cased.
  static func capitalize(_ s: String) -> String {
    guard let first = s.unicodeScalars.first else { return s }
    return first.properties.titlecaseMapping + lower(PythonText.string(s.unicodeScalars.dropFirst()))
  }

  /// jinja2's title filter: each run after `-`, whitespace or an opening bracket starts upper-case.
  static func titleFilter(_ s: String) -> String {
    var out = ""
    var atWordStart = true
    for scalar in s.unicodeScalars {
      let separator = scalar == "-" || isSpace(scalar) || "({[<".unicodeScalars.contains(scalar)
      if separator {
        out.unicodeScalars.append(scalar)
        atWordStart = true
      } else if atWordStart {
        out += String(scalar).uppercased()
        atWordStart = false
      } else {
        out += String(scalar).lowercased()
      }
    }
    return out
  }

  static func escapeHTML(_ s: String) -> String {
    var out = ""
    for c in s.unicodeScalars {
      switch c {
      case "&": out += "&amp;"
      case "<": out += "&lt;"
      case ">": out += "&gt;"
      case "\"": out += "&#34;"
      case "'": out += "&#39;"
      default: out.unicodeScalars.append(c)
      }
    }
    return out
  }

  /// Python's str.splitlines().
  static func splitlines(_ s: String, keepEnds: Bool = false) -> [String] {
    let scalars = Array(s.unicodeScalars)
    var lines: [String] = []
    var start = 0
    var k = 0
    while k < scalars.count {
      let c = scalars[k]
      let isBreak =
        c == "\n" || c == "\r" || (0x0B...0x0C).contains(c.value) || (0x1C...0x1E).contains(c.value)
        || c.value == 0x85 || c.value == 0x2028 || c.value == 0x2029
      guard isBreak else {
        k += 1
        continue
      }
      var end = k + 1
      if c == "\r" && end < scalars.count && scalars[end] == "\n" { end += 1 }
      lines.append(string(scalars[start..<(keepEnds ? end : k)]))
      start = end
      k = end
    }
    if start < scalars.count { lines.append(string(scalars[start...])) }
    return lines
  }

  /// Python's str.split / str.rsplit.
  static func split(_ s: String, separator: String?, maxSplit: Int, fromRight: Bool) -> [String] {
    var scalars = Array(s.unicodeScalars)
    var needle = separator.map { Array($0.unicodeScalars) }
    if fromRight {
      scalars.reverse()
      needle?.reverse()
    }
    var parts: [[Unicode.Scalar]] = []
    var k = 0
    if let needle {
      var start = 0
      while maxSplit < 0 || parts.count < maxSplit, let found = index(of: needle, in: scalars, k..<scalars.count) {
        parts.append(Array(scalars[start..<found]))
        start = found + needle.count
        k = start
      }
      parts.append(Array(scalars[start...]))
    } else {
      while true {
        while k < scalars.count && isSpace(scalars[k]) { k += 1 }
        if k >= scalars.count { break }
        if maxSplit >= 0 && parts.count == maxSplit {
          parts.append(Array(scalars[k...]))  // the rest keeps its trailing whitespace, as in Python
          break
        }
        let start = k
        while k < scalars.count && !isSpace(scalars[k]) { k += 1 }
        parts.append(Array(scalars[start..<k]))
      }
    }
    if fromRight { return parts.reversed().map { string($0.reversed()) } }
    return parts.map { string($0) }
  }

  static func index(of needle: [Unicode.Scalar], in hay: [Unicode.Scalar], _ range: Range<Int>) -> Int? {
    guard needle.count <= range.count else { return nil }
    if needle.isEmpty { return range.lowerBound }
    var k = range.lowerBound
    while k + needle.count <= range.upperBound {
      if hay[k] == needle[0] && hay[k..<(k + needle.count)].elementsEqual(needle) { return k }
      k += 1
    }
    return nil
  }

  static func lastIndex(of needle: [Unicode.Scalar], in hay: [Unicode.Scalar], _ range: Range<Int>) -> Int? {
    guard needle.count <= range.count else { return nil }
    var k = range.upperBound - needle.count
    while k >= range.lowerBound {
      if hay[k..<(k + needle.count)].elementsEqual(needle) { return k }
      k -= 1
    }
    return nil
  }

  static func count(_ needle: [Unicode.Scalar], in hay: [Unicode.Scalar], _ range: Range<Int>) -> Int {
    if needle.isEmpty { return range.count + 1 }
    var count = 0
    var k = range.lowerBound
    while let found = index(of: needle, in: hay, k..<range.upperBound) {
      count += 1
      k = found + needle.count
    }
    return count
  }

  /// Whether `needle` occurs in `hay` (code point substring, as Python's `in`).
  static func find(_ needle: String, in hay: String) -> Int? {
    let h = Array(hay.utf8)
    let n = Array(needle.utf8)
    guard n.count <= h.count else { return nil }
    if n.isEmpty { return 0 }
    var k = 0
    while k + n.count <= h.count {
      if h[k] == n[0] && h[k..<(k + n.count)].elementsEqual(n) { return k }
      k += 1
    }
    return nil
  }

  /// Python's str.replace, where an empty `old` inserts `new` around every character.
  static func replace(_ s: String, _ old: String, _ new: String, count: Int, limit: Int) throws -> String {
    let scalars = Array(s.unicodeScalars)
    let needle = Array(old.unicodeScalars)
    var out = String.UnicodeScalarView()
    var replaced = 0
    var k = 0
    func grow() throws {
      guard out.count <= limit else { throw JinjaOperators.tooLarge(limit) }
    }
    if needle.isEmpty {
      for scalar in scalars {
        if count < 0 || replaced < count {
          out.append(contentsOf: new.unicodeScalars)
          replaced += 1
        }
        out.append(scalar)
        try grow()
      }
      if count < 0 || replaced < count { out.append(contentsOf: new.unicodeScalars) }
      return String(out)
    }
    while k < scalars.count {
      if count < 0 || replaced < count, let found = index(of: needle, in: scalars, k..<scalars.count) {
        out.append(contentsOf: scalars[k..<found])
        out.append(contentsOf: new.unicodeScalars)
        replaced += 1
        k = found + needle.count
        try grow()
      } else {
        out.append(contentsOf: scalars[k...])
        break
      }
    }
    return String(out)
  }

  /// Pads to `width` characters: `<` left-justify, `>` right-justify, `^` centre (Python's split of the padding).
  static func pad(_ s: String, width: Int, align: Character, fill: Unicode.Scalar) -> String {
    let n = s.unicodeScalars.count
    guard width > n else { return s }
    let padding = width - n
    let fillText = String(fill)
    switch align {
    case "<": return s + String(repeating: fillText, count: padding)
    case ">": return String(repeating: fillText, count: padding) + s
    default:
      let left = padding / 2 + (padding & width & 1)
      return String(repeating: fillText, count: left) + s + String(repeating: fillText, count: padding - left)
    }
  }
}

// MARK: Numbers

enum PythonNumbers {
  /// Python's int(x) for the int filter: strings in `base` (or via float), floats truncated; nil where Python fails.
  static func int(_ value: JinjaValue, base: Int) -> Int? {
    switch value {
    case .bool, .int: return value.integer
    case .float(let d):
      guard d.isFinite, abs(d) < 9.2e18 else { return nil }
      return Int(d)
    case .string(let s):
      var text = PythonText.strip(s).replacingOccurrences(of: "_", with: "")
      var negative = false
      if text.hasPrefix("-") || text.hasPrefix("+") {
        negative = text.hasPrefix("-")
        text.removeFirst()
      }
      let lower = text.lowercased()
      var radix = base
      for (prefix, r) in [("0x", 16), ("0o", 8), ("0b", 2)] where lower.hasPrefix(prefix) && (base == r || base == 0) {
        text.removeFirst(2)
        radix = r
      }
      if radix == 0 { radix = 10 }
      if (2...36).contains(radix), !text.isEmpty, let parsed = Int(text, radix: radix) {
        return negative ? -parsed : parsed
      }
      if let d = float(value), d.isFinite, abs(d) < 9.2e18 { return Int(d) }
      return nil
    default:
      return nil
    }
  }

  /// Python's float(x); nil where Python raises TypeError or ValueError.
  static func float(_ value: JinjaValue) -> Double? {
    switch value {
    case .bool, .int, .float: return value.number
    case .string(let s):
      let text = PythonText.strip(s).replacingOccurrences(of: "_", with: "").lowercased()
      switch text {
      case "inf", "+inf", "infinity", "+infinity": return .infinity
      case "-inf", "-infinity": return -.infinity
      case "nan", "+nan", "-nan": return .nan
      default:
        guard !text.isEmpty, text.allSatisfy({ "0123456789.e+-".contains($0) }) else { return nil }
        return Double(text)
      }
    default:
      return nil
    }
  }

  /// jinja2's round filter: Python's round() (half to even) for "common", else floor/ceil at `precision`.
  static func round(_ value: JinjaValue, precision: Int, method: String) throws -> JinjaValue {
    if case .undefined(let hint) = value { throw JinjaFailure(hint) }
    guard let x = value.number else { throw JinjaFailure("type \(value.typeName) doesn't define __round__ method") }
    let scale = pow(10, Double(precision))
    switch method {
    case "common":
      if let i = value.integer, precision >= 0 { return .int(i) }
      return .float(precision == 0 ? x.rounded(.toNearestOrEven) : (x * scale).rounded(.toNearestOrEven) / scale)
    case "floor": return .float((x * scale).rounded(.down) / scale)
    case "ceil": return .float((x * scale).rounded(.up) / scale)
    default: throw JinjaFailure("method must be 'common', 'ceil' or 'floor'")
    }
  }
}

// MARK: Formatting

enum PythonFormat {
  /// Python's `format % values` (printf-style).
  static func percent(_ format: String, _ values: JinjaValue, limit: Int) throws -> String {
    var arguments: [JinjaValue]
    var mapping: JinjaDict?
    switch values {
    case .tuple(let items): arguments = items
    case .dict(let d):
      arguments = [values]
      mapping = d
    default: arguments = [values]
    }
    let f = Array(format.unicodeScalars)
    var out = ""
    var k = 0
    var next = 0
    func take() throws -> JinjaValue {
      guard next < arguments.count else { throw JinjaFailure("not enough arguments for format string") }
      next += 1
      return arguments[next - 1]
    }
    while k < f.count {
      guard f[k] == "%" else {
        out.unicodeScalars.append(f[k])
        k += 1
        continue
      }
      k += 1
      guard k < f.count else { throw JinjaFailure("incomplete format") }
      if f[k] == "%" {
        out += "%"
        k += 1
        continue
      }
      var value: JinjaValue?
      if f[k] == "(" {
        guard let end = f[k...].firstIndex(of: ")") else { throw JinjaFailure("incomplete format key") }
        guard let mapping else { throw JinjaFailure("format requires a mapping") }
        let key = PythonText.string(f[(k + 1)..<end])
        guard let found = mapping[key] else { throw JinjaFailure("KeyError: '\(key)'") }
        value = found
        k = end + 1
      }
      var flags = Set<Unicode.Scalar>()
      while k < f.count, "-+ #0".unicodeScalars.contains(f[k]) {
        flags.insert(f[k])
        k += 1
      }
      var width = 0
      while k < f.count, let d = Int(String(f[k])) {
        width = width * 10 + d
        k += 1
      }
      var precision: Int?
      if k < f.count && f[k] == "." {
        k += 1
        var p = 0
        while k < f.count, let d = Int(String(f[k])) {
          p = p * 10 + d
          k += 1
        }
        precision = p
      }
      while k < f.count, "hlL".unicodeScalars.contains(f[k]) { k += 1 }
      guard k < f.count else { throw JinjaFailure("incomplete format") }
      let conversion = f[k]
      k += 1
      guard width <= limit, (precision ?? 0) <= limit else { throw JinjaOperators.tooLarge(limit) }
      let v = try value ?? take()
      out += try convert(v, conversion, flags: flags, width: width, precision: precision)
      guard out.utf8.count <= limit else { throw JinjaOperators.tooLarge(limit) }
    }
    if mapping == nil && next < arguments.count {
      throw JinjaFailure("not all arguments converted during string formatting")
    }
    return out
  }

  private static func convert(
    _ v: JinjaValue, _ conversion: Unicode.Scalar, flags: Set<Unicode.Scalar>, width: Int, precision: Int?
  ) throws -> String {
    let left = flags.contains("-")
    func padded(_ body: String, sign: String = "", zeroPad: Bool = false) -> String {
      let length = sign.unicodeScalars.count + body.unicodeScalars.count
      guard width > length else { return sign + body }
      let fill = width - length
      if left { return sign + body + String(repeating: " ", count: fill) }
      if zeroPad { return sign + String(repeating: "0", count: fill) + body }
      return String(repeating: " ", count: fill) + sign + body
    }
    func sign(_ negative: Bool) -> String {
      negative ? "-" : flags.contains("+") ? "+" : flags.contains(" ") ? " " : ""
    }
    switch conversion {
    case "s", "r", "a":
      var text = conversion == "s" ? try PythonText.str(v) : try PythonText.repr(v, depth: 0)
      if let precision { text = PythonText.string(text.unicodeScalars.prefix(precision)) }
      return padded(text)
    case "d", "i", "u":
      guard let x = v.number, x.isFinite else {
        throw JinjaFailure("%\(conversion) format: a real number is required, not \(v.typeName)")
      }
      let i = v.integer ?? Int(x)
      return padded(String(i.magnitude), sign: sign(i < 0), zeroPad: flags.contains("0"))
    case "x", "X", "o":
      guard let i = v.integer else {
        throw JinjaFailure("%\(conversion) format: an integer is required, not \(v.typeName)")
      }
      var digits = String(i.magnitude, radix: conversion == "o" ? 8 : 16, uppercase: conversion == "X")
      if flags.contains("#") { digits = (conversion == "o" ? "0o" : conversion == "X" ? "0X" : "0x") + digits }
      return padded(digits, sign: sign(i < 0), zeroPad: flags.contains("0"))
    case "e", "E", "f", "F", "g", "G":
      guard let x = v.number else { throw JinjaFailure("must be real number, not \(v.typeName)") }
      if !x.isFinite {
        let text = x.isNaN ? "nan" : "inf"
        return padded(conversion.properties.isUppercase ? text.uppercased() : text, sign: sign(x < 0))
      }
      var spec = "%"
      for flag in "+ #" where flags.contains(Unicode.Scalar(String(flag))!) { spec.append(flag) }
      spec += ".\(precision ?? 6)" + String(conversion)
      let body = String(format: spec, abs(x))
      return padded(
        body.hasPrefix("+") || body.hasPrefix(" ") ? String(body.dropFirst()) : body,
        sign: sign(x < 0 || (x == 0 && x.sign == .minus)),
        zeroPad: flags.contains("0"))
    case "c":
      if let i = v.integer, let scalar = Unicode.Scalar(UInt32(clamping: max(0, i))) { return padded(String(scalar)) }
      if case .string(let s) = v, s.unicodeScalars.count == 1 { return padded(s) }
      throw JinjaFailure("%c requires an int or a unicode character")
    default:
      throw JinjaFailure("unsupported format character '\(conversion)'")
    }
  }

  /// Python's `str.format(*args, **kwargs)` for `{}`, `{0}`, `{name}`, `{x!r}` and simple specs (fill, align,
  /// sign, zero, width, precision, and the types s d f e g x %).
  static func braces(_ format: String, _ arguments: JinjaArguments) throws -> String {
    let f = Array(format.unicodeScalars)
    var out = ""
    var k = 0
    var automatic = 0
    while k < f.count {
      let c = f[k]
      if c == "}" {
        guard k + 1 < f.count, f[k + 1] == "}" else { throw JinjaFailure("Single '}' encountered in format string") }
        out += "}"
        k += 2
        continue
      }
      guard c == "{" else {
        out.unicodeScalars.append(c)
        k += 1
        continue
      }
      if k + 1 < f.count && f[k + 1] == "{" {
        out += "{"
        k += 2
        continue
      }
      guard let end = f[k...].firstIndex(of: "}") else { throw JinjaFailure("Single '{' encountered in format string") }
      var field = PythonText.string(f[(k + 1)..<end])
      k = end + 1
      var spec = ""
      if let colon = field.firstIndex(of: ":") {
        spec = String(field[field.index(after: colon)...])
        field = String(field[..<colon])
      }
      var conversion: Character?
      if let bang = field.firstIndex(of: "!") {
        conversion = field[field.index(after: bang)...].first
        field = String(field[..<bang])
      }
      let value: JinjaValue
      if field.isEmpty {
        guard automatic < arguments.positional.count else {
          throw JinjaFailure("Replacement index \(automatic) out of range for positional args tuple")
        }
        value = arguments.positional[automatic]
        automatic += 1
      } else if let index = Int(field) {
        guard index < arguments.positional.count else {
          throw JinjaFailure("Replacement index \(index) out of range for positional args tuple")
        }
        value = arguments.positional[index]
      } else if let found = arguments.keywords.first(where: { $0.0 == field }) {
        value = found.1
      } else {
        throw JinjaFailure("KeyError: '\(field)'")
      }
      var shown = value
      if conversion == "r" || conversion == "a" { shown = .string(try PythonText.repr(value, depth: 0)) }
      out += try formatted(shown, spec: spec)
    }
    return out
  }

  private static func formatted(_ value: JinjaValue, spec: String) throws -> String {
    guard !spec.isEmpty else { return try PythonText.str(value) }
    var s = Array(spec.unicodeScalars)
    var fill: Unicode.Scalar = " "
    var align: Character?
    if s.count >= 2, "<>^=".unicodeScalars.contains(s[1]) {
      fill = s[0]
      align = Character(s[1])
      s.removeFirst(2)
    } else if let first = s.first, "<>^=".unicodeScalars.contains(first) {
      align = Character(first)
      s.removeFirst()
    }
    var signFlag = ""
    if let first = s.first, "+- ".unicodeScalars.contains(first) {
      signFlag = String(first)
      s.removeFirst()
    }
    if let first = s.first, first == "0" {
      if align == nil {
        fill = "0"
        align = "="
      }
      s.removeFirst()
    }
    var width = 0
    while let first = s.first, let d = Int(String(first)) {
      width = width * 10 + d
      s.removeFirst()
    }
    var precision: Int?
    if let first = s.first, first == "." {
      s.removeFirst()
      var p = 0
      while let first = s.first, let d = Int(String(first)) {
        p = p * 10 + d
        s.removeFirst()
      }
      precision = p
    }
    let type = s.first.map { Character($0) }
    guard s.count <= 1 else { throw JinjaFailure("Invalid format specifier '\(spec)'") }
    var body: String
    var negative = false
    switch (type, value) {
    case (nil, .string(let text)), ("s", .string(let text)):
      body = precision.map { PythonText.string(text.unicodeScalars.prefix($0)) } ?? text
    case ("d", _), (nil, .int), (nil, .bool):
      guard let i = value.integer else {
        throw JinjaFailure("Unknown format code 'd' for object of type '\(value.typeName)'")
      }
      body = String(i.magnitude)
      negative = i < 0
    case ("x", _), ("X", _):
      guard let i = value.integer else {
        throw JinjaFailure("Unknown format code 'x' for object of type '\(value.typeName)'")
      }
      body = String(i.magnitude, radix: 16, uppercase: type == "X")
      negative = i < 0
    case ("f", _), ("F", _), ("e", _), ("E", _), ("g", _), ("G", _), ("%", _), (nil, .float):
      guard let x = value.number else {
        throw JinjaFailure(
          "Unknown format code '\(type.map(String.init) ?? "")' for object of type '\(value.typeName)'")
      }
      negative = x < 0 || (x == 0 && x.sign == .minus)
      let magnitude = abs(x) * (type == "%" ? 100 : 1)
      if type == nil && precision == nil {
        body = PythonText.float(magnitude)
      } else {
        let code = type == "%" ? "f" : type.map(String.init) ?? "g"
        body = String(format: "%.\(precision ?? 6)" + code, magnitude) + (type == "%" ? "%" : "")
      }
    default:
      throw JinjaFailure("Unknown format code '\(type.map(String.init) ?? "")' for object of type '\(value.typeName)'")
    }
    let sign = negative ? "-" : signFlag == "+" ? "+" : signFlag == " " ? " " : ""
    let length = sign.unicodeScalars.count + body.unicodeScalars.count
    guard width > length else { return sign + body }
    let padding = String(repeating: String(fill), count: width - length)
    let isNumber: Bool
    if case .string = value { isNumber = false } else { isNumber = true }
    switch align ?? (isNumber ? ">" : "<") {
    case "<": return sign + body + padding
    case "=": return sign + padding + body
    case "^":
      let total = width - length
      let left = String(repeating: String(fill), count: total / 2)
      let right = String(repeating: String(fill), count: total - total / 2)
      return left + sign + body + right
    default: return padding + sign + body
    }
  }
}
