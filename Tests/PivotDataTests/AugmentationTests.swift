import Foundation
import Testing

@testable import PivotData

@Suite struct CompositingTests {
  @Test func formulaOnKnownPixels() {
    // 128·200 + 127·255 = 57985; 57985 / 255 = 227.39 → 227.
    #expect(compositeChannel(foreground: 200, background: 255, alpha: 128) == 227)
    #expect(compositeChannel(foreground: 200, background: 17, alpha: 255) == 200)
    #expect(compositeChannel(foreground: 200, background: 17, alpha: 0) == 17)
    let pixel = RGBAImage(width: 1, height: 1, pixels: [200, 100, 0, 128])
    // G: 12800 / 255 = 50.2 → 50; B: 6350 / 255 = 24.9 → 25.
    #expect(composite(pixel, over: Colour(red: 255, green: 0, blue: 50)).pixels == [227, 50, 25])
  }

  @Test func formulaIsRoundedExactly() {
    for alpha in 0...255 {
      for foreground in 0...255 {
        for background in stride(from: 0, through: 255, by: 17) {
          let exact = (Double(alpha) * Double(foreground) + Double(255 - alpha) * Double(background)) / 255
          let got = compositeChannel(
            foreground: UInt8(foreground), background: UInt8(background), alpha: UInt8(alpha))
          if Int(got) != Int(exact.rounded()) {
            Issue.record("a \(alpha) fg \(foreground) bg \(background): \(got), exact \(exact)")
            return
          }
        }
      }
    }
  }

  /// Without augmentation, transparency goes over the fixed `background` (white by default).
  @Test func fixedBackgroundWithoutAugmentation() throws {
    let data = PNGFixtures.png("rgba8")
    let rgba = try PNG.decodeRGBA(data)
    for colour in [Colour.white, Colour(red: 10, green: 200, blue: 30)] {
      var preprocessing = ImagePreprocessing.clip(size: 6)
      preprocessing.background = colour
      let expected = try preprocessing.process(encoded: data)
      var direct = [Float](repeating: 0, count: preprocessing.pixelCount)
      direct.withUnsafeMutableBufferPointer {
        preprocessing.process(image: composite(rgba, over: colour), into: $0.baseAddress!)
      }
      #expect(expected == direct)
    }
  }
}

@Suite struct AugmentationTests {
  static let everything = Augmentation(horizontalFlipProbability: 0.5)
  static let preprocessing = ImagePreprocessing.clip(size: 12)

  static let images: [(String, [UInt8])] = [
    ("jpeg", testJPEG(width: 40, height: 30)), ("rgba8", PNGFixtures.png("rgba8")),
    ("palette8_trns", PNGFixtures.png("palette8_trns")), ("rgb16", PNGFixtures.png("rgb16")),
  ]

  @Test func sameSeedSamePixelsOtherSeedsOthers() throws {
    for (name, data) in Self.images {
      var outputs: Set<[Float]> = []
      for seed in UInt64(0)..<16 {
        let first = try Self.preprocessing.process(encoded: data, augmentation: Self.everything, seed: seed)
        let again = try Self.preprocessing.process(encoded: data, augmentation: Self.everything, seed: seed)
        #expect(first == again, "\(name) seed \(seed)")
        outputs.insert(first)
      }
      // A 7 × 5 PNG has few distinct crops, so two seeds may meet on one (the whole image, unflipped).
      #expect(outputs.count >= 13, "\(name): \(outputs.count) distinct outputs of 16 seeds")
    }
  }

  @Test func jpegProcessIsTheUnaugmentedPath() throws {
    let data = testJPEG(width: 40, height: 30)
    #expect(try Self.preprocessing.process(jpeg: data) == Self.preprocessing.process(encoded: data))
    let plain = try Self.preprocessing.process(encoded: data)
    // Augmentation with nothing random turned on is the plain path too.
    let idle = Augmentation(randomResizedCrop: false, horizontalFlipProbability: 0, backgrounds: [])
    #expect(try Self.preprocessing.process(encoded: data, augmentation: idle, seed: 9) == plain)
  }

  @Test(arguments: [(1000, 800), (640, 427), (7, 5), (300, 20), (20, 300), (1, 1)])
  func cropBoxStaysInsideAndInRange(width: Int, height: Int) {
    let augmentation = Augmentation()
    let area = Double(width * height)
    var tries = 0
    var fallbacks = 0
    for seed in UInt64(0)..<2000 {
      let box = augmentation.cropBox(width: width, height: height, seed: seed)
      #expect(box.x >= 0 && box.y >= 0 && box.width > 0 && box.height > 0, "\(box)")
      #expect(box.x + box.width <= width && box.y + box.height <= height, "\(box)")
      if box.isFallback {
        fallbacks += 1
        // torchvision's fallback: the centre, clamped to the ratio range.
        let inRatio = Double(width) / Double(height)
        var w = width
        var h = height
        if inRatio < 0.75 { h = Int((Double(w) / 0.75).rounded(.toNearestOrEven)) }
        if inRatio > 4.0 / 3.0 { w = Int((Double(h) * 4.0 / 3.0).rounded(.toNearestOrEven)) }
        #expect(box == CropBox(x: (width - w) / 2, y: (height - h) / 2, width: w, height: h, isFallback: true))
        continue
      }
      tries += 1
      // Sides are rounded from exact values a, b with a·b = area·s and a / b = r: so
      // (w + ½)(h + ½) ≥ area · 0.08, (w − ½)(h − ½) ≤ area, (w + ½)/(h − ½) ≥ ¾, (w − ½)/(h + ½) ≤ 4/3.
      let w = Double(box.width)
      let h = Double(box.height)
      #expect((w + 0.5) * (h + 0.5) >= 0.08 * area && (w - 0.5) * (h - 0.5) <= area, "\(box)")
      #expect((w + 0.5) / max(h - 0.5, 1e-9) >= 0.75 && (w - 0.5) / (h + 0.5) <= 4.0 / 3.0, "\(box)")
    }
    if width == 1000 || width == 640 { #expect(tries > 1900, "\(tries) boxes from the tries") }
    if width == 300 || width == 20 { #expect(fallbacks > 1000, "\(fallbacks) fallbacks") }
  }

  @Test func cropAreasSpreadOverTheScaleRange() {
    let augmentation = Augmentation(scale: 0.25...0.5)
    let fractions = (UInt64(0)..<500).map { seed -> Double in
      let box = augmentation.cropBox(width: 1000, height: 1000, seed: seed)
      return Double(box.width * box.height) / 1e6
    }
    #expect(fractions.allSatisfy { $0 > 0.24 && $0 < 0.51 })
    #expect(fractions.min()! < 0.27 && fractions.max()! > 0.48)
  }

  @Test func flipMirrorsExactly() throws {
    let noFlip = Augmentation(horizontalFlipProbability: 0)
    let alwaysFlip = Augmentation(horizontalFlipProbability: 1)
    let (height, width) = (Self.preprocessing.cropHeight, Self.preprocessing.cropWidth)
    for (name, data) in Self.images {
      for seed in UInt64(0)..<4 {
        let plain = try Self.preprocessing.process(encoded: data, augmentation: noFlip, seed: seed)
        let mirrored = try Self.preprocessing.process(encoded: data, augmentation: alwaysFlip, seed: seed)
        var expected = plain
        for row in 0..<(3 * height) {
          for column in 0..<width { expected[row * width + column] = plain[row * width + width - 1 - column] }
        }
        #expect(mirrored == expected, "\(name) seed \(seed)")
      }
    }
    // A probability of ½ flips about half of the samples.
    let flipped = (UInt64(0)..<1000).filter { Self.everything.flips(seed: $0) }.count
    #expect(flipped > 430 && flipped < 570)
  }

  @Test func backgroundKinds() throws {
    let clear = RGBAImage(width: 9, height: 6, pixels: [UInt8](repeating: 0, count: 9 * 6 * 4))
    for kind in Augmentation.Background.allCases {
      let augmentation = Augmentation(backgrounds: [kind], noiseSmoothing: 0)
      var distinct: Set<[UInt8]> = []
      for seed in UInt64(0)..<8 {
        let backdrop = try #require(augmentation.backdrop(width: 9, height: 6, seed: seed))
        let pixels = composite(clear, over: backdrop).pixels
        #expect(composite(clear, over: augmentation.backdrop(width: 9, height: 6, seed: seed)!).pixels == pixels)
        distinct.insert(pixels)
        let colours = Set(stride(from: 0, to: pixels.count, by: 3).map { pixels[$0..<($0 + 3)] })
        switch kind {
        case .plain: #expect(colours.count == 1)
        case .gradient, .noise: #expect(colours.count > 5, "\(kind): \(colours.count) colours")
        }
      }
      #expect(distinct.count == 8, "\(kind)")
    }
    // A gradient stays between its two end colours, channel by channel.
    var generator = SplitMix64(seed: 5)
    let gradient = gradientBackground(width: 30, height: 20, using: &generator)
    var replay = SplitMix64(seed: 5)
    let ends = [replay.colour(), replay.colour()]
    for channel in 0..<3 {
      let values = stride(from: channel, to: gradient.pixels.count, by: 3).map { gradient.pixels[$0] }
      let bounds = ends.map { [$0.red, $0.green, $0.blue][channel] }
      #expect(values.min()! >= bounds.min()! && values.max()! <= bounds.max()!)
    }
    // Smoothing lowers the noise's spread.
    func spread(_ image: RGBImage) -> Double {
      let values = image.pixels.map(Double.init)
      let mean = values.reduce(0, +) / Double(values.count)
      return values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
    }
    var raw = SplitMix64(seed: 3)
    var smooth = SplitMix64(seed: 3)
    #expect(
      spread(noiseBackground(width: 40, height: 40, smoothing: 2, using: &smooth))
        < 0.2 * spread(noiseBackground(width: 40, height: 40, smoothing: 0, using: &raw)))
    // Opaque pixels are untouched by any background.
    let opaque = RGBAImage(width: 1, height: 1, pixels: [1, 2, 3, 255])
    #expect(composite(opaque, over: Colour.black).pixels == [1, 2, 3])
  }

  @Test func settingsAreValidatedAndDecodeWithDefaults() throws {
    #expect(throws: DataError.self) { try Augmentation(scale: 0...1).validate() }
    #expect(throws: DataError.self) { try Augmentation(horizontalFlipProbability: 1.5).validate() }
    try Augmentation().validate()
    let decoded = try JSONDecoder().decode(
      Augmentation.self, from: Data(#"{"horizontalFlipProbability": 0.5, "backgrounds": ["plain"]}"#.utf8))
    #expect(decoded == Augmentation(horizontalFlipProbability: 0.5, backgrounds: [.plain]))
    let roundTrip = try JSONDecoder().decode(Augmentation.self, from: JSONEncoder().encode(Self.everything))
    #expect(roundTrip == Self.everything)
    let colour = try JSONDecoder().decode(Colour.self, from: Data("[1, 2, 3]".utf8))
    #expect(colour == Colour(red: 1, green: 2, blue: 3))
  }
}

@Suite struct AugmentedLoaderTests {
  /// A caption shard whose images cycle through JPEGs and PNGs with and without transparency.
  static func writeMixedShard(_ path: String, count: Int, prefix: String) throws {
    let pngs = ["rgba8", "palette8_trns", "rgb8", "gray_alpha16", "rgb8_interlaced"].map(PNGFixtures.png)
    let writer = try ShardFileWriter(path: path)
    for index in 0..<count {
      let image = index % 2 == 0 ? testJPEG(seed: index) : pngs[(index / 2) % pngs.count]
      try writer.write(
        ShardSample(
          key: prefix + String(format: "%04d", index), url: "",
          fields: [
            SampleField(name: index % 3 == 0 ? "png" : "jpg", data: image),
            SampleField(name: "txt", data: Array("caption \(index)".utf8)),
          ]))
    }
    try writer.finish()
  }

  @Test func resumedLoaderGivesTheSameAugmentedBatches() throws {
    let directory = try TemporaryDirectory()
    defer { directory.remove() }
    for shard in 0..<2 {
      try Self.writeMixedShard(directory.file("m-\(shard).tar.zst"), count: 9, prefix: "m\(shard)-")
    }
    var config = DatasetConfig(
      sources: [DataSourceSpec(name: "m", shards: [directory.file("m-{0..1}.tar.zst")])], kind: .caption,
      batchSize: 3, maxLength: 64)
    config.image = ImagePreprocessing.clip(size: 16)
    config.shuffleWindow = 4
    config.seed = 11
    config.augmentation = Augmentation(horizontalFlipProbability: 0.5)
    // 12 batches of 3 = two epochs of 18 samples.
    let straight = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    var batches: [Batch] = []
    for _ in 0..<12 { batches.append(try #require(try straight.nextBatch())) }
    #expect(batches.allSatisfy { $0.stats.badSamples == 0 })

    let saved = try JSONEncoder().encode(batches[4].cursor)
    let resumed = try DataLoader(
      config: config, encoder: ByteEncoder(), resumeFrom: try JSONDecoder().decode(DataCursor.self, from: saved),
      log: { _ in })
    for step in 5..<12 {
      let batch = try #require(try resumed.nextBatch())
      #expect(batch.keys == batches[step].keys, "batch \(step)")
      #expect(batch.pixels == batches[step].pixels, "batch \(step): pixels differ after resume")
    }

    // The seed follows the epoch: a sample seen twice is augmented differently.
    let perPlace = batches.flatMap { batch in
      (0..<batch.batchSize).map { (batch.keys[$0], Array(batch.pixels[($0 * 768)..<(($0 + 1) * 768)])) }
    }
    let firstEpoch = Dictionary(perPlace.prefix(18).map { ($0.0, $0.1) }, uniquingKeysWith: { a, _ in a })
    let secondEpoch = Dictionary(perPlace.suffix(18).map { ($0.0, $0.1) }, uniquingKeysWith: { a, _ in a })
    #expect(firstEpoch.count == 18 && secondEpoch.count == 18)
    #expect(firstEpoch.keys.filter { firstEpoch[$0] != secondEpoch[$0] }.count >= 16)

    // Without augmentation the same keys give the plain pixels (and the two epochs agree).
    config.augmentation = nil
    let plain = try DataLoader(config: config, encoder: ByteEncoder(), log: { _ in })
    let plainBatch = try #require(try plain.nextBatch())
    #expect(plainBatch.keys == batches[0].keys)
    #expect(plainBatch.pixels != batches[0].pixels)
  }
}
