import Foundation
import Testing

@testable import PivotData

@Suite struct ShardTests {
  @Test func keysFollowWebdatasetRules() {
    #expect(splitMemberName("0001.jpg")! == ("0001", "jpg"))
    #expect(splitMemberName("dir.v2/0001.Seg.PNG")! == ("dir.v2/0001", "seg.png"))
    #expect(splitMemberName("a/b/c.input.txt")! == ("a/b/c", "input.txt"))
    #expect(splitMemberName("noextension") == nil)
    #expect(splitMemberName("dir/.hidden") == nil)
  }

  @Test func bracePatternsExpand() throws {
    #expect(
      try ShardList.expand("p-{000008..000011}.tar.zst") == [
        "p-000008.tar.zst", "p-000009.tar.zst", "p-000010.tar.zst", "p-000011.tar.zst",
      ])
    #expect(try ShardList.expand("{en,zh}-{0..1}.tar") == ["en-0.tar", "en-1.tar", "zh-0.tar", "zh-1.tar"])
    #expect(try ShardList.expand("a.tar::b.tar") == ["a.tar", "b.tar"])
    #expect(throws: DataError.self) { try ShardList.expand("p-{3..1}.tar") }
    #expect(throws: DataError.self) { try ShardList.expand("p-{1..2.tar") }
  }

  @Test(arguments: ["x.tar", "x.tar.zst"])
  func writeThenReadRoundTrips(name: String) throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let longKey = "dir/" + String(repeating: "k", count: 150)
    let samples = [
      ShardSample(
        key: "000000", url: "",
        fields: [
          SampleField(name: "jpg", data: testJPEG()), SampleField(name: "txt", data: Array("猫 cat".utf8)),
        ]),
      ShardSample(key: longKey, url: "", fields: [SampleField(name: "input.txt", data: [])]),
      ShardSample(key: "000002", url: "", fields: [SampleField(name: "bin", data: (0..<1500).map { UInt8($0 % 251) })]),
    ]
    let path = directory.file(name)
    let writer = try ShardFileWriter(path: path, compressionLevel: 5)
    for sample in samples { try writer.write(sample) }
    try writer.finish()
    let (read, bad) = try readAll(path)
    #expect(bad.isEmpty)
    #expect(read == samples.map { ShardSample(key: $0.key, url: path, fields: $0.fields) })
  }

  @Test func shardWriterRotatesByCountAndBytes() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let byCount = try ShardWriter(pattern: directory.file("c-%06d.tar.zst"), maxSamples: 3)
    for index in 0..<7 {
      try byCount.write(ShardSample(key: "k\(index)", url: "", fields: [SampleField(name: "txt", data: [1])]))
    }
    try byCount.finish()
    #expect(
      byCount.writtenPaths.map { ($0 as NSString).lastPathComponent } == [
        "c-000000.tar.zst", "c-000001.tar.zst", "c-000002.tar.zst",
      ])
    #expect(try readAll(directory.file("c-000002.tar.zst")).samples.map(\.key) == ["k6"])

    let bySize = try ShardWriter(pattern: directory.file("b-%03d.tar"), maxSamples: 1000, maxBytes: 4000)
    for index in 0..<5 {
      try bySize.write(
        ShardSample(
          key: "k\(index)", url: "", fields: [SampleField(name: "bin", data: [UInt8](repeating: 7, count: 1500))]))
    }
    try bySize.finish()
    // Each sample is 512 + 1536 bytes of tar: two fit under 4000.
    #expect(bySize.writtenPaths.count == 3)
  }

  @Test func emptyFieldsAndMetadataMembersFollowWebdataset() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.file("m.tar")
    let tar = TarWriter(sink: try FileByteSink(path: path))
    try tar.add(name: "__index__", data: [1])
    try tar.add(name: "README", data: [2])
    try tar.add(name: "a.txt", data: [3])
    try tar.add(name: "a.JSON", data: [4])
    try tar.add(name: "b.txt", data: [5])
    try tar.finish()
    let (samples, bad) = try readAll(path)
    #expect(bad.isEmpty)
    #expect(samples.map(\.key) == ["a", "b"])
    #expect(samples[0].fields.map(\.name) == ["txt", "json"])
  }
}

@Suite struct InteropTests {
  struct Expected: Decodable {
    var key: String
    var fields: [String: String]
  }

  /// Samples that webdataset's ShardWriter wrote (then `zstd`), read back by Pivot.
  @Test(arguments: ["interop/py-000000.tar", "interop/py-000000.tar.zst", "interop/py-gnu-000000.tar.zst"])
  func readsWebdatasetShards(shard: String) throws {
    let expected = try JSONDecoder().decode([Expected].self, from: Data(Fixtures.bytes("interop/py_expected.json")))
    let (samples, bad) = try readAll(Fixtures.path(shard))
    #expect(bad.isEmpty)
    #expect(samples.map(\.key) == expected.map(\.key))
    for (sample, want) in zip(samples, expected) {
      #expect(sample.url == Fixtures.path(shard))
      let digests = Dictionary(uniqueKeysWithValues: sample.fields.map { ($0.name, sha256Hex($0.data)) })
      #expect(digests == want.fields, "sample \(sample.key)")
    }
  }

  /// Pivot's committed shard (checked in Python by Tools/make_data_fixtures.py --pivot) holds the
  /// images and captions it was packed from, and packing again gives the same tar bytes.
  @Test func pivotShardMatchesItsInputsAndIsReproducible() throws {
    let rows = String(decoding: try Fixtures.bytes("images/captions.tsv"), as: UTF8.self)
      .split(separator: "\n").dropFirst().map { $0.split(separator: "\t", maxSplits: 1).map(String.init) }
    let shard = Fixtures.path("interop/pivot-000000.tar.zst")
    let (samples, bad) = try readAll(shard)
    #expect(bad.isEmpty)
    #expect(samples.count == rows.count)
    var repacked: [ShardSample] = []
    for (index, row) in rows.enumerated() {
      let sample = samples[index]
      #expect(sample.key == String(format: "%09d", index))
      #expect(sample["jpg"] == (try Fixtures.bytes("images/" + row[0])))
      #expect(sample["txt"] == Array(row[1].utf8))
      repacked.append(ShardSample(key: sample.key, url: "", fields: sample.fields))
    }
    let sink = MemoryByteSink()
    let tar = TarWriter(sink: sink)
    for sample in repacked {
      for field in sample.fields { try tar.add(name: sample.key + "." + field.name, data: field.data) }
    }
    try tar.finish()
    let stream = try ZstdDecompressingStream(source: FileByteStream(path: shard), path: shard)
    var original: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
      let count = try chunk.withUnsafeMutableBytes { try stream.read(into: $0) }
      if count == 0 { break }
      original += chunk[0..<count]
    }
    #expect(original == sink.bytes)
  }
}

@Suite struct BadShardTests {
  @Test func truncatedZstdDeliversWhatCameBeforeThenThrows() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.file("t.tar.zst")
    // Large enough for several 128 KiB zstd blocks, so some decode before the cut.
    try writeCaptionShard(path, count: 150)
    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    try Data(bytes[0..<(bytes.count * 2 / 3)]).write(to: URL(fileURLWithPath: path))
    let reader = try ShardSampleReader(path: path)
    var count = 0
    var caught: DataError? = nil
    do {
      while let item = try reader.next() { if case .sample = item { count += 1 } }
    } catch let error as DataError {
      caught = error
    }
    #expect(count > 0 && count < 150)
    guard case .truncated(let where_, _) = caught else {
      Issue.record("expected a truncation error, got \(String(describing: caught))")
      return
    }
    #expect(where_ == path)
    #expect(try reader.next() == nil)
  }

  @Test func notZstdAtAllIsAnError() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.file("junk.tar.zst")
    try Data((0..<5000).map { UInt8($0 % 256) }).write(to: URL(fileURLWithPath: path))
    #expect(throws: DataError.self) { _ = try readAll(path) }
  }

  @Test func corruptTarHeaderSkipsOnlyWhatItCovers() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.file("c.tar")
    let tar = TarWriter(sink: try FileByteSink(path: path))
    for index in 0..<6 {
      try tar.add(name: "k\(index).txt", data: Array("text \(index)".utf8))
      try tar.add(name: "k\(index).cls", data: [UInt8(48 + index)])
    }
    try tar.finish()
    var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    // Each member is two blocks; member 4 is k2.txt's header. Damage its name and checksum.
    bytes[4 * 1024 + 3] ^= 0x5A
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let (samples, bad) = try readAll(path)
    // The samples on both sides of the damage are dropped: k1 (complete, but the damaged member
    // could have been its last) and k2 (which lost its txt).
    #expect(samples.map(\.key) == ["k0", "k3", "k4", "k5"])
    #expect(bad == ["k1", "k2"])
    #expect(samples.allSatisfy { $0.fields.count == 2 })
  }

  @Test func duplicateFieldMakesTheSampleBad() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.file("d.tar")
    let tar = TarWriter(sink: try FileByteSink(path: path))
    try tar.add(name: "a.txt", data: [1])
    try tar.add(name: "b.txt", data: [2])
    try tar.add(name: "b.TXT", data: [3])
    try tar.add(name: "c.txt", data: [4])
    try tar.finish()
    let reader = try ShardSampleReader(path: path)
    var keys: [String] = []
    var problems: [String] = []
    while let item = try reader.next() {
      switch item {
      case .sample(let sample): keys.append(sample.key)
      case .bad(let key, let message): problems.append(key + ": " + message)
      }
    }
    #expect(keys == ["a", "c"])
    #expect(problems == ["b: duplicate field 'txt' in the tar"])
  }

  @Test func partialHeaderAtTheEndIsTruncation() throws {
    let sink = MemoryByteSink()
    let tar = TarWriter(sink: sink)
    try tar.add(name: "a.txt", data: [1])
    let bytes = sink.bytes + [UInt8](repeating: 1, count: 100)
    let reader = ShardSampleReader(stream: MemoryByteStream(bytes), path: "mem.tar")
    #expect(throws: DataError.self) { while try reader.next() != nil {} }
  }
}

@Suite struct PackedConversationTests {
  /// `pivot shards pack --llava` output (committed; checked in Python by the fixture script) reads
  /// back through the stage-2 loader: labels on assistant turns, text-only records allowed.
  @Test func llavaShardFeedsTheConversationLoader() throws {
    var config = DatasetConfig(
      sources: [DataSourceSpec(name: "llava", shards: [Fixtures.path("interop/pivot-llava-000000.tar.zst")])],
      kind: .conversation, batchSize: 4, maxLength: 256)
    config.image = ImagePreprocessing.clip(size: 8)
    config.shuffle = false
    config.epochs = 1
    config.requireImage = false
    let loader = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    let batch = try #require(try loader.nextBatch())
    let longKey = "long-id-longer-than-a-ustar-name-field-" + String(repeating: "x", count: 76)
    #expect(batch.keys == ["a-1", "b_2", "t-3", longKey])
    #expect(batch.hasImage == [true, true, false, true])
    #expect(batch.imageSlots[2] == nil)
    #expect(batch.stats.badSamples == 0)
    let encoder = ByteEncoder()
    let row1 = (0..<batch.sequenceLength).map { batch.labels[batch.sequenceLength + $0] }.filter { $0 != ignoreLabel }
    #expect(
      row1 == encoder.text("一位穿制服的军官。") + [ByteEncoder.end] + encoder.text("A uniform with a cap.") + [ByteEncoder.end])
    #expect(try loader.nextBatch() == nil)
  }
}

@Suite struct DamagedInputTests {
  /// Seeded random damage (flipped bytes, cuts) to a compressed and a plain shard: reading always
  /// ends, with samples, bad items or a thrown error, never a crash or a hang.
  @Test(arguments: ["x.tar", "x.tar.zst"])
  func randomDamageNeverCrashesOrHangs(name: String) throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    let path = directory.file(name)
    try writeCaptionShard(path, count: 12)
    let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    var generator = SplitMix64(seed: 99)
    let config = ImagePreprocessing.clip(size: 8)
    for trial in 0..<40 {
      var bytes = original
      let flips = 1 + Int(generator.next() % 8)
      for _ in 0..<flips {
        bytes[Int(generator.next() % UInt64(bytes.count))] ^= UInt8(1 + generator.next() % 255)
      }
      if trial % 4 == 0 { bytes.removeLast(Int(generator.next() % UInt64(bytes.count))) }
      let damaged = directory.file("damaged-" + name)
      try Data(bytes).write(to: URL(fileURLWithPath: damaged))
      var items = 0
      do {
        let reader = try ShardSampleReader(path: damaged)
        while let item = try reader.next() {
          items += 1
          if case .sample(let sample) = item, let jpeg = sample["jpg"] {
            _ = try? config.process(jpeg: jpeg, key: sample.key)
          }
          #expect(items <= 100, "trial \(trial) does not end")
          if items > 100 { break }
        }
      } catch is DataError {
        // A shard-level failure is a valid outcome.
      }
    }
  }
}

@Suite("User text files")
struct UserTextTests {
  @Test func bomCRLFAndInvalidUTF8() throws {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-text-\(getpid()).tsv").path
    defer { try? FileManager.default.removeItem(atPath: path) }
    try Data([0xEF, 0xBB, 0xBF] + Array("a.jpg\t猫\r\nb.jpg\tdog\r\n".utf8)).write(to: URL(fileURLWithPath: path))
    #expect(try readUserText(path) == "a.jpg\t猫\nb.jpg\tdog\n")
    try Data(Array("ok line\nsecond \u{4E2D}".utf8) + [0xC3, 0x28] + Array(" tail\n".utf8)).write(to: URL(fileURLWithPath: path))
    do {
      _ = try readUserText(path)
      Issue.record("invalid UTF-8 was accepted")
    } catch {
      #expect("\(error)".contains("\(path):2: not UTF-8 text (byte 0xC3 at offset 18)"), "\(error)")
    }
    #expect(firstInvalidUTF8([0xE0, 0x80, 0x80]) == 0, "overlong")
    #expect(firstInvalidUTF8([0x41, 0xED, 0xA0, 0x80]) == 1, "surrogate")
    #expect(firstInvalidUTF8(Array("中文".utf8)) == 6)
  }
}
