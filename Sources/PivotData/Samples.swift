import Foundation

/// One named part of a sample: `jpg`, `txt`, `json`, ...
public struct SampleField: Sendable, Equatable {
  public var name: String
  public var data: [UInt8]
  public init(name: String, data: [UInt8]) {
    self.name = name
    self.data = data
  }
}

/// A webdataset sample: the adjacent tar members that share a key.
public struct ShardSample: Sendable, Equatable {
  /// `__key__`: the member name up to the first dot of its last path component.
  public var key: String
  /// `__url__`: the shard it came from.
  public var url: String
  /// Fields in the order the members appear in the tar.
  public var fields: [SampleField]

  public init(key: String, url: String, fields: [SampleField]) {
    self.key = key
    self.url = url
    self.fields = fields
  }

  public subscript(field: String) -> [UInt8]? {
    fields.first { $0.name == field }?.data
  }

  /// The first field present among `names` (e.g. `["jpg", "jpeg"]`).
  public func first(of names: [String]) -> [UInt8]? {
    for name in names { if let data = self[name] { return data } }
    return nil
  }
}

/// What reading a shard gives: a sample, or a sample (or stretch of tar) that had to be
/// skipped, with the reason.
public enum ShardItem: Sendable {
  case sample(ShardSample)
  case bad(key: String, message: String)
}

/// webdataset's key rule: `(dir/)stem.rest` → key `dir/stem`, field `rest` lower-cased.
/// Returns nil for names without a dot in the last component (webdataset skips those).
public func splitMemberName(_ name: String) -> (key: String, field: String)? {
  let lastSlash = name.lastIndex(of: "/")
  let componentStart = lastSlash.map { name.index(after: $0) } ?? name.startIndex
  guard let dot = name[componentStart...].firstIndex(of: "."), dot > componentStart else { return nil }
  return (String(name[..<dot]), String(name[name.index(after: dot)...]).lowercased())
}

/// Groups a shard's tar members into samples, as webdataset's `group_by_keys` does: adjacent
/// members only; a duplicate field makes the whole sample bad; metadata members named
/// `__...__` are skipped. The shard-level errors (truncated stream, unreadable file) are thrown;
/// the items before them have been delivered.
public final class ShardSampleReader {
  public let path: String
  private let tar: TarReader
  private var pending: ShardSample? = nil
  private var pendingProblem: String? = nil
  private var queued: [ShardItem] = []
  private var ended = false
  /// Set after a corrupt header until the next sample starts (and inherits the problem).
  private var damage: String? = nil

  public init(path: String) throws {
    self.path = path
    tar = TarReader(stream: try openShardStream(path: path), path: path)
  }

  public init(stream: any ByteStream, path: String) {
    self.path = path
    tar = TarReader(stream: stream, path: path)
  }

  private func flushPending() {
    guard let sample = pending else { return }
    if let problem = pendingProblem {
      queued.append(.bad(key: sample.key, message: problem))
    } else if !sample.fields.isEmpty {
      queued.append(.sample(sample))
    }
    pending = nil
    pendingProblem = nil
  }

  /// The next item, or nil when the shard is done.
  public func next() throws -> ShardItem? {
    while queued.isEmpty {
      if ended { return nil }
      let member: TarMember?
      do {
        member = try tar.next()
      } catch DataError.tarHeader(_, let offset, let message) {
        // Which sample the damaged member belonged to is unknown: drop the samples on both
        // sides of it rather than train on one that silently lost a field.
        let problem = "next to a corrupt tar header at byte \(offset) (\(message))"
        if pending != nil {
          if pendingProblem == nil { pendingProblem = problem }
          flushPending()
        }
        damage = problem
        continue
      } catch DataError.sample(_, let key, let message) {
        queued.append(.bad(key: key, message: message))
        continue
      } catch {
        // Shard-level failure: what was complete has been delivered; the sample in progress
        // is incomplete and dropped with the shard's error.
        ended = true
        pending = nil
        throw error
      }
      guard let member else {
        ended = true
        flushPending()
        if let damage {
          queued.append(.bad(key: "?", message: damage + "; nothing readable after it"))
          self.damage = nil
        }
        break
      }
      let lastComponent = member.name.split(separator: "/").last.map(String.init) ?? member.name
      if lastComponent.hasPrefix("__") && lastComponent.hasSuffix("__") && !member.name.contains("/") {
        continue
      }
      guard let (key, field) = splitMemberName(member.name) else { continue }
      if pending?.key != key {
        flushPending()
        pending = ShardSample(key: key, url: path, fields: [])
        if let damage {
          pendingProblem = damage
          self.damage = nil
        }
      }
      if pending!.fields.contains(where: { $0.name == field }) {
        if pendingProblem == nil { pendingProblem = "duplicate field '\(field)' in the tar" }
        continue
      }
      pending!.fields.append(SampleField(name: field, data: member.data))
    }
    return queued.removeFirst()
  }
}
