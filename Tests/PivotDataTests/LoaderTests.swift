import Foundation
import Testing

@testable import PivotData

@Suite struct LoaderTests {
  static func config(_ sources: [DataSourceSpec], batchSize: Int = 4, kind: SampleKind = .caption) -> DatasetConfig {
    var config = DatasetConfig(sources: sources, kind: kind, batchSize: batchSize, maxLength: 64)
    config.image = ImagePreprocessing.clip(size: 16)
    config.shuffleWindow = 5
    config.seed = 7
    return config
  }

  @Test func resumeGivesExactlyTheFollowingBatches() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    for shard in 0..<3 { try writeCaptionShard(directory.file("en-\(shard).tar.zst"), count: 9, prefix: "en\(shard)-") }
    for shard in 0..<2 { try writeCaptionShard(directory.file("zh-\(shard).tar"), count: 7, prefix: "zh\(shard)-") }
    let sources = [
      DataSourceSpec(name: "en", shards: [directory.file("en-{0..2}.tar.zst")], weight: 1),
      DataSourceSpec(name: "zh", shards: [directory.file("zh-{0..1}.tar")], weight: 1),
    ]
    let config = Self.config(sources, batchSize: 3)
    // 20 batches of 3 = 60 samples: more than one epoch of either source.
    let straight = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    var expected: [[String]] = []
    var savedJSON = Data()
    for step in 0..<20 {
      let batch = try #require(try straight.nextBatch())
      expected.append(batch.keys)
      if step == 6 { savedJSON = try JSONEncoder().encode(batch.cursor) }
    }
    let cursor = try JSONDecoder().decode(DataCursor.self, from: savedJSON)
    let resumed = try DataLoader(config: config, encoder: ByteEncoder(), resumeFrom: cursor, log: { _ in })
    for step in 7..<20 {
      let batch = try #require(try resumed.nextBatch())
      #expect(batch.keys == expected[step], "batch \(step)")
    }
    // Shuffled: not simply shard order, but every sample of an epoch appears once.
    let firstKeys = expected.flatMap { $0 }
    #expect(
      firstKeys.prefix(6) != ["en0-000000", "en0-000001", "en0-000002", "en0-000003", "en0-000004", "en0-000005"])
    #expect(Set(firstKeys.filter { $0.hasPrefix("zh") }.prefix(14)).count == 14)
  }

  @Test func prefetchingGivesTheSameBatches() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    try writeCaptionShard(directory.file("a-0.tar.zst"), count: 10)
    try writeCaptionShard(directory.file("a-1.tar.zst"), count: 10, start: 10)
    var config = Self.config([DataSourceSpec(name: "a", shards: [directory.file("a-{0..1}.tar.zst")])])
    config.epochs = 1
    let direct = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    var expected: [[String]] = []
    var expectedCursors: [DataCursor] = []
    while let batch = try direct.nextBatch() {
      expected.append(batch.keys)
      expectedCursors.append(batch.cursor)
    }
    #expect(expected.map(\.count) == [4, 4, 4, 4, 4])
    let prefetching = try PrefetchingDataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    var got: [[String]] = []
    var cursors: [DataCursor] = []
    var pixelsSeen = 0
    while let batch = try prefetching.next() {
      got.append(batch.keys)
      cursors.append(batch.cursor)
      pixelsSeen += batch.pixels.count
    }
    #expect(got == expected)
    // The cursor travels with its batch, however far ahead the thread has read.
    #expect(cursors == expectedCursors)
    #expect(pixelsSeen == 20 * 3 * 16 * 16)
    // Stopping early must not leave the thread hanging on a full queue.
    let early = try PrefetchingDataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    _ = try early.next()
    early.stop()
  }

  @Test func mixingFollowsTheWeights() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    try writeCaptionShard(directory.file("en.tar"), count: 8, prefix: "en")
    try writeCaptionShard(directory.file("zh.tar"), count: 8, prefix: "zh")
    var config = Self.config(
      [
        DataSourceSpec(name: "en", shards: [directory.file("en.tar")], weight: 3),
        DataSourceSpec(name: "zh", shards: [directory.file("zh.tar")], weight: 1),
      ], batchSize: 20)
    config.image = ImagePreprocessing.clip(size: 4)
    let loader = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    var english = 0
    var total = 0
    for _ in 0..<20 {
      let batch = try #require(try loader.nextBatch())
      english += batch.keys.filter { $0.hasPrefix("en") }.count
      total += batch.keys.count
    }
    let share = Double(english) / Double(total)
    #expect(share > 0.70 && share < 0.80, "English share \(share)")
  }

  @Test func captionCollationMasksPromptAndPadding() throws {
    let encoder = ByteEncoder()
    let short = try encoder.encodeCaption("ab")
    let long = try encoder.encodeCaption("abcdef")
    let image = ImagePreprocessing.clip(size: 2)
    func prepared(_ encoded: EncodedSample, truncated: Bool = false) -> PreparedSample {
      PreparedSample(
        key: "k", shard: "s", encoded: encoded, pixels: [Float](repeating: 1, count: 12), truncated: truncated)
    }
    let cursor = DataCursor(seed: 0, draws: 0, sources: [])
    let batch = collate(
      [prepared(short), prepared(long)], padId: 0, image: image, maxLength: 100, padToMaxLength: false,
      cursor: cursor, stats: DataStats())
    let length = long.ids.count
    #expect(batch.sequenceLength == length)
    #expect(batch.ids.count == 2 * length)
    #expect(
      Array(batch.attentionMask[0..<length]) == Array(repeating: 1, count: short.ids.count)
        + Array(repeating: 0, count: length - short.ids.count))
    // Labels: only the caption bytes and the end token; the prompt, image slot and padding are -100.
    let labelled = batch.labels[0..<length].enumerated().filter { $0.element != ignoreLabel }.map(\.offset)
    #expect(labelled == Array((short.ids.count - 3)..<short.ids.count))
    #expect(Array(batch.ids[(short.ids.count)..<length]).allSatisfy { $0 == 0 })
    #expect(batch.imageSlots == [1..<5, 1..<5])
    #expect(batch.pixels.count == 2 * 3 * 2 * 2)
  }

  @Test func conversationsLabelOnlyAssistantTurnsAndTruncationIsCounted() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.file("conv.tar.zst")
    let writer = try ShardFileWriter(path: path)
    let conversation = """
      {"id": "1", "conversations": [{"from": "human", "value": "<image>\\nWhat?"}, {"from": "gpt", "value": "A cat."}]}
      """
    let long = """
      {"conversations": [{"from": "human", "value": "<image> \(String(repeating: "x", count: 80))"}, {"from": "gpt", "value": "y"}]}
      """
    try writer.write(
      ShardSample(
        key: "c0", url: "",
        fields: [
          SampleField(name: "jpg", data: testJPEG()), SampleField(name: "json", data: Array(conversation.utf8)),
        ]))
    try writer.write(
      ShardSample(
        key: "c1", url: "",
        fields: [
          SampleField(name: "jpg", data: testJPEG()), SampleField(name: "json", data: Array(long.utf8)),
        ]))
    try writer.finish()
    var config = Self.config([DataSourceSpec(name: "c", shards: [path])], batchSize: 2, kind: .conversation)
    config.maxLength = 40
    config.shuffle = false
    let loader = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    let batch = try #require(try loader.nextBatch())
    #expect(batch.keys == ["c0", "c1"])
    #expect(batch.truncatedCount == 1)
    #expect(batch.stats.truncatedSamples == 1)
    #expect(batch.sequenceLength == 40)
    let row = Array(batch.labels[0..<40])
    let ids = Array(batch.ids[0..<40])
    let labelled = row.enumerated().filter { $0.element != ignoreLabel }.map { ids[$0.offset] }
    #expect(labelled == ByteEncoder().text("A cat.") + [ByteEncoder.end])
    #expect(batch.imageSlots[0] == 2..<6)
  }

  @Test func badSamplesAndShardsAreSkippedCountedAndLogged() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    try writeCaptionShard(directory.file("p-0.tar.zst"), count: 10, prefix: "a")
    // Shard 1: a corrupt JPEG, a PNG, a missing caption, a duplicate field, good ones.
    let tar = TarWriter(
      sink: try ZstdCompressingSink(sink: FileByteSink(path: directory.file("p-1.tar.zst")), path: "", level: 3))
    try tar.add(name: "corrupt.jpg", data: Array(testJPEG().prefix(100)))
    try tar.add(name: "corrupt.txt", data: Array("x".utf8))
    try tar.add(name: "png.jpg", data: [0x89, 0x50, 0x4E, 0x47, 0, 0, 0, 0])
    try tar.add(name: "png.txt", data: Array("x".utf8))
    try tar.add(name: "nocaption.jpg", data: testJPEG())
    try tar.add(name: "dup.jpg", data: testJPEG())
    try tar.add(name: "dup.txt", data: Array("x".utf8))
    try tar.add(name: "dup.txt", data: Array("y".utf8))
    try tar.add(name: "fine.jpg", data: testJPEG())
    try tar.add(name: "fine.txt", data: Array("fine".utf8))
    try tar.finish()
    // Shard 2 is missing; shard 3 is empty (zero bytes); shard 4 is a tar with no members;
    // shard 5 is truncated zstd.
    try Data().write(to: URL(fileURLWithPath: directory.file("p-3.tar.zst")))
    try TarWriter(
      sink: ZstdCompressingSink(sink: FileByteSink(path: directory.file("p-4.tar.zst")), path: "", level: 3)
    ).finish()
    try writeCaptionShard(directory.file("p-5.tar.zst"), count: 150, prefix: "t")
    let truncated = try Data(contentsOf: URL(fileURLWithPath: directory.file("p-5.tar.zst")))
    try truncated.prefix(truncated.count / 2).write(to: URL(fileURLWithPath: directory.file("p-5.tar.zst")))

    let log = LogLines()
    var config = Self.config([DataSourceSpec(name: "p", shards: [directory.file("p-{0..5}.tar.zst")])], batchSize: 5)
    config.epochs = 1
    config.shuffle = false
    config.maxBadFraction = 0.5
    let loader = try DataLoader(config: config, encoder: ByteEncoder(), log: log.log)
    var keys: [String] = []
    var stats = DataStats()
    while let batch = try loader.nextBatch() {
      keys += batch.keys
      stats = batch.stats
    }
    #expect(keys.prefix(11) == ArraySlice((0..<10).map { "a" + String(format: "%06d", $0) } + ["fine"]))
    #expect(keys.count > 11 && keys.count < 161)
    #expect(stats.badSamples == 4)
    #expect(stats.badShards == 4)  // missing, zero bytes, no members, truncated
    let lines = log.lines.joined(separator: "\n")
    for fragment in [
      "p-1.tar.zst: sample 'corrupt'", "sample 'png'", "sample 'nocaption': missing caption",
      "sample 'dup': duplicate field", "p-2.tar.zst: missing file", "p-3.tar.zst", "p-4.tar.zst: empty shard",
      "p-5.tar.zst: truncated",
    ] {
      #expect(lines.contains(fragment), "log lacks \(fragment)")
    }
  }

  @Test func tooManyBadSamplesIsAClearError() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let writer = try ShardFileWriter(path: directory.file("bad.tar"))
    for index in 0..<40 {
      let image = index % 3 == 0 ? [UInt8](repeating: 1, count: 50) : testJPEG()
      try writer.write(
        ShardSample(
          key: "k\(index)", url: "",
          fields: [
            SampleField(name: "jpg", data: image), SampleField(name: "txt", data: Array("c".utf8)),
          ]))
    }
    try writer.finish()
    var config = Self.config([DataSourceSpec(name: "b", shards: [directory.file("bad.tar")])])
    config.maxBadFraction = 0.1
    let loader = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    var caught: Error? = nil
    do {
      for _ in 0..<20 { _ = try loader.nextBatch() }
    } catch {
      caught = error
    }
    guard case .tooManyBad(_, let limit, _, _, let last)? = caught as? DataError else {
      Issue.record("expected tooManyBad, got \(String(describing: caught))")
      return
    }
    #expect(limit == 0.1)
    #expect(last.contains("bad.tar"))
  }

  @Test func aSourceWithNothingReadableFailsInsteadOfSpinning() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    var config = Self.config([DataSourceSpec(name: "gone", shards: [directory.file("none-{0..2}.tar")])])
    config.maxBadFraction = 1
    let loader = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    #expect(throws: DataError.self) { _ = try loader.nextBatch() }
  }

  @Test func onlyBadSamplesStopEvenWhenEverythingIsAllowed() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let writer = try ShardFileWriter(path: directory.file("text-only.tar"))
    for index in 0..<50 {
      try writer.write(ShardSample(key: "k\(index)", url: "", fields: [SampleField(name: "txt", data: [65])]))
    }
    try writer.finish()
    var config = Self.config([DataSourceSpec(name: "t", shards: [directory.file("text-only.tar")])])
    config.maxBadFraction = 1
    let loader = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    #expect(throws: DataError.self) { _ = try loader.nextBatch() }
  }

  @Test func resumeRejectsADifferentShardList() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    try writeCaptionShard(directory.file("r-0.tar"), count: 4)
    let config = Self.config([DataSourceSpec(name: "r", shards: [directory.file("r-0.tar")])])
    let cursor = DataCursor(
      seed: 7, draws: 3,
      sources: [
        SourceCursor(name: "r", shardCount: 5, epoch: 0, shardPosition: 0, itemsConsumed: 3)
      ])
    #expect(throws: DataError.self) { _ = try DataLoader(config: config, encoder: ByteEncoder(), resumeFrom: cursor) }
  }
}

/// Peak RSS from /proc/self/status, whose padding disappears from 8-digit values (≥ 9.5 GiB).
@Suite("Peak RSS")
struct PeakResidentTests {
  @Test func statusLinesOfEveryWidth() {
    #expect(kibibytesToMiB(statusLine: "VmHWM:\t  812345 kB") == 812345.0 / 1024)
    #expect(kibibytesToMiB(statusLine: "VmHWM:\t12749824 kB") == 12451)
    #expect(peakResidentMiB() > 1)
  }
}
