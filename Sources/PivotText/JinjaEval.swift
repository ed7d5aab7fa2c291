import Foundation

/// One render of a `JinjaTemplate`: output buffers, counters for the limits, and the generation spans.
final class JinjaInterpreter {
  let template: JinjaTemplate
  let context: [String: JinjaValue]
  let limits: JinjaLimits
  private let root = JinjaScope(parent: nil)
  /// The output, then one buffer per capture in progress (macro call, block set, filter block).
  private var buffers: [String] = [""]
  private var producedBytes = 0
  private var iterations = 0
  private var callDepth = 0
  private var generation: [Range<Int>] = []

  enum Flow { case normal, breakLoop, continueLoop }

  init(template: JinjaTemplate, context: [String: JinjaValue]) {
    self.template = template
    self.context = context
    limits = template.limits
  }

  func run() throws -> (text: String, generation: [Range<Int>]) {
    _ = try execute(template.body, in: root)
    return (buffers[0], generation)
  }

  private func error(_ failure: JinjaFailure, line: Int) -> JinjaError {
    JinjaError(kind: failure.kind, template: template.name, line: line, message: failure.message)
  }

  private func emit(_ text: String) throws {
    producedBytes += text.utf8.count
    guard producedBytes <= limits.maxOutputBytes else {
      throw JinjaFailure("the template produced more than \(limits.maxOutputBytes) bytes of text", kind: .limit)
    }
    buffers[buffers.count - 1] += text
  }

  private func capture(_ body: () throws -> Flow) throws -> (String, Flow) {
    buffers.append("")
    do {
      let flow = try body()
      return (buffers.removeLast(), flow)
    } catch {
      buffers.removeLast()
      throw error
    }
  }

  // MARK: Statements

  func execute(_ statements: [JinjaStatement], in scope: JinjaScope) throws -> Flow {
    for statement in statements {
      let flow = try execute(statement, in: scope)
      if flow != .normal { return flow }
    }
    return .normal
  }

  private func execute(_ statement: JinjaStatement, in scope: JinjaScope) throws -> Flow {
    do {
      return try run(statement, in: scope)
    } catch let failure as JinjaFailure {
      throw error(failure, line: statement.line)
    }
  }

  private func run(_ statement: JinjaStatement, in scope: JinjaScope) throws -> Flow {
    switch statement.kind {
    case .text(let text):
      try emit(text)
    case .output(let expressions):
      for expression in expressions { try emit(try PythonText.str(try evaluate(expression, scope))) }
    case .conditional(let branches, let otherwise):
      for branch in branches where try evaluate(branch.test, scope).truthy {
        return try execute(branch.body, in: scope)
      }
      return try execute(otherwise, in: scope)
    case .forLoop(let loop):
      return try runLoop(loop, in: scope)
    case .assign(let target, let expression):
      try assign(target, try evaluate(expression, scope), in: scope)
    case .assignBlock(let target, let filters, let body):
      let (text, flow) = try capture { try execute(body, in: JinjaScope(parent: scope)) }
      var value = JinjaValue.string(text)
      for filter in filters { value = try applyFilter(filter, to: value, scope) }
      try assign(target, value, in: scope)
      return flow
    case .macro(let macro):
      scope.variables[macro.name] = .callable(JinjaCallable(.macro(macro, scope)))
    case .filterBlock(let filters, let body):
      let (text, flow) = try capture { try execute(body, in: JinjaScope(parent: scope)) }
      var value = JinjaValue.string(text)
      for filter in filters { value = try applyFilter(filter, to: value, scope) }
      try emit(try PythonText.str(value))
      return flow
    case .with(let targets, let values, let body):
      let inner = JinjaScope(parent: scope)
      for (target, expression) in zip(targets, values) {
        try assign(target, try evaluate(expression, scope), in: inner)
      }
      return try execute(body, in: inner)
    case .generation(let body):
      guard buffers.count == 1 else {
        throw JinjaFailure(
          "{% generation %} inside a macro, block set or filter block is not supported: its place in the output is unknown"
        )
      }
      let start = buffers[0].utf8.count
      let flow = try execute(body, in: JinjaScope(parent: scope))
      generation.append(start..<buffers[0].utf8.count)
      return flow
    case .breakLoop:
      return .breakLoop
    case .continueLoop:
      return .continueLoop
    }
    return .normal
  }

  private func countIteration() throws {
    iterations += 1
    guard iterations <= limits.maxIterations else {
      throw JinjaFailure("the template ran more than \(limits.maxIterations) loop iterations", kind: .limit)
    }
  }

  private func runLoop(_ loop: JinjaForLoop, in scope: JinjaScope) throws -> Flow {
    var items = try JinjaOperators.iterate(try evaluate(loop.iterable, scope))
    if let condition = loop.condition {
      var kept: [JinjaValue] = []
      for item in items {
        try countIteration()
        let probe = JinjaScope(parent: scope)
        try assign(loop.target, item, in: probe)
        if try evaluate(condition, probe).truthy { kept.append(item) }
      }
      items = kept
    }
    if items.isEmpty { return try execute(loop.otherwise, in: JinjaScope(parent: scope)) }
    for (index, item) in items.enumerated() {
      try countIteration()
      let iteration = JinjaScope(parent: scope)
      try assign(loop.target, item, in: iteration)
      iteration.variables["loop"] = .loop(
        JinjaLoopInfo(
          index0: index, length: items.count,
          previous: index > 0 ? items[index - 1] : nil,
          next: index + 1 < items.count ? items[index + 1] : nil))
      if try execute(loop.body, in: iteration) == .breakLoop { break }
    }
    return .normal
  }

  private func assign(_ target: JinjaTarget, _ value: JinjaValue, in scope: JinjaScope) throws {
    switch target {
    case .name(let name):
      scope.variables[name] = value
    case .namespaceAttribute(let name, let attribute):
      guard case .namespace(let namespace) = lookup(name, scope) else {
        throw JinjaFailure("cannot assign attribute on non-namespace object")
      }
      try Self.checkNamespaceName(attribute)
      namespace.attributes.set(attribute, value)
    case .tuple(let targets):
      let items = try JinjaOperators.iterate(value, unpacking: true)
      guard items.count == targets.count else {
        throw JinjaFailure(
          items.count < targets.count
            ? "not enough values to unpack (expected \(targets.count), got \(items.count))"
            : "too many values to unpack (expected \(targets.count))")
      }
      for (target, item) in zip(targets, items) { try assign(target, item, in: scope) }
    }
  }

  /// transformers' TemplateNamespace refuses underscore names, which reach Python internals.
  static func checkNamespaceName(_ name: String) throws {
    if name.hasPrefix("_") {
      throw JinjaFailure(
        "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(name)'. Please rename the attribute."
      )
    }
  }

  static let globals: Set<String> = ["range", "namespace", "dict", "raise_exception", "strftime_now"]

  private func lookup(_ name: String, _ scope: JinjaScope) -> JinjaValue {
    if let value = scope.lookup(name) ?? context[name] { return value }
    if Self.globals.contains(name) { return .callable(JinjaCallable(.global(name))) }
    if ["lipsum", "cycler", "joiner"].contains(name) { return .callable(JinjaCallable(.unavailable(name))) }
    return .undefinedName(name)
  }

  // MARK: Expressions

  func evaluate(_ expression: JinjaExpression, _ scope: JinjaScope) throws -> JinjaValue {
    do {
      return try value(of: expression, scope)
    } catch let failure as JinjaFailure {
      throw error(failure, line: expression.line)
    }
  }

  private func value(of expression: JinjaExpression, _ scope: JinjaScope) throws -> JinjaValue {
    switch expression.kind {
    case .string(let s): return .string(s)
    case .integer(let i): return .int(i)
    case .float(let d): return .float(d)
    case .boolean(let b): return .bool(b)
    case .null: return .null
    case .name(let name): return lookup(name, scope)
    case .list(let items): return .list(try items.map { try evaluate($0, scope) })
    case .tuple(let items): return .tuple(try items.map { try evaluate($0, scope) })
    case .dict(let pairs):
      var dict = JinjaDict()
      for pair in pairs {
        let key = try evaluate(pair.key, scope)
        _ = try key.hashKey()
        dict.set(key, try evaluate(pair.value, scope))
      }
      return .dict(dict)
    case .attribute(let object, let name):
      return try JinjaOperators.attribute(try evaluate(object, scope), name)
    case .item(let object, let key):
      let container = try evaluate(object, scope)
      if case .slice(let start, let stop, let step) = key.kind {
        func bound(_ e: JinjaExpression?) throws -> Int? {
          guard let e else { return nil }
          let v = try evaluate(e, scope)
          if case .null = v { return nil }
          guard let i = v.integer else { throw JinjaFailure("slice indices must be integers or None") }
          return i
        }
        return try JinjaOperators.slice(container, try bound(start), try bound(stop), try bound(step))
      }
      return try JinjaOperators.item(container, try evaluate(key, scope))
    case .slice:
      throw JinjaFailure("a slice outside of brackets")
    case .call(let callee, let arguments):
      return try call(try evaluate(callee, scope), try evaluate(arguments, scope))
    case .filter(let subject, let filter):
      return try applyFilter(filter, to: try evaluate(subject, scope), scope)
    case .test(let subject, let name, let arguments):
      return .bool(try runTest(name, try evaluate(subject, scope), try evaluate(arguments, scope)))
    case .not(let operand):
      return .bool(!(try evaluate(operand, scope).truthy))
    case .negate(let operand):
      return try JinjaOperators.negate(try evaluate(operand, scope))
    case .plus(let operand):
      let v = try evaluate(operand, scope)
      if case .undefined(let hint) = v { throw JinjaFailure(hint) }
      if let i = v.integer { return .int(i) }
      if case .float = v { return v }
      throw JinjaFailure("bad operand type for unary +: '\(v.typeName)'")
    case .binary(let op, let left, let right):
      return try JinjaOperators.binary(
        op, try evaluate(left, scope), try evaluate(right, scope), limit: limits.maxOutputBytes)
    case .and(let left, let right):
      let l = try evaluate(left, scope)
      return l.truthy ? try evaluate(right, scope) : l
    case .or(let left, let right):
      let l = try evaluate(left, scope)
      return l.truthy ? l : try evaluate(right, scope)
    case .compare(let first, let comparisons):
      var left = try evaluate(first, scope)
      for comparison in comparisons {
        let right = try evaluate(comparison.operand, scope)
        guard try JinjaOperators.compare(left, comparison.op, right) else { return .bool(false) }
        left = right
      }
      return .bool(true)
    case .concat(let items):
      var text = ""
      for item in items { text += try PythonText.str(try evaluate(item, scope)) }
      guard text.utf8.count <= limits.maxOutputBytes else { throw JinjaOperators.tooLarge(limits.maxOutputBytes) }
      return .string(text)
    case .conditional(let test, let then, let otherwise):
      if try evaluate(test, scope).truthy { return try evaluate(then, scope) }
      guard let otherwise else {
        return .undefined(
          hint:
            "the inline if-expression on line \(expression.line) evaluated to false and no else section was defined.")
      }
      return try evaluate(otherwise, scope)
    case .namespaceReference(let name, let attribute):
      return try JinjaOperators.attribute(lookup(name, scope), attribute)
    }
  }

  private func evaluate(_ arguments: JinjaArgumentList, _ scope: JinjaScope) throws -> JinjaArguments {
    JinjaArguments(
      positional: try arguments.positional.map { try evaluate($0, scope) },
      keywords: try arguments.keywords.map { ($0.name, try evaluate($0.value, scope)) })
  }

  // MARK: Calls

  func call(_ callee: JinjaValue, _ arguments: JinjaArguments) throws -> JinjaValue {
    switch callee {
    case .callable(let callable):
      switch callable.kind {
      case .macro(let macro, let scope): return try callMacro(macro, scope, arguments)
      case .global(let name): return try callGlobal(name, arguments)
      case .method(let receiver, let name):
        return try JinjaMethods.call(receiver, name, arguments, limit: limits.maxOutputBytes)
      case .unavailable(let name): throw JinjaFailure("'\(name)' is not supported by Pivot's template interpreter")
      }
    case .undefined(let hint):
      throw JinjaFailure(hint)
    default:
      throw JinjaFailure("'\(callee.typeName)' object is not callable")
    }
  }

  private func callMacro(_ macro: JinjaMacro, _ definition: JinjaScope, _ arguments: JinjaArguments) throws
    -> JinjaValue
  {
    callDepth += 1
    defer { callDepth -= 1 }
    guard callDepth <= limits.maxCallDepth else {
      throw JinjaFailure(
        "macro calls nested more than \(limits.maxCallDepth) deep (runaway recursion in '\(macro.name)'?)", kind: .limit
      )
    }
    let frame = JinjaScope(parent: definition)
    var keywords = arguments.keywords
    for (k, parameter) in macro.parameters.enumerated() {
      if k < arguments.positional.count {
        if keywords.contains(where: { $0.0 == parameter }) {
          throw JinjaFailure("macro '\(macro.name)' got multiple values for argument '\(parameter)'")
        }
        frame.variables[parameter] = arguments.positional[k]
      } else if let at = keywords.firstIndex(where: { $0.0 == parameter }) {
        frame.variables[parameter] = keywords.remove(at: at).1
      } else if let fallback = macro.defaults[k] {
        frame.variables[parameter] = try evaluate(fallback, frame)
      } else {
        frame.variables[parameter] = .undefined(hint: "parameter '\(parameter)' was not provided")
      }
    }
    let extra = Array(arguments.positional.dropFirst(macro.parameters.count))
    if !extra.isEmpty && !macro.takesVarargs {
      throw JinjaFailure("macro '\(macro.name)' takes not more than \(macro.parameters.count) argument(s)")
    }
    if let first = keywords.first, !macro.takesKwargs {
      throw JinjaFailure("macro '\(macro.name)' takes no keyword argument '\(first.0)'")
    }
    frame.variables["varargs"] = .tuple(extra)
    var kwargs = JinjaDict()
    for (name, value) in keywords { kwargs.set(name, value) }
    frame.variables["kwargs"] = .dict(kwargs)
    let (text, _) = try capture { try execute(macro.body, in: frame) }
    return .string(text)
  }

  private func callGlobal(_ name: String, _ arguments: JinjaArguments) throws -> JinjaValue {
    switch name {
    case "range":
      guard arguments.keywords.isEmpty, (1...3).contains(arguments.positional.count) else {
        throw JinjaFailure("range expected 1 to 3 integer arguments")
      }
      let numbers = try arguments.positional.map { value -> Int in
        guard let i = value.integer else {
          throw JinjaFailure("'\(value.typeName)' object cannot be interpreted as an integer")
        }
        return i
      }
      let (start, stop, step) =
        numbers.count == 1 ? (0, numbers[0], 1) : (numbers[0], numbers[1], numbers.count == 3 ? numbers[2] : 1)
      guard step != 0 else { throw JinjaFailure("range() arg 3 must not be zero") }
      let count =
        step > 0
        ? (stop > start ? (stop - start - 1) / step + 1 : 0) : (start > stop ? (start - stop - 1) / -step + 1 : 0)
      // The sandbox's MAX_RANGE.
      guard count <= 100_000 else {
        throw JinjaFailure("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).", kind: .limit)
      }
      return .list((0..<count).map { .int(start + $0 * step) })
    case "namespace", "dict":
      var attributes = JinjaDict()
      for argument in arguments.positional {
        switch argument {
        case .dict(let d): for (key, value) in zip(d.keys, d.values) { attributes.set(key, value) }
        case .namespace(let ns):
          for (key, value) in zip(ns.attributes.keys, ns.attributes.values) { attributes.set(key, value) }
        default:
          for pair in try JinjaOperators.iterate(argument) {
            let parts = try JinjaOperators.iterate(pair, unpacking: true)
            guard parts.count == 2 else {
              throw JinjaFailure("dictionary update sequence element has length \(parts.count); 2 is required")
            }
            _ = try parts[0].hashKey()
            attributes.set(parts[0], parts[1])
          }
        }
      }
      for (key, value) in arguments.keywords { attributes.set(key, value) }
      if name == "dict" { return .dict(attributes) }
      for key in attributes.keys {
        if case .string(let s) = key { try Self.checkNamespaceName(s) }
      }
      return .namespace(JinjaNamespace(attributes))
    case "raise_exception":
      let message = try arguments.positional.first.map(PythonText.str) ?? ""
      throw JinjaFailure(message, kind: .raised)
    case "strftime_now":
      guard case .string(let format)? = arguments.positional.first else {
        throw JinjaFailure("strftime_now expects a format string")
      }
      var now = time(nil)
      var parts = tm()
      localtime_r(&now, &parts)
      var buffer = [Int8](repeating: 0, count: 512)
      let count = strftime(&buffer, buffer.count, format, &parts)
      return .string(String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self))
    default:
      throw JinjaFailure("'\(name)' is not supported by Pivot's template interpreter")
    }
  }

  // MARK: Filters

  private func applyFilter(_ filter: JinjaFilterCall, to value: JinjaValue, _ scope: JinjaScope) throws -> JinjaValue {
    do {
      return try JinjaFilters.apply(filter.name, value, try evaluate(filter.arguments, scope), interpreter: self)
    } catch let failure as JinjaFailure {
      throw error(failure, line: filter.line)
    }
  }

  func runTest(_ name: String, _ value: JinjaValue, _ arguments: JinjaArguments) throws -> Bool {
    try JinjaTests.run(name, value, arguments)
  }
}

/// Call arguments after evaluation.
struct JinjaArguments {
  var positional: [JinjaValue] = []
  var keywords: [(String, JinjaValue)] = []

  /// Binds to Python-style parameters; `defaults[k] == nil` makes parameter k required.
  func bind(_ function: String, _ names: [String], _ defaults: [JinjaValue?]) throws -> [JinjaValue] {
    guard positional.count <= names.count else {
      throw JinjaFailure("\(function)() takes at most \(names.count) argument(s) (\(positional.count) given)")
    }
    var values: [JinjaValue] = []
    for (k, name) in names.enumerated() {
      if k < positional.count {
        values.append(positional[k])
      } else if let keyword = keywords.first(where: { $0.0 == name }) {
        values.append(keyword.1)
      } else if let fallback = defaults[k] {
        values.append(fallback)
      } else {
        throw JinjaFailure("\(function)() missing required argument '\(name)'")
      }
    }
    if let unknown = keywords.first(where: { !names.contains($0.0) }) {
      throw JinjaFailure("\(function)() got an unexpected keyword argument '\(unknown.0)'")
    }
    return values
  }
}

// MARK: Operators

enum JinjaOperators {
  static func tooLarge(_ limit: Int) -> JinjaFailure {
    JinjaFailure("a value would be larger than the \(limit)-byte limit", kind: .limit)
  }

  /// Python's iteration: list and tuple items, a string's characters, a dict's keys; Undefined is empty.
  static func iterate(_ value: JinjaValue, unpacking: Bool = false) throws -> [JinjaValue] {
    switch value {
    case .list(let items), .tuple(let items): return items
    case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
    case .dict(let d): return d.keys
    case .undefined(let hint):
      if unpacking { throw JinjaFailure(hint) }
      return []
    default: throw JinjaFailure("'\(value.typeName)' object is not iterable")
    }
  }

  static func attribute(_ value: JinjaValue, _ name: String) throws -> JinjaValue {
    switch value {
    case .undefined(let hint):
      throw JinjaFailure(hint)
    case .dict(let d):
      if JinjaMethods.dict.contains(name) { return .callable(JinjaCallable(.method(value, name))) }
      if JinjaMethods.unsafeDict.contains(name) { return unsafe(name, value) }
      return d[name] ?? .undefined(hint: "'dict object' has no attribute '\(name)'")
    case .string:
      if JinjaMethods.string.contains(name) { return .callable(JinjaCallable(.method(value, name))) }
      if JinjaMethods.otherString.contains(name) { return .callable(JinjaCallable(.unavailable("str.\(name)"))) }
      return .undefined(hint: "'str object' has no attribute '\(name)'")
    case .list, .tuple:
      if ["count", "index", "copy"].contains(name) && (name != "copy" || value.typeName == "list") {
        return .callable(JinjaCallable(.method(value, name)))
      }
      if case .list = value, JinjaMethods.unsafeList.contains(name) { return unsafe(name, value) }
      return .undefined(hint: "'\(value.typeName) object' has no attribute '\(name)'")
    case .namespace(let ns):
      return ns.attributes[name] ?? .undefined(hint: "'Namespace object' has no attribute '\(name)'")
    case .loop(let loop):
      switch name {
      case "index": return .int(loop.index0 + 1)
      case "index0": return .int(loop.index0)
      case "revindex": return .int(loop.length - loop.index0)
      case "revindex0": return .int(loop.length - loop.index0 - 1)
      case "first": return .bool(loop.index0 == 0)
      case "last": return .bool(loop.index0 == loop.length - 1)
      case "length": return .int(loop.length)
      case "depth": return .int(1)
      case "depth0": return .int(0)
      case "previtem": return loop.previous ?? .undefined(hint: "there is no previous item")
      case "nextitem": return loop.next ?? .undefined(hint: "there is no next item")
      case "cycle": return .callable(JinjaCallable(.method(value, name)))
      case "changed": return .callable(JinjaCallable(.unavailable("loop.changed")))
      default: return .undefined(hint: "'LoopContext object' has no attribute '\(name)'")
      }
    case .null:
      return .undefined(hint: "'None' has no attribute '\(name)'")
    default:
      return .undefined(hint: "'\(value.typeName) object' has no attribute '\(name)'")
    }
  }

  /// The ImmutableSandboxedEnvironment's answer to methods that would modify a value.
  private static func unsafe(_ name: String, _ value: JinjaValue) -> JinjaValue {
    .undefined(hint: "access to attribute '\(name)' of '\(value.typeName)' object is unsafe.")
  }

  /// `a[key]`: jinja2 tries the item, then (for a string key) the attribute, then gives Undefined.
  static func item(_ value: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
    let missing: JinjaValue
    if case .string(let name) = key {
      missing = .undefined(hint: "'\(value.typeName) object' has no attribute '\(name)'")
    } else {
      missing = .undefined(
        hint: "'\(value.typeName) object' has no element \((try? PythonText.repr(key, depth: 0)) ?? "")")
    }
    switch value {
    case .undefined(let hint):
      throw JinjaFailure(hint)
    case .dict(let d):
      if let found = try? d.value(for: key) { return found }
    case .list(let items), .tuple(let items):
      if let i = key.integer {
        let index = i < 0 ? i + items.count : i
        return items.indices.contains(index) ? items[index] : missing
      }
    case .string(let s):
      if let i = key.integer {
        let scalars = Array(s.unicodeScalars)
        let index = i < 0 ? i + scalars.count : i
        return scalars.indices.contains(index) ? .string(String(scalars[index])) : missing
      }
    default:
      break
    }
    if case .string(let name) = key { return try attribute(value, name) }
    return missing
  }

  /// Python's slice with PySlice_AdjustIndices.
  static func slice(_ value: JinjaValue, _ start: Int?, _ stop: Int?, _ step: Int?) throws -> JinjaValue {
    let step = step ?? 1
    guard step != 0 else { throw JinjaFailure("slice step cannot be zero") }
    func indices(_ count: Int) -> [Int] {
      let lower = step > 0 ? 0 : -1
      let upper = step > 0 ? count : count - 1
      func adjust(_ v: Int?, _ fallback: Int) -> Int {
        guard let v else { return fallback }
        return v < 0 ? max(v + count, lower) : min(v, upper)
      }
      var i = adjust(start, step > 0 ? lower : upper)
      let end = adjust(stop, step > 0 ? upper : lower)
      var out: [Int] = []
      while step > 0 ? i < end : i > end {
        out.append(i)
        i += step
      }
      return out
    }
    switch value {
    case .undefined(let hint): throw JinjaFailure(hint)
    case .list(let items): return .list(indices(items.count).map { items[$0] })
    case .tuple(let items): return .tuple(indices(items.count).map { items[$0] })
    case .string(let s):
      let scalars = Array(s.unicodeScalars)
      return .string(PythonText.string(indices(scalars.count).map { scalars[$0] }))
    default: throw JinjaFailure("'\(value.typeName)' object is not subscriptable")
    }
  }

  static func negate(_ value: JinjaValue) throws -> JinjaValue {
    switch value {
    case .undefined(let hint): throw JinjaFailure(hint)
    case .bool, .int:
      let (result, overflow) = (0).subtractingReportingOverflow(value.integer!)
      guard !overflow else { throw JinjaFailure("integer overflow") }
      return .int(result)
    case .float(let d): return .float(-d)
    default: throw JinjaFailure("bad operand type for unary -: '\(value.typeName)'")
    }
  }

  static func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue, limit: Int) throws -> JinjaValue {
    if case .undefined(let hint) = a { throw JinjaFailure(hint) }
    if case .undefined(let hint) = b { throw JinjaFailure(hint) }
    func unsupported() -> JinjaFailure {
      JinjaFailure("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
    }
    func checked(_ result: (partialValue: Int, overflow: Bool)) throws -> JinjaValue {
      guard !result.overflow else { throw JinjaFailure("integer overflow in '\(op)'") }
      return .int(result.partialValue)
    }
    switch op {
    case "+":
      switch (a, b) {
      case (.string(let x), .string(let y)):
        guard x.utf8.count + y.utf8.count <= limit else { throw tooLarge(limit) }
        return .string(x + y)
      case (.list(let x), .list(let y)): return .list(x + y)
      case (.tuple(let x), .tuple(let y)): return .tuple(x + y)
      case (.string, _): throw JinjaFailure("can only concatenate str (not \"\(b.typeName)\") to str")
      case (.list, _): throw JinjaFailure("can only concatenate list (not \"\(b.typeName)\") to list")
      default:
        if let x = a.integer, let y = b.integer { return try checked(x.addingReportingOverflow(y)) }
        if let x = a.number, let y = b.number { return .float(x + y) }
        throw unsupported()
      }
    case "-":
      if let x = a.integer, let y = b.integer { return try checked(x.subtractingReportingOverflow(y)) }
      if let x = a.number, let y = b.number { return .float(x - y) }
      throw unsupported()
    case "*":
      func repeated(_ count: Int, _ unit: Int) throws -> Int {
        let n = max(0, count)
        guard unit == 0 || n <= limit / max(unit, 1) else { throw tooLarge(limit) }
        return n
      }
      switch (a, b) {
      case (.string(let s), _) where b.integer != nil:
        return .string(String(repeating: s, count: try repeated(b.integer!, s.utf8.count)))
      case (_, .string(let s)) where a.integer != nil:
        return .string(String(repeating: s, count: try repeated(a.integer!, s.utf8.count)))
      case (.list(let items), _) where b.integer != nil:
        let n = try repeated(b.integer!, items.count * 8)
        return .list(Array([[JinjaValue]](repeating: items, count: n).joined()))
      case (_, .list(let items)) where a.integer != nil:
        let n = try repeated(a.integer!, items.count * 8)
        return .list(Array([[JinjaValue]](repeating: items, count: n).joined()))
      default:
        if let x = a.integer, let y = b.integer { return try checked(x.multipliedReportingOverflow(by: y)) }
        if let x = a.number, let y = b.number { return .float(x * y) }
        throw JinjaFailure(
          a.typeName == "str" || b.typeName == "str"
            ? "can't multiply sequence by non-int of type '\(a.typeName == "str" ? b.typeName : a.typeName)'"
            : unsupported().message)
      }
    case "/":
      guard let x = a.number, let y = b.number else { throw unsupported() }
      guard y != 0 else { throw JinjaFailure("division by zero") }
      return .float(x / y)
    case "//":
      if let x = a.integer, let y = b.integer {
        guard y != 0 else { throw JinjaFailure("integer division or modulo by zero") }
        guard !(x == Int.min && y == -1) else { throw JinjaFailure("integer overflow in '//'") }
        var q = x / y
        if x % y != 0 && ((x < 0) != (y < 0)) { q -= 1 }
        return .int(q)
      }
      guard let x = a.number, let y = b.number else { throw unsupported() }
      guard y != 0 else { throw JinjaFailure("float floor division by zero") }
      return .float((x / y).rounded(.down))
    case "%":
      if case .string(let format) = a { return .string(try PythonFormat.percent(format, b, limit: limit)) }
      if let x = a.integer, let y = b.integer {
        guard y != 0 else { throw JinjaFailure("integer division or modulo by zero") }
        guard y != -1 else { return .int(0) }
        var r = x % y
        if r != 0 && ((r < 0) != (y < 0)) { r += y }
        return .int(r)
      }
      guard let x = a.number, let y = b.number else { throw unsupported() }
      guard y != 0 else { throw JinjaFailure("float modulo") }
      var r = fmod(x, y)
      if r != 0 && ((r < 0) != (y < 0)) { r += y }
      return .float(r)
    case "**":
      if let x = a.integer, let y = b.integer, y >= 0 {
        var result = 1
        var base = x
        var exponent = y
        while exponent > 0 {
          if exponent & 1 == 1 {
            let (r, o) = result.multipliedReportingOverflow(by: base)
            guard !o else { throw JinjaFailure("integer result of '**' too large") }
            result = r
          }
          exponent >>= 1
          if exponent > 0 {
            let (r, o) = base.multipliedReportingOverflow(by: base)
            guard !o else { throw JinjaFailure("integer result of '**' too large") }
            base = r
          }
        }
        return .int(result)
      }
      guard let x = a.number, let y = b.number else { throw unsupported() }
      if x == 0 && y < 0 { throw JinjaFailure("0.0 cannot be raised to a negative power") }
      return .float(pow(x, y))
    default:
      throw JinjaFailure("unknown operator '\(op)'")
    }
  }

  /// Python's `==`.
  static func equal(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
    switch (a, b) {
    case (.undefined, .undefined), (.null, .null): return true
    case (.string(let x), .string(let y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
    case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
      return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
    case (.dict(let x), .dict(let y)):
      guard x.count == y.count else { return false }
      for (key, value) in zip(x.keys, x.values) {
        guard let other = try? y.value(for: key), equal(value, other) else { return false }
      }
      return true
    case (.namespace(let x), .namespace(let y)): return x === y
    case (.callable(let x), .callable(let y)): return x === y
    default:
      if let x = a.integer, let y = b.integer { return x == y }
      if let x = a.number, let y = b.number { return x == y }
      return false
    }
  }

  /// Python's `<`, for sorting and comparisons.
  static func less(_ a: JinjaValue, _ b: JinjaValue, _ op: String = "<") throws -> Bool {
    switch (a, b) {
    case (.undefined(let hint), _), (_, .undefined(let hint)): throw JinjaFailure(hint)
    case (.string(let x), .string(let y)): return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars)
    case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
      for (p, q) in zip(x, y) where !equal(p, q) { return try less(p, q, op) }
      return x.count < y.count
    default:
      if let x = a.integer, let y = b.integer { return x < y }
      if let x = a.number, let y = b.number { return x < y }
      throw JinjaFailure("'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
    }
  }

  static func compare(_ a: JinjaValue, _ op: String, _ b: JinjaValue) throws -> Bool {
    switch op {
    case "==": return equal(a, b)
    case "!=": return !equal(a, b)
    case "<": return try less(a, b, op)
    case ">": return try less(b, a, op)
    case "<=": return try !less(b, a, op)
    case ">=": return try !less(a, b, op)
    case "in": return try contains(b, a)
    case "notin": return try !contains(b, a)
    default: throw JinjaFailure("unknown comparison '\(op)'")
    }
  }

  /// Python's `item in container`.
  static func contains(_ container: JinjaValue, _ item: JinjaValue) throws -> Bool {
    switch container {
    case .string(let s):
      guard case .string(let needle) = item else {
        throw JinjaFailure("'in <string>' requires string as left operand, not \(item.typeName)")
      }
      return PythonText.find(needle, in: s) != nil
    case .list(let items), .tuple(let items): return items.contains { equal($0, item) }
    case .dict(let d): return try d.value(for: item) != nil
    case .undefined: return false
    default: throw JinjaFailure("argument of type '\(container.typeName)' is not iterable")
    }
  }

  /// Python's `len()`.
  static func length(_ value: JinjaValue) throws -> Int {
    switch value {
    case .string(let s): return s.unicodeScalars.count
    case .list(let items), .tuple(let items): return items.count
    case .dict(let d): return d.count
    case .undefined: return 0
    default: throw JinjaFailure("object of type '\(value.typeName)' has no len()")
    }
  }

  /// A stable sort with a comparison that may throw (Python's `sorted`).
  static func sorted(_ items: [JinjaValue], key: (JinjaValue) throws -> JinjaValue, reverse: Bool) throws
    -> [JinjaValue]
  {
    let keys = try items.map(key)
    var failure: Error?
    let order = items.indices.sorted { i, j in
      do {
        if reverse ? try less(keys[j], keys[i]) : try less(keys[i], keys[j]) { return true }
        if reverse ? try less(keys[i], keys[j]) : try less(keys[j], keys[i]) { return false }
      } catch {
        failure = error
      }
      return i < j
    }
    if let failure { throw failure }
    return order.map { items[$0] }
  }
}
