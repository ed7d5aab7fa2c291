import ArgumentParser
import Foundation
import PivotData
import PivotModels
import PivotTensor
import PivotText
import PivotTrain

struct Translate: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Translate instruction data or captions with an LLM (VisCPM's and SEEChat's step: LLaVA's English conversations into Chinese).",
    discussion: """
      --in takes LLaVA JSON (a list of {id, image, conversations: [{from, value}]}: every human and gpt turn is \
      translated), caption JSONL ({image, caption} lines, or {image, captions: {en: …}}: the translation is added as \
      captions.<to>) or caption TSV (image<TAB>caption). Lines are translated one by one with greedy decoding, several \
      at once; <image>, code blocks, blank lines and lines without letters are kept; identical lines are translated \
      once. A line whose translation is empty, has extra lines, loses a number or is cut off is retried once (sampled), \
      then kept in the source language and listed in the record's translation_problems. Finished records go to \
      OUT.partial.jsonl as they are done; running the same command again resumes after them.
      """)

  @Option(help: "Model folder (an HF Qwen2/LLaMA folder, or a Pivot model: its LLM translates).") var model: String
  @Option(name: .customLong("in"), help: "LLaVA JSON, caption JSONL or caption TSV.") var input: String
  @Option(help: "Output file, in the input's format.") var out: String
  @Option(help: "Target language code.") var to = "zh"
  @Option(help: "The instruction; {language} and {text} are replaced.") var prompt = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"
  @Option(help: "Lines decoded together (one pass over the weights per token for all of them).") var batch = 8
  @Option(help: "Most tokens per translated line.") var maxNewTokens = 256
  @Option(help: "Chat template (chatml, llama3, plain); default: the tokenizer's.") var chatTemplate: String?
  @Option(help: "Worker threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
  @Option(help: "Products of more than one row (prefill): fp32 or bf16.") var matmul = "fp32"

  static let languages = ["zh": "Simplified Chinese", "en": "English", "ja": "Japanese", "ko": "Korean", "fr": "French",
                          "de": "German", "es": "Spanish", "ru": "Russian"]

  func validate() throws {
    guard batch >= 1, maxNewTokens >= 1 else { throw ValidationError("--batch and --max-new-tokens must be at least 1") }
    guard prompt.contains("{text}") else { throw ValidationError("--prompt must contain {text}, where each line goes") }
    guard !to.isEmpty, !to.contains(".") else { throw ValidationError("--to must be a language code such as zh") }
    guard [".json", ".jsonl", ".tsv"].contains(where: input.hasSuffix) else {
      throw ValidationError("--in must be LLaVA .json, caption .jsonl or caption .tsv, not \(input)")
    }
    guard out != input else { throw ValidationError("--out must differ from --in") }
  }

  enum Format { case llava, jsonl, tsv }

  func run() throws {
    Threads.set(threads)
    try setMatmulPrecision(matmul)
    let format: Format = input.hasSuffix(".json") ? .llava : input.hasSuffix(".jsonl") ? .jsonl : .tsv
    let records = try readRecords(format)
    let log = try TranslationLog(output: out)
    if !log.done.isEmpty { eprint("resuming: \(log.done.count) of \(records.count) records already translated in \(log.partialPath)") }
    let assistant = try Assistant(modelDir: model, chatTemplate: chatTemplate)
    let llm = assistant.model.languageModel
    let language = Self.languages[to] ?? to
    var job = TranslationJob(batchSize: batch) { lines, attempt in
      try self.generate(lines, attempt: attempt, llm: llm, assistant: assistant, language: language)
    }
    let bar = ProgressBar(label: "translate", total: records.count, unit: "records")
    var problemCount = 0
    var index = log.done.count
    bar.update(index, detail: "")
    while index < records.count {
      // Several records' lines share batches.
      var chunk: [[String: Any]] = []
      var lines = 0
      while index + chunk.count < records.count && (chunk.isEmpty || lines < 4 * batch) {
        let r = records[index + chunk.count]
        chunk.append(r)
        lines += turns(of: r, format).count
      }
      let turnCounts = chunk.map { turns(of: $0, format).count }
      let results = try job.translate(turns: chunk.flatMap { turns(of: $0, format) })
      var offset = 0
      for (record, count) in zip(chunk, turnCounts) {
        let mine = Array(results[offset..<(offset + count)])
        offset += count
        var translated = replacing(record, format, with: mine.map(\.text))
        let problems = mine.flatMap(\.problems)
        if !problems.isEmpty { translated["translation_problems"] = problems }
        problemCount += problems.count
        try log.append(translated)
      }
      index += chunk.count
      bar.update(index, detail: "\(job.generated) lines generated, \(job.cache.count) distinct, \(problemCount) kept untranslated")
    }
    bar.finish(detail: "\(job.generated) lines generated, \(problemCount) kept untranslated")
    try log.finish(output: out) { path in try write(log.done, format, to: path) }
    print("wrote \(out): \(records.count) records" + (problemCount > 0 ? "; \(problemCount) lines kept in the source language (see translation_problems)" : ""))
  }

  /// Greedy (attempt 0) or sampled (the retry) translations of single lines, decoded together.
  func generate(_ lines: [String], attempt: Int, llm: DecoderLM, assistant: Assistant, language: String) throws -> [TranslationJob.Result] {
    var options = GenerationOptions()
    options.maxNewTokens = maxNewTokens
    options.stopTokenIds = assistant.stopIds
    if attempt > 0 {
      options.temperature = 0.7
      options.seed = UInt64(attempt)
    }
    var prompts: [Tensor] = [], histories: [[Int32]] = []
    for line in lines {
      let text = prompt.replacingOccurrences(of: "{language}", with: language).replacingOccurrences(of: "{text}", with: line)
      let rendered = try assistant.template.render(messages: [ChatMessage(role: "user", content: text)], addGenerationPrompt: true)
      guard rendered.ids.count + maxNewTokens <= llm.config.maxPositionEmbeddings else {
        throw ValidationError("a line of \(rendered.ids.count) prompt tokens plus --max-new-tokens \(maxNewTokens) exceeds the model's \(llm.config.maxPositionEmbeddings) positions: '\(line.prefix(60))…'")
      }
      prompts.append(noGrad { llm.embed(rendered.ids, shape: [1, rendered.ids.count]) })
      histories.append(rendered.ids)
    }
    let outputs = llm.generateBatch(prompts: prompts, histories: histories, options: options)
    return outputs.map { ids in
      let stopped = ids.last.map { assistant.stopIds.contains($0) } ?? false
      let text = assistant.tokenizer.decode(stopped ? Array(ids.dropLast()) : ids, skipSpecialTokens: true)
      return TranslationJob.Result(text: text, cutOff: !stopped && ids.count >= maxNewTokens)
    }
  }

  // MARK: Records

  func readRecords(_ format: Format) throws -> [[String: Any]] {
    let text = try readUserText(input)
    switch format {
    case .llava:
      let parsed: Any
      do { parsed = try JSONSerialization.jsonObject(with: Data(text.utf8)) } catch {
        throw ValidationError("\(input): not valid JSON (\((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"))")
      }
      guard let list = parsed as? [[String: Any]] else { throw ValidationError("\(input): expected a JSON list of {id, image, conversations}") }
      for (i, r) in list.enumerated() {
        guard let turns = r["conversations"] as? [[String: Any]], turns.allSatisfy({ $0["value"] is String }) else {
          throw ValidationError("\(input): record \(i) needs 'conversations', a list of {from, value} with string values")
        }
      }
      return list
    case .jsonl:
      return try text.split(separator: "\n").map { $0.hasSuffix("\r") ? $0.dropLast() : $0 }.filter { !$0.isEmpty }.enumerated().map { n, line in
        guard let r = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
          (r["caption"] is String) || (r["text"] is String) || ((r["captions"] as? [String: Any])?.values.contains { $0 is String } ?? false)
        else { throw ValidationError("\(input):\(n + 1): expected {\"image\": …, \"caption\": …} or {\"image\": …, \"captions\": {\"en\": …}}") }
        return r
      }
    case .tsv:
      return try text.split(separator: "\n").map { $0.hasSuffix("\r") ? $0.dropLast() : $0 }.filter { !$0.isEmpty }.enumerated().compactMap { n, line in
        let parts = line.split(separator: "\t", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        if n == 0 && parts.first?.lowercased() == "image" { return nil }
        guard parts.count == 2 else { throw ValidationError("\(input):\(n + 1): expected image<TAB>caption") }
        return ["image": parts[0], "caption": parts[1]]
      }
    }
  }

  /// The texts of a record that are translated, in order.
  func turns(of r: [String: Any], _ format: Format) -> [String] {
    switch format {
    case .llava: return (r["conversations"] as! [[String: Any]]).map { $0["value"] as! String }
    case .jsonl, .tsv:
      if let c = r["caption"] as? String { return [c] }
      if let c = r["text"] as? String { return [c] }
      let captions = r["captions"] as! [String: Any]
      return [(captions["en"] as? String) ?? captions.keys.sorted().compactMap { captions[$0] as? String }.first!]
    }
  }

  func replacing(_ r: [String: Any], _ format: Format, with texts: [String]) -> [String: Any] {
    var r = r
    switch format {
    case .llava:
      r["conversations"] = zip(r["conversations"] as! [[String: Any]], texts).map { turn, text in
        var t = turn
        t["value"] = text
        return t
      }
    case .jsonl, .tsv:
      if var captions = r["captions"] as? [String: Any] {
        captions[to] = texts[0]
        r["captions"] = captions
      } else if r["caption"] != nil {
        r["caption"] = texts[0]
      } else {
        r["text"] = texts[0]
      }
    }
    return r
  }

  func write(_ records: [[String: Any]], _ format: Format, to path: String) throws {
    var data = Data()
    switch format {
    case .llava:
      data = try JSONSerialization.data(withJSONObject: records, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    case .jsonl:
      for r in records {
        data.append(try JSONSerialization.data(withJSONObject: r, options: [.sortedKeys, .withoutEscapingSlashes]))
        data.append(UInt8(ascii: "\n"))
      }
    case .tsv:
      for r in records {
        let caption = (r["caption"] as? String ?? "").replacingOccurrences(of: "\t", with: " ").replacingOccurrences(of: "\n", with: " ")
        data.append(Data("\(r["image"] as? String ?? "")\t\(caption)\n".utf8))
      }
    }
    try data.write(to: URL(fileURLWithPath: path))
  }
}
