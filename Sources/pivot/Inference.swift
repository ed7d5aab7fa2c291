import ArgumentParser
import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor
import PivotText
import PivotTrain

struct SamplingOptions: ParsableArguments {
  @Option(help: "Most tokens to generate.") var maxNewTokens = 256
  @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0
  @Option(help: "Keep the k most likely tokens (0: all).") var topK = 0
  @Option(help: "Keep the smallest set of tokens whose probability reaches p.") var topP: Float = 1
  @Option(help: "Divide the logits of tokens already present (transformers' rule).") var repetitionPenalty: Float = 1
  @Option(help: "Seed for sampling.") var seed: UInt64 = 0
  @Option(help: "Stop when the output ends with this text (repeatable).") var stop: [String] = []

  func validate() throws {
    guard maxNewTokens >= 1 else { throw ValidationError("--max-new-tokens must be at least 1, not \(maxNewTokens)") }
    guard temperature.isFinite && temperature >= 0 else { throw ValidationError("--temperature must be a finite number ≥ 0 (0 is greedy), not \(temperature)") }
    guard topK >= 0 else { throw ValidationError("--top-k must be ≥ 0 (0 keeps every token), not \(topK)") }
    guard topP.isFinite && topP > 0 && topP <= 1 else { throw ValidationError("--top-p must be in (0, 1], not \(topP)") }
    guard repetitionPenalty.isFinite && repetitionPenalty > 0 else { throw ValidationError("--repetition-penalty must be a finite number > 0, not \(repetitionPenalty)") }
  }

  var generation: GenerationOptions {
    var g = GenerationOptions()
    g.maxNewTokens = maxNewTokens
    g.temperature = temperature
    g.topK = topK
    g.topP = topP
    g.repetitionPenalty = repetitionPenalty
    g.seed = seed
    return g
  }
}

struct Chat: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Chat with a model: one-shot with --prompt, otherwise interactive (/image FILE, /reset, /quit).",
    discussion: "--model takes a Pivot model folder, a training checkpoint, or a plain HF Qwen2/LLaMA folder (text-only chat).")

  @Option(help: "Model folder.") var model: String
  @Option(help: "A PEFT LoRA adapter folder to apply to the model's LLM, unmerged.") var adapter: String?
  @Option(help: "A JPEG, PNG or WebP to talk about.") var image: String?
  @Option(help: "One prompt: answer it and exit.") var prompt: String?
  @Option(help: "System prompt.") var system: String?
  @Option(help: "Chat template (chatml, llama3, plain); default: the tokenizer's.") var chatTemplate: String?
  @Option(help: "Worker threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
  @Option(help: "Weights: auto (the checkpoint's own precision), fp32, or bf16 (half the bytes per token).") var dtype = "auto"
  @Option(help: "Products of more than one row (the prompt's prefill): fp32, or bf16 (bfloat16 operands, float32 sums; AMX where the CPU has it).") var matmul = "fp32"
  @OptionGroup var sampling: SamplingOptions

  func run() throws {
    Threads.set(threads)
    try setMatmulPrecision(matmul)
    let started = Date()
    let a = try Assistant(modelDir: model, chatTemplate: chatTemplate, dtype: dtype, adapter: adapter)
    var pixels = try image.map { try a.pixels(jpegAt: $0) }
    var history: [ChatMessage] = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
    func ask(_ text: String, withImage: Bool) throws {
      let content = withImage && pixels != nil ? "<image>\n\(text)" : text
      history.append(ChatMessage(role: "user", content: content))
      let r = try a.reply(history, pixels: history.contains { $0.content.contains("<image>") } ? pixels : nil,
                          options: sampling.generation, stopStrings: sampling.stop) { piece in
        FileHandle.standardOutput.write(piece.data(using: .utf8)!)
      }
      print("")
      history.append(ChatMessage(role: "assistant", content: a.tokenizer.decode(r.ids, skipSpecialTokens: true)))
      eprint(String(format: "[%d tokens, %.1f tokens/s, first token after %.2f s]", r.ids.count, Double(r.ids.count) / max(r.seconds, 1e-9), r.firstTokenSeconds))
    }
    if let prompt {
      try ask(prompt, withImage: true)
      eprint(String(format: "[start to first token: %.2f s]", Date().timeIntervalSince(started)))
      return
    }
    eprint("Pivot chat. /image FILE attaches a picture, /reset clears the conversation, /quit leaves.")
    var attachNext = pixels != nil
    while true {
      FileHandle.standardError.write("> ".data(using: .utf8)!)
      guard let line = readLine() else { break }
      let text = line.trimmingCharacters(in: .whitespaces)
      if text.isEmpty { continue }
      if text == "/quit" { break }
      if text == "/reset" { history = system.map { [ChatMessage(role: "system", content: $0)] } ?? []; continue }
      if text.hasPrefix("/image ") {
        do {
          pixels = try a.pixels(jpegAt: String(text.dropFirst(7)).trimmingCharacters(in: .whitespaces))
          history = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
          attachNext = true
          eprint("image attached; the conversation starts over")
        } catch { eprint("\(error)") }
        continue
      }
      try ask(text, withImage: attachNext)
      attachNext = false
    }
  }
}

/// Every sample of the shards, in order (bad samples reported and skipped).
func forEachSample(_ pattern: String, _ body: (ShardSample) throws -> Void) throws -> (good: Int, bad: Int) {
  var good = 0, bad = 0
  for path in try ShardList.expand(pattern) {
    let reader = try ShardSampleReader(path: path)
    while let item = try reader.next() {
      switch item {
      case .sample(let s): try body(s); good += 1
      case .bad(let key, let message): eprint("\(path): skipped sample \(key): \(message)"); bad += 1
      }
    }
  }
  return (good, bad)
}

struct Caption: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Caption every image in shards; one JSON line per sample.")
  @Option(help: "Model folder.") var model: String
  @Option(help: "A PEFT LoRA adapter folder to apply to the model's LLM, unmerged.") var adapter: String?
  @Option(help: "Shard pattern, e.g. data/pairs-{000000..000009}.tar.zst") var shards: String
  @Option(help: "Output JSONL.") var out: String
  @Option(help: "The instruction given with each image.") var prompt = "Describe the image."
  @Option(help: "The sample field written as each record's reference (en.txt, zh.txt, …); default: txt where a sample has one.") var referenceField: String?
  @Option(help: "chat (the chat template with --prompt), plain (the image alone, LLaVA's stage-1 format), or auto (what the model was last trained on).") var format = "auto"
  @Option(help: "Worker threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
  @Option(help: "Weights: auto (the checkpoint's own precision), fp32, or bf16.") var dtype = "auto"
  @Option(help: "Products of more than one row (the prompt's prefill): fp32, or bf16 (bfloat16 operands, float32 sums; AMX where the CPU has it).") var matmul = "fp32"
  @OptionGroup var sampling: SamplingOptions

  func run() throws {
    Threads.set(threads)
    try setMatmulPrecision(matmul)
    let a = try Assistant(modelDir: model, dtype: dtype, adapter: adapter)
    guard a.hasVision, case .chat(let chatModel) = a.model else { throw ValidationError("\(model) has no vision tower") }
    guard ["auto", "chat", "plain"].contains(format) else { throw ValidationError("--format must be auto, chat or plain") }
    let plain = (format == "auto" ? chatModel.config.captionFormat : format) == "plain"
    guard FileManager.default.createFile(atPath: out, contents: nil), let handle = FileHandle(forWritingAtPath: out) else {
      throw ValidationError("cannot write \(out) (is its folder there and writable?)")
    }
    defer { try? handle.close() }
    let total = try ShardList.expand(shards).count
    let bar = ProgressBar(label: "caption", total: nil, unit: "images")
    var n = 0
    let counts = try forEachSample(shards) { s in
      guard let jpeg = s.first(of: SampleFields().image), let image = a.image else { return }
      let t = Tensor(empty: [1, 3, image.cropHeight, image.cropWidth])
      do { try image.process(jpeg: jpeg, key: s.key, into: t.ptr) } catch { eprint("\(s.url): \(s.key): \(error)"); return }
      let ids = plain
        ? try a.plainCaption(pixels: t, options: sampling.generation)
        : try a.reply([ChatMessage(role: "user", content: "<image>\n\(prompt)")], pixels: t, options: sampling.generation, stopStrings: sampling.stop) { _ in }.ids
      let text = a.tokenizer.decode(ids, skipSpecialTokens: true).trimmingCharacters(in: .whitespacesAndNewlines)
      var record: [String: Any] = ["key": s.key, "caption": text]
      if let ref = s.first(of: [referenceField ?? "txt"]) {
        record["reference"] = String(decoding: ref, as: UTF8.self)
      } else if let referenceField {
        throw ValidationError("\(s.url): sample \(s.key) has no '\(referenceField)' field for --reference-field (fields: \(s.fields.map(\.name).joined(separator: ", ")))")
      }
      handle.write(try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .withoutEscapingSlashes]))
      handle.write("\n".data(using: .utf8)!)
      n += 1
      bar.update(n, detail: "\(total) shard(s)")
    }
    bar.finish(detail: "\(n) captioned, \(counts.bad + counts.good - n) skipped → \(out)")
  }
}

/// `--matmul` of the model commands (the recipe key `model.matmul` for `pivot train`).
func setMatmulPrecision(_ value: String) throws {
  guard let precision = MatmulPrecision(rawValue: value) else { throw ValidationError("--matmul must be fp32 or bf16, not '\(value)'") }
  MatmulPrecision.global = precision
}
