import Foundation

/// Everything PivotData throws. Each case names the file (and the sample key where there is one)
/// and says what to try.
public enum DataError: Error, CustomStringConvertible, Sendable, Equatable {
  case io(path: String, message: String)
  case zstd(path: String, message: String)
  case truncated(path: String, message: String)
  case tarHeader(path: String, offset: Int64, message: String)
  case sample(path: String, key: String, message: String)
  case image(key: String, message: String)
  case shardList(pattern: String, message: String)
  case tooManyBad(fraction: Double, limit: Double, bad: Int, total: Int, lastProblem: String)
  case invalid(String)

  public var description: String {
    switch self {
    case .io(let path, let message):
      return "\(path): \(message). Check that the file exists and is readable."
    case .zstd(let path, let message):
      return "\(path): zstd: \(message). The shard may be damaged; `zstd -t \(path)` checks it."
    case .truncated(let path, let message):
      return "\(path): truncated: \(message). The shard was cut short (interrupted copy or write?)."
    case .tarHeader(let path, let offset, let message):
      return "\(path): bad tar header at byte \(offset): \(message). `pivot shards verify` lists what is readable."
    case .sample(let path, let key, let message):
      return "\(path): sample '\(key)': \(message)."
    case .image(let key, let message):
      return "sample '\(key)': image: \(message). JPEG, PNG and WebP are read; re-encode others."
    case .shardList(let pattern, let message):
      return "shard list '\(pattern)': \(message)."
    case .tooManyBad(let fraction, let limit, let bad, let total, let lastProblem):
      return String(
        format: "%d of %d samples or shards were bad (%.1f%%, limit %.1f%%); last: %@. "
          + "Run `pivot shards verify` on the shards, or raise maxBadFraction.",
        bad, total, fraction * 100, limit * 100, lastProblem)
    case .invalid(let message):
      return message
    }
  }
}

/// Reads a text file a user gave: a byte-order mark is dropped, Windows line ends become `\n`,
/// and bytes that are not UTF-8 are an error naming the file, the line and the byte offset.
public func readUserText(_ path: String) throws -> String {
  guard let data = FileManager.default.contents(atPath: path) else {
    throw DataError.invalid("\(path): cannot read the file (check the path and permissions)")
  }
  var bytes = [UInt8](data)
  if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
  guard let text = String(validating: bytes, as: UTF8.self) else {
    let bad = firstInvalidUTF8(bytes)
    let line = bytes[0..<bad].filter { $0 == 0x0A }.count + 1
    throw DataError.invalid(String(format: "%@:%d: not UTF-8 text (byte 0x%02X at offset %d); save the file as UTF-8", path, line, bytes[bad], bad))
  }
  return text.contains("\r\n") ? text.replacingOccurrences(of: "\r\n", with: "\n") : text
}

/// Offset of the first byte that does not start a well-formed UTF-8 sequence (overlong forms,
/// surrogates and values past U+10FFFF included).
func firstInvalidUTF8(_ b: [UInt8]) -> Int {
  var i = 0
  while i < b.count {
    let lead = b[i]
    let (count, lowest): (Int, UInt32) = lead < 0x80 ? (1, 0) : lead >= 0xC2 && lead < 0xE0 ? (2, 0x80) : lead >= 0xE0 && lead < 0xF0 ? (3, 0x800) : lead >= 0xF0 && lead < 0xF5 ? (4, 0x10000) : (0, 0)
    guard count > 0, i + count <= b.count else { return i }
    var value = UInt32(lead) & (count == 1 ? 0x7F : count == 2 ? 0x1F : count == 3 ? 0x0F : 0x07)
    for k in 1..<count {
      guard b[i + k] & 0xC0 == 0x80 else { return i }
      value = value << 6 | UInt32(b[i + k] & 0x3F)
    }
    if value < lowest || value > 0x10FFFF || (0xD800...0xDFFF).contains(value) { return i }
    i += count
  }
  return b.count
}
