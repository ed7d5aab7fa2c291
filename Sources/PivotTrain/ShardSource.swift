import Foundation
import PivotData
import PivotTensor

/// Batches from shards through PivotData's loader, prefetched on a background thread. The
/// saved state is the data cursor after the last batch handed out, so resume is exact.
public final class ShardBatchSource: BatchSource {
  public let config: DatasetConfig
  let encoder: any SampleEncoder
  let log: DataLog
  var loader: PrefetchingDataLoader
  var lastCursor: DataCursor?
  public private(set) var badSamples = 0

  public init(config: DatasetConfig, encoder: any SampleEncoder, log: @escaping DataLog = standardErrorLog) throws {
    self.config = config
    self.encoder = encoder
    self.log = log
    loader = PrefetchingDataLoader(loader: try DataLoader(config: config, encoder: encoder, log: log))
  }

  deinit { loader.stop() }

  public func next() throws -> TrainBatch {
    guard let b = try loader.next() else {
      // Only a finite number of epochs ends the data; an unbounded stream that stops is an error.
      guard let epochs = config.epochs else {
        throw DataError.invalid("the training data stopped although no epochs were set (no readable shard left?); check the shards with `pivot shards verify`")
      }
      throw EndOfData(epochs: epochs)
    }
    lastCursor = b.cursor
    badSamples = b.stats.badTotal
    return Self.convert(b)
  }

  /// (B, T) ids and labels as they are; one (3, H, W) image per row that has an image slot.
  public static func convert(_ b: Batch) -> TrainBatch {
    var starts: [Int?] = []
    var rows: [Int] = []
    for r in 0..<b.batchSize {
      if b.hasImage[r], let slot = b.imageSlots[r], slot.upperBound <= b.sequenceLength {
        starts.append(slot.lowerBound)
        rows.append(r)
      } else {
        starts.append(nil)
      }
    }
    var pixels: Tensor? = nil
    if !rows.isEmpty {
      let plane = 3 * b.imageHeight * b.imageWidth
      let t = Tensor(empty: [rows.count, 3, b.imageHeight, b.imageWidth])
      b.pixels.withUnsafeBufferPointer { src in
        for (i, r) in rows.enumerated() { (t.ptr + i * plane).update(from: src.baseAddress! + r * plane, count: plane) }
      }
      pixels = t
    }
    var batch = TrainBatch(ids: b.ids, labels: b.labels, batch: b.batchSize, length: b.sequenceLength, imageStarts: starts, pixels: pixels)
    batch.truncated = b.truncatedCount
    return batch
  }

  public func saveState() throws -> String {
    guard let lastCursor else { return "" }
    return String(decoding: try JSONEncoder().encode(lastCursor), as: UTF8.self)
  }

  public func restoreState(_ state: String) throws {
    guard !state.isEmpty else { return }
    let cursor = try JSONDecoder().decode(DataCursor.self, from: Data(state.utf8))
    loader.stop()
    loader = PrefetchingDataLoader(loader: try DataLoader(config: config, encoder: encoder, resumeFrom: cursor, log: log))
    lastCursor = cursor
  }
}
