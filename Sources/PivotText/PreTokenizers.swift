import Foundation

/// Text cut into pieces: byte ranges into one buffer, so splitting never copies.
struct PieceList {
  var bytes: [UInt8]
  var ranges: [Range<Int>]
  /// Whether `ranges[0]` begins at the start of the input (not after an added token).
  var firstStartsInput = true
}

/// A tokenizer.json `pre_tokenizer`: cuts each piece into smaller ones.
protocol PreTokenizer: Sendable {
  func split(_ pieces: inout PieceList)
  /// Whether this stage spells bytes with the byte-level alphabet (then the model sees raw bytes).
  var isByteLevel: Bool { get }
}

enum PreTokenizerFactory {
  static func make(_ value: Any?, file: String) throws -> (any PreTokenizer)? {
    guard let value, !(value is NSNull) else { return nil }
    let node = try JSONNode(value, component: "pre_tokenizer", file: file)
    guard let type = node.type else { throw TokenizerError.missingField(component: "pre_tokenizer", field: "type", file: file) }
    switch type {
    case "ByteLevel":
      return ByteLevelPreTokenizer(
        addPrefixSpace: node.bool("add_prefix_space", default: true), useRegex: node.bool("use_regex", default: true))
    case "Split":
      return SplitPreTokenizer(
        pattern: try TextPattern(node: node.child("pattern", component: "Split pattern")),
        behavior: try SplitBehavior(name: node.string("behavior"), node: node), invert: node.bool("invert", default: false))
    case "Metaspace":
      return try MetaspacePreTokenizer(node: node)
    case "Digits":
      return DigitsPreTokenizer(individual: node.bool("individual_digits", default: false))
    case "Sequence":
      return SequencePreTokenizer(parts: try node.array("pretokenizers").compactMap { try make($0, file: file) })
    default:
      throw TokenizerError.unsupportedComponent(kind: "pre_tokenizer", type: type, file: file)
    }
  }
}

enum SplitBehavior: Sendable {
  case removed, isolated, mergedWithPrevious, mergedWithNext, contiguous

  init(name: String, node: JSONNode) throws {
    switch name {
    case "Removed": self = .removed
    case "Isolated": self = .isolated
    case "MergedWithPrevious": self = .mergedWithPrevious
    case "MergedWithNext": self = .mergedWithNext
    case "Contiguous": self = .contiguous
    default: throw node.fail("unknown split behavior \"\(name)\"")
    }
  }

  /// Cuts `range` given the matches inside it, as `tokenizers`' NormalizedString::split does.
  func apply(_ range: Range<Int>, matches: [Range<Int>], invert: Bool, into out: inout [Range<Int>]) {
    var parts: [(Range<Int>, Bool)] = []
    parts.reserveCapacity(matches.count * 2 + 1)
    var cursor = range.lowerBound
    for match in matches {
      if cursor < match.lowerBound { parts.append((cursor..<match.lowerBound, invert)) }
      parts.append((match, !invert))
      cursor = match.upperBound
    }
    if cursor < range.upperBound { parts.append((cursor..<range.upperBound, invert)) }
    switch self {
    case .isolated:
      for (part, _) in parts { out.append(part) }
    case .removed:
      for (part, isMatch) in parts where !isMatch { out.append(part) }
    case .mergedWithPrevious:
      var previousMatch = false
      let first = out.count
      for (part, isMatch) in parts {
        if isMatch && !previousMatch && out.count > first {
          out[out.count - 1] = out[out.count - 1].lowerBound..<part.upperBound
        } else {
          out.append(part)
        }
        previousMatch = isMatch
      }
    case .mergedWithNext:
      var merged: [Range<Int>] = []
      var previousMatch = false
      for (part, isMatch) in parts.reversed() {
        if isMatch && !previousMatch && !merged.isEmpty {
          merged[merged.count - 1] = part.lowerBound..<merged[merged.count - 1].upperBound
        } else {
          merged.append(part)
        }
        previousMatch = isMatch
      }
      out.append(contentsOf: merged.reversed())
    case .contiguous:
      var previous: Bool? = nil
      let first = out.count
      for (part, isMatch) in parts {
        if previous == isMatch && out.count > first {
          out[out.count - 1] = out[out.count - 1].lowerBound..<part.upperBound
        } else {
          out.append(part)
        }
        previous = isMatch
      }
    }
  }
}

struct SplitPreTokenizer: PreTokenizer {
  let pattern: TextPattern
  let behavior: SplitBehavior
  let invert: Bool
  var isByteLevel: Bool { false }

  func split(_ pieces: inout PieceList) {
    var out: [Range<Int>] = []
    out.reserveCapacity(pieces.ranges.count * 4)
    for range in pieces.ranges {
      behavior.apply(range, matches: pattern.matches(in: pieces.bytes, range), invert: invert, into: &out)
    }
    pieces.ranges = out
  }
}

/// Splits digits off: each digit alone (`individual_digits`) or runs of digits.
struct DigitsPreTokenizer: PreTokenizer {
  let individual: Bool
  var isByteLevel: Bool { false }

  func split(_ pieces: inout PieceList) {
    var out: [Range<Int>] = []
    out.reserveCapacity(pieces.ranges.count * 2)
    for range in pieces.ranges {
      let scalars = DecodedScalars(bytes: pieces.bytes, range: range)
      var matches: [Range<Int>] = []
      for k in 0..<scalars.count where scalars.classes[k] & ScalarClass.number != 0 {
        matches.append(scalars.offsets[k]..<scalars.offsets[k + 1])
      }
      (individual ? SplitBehavior.isolated : .contiguous).apply(range, matches: matches, invert: false, into: &out)
    }
    pieces.ranges = out
  }
}

struct ByteLevelPreTokenizer: PreTokenizer {
  let addPrefixSpace: Bool
  let useRegex: Bool
  static let scanner = GPT2Scanner()
  var isByteLevel: Bool { true }

  func split(_ pieces: inout PieceList) {
    if addPrefixSpace {
      for k in pieces.ranges.indices where !pieces.ranges[k].isEmpty && pieces.bytes[pieces.ranges[k].lowerBound] != 0x20 {
        let start = pieces.bytes.count
        pieces.bytes.append(0x20)
        pieces.bytes.append(contentsOf: pieces.bytes[pieces.ranges[k]])
        pieces.ranges[k] = start..<pieces.bytes.count
      }
    }
    guard useRegex else { return }
    var out: [Range<Int>] = []
    out.reserveCapacity(pieces.ranges.count * 4)
    for range in pieces.ranges {
      SplitBehavior.isolated.apply(range, matches: Self.scanner.matches(in: pieces.bytes, range), invert: false, into: &out)
    }
    pieces.ranges = out
  }
}

struct SequencePreTokenizer: PreTokenizer {
  let parts: [any PreTokenizer]
  var isByteLevel: Bool { parts.contains { $0.isByteLevel } }
  func split(_ pieces: inout PieceList) {
    for part in parts { part.split(&pieces) }
  }
}

/// How Metaspace marks the start of text: always, only at the start of the input, or never.
enum PrependScheme: Sendable {
  case always, first, never

  init(node: JSONNode) throws {
    switch node.optionalString("prepend_scheme") {
    case "always": self = .always
    case "first": self = .first
    case "never": self = .never
    case nil: self = node.bool("add_prefix_space", default: true) ? .always : .never  // files before prepend_scheme
    case let other?: throw node.fail("unknown prepend_scheme \"\(other)\"")
    }
  }
}

/// SentencePiece-style: spaces become "▁", a "▁" is prepended per the scheme, and text splits before each "▁".
struct MetaspacePreTokenizer: PreTokenizer {
  let replacement: [UInt8]
  let scheme: PrependScheme
  let splits: Bool
  var isByteLevel: Bool { false }

  init(node: JSONNode) throws {
    let replacement = try node.string("replacement")
    guard replacement.unicodeScalars.count == 1 else { throw node.fail("replacement must be one character") }
    self.replacement = Array(replacement.utf8)
    scheme = try PrependScheme(node: node)
    splits = node.bool("split", default: true)
  }

  func split(_ pieces: inout PieceList) {
    var out: [Range<Int>] = []
    for (k, range) in pieces.ranges.enumerated() where !range.isEmpty {
      let start = pieces.bytes.count
      let original = Array(pieces.bytes[range])
      // The test runs after spaces became "▁", so a leading space counts as a leading "▁".
      let startsMarked = original.first == 0x20 || original.starts(with: replacement)
      let prepend: Bool
      switch scheme {
      case .always: prepend = !startsMarked
      case .first: prepend = k == 0 && pieces.firstStartsInput && !startsMarked
      case .never: prepend = false
      }
      if prepend { pieces.bytes.append(contentsOf: replacement) }
      for byte in original {
        if byte == 0x20 { pieces.bytes.append(contentsOf: replacement) } else { pieces.bytes.append(byte) }
      }
      let rewritten = start..<pieces.bytes.count
      if splits {
        let matches = LiteralScanner(needle: replacement).matches(in: pieces.bytes, rewritten)
        SplitBehavior.mergedWithNext.apply(rewritten, matches: matches, invert: false, into: &out)
      } else {
        out.append(rewritten)
      }
    }
    pieces.ranges = out
  }
}
