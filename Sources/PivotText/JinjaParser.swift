import Foundation

// MARK: Syntax tree

struct JinjaExpression: Sendable {
  let line: Int
  let kind: Kind

  indirect enum Kind: Sendable {
    case string(String)
    case integer(Int)
    case float(Double)
    case boolean(Bool)
    case null
    case name(String)
    case list([JinjaExpression])
    case tuple([JinjaExpression])
    case dict([JinjaPair])
    case attribute(JinjaExpression, String)
    case item(JinjaExpression, JinjaExpression)
    /// Only as the key of `item`: `a[start:stop:step]`.
    case slice(JinjaExpression?, JinjaExpression?, JinjaExpression?)
    case call(JinjaExpression, JinjaArgumentList)
    case filter(JinjaExpression, JinjaFilterCall)
    case test(JinjaExpression, String, JinjaArgumentList)
    case not(JinjaExpression)
    case negate(JinjaExpression)
    case plus(JinjaExpression)
    /// `+ - * / // % **`
    case binary(String, JinjaExpression, JinjaExpression)
    case and(JinjaExpression, JinjaExpression)
    case or(JinjaExpression, JinjaExpression)
    /// `a < b <= c`: each operator with its right operand (`== != < <= > >= in notin`).
    case compare(JinjaExpression, [JinjaComparison])
    /// `a ~ b ~ c`
    case concat([JinjaExpression])
    case conditional(test: JinjaExpression, then: JinjaExpression, otherwise: JinjaExpression?)
    /// Only as an assignment target: `ns.attr`.
    case namespaceReference(String, String)
  }
}

struct JinjaPair: Sendable {
  let key: JinjaExpression
  let value: JinjaExpression
}

struct JinjaComparison: Sendable {
  let op: String
  let operand: JinjaExpression
}

struct JinjaKeywordArgument: Sendable {
  let name: String
  let value: JinjaExpression
}

struct JinjaArgumentList: Sendable {
  var positional: [JinjaExpression] = []
  var keywords: [JinjaKeywordArgument] = []
}

struct JinjaFilterCall: Sendable {
  let name: String
  let arguments: JinjaArgumentList
  let line: Int
}

indirect enum JinjaTarget: Sendable {
  case name(String)
  case namespaceAttribute(String, String)
  case tuple([JinjaTarget])
}

struct JinjaBranch: Sendable {
  let test: JinjaExpression
  let body: [JinjaStatement]
}

struct JinjaForLoop: Sendable {
  let target: JinjaTarget
  let iterable: JinjaExpression
  let condition: JinjaExpression?
  let body: [JinjaStatement]
  let otherwise: [JinjaStatement]
}

struct JinjaMacro: Sendable {
  let name: String
  let parameters: [String]
  let defaults: [JinjaExpression?]
  let body: [JinjaStatement]
  /// The body reads `varargs` / `kwargs`, so extra arguments are accepted (as in jinja2).
  let takesVarargs: Bool
  let takesKwargs: Bool
}

struct JinjaStatement: Sendable {
  let line: Int
  let kind: Kind

  indirect enum Kind: Sendable {
    case text(String)
    /// `{{ x }}` and `{% print a, b %}`
    case output([JinjaExpression])
    case conditional([JinjaBranch], otherwise: [JinjaStatement])
    case forLoop(JinjaForLoop)
    case assign(JinjaTarget, JinjaExpression)
    /// `{% set x | filters %}body{% endset %}`
    case assignBlock(JinjaTarget, [JinjaFilterCall], [JinjaStatement])
    case macro(JinjaMacro)
    case filterBlock([JinjaFilterCall], [JinjaStatement])
    case with([JinjaTarget], [JinjaExpression], [JinjaStatement])
    /// transformers' `{% generation %}`: the body is assistant output.
    case generation([JinjaStatement])
    case breakLoop
    case continueLoop
  }
}

// MARK: Lexer

struct JinjaToken {
  enum Kind: Equatable {
    case text(String)
    case variableBegin, variableEnd, blockBegin, blockEnd
    case name(String)
    case string(String)
    case integer(Int)
    case float(Double)
    case op(String)
    case eof
  }

  let kind: Kind
  let line: Int
}

/// jinja2's lexer with trim_blocks and lstrip_blocks on and keep_trailing_newline off.
struct JinjaLexer {
  private let s: [Unicode.Scalar]
  private let templateName: String
  private var pos = 0
  private var line = 1
  /// The last match ended a line (jinja2's `line_starting`): lstrip_blocks may then strip text with no newline.
  private var lineStarting = true
  private var tokens: [JinjaToken] = []

  init(source: String, templateName: String) {
    // Every newline becomes "\n"; one trailing newline is dropped, as jinja2 does by default.
    var scalars: [Unicode.Scalar] = []
    let input = Array(source.unicodeScalars)
    scalars.reserveCapacity(input.count)
    var i = 0
    while i < input.count {
      if input[i] == "\r" {
        scalars.append("\n")
        if i + 1 < input.count && input[i + 1] == "\n" { i += 1 }
      } else {
        scalars.append(input[i])
      }
      i += 1
    }
    if scalars.last == "\n" { scalars.removeLast() }
    s = scalars
    self.templateName = templateName
  }

  private func fail(_ message: String) -> JinjaError {
    JinjaError(kind: .syntax, template: templateName, line: line, message: message)
  }

  private enum Opening { case variable, block, comment }

  private func has(_ text: String, at index: Int) -> Bool {
    var k = index
    for scalar in text.unicodeScalars {
      guard k < s.count, s[k] == scalar else { return false }
      k += 1
    }
    return true
  }

  private func newlines(_ range: Range<Int>) -> Int {
    var count = 0
    for k in range where s[k] == "\n" { count += 1 }
    return count
  }

  private func nextOpening(from start: Int) -> (Int, Opening)? {
    var k = start
    while k + 1 < s.count {
      if s[k] == "{" {
        switch s[k + 1] {
        case "{": return (k, .variable)
        case "%": return (k, .block)
        case "#": return (k, .comment)
        default: break
        }
      }
      k += 1
    }
    return nil
  }

  /// Index just past `{% raw %}` (or `{%- raw -%}…`) at `open`, if that is what is there.
  private func rawBegin(at open: Int) -> Int? {
    var k = open + 2
    if k < s.count && (s[k] == "-" || s[k] == "+") { k += 1 }
    while k < s.count && PythonText.isSpace(s[k]) { k += 1 }
    guard has("raw", at: k) else { return nil }
    k += 3
    while k < s.count && PythonText.isSpace(s[k]) { k += 1 }
    if has("-%}", at: k) {
      k += 3
      while k < s.count && PythonText.isSpace(s[k]) { k += 1 }
      return k
    }
    if has("%}", at: k) { return k + 2 }
    return nil
  }

  /// The text before a tag, after `-` (strip all whitespace) or lstrip_blocks (strip the tag's indentation).
  private func textBefore(_ range: Range<Int>, sign: Unicode.Scalar?, lstrip: Bool) -> Range<Int> {
    if sign == "-" {
      var end = range.upperBound
      while end > range.lowerBound && PythonText.isSpace(s[end - 1]) { end -= 1 }
      return range.lowerBound..<end
    }
    guard sign != "+" && lstrip else { return range }
    var lineStart = range.lowerBound
    var k = range.upperBound
    while k > range.lowerBound {
      if s[k - 1] == "\n" {
        lineStart = k
        break
      }
      k -= 1
    }
    guard lineStart > range.lowerBound || lineStarting, lineStart < range.upperBound else { return range }
    for k in lineStart..<range.upperBound where !PythonText.isSpace(s[k]) { return range }
    return range.lowerBound..<lineStart
  }

  private mutating func emitText(_ range: Range<Int>) {
    guard !range.isEmpty else { return }
    tokens.append(JinjaToken(kind: .text(PythonText.string(s[range])), line: line))
  }

  mutating func tokenize() throws -> [JinjaToken] {
    while pos < s.count {
      guard let (open, opening) = nextOpening(from: pos) else {
        emitText(pos..<s.count)
        line += newlines(pos..<s.count)
        pos = s.count
        break
      }
      let sign: Unicode.Scalar? = open + 2 < s.count && (s[open + 2] == "-" || s[open + 2] == "+") ? s[open + 2] : nil
      let raw = opening == .block ? rawBegin(at: open) : nil
      let text = textBefore(pos..<open, sign: sign, lstrip: opening != .variable)
      emitText(text)
      line += newlines(pos..<open)
      if let raw {
        line += newlines(open..<raw)
        lineStarting = s[raw - 1] == "\n"
        pos = raw
        try lexRaw()
        continue
      }
      pos = open + 2 + (sign == nil ? 0 : 1)
      lineStarting = false
      switch opening {
      case .comment: try lexComment()
      case .block:
        tokens.append(JinjaToken(kind: .blockBegin, line: line))
        try lexTag(block: true)
      case .variable:
        tokens.append(JinjaToken(kind: .variableBegin, line: line))
        try lexTag(block: false)
      }
    }
    tokens.append(JinjaToken(kind: .eof, line: line))
    return tokens
  }

  private mutating func consumeSpace() {
    var consumedNewline = false
    while pos < s.count && PythonText.isSpace(s[pos]) {
      consumedNewline = s[pos] == "\n"
      if s[pos] == "\n" { line += 1 }
      pos += 1
    }
    lineStarting = consumedNewline
  }

  private mutating func lexComment() throws {
    var k = pos
    while k < s.count {
      if has("+#}", at: k) {
        line += newlines(pos..<k)
        pos = k + 3
        lineStarting = false
        return
      }
      if has("-#}", at: k) {
        line += newlines(pos..<k)
        pos = k + 3
        lineStarting = false
        consumeSpace()
        return
      }
      if has("#}", at: k) {
        line += newlines(pos..<k)
        pos = k + 2
        lineStarting = false
        if pos < s.count && s[pos] == "\n" {  // trim_blocks
          pos += 1
          line += 1
          lineStarting = true
        }
        return
      }
      k += 1
    }
    throw fail("Missing end of comment tag")
  }

  /// `{% raw %}…{% endraw %}`: the text is data, whitespace control applies at endraw.
  private mutating func lexRaw() throws {
    var k = pos
    while k + 1 < s.count {
      if s[k] == "{" && s[k + 1] == "%" {
        var j = k + 2
        let sign: Unicode.Scalar? = j < s.count && (s[j] == "-" || s[j] == "+") ? s[j] : nil
        if sign != nil { j += 1 }
        while j < s.count && PythonText.isSpace(s[j]) { j += 1 }
        if has("endraw", at: j) {
          j += 6
          while j < s.count && PythonText.isSpace(s[j]) { j += 1 }
          var end: Int?
          var trailingSpace = false
          var trimNewline = false
          if has("+%}", at: j) {
            end = j + 3
          } else if has("-%}", at: j) {
            end = j + 3
            trailingSpace = true
          } else if has("%}", at: j) {
            end = j + 2
            trimNewline = true
          }
          if let end {
            emitText(textBefore(pos..<k, sign: sign, lstrip: true))
            line += newlines(pos..<end)
            pos = end
            lineStarting = false
            if trailingSpace { consumeSpace() }
            if trimNewline && pos < s.count && s[pos] == "\n" {
              pos += 1
              line += 1
              lineStarting = true
            }
            return
          }
        }
      }
      k += 1
    }
    throw fail("Missing end of raw directive")
  }

  private mutating func lexTag(block: Bool) throws {
    var balance: [Unicode.Scalar] = []
    while pos < s.count {
      if balance.isEmpty {
        if block {
          if has("+%}", at: pos) {
            tokens.append(JinjaToken(kind: .blockEnd, line: line))
            pos += 3
            lineStarting = false
            return
          }
          if has("-%}", at: pos) {
            tokens.append(JinjaToken(kind: .blockEnd, line: line))
            pos += 3
            consumeSpace()
            return
          }
          if has("%}", at: pos) {
            tokens.append(JinjaToken(kind: .blockEnd, line: line))
            pos += 2
            lineStarting = false
            if pos < s.count && s[pos] == "\n" {  // trim_blocks
              pos += 1
              line += 1
              lineStarting = true
            }
            return
          }
        } else {
          if has("-}}", at: pos) {
            tokens.append(JinjaToken(kind: .variableEnd, line: line))
            pos += 3
            consumeSpace()
            return
          }
          if has("}}", at: pos) {
            tokens.append(JinjaToken(kind: .variableEnd, line: line))
            pos += 2
            lineStarting = false
            return
          }
        }
      }
      let c = s[pos]
      if PythonText.isSpace(c) {
        while pos < s.count && PythonText.isSpace(s[pos]) {
          if s[pos] == "\n" { line += 1 }
          pos += 1
        }
        continue
      }
      if let (value, end) = try number(at: pos) {
        tokens.append(JinjaToken(kind: value, line: line))
        pos = end
        continue
      }
      if c == "_" || c.properties.isXIDStart {
        var end = pos + 1
        while end < s.count && (s[end] == "_" || s[end].properties.isXIDContinue) { end += 1 }
        tokens.append(JinjaToken(kind: .name(PythonText.string(s[pos..<end])), line: line))
        pos = end
        continue
      }
      if c == "'" || c == "\"" {
        var end = pos + 1
        var closed = false
        while end < s.count {
          if s[end] == "\\" {
            end += 2
            continue
          }
          if s[end] == c {
            closed = true
            break
          }
          end += 1
        }
        guard closed else { throw fail("unexpected char \(PythonText.reprString(String(c))) at \(pos)") }
        let value = try unescape(pos + 1..<end)
        tokens.append(JinjaToken(kind: .string(value), line: line))
        line += newlines(pos..<end)
        pos = end + 1
        continue
      }
      let two = pos + 1 < s.count ? String(String.UnicodeScalarView([c, s[pos + 1]])) : ""
      let op: String
      if ["//", "**", "==", "!=", ">=", "<="].contains(two) {
        op = two
      } else if "+-/*%~[](){}><=.:|,;".unicodeScalars.contains(c) {
        op = String(c)
      } else {
        throw fail("unexpected char \(PythonText.reprString(String(c))) at \(pos)")
      }
      switch op {
      case "{": balance.append("}")
      case "(": balance.append(")")
      case "[": balance.append("]")
      case "}", ")", "]":
        guard let expected = balance.popLast() else { throw fail("unexpected '\(op)'") }
        guard String(expected) == op else { throw fail("unexpected '\(op)', expected '\(expected)'") }
      default: break
      }
      tokens.append(JinjaToken(kind: .op(op), line: line))
      pos += op.unicodeScalars.count
    }
  }

  private func isDigit(_ k: Int) -> Bool { k < s.count && ("0"..."9").contains(s[k]) }

  /// `(\d+_)*\d+` from `k`: the index after it, or nil.
  private func digitRun(_ k: Int) -> Int? {
    guard isDigit(k) else { return nil }
    var end = k
    while true {
      while isDigit(end) { end += 1 }
      if end < s.count && s[end] == "_" && isDigit(end + 1) {
        end += 1
        continue
      }
      return end
    }
  }

  /// jinja2's float and integer rules, tried in that order.
  private func number(at k: Int) throws -> (JinjaToken.Kind, Int)? {
    guard isDigit(k) else { return nil }
    func text(_ range: Range<Int>) -> String { PythonText.string(s[range]).replacingOccurrences(of: "_", with: "") }
    if k == 0 || s[k - 1] != ".", let integerEnd = digitRun(k) {
      var end = integerEnd
      if end < s.count && s[end] == ".", let fraction = digitRun(end + 1) { end = fraction }
      var floatEnd: Int?
      if end < s.count && (s[end] == "e" || s[end] == "E") {
        var e = end + 1
        if e < s.count && (s[e] == "+" || s[e] == "-") { e += 1 }
        floatEnd = digitRun(e)
      }
      if floatEnd == nil && integerEnd < s.count && s[integerEnd] == ".", let fraction = digitRun(integerEnd + 1) {
        floatEnd = fraction
      }
      if let floatEnd, let value = Double(text(k..<floatEnd)) { return (.float(value), floatEnd) }
    }
    // Integers: 0b…, 0o…, 0x…, [1-9](_?\d)*, 0(_?0)*
    if s[k] == "0" && k + 1 < s.count,
      let radix = ["b": 2, "B": 2, "o": 8, "O": 8, "x": 16, "X": 16][Character(s[k + 1])]
    {
      var end = k + 2
      var digits = ""
      while end < s.count {
        if s[end] == "_" && end + 1 < s.count && Int(String(s[end + 1]), radix: radix) != nil {
          end += 1
          continue
        }
        guard Int(String(s[end]), radix: radix) != nil else { break }
        digits.unicodeScalars.append(s[end])
        end += 1
      }
      if !digits.isEmpty {
        guard let value = Int(digits, radix: radix) else { throw fail("integer literal too large") }
        return (.integer(value), end)
      }
    }
    var end = k + 1
    if s[k] == "0" {
      while end < s.count {
        if s[end] == "0" {
          end += 1
        } else if s[end] == "_" && end + 1 < s.count && s[end + 1] == "0" {
          end += 2
        } else {
          break
        }
      }
      return (.integer(0), end)
    }
    end = digitRun(k) ?? end
    guard let value = Int(text(k..<end)) else { throw fail("integer literal too large") }
    return (.integer(value), end)
  }

  static let singleEscapes: [Unicode.Scalar: Unicode.Scalar] = [
    "a": "\u{07}", "b": "\u{08}", "f": "\u{0C}", "n": "\n", "r": "\r", "t": "\t", "v": "\u{0B}",
  ]

  /// Python's unicode-escape decoding of a string literal's body.
  private func unescape(_ range: Range<Int>) throws -> String {
    var out = String.UnicodeScalarView()
    var k = range.lowerBound
    func hexValue(_ count: Int) throws -> UInt32 {
      guard k + 1 + count <= range.upperBound,
        let value = UInt32(PythonText.string(s[(k + 1)..<(k + 1 + count)]), radix: 16)
      else {
        throw fail("truncated \\\(s[k])\(String(repeating: "X", count: count)) escape")
      }
      return value
    }
    while k < range.upperBound {
      let c = s[k]
      guard c == "\\", k + 1 < range.upperBound else {
        out.append(c)
        k += 1
        continue
      }
      k += 1
      let e = s[k]
      switch e {
      case "\n": k += 1
      case "\\", "'", "\"":
        out.append(e)
        k += 1
      case _ where Self.singleEscapes[e] != nil:  // Python's one-letter escapes
        out.append(Self.singleEscapes[e]!)
        k += 1
      case "0"..."7":
        var value: UInt32 = 0
        var digits = 0
        while digits < 3 && k < range.upperBound && ("0"..."7").contains(s[k]) {
          value = value * 8 + (s[k].value - 48)
          k += 1
          digits += 1
        }
        out.append(Unicode.Scalar(value) ?? "\u{FFFD}")
      case "x", "u", "U":
        let count = e == "x" ? 2 : e == "u" ? 4 : 8
        let value = try hexValue(count)
        guard let scalar = Unicode.Scalar(value) else { throw fail("illegal Unicode character in a string literal") }
        out.append(scalar)
        k += 1 + count
      case "N":
        throw fail("\\N{...} escapes are not supported in templates")
      default:
        out.append("\\")
        out.append(e)
        k += 1
      }
    }
    return String(out)
  }
}

// MARK: Parser

/// jinja2's parser for the statements and expressions chat templates use.
struct JinjaParser {
  private let tokens: [JinjaToken]
  private var at = 0
  private let templateName: String
  private let limits: JinjaLimits
  private var depth = 0
  private var loopDepth = 0
  private var endTokenStack: [[String]] = []
  private var tagStack: [String] = []
  /// Names read inside the macro being parsed (a macro takes extra arguments only if it reads varargs/kwargs).
  private var namesRead: Set<String> = []
  private(set) var sawGeneration = false

  static let filters: Set<String> = [
    "abs", "attr", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
    "forceescape", "format", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
    "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum",
    "title", "tojson", "trim", "unique", "upper", "wordcount",
  ]
  /// jinja2 filters Pivot does not implement: named so the error says so rather than "no such filter".
  static let missingFilters: Set<String> = [
    "batch", "filesizeformat", "groupby", "pprint", "random", "slice", "striptags", "truncate", "urlencode", "urlize",
    "wordwrap", "xmlattr",
  ]
  static let tests: Set<String> = [
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "escaped", "even", "false", "filter", "float",
    "ge",
    "gt", "greaterthan", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none",
    "number",
    "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper",
  ]

  init(source: String, templateName: String, limits: JinjaLimits) throws {
    var lexer = JinjaLexer(source: source, templateName: templateName)
    tokens = try lexer.tokenize()
    self.templateName = templateName
    self.limits = limits
  }

  // MARK: Tokens

  private var current: JinjaToken { tokens[at] }
  private var lookahead: JinjaToken { tokens[min(at + 1, tokens.count - 1)] }

  @discardableResult
  private mutating func advance() -> JinjaToken {
    let token = tokens[at]
    if at < tokens.count - 1 { at += 1 }
    return token
  }

  private func fail(_ message: String, line: Int? = nil) -> JinjaError {
    JinjaError(kind: .syntax, template: templateName, line: line ?? current.line, message: message)
  }

  private func describe(_ token: JinjaToken) -> String {
    switch token.kind {
    case .text: return "template data / text"
    case .variableBegin: return "begin of print statement"
    case .variableEnd: return "end of print statement"
    case .blockBegin: return "begin of statement block"
    case .blockEnd: return "end of statement block"
    case .name(let n): return n
    case .string: return "string"
    case .integer: return "integer"
    case .float: return "float"
    case .op(let o): return o
    case .eof: return "end of template"
    }
  }

  private func isOp(_ op: String) -> Bool {
    if case .op(let o) = current.kind { return o == op }
    return false
  }

  private func isName(_ name: String) -> Bool {
    if case .name(let n) = current.kind { return n == name }
    return false
  }

  private mutating func skipOp(_ op: String) -> Bool {
    guard isOp(op) else { return false }
    advance()
    return true
  }

  private mutating func skipName(_ name: String) -> Bool {
    guard isName(name) else { return false }
    advance()
    return true
  }

  private mutating func expectOp(_ op: String) throws {
    guard isOp(op) else { throw fail("expected token '\(op)', got '\(describe(current))'") }
    advance()
  }

  @discardableResult
  private mutating func expectName(_ name: String? = nil) throws -> (String, Int) {
    if case .name(let n) = current.kind, name == nil || n == name {
      let line = advance().line
      return (n, line)
    }
    throw fail("expected token '\(name ?? "name")', got '\(describe(current))'")
  }

  private mutating func expect(_ kind: JinjaToken.Kind) throws {
    guard current.kind == kind else {
      throw fail("expected token '\(describe(JinjaToken(kind: kind, line: 0)))', got '\(describe(current))'")
    }
    advance()
  }

  private mutating func enter() throws {
    depth += 1
    guard depth <= limits.maxNesting else {
      throw JinjaError(
        kind: .limit, template: templateName, line: current.line,
        message: "the template nests blocks or expressions more than \(limits.maxNesting) levels deep")
    }
  }

  // MARK: Statements

  mutating func parseTemplate() throws -> [JinjaStatement] {
    try subparse(end: nil)
  }

  private mutating func subparse(end: [String]?) throws -> [JinjaStatement] {
    var body: [JinjaStatement] = []
    if let end { endTokenStack.append(end) }
    defer { if end != nil { endTokenStack.removeLast() } }
    while true {
      let token = current
      switch token.kind {
      case .text(let text):
        body.append(JinjaStatement(line: token.line, kind: .text(text)))
        advance()
      case .variableBegin:
        advance()
        let expression = try parseTuple(withCondexpr: true)
        try expect(.variableEnd)
        body.append(JinjaStatement(line: token.line, kind: .output([expression])))
      case .blockBegin:
        advance()
        if let end, case .name(let name) = current.kind, end.contains(name) { return body }
        body.append(contentsOf: try parseStatement())
        try expect(.blockEnd)
      case .eof:
        return body
      default:
        throw fail("unexpected '\(describe(token))'")
      }
    }
  }

  /// A body up to one of `end` (left as the current token unless `dropNeedle`).
  private mutating func parseStatements(_ end: [String], dropNeedle: Bool = false) throws -> [JinjaStatement] {
    _ = skipOp(":")
    try expect(.blockEnd)
    try enter()
    defer { depth -= 1 }
    let body = try subparse(end: end)
    if case .eof = current.kind { throw unexpectedEnd(looking: end) }
    if dropNeedle { advance() }
    return body
  }

  private func lookingFor(_ end: [String]) -> String {
    end.map { "'\($0)'" }.joined(separator: " or ")
  }

  private func unexpectedEnd(looking end: [String]) -> JinjaError {
    var message = "Unexpected end of template. Jinja was looking for the following tags: \(lookingFor(end))."
    if let open = tagStack.last { message += " The innermost block that needs to be closed is '\(open)'." }
    return fail(message)
  }

  private func unknownTag(_ name: String, line: Int) -> JinjaError {
    var message = "Encountered unknown tag '\(name)'."
    if let end = endTokenStack.last {
      if endTokenStack.contains(where: { $0.contains(name) }) {
        message +=
          " You probably made a nesting mistake. Jinja is expecting this tag, but currently looking for \(lookingFor(end))."
      } else {
        message += " Jinja was looking for the following tags: \(lookingFor(end))."
      }
      if let open = tagStack.last { message += " The innermost block that needs to be closed is '\(open)'." }
    }
    return fail(message, line: line)
  }

  private mutating func parseStatement() throws -> [JinjaStatement] {
    guard case .name(let tag) = current.kind else { throw fail("tag name expected") }
    let line = current.line
    switch tag {
    case "for", "if", "set", "macro", "with", "filter", "print", "generation":
      tagStack.append(tag)
      defer { tagStack.removeLast() }
      switch tag {
      case "for": return [try parseFor()]
      case "if": return [try parseIf()]
      case "set": return [try parseSet()]
      case "macro": return [try parseMacro()]
      case "with": return [try parseWith()]
      case "filter": return [try parseFilterBlock()]
      case "print": return [try parsePrint()]
      default: return [try parseGeneration()]
      }
    case "break", "continue":
      advance()
      guard loopDepth > 0 else { throw fail("'\(tag)' outside of a loop", line: line) }
      return [JinjaStatement(line: line, kind: tag == "break" ? .breakLoop : .continueLoop)]
    case "block", "extends", "include", "import", "from", "call", "autoescape", "do":
      throw fail(
        "the '{% \(tag) %}' tag is not supported in chat templates by Pivot's template interpreter", line: line)
    default:
      throw unknownTag(tag, line: line)
    }
  }

  private mutating func parseFor() throws -> JinjaStatement {
    let (_, line) = try expectName("for")
    let target = try parseAssignTarget(extraEndRules: ["in"])
    try expectName("in")
    let iterable = try parseTuple(withCondexpr: false, extraEndRules: ["recursive"])
    var condition: JinjaExpression?
    if skipName("if") { condition = try parseExpression() }
    if isName("recursive") { throw fail("recursive loops are not supported by Pivot's template interpreter") }
    loopDepth += 1
    let body = try parseStatements(["endfor", "else"])
    loopDepth -= 1
    var otherwise: [JinjaStatement] = []
    if case .name("else") = advance().kind { otherwise = try parseStatements(["endfor"], dropNeedle: true) }
    return JinjaStatement(
      line: line,
      kind: .forLoop(
        JinjaForLoop(
          target: target, iterable: iterable, condition: condition,
          body: body, otherwise: otherwise)))
  }

  private mutating func parseIf() throws -> JinjaStatement {
    let (_, line) = try expectName("if")
    var branches: [JinjaBranch] = []
    var otherwise: [JinjaStatement] = []
    while true {
      let test = try parseTuple(withCondexpr: false)
      let body = try parseStatements(["elif", "else", "endif"])
      branches.append(JinjaBranch(test: test, body: body))
      let token = advance()
      if case .name("elif") = token.kind { continue }
      if case .name("else") = token.kind { otherwise = try parseStatements(["endif"], dropNeedle: true) }
      break
    }
    return JinjaStatement(line: line, kind: .conditional(branches, otherwise: otherwise))
  }

  private mutating func parseSet() throws -> JinjaStatement {
    let line = advance().line
    let target = try parseAssignTarget(withNamespace: true)
    if skipOp("=") {
      return JinjaStatement(line: line, kind: .assign(target, try parseTuple()))
    }
    let filters = try parseFilterChain(startInline: false)
    let body = try parseStatements(["endset"], dropNeedle: true)
    return JinjaStatement(line: line, kind: .assignBlock(target, filters, body))
  }

  private mutating func parseMacro() throws -> JinjaStatement {
    let line = advance().line
    let (name, _) = try expectName()
    try expectOp("(")
    var parameters: [String] = []
    var defaults: [JinjaExpression?] = []
    while !isOp(")") {
      if !parameters.isEmpty { try expectOp(",") }
      let (parameter, _) = try expectName()
      if skipOp("=") {
        defaults.append(try parseExpression())
      } else if defaults.contains(where: { $0 != nil }) {
        throw fail("non-default argument follows default argument")
      } else {
        defaults.append(nil)
      }
      parameters.append(parameter)
    }
    try expectOp(")")
    let outerNames = namesRead
    let outerLoopDepth = loopDepth
    namesRead = []
    loopDepth = 0
    let body = try parseStatements(["endmacro"], dropNeedle: true)
    let macro = JinjaMacro(
      name: name, parameters: parameters, defaults: defaults, body: body,
      takesVarargs: namesRead.contains("varargs"), takesKwargs: namesRead.contains("kwargs"))
    namesRead.formUnion(outerNames)
    loopDepth = outerLoopDepth
    return JinjaStatement(line: line, kind: .macro(macro))
  }

  private mutating func parseWith() throws -> JinjaStatement {
    let line = advance().line
    var targets: [JinjaTarget] = []
    var values: [JinjaExpression] = []
    while current.kind != .blockEnd {
      if !targets.isEmpty { try expectOp(",") }
      targets.append(try parseAssignTarget())
      try expectOp("=")
      values.append(try parseExpression())
    }
    let body = try parseStatements(["endwith"], dropNeedle: true)
    return JinjaStatement(line: line, kind: .with(targets, values, body))
  }

  private mutating func parseFilterBlock() throws -> JinjaStatement {
    let line = advance().line
    let filters = try parseFilterChain(startInline: true)
    let body = try parseStatements(["endfilter"], dropNeedle: true)
    return JinjaStatement(line: line, kind: .filterBlock(filters, body))
  }

  private mutating func parsePrint() throws -> JinjaStatement {
    let line = advance().line
    var expressions: [JinjaExpression] = []
    while current.kind != .blockEnd {
      if !expressions.isEmpty { try expectOp(",") }
      expressions.append(try parseExpression())
    }
    return JinjaStatement(line: line, kind: .output(expressions))
  }

  private mutating func parseGeneration() throws -> JinjaStatement {
    let line = advance().line
    sawGeneration = true
    let outerLoopDepth = loopDepth
    loopDepth = 0  // the body is a macro in jinja2: no break/continue through it
    let body = try parseStatements(["endgeneration"], dropNeedle: true)
    loopDepth = outerLoopDepth
    return JinjaStatement(line: line, kind: .generation(body))
  }

  private mutating func parseAssignTarget(extraEndRules: [String] = [], withNamespace: Bool = false) throws
    -> JinjaTarget
  {
    let expression = try parseTuple(simplified: true, extraEndRules: extraEndRules, withNamespace: withNamespace)
    return try target(expression)
  }

  private func target(_ expression: JinjaExpression) throws -> JinjaTarget {
    switch expression.kind {
    case .name(let name): return .name(name)
    case .namespaceReference(let name, let attribute): return .namespaceAttribute(name, attribute)
    case .tuple(let items): return .tuple(try items.map { try target($0) })
    default: throw fail("can't assign to this expression", line: expression.line)
    }
  }

  // MARK: Expressions

  private mutating func parseTuple(
    simplified: Bool = false, withCondexpr: Bool = true, extraEndRules: [String] = [],
    explicitParentheses: Bool = false, withNamespace: Bool = false
  ) throws -> JinjaExpression {
    var line = current.line
    var items: [JinjaExpression] = []
    var isTuple = false
    while true {
      if !items.isEmpty { try expectOp(",") }
      if isTupleEnd(extraEndRules) { break }
      items.append(
        simplified ? try parsePrimary(withNamespace: withNamespace) : try parseExpression(withCondexpr: withCondexpr))
      if isOp(",") { isTuple = true } else { break }
      line = current.line
    }
    if !isTuple {
      if let first = items.first { return first }
      if !explicitParentheses { throw fail("Expected an expression, got '\(describe(current))'") }
    }
    return JinjaExpression(line: line, kind: .tuple(items))
  }

  private func isTupleEnd(_ extraEndRules: [String]) -> Bool {
    switch current.kind {
    case .variableEnd, .blockEnd: return true
    case .op(")"): return true
    case .name(let name): return extraEndRules.contains(name)
    default: return false
    }
  }

  private mutating func parseExpression(withCondexpr: Bool = true) throws -> JinjaExpression {
    try enter()
    defer { depth -= 1 }
    return withCondexpr ? try parseCondexpr() : try parseOr()
  }

  private mutating func parseCondexpr() throws -> JinjaExpression {
    var line = current.line
    var expression = try parseOr()
    while skipName("if") {
      let test = try parseOr()
      var otherwise: JinjaExpression?
      if skipName("else") { otherwise = try parseCondexpr() }
      expression = JinjaExpression(line: line, kind: .conditional(test: test, then: expression, otherwise: otherwise))
      line = current.line
    }
    return expression
  }

  private mutating func parseOr() throws -> JinjaExpression {
    let line = current.line
    var left = try parseAnd()
    while skipName("or") { left = JinjaExpression(line: line, kind: .or(left, try parseAnd())) }
    return left
  }

  private mutating func parseAnd() throws -> JinjaExpression {
    let line = current.line
    var left = try parseNot()
    while skipName("and") { left = JinjaExpression(line: line, kind: .and(left, try parseNot())) }
    return left
  }

  private mutating func parseNot() throws -> JinjaExpression {
    if isName("not") {
      let line = advance().line
      try enter()
      defer { depth -= 1 }
      return JinjaExpression(line: line, kind: .not(try parseNot()))
    }
    return try parseCompare()
  }

  private mutating func parseCompare() throws -> JinjaExpression {
    let line = current.line
    let first = try parseMath1()
    var comparisons: [JinjaComparison] = []
    while true {
      if case .op(let op) = current.kind, ["==", "!=", "<", "<=", ">", ">="].contains(op) {
        advance()
        comparisons.append(JinjaComparison(op: op, operand: try parseMath1()))
      } else if skipName("in") {
        comparisons.append(JinjaComparison(op: "in", operand: try parseMath1()))
      } else if isName("not"), case .name("in") = lookahead.kind {
        advance()
        advance()
        comparisons.append(JinjaComparison(op: "notin", operand: try parseMath1()))
      } else {
        break
      }
    }
    return comparisons.isEmpty ? first : JinjaExpression(line: line, kind: .compare(first, comparisons))
  }

  private mutating func parseMath1() throws -> JinjaExpression {
    let line = current.line
    var left = try parseConcat()
    while case .op(let op) = current.kind, op == "+" || op == "-" {
      advance()
      left = JinjaExpression(line: line, kind: .binary(op, left, try parseConcat()))
    }
    return left
  }

  private mutating func parseConcat() throws -> JinjaExpression {
    let line = current.line
    var items = [try parseMath2()]
    while skipOp("~") { items.append(try parseMath2()) }
    return items.count == 1 ? items[0] : JinjaExpression(line: line, kind: .concat(items))
  }

  private mutating func parseMath2() throws -> JinjaExpression {
    let line = current.line
    var left = try parsePow()
    while case .op(let op) = current.kind, ["*", "/", "//", "%"].contains(op) {
      advance()
      left = JinjaExpression(line: line, kind: .binary(op, left, try parsePow()))
    }
    return left
  }

  private mutating func parsePow() throws -> JinjaExpression {
    let line = current.line
    var left = try parseUnary()
    while skipOp("**") { left = JinjaExpression(line: line, kind: .binary("**", left, try parseUnary())) }
    return left
  }

  private mutating func parseUnary(withFilter: Bool = true) throws -> JinjaExpression {
    let line = current.line
    var node: JinjaExpression
    if skipOp("-") {
      try enter()
      defer { depth -= 1 }
      node = JinjaExpression(line: line, kind: .negate(try parseUnary(withFilter: false)))
    } else if skipOp("+") {
      try enter()
      defer { depth -= 1 }
      node = JinjaExpression(line: line, kind: .plus(try parseUnary(withFilter: false)))
    } else {
      node = try parsePrimary()
    }
    node = try parsePostfix(node)
    if withFilter { node = try parseFilterExpression(node) }
    return node
  }

  private mutating func parsePrimary(withNamespace: Bool = false) throws -> JinjaExpression {
    let token = current
    switch token.kind {
    case .name(let name):
      advance()
      switch name {
      case "true", "True": return JinjaExpression(line: token.line, kind: .boolean(true))
      case "false", "False": return JinjaExpression(line: token.line, kind: .boolean(false))
      case "none", "None": return JinjaExpression(line: token.line, kind: .null)
      default:
        if withNamespace && isOp(".") {
          advance()
          let (attribute, _) = try expectName()
          return JinjaExpression(line: token.line, kind: .namespaceReference(name, attribute))
        }
        namesRead.insert(name)
        return JinjaExpression(line: token.line, kind: .name(name))
      }
    case .string(let first):
      advance()
      var text = first
      while case .string(let next) = current.kind {
        text += next
        advance()
      }
      return JinjaExpression(line: token.line, kind: .string(text))
    case .integer(let value):
      advance()
      return JinjaExpression(line: token.line, kind: .integer(value))
    case .float(let value):
      advance()
      return JinjaExpression(line: token.line, kind: .float(value))
    case .op("("):
      advance()
      try enter()
      defer { depth -= 1 }
      let inner = try parseTuple(explicitParentheses: true)
      try expectOp(")")
      return inner
    case .op("["):
      advance()
      try enter()
      defer { depth -= 1 }
      var items: [JinjaExpression] = []
      while !isOp("]") {
        if !items.isEmpty { try expectOp(",") }
        if isOp("]") { break }
        items.append(try parseExpression())
      }
      try expectOp("]")
      return JinjaExpression(line: token.line, kind: .list(items))
    case .op("{"):
      advance()
      try enter()
      defer { depth -= 1 }
      var pairs: [JinjaPair] = []
      while !isOp("}") {
        if !pairs.isEmpty { try expectOp(",") }
        if isOp("}") { break }
        let key = try parseExpression()
        try expectOp(":")
        pairs.append(JinjaPair(key: key, value: try parseExpression()))
      }
      try expectOp("}")
      return JinjaExpression(line: token.line, kind: .dict(pairs))
    default:
      throw fail("unexpected '\(describe(token))'", line: token.line)
    }
  }

  private mutating func parsePostfix(_ start: JinjaExpression) throws -> JinjaExpression {
    var node = start
    while true {
      if isOp(".") || isOp("[") {
        node = try parseSubscript(node)
      } else if isOp("(") {
        node = try parseCall(node)
      } else {
        return node
      }
    }
  }

  private mutating func parseFilterExpression(_ start: JinjaExpression) throws -> JinjaExpression {
    var node = start
    while true {
      if isOp("|") {
        for filter in try parseFilterChain(startInline: false) {
          node = JinjaExpression(line: filter.line, kind: .filter(node, filter))
        }
      } else if isName("is") {
        node = try parseTest(node)
      } else if isOp("(") {
        node = try parseCall(node)
      } else {
        return node
      }
    }
  }

  private mutating func parseSubscript(_ node: JinjaExpression) throws -> JinjaExpression {
    let token = advance()
    if case .op(".") = token.kind {
      let attribute = advance()
      switch attribute.kind {
      case .name(let name): return JinjaExpression(line: token.line, kind: .attribute(node, name))
      case .integer(let index):
        return JinjaExpression(
          line: token.line, kind: .item(node, JinjaExpression(line: attribute.line, kind: .integer(index))))
      default: throw fail("expected name or number", line: attribute.line)
      }
    }
    var arguments: [JinjaExpression] = []
    while !isOp("]") {
      if !arguments.isEmpty { try expectOp(",") }
      arguments.append(try parseSubscribed())
    }
    try expectOp("]")
    let key = arguments.count == 1 ? arguments[0] : JinjaExpression(line: token.line, kind: .tuple(arguments))
    return JinjaExpression(line: token.line, kind: .item(node, key))
  }

  private mutating func parseSubscribed() throws -> JinjaExpression {
    let line = current.line
    var parts: [JinjaExpression?] = []
    if skipOp(":") {
      parts = [nil]
    } else {
      let node = try parseExpression()
      guard skipOp(":") else { return node }
      parts = [node]
    }
    if isOp(":") || isOp("]") || isOp(",") {
      parts.append(nil)
    } else {
      parts.append(try parseExpression())
    }
    if skipOp(":") {
      parts.append(isOp("]") || isOp(",") ? nil : try parseExpression())
    } else {
      parts.append(nil)
    }
    return JinjaExpression(line: line, kind: .slice(parts[0], parts[1], parts[2]))
  }

  private mutating func parseCallArguments() throws -> JinjaArgumentList {
    let line = current.line
    try expectOp("(")
    try enter()
    defer { depth -= 1 }
    var arguments = JinjaArgumentList()
    var requireComma = false
    while !isOp(")") {
      if requireComma {
        try expectOp(",")
        if isOp(")") { break }
      }
      if isOp("*") || isOp("**") {
        throw fail("*args and **kwargs in calls are not supported by Pivot's template interpreter")
      }
      if case .name(let name) = current.kind, case .op("=") = lookahead.kind {
        advance()
        advance()
        arguments.keywords.append(JinjaKeywordArgument(name: name, value: try parseExpression()))
      } else {
        guard arguments.keywords.isEmpty else { throw fail("invalid syntax for function call expression", line: line) }
        arguments.positional.append(try parseExpression())
      }
      requireComma = true
    }
    try expectOp(")")
    return arguments
  }

  private mutating func parseCall(_ node: JinjaExpression) throws -> JinjaExpression {
    let line = current.line
    return JinjaExpression(line: line, kind: .call(node, try parseCallArguments()))
  }

  private mutating func dottedName() throws -> (String, Int) {
    var (name, line) = try expectName()
    while skipOp(".") { name += "." + (try expectName()).0 }
    return (name, line)
  }

  private mutating func parseFilterChain(startInline: Bool) throws -> [JinjaFilterCall] {
    var filters: [JinjaFilterCall] = []
    var inline = startInline
    while isOp("|") || inline {
      if !inline { advance() }
      inline = false
      let (name, line) = try dottedName()
      guard Self.filters.contains(name) else {
        if Self.missingFilters.contains(name) {
          throw fail("the '\(name)' filter is not supported by Pivot's template interpreter", line: line)
        }
        throw fail("No filter named '\(name)'.", line: line)
      }
      let arguments = isOp("(") ? try parseCallArguments() : JinjaArgumentList()
      filters.append(JinjaFilterCall(name: name, arguments: arguments, line: line))
    }
    return filters
  }

  private mutating func parseTest(_ node: JinjaExpression) throws -> JinjaExpression {
    let line = advance().line
    let negated = skipName("not")
    let (name, nameLine) = try dottedName()
    guard Self.tests.contains(name) else { throw fail("No test named '\(name)'.", line: nameLine) }
    var arguments = JinjaArgumentList()
    if isOp("(") {
      arguments = try parseCallArguments()
    } else {
      var startsArgument = false
      switch current.kind {
      case .name(let n): startsArgument = !["else", "or", "and"].contains(n)
      case .string, .integer, .float, .op("("), .op("["), .op("{"): startsArgument = true
      default: break
      }
      if startsArgument {
        if isName("is") { throw fail("You cannot chain multiple tests with is") }
        arguments.positional = [try parsePostfix(try parsePrimary())]
      }
    }
    let test = JinjaExpression(line: line, kind: .test(node, name, arguments))
    return negated ? JinjaExpression(line: line, kind: .not(test)) : test
  }
}
