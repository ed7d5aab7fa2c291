import Dispatch
import Foundation

/// Everything that decides which batches a run sees. Codable so a recipe can hold it.
public struct DatasetConfig: Codable, Sendable {
  public var sources: [DataSourceSpec]
  public var kind: SampleKind
  public var batchSize: Int
  public var maxLength: Int
  public var padToMaxLength = false
  public var seed: UInt64 = 0
  /// Shuffle shard order per epoch and samples within windows of `shuffleWindow`.
  public var shuffle = true
  public var shuffleWindow = 256
  /// nil: repeat forever (training by steps); n: stop after n passes (the last batch may be short).
  public var epochs: Int? = nil
  public var image = ImagePreprocessing.clip()
  public var fields = SampleFields()
  public var requireImage = true
  /// Above this fraction of bad samples and shards, reading stops with an error.
  public var maxBadFraction = 0.05
  public var badFractionMinimumCount = 20
  /// Threads decoding JPEGs in the pipeline's own pool.
  public var decodeThreads = 2
  /// Batches made ahead of the training loop by `PrefetchingDataLoader`.
  public var prefetchBatches = 2

  public init(sources: [DataSourceSpec], kind: SampleKind, batchSize: Int, maxLength: Int) {
    self.sources = sources
    self.kind = kind
    self.batchSize = batchSize
    self.maxLength = maxLength
  }
}

/// A counter shared by decode threads.
final class SharedCounter: @unchecked Sendable {
  private let lock = NSLock()
  private var value = 0
  func next() -> Int {
    lock.lock()
    defer { lock.unlock() }
    value += 1
    return value - 1
  }
}

/// An unchecked box for handing disjoint slots of a buffer to worker threads.
struct UnsafeSlots<Element>: @unchecked Sendable {
  let base: UnsafeMutablePointer<Element>
}

/// The pipeline, run on the calling thread: shard list → shard order → samples → window shuffle
/// → mixing → decode + tokenize (on `decodeThreads`) → batch. Use `PrefetchingDataLoader` to
/// run it in the background. Not for use by two threads at once.
public final class DataLoader: @unchecked Sendable {
  public let config: DatasetConfig
  public let health: DataHealth
  private let mixer: SampleMixer
  private let decoder: SampleDecoder
  private var carry: [(result: Result<PreparedSample, Error>, item: SourcedItem, cursorAfter: DataCursor)] = []
  private var carryIndex = 0
  private var ended = false
  /// Bad items since the last good one: a bound that stops a pass over only-bad data from
  /// spinning forever even when `maxBadFraction` allows everything.
  private var consecutiveBad = 0
  private var consecutiveBadLimit: Int { max(10_000, 10 * config.batchSize) }

  public init(
    config: DatasetConfig, encoder: any SampleEncoder, resumeFrom cursor: DataCursor? = nil,
    log: @escaping DataLog = standardErrorLog
  ) throws {
    guard config.batchSize > 0, config.maxLength > 0 else {
      throw DataError.invalid("dataset: batchSize and maxLength must be positive")
    }
    guard !config.sources.isEmpty else { throw DataError.invalid("dataset: no sources") }
    if let cursor {
      guard cursor.seed == config.seed, cursor.sources.map(\.name) == config.sources.map(\.name) else {
        throw DataError.invalid(
          "resume: the saved data position is for seed \(cursor.seed) and sources "
            + "\(cursor.sources.map(\.name)); this run has seed \(config.seed) and \(config.sources.map(\.name))")
      }
    }
    self.config = config
    let health = DataHealth(
      maxBadFraction: config.maxBadFraction, minimumCount: config.badFractionMinimumCount, log: log)
    self.health = health
    let streams = try config.sources.enumerated().map { index, spec in
      try SourceStream(
        index: index, spec: spec, seed: config.seed, shuffle: config.shuffle, shuffleWindow: config.shuffleWindow,
        epochs: config.epochs, health: health, cursor: cursor?.sources[index])
    }
    mixer = SampleMixer(sources: streams, seed: config.seed, draws: cursor?.draws ?? 0)
    decoder = SampleDecoder(
      kind: config.kind, encoder: encoder, image: config.image, maxLength: config.maxLength, fields: config.fields,
      requireImage: config.requireImage)
  }

  /// Where reading stands now (after the last batch returned).
  public private(set) lazy var cursor: DataCursor = mixer.cursor

  /// Pulls up to `count` items and decodes them in parallel, keeping their order.
  private func refill(count: Int) throws {
    var items: [(SourcedItem, DataCursor)] = []
    while items.count < count, let item = try mixer.next() { items.append((item, mixer.cursor)) }
    if items.isEmpty {
      ended = true
      return
    }
    var results = [Result<PreparedSample, Error>?](repeating: nil, count: items.count)
    let decoder = self.decoder
    let samples: [ShardSample?] = items.map {
      if case .sample(let sample) = $0.0.item { return sample }
      return nil
    }
    let threads = max(1, min(config.decodeThreads, items.count))
    // Work is handed out one sample at a time, so a thread that the OS pauses does not hold
    // back a fixed share of the chunk.
    let nextIndex = SharedCounter()
    results.withUnsafeMutableBufferPointer { buffer in
      let slots = UnsafeSlots(base: buffer.baseAddress!)
      let work: @Sendable (Int) -> Void = { _ in
        while true {
          let index = nextIndex.next()
          if index >= samples.count { break }
          if let sample = samples[index] {
            slots.base[index] = Result { try decoder.prepare(sample) }
          }
        }
      }
      if threads == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: threads, execute: work) }
    }
    carry = zip(items, results).map { pair in
      let (item, cursorAfter) = pair.0
      let result: Result<PreparedSample, Error>
      if case .bad(_, let message) = item.item {
        result = .failure(SampleDecoder.Problem(message: message))
      } else {
        result = pair.1!
      }
      return (result, item, cursorAfter)
    }
    carryIndex = 0
  }

  /// The next batch, or nil when a finite number of epochs is done.
  public func nextBatch() throws -> Batch? {
    var collected: [PreparedSample] = []
    var lastCursor = cursor
    while collected.count < config.batchSize {
      if carryIndex == carry.count {
        if ended { break }
        try refill(count: config.batchSize - collected.count)
        if ended { break }
      }
      let entry = carry[carryIndex]
      carryIndex += 1
      lastCursor = entry.cursorAfter
      switch entry.result {
      case .success(let prepared):
        health.good()
        consecutiveBad = 0
        if prepared.truncated { health.truncated() }
        collected.append(prepared)
      case .failure(let error):
        let key: String
        switch entry.item.item {
        case .sample(let sample): key = sample.key
        case .bad(let badKey, _): key = badKey
        }
        let message = (error as? SampleDecoder.Problem)?.message ?? "\(error)"
        try health.badSample(shard: entry.item.shard, key: key, message: message)
        consecutiveBad += 1
        if consecutiveBad >= consecutiveBadLimit {
          throw DataError.invalid(
            "\(consecutiveBad) bad samples in a row, none usable (last: \(entry.item.shard): '\(key)': \(message)); "
              + "check the shards with `pivot shards verify` and the sample kind (caption or conversation)")
        }
      }
    }
    if collected.isEmpty { return nil }
    cursor = lastCursor
    return collate(
      collected, padId: decoder.encoder.padId, image: config.image, maxLength: config.maxLength,
      padToMaxLength: config.padToMaxLength, cursor: lastCursor, stats: health.stats)
  }
}

/// The queue between the prefetch thread and the training loop, guarded by one condition.
final class PrefetchQueue: @unchecked Sendable {
  let condition = NSCondition()
  var batches: [Result<Batch, Error>] = []
  var producerDone = false
  var stopped = false
  let capacity: Int
  init(capacity: Int) { self.capacity = capacity }

  func produce(_ loader: DataLoader) {
    while true {
      condition.lock()
      while batches.count >= capacity && !stopped { condition.wait() }
      if stopped {
        producerDone = true
        condition.broadcast()
        condition.unlock()
        return
      }
      condition.unlock()
      var finished = false
      var result: Result<Batch, Error>? = nil
      do {
        if let batch = try loader.nextBatch() { result = .success(batch) } else { finished = true }
      } catch {
        result = .failure(error)
        finished = true
      }
      condition.lock()
      if let result { batches.append(result) }
      if finished { producerDone = true }
      condition.broadcast()
      condition.unlock()
      if finished { return }
    }
  }

  func next() throws -> Batch? {
    condition.lock()
    defer { condition.unlock() }
    while batches.isEmpty && !producerDone { condition.wait() }
    if batches.isEmpty { return nil }
    let result = batches.removeFirst()
    condition.broadcast()
    return try result.get()
  }

  func stop() {
    condition.lock()
    stopped = true
    condition.broadcast()
    condition.unlock()
  }
}

/// Runs a `DataLoader` on a background thread, `prefetchBatches` ahead, so the training loop
/// never waits on JPEG decoding. Errors surface from `next()` in order; the batch's `cursor` is
/// the position after that batch, whatever the thread has read ahead.
public final class PrefetchingDataLoader: Sendable {
  private let queue: PrefetchQueue

  public init(loader: DataLoader) {
    let queue = PrefetchQueue(capacity: max(1, loader.config.prefetchBatches))
    self.queue = queue
    let thread = Thread { queue.produce(loader) }
    thread.name = "pivot-data-prefetch"
    thread.start()
  }

  public convenience init(
    config: DatasetConfig, encoder: any SampleEncoder, resumeFrom cursor: DataCursor? = nil,
    log: @escaping DataLog = standardErrorLog
  ) throws {
    self.init(loader: try DataLoader(config: config, encoder: encoder, resumeFrom: cursor, log: log))
  }

  /// The next batch (waiting for it if needed), or nil at the end.
  public func next() throws -> Batch? { try queue.next() }

  /// Asks the background thread to finish; it exits after the batch it is making.
  public func stop() { queue.stop() }

  deinit { queue.stop() }
}
