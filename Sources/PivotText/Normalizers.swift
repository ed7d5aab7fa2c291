import Foundation

/// A tokenizer.json `normalizer`: rewrites text before pre-tokenisation.
protocol Normalizer: Sendable {
  func normalize(_ text: String) -> String
}

enum NormalizerFactory {
  static func make(_ value: Any?, file: String) throws -> (any Normalizer)? {
    guard let value, !(value is NSNull) else { return nil }
    let node = try JSONNode(value, component: "normalizer", file: file)
    guard let type = node.type else { throw TokenizerError.missingField(component: "normalizer", field: "type", file: file) }
    switch type {
    case "NFC": return UnicodeNormalizer(form: .nfc)
    case "NFKC": return UnicodeNormalizer(form: .nfkc)
    case "NFD": return UnicodeNormalizer(form: .nfd)
    case "NFKD": return UnicodeNormalizer(form: .nfkd)
    case "Lowercase": return LowercaseNormalizer()
    case "Prepend": return PrependNormalizer(prefix: try node.string("prepend"))
    case "Replace": return try ReplaceNormalizer(node: node)
    case "Strip":
      return StripNormalizer(left: node.bool("strip_left", default: false), right: node.bool("strip_right", default: false))
    case "Sequence":
      let parts = try node.array("normalizers").compactMap { try make($0, file: file) }
      return SequenceNormalizer(parts: parts)
    default:
      throw TokenizerError.unsupportedComponent(kind: "normalizer", type: type, file: file)
    }
  }
}

struct UnicodeNormalizer: Normalizer {
  enum Form: Sendable { case nfc, nfkc, nfd, nfkd }
  let form: Form

  func normalize(_ text: String) -> String {
    if (form == .nfc || form == .nfkc) && Self.isStableUnderComposition(text) { return text }
    let ns = text as NSString
    switch form {
    case .nfc: return ns.precomposedStringWithCanonicalMapping
    case .nfkc: return ns.precomposedStringWithCompatibilityMapping
    case .nfd: return ns.decomposedStringWithCanonicalMapping
    case .nfkd: return ns.decomposedStringWithCompatibilityMapping
    }
  }

  /// True when every scalar is one that NFC and NFKC leave alone whatever surrounds it: ASCII and Latin-1
  /// below the combining marks, and the CJK ideographs and kana, which are the bulk of Pivot's text.
  /// Anything else (compatibility ideographs, full-width forms, combining marks, Hangul jamo...) goes to Foundation.
  static func isStableUnderComposition(_ text: String) -> Bool {
    for byte in text.utf8 where byte >= 0x80 {
      return text.unicodeScalars.allSatisfy { scalar in
        let v = scalar.value
        return v < 0xA0 || (v >= 0x4E00 && v <= 0x9FFF) || (v >= 0x3040 && v <= 0x3098) || (v >= 0x30A0 && v <= 0x30FE)
          || (v >= 0x3001 && v <= 0x3029)
      }
    }
    return true
  }
}

struct LowercaseNormalizer: Normalizer {
  func normalize(_ text: String) -> String { text.lowercased() }
}

/// LLaMA-2-style files prepend "▁" to every non-empty segment.
struct PrependNormalizer: Normalizer {
  let prefix: String
  func normalize(_ text: String) -> String { text.isEmpty ? text : prefix + text }
}

struct ReplaceNormalizer: Normalizer {
  let replace: TextReplacement

  init(node: JSONNode) throws {
    let pattern = try TextPattern(node: node.child("pattern", component: "\(node.component) pattern"))
    replace = TextReplacement(pattern: pattern, content: try node.string("content"))
  }

  func normalize(_ text: String) -> String { replace.apply(text) }
}

struct StripNormalizer: Normalizer {
  let left: Bool
  let right: Bool
  func normalize(_ text: String) -> String {
    var scalars = Substring(text).unicodeScalars[...]
    if left { while let first = scalars.first, first.properties.isWhitespace { scalars = scalars.dropFirst() } }
    if right { while let last = scalars.last, last.properties.isWhitespace { scalars = scalars.dropLast() } }
    return String(String.UnicodeScalarView(scalars))
  }
}

struct SequenceNormalizer: Normalizer {
  let parts: [any Normalizer]
  func normalize(_ text: String) -> String { parts.reduce(text) { $1.normalize($0) } }
}
