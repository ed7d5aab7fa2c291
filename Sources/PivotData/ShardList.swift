import Foundation

/// Shard lists written as brace patterns, as webdataset and img2dataset name them:
/// `pairs-{000000..000099}.tar.zst` (numeric range, zero padding kept), `{en,zh}-0.tar`
/// (alternatives), several braces (all combinations), and several patterns joined by `::`.
public enum ShardList {
  public static let maximumShards = 10_000_000

  public static func expand(_ pattern: String) throws -> [String] {
    var result: [String] = []
    for part in pattern.components(separatedBy: "::") where !part.isEmpty {
      result += try expandOne(part, whole: pattern)
    }
    return result
  }

  private static func expandOne(_ pattern: String, whole: String) throws -> [String] {
    guard let open = pattern.firstIndex(of: "{") else {
      if pattern.contains("}") { throw DataError.shardList(pattern: whole, message: "'}' without '{'") }
      return [pattern]
    }
    guard let close = pattern[open...].firstIndex(of: "}") else {
      throw DataError.shardList(pattern: whole, message: "'{' without '}'")
    }
    let prefix = String(pattern[..<open])
    let body = String(pattern[pattern.index(after: open)..<close])
    let rest = try expandOne(String(pattern[pattern.index(after: close)...]), whole: whole)
    let choices: [String]
    if let range = body.range(of: "..") {
      let lowText = String(body[..<range.lowerBound])
      let highText = String(body[range.upperBound...])
      guard let low = Int(lowText), let high = Int(highText), low >= 0 else {
        throw DataError.shardList(
          pattern: whole, message: "'{\(body)}' is not a range of non-negative numbers like {000000..000099}")
      }
      guard low <= high else {
        throw DataError.shardList(pattern: whole, message: "range {\(body)} goes downwards")
      }
      guard high - low < maximumShards else {
        throw DataError.shardList(pattern: whole, message: "range {\(body)} has over \(maximumShards) shards")
      }
      let width = lowText.count
      choices = (low...high).map { value in
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
      }
    } else {
      choices = body.components(separatedBy: ",")
    }
    guard choices.count * rest.count <= maximumShards else {
      throw DataError.shardList(pattern: whole, message: "expands to over \(maximumShards) shards")
    }
    var result: [String] = []
    result.reserveCapacity(choices.count * rest.count)
    for choice in choices { for tail in rest { result.append(prefix + choice + tail) } }
    return result
  }
}
