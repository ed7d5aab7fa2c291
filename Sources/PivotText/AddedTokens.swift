import Foundation

/// One entry of tokenizer.json's `added_tokens`.
public struct AddedToken: Sendable, Hashable {
  public let id: Int32
  public let content: String
  public let isSpecial: Bool
  public let singleWord: Bool
  public let leftStrip: Bool
  public let rightStrip: Bool
  public let normalized: Bool
}

/// A piece of input: either text still to be tokenised or an added token already recognised.
enum Segment {
  case text(Range<Int>)
  case token(Int32)
}

/// Finds added tokens in text before pre-tokenisation, leftmost-longest, honouring
/// `lstrip`/`rstrip`/`single_word`, as `tokenizers`' AddedVocabulary does.
struct AddedTokenMatcher: Sendable {
  let tokens: [AddedToken]
  private let contents: [[UInt8]]
  /// Indices into `tokens` by first byte, longest first.
  private let byFirstByte: [[Int]]

  /// `spellings[k]` is the text matched for `tokens[k]` (normalised content for normalized tokens).
  init(_ tokens: [AddedToken], spellings: [String]) {
    self.tokens = tokens
    let contents = spellings.map { Array($0.utf8) }
    var buckets = [[Int]](repeating: [], count: 256)
    for (k, bytes) in contents.enumerated() where !bytes.isEmpty { buckets[Int(bytes[0])].append(k) }
    self.contents = contents
    byFirstByte = buckets.map { bucket in bucket.sorted { contents[$0].count > contents[$1].count } }
  }

  var isEmpty: Bool { tokens.isEmpty }

  /// Cuts `range` of `bytes` into text and token segments.
  func split(_ bytes: [UInt8], _ range: Range<Int>, into out: inout [Segment]) {
    var cursor = range.lowerBound  // end of the last emitted segment
    var i = range.lowerBound
    let end = range.upperBound
    while i < end {
      let bucket = byFirstByte[Int(bytes[i])]
      var matched: Int? = nil
      if !bucket.isEmpty {
        for k in bucket {
          let needle = contents[k]
          if i + needle.count <= end && bytes[i..<(i + needle.count)].elementsEqual(needle) {
            matched = k
            break
          }
        }
      }
      guard let k = matched else {
        i += 1
        continue
      }
      let token = tokens[k]
      var start = i
      var stop = i + contents[k].count
      if token.singleWord {
        let wordBefore = start > range.lowerBound && Self.isWordCharacter(lastScalarBefore: start, in: bytes, from: range.lowerBound)
        let wordAfter = stop < end && Self.isWordCharacter(firstScalarAt: stop, in: bytes)
        if wordBefore || wordAfter {
          i = stop  // matching resumes after a rejected match, as the Aho-Corasick iterator does
          continue
        }
      }
      if token.leftStrip {
        while start > cursor, let (scalar, length) = Self.scalar(endingAt: start, in: bytes, from: cursor),
          scalar.properties.isWhitespace
        {
          start -= length
        }
      }
      let matchEnd = stop
      if token.rightStrip {
        while stop < end, let (scalar, length) = Self.scalar(startingAt: stop, in: bytes), scalar.properties.isWhitespace {
          stop += length
        }
      }
      if cursor < start { out.append(.text(cursor..<start)) }
      out.append(.token(token.id))
      cursor = stop
      i = max(matchEnd, stop)
    }
    if cursor < end { out.append(.text(cursor..<end)) }
  }

  /// The regex `\w` class `tokenizers` tests: alphabetic, marks, decimal digits, connectors, joiners.
  private static func isWordCharacter(_ scalar: Unicode.Scalar) -> Bool {
    let properties = scalar.properties
    if properties.isAlphabetic || properties.isJoinControl { return true }
    switch properties.generalCategory {
    case .decimalNumber, .nonspacingMark, .spacingMark, .enclosingMark, .connectorPunctuation: return true
    default: return false
    }
  }

  private static func isWordCharacter(lastScalarBefore index: Int, in bytes: [UInt8], from lower: Int) -> Bool {
    guard let (scalar, _) = scalar(endingAt: index, in: bytes, from: lower) else { return false }
    return isWordCharacter(scalar)
  }

  private static func isWordCharacter(firstScalarAt index: Int, in bytes: [UInt8]) -> Bool {
    guard let (scalar, _) = scalar(startingAt: index, in: bytes) else { return false }
    return isWordCharacter(scalar)
  }

  static func scalar(startingAt index: Int, in bytes: [UInt8]) -> (Unicode.Scalar, Int)? {
    guard index < bytes.count else { return nil }
    let b0 = bytes[index]
    let length = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4
    guard index + length <= bytes.count else { return nil }
    let text = String(decoding: bytes[index..<(index + length)], as: UTF8.self)
    return text.unicodeScalars.first.map { ($0, length) }
  }

  static func scalar(endingAt index: Int, in bytes: [UInt8], from lower: Int) -> (Unicode.Scalar, Int)? {
    guard index > lower else { return nil }
    var start = index - 1
    while start > lower && bytes[start] & 0xC0 == 0x80 { start -= 1 }
    let text = String(decoding: bytes[start..<index], as: UTF8.self)
    return text.unicodeScalars.first.map { ($0, index - start) }
  }
}
