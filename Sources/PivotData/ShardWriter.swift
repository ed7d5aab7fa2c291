import Foundation

/// Writes one shard: tar, compressed with zstd when the path ends in `.zst`.
public final class ShardFileWriter {
  public let path: String
  private let tar: TarWriter
  public private(set) var sampleCount = 0

  public init(path: String, compressionLevel: Int32 = 3, modificationTime: Int = 0) throws {
    self.path = path
    let file = try FileByteSink(path: path)
    let sink: any ByteSink =
      path.hasSuffix(".zst") ? try ZstdCompressingSink(sink: file, path: path, level: compressionLevel) : file
    tar = TarWriter(sink: sink, modificationTime: modificationTime)
  }

  /// Uncompressed tar bytes so far.
  public var bytesWritten: Int64 { tar.bytesWritten }

  /// Writes the sample's fields as `key.field` members, in order.
  public func write(_ sample: ShardSample) throws {
    guard !sample.key.isEmpty, splitMemberName(sample.key + ".x")?.key == sample.key else {
      throw DataError.sample(
        path: path, key: sample.key, message: "a key must be non-empty and have no dot in its last component")
    }
    var seen = Set<String>()
    for field in sample.fields {
      guard seen.insert(field.name).inserted else {
        throw DataError.sample(path: path, key: sample.key, message: "duplicate field '\(field.name)'")
      }
      try tar.add(name: sample.key + "." + field.name, data: field.data)
    }
    sampleCount += 1
  }

  public func finish() throws { try tar.finish() }
}

/// Writes samples into numbered shards, starting a new one after `maxSamples` samples or
/// `maxBytes` uncompressed bytes, like webdataset's `ShardWriter`:
/// `pattern` is a printf-style name such as `out/pairs-%06d.tar.zst`.
public final class ShardWriter {
  public let pattern: String
  public let maxSamples: Int
  public let maxBytes: Int64
  public let compressionLevel: Int32
  public let modificationTime: Int
  private var current: ShardFileWriter? = nil
  private var nextIndex: Int
  public private(set) var writtenPaths: [String] = []
  public private(set) var totalSamples = 0

  public init(
    pattern: String, maxSamples: Int = 10_000, maxBytes: Int64 = 3 << 30, compressionLevel: Int32 = 3,
    startIndex: Int = 0, modificationTime: Int = 0
  ) throws {
    guard pattern.contains("%") else {
      throw DataError.invalid("shard name pattern '\(pattern)' needs a number field such as %06d")
    }
    self.pattern = pattern
    self.maxSamples = max(1, maxSamples)
    self.maxBytes = max(1, maxBytes)
    self.compressionLevel = compressionLevel
    self.nextIndex = startIndex
    self.modificationTime = modificationTime
  }

  public static func shardName(pattern: String, index: Int) -> String {
    String(format: pattern, index)
  }

  public func write(_ sample: ShardSample) throws {
    if let writer = current, writer.sampleCount >= maxSamples || writer.bytesWritten >= maxBytes {
      try writer.finish()
      current = nil
    }
    if current == nil {
      let path = ShardWriter.shardName(pattern: pattern, index: nextIndex)
      nextIndex += 1
      let directory = (path as NSString).deletingLastPathComponent
      if !directory.isEmpty && !FileManager.default.fileExists(atPath: directory) {
        do {
          try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
          throw DataError.io(path: directory, message: "cannot create the output folder: \(error.localizedDescription)")
        }
      }
      current = try ShardFileWriter(
        path: path, compressionLevel: compressionLevel, modificationTime: modificationTime)
      writtenPaths.append(path)
    }
    try current!.write(sample)
    totalSamples += 1
  }

  public func finish() throws {
    try current?.finish()
    current = nil
  }
}
