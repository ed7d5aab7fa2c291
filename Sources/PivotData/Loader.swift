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
  /// Random crops, flips and backgrounds, seeded per sample from the data cursor (so resume
  /// stays exact); nil = off.
  public var augmentation: Augmentation? = nil
  public var fields = SampleFields()
  public var requireImage = true
  /// Above this fraction of bad samples and shards, reading stops with an error.
  public var maxBadFraction = 0.05
  public var badFractionMinimumCount = 20
  /// Threads decoding images in the pipeline's own pool.
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

/// Decode + tokenise workers: samples go in with a sequence number, results come out by number,
/// so decoding runs ahead of (and alongside) reading, and the order of batches never depends on
/// which thread finished first.
final class DecodePool: @unchecked Sendable {
  private let condition = NSCondition()
  private var jobs: [(id: Int, sample: ShardSample, seed: UInt64)] = []
  private var jobHead = 0
  private var results: [Int: Result<PreparedSample, Error>] = [:]
  private var stopped = false

  init(decoder: SampleDecoder, threads: Int) {
    for index in 0..<max(1, threads) {
      let thread = Thread { [self] in work(decoder) }
      thread.name = "pivot-data-decode-\(index)"
      thread.start()
    }
  }

  private func work(_ decoder: SampleDecoder) {
    while true {
      condition.lock()
      while jobHead == jobs.count && !stopped { condition.wait() }
      if stopped {
        condition.unlock()
        return
      }
      let job = jobs[jobHead]
      jobHead += 1
      // Taken jobs still hold their raw sample: drop them often.
      if jobHead == jobs.count || jobHead >= 16 {
        jobs.removeFirst(jobHead)
        jobHead = 0
      }
      condition.unlock()
      let result = Result { try decoder.prepare(job.sample, seed: job.seed) }
      condition.lock()
      results[job.id] = result
      condition.broadcast()
      condition.unlock()
    }
  }

  func submit(id: Int, sample: ShardSample, seed: UInt64) {
    condition.lock()
    jobs.append((id, sample, seed))
    condition.signal()
    condition.unlock()
  }

  /// Waits for the result of job `id` and removes it.
  func take(id: Int) -> Result<PreparedSample, Error> {
    condition.lock()
    defer { condition.unlock() }
    while results[id] == nil { condition.wait() }
    return results.removeValue(forKey: id)!
  }

  /// Lets the workers exit once they finish the job in hand.
  func stop() {
    condition.lock()
    stopped = true
    condition.broadcast()
    condition.unlock()
  }
}

/// The pipeline, run on the calling thread: shard list → shard order → samples → window shuffle
/// → mixing → decode + tokenize (on `decodeThreads`) → batch. Use `PrefetchingDataLoader` to
/// run it in the background. Not for use by two threads at once.
public final class DataLoader: @unchecked Sendable {
  public let config: DatasetConfig
  public let health: DataHealth
  private let mixer: SampleMixer
  private let decoder: SampleDecoder
  private let pool: DecodePool
  /// Items read and handed to the pool, oldest first, with the position after each.
  private var pending: [(id: Int, item: SourcedItem, cursorAfter: DataCursor)] = []
  private var pendingHead = 0
  private var nextJob = 0
  private var ended = false
  /// Bad items since the last good one: a bound that stops a pass over only-bad data from
  /// spinning forever even when `maxBadFraction` allows everything.
  private var consecutiveBad = 0
  private var consecutiveBadLimit: Int { max(10_000, 10 * config.batchSize) }
  /// How far reading runs ahead of batching (each in-flight sample holds its decoded pixels).
  private var readAhead: Int { 4 * max(1, config.decodeThreads) }

  public init(
    config: DatasetConfig, encoder: any SampleEncoder, resumeFrom cursor: DataCursor? = nil,
    log: @escaping DataLog = standardErrorLog
  ) throws {
    guard config.batchSize > 0, config.maxLength > 0 else {
      throw DataError.invalid("dataset: batchSize and maxLength must be positive")
    }
    guard !config.sources.isEmpty else { throw DataError.invalid("dataset: no sources") }
    try config.augmentation?.validate()
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
    self.cursor = mixer.cursor
    let decoder = SampleDecoder(
      kind: config.kind, encoder: encoder, image: config.image, maxLength: config.maxLength, fields: config.fields,
      requireImage: config.requireImage, augmentation: config.augmentation)
    self.decoder = decoder
    pool = DecodePool(decoder: decoder, threads: config.decodeThreads)
  }

  deinit { pool.stop() }

  /// The position after the last batch returned (reading itself runs further ahead).
  public private(set) var cursor: DataCursor

  /// Reads items until `readAhead` are in flight, handing samples to the decode pool.
  private func readAheadItems() throws {
    while !ended && pending.count - pendingHead < readAhead {
      guard let item = try mixer.next() else {
        ended = true
        break
      }
      let id = nextJob
      nextJob += 1
      if case .sample(let sample) = item.item { pool.submit(id: id, sample: sample, seed: item.seed) }
      pending.append((id, item, mixer.cursor))
    }
  }

  /// The next batch, or nil when a finite number of epochs is done.
  public func nextBatch() throws -> Batch? {
    var collected: [PreparedSample] = []
    var lastCursor = cursor
    while collected.count < config.batchSize {
      try readAheadItems()
      if pendingHead == pending.count { break }
      let entry = pending[pendingHead]
      pendingHead += 1
      // Consumed entries still hold their raw sample: drop them often.
      if pendingHead >= 16 {
        pending.removeFirst(pendingHead)
        pendingHead = 0
      }
      lastCursor = entry.cursorAfter
      let result: Result<PreparedSample, Error>
      if case .bad(_, let message) = entry.item.item {
        result = .failure(SampleDecoder.Problem(message: message))
      } else {
        result = pool.take(id: entry.id)
      }
      switch result {
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
