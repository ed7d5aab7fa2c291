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
      return "sample '\(key)': image: \(message). JPEG and PNG are read; re-encode others."
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
