import Foundation
import Testing

@testable import PivotData

/// The fixtures of Tools/make_webp_fixtures.py: lossless and lossy WebP, with and without alpha,
/// at 13 × 9, with Pillow's decoded RGBA; an animated file; a bomb header.
enum WebPFixtures {
  struct Manifest: Decodable {
    struct Kind: Decodable {
      var name: String
      var lossless: Bool
      var hasAlpha: Bool
    }
    var width: Int
    var height: Int
    var kinds: [Kind]
  }

  static let manifest: Manifest = try! JSONDecoder().decode(Manifest.self, from: Data(Fixtures.bytes("webp/manifest.json")))
  static func webp(_ name: String) -> [UInt8] { try! Fixtures.bytes("webp/\(name).webp") }
  static func pillowRGBA(_ name: String) -> [UInt8] { try! Fixtures.bytes("webp/\(name).rgba") }
}

@Suite struct WebPTests {
  /// Lossless files decode to Pillow's bytes exactly; lossy ones within one level (Pillow's
  /// libwebp and the system's may differ in version; VP8's reconstruction is exact, the
  /// YUV → RGB upsampling rounds).
  @Test(arguments: WebPFixtures.manifest.kinds.map(\.name))
  func decodesLikePillow(name: String) throws {
    let kind = WebPFixtures.manifest.kinds.first { $0.name == name }!
    let data = WebPFixtures.webp(name)
    #expect(ImageFormat.detect(data) == .webp)
    let header = try WebP.header(data, key: name)
    #expect(header.width == WebPFixtures.manifest.width && header.height == WebPFixtures.manifest.height)
    #expect(header.hasAlpha == kind.hasAlpha && !header.animated)
    #expect(header.format == (kind.lossless ? 2 : 1))
    let rgba = try WebP.decodeRGBA(data, key: name)
    let reference = WebPFixtures.pillowRGBA(name)
    let worst = zip(rgba.pixels, reference).map { abs(Int($0) - Int($1)) }.max() ?? 0
    #expect(worst <= (kind.lossless ? 0 : 1), "\(name): largest difference from Pillow \(worst)")
    switch try WebP.decode(data, key: name) {
    case .rgb(let image):
      #expect(!kind.hasAlpha)
      #expect(image.pixels == stride(from: 0, to: rgba.pixels.count, by: 4).flatMap { rgba.pixels[$0..<($0 + 3)] })
    case .rgba(let image):
      #expect(kind.hasAlpha && image == rgba)
    }
  }

  /// The preprocessing path: a WebP with alpha is composited over the background like a PNG.
  @Test func preprocessingCompositesTransparency() throws {
    let p = ImagePreprocessing.clip(size: 8)
    let data = WebPFixtures.webp("lossless_rgba")
    let rgba = try WebP.decodeRGBA(data)
    var expected = [Float](repeating: 0, count: p.pixelCount)
    expected.withUnsafeMutableBufferPointer { p.process(image: composite(rgba, over: p.background), into: $0.baseAddress!) }
    #expect(try p.process(encoded: data, key: "x") == expected)
    // Seeded augmentation takes WebP as well, and repeats for a seed.
    let a = Augmentation(randomResizedCrop: true, scale: 0.5...1, horizontalFlipProbability: 0.5, backgrounds: [.noise])
    let once = try p.process(encoded: data, key: "x", augmentation: a, seed: 11)
    #expect(try p.process(encoded: data, key: "x", augmentation: a, seed: 11) == once)
  }

  @Test func animatedTruncatedAndBombFilesAreErrors() throws {
    let animated = WebPFixtures.webp("animated")
    #expect(try WebP.header(animated).animated)
    let e1 = #expect(throws: DataError.self) { _ = try WebP.decode(animated, key: "anim") }
    #expect("\(e1!)".contains("anim") && "\(e1!)".contains("animated"))

    let bomb = WebPFixtures.webp("bomb")
    #expect(try WebP.header(bomb).width == 16383)
    for attempt in [
      { _ = try WebP.decode(bomb, key: "bomb") },
      { _ = try ImagePreprocessing.clip(size: 8).process(encoded: bomb, key: "bomb") },
      { _ = try ImagePreprocessing.clip(size: 8).process(encoded: bomb, key: "bomb", augmentation: Augmentation()) },
    ] {
      let e = #expect(throws: DataError.self, performing: attempt)
      #expect("\(e!)".contains("16383x16383 is over the 50000000-pixel limit"), "\(e!)")
    }

    let whole = WebPFixtures.webp("lossless_rgba")
    for cut in [12, 20, 30, whole.count / 2, whole.count - 1] {
      let e = #expect(throws: DataError.self) { _ = try WebP.decode(Array(whole.prefix(cut)), key: "cut\(cut)") }
      #expect("\(e!)".contains("cut\(cut)"))
    }
    var damaged = whole
    for i in 40..<damaged.count { damaged[i] ^= 0x5A }
    #expect(throws: DataError.self) { _ = try WebP.decode(damaged, key: "damaged") }
  }

  @Test func shardsReadWebPFields() {
    #expect(SampleFields().image.contains("webp"))
    #expect(ImageFormat.webp.fieldName == "webp")
    #expect(ImageFormat.detect(Array("RIFF\u{0}\u{0}\u{0}\u{0}WAVE".utf8)) == nil)
  }
}
