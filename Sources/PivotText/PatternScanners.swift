import Foundation

/// Finds the non-overlapping matches of a pre-tokenizer pattern in UTF-8 bytes, returned as byte ranges.
protocol PatternScanner: Sendable {
  func matches(in bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>]
}

/// A `Split`/`Replace` pattern as tokenizer.json writes it: `{"String": s}` or `{"Regex": r}`.
struct TextPattern: Sendable {
  let scanner: any PatternScanner
  let source: String

  init(node: JSONNode) throws {
    if let literal = node.optionalString("String") {
      guard !literal.isEmpty else { throw node.fail("empty String pattern") }
      scanner = LiteralScanner(needle: Array(literal.utf8))
      source = literal
    } else if let regex = node.optionalString("Regex") {
      scanner = try makeRegexScanner(pattern: regex, component: node.component, file: node.file)
      source = regex
    } else {
      throw node.fail("pattern must be {\"String\": …} or {\"Regex\": …}")
    }
  }

  func matches(in bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] { scanner.matches(in: bytes, range) }
}

/// The regex patterns of the tokenizer families Pivot supports, recognised by their exact text.
public enum KnownPattern: String, Sendable, CaseIterable {
  case gpt2 = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
  case qwen2 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
  case llama3 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
}

func makeRegexScanner(pattern: String, component: String, file: String) throws -> any PatternScanner {
  switch KnownPattern(rawValue: pattern) {
  case .gpt2: return GPT2Scanner()
  case .qwen2: return QwenStyleScanner(maxDigits: 1)
  case .llama3: return QwenStyleScanner(maxDigits: 3)
  case nil: return try GenericRegexScanner(pattern: pattern, component: component, file: file)
  }
}

/// Scanner for a known pattern, or the generic regex engine when `generic` is set (tests compare the two).
public func pretokenizerSplits(of text: String, pattern: KnownPattern, generic: Bool) throws -> [String] {
  let scanner: any PatternScanner =
    generic ? try GenericRegexScanner(pattern: pattern.rawValue, component: "test", file: "-")
    : try makeRegexScanner(pattern: pattern.rawValue, component: "test", file: "-")
  let bytes = Array(text.utf8)
  return scanner.matches(in: bytes, 0..<bytes.count).map { String(decoding: bytes[$0], as: UTF8.self) }
}

struct LiteralScanner: PatternScanner {
  let needle: [UInt8]
  func matches(in bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] {
    var found: [Range<Int>] = []
    var i = range.lowerBound
    let first = needle[0]
    while i + needle.count <= range.upperBound {
      if bytes[i] == first && bytes[i..<(i + needle.count)].elementsEqual(needle) {
        found.append(i..<(i + needle.count))
        i += needle.count
      } else {
        i += 1
      }
    }
    return found
  }
}

/// Any other pattern goes through Swift's regex engine, on Unicode scalars as Oniguruma matches.
struct GenericRegexScanner: PatternScanner, @unchecked Sendable {
  // Regex is immutable once built; matching from several threads is safe.
  let regex: Regex<AnyRegexOutput>

  init(pattern: String, component: String, file: String) throws {
    do {
      regex = try Regex(pattern).matchingSemantics(.unicodeScalar)
    } catch {
      throw TokenizerError.invalidValue(component: component, reason: "cannot compile regex \(pattern): \(error)", file: file)
    }
  }

  func matches(in bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] {
    let text = String(decoding: bytes[range], as: UTF8.self)
    var found: [Range<Int>] = []
    for match in text.matches(of: regex) where !match.range.isEmpty {
      let start = text.utf8.distance(from: text.startIndex, to: match.range.lowerBound)
      let end = text.utf8.distance(from: text.startIndex, to: match.range.upperBound)
      found.append((range.lowerBound + start)..<(range.lowerBound + end))
    }
    return found
  }
}

/// Character classes the known patterns test, as bit flags.
enum ScalarClass {
  static let letter: UInt8 = 1  // \p{L}
  static let number: UInt8 = 2  // \p{N}
  static let space: UInt8 = 4  // \s (Unicode White_Space, as Oniguruma)
  static let lineBreak: UInt8 = 8  // [\r\n]

  static let ascii: [UInt8] = (0..<128).map { (value: Int) -> UInt8 in
    switch value {
    case 0x41...0x5A, 0x61...0x7A: return letter
    case 0x30...0x39: return number
    case 0x0A, 0x0D: return space | lineBreak
    case 0x09, 0x0B, 0x0C, 0x20: return space
    default: return 0
    }
  }

  @inline(__always) static func of(_ value: UInt32) -> UInt8 {
    if value < 0x80 { return ascii[Int(value)] }
    if value >= 0x4E00 && value <= 0x9FFF { return letter }  // CJK Unified Ideographs are all Lo
    let properties = Unicode.Scalar(value)!.properties
    if properties.isWhitespace { return space }
    switch properties.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return letter
    case .decimalNumber, .letterNumber, .otherNumber: return number
    default: return 0
    }
  }
}

/// A byte range decoded to scalars with their classes and byte offsets, so scanners can look ahead.
struct DecodedScalars {
  var values: [UInt32] = []
  var classes: [UInt8] = []
  var offsets: [Int] = []  // byte offset of each scalar, plus the end

  init(bytes: [UInt8], range: Range<Int>) {
    let capacity = range.count + 1
    values.reserveCapacity(capacity)
    classes.reserveCapacity(capacity)
    offsets.reserveCapacity(capacity)
    var i = range.lowerBound
    let end = range.upperBound
    while i < end {
      let b0 = bytes[i]
      var value: UInt32
      var length: Int
      if b0 < 0x80 {
        value = UInt32(b0); length = 1
      } else if b0 < 0xE0 {
        value = (UInt32(b0 & 0x1F) << 6) | UInt32(bytes[i + 1] & 0x3F); length = 2
      } else if b0 < 0xF0 {
        value = (UInt32(b0 & 0x0F) << 12) | (UInt32(bytes[i + 1] & 0x3F) << 6) | UInt32(bytes[i + 2] & 0x3F); length = 3
      } else {
        value = (UInt32(b0 & 0x07) << 18) | (UInt32(bytes[i + 1] & 0x3F) << 12) | (UInt32(bytes[i + 2] & 0x3F) << 6)
          | UInt32(bytes[i + 3] & 0x3F)
        length = 4
      }
      values.append(value)
      classes.append(ScalarClass.of(value))
      offsets.append(i)
      i += length
    }
    offsets.append(end)
  }

  var count: Int { values.count }

  /// Length of a contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) starting at `i`, or 0.
  @inline(__always) func contractionLength(at i: Int, ignoringCase: Bool) -> Int {
    guard values[i] == 0x27, i + 1 < count else { return 0 }
    @inline(__always) func letter(_ k: Int) -> UInt32 {
      guard k < count else { return 0 }
      let v = values[k]
      if ignoringCase {
        if v >= 0x41 && v <= 0x5A { return v | 0x20 }
        if v == 0x17F { return 0x73 }  // "ſ" folds to "s"
      }
      return v
    }
    switch letter(i + 1) {
    case 0x73, 0x74, 0x6D, 0x64: return 2  // s t m d
    case 0x72, 0x76: return letter(i + 2) == 0x65 ? 3 : 0  // re ve
    case 0x6C: return letter(i + 2) == 0x6C ? 3 : 0  // ll
    default: return 0
    }
  }

  @inline(__always) func run(from i: Int, while mask: UInt8) -> Int {
    var j = i
    while j < count && classes[j] & mask != 0 { j += 1 }
    return j
  }

  /// End of a run of scalars that are neither whitespace, letters nor digits.
  @inline(__always) func otherRun(from i: Int) -> Int {
    var j = i
    while j < count && classes[j] == 0 { j += 1 }
    return j
  }

  /// `\s+(?!\S)|\s+` at a whitespace scalar `i` whose run ends at `end`.
  @inline(__always) func whitespaceMatchEnd(_ i: Int, runEnd end: Int) -> Int {
    if end == count || end - i == 1 { return end }
    return end - 1
  }
}

/// GPT-2's pattern: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
struct GPT2Scanner: PatternScanner {
  func matches(in bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] {
    let s = DecodedScalars(bytes: bytes, range: range)
    var found: [Range<Int>] = []
    found.reserveCapacity(s.count / 3 + 1)
    var i = 0
    let n = s.count
    while i < n {
      var end: Int
      let contraction = s.contractionLength(at: i, ignoringCase: false)
      if contraction > 0 {
        end = i + contraction
      } else {
        // An optional leading space joins the letter, digit or symbol run after it.
        let start = (s.values[i] == 0x20 && i + 1 < n && s.classes[i + 1] & ScalarClass.space == 0) ? i + 1 : i
        let c = s.classes[start]
        if c & ScalarClass.letter != 0 {
          end = s.run(from: start, while: ScalarClass.letter)
        } else if c & ScalarClass.number != 0 {
          end = s.run(from: start, while: ScalarClass.number)
        } else if c == 0 {
          end = s.otherRun(from: start)
        } else {
          end = s.whitespaceMatchEnd(i, runEnd: s.run(from: i, while: ScalarClass.space))
        }
      }
      found.append(s.offsets[i]..<s.offsets[end])
      i = end
    }
    return found
  }
}

/// Qwen2's pattern, and LLaMA-3's which differs only in taking up to three digits at a time:
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,k}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
struct QwenStyleScanner: PatternScanner {
  let maxDigits: Int

  func matches(in bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] {
    let s = DecodedScalars(bytes: bytes, range: range)
    var found: [Range<Int>] = []
    found.reserveCapacity(s.count / 2 + 1)
    var i = 0
    let n = s.count
    while i < n {
      let end = matchEnd(s, at: i, count: n)
      found.append(s.offsets[i]..<s.offsets[end])
      i = end
    }
    return found
  }

  @inline(__always) private func matchEnd(_ s: DecodedScalars, at i: Int, count n: Int) -> Int {
    let contraction = s.contractionLength(at: i, ignoringCase: true)
    if contraction > 0 { return i + contraction }
    let c = s.classes[i]
    if c & ScalarClass.letter != 0 { return s.run(from: i, while: ScalarClass.letter) }
    // [^\r\n\p{L}\p{N}]\p{L}+ : any one non-newline, non-letter, non-digit scalar before letters.
    if c & (ScalarClass.lineBreak | ScalarClass.number) == 0 && i + 1 < n && s.classes[i + 1] & ScalarClass.letter != 0 {
      return s.run(from: i + 1, while: ScalarClass.letter)
    }
    if c & ScalarClass.number != 0 {
      var j = i + 1
      while j < n && j - i < maxDigits && s.classes[j] & ScalarClass.number != 0 { j += 1 }
      return j
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let symbolStart = (s.values[i] == 0x20 && i + 1 < n && s.classes[i + 1] == 0) ? i + 1 : i
    if s.classes[symbolStart] == 0 {
      let j = s.otherRun(from: symbolStart)
      return s.run(from: j, while: ScalarClass.lineBreak)
    }
    // Whitespace: `\s*[\r\n]+` ends after the run's last line break; else `\s+(?!\S)|\s+`.
    let runEnd = s.run(from: i, while: ScalarClass.space)
    var lastBreak = runEnd - 1
    while lastBreak >= i && s.classes[lastBreak] & ScalarClass.lineBreak == 0 { lastBreak -= 1 }
    if lastBreak >= i { return lastBreak + 1 }
    return s.whitespaceMatchEnd(i, runEnd: runEnd)
  }
}
