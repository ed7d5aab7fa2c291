import Foundation
import Testing

@testable import PivotData

enum Fixtures {
  static var root: URL { Bundle.module.url(forResource: "Fixtures", withExtension: nil)! }
  static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }
  static func bytes(_ relative: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path(relative))))
  }
}

/// A fresh directory under /tmp, removed by the caller with `remove()`.
struct TemporaryDirectory {
  let path: String
  init() throws {
    path = NSTemporaryDirectory() + "pivot-data-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  }
  func file(_ name: String) -> String { path + "/" + name }
  func remove() { try? FileManager.default.removeItem(atPath: path) }
}

func allClose(_ a: [Float], _ b: [Float], atol: Float, rtol: Float = 0) -> Bool {
  a.count == b.count && zip(a, b).allSatisfy { abs($0 - $1) <= atol + rtol * abs($1) }
}

/// A byte-level encoder: one token per UTF-8 byte (offset 10), specials below 10.
struct ByteEncoder: SampleEncoder {
  static let bos: Int32 = 1
  static let image: Int32 = 2
  static let end: Int32 = 3
  static let human: Int32 = 4
  static let gpt: Int32 = 5
  static let system: Int32 = 6
  var imageTokens = 4
  var padId: Int32 { 0 }

  func text(_ string: String) -> [Int32] { string.utf8.map { Int32($0) + 10 } }

  func encodeCaption(_ caption: String) throws -> EncodedSample {
    var ids: [Int32] = [ByteEncoder.bos] + Array(repeating: ByteEncoder.image, count: imageTokens)
    ids += text("Caption:")
    var labels = [Int32](repeating: ignoreLabel, count: ids.count)
    let body = text(caption) + [ByteEncoder.end]
    ids += body
    labels += body
    return EncodedSample(ids: ids, labels: labels, imageSlot: 1..<(1 + imageTokens))
  }

  func encodeConversation(_ turns: [ConversationTurn]) throws -> EncodedSample {
    var ids: [Int32] = [ByteEncoder.bos]
    var labels: [Int32] = [ignoreLabel]
    var slot: Range<Int>? = nil
    for turn in turns {
      let marker = turn.from == "gpt" ? ByteEncoder.gpt : turn.from == "human" ? ByteEncoder.human : ByteEncoder.system
      ids.append(marker)
      labels.append(ignoreLabel)
      var body: [Int32] = []
      let parts = turn.value.components(separatedBy: "<image>")
      for (index, part) in parts.enumerated() {
        if index > 0 {
          slot = (ids.count + body.count)..<(ids.count + body.count + imageTokens)
          body += Array(repeating: ByteEncoder.image, count: imageTokens)
        }
        body += text(part)
      }
      body.append(ByteEncoder.end)
      ids += body
      labels += turn.from == "gpt" ? body : Array(repeating: ignoreLabel, count: body.count)
    }
    return EncodedSample(ids: ids, labels: labels, imageSlot: slot)
  }
}

/// A small test JPEG: a gradient with a seed-dependent tint.
func testJPEG(width: Int = 40, height: Int = 30, seed: Int = 0, quality: Int = 85) -> [UInt8] {
  var pixels = [UInt8](repeating: 0, count: width * height * 3)
  for y in 0..<height {
    for x in 0..<width {
      let index = (y * width + x) * 3
      pixels[index] = UInt8((x * 255 / max(1, width - 1) + seed * 37) % 256)
      pixels[index + 1] = UInt8((y * 255 / max(1, height - 1) + seed * 11) % 256)
      pixels[index + 2] = UInt8((seed * 53) % 256)
    }
  }
  return try! JPEG.encode(pixels: pixels, width: width, height: height, quality: quality)
}

/// Writes a caption shard with `count` samples keyed `prefix%06d`.
@discardableResult
func writeCaptionShard(_ path: String, count: Int, prefix: String = "s", start: Int = 0) throws -> [String] {
  let writer = try ShardFileWriter(path: path)
  var keys: [String] = []
  for index in start..<(start + count) {
    let key = prefix + String(format: "%06d", index)
    keys.append(key)
    try writer.write(
      ShardSample(
        key: key, url: "",
        fields: [
          SampleField(name: "jpg", data: testJPEG(seed: index)),
          SampleField(name: "txt", data: Array("caption \(key)".utf8)),
        ]))
  }
  try writer.finish()
  return keys
}

func readAll(_ path: String) throws -> (samples: [ShardSample], bad: [String]) {
  let reader = try ShardSampleReader(path: path)
  var samples: [ShardSample] = []
  var bad: [String] = []
  while let item = try reader.next() {
    switch item {
    case .sample(let sample): samples.append(sample)
    case .bad(let key, _): bad.append(key)
    }
  }
  return (samples, bad)
}

/// Collects log lines from loaders.
final class LogLines: @unchecked Sendable {
  private let lock = NSLock()
  private var storage: [String] = []
  var lines: [String] { lock.withLock { storage } }
  var log: DataLog { { [self] line in lock.withLock { storage.append(line) } } }
}

/// SHA-256, to compare with digests that the Python fixture script recorded.
func sha256Hex(_ message: [UInt8]) -> String {
  let k: [UInt32] = [
    0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
    0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
    0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
    0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
    0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
    0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
    0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
    0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
  ]
  var h: [UInt32] = [
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19,
  ]
  var data = message
  data.append(0x80)
  while data.count % 64 != 56 { data.append(0) }
  let bitLength = UInt64(message.count) * 8
  for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8((bitLength >> UInt64(shift)) & 0xff)) }
  func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
  var w = [UInt32](repeating: 0, count: 64)
  for chunk in stride(from: 0, to: data.count, by: 64) {
    for i in 0..<16 {
      w[i] =
        UInt32(data[chunk + 4 * i]) << 24 | UInt32(data[chunk + 4 * i + 1]) << 16
        | UInt32(data[chunk + 4 * i + 2]) << 8 | UInt32(data[chunk + 4 * i + 3])
    }
    for i in 16..<64 {
      let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
      let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
      w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
    }
    var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
    for i in 0..<64 {
      let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
      let ch = (e & f) ^ (~e & g)
      let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
      let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
      let maj = (a & b) ^ (a & c) ^ (b & c)
      let t2 = s0 &+ maj
      (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
    }
    h[0] &+= a
    h[1] &+= b
    h[2] &+= c
    h[3] &+= d
    h[4] &+= e
    h[5] &+= f
    h[6] &+= g
    h[7] &+= hh
  }
  return h.map { String(format: "%08x", $0) }.joined()
}
