import ArgumentParser
import Foundation
import PivotData

/// `pivot shards`: make, check and look inside webdataset shards.
struct Shards: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Make, check and look inside image–text shards (.tar.zst or .tar).",
    subcommands: [Pack.self, Verify.self, Inspect.self])
}

struct ShardOutputOptions: ParsableArguments {
  @Option(help: "Output name with a number field, e.g. out/pairs-%06d.tar.zst (.tar for no compression).")
  var out: String

  @Option(help: "Samples per shard.")
  var maxSamples: Int = 10_000

  @Option(help: "Uncompressed bytes per shard before starting the next.")
  var maxBytes: Int64 = 1 << 30

  @Option(help: "zstd compression level (1–19).")
  var level: Int32 = 3
}

extension Shards {
  struct Pack: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Pack images plus captions (TSV/JSONL) or a LLaVA-style JSON file into shards.",
      discussion: """
        Captions: TSV lines `image<TAB>caption` (an `image<TAB>caption` header line is skipped) or JSONL
        objects {"image": ..., "caption": ...} (or "text"). Conversations: a LLaVA JSON list of
        {"id", "image", "conversations"}; each sample gets `jpg` (or `png`) and `json`. JSONL captions
        may carry {"captions": {"en": ..., "zh": ...}}, written as `en.txt`, `zh.txt` (what
        `pivot eval --rank` reads). Keys are the input order, `%09d`. Images must be JPEG, PNG or WebP
        (told apart by their bytes); unreadable ones are skipped and listed.
        """)

    @Option(help: "Folder the image paths are relative to.")
    var images: String

    @Option(help: "Captions file: .tsv or .jsonl.")
    var captions: String?

    @Option(help: "LLaVA-style conversations file (.json).")
    var llava: String?

    @OptionGroup var output: ShardOutputOptions

    @Flag(help: "Do not check that each image is a readable JPEG, PNG or WebP.")
    var noCheck = false

    func validate() throws {
      guard (captions == nil) != (llava == nil) else {
        throw ValidationError("give exactly one of --captions or --llava")
      }
      guard !keysFromIds || llava != nil else {
        throw ValidationError("--keys-from-ids applies to --llava input")
      }
      guard output.out.contains("%") else {
        throw ValidationError("--out needs a number field, e.g. pairs-%06d.tar.zst")
      }
    }

    @Flag(help: "Use each LLaVA record's `id` as the sample key ('.' becomes '_': webdataset cuts keys at a dot).")
    var keysFromIds = false

    struct Entry {
      var image: String?
      var fields: [SampleField]
      var id: String? = nil
    }

    func readEntries() throws -> [Entry] {
      if let captions {
        let text = try readUserText(captions)
        var entries: [Entry] = []
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true).map {
          $0.hasSuffix("\r") ? String($0.dropLast()) : String($0)
        }
        if captions.hasSuffix(".jsonl") {
          for (number, line) in lines.enumerated() {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let image = object["image"] as? String
            else {
              throw ValidationError("\(captions):\(number + 1): expected {\"image\": ..., \"caption\": ...}")
            }
            var fields: [SampleField] = []
            if let caption = (object["caption"] as? String) ?? (object["text"] as? String) {
              fields.append(SampleField(name: "txt", data: Array(caption.utf8)))
            }
            // Captions per language become `<lang>.txt` fields (what `pivot eval --rank` reads).
            if let byLanguage = object["captions"] {
              guard let byLanguage = byLanguage as? [String: String],
                byLanguage.keys.allSatisfy({ !$0.isEmpty && !$0.contains(".") && !$0.contains("/") })
              else {
                throw ValidationError("\(captions):\(number + 1): 'captions' must map language codes to strings, e.g. {\"en\": ..., \"zh\": ...}")
              }
              for lang in byLanguage.keys.sorted() { fields.append(SampleField(name: "\(lang).txt", data: Array(byLanguage[lang]!.utf8))) }
            }
            guard !fields.isEmpty else {
              throw ValidationError("\(captions):\(number + 1): expected a \"caption\" (or \"text\") or a \"captions\" object")
            }
            entries.append(Entry(image: image, fields: fields))
          }
        } else {
          for (number, line) in lines.enumerated() {
            let parts = line.split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            if number == 0 && parts.first?.lowercased() == "image" { continue }
            guard parts.count == 2 else {
              throw ValidationError("\(captions):\(number + 1): expected image<TAB>caption")
            }
            entries.append(Entry(image: parts[0], fields: [SampleField(name: "txt", data: Array(parts[1].utf8))]))
          }
        }
        return entries
      }
      let path = llava!
      let parsed: Any
      do {
        parsed = try JSONSerialization.jsonObject(with: Data(try readUserText(path).utf8))
      } catch let e as DataError {
        throw e
      } catch {
        throw ValidationError("\(path): not valid JSON (\((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"))")
      }
      guard let list = parsed as? [[String: Any]] else { throw ValidationError("\(path): expected a JSON list of {id, image, conversations}") }
      return try list.enumerated().map { index, record in
        guard record["conversations"] is [Any] else {
          throw ValidationError("\(path): record \(index) has no 'conversations' list")
        }
        let json = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .withoutEscapingSlashes])
        let id = (record["id"] as? String) ?? (record["id"] as? Int).map { String($0) }
        return Entry(
          image: record["image"] as? String, fields: [SampleField(name: "json", data: [UInt8](json))], id: id)
      }
    }

    func run() throws {
      let entries = try readEntries()
      let writer = try ShardWriter(
        pattern: output.out, maxSamples: output.maxSamples, maxBytes: output.maxBytes, compressionLevel: output.level)
      let bar = ProgressBar(label: "pack", total: entries.count, unit: "samples")
      var skipped: [String] = []
      var usedKeys = Set<String>()
      for (index, entry) in entries.enumerated() {
        var key = String(format: "%09d", index)
        if keysFromIds {
          guard let id = entry.id, !id.isEmpty else {
            skipped.append("record \(index): no 'id' to use as the key")
            continue
          }
          key = id.replacingOccurrences(of: ".", with: "_")
          guard usedKeys.insert(key).inserted else {
            skipped.append("record \(index): key '\(key)' repeats an earlier record's")
            continue
          }
        }
        var fields: [SampleField] = []
        if let image = entry.image {
          let path = (images as NSString).appendingPathComponent(image)
          guard let data = FileManager.default.contents(atPath: path) else {
            skipped.append("\(key) (\(image)): image file not found")
            continue
          }
          let bytes = [UInt8](data)
          let format = ImageFormat.detect(bytes) ?? .jpeg
          if !noCheck {
            do {
              switch format {
              case .png: _ = try PNG.header(bytes, key: key)
              case .webp: if try WebP.header(bytes, key: key).animated { throw DataError.image(key: key, message: "an animated WebP; Pivot reads still images") }
              case .jpeg: _ = try JPEG.header(bytes, key: key)
              }
            } catch {
              skipped.append("\(key) (\(image)): \(error)")
              continue
            }
          }
          fields.append(SampleField(name: format.fieldName, data: bytes))
        }
        try writer.write(ShardSample(key: key, url: "", fields: fields + entry.fields))
        bar.update(index + 1, detail: "\(writer.writtenPaths.count) shards")
      }
      try writer.finish()
      bar.finish(detail: "\(writer.writtenPaths.count) shards")
      print(
        "wrote \(writer.totalSamples) samples in \(writer.writtenPaths.count) shards: "
          + (writer.writtenPaths.first ?? "-")
          + (writer.writtenPaths.count > 1 ? " … " + writer.writtenPaths.last! : ""))
      if !skipped.isEmpty {
        print("skipped \(skipped.count):")
        for line in skipped { print("  " + line) }
      }
    }
  }

  struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Read every member of every shard and decode every JPEG, PNG and WebP; list what is bad.",
      discussion: "Exits with status 1 when any shard, member or image is bad.")

    @Argument(help: "Shard patterns, e.g. 'pairs-{000000..000099}.tar.zst'.")
    var patterns: [String]

    @Flag(help: "Decode JPEGs at full size (default: 1/8 scale, which still reads every coefficient).")
    var fullDecode = false

    @Option(help: "Bad items to list (all are counted).")
    var listLimit = 50

    func run() throws {
      var shards: [String] = []
      for pattern in patterns { shards += try ShardList.expand(pattern) }
      var fieldCounts: [String: Int] = [:]
      var samples = 0
      var badItems: [String] = []
      var badShards = 0
      let bar = ProgressBar(label: "verify", total: shards.count, unit: "shards")
      for (index, shard) in shards.enumerated() {
        do {
          let reader = try ShardSampleReader(path: shard)
          var shardSamples = 0
          while let item = try reader.next() {
            switch item {
            case .bad(let key, let message):
              badItems.append("\(shard): \(key): \(message)")
            case .sample(let sample):
              shardSamples += 1
              var imageProblem: String? = nil
              for field in sample.fields {
                fieldCounts[field.name, default: 0] += 1
                if field.name == "jpg" || field.name == "jpeg" {
                  do {
                    _ = try JPEG.decode(field.data, scaleDenominator: fullDecode ? 1 : 8, key: sample.key)
                  } catch {
                    imageProblem = "\(error)"
                  }
                } else if field.name == "png" {
                  do { _ = try PNG.decode(field.data, key: sample.key) } catch { imageProblem = "\(error)" }
                } else if field.name == "webp" {
                  do { _ = try WebP.decode(field.data, key: sample.key) } catch { imageProblem = "\(error)" }
                }
              }
              if let imageProblem { badItems.append("\(shard): \(sample.key): \(imageProblem)") } else { samples += 1 }
            }
            bar.update(index, detail: "\(samples) samples, \(badItems.count) bad")
          }
          if shardSamples == 0 {
            badShards += 1
            badItems.append("\(shard): empty shard")
          }
        } catch {
          badShards += 1
          badItems.append("\(error)")
        }
        bar.update(index + 1, detail: "\(samples) samples, \(badItems.count) bad")
      }
      bar.finish()
      print("shards: \(shards.count) (\(badShards) bad)  good samples: \(samples)  bad items: \(badItems.count)")
      for (field, count) in fieldCounts.sorted(by: { $0.key < $1.key }) { print("  \(field): \(count)") }
      if !badItems.isEmpty {
        print("bad:")
        for line in badItems.prefix(listLimit) { print("  " + line) }
        if badItems.count > listLimit { print("  … and \(badItems.count - listLimit) more") }
        throw ExitCode(1)
      }
    }
  }

  struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Show a shard's sample keys and fields, and print one sample.")

    @Argument(help: "One shard (.tar.zst or .tar).")
    var shard: String

    @Option(help: "Sample keys to list.")
    var keys = 10

    @Option(help: "Which sample to print (0-based).")
    var show = 0

    func describe(_ field: SampleField) -> String {
      if field.name == "jpg" || field.name == "jpeg" {
        if let header = try? JPEG.header(field.data) {
          return "JPEG \(header.width)x\(header.height), \(header.components) components, \(field.data.count) bytes"
        }
        return "\(field.data.count) bytes, not a readable JPEG"
      }
      if field.name == "png" {
        if let header = try? PNG.header(field.data) {
          return "PNG \(header.width)x\(header.height), \(header.hasAlpha ? "with" : "no") transparency, \(field.data.count) bytes"
        }
        return "\(field.data.count) bytes, not a readable PNG"
      }
      if field.name == "webp" {
        if let header = try? WebP.header(field.data) {
          return "WebP \(header.width)x\(header.height), \(header.format == 2 ? "lossless" : "lossy"), \(header.hasAlpha ? "with" : "no") transparency\(header.animated ? ", animated" : ""), \(field.data.count) bytes"
        }
        return "\(field.data.count) bytes, not a readable WebP"
      }
      if field.data.count <= 4000, !field.data.contains(0), let text = String(validating: field.data, as: UTF8.self) {
        return text
      }
      return "\(field.data.count) bytes"
    }

    func run() throws {
      let reader = try ShardSampleReader(path: shard)
      let bar = ProgressBar(label: "inspect", total: nil, unit: "samples")
      var count = 0
      var bad = 0
      var fieldCounts: [String: Int] = [:]
      var listed: [String] = []
      var shown: ShardSample? = nil
      while let item = try reader.next() {
        switch item {
        case .bad(let key, let message):
          bad += 1
          listed.append("  BAD \(key): \(message)")
        case .sample(let sample):
          if count < keys {
            listed.append(
              "  \(sample.key): " + sample.fields.map { "\($0.name) (\($0.data.count) B)" }.joined(separator: ", "))
          }
          if count == show { shown = sample }
          for field in sample.fields { fieldCounts[field.name, default: 0] += 1 }
          count += 1
        }
        bar.update(count)
      }
      bar.finish()
      print("\(shard): \(count) samples, \(bad) bad")
      print("fields: " + fieldCounts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
      print("samples:")
      for line in listed.prefix(keys + 20) { print(line) }
      if let shown {
        print("sample \(show): __key__=\(shown.key) __url__=\(shown.url)")
        for field in shown.fields { print("  .\(field.name): \(describe(field))") }
      }
    }
  }
}

/// `pivot bench --phase data` calls `runDataBench`; this is the same as a standalone command.
struct BenchData: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench-data", abstract: "Measure the data path: shard → decode → resize → normalise → batch.")

  @Option(help: "Shard pattern to read; generated first when --generate-mib is given.")
  var shards = "/tmp/pivot-bench-data/bench-000000.tar.zst"

  @Option(help: "Generate a synthetic shard of this many MiB at --shards first (one shard).")
  var generateMib: Int?

  @Option var imageSize = 224
  @Option var batchSize = 32
  @Option var threads = 2
  @Option(help: "Stop after this many images (default: the whole shard).")
  var maxImages: Int?
  @Flag(help: "Decode at full size even for large JPEGs.")
  var noDctScaling = false
  @Option(help: "Python with webdataset + Pillow + transformers: also run Tools/bench_data_python.py and compare.")
  var python: String?
  @Option(help: "The Python reference script.")
  var pythonScript = "Tools/bench_data_python.py"

  func run() throws {
    if let generateMib {
      let directory = (shards as NSString).deletingLastPathComponent
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      let count = try generateBenchShard(path: shards, targetBytes: Int64(generateMib) << 20)
      print("generated \(count) samples in \(shards)")
    }
    let result = try runDataBench(
      shardPattern: shards, imageSize: imageSize, batchSize: batchSize, decodeThreads: threads,
      maxImages: maxImages, useDCTScaling: !noDctScaling)
    let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
    print("pivot  " + String(decoding: data, as: UTF8.self))
    guard let python else { return }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: python)
    process.arguments =
      [pythonScript, "--shards", shards, "--image-size", String(imageSize), "--batch-size", String(batchSize)]
      + (maxImages.map { ["--max-images", String($0)] } ?? [])
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let line = String(decoding: output, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
    print("python " + line)
    if let reference = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
      let pythonRate = reference["images_per_second"] as? Double, let rate = result["images_per_second"]
    {
      print(String(format: "pivot / python: %.2fx images/s", rate / pythonRate))
      if let pythonPerCPU = reference["images_per_cpu_second"] as? Double, let perCPU = result["images_per_cpu_second"]
      {
        print(String(format: "pivot / python: %.2fx images per CPU-second", perCPU / pythonPerCPU))
      }
    }
  }
}
