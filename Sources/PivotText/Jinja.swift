import Foundation

/// A Hugging Face chat template, parsed once and rendered per conversation, with the semantics `transformers`
/// gives it: jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with loop controls
/// (`break`, `continue`), the `{% generation %}` tag, and the globals `raise_exception`, `strftime_now`,
/// `namespace`, `dict` and `range`; `tojson` does not escape non-ASCII text (transformers' own filter).
///
/// Covered: text, `{{ }}`, `{% %}`, `{# #}`, `{% raw %}`, whitespace control (`-`, `+`); `if`/`elif`/`else`,
/// `for` (tuple targets, `if` filter, `else`, the `loop` object), `set` (names, tuples, `ns.attr`, block set),
/// `macro` (defaults, `varargs`, `kwargs`), `filter`, `with`, `print`, `generation`; Python-like values, operators,
/// string/dict/list methods, and most of jinja2's filters and tests. Not covered: `include`, `extends`, `block`,
/// `import`, `call`, recursive loops and a few filters (`groupby`, `batch`, `slice`, `truncate`, `wordwrap`,
/// `urlize`, ...); they fail at load time with a message saying so.
///
/// Undefined names follow jinja2's default `Undefined`: falsy, render as nothing, iterate as empty, `is defined`
/// false; reading an attribute of one, calling it or doing arithmetic on it is an error, as in jinja2.
public struct JinjaTemplate: Sendable {
  /// Names the template in errors (e.g. the path of chat_template.jinja).
  public let name: String
  public let source: String
  public let limits: JinjaLimits
  let body: [JinjaStatement]
  /// The template has a `{% generation %}` tag (so assistant spans come from it).
  public let marksGeneration: Bool

  public init(source: String, name: String = "template", limits: JinjaLimits = JinjaLimits()) throws {
    self.name = name
    self.source = source
    self.limits = limits
    var parser = try JinjaParser(source: source, templateName: name, limits: limits)
    body = try parser.parseTemplate()
    marksGeneration = parser.sawGeneration
  }

  /// Renders with `context` holding JSON-like values (String, numbers, Bool, NSNull, arrays, dictionaries).
  /// Dictionaries are taken in sorted key order; use `render(contextJSON:)` when key order matters (it shows in
  /// `tojson` and in loops over items).
  public func render(_ context: [String: Any]) throws -> String {
    try render(values: context.mapValues { JinjaValue(any: $0) }).text
  }

  /// Renders with the variables of a JSON object, keeping its key order as Python's json.loads does.
  public func render(contextJSON: String) throws -> String {
    try render(values: try Self.context(fromJSON: contextJSON)).text
  }

  /// The rendered text and the UTF-8 byte ranges that `{% generation %}` blocks produced, in order.
  public func renderWithGenerationSpans(contextJSON: String) throws -> (text: String, generation: [Range<Int>]) {
    try render(values: try Self.context(fromJSON: contextJSON))
  }

  func render(values: [String: JinjaValue]) throws -> (text: String, generation: [Range<Int>]) {
    let interpreter = JinjaInterpreter(template: self, context: values)
    return try interpreter.run()
  }

  static func context(fromJSON text: String) throws -> [String: JinjaValue] {
    guard case .dict(let object) = try JSONValueReader.parse(text) else {
      throw JinjaError(kind: .runtime, template: "context", line: nil, message: "the context must be a JSON object")
    }
    var values: [String: JinjaValue] = [:]
    for (key, value) in zip(object.keys, object.values) {
      if case .string(let name) = key { values[name] = value }
    }
    return values
  }
}

/// Bounds that keep a hostile or broken template from hanging or exhausting memory.
public struct JinjaLimits: Sendable {
  /// Characters (UTF-8 bytes) a render may produce, and the largest string or list an operation may build.
  public var maxOutputBytes: Int = 32 << 20
  /// Loop iterations over the whole render.
  public var maxIterations: Int = 1_000_000
  /// Nested macro calls.
  public var maxCallDepth: Int = 48
  /// Nesting of blocks and expressions in the source.
  public var maxNesting: Int = 96

  public init(
    maxOutputBytes: Int = 32 << 20, maxIterations: Int = 1_000_000, maxCallDepth: Int = 48, maxNesting: Int = 96
  ) {
    self.maxOutputBytes = maxOutputBytes
    self.maxIterations = maxIterations
    self.maxCallDepth = maxCallDepth
    self.maxNesting = maxNesting
  }
}

/// A template that cannot be parsed or fails while rendering; names the template and, when known, the line.
public struct JinjaError: Error, CustomStringConvertible, Sendable, Equatable {
  public enum Kind: String, Sendable {
    /// The source is not a template Pivot can run (jinja2's TemplateSyntaxError / TemplateAssertionError).
    case syntax
    /// Rendering failed (a type error, an undefined value used, ...).
    case runtime
    /// The template called `raise_exception(message)`.
    case raised
    /// A bound of `JinjaLimits` was reached.
    case limit
  }

  public var kind: Kind
  public var template: String
  public var line: Int?
  public var message: String

  public init(kind: Kind, template: String, line: Int?, message: String) {
    self.kind = kind
    self.template = template
    self.line = line
    self.message = message
  }

  public var description: String {
    let place = line.map { "\(template), line \($0)" } ?? template
    switch kind {
    case .syntax: return "\(place): chat template syntax error: \(message)"
    case .runtime: return "\(place): chat template error: \(message)"
    case .raised: return "\(place): the chat template rejected this conversation: \(message)"
    case .limit: return "\(place): \(message); no chat template needs that much, so it is stopped here"
    }
  }
}

/// An error from deep inside evaluation, before the statement that caused it is known.
struct JinjaFailure: Error {
  var kind: JinjaError.Kind = .runtime
  var message: String
  init(_ message: String, kind: JinjaError.Kind = .runtime) {
    self.message = message
    self.kind = kind
  }
}

// MARK: Values

/// A value while rendering: Python's types as jinja2 sees them.
enum JinjaValue {
  /// jinja2's Undefined; `hint` is the error raised when it is used where a value is needed.
  case undefined(hint: String)
  case null
  case bool(Bool)
  case int(Int)
  case float(Double)
  case string(String)
  case list([JinjaValue])
  case tuple([JinjaValue])
  case dict(JinjaDict)
  case namespace(JinjaNamespace)
  case callable(JinjaCallable)
  indirect case loop(JinjaLoopInfo)

  static func undefinedName(_ name: String) -> JinjaValue { .undefined(hint: "'\(name)' is undefined") }

  /// From JSONSerialization-style values.
  init(any: Any) {
    switch any {
    case let value as String: self = .string(value)
    case let value as NSNumber:
      // JSONSerialization and FastJSON give NSNumber for numbers and Booleans alike.
      let type = String(cString: value.objCType)
      if type == "c" || type == "B" {
        self = .bool(value.boolValue)
      } else if type == "d" || type == "f" {
        self = .float(value.doubleValue)
      } else {
        self = .int(value.intValue)
      }
    case let value as Bool: self = .bool(value)
    case let value as Int: self = .int(value)
    case let value as Double: self = .float(value)
    case let value as [Any]: self = .list(value.map { JinjaValue(any: $0) })
    case let value as [String: Any]:
      var dict = JinjaDict()
      for key in value.keys.sorted() { dict.set(.string(key), JinjaValue(any: value[key]!)) }
      self = .dict(dict)
    default: self = .null
    }
  }

  var isUndefined: Bool {
    if case .undefined = self { return true }
    return false
  }

  /// Python's type name, for messages.
  var typeName: String {
    switch self {
    case .undefined: return "Undefined"
    case .null: return "NoneType"
    case .bool: return "bool"
    case .int: return "int"
    case .float: return "float"
    case .string: return "str"
    case .list: return "list"
    case .tuple: return "tuple"
    case .dict: return "dict"
    case .namespace: return "Namespace"
    case .callable: return "function"
    case .loop: return "LoopContext"
    }
  }

  /// Python truthiness.
  var truthy: Bool {
    switch self {
    case .undefined, .null: return false
    case .bool(let b): return b
    case .int(let i): return i != 0
    case .float(let d): return d != 0
    case .string(let s): return !s.isEmpty
    case .list(let items), .tuple(let items): return !items.isEmpty
    case .dict(let d): return d.count > 0
    case .namespace, .callable, .loop: return true
    }
  }

  /// A number as Double, for mixed arithmetic and comparisons (bool counts as a number, as in Python).
  var number: Double? {
    switch self {
    case .bool(let b): return b ? 1 : 0
    case .int(let i): return Double(i)
    case .float(let d): return d
    default: return nil
    }
  }

  /// An integer (bool included), for indexing and integer arithmetic.
  var integer: Int? {
    switch self {
    case .bool(let b): return b ? 1 : 0
    case .int(let i): return i
    default: return nil
    }
  }

  /// The hashable identity of a dict key, with Python's equalities (1 == 1.0 == True).
  func hashKey() throws -> JinjaHashKey {
    switch self {
    case .null: return .null
    case .bool(let b): return .integer(b ? 1 : 0)
    case .int(let i): return .integer(i)
    case .float(let d):
      if d.rounded() == d, abs(d) < 9.2e18 { return .integer(Int(d)) }
      return .float(d.bitPattern)
    case .string(let s): return .string(s)
    case .tuple(let items): return .tuple(try items.map { try $0.hashKey() })
    case .undefined: return .undefined
    default: throw JinjaFailure("unhashable type: '\(typeName)'")
    }
  }
}

enum JinjaHashKey: Hashable {
  case null, undefined
  case integer(Int)
  case float(UInt64)
  case string(String)
  indirect case tuple([JinjaHashKey])
}

/// Python's insertion-ordered dict.
struct JinjaDict {
  private(set) var keys: [JinjaValue] = []
  private(set) var values: [JinjaValue] = []
  private var index: [JinjaHashKey: Int] = [:]

  var count: Int { keys.count }

  func value(for key: JinjaValue) throws -> JinjaValue? {
    guard let at = index[try key.hashKey()] else { return nil }
    return values[at]
  }

  subscript(name: String) -> JinjaValue? {
    index[.string(name)].map { values[$0] }
  }

  mutating func set(_ key: JinjaValue, _ value: JinjaValue) {
    guard let hashKey = try? key.hashKey() else { return }
    if let at = index[hashKey] {
      values[at] = value
    } else {
      index[hashKey] = keys.count
      keys.append(key)
      values.append(value)
    }
  }

  mutating func set(_ name: String, _ value: JinjaValue) { set(.string(name), value) }

  var items: [(key: JinjaValue, value: JinjaValue)] { Array(zip(keys, values)).map { (key: $0.0, value: $0.1) } }
}

/// jinja2's `namespace(...)`: the one mutable object, so a `{% set ns.x %}` inside a loop is seen after it.
final class JinjaNamespace {
  var attributes: JinjaDict
  init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// The `loop` variable of one iteration.
struct JinjaLoopInfo {
  var index0: Int
  var length: Int
  var previous: JinjaValue?
  var next: JinjaValue?
}

/// Something a template can call.
final class JinjaCallable {
  enum Kind {
    case macro(JinjaMacro, JinjaScope)
    /// A global function (range, namespace, dict, raise_exception, strftime_now).
    case global(String)
    /// A method bound to its receiver (`'a'.upper`, `d.items`, `loop.cycle`).
    case method(JinjaValue, String)
    /// A method that exists in Python but that the sandbox forbids or Pivot does not provide.
    case unavailable(String)
  }

  let kind: Kind
  init(_ kind: Kind) { self.kind = kind }
}

/// Variables of one frame: the template's top level, a loop iteration, a macro call.
final class JinjaScope {
  var variables: [String: JinjaValue] = [:]
  let parent: JinjaScope?
  init(parent: JinjaScope?) { self.parent = parent }

  func lookup(_ name: String) -> JinjaValue? {
    var scope: JinjaScope? = self
    while let current = scope {
      if let value = current.variables[name] { return value }
      scope = current.parent
    }
    return nil
  }
}

// MARK: Python's text forms

enum PythonText {
  /// Characters Python's `str.isspace()` and `re`'s `\s` accept.
  static func isSpace(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.value {
    case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
      return true
    default: return false
    }
  }

  static func strip(_ text: String, leading: Bool = true, trailing: Bool = true, characters: Set<Unicode.Scalar>? = nil)
    -> String
  {
    let scalars = Array(text.unicodeScalars)
    func stripped(_ s: Unicode.Scalar) -> Bool { characters.map { $0.contains(s) } ?? isSpace(s) }
    var start = 0
    var end = scalars.count
    if leading { while start < end && stripped(scalars[start]) { start += 1 } }
    if trailing { while end > start && stripped(scalars[end - 1]) { end -= 1 } }
    if start == 0 && end == scalars.count { return text }
    return string(scalars[start..<end])
  }

  static func string<S: Sequence>(_ scalars: S) -> String where S.Element == Unicode.Scalar {
    var view = String.UnicodeScalarView()
    view.append(contentsOf: scalars)
    return String(view)
  }

  /// Python's `str(x)`: what `{{ x }}` prints.
  static func str(_ value: JinjaValue) throws -> String {
    switch value {
    case .undefined: return ""
    case .string(let s): return s
    default: return try repr(value, depth: 0)
    }
  }

  /// Python's `repr(x)`; a namespace inside itself prints as `{...}`, as Python's recursion guard does.
  static func repr(_ value: JinjaValue, depth: Int, printing: [ObjectIdentifier] = []) throws -> String {
    guard depth < 100 else {
      throw JinjaFailure("a value nested more than 100 levels deep cannot be printed", kind: .limit)
    }
    func repr(_ value: JinjaValue, depth: Int) throws -> String {
      try PythonText.repr(value, depth: depth, printing: printing)
    }
    switch value {
    case .undefined: return "Undefined"
    case .null: return "None"
    case .bool(let b): return b ? "True" : "False"
    case .int(let i): return String(i)
    case .float(let d): return float(d)
    case .string(let s): return reprString(s)
    case .list(let items): return "[" + (try items.map { try repr($0, depth: depth + 1) }).joined(separator: ", ") + "]"
    case .tuple(let items):
      if items.count == 1 { return "(" + (try repr(items[0], depth: depth + 1)) + ",)" }
      return "(" + (try items.map { try repr($0, depth: depth + 1) }).joined(separator: ", ") + ")"
    case .dict(let dict): return try reprDict(dict, depth: depth, printing: printing)
    case .namespace(let ns):
      let id = ObjectIdentifier(ns)
      if printing.contains(id) { return "<Namespace {...}>" }
      return "<Namespace " + (try reprDict(ns.attributes, depth: depth, printing: printing + [id])) + ">"
    case .callable(let callable):
      switch callable.kind {
      case .macro(let macro, _): return "<Macro '\(macro.name)'>"
      case .global(let name): return "<function \(name)>"
      case .method(let receiver, let name): return "<built-in method \(name) of \(receiver.typeName) object>"
      case .unavailable(let name): return "<built-in method \(name)>"
      }
    case .loop(let loop): return "<LoopContext \(loop.index0 + 1)/\(loop.length)>"
    }
  }

  static func reprDict(_ dict: JinjaDict, depth: Int, printing: [ObjectIdentifier] = []) throws -> String {
    var parts: [String] = []
    for (key, value) in zip(dict.keys, dict.values) {
      parts.append(
        (try repr(key, depth: depth + 1, printing: printing)) + ": "
          + (try repr(value, depth: depth + 1, printing: printing)))
    }
    return "{" + parts.joined(separator: ", ") + "}"
  }

  /// Python's string repr: single quotes unless the text has one and no double quote.
  static func reprString(_ s: String) -> String {
    let quote: Unicode.Scalar = s.unicodeScalars.contains("'") && !s.unicodeScalars.contains("\"") ? "\"" : "'"
    var out = String(quote)
    for scalar in s.unicodeScalars {
      switch scalar {
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case quote: out += "\\" + String(quote)
      default:
        if isPrintable(scalar) {
          out.unicodeScalars.append(scalar)
        } else if scalar.value < 0x100 {
          out += "\\x" + hex(scalar.value, digits: 2)
        } else if scalar.value < 0x10000 {
          out += "\\u" + hex(scalar.value, digits: 4)
        } else {
          out += "\\U" + hex(scalar.value, digits: 8)
        }
      }
    }
    out.unicodeScalars.append(quote)
    return out
  }

  static func isPrintable(_ scalar: Unicode.Scalar) -> Bool {
    if scalar == " " { return true }
    switch scalar.properties.generalCategory {
    case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator, .spaceSeparator:
      return false
    default: return true
    }
  }

  static func hex(_ value: UInt32, digits: Int) -> String {
    let text = String(value, radix: 16)
    return String(repeating: "0", count: max(0, digits - text.count)) + text
  }

  /// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation between 1e-4 and 1e16.
  static func float(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
    // Swift's description has the same shortest digits; only the layout differs.
    var text = abs(d).description
    var exponent = 0
    if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
      exponent = Int(text[text.index(after: e)...]) ?? 0
      text = String(text[..<e])
    }
    let point = text.firstIndex(of: ".")
    let integerPart = point.map { String(text[..<$0]) } ?? text
    let fraction = point.map { String(text[text.index(after: $0)...]) } ?? ""
    var digits = integerPart + fraction
    var decimalPoint = integerPart.count + exponent
    while digits.hasPrefix("0") && digits.count > 1 {
      digits.removeFirst()
      decimalPoint -= 1
    }
    while digits.hasSuffix("0") && digits.count > 1 { digits.removeLast() }
    let sign = d < 0 ? "-" : ""
    if decimalPoint <= -4 || decimalPoint > 16 {
      let mantissa = digits.count > 1 ? String(digits.first!) + "." + digits.dropFirst() : digits
      let e = decimalPoint - 1
      let magnitude = String(abs(e))
      return sign + mantissa + "e" + (e < 0 ? "-" : "+") + (magnitude.count < 2 ? "0" + magnitude : magnitude)
    }
    if decimalPoint <= 0 { return sign + "0." + String(repeating: "0", count: -decimalPoint) + digits }
    if decimalPoint >= digits.count {
      return sign + digits + String(repeating: "0", count: decimalPoint - digits.count) + ".0"
    }
    let split = digits.index(digits.startIndex, offsetBy: decimalPoint)
    return sign + digits[..<split] + "." + digits[split...]
  }

  /// Python's `json.dumps`, as transformers' `tojson` calls it.
  struct JSONStyle {
    var indent: String?
    var itemSeparator: String
    var keySeparator: String
    var sortKeys: Bool
    var ensureASCII: Bool
  }

  static func json(_ value: JinjaValue, style: JSONStyle, level: Int = 0, into out: inout String) throws {
    guard level < 100 else {
      throw JinjaFailure("a value nested more than 100 levels deep cannot be written as JSON", kind: .limit)
    }
    switch value {
    case .null: out += "null"
    case .bool(let b): out += b ? "true" : "false"
    case .int(let i): out += String(i)
    case .float(let d):
      if d.isNaN {
        out += "NaN"
      } else if d.isInfinite {
        out += d < 0 ? "-Infinity" : "Infinity"
      } else {
        out += float(d)
      }
    case .string(let s): jsonString(s, ensureASCII: style.ensureASCII, into: &out)
    case .list(let items), .tuple(let items):
      guard !items.isEmpty else {
        out += "[]"
        return
      }
      out += "["
      for (k, item) in items.enumerated() {
        if k > 0 { out += style.itemSeparator }
        newline(style, level + 1, &out)
        try json(item, style: style, level: level + 1, into: &out)
      }
      newline(style, level, &out)
      out += "]"
    case .dict(let dict):
      guard dict.count > 0 else {
        out += "{}"
        return
      }
      var entries = dict.items
      if style.sortKeys {
        var failure: JinjaFailure?
        entries.sort { a, b in
          do { return try JinjaOperators.compare(a.key, "<", b.key) } catch {
            failure = error as? JinjaFailure
            return false
          }
        }
        if let failure { throw failure }
      }
      out += "{"
      for (k, entry) in entries.enumerated() {
        if k > 0 { out += style.itemSeparator }
        newline(style, level + 1, &out)
        switch entry.key {
        case .string(let s): jsonString(s, ensureASCII: style.ensureASCII, into: &out)
        case .null, .bool, .int, .float:
          var key = ""
          try json(entry.key, style: style, level: level + 1, into: &key)
          jsonString(key, ensureASCII: style.ensureASCII, into: &out)
        default: throw JinjaFailure("keys must be str, int, float, bool or None, not \(entry.key.typeName)")
        }
        out += style.keySeparator
        try json(entry.value, style: style, level: level + 1, into: &out)
      }
      newline(style, level, &out)
      out += "}"
    default:
      throw JinjaFailure("Object of type \(value.typeName) is not JSON serializable")
    }
  }

  private static func newline(_ style: JSONStyle, _ level: Int, _ out: inout String) {
    guard let indent = style.indent else { return }
    out += "\n"
    for _ in 0..<level { out += indent }
  }

  static func jsonString(_ s: String, ensureASCII: Bool, into out: inout String) {
    out += "\""
    for scalar in s.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case "\u{08}": out += "\\b"
      case "\u{0C}": out += "\\f"
      default:
        if scalar.value < 0x20 || (ensureASCII && scalar.value > 0x7E) {
          if scalar.value > 0xFFFF {
            let v = scalar.value - 0x10000
            out += "\\u" + hex(0xD800 + (v >> 10), digits: 4) + "\\u" + hex(0xDC00 + (v & 0x3FF), digits: 4)
          } else {
            out += "\\u" + hex(scalar.value, digits: 4)
          }
        } else {
          out.unicodeScalars.append(scalar)
        }
      }
    }
    out += "\""
  }
}

/// A JSON reader that keeps object key order (as Python's json.loads does) and tells integers from floats.
enum JSONValueReader {
  static func parse(_ text: String) throws -> JinjaValue {
    var reader = Reader(bytes: Array(text.utf8))
    reader.skipSpace()
    let value = try reader.value(depth: 0)
    reader.skipSpace()
    guard reader.at == reader.bytes.count else { throw reader.fail("trailing characters") }
    return value
  }

  private struct Reader {
    let bytes: [UInt8]
    var at = 0

    func fail(_ reason: String) -> JinjaError {
      JinjaError(
        kind: .runtime, template: "context", line: nil, message: "malformed JSON context: \(reason) at byte \(at)")
    }

    mutating func skipSpace() {
      while at < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[at]) { at += 1 }
    }

    mutating func literal(_ word: String) throws {
      let w = Array(word.utf8)
      guard at + w.count <= bytes.count, Array(bytes[at..<(at + w.count)]) == w else { throw fail("expected \(word)") }
      at += w.count
    }

    mutating func value(depth: Int) throws -> JinjaValue {
      guard depth < 200 else { throw fail("nesting too deep") }
      guard at < bytes.count else { throw fail("unexpected end") }
      switch bytes[at] {
      case UInt8(ascii: "{"):
        at += 1
        var dict = JinjaDict()
        skipSpace()
        if at < bytes.count && bytes[at] == UInt8(ascii: "}") {
          at += 1
          return .dict(dict)
        }
        while true {
          skipSpace()
          let key = try string()
          skipSpace()
          guard at < bytes.count, bytes[at] == UInt8(ascii: ":") else { throw fail("expected ':'") }
          at += 1
          skipSpace()
          dict.set(.string(key), try value(depth: depth + 1))
          skipSpace()
          guard at < bytes.count else { throw fail("unexpected end") }
          if bytes[at] == UInt8(ascii: ",") {
            at += 1
            continue
          }
          guard bytes[at] == UInt8(ascii: "}") else { throw fail("expected ',' or '}'") }
          at += 1
          return .dict(dict)
        }
      case UInt8(ascii: "["):
        at += 1
        var items: [JinjaValue] = []
        skipSpace()
        if at < bytes.count && bytes[at] == UInt8(ascii: "]") {
          at += 1
          return .list(items)
        }
        while true {
          skipSpace()
          items.append(try value(depth: depth + 1))
          skipSpace()
          guard at < bytes.count else { throw fail("unexpected end") }
          if bytes[at] == UInt8(ascii: ",") {
            at += 1
            continue
          }
          guard bytes[at] == UInt8(ascii: "]") else { throw fail("expected ',' or ']'") }
          at += 1
          return .list(items)
        }
      case UInt8(ascii: "\""): return .string(try string())
      case UInt8(ascii: "t"):
        try literal("true")
        return .bool(true)
      case UInt8(ascii: "f"):
        try literal("false")
        return .bool(false)
      case UInt8(ascii: "n"):
        try literal("null")
        return .null
      case UInt8(ascii: "N"):
        try literal("NaN")
        return .float(.nan)
      case UInt8(ascii: "I"):
        try literal("Infinity")
        return .float(.infinity)
      default:
        let start = at
        while at < bytes.count, "+-0123456789.eE".utf8.contains(bytes[at]) { at += 1 }
        let text = String(decoding: bytes[start..<at], as: UTF8.self)
        if text == "-" {
          try literal("Infinity")
          return .float(-.infinity)
        }
        if !text.contains(where: { ".eE".contains($0) }), let i = Int(text) { return .int(i) }
        guard let d = Double(text) else { throw fail("bad number '\(text)'") }
        return .float(d)
      }
    }

    mutating func string() throws -> String {
      guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw fail("expected a string") }
      at += 1
      var out: [UInt8] = []
      while at < bytes.count {
        let c = bytes[at]
        at += 1
        if c == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
        guard c == UInt8(ascii: "\\") else {
          out.append(c)
          continue
        }
        guard at < bytes.count else { break }
        let e = bytes[at]
        at += 1
        switch e {
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
          var code = try hex4()
          if (0xD800..<0xDC00).contains(code), at + 1 < bytes.count, bytes[at] == UInt8(ascii: "\\"),
            bytes[at + 1] == UInt8(ascii: "u")
          {
            at += 2
            let low = try hex4()
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
          }
          out.append(contentsOf: Array(String(Unicode.Scalar(code).map(Character.init) ?? "\u{FFFD}").utf8))
        default: out.append(e)
        }
      }
      throw fail("unterminated string")
    }

    mutating func hex4() throws -> UInt32 {
      guard at + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[at..<(at + 4)], as: UTF8.self), radix: 16)
      else {
        throw fail("bad \\u escape")
      }
      at += 4
      return v
    }
  }
}
