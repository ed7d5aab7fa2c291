import Foundation
import Testing

@testable import PivotData

/// The fixtures of Tools/make_png_fixtures.py: every PNG kind at 7 × 5 with Pillow's RGBA.
enum PNGFixtures {
  struct Manifest: Decodable {
    struct Kind: Decodable {
      var name: String
      var mode: String
      var bitDepth: Int
      var colorType: Int
      var interlaced: Bool
      var hasAlpha: Bool
    }
    var width: Int
    var height: Int
    var kinds: [Kind]
  }

  static let manifest: Manifest = try! JSONDecoder().decode(
    Manifest.self, from: Data(Fixtures.bytes("png/manifest.json")))

  static func png(_ name: String) -> [UInt8] { try! Fixtures.bytes("png/\(name).png") }
  static func pillowRGBA(_ name: String) -> [UInt8] { try! Fixtures.bytes("png/\(name).rgba") }
}

/// CRC-32 (PNG's, zlib's), to re-seal a chunk after damaging its data on purpose.
func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
  var crc: UInt32 = 0xFFFF_FFFF
  for byte in bytes {
    crc ^= UInt32(byte)
    for _ in 0..<8 { crc = (crc >> 1) ^ (crc & 1 == 1 ? 0xEDB8_8320 : 0) }
  }
  return ~crc
}

/// Offsets of a PNG's chunks: (type, start of the length field, data length).
func pngChunks(_ data: [UInt8]) -> [(type: String, offset: Int, length: Int)] {
  var chunks: [(String, Int, Int)] = []
  var offset = 8
  while offset + 8 <= data.count {
    let length = data[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
    let type = String(decoding: data[(offset + 4)..<(offset + 8)], as: UTF8.self)
    chunks.append((type, offset, length))
    offset += 12 + length
  }
  return chunks
}

@Suite struct PNGTests {
  @Test(arguments: PNGFixtures.manifest.kinds.map(\.name))
  func decodesLikePillow(name: String) throws {
    let kind = PNGFixtures.manifest.kinds.first { $0.name == name }!
    let data = PNGFixtures.png(name)
    let header = try PNG.header(data, key: name)
    #expect(header.width == PNGFixtures.manifest.width && header.height == PNGFixtures.manifest.height)
    #expect(header.bitDepth == kind.bitDepth && header.colorType == kind.colorType)
    #expect(header.interlaced == kind.interlaced && header.hasAlpha == kind.hasAlpha)

    let expected = PNGFixtures.pillowRGBA(name)
    let rgba = try PNG.decodeRGBA(data, key: name)
    #expect(rgba.pixels == expected, "\(name) (Pillow mode \(kind.mode))")

    switch try PNG.decode(data, key: name) {
    case .rgba(let image):
      #expect(kind.hasAlpha, "\(name): RGBA for an opaque kind")
      #expect(image == rgba)
    case .rgb(let image):
      #expect(!kind.hasAlpha, "\(name): RGB for a kind with transparency")
      let dropped = (0..<(image.width * image.height)).flatMap { expected[(4 * $0)..<(4 * $0 + 3)] }
      #expect(image.pixels == dropped)
    }
  }

  /// The whole path (PNG decode, Pillow bicubic resize, centre crop, CLIP normalisation) against
  /// CLIPImageProcessorPil, with the JPEG parity tests' tolerance.
  @Test func preprocessingMatchesCLIPImageProcessor() throws {
    let expected = try Fixtures.bytes("png/parity_rgb.20.f32").withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    let got = try ImagePreprocessing.clip(size: 20).process(encoded: PNGFixtures.png("parity_rgb"), key: "parity")
    #expect(got.count == expected.count)
    let maximum = zip(got, expected).map { abs($0 - $1) }.max() ?? .infinity
    #expect(maximum <= 1e-6, "max |diff| \(maximum)")
  }

  @Test func everyTruncationThrows() throws {
    let data = PNGFixtures.png("rgb8_interlaced")
    let lastIDAT = try #require(pngChunks(data).last { $0.type == "IDAT" })
    // Every cut before the last image byte: the pixels cannot be complete.
    for length in 0..<(lastIDAT.offset + 8 + lastIDAT.length) {
      #expect(throws: DataError.self, "cut at \(length)") { try PNG.decode(Array(data.prefix(length)), key: "cut") }
    }
  }

  @Test func corruptDataThrowsOrDecodesButNeverCrashes() throws {
    let data = PNGFixtures.png("rgba8")
    let idat = try #require(pngChunks(data).first { $0.type == "IDAT" })
    // A flipped bit in the image data: the chunk's CRC no longer matches.
    var flipped = data
    flipped[idat.offset + 8 + idat.length / 2] ^= 0x10
    #expect(throws: DataError.self) { try PNG.decode(flipped, key: "crc") }
    // Garbage in the compressed stream with the CRC recomputed: zlib (or the row filters) reject it.
    var garbled = data
    for index in (idat.offset + 10)..<(idat.offset + 8 + idat.length) { garbled[index] = UInt8((index * 7919) & 0xFF) }
    let crc = crc32(garbled[(idat.offset + 4)..<(idat.offset + 8 + idat.length)])
    for byte in 0..<4 {
      garbled[idat.offset + 8 + idat.length + byte] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * byte))
    }
    do {
      _ = try PNG.decode(garbled, key: "zlib")
      Issue.record("garbled zlib data decoded")
    } catch let error as DataError {
      #expect("\(error)".contains("sample 'zlib'"))
    }
    // Any single damaged byte: an error or an image, never a crash.
    for index in 0..<data.count {
      var damaged = data
      damaged[index] ^= 0xA5
      _ = try? PNG.decode(damaged, key: "byte \(index)")
    }
  }

  @Test func errorsNameTheSampleAndTheProblem() {
    do {
      _ = try ImagePreprocessing.clip(size: 8).process(encoded: Array(PNGFixtures.png("rgb8").prefix(60)), key: "k0042")
      Issue.record("a truncated PNG decoded")
    } catch {
      let text = "\(error)"
      #expect(text.contains("k0042") && text.contains("PNG") && text.contains("truncated"), "\(text)")
    }
  }

  /// A header claiming 100000 × 100000 (40 GB of RGBA) is refused from the header alone.
  @Test func decompressionBombsAreRefusedBeforeAllocation() throws {
    let bomb = PNGFixtures.png("bomb")
    #expect(try PNG.header(bomb).width == 100_000)
    for attempt in [
      { _ = try PNG.decode(bomb, key: "bomb") },
      { _ = try PNG.decodeRGBA(bomb, key: "bomb") },
      { _ = try ImagePreprocessing.clip(size: 8).process(encoded: bomb, key: "bomb") },
      { _ = try ImagePreprocessing.clip(size: 8).process(encoded: bomb, key: "bomb", augmentation: Augmentation()) },
    ] {
      do {
        try attempt()
        Issue.record("the bomb decoded")
      } catch {
        #expect("\(error)".contains("100000x100000 is over the 50000000-pixel limit"), "\(error)")
      }
    }
    // JPEG: 65500 × 65500 (its format allows no more), written into the SOF0 marker.
    var jpeg = testJPEG(width: 16, height: 16)
    let sof = try #require((0..<(jpeg.count - 9)).first { jpeg[$0] == 0xFF && jpeg[$0 + 1] == 0xC0 })
    for offset in [5, 7] {
      jpeg[sof + offset] = 0xFF
      jpeg[sof + offset + 1] = 0xDC
    }
    for augmentation in [nil, Augmentation()] {
      do {
        _ = try ImagePreprocessing.clip(size: 8).process(encoded: jpeg, key: "jbomb", augmentation: augmentation)
        Issue.record("the JPEG bomb decoded")
      } catch {
        #expect("\(error)".contains("65500x65500 is over the 50000000-pixel limit"), "\(error)")
      }
    }
    // The limit is a setting: 7 × 5 = 35 pixels pass at 35, not at 34.
    var preprocessing = ImagePreprocessing.clip(size: 8)
    preprocessing.maxPixels = 35
    _ = try preprocessing.process(encoded: PNGFixtures.png("rgb8"))
    preprocessing.maxPixels = 34
    #expect(throws: DataError.self) { try preprocessing.process(encoded: PNGFixtures.png("rgb8")) }
  }

  @Test func formatComesFromTheBytesNotTheName() throws {
    #expect(ImageFormat.detect(PNGFixtures.png("rgb8")) == .png)
    #expect(ImageFormat.detect(testJPEG()) == .jpeg)
    #expect(ImageFormat.detect(Array("GIF89a".utf8)) == nil)
    do {
      _ = try ImagePreprocessing.clip(size: 8).process(encoded: Array("GIF89a......".utf8), key: "gif7")
      Issue.record("a GIF was accepted")
    } catch {
      let text = "\(error)"
      #expect(text.contains("gif7") && text.contains("unknown image format") && text.contains("47 49 46 38"), "\(text)")
    }
    // A PNG in a field named jpg is read as PNG.
    let decoder = SampleDecoder(kind: .caption, encoder: ByteEncoder(), image: .clip(size: 8))
    let sample = ShardSample(
      key: "p", url: "",
      fields: [SampleField(name: "jpg", data: PNGFixtures.png("rgb8")), SampleField(name: "txt", data: [65])])
    #expect(try decoder.prepare(sample).pixels?.count == 3 * 8 * 8)
    #expect(SampleFields().image == ["jpg", "jpeg", "png", "webp"])
  }
}
