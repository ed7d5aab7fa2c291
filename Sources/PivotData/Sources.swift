import Foundation

/// A counter-based generator (SplitMix64): the same seed gives the same numbers, so orders
/// are a pure function of (seed, epoch, shard, ...) and need no saved RNG state.
public struct SplitMix64: RandomNumberGenerator, Sendable {
  public var state: UInt64
  public init(seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// One well-mixed seed out of several numbers.
  public static func mix(_ values: UInt64...) -> UInt64 {
    var generator = SplitMix64(seed: 0x5EED_0F_9140_7A7A)
    var result: UInt64 = 0
    for value in values {
      generator.state ^= value &+ result
      result = generator.next()
    }
    return result
  }

  /// Fisher–Yates permutation of 0..<count.
  public static func permutation(count: Int, seed: UInt64) -> [Int] {
    var order = Array(0..<count)
    var generator = SplitMix64(seed: seed)
    if count > 1 {
      for index in stride(from: count - 1, to: 0, by: -1) {
        let other = Int(generator.next() % UInt64(index + 1))
        order.swapAt(index, other)
      }
    }
    return order
  }
}

/// One data source: shard patterns and a mixing weight (e.g. English and translated Chinese
/// conversations at 1:1).
public struct DataSourceSpec: Codable, Sendable, Equatable {
  public var name: String
  public var shards: [String]
  public var weight: Double

  public init(name: String, shards: [String], weight: Double = 1) {
    self.name = name
    self.shards = shards
    self.weight = weight
  }
}

/// Where one source is: the epoch, the position in that epoch's shard order, and how many
/// items (samples, good or bad) of that shard were consumed.
public struct SourceCursor: Codable, Sendable, Equatable {
  public var name: String
  public var shardCount: Int
  public var epoch: Int
  public var shardPosition: Int
  public var itemsConsumed: Int
}

/// The whole reading position: enough to resume exactly. The trainer stores it in `state.json`.
public struct DataCursor: Codable, Sendable, Equatable {
  public var seed: UInt64
  /// How many times the mixer has picked a source.
  public var draws: UInt64
  public var sources: [SourceCursor]
}

/// Counts of what was read and skipped.
public struct DataStats: Codable, Sendable, Equatable {
  public var goodSamples = 0
  public var badSamples = 0
  public var badShards = 0
  public var truncatedSamples = 0
  public init() {}
  public var badTotal: Int { badSamples + badShards }
  public var badFraction: Double {
    let total = goodSamples + badTotal
    return total == 0 ? 0 : Double(badTotal) / Double(total)
  }
}

public typealias DataLog = @Sendable (String) -> Void

public let standardErrorLog: DataLog = { message in
  FileHandle.standardError.write(Data(("pivot data: " + message + "\n").utf8))
}

/// Counts bad samples and shards, logs each with its shard and key, and turns too many into
/// an error.
public final class DataHealth: @unchecked Sendable {
  public private(set) var stats = DataStats()
  public let maxBadFraction: Double
  /// The fraction is only judged once this many samples and shards were seen.
  public let minimumCount: Int
  private let log: DataLog

  public init(maxBadFraction: Double = 0.05, minimumCount: Int = 20, log: @escaping DataLog = standardErrorLog) {
    self.maxBadFraction = maxBadFraction
    self.minimumCount = minimumCount
    self.log = log
  }

  public func good() { stats.goodSamples += 1 }
  public func truncated() { stats.truncatedSamples += 1 }

  public func badSample(shard: String, key: String, message: String) throws {
    stats.badSamples += 1
    let problem = "\(shard): sample '\(key)': \(message)"
    log("skipped " + problem)
    try check(problem)
  }

  public func badShard(shard: String, message: String) throws {
    stats.badShards += 1
    let problem = "\(shard): \(message)"
    log("skipped shard " + problem)
    try check(problem)
  }

  private func check(_ problem: String) throws {
    let total = stats.goodSamples + stats.badTotal
    if total >= minimumCount && stats.badFraction > maxBadFraction {
      throw DataError.tooManyBad(
        fraction: stats.badFraction, limit: maxBadFraction, bad: stats.badTotal, total: total, lastProblem: problem)
    }
  }
}

/// A sample (or bad item) with the shard it came from.
public struct SourcedItem: Sendable {
  public var item: ShardItem
  public var shard: String
  public var source: Int
  /// The sample's own random seed (augmentation): a pure function of its place in the data
  /// order, so a resumed run draws exactly what an uninterrupted one would.
  public var seed: UInt64
}

/// The last argument of `SplitMix64.mix` for each use, so that no two uses share numbers.
enum SeedDomain {
  static let shardOrder: UInt64 = 1
  static let windowOrder: UInt64 = 2
  static let sourceDraw: UInt64 = 3
  static let sampleAugmentation: UInt64 = 4
}

/// One source's stream of items: shards in a seeded order per epoch; within a shard, windows of
/// `shuffleWindow` consecutive items, each emitted in a seeded permutation. Resuming reopens
/// the shard, skips to the window start (decompression only, no decoding) and continues, so
/// the order is exactly that of an uninterrupted run.
final class SourceStream {
  let index: Int
  let spec: DataSourceSpec
  let shards: [String]
  let seed: UInt64
  let shuffle: Bool
  let shuffleWindow: Int
  let epochs: Int?
  let health: DataHealth
  private(set) var cursor: SourceCursor
  private var order: [Int] = []
  private var orderEpoch = -1
  private var reader: ShardSampleReader? = nil
  private var readerEnded = false
  private var readerFailed = false
  private var window: [ShardItem] = []
  private var windowPermutation: [Int] = []
  private var windowOffset = 0
  private var itemsInShard = 0
  private var goodItemsThisEpoch = 0
  /// Whether this process saw the current epoch from its start (false right after a resume).
  private var epochSeenWhole: Bool
  private(set) var exhausted = false

  init(
    index: Int, spec: DataSourceSpec, seed: UInt64, shuffle: Bool, shuffleWindow: Int, epochs: Int?,
    health: DataHealth, cursor: SourceCursor?
  ) throws {
    self.index = index
    self.spec = spec
    var shards: [String] = []
    for pattern in spec.shards { shards += try ShardList.expand(pattern) }
    guard !shards.isEmpty else {
      throw DataError.shardList(pattern: spec.shards.joined(separator: " "), message: "names no shards")
    }
    self.shards = shards
    self.seed = seed
    self.shuffle = shuffle
    self.shuffleWindow = max(1, shuffleWindow)
    self.epochs = epochs
    self.health = health
    if let cursor {
      guard cursor.shardCount == shards.count else {
        throw DataError.invalid(
          "resume: source '\(spec.name)' had \(cursor.shardCount) shards when saved and has \(shards.count) now; "
            + "exact resume needs the same shard list")
      }
      self.cursor = cursor
    } else {
      self.cursor = SourceCursor(
        name: spec.name, shardCount: shards.count, epoch: 0, shardPosition: 0, itemsConsumed: 0)
    }
    epochSeenWhole = self.cursor.shardPosition == 0 && self.cursor.itemsConsumed == 0
    if let epochs, self.cursor.epoch >= epochs { exhausted = true }
  }

  private func shardPath(at position: Int) -> String {
    if orderEpoch != cursor.epoch {
      order =
        shuffle
        ? SplitMix64.permutation(
          count: shards.count, seed: SplitMix64.mix(seed, UInt64(index), UInt64(cursor.epoch), SeedDomain.shardOrder))
        : Array(0..<shards.count)
      orderEpoch = cursor.epoch
    }
    return shards[order[position]]
  }

  private func advanceShard() throws {
    reader = nil
    readerEnded = false
    window = []
    windowOffset = 0
    itemsInShard = 0
    cursor.shardPosition += 1
    cursor.itemsConsumed = 0
    if cursor.shardPosition >= shards.count {
      if goodItemsThisEpoch == 0 && epochSeenWhole {
        throw DataError.invalid(
          "source '\(spec.name)': a whole pass over its \(shards.count) shards gave no readable sample "
            + "(first: \(shards[0])); check the pattern and run `pivot shards verify`")
      }
      goodItemsThisEpoch = 0
      epochSeenWhole = true
      cursor.epoch += 1
      cursor.shardPosition = 0
      if let epochs, cursor.epoch >= epochs { exhausted = true }
    }
  }

  /// Reads the next window of the current shard, opening it (and skipping to the cursor) if needed.
  /// Returns false when the shard has no more items.
  private func loadWindow() throws -> Bool {
    let path = shardPath(at: cursor.shardPosition)
    if reader == nil {
      if !FileManager.default.fileExists(atPath: path) {
        try health.badShard(shard: path, message: "missing file (named by the shard list)")
        return false
      }
      do {
        reader = try ShardSampleReader(path: path)
      } catch {
        try health.badShard(shard: path, message: "\(error)")
        return false
      }
      readerEnded = false
      readerFailed = false
      itemsInShard = 0
      // Skip to the start of the window the cursor is in.
      let windowStart = (cursor.itemsConsumed / shuffleWindow) * shuffleWindow
      while itemsInShard < windowStart {
        guard try readItem(path: path) != nil else { break }
      }
    }
    if readerEnded { return false }
    let windowStart = itemsInShard
    window = []
    while window.count < shuffleWindow, let item = try readItem(path: path) { window.append(item) }
    if window.isEmpty {
      if itemsInShard == 0 && !readerFailed { try health.badShard(shard: path, message: "empty shard (no samples)") }
      return false
    }
    let windowNumber = windowStart / shuffleWindow
    windowPermutation =
      shuffle
      ? SplitMix64.permutation(
        count: window.count,
        seed: SplitMix64.mix(
          seed, UInt64(index), UInt64(cursor.epoch), UInt64(cursor.shardPosition), UInt64(windowNumber),
          SeedDomain.windowOrder))
      : Array(0..<window.count)
    windowOffset = cursor.itemsConsumed - windowStart
    return windowOffset < window.count
  }

  /// One item from the open reader; a shard-level error ends the shard (counted once).
  private func readItem(path: String) throws -> ShardItem? {
    guard let reader, !readerEnded else { return nil }
    do {
      if let item = try reader.next() {
        itemsInShard += 1
        return item
      }
      readerEnded = true
      return nil
    } catch let error as DataError {
      readerEnded = true
      readerFailed = true
      if case .tooManyBad = error { throw error }
      try health.badShard(shard: path, message: "\(error)")
      return nil
    }
  }

  /// The next item, or nil once `epochs` passes are done.
  func next() throws -> SourcedItem? {
    while !exhausted {
      if windowOffset < window.count {
        let item = window[windowPermutation[windowOffset]]
        // (dataset seed, source, epoch, shard position, index in emission order): all in the cursor.
        let itemSeed = SplitMix64.mix(
          seed, UInt64(index), UInt64(cursor.epoch), UInt64(cursor.shardPosition), UInt64(cursor.itemsConsumed),
          SeedDomain.sampleAugmentation)
        windowOffset += 1
        cursor.itemsConsumed += 1
        if case .sample = item { goodItemsThisEpoch += 1 }
        return SourcedItem(item: item, shard: shardPath(at: cursor.shardPosition), source: index, seed: itemSeed)
      }
      if try !loadWindow() { try advanceShard() }
    }
    return nil
  }
}

/// Picks among sources by weight with a counter-based draw, so the choice sequence is a pure
/// function of (seed, draw number) and resumes exactly.
final class SampleMixer {
  let sources: [SourceStream]
  let seed: UInt64
  private(set) var draws: UInt64

  init(sources: [SourceStream], seed: UInt64, draws: UInt64) {
    self.sources = sources
    self.seed = seed
    self.draws = draws
  }

  var cursor: DataCursor {
    DataCursor(seed: seed, draws: draws, sources: sources.map(\.cursor))
  }

  func next() throws -> SourcedItem? {
    while true {
      let live = sources.filter { !$0.exhausted && $0.spec.weight > 0 }
      if live.isEmpty { return nil }
      var generator = SplitMix64(seed: SplitMix64.mix(seed, draws, SeedDomain.sourceDraw))
      draws += 1
      let total = live.reduce(0) { $0 + $1.spec.weight }
      var point = Double(generator.next() >> 11) / Double(1 << 53) * total
      var chosen = live[live.count - 1]
      for source in live {
        if point < source.spec.weight {
          chosen = source
          break
        }
        point -= source.spec.weight
      }
      if let item = try chosen.next() { return item }
    }
  }
}
