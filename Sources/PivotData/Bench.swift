import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// User + system CPU time of the whole process (all threads).
func processCPUSeconds() -> Double {
  var usage = rusage()
  #if os(Linux)
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
  #else
    getrusage(RUSAGE_SELF, &usage)
  #endif
  return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
    + Double(usage.ru_stime.tv_usec) / 1e6
}

/// A byte-level stand-in tokenizer for measuring the data path without PivotText.
struct ByteLevelBenchEncoder: SampleEncoder {
  var imageTokens = 32
  var padId: Int32 { 0 }
  func encodeCaption(_ caption: String) throws -> EncodedSample {
    let prompt = [Int32](repeating: 2, count: imageTokens + 1)
    let body = caption.utf8.map { Int32($0) + 10 } + [3]
    return EncodedSample(
      ids: prompt + body, labels: [Int32](repeating: ignoreLabel, count: prompt.count) + body,
      imageSlot: 1..<(1 + imageTokens))
  }
  func encodeConversation(_ turns: [ConversationTurn]) throws -> EncodedSample {
    try encodeCaption(turns.map(\.value).joined(separator: "\n"))
  }
}

/// Writes a caption shard of about `targetBytes` (compressed) for the data benchmark: photo-like
/// JPEGs (smooth shapes plus mild noise, about 70 KB at 640 × 480, like a web photo) of `width` × `height`,
/// `distinctImages` different ones repeated. Returns the number of samples written.
@discardableResult
public func generateBenchShard(
  path: String, targetBytes: Int64, width: Int = 640, height: Int = 480, distinctImages: Int = 32,
  progress: Bool = true
) throws -> Int {
  var images: [[UInt8]] = []
  var generator = SplitMix64(seed: 1234)
  for index in 0..<distinctImages {
    var pixels = [UInt8](repeating: 0, count: width * height * 3)
    let cx = Double(generator.next() % UInt64(width))
    let cy = Double(generator.next() % UInt64(height))
    for y in 0..<height {
      for x in 0..<width {
        let dx = Double(x) - cx
        let dy = Double(y) - cy
        let ring = sin((dx * dx + dy * dy).squareRoot() / (8 + Double(index % 5)))
        let noise = Double(generator.next() % 17) - 8
        let base = (y * width + x) * 3
        pixels[base] = UInt8(max(0, min(255, 128 + 90 * ring + noise)))
        pixels[base + 1] = UInt8(max(0, min(255, Double(x * 255 / width) + noise)))
        pixels[base + 2] = UInt8(max(0, min(255, Double(y * 255 / height) - noise)))
      }
    }
    images.append(try JPEG.encode(pixels: pixels, width: width, height: height, quality: 90))
  }
  let writer = try ShardFileWriter(path: path, compressionLevel: 1)
  let bar = progress ? ProgressBar(label: "generate", total: Int(targetBytes >> 20), unit: "MiB") : nil
  var count = 0
  while writer.bytesWritten < targetBytes {
    let key = String(format: "%09d", count)
    try writer.write(
      ShardSample(
        key: key, url: "",
        fields: [
          SampleField(name: "jpg", data: images[count % images.count]),
          SampleField(name: "txt", data: Array("a synthetic photo number \(count) for the data benchmark".utf8)),
        ]))
    count += 1
    bar?.update(Int(writer.bytesWritten >> 20))
  }
  try writer.finish()
  bar?.finish()
  return count
}

/// The data benchmark: shard → zstd → tar → JPEG decode → bicubic resize → crop → normalise →
/// tokenise → batch, through the prefetching loader. Returns images/s, batches, wall seconds
/// and peak RSS (MiB) of the process.
public func runDataBench(
  shardPattern: String, imageSize: Int = 224, batchSize: Int = 32, decodeThreads: Int = 2,
  maxImages: Int? = nil, useDCTScaling: Bool = true, progress: Bool = true
) throws -> [String: Double] {
  var config = DatasetConfig(
    sources: [DataSourceSpec(name: "bench", shards: [shardPattern])], kind: .caption, batchSize: batchSize,
    maxLength: 128)
  config.epochs = 1
  config.shuffle = false
  config.decodeThreads = decodeThreads
  config.image = ImagePreprocessing.clip(size: imageSize)
  config.image.useDCTScaling = useDCTScaling
  let loader = try PrefetchingDataLoader(config: config, encoder: ByteLevelBenchEncoder())
  let bar = progress ? ProgressBar(label: "bench data", total: maxImages, unit: "images") : nil
  let cpuStart = processCPUSeconds()
  let start = Date()
  var images = 0
  var batches = 0
  var checksum: Double = 0
  while let batch = try loader.next() {
    images += batch.batchSize
    batches += 1
    checksum += Double(batch.pixels[batch.pixels.count / 2])
    bar?.update(images)
    if let maxImages, images >= maxImages { break }
  }
  loader.stop()
  let seconds = Date().timeIntervalSince(start)
  let cpuSeconds = processCPUSeconds() - cpuStart
  bar?.finish()
  return [
    "images_per_second": Double(images) / seconds, "images": Double(images), "batches": Double(batches),
    "seconds": seconds, "peak_rss_mib": peakResidentMiB(), "decode_threads": Double(decodeThreads),
    // Work per CPU-second of all threads: comparable across runs on a machine shared with other jobs.
    "cpu_seconds": cpuSeconds, "images_per_cpu_second": Double(images) / max(cpuSeconds, 1e-9),
    "checksum": checksum,
  ]
}
