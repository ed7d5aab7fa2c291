import Foundation

/// A tokenizer.json `decoder`: turns token strings back into text, as a chain like `tokenizers`' decode_chain.
protocol TokenDecoder: Sendable {
  func decodeChain(_ tokens: [String]) -> [String]
}

enum DecoderFactory {
  static func make(_ value: Any?, file: String) throws -> (any TokenDecoder)? {
    guard let value, !(value is NSNull) else { return nil }
    let node = try JSONNode(value, component: "decoder", file: file)
    guard let type = node.type else { throw TokenizerError.missingField(component: "decoder", field: "type", file: file) }
    switch type {
    case "ByteLevel": return ByteLevelDecoder()
    case "ByteFallback": return ByteFallbackDecoder()
    case "Metaspace":
      let replacement = try node.string("replacement")
      guard replacement.unicodeScalars.count == 1 else { throw node.fail("replacement must be one character") }
      return MetaspaceDecoder(replacement: replacement.unicodeScalars.first!, scheme: try PrependScheme(node: node))
    case "Fuse": return FuseDecoder()
    case "Strip":
      let content = try node.string("content")
      guard content.unicodeScalars.count == 1 else { throw node.fail("Strip content must be one character") }
      return StripDecoder(content: content.unicodeScalars.first!, start: node.int("start", default: 0), stop: node.int("stop", default: 0))
    case "Replace":
      let pattern = try TextPattern(node: node.child("pattern", component: "Replace pattern"))
      return ReplaceDecoder(replace: TextReplacement(pattern: pattern, content: try node.string("content")))
    case "Sequence":
      return SequenceDecoder(parts: try node.array("decoders").compactMap { try make($0, file: file) })
    default:
      throw TokenizerError.unsupportedComponent(kind: "decoder", type: type, file: file)
    }
  }
}

/// Maps byte-level characters back to bytes; tokens outside the alphabet (added tokens) pass as their UTF-8.
struct ByteLevelDecoder: TokenDecoder {
  func decodeChain(_ tokens: [String]) -> [String] {
    var bytes: [UInt8] = []
    for token in tokens {
      if let raw = ByteLevelAlphabet.bytes(ofToken: token) {
        bytes.append(contentsOf: raw)
      } else {
        bytes.append(contentsOf: token.utf8)
      }
    }
    return [String(decoding: bytes, as: UTF8.self)]
  }
}

/// Turns runs of `<0xXX>` tokens into text; an invalid run becomes one U+FFFD per byte.
struct ByteFallbackDecoder: TokenDecoder {
  func decodeChain(_ tokens: [String]) -> [String] {
    var out: [String] = []
    var pending: [UInt8] = []
    func flush() {
      guard !pending.isEmpty else { return }
      if let text = String(validating: pending, as: UTF8.self) {
        out.append(text)
      } else {
        out.append(contentsOf: Array(repeating: "\u{FFFD}", count: pending.count))
      }
      pending.removeAll()
    }
    for token in tokens {
      let utf8 = Array(token.utf8)
      if utf8.count == 6 && token.hasPrefix("<0x") && utf8[5] == UInt8(ascii: ">"),
        let byte = UInt8(String(decoding: utf8[3..<5], as: UTF8.self), radix: 16)
      {
        pending.append(byte)
      } else {
        flush()
        out.append(token)
      }
    }
    flush()
    return out
  }
}

/// "▁" back to spaces; in the first token every "▁" goes (the prepended one), as `tokenizers` does.
struct MetaspaceDecoder: TokenDecoder {
  let replacement: Unicode.Scalar
  let scheme: PrependScheme
  func decodeChain(_ tokens: [String]) -> [String] {
    tokens.enumerated().map { k, token in
      var view = String.UnicodeScalarView()
      for scalar in token.unicodeScalars {
        if scalar != replacement {
          view.append(scalar)
        } else if !(k == 0 && scheme != .never) {
          view.append(" ")
        }
      }
      return String(view)
    }
  }
}

struct FuseDecoder: TokenDecoder {
  func decodeChain(_ tokens: [String]) -> [String] { [tokens.joined()] }
}

/// Removes up to `start` leading and `stop` trailing copies of one character from each token.
struct StripDecoder: TokenDecoder {
  let content: Unicode.Scalar
  let start: Int
  let stop: Int
  func decodeChain(_ tokens: [String]) -> [String] {
    tokens.map { token in
      var scalars = Array(token.unicodeScalars)
      var cut = 0
      while cut < start && cut < scalars.count && scalars[cut] == content { cut += 1 }
      scalars.removeFirst(cut)
      var tail = 0
      while tail < stop && tail < scalars.count && scalars[scalars.count - 1 - tail] == content { tail += 1 }
      scalars.removeLast(tail)
      var view = String.UnicodeScalarView()
      view.append(contentsOf: scalars)
      return String(view)
    }
  }
}

struct TextReplacement: Sendable {
  let pattern: TextPattern
  let content: String
  func apply(_ text: String) -> String {
    let bytes = Array(text.utf8)
    let matches = pattern.matches(in: bytes, 0..<bytes.count)
    if matches.isEmpty { return text }
    var out: [UInt8] = []
    var cursor = 0
    for range in matches {
      out.append(contentsOf: bytes[cursor..<range.lowerBound])
      out.append(contentsOf: content.utf8)
      cursor = range.upperBound
    }
    out.append(contentsOf: bytes[cursor...])
    return String(decoding: out, as: UTF8.self)
  }
}

struct ReplaceDecoder: TokenDecoder {
  let replace: TextReplacement
  func decodeChain(_ tokens: [String]) -> [String] { tokens.map(replace.apply) }
}

struct SequenceDecoder: TokenDecoder {
  let parts: [any TokenDecoder]
  func decodeChain(_ tokens: [String]) -> [String] { parts.reduce(tokens) { $1.decodeChain($0) } }
}
