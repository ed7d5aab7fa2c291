import ArgumentParser
import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor
import PivotText
import PivotTrain

struct Eval: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Held-out loss and perplexity; accuracy where the shards carry reference answers.",
    discussion: "Samples with a txt caption or a json conversation give loss and perplexity. Samples whose json has \"questions\" ([{lang, question, answer}]) are answered greedily; an answer counts as right when the reference word appears in the reply. Prints a table per language and a JSON line.")

  @Option(help: "Model folder (Pivot model, checkpoint, or HF LLM), or a recipe (its untrained starting point).") var model: String
  @Option(help: "Shard pattern.") var shards: String
  @Option(help: "A PEFT LoRA adapter folder to apply to the model's LLM, unmerged.") var adapter: String?
  @Option(help: "Batch size for the loss.") var batchSize = 8
  @Option(help: "Longest sequence for the loss.") var maxLength = 256
  @Option(help: "The instruction used with captions.") var captionPrompt = "Describe the image."
  @Option(help: "Sample answers to print per language.") var samples = 3
  @Option(help: "Write every question with its expected and given answer to this JSON Lines file.") var answers: String?
  @Option(help: "Worker threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
  @Option(help: "Products of more than one row: fp32, or bf16 (bfloat16 operands, float32 sums).") var matmul = "fp32"
  @Flag(help: "Rank candidate captions for every image by their log-likelihood (top-1, top-5, mean rank per language, with chance).") var rank = false
  @Option(help: "With --rank: the caption format, chat (the template and --prompt) or plain (the image slot alone); auto: the model's.") var format = "auto"
  @Option(help: "With --rank: the instruction, as TEXT or LANG=TEXT (repeatable, e.g. 'zh=描述这张图片。').") var prompt: [String] = []
  @Option(help: "With --rank: sum (log-likelihood), mean (per token) or pmi (the sum less the caption's log-likelihood without the image).") var score = "sum"
  @Option(help: "With --rank: rank only the first N images.") var maxImages: Int?
  @Option(help: "With --rank: candidates scored in one batch.") var rankBatch = 16
  @Option(help: "With --rank: write each image's rank and top-5 candidates to this JSON Lines file.") var ranks: String?

  func validate() throws {
    guard ["auto", "chat", "plain"].contains(format) else { throw ValidationError("--format must be auto, chat or plain, not '\(format)'") }
    guard CaptionRanking.Score(rawValue: score) != nil else { throw ValidationError("--score must be sum, mean or pmi, not '\(score)'") }
    guard rankBatch >= 1 else { throw ValidationError("--rank-batch must be at least 1") }
    if let maxImages, maxImages < 1 { throw ValidationError("--max-images must be at least 1") }
    guard batchSize >= 1, maxLength >= 2 else { throw ValidationError("--batch-size must be ≥ 1 and --max-length ≥ 2") }
  }

  func run() throws {
    Threads.set(threads)
    try setMatmulPrecision(matmul)
    let a = try Assistant(modelDir: model, adapter: adapter)
    if rank { return try rankCaptions(a) }
    let paths = try ShardList.expand(shards)
    guard let first = paths.first else { throw ValidationError("no shards match \(shards)") }
    // Look at the first sample to choose what to measure.
    let reader = try ShardSampleReader(path: first)
    var probe: ShardSample?
    while let item = try reader.next() { if case .sample(let s) = item { probe = s; break } }
    guard let probe else { throw ValidationError("\(first) has no readable sample") }
    if let js = probe.first(of: ["json"]), let obj = try? JSONSerialization.jsonObject(with: Data(js)) as? [String: Any], obj["questions"] != nil {
      try answerQuestions(a)
    } else {
      try loss(a, kind: probe.first(of: ["json"]) != nil ? .conversation : .caption, plain: probe.first(of: ["jpg", "jpeg"]) == nil)
    }
  }

  func rankCaptions(_ a: Assistant) throws {
    guard case .chat(let m) = a.model, let image = a.image else { throw ValidationError("\(model) has no vision tower: --rank needs an image model") }
    var settings = CaptionRankSettings()
    settings.format = format == "auto" ? m.config.captionFormat : format
    for p in prompt {
      if let eq = p.firstIndex(of: "="), p[..<eq].allSatisfy({ $0.isLetter || $0 == "-" || $0 == "_" }), p.distance(from: p.startIndex, to: eq) <= 8 {
        settings.prompts[String(p[..<eq])] = String(p[p.index(after: eq)...])
      } else {
        settings.prompts[""] = p
      }
    }
    settings.score = CaptionRanking.Score(rawValue: score)!
    settings.batch = rankBatch
    settings.maxImages = maxImages
    let bar = ProgressBar(label: "rank", total: nil, unit: "images")
    let r = try noGrad {
      try CaptionRankEvaluation.run(model: m, template: a.template, image: image, shards: shards, settings: settings) { done, total in
        bar.update(done, detail: "of \(total)")
      }
    }
    bar.finish()
    print("caption ranking (\(settings.format) format, \(score) of log-probabilities)")
    print(r.table)
    if let ranks {
      let lines = try r.records.map { String(decoding: try JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self) }
      try (lines.joined(separator: "\n") + "\n").write(toFile: ranks, atomically: true, encoding: .utf8)
    }
    var record: [String: Any] = ["phase": "rank", "model": model, "shards": shards, "format": settings.format, "score": score]
    for (k, v) in r.metrics { record[k] = v }
    emitJSON(record)
  }

  func loss(_ a: Assistant, kind: SampleKind, plain: Bool) throws {
    let q: Int
    if case .chat(let m) = a.model { q = m.imageTokenCount } else { q = 0 }
    let encoder = ChatSampleEncoder(template: a.template, imageTokenCount: q, captionPrompt: captionPrompt, plainText: plain)
    var config = DatasetConfig(sources: [DataSourceSpec(name: "eval", shards: try ShardList.expand(shards))], kind: kind, batchSize: batchSize, maxLength: maxLength)
    config.shuffle = false
    config.epochs = 1
    config.requireImage = !plain
    if let image = a.image { config.image = image }
    let loader = try DataLoader(config: config, encoder: encoder)
    var total = 0.0, counted = 0, batches = 0
    let bar = ProgressBar(label: "eval", total: nil, unit: "batches")
    try noGrad {
      while let b = try loader.nextBatch() {
        let (l, n) = a.model.module.loss(ShardBatchSource.convert(b))
        total += Double(l.item) * Double(n)
        counted += n
        batches += 1
        bar.update(batches, detail: String(format: "loss %.4f", total / Double(max(counted, 1))))
      }
    }
    bar.finish()
    let mean = total / Double(max(counted, 1))
    print(String(format: "loss %.4f  perplexity %.3f  over %d tokens", mean, Foundation.exp(mean), counted))
    emitJSON(["phase": "eval", "model": model, "shards": shards, "loss": mean, "perplexity": Foundation.exp(mean), "tokens": counted])
  }

  func answerQuestions(_ a: Assistant) throws {
    var right: [String: Int] = [:], asked: [String: Int] = [:]
    var examples: [String: [String]] = [:]
    var options = GenerationOptions()
    options.maxNewTokens = 16
    let bar = ProgressBar(label: "questions", total: nil, unit: "images")
    var images = 0
    // One line per question, so wrong answers can be tallied (e.g. which colour is taken for which).
    var answerLines: [String] = []
    _ = try forEachSample(shards) { s in
      guard let js = s.first(of: ["json"]), let obj = try? JSONSerialization.jsonObject(with: Data(js)) as? [String: Any],
        let questions = obj["questions"] as? [[String: String]]
      else { return }
      var pixels: Tensor? = nil
      if let jpeg = s.first(of: SampleFields().image), let image = a.image {
        let t = Tensor(empty: [1, 3, image.cropHeight, image.cropWidth])
        try image.process(jpeg: jpeg, key: s.key, into: t.ptr)
        pixels = t
      }
      for q in questions {
        guard let lang = q["lang"], let question = q["question"], let answer = q["answer"] else { continue }
        let content = pixels == nil ? question : "<image>\n\(question)"
        let r = try a.reply([ChatMessage(role: "user", content: content)], pixels: pixels, options: options) { _ in }
        let reply = a.tokenizer.decode(r.ids, skipSpecialTokens: true).trimmingCharacters(in: .whitespacesAndNewlines)
        let ok = reply.lowercased().contains(answer.lowercased())
        asked[lang, default: 0] += 1
        if ok { right[lang, default: 0] += 1 }
        if let kind = q["kind"] {
          asked["\(lang)/\(kind)", default: 0] += 1
          if ok { right["\(lang)/\(kind)", default: 0] += 1 }
        }
        if answers != nil {
          var line: [String: Any] = ["key": s.key, "lang": lang, "question": question, "expected": answer, "reply": reply, "right": ok]
          if let kind = q["kind"] { line["kind"] = kind }
          let data = try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys, .withoutEscapingSlashes])
          answerLines.append(String(decoding: data, as: UTF8.self))
        }
        if examples[lang, default: []].count < samples {
          examples[lang, default: []].append("\(question) → \(reply)   [\(ok ? "right" : "wrong"), expected \(answer)]")
        }
      }
      images += 1
      bar.update(images)
    }
    bar.finish()
    if let answers {
      try (answerLines.joined(separator: "\n") + "\n").write(toFile: answers, atomically: true, encoding: .utf8)
    }
    print("| language | questions | right | accuracy |")
    print("|---|---:|---:|---:|")
    var record: [String: Any] = ["phase": "eval", "model": model, "shards": shards]
    for lang in asked.keys.sorted(by: { ($0.contains("/") ? 1 : 0, $0) < ($1.contains("/") ? 1 : 0, $1) }) {
      let acc = Double(right[lang, default: 0]) / Double(max(asked[lang]!, 1))
      print(String(format: "| %@ | %d | %d | %.1f%% |", lang, asked[lang]!, right[lang, default: 0], acc * 100))
      let field = lang.replacingOccurrences(of: "/", with: "_")
      record["accuracy_\(field)"] = acc
      record["questions_\(field)"] = asked[lang]!
    }
    for lang in examples.keys.sorted() {
      print("\nsample answers (\(lang)):")
      for e in examples[lang]! { print("  \(e)") }
    }
    emitJSON(record)
  }
}

struct DemoWorldCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "demo-world",
    abstract: "Generate the demo world: coloured shapes in JPEG shards, English captions, English and Chinese conversations, a bilingual corpus, held-out questions.")
  @Option(help: "Output folder.") var out = "demo-world"
  @Option(help: "Training images.") var trainImages = 3000
  @Option(help: "Held-out images.") var heldoutImages = 240
  @Option(help: "Lines of the bilingual text corpus.") var corpusLines = 9000
  @Option(help: "Image side in pixels.") var imageSize = 48
  @Option(help: "Seed.") var seed: UInt64 = 0

  func run() throws {
    var counts = DemoWorld.Counts()
    counts.trainImages = trainImages
    counts.heldoutImages = heldoutImages
    counts.corpusLines = corpusLines
    counts.imageSize = imageSize
    let bar = ProgressBar(label: "demo world", total: trainImages + heldoutImages, unit: "images")
    let summary = try DemoWorld.generate(into: out, counts: counts, seed: seed) { _, done, _ in bar.update(done) }
    bar.finish(detail: "\(summary["train_images"]!) train, \(summary["heldout_images"]!) held-out images, \(summary["corpus_lines"]!) corpus lines → \(out)")
  }
}
