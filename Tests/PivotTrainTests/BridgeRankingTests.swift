import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor
import PivotText
@testable import PivotTrain
import Testing

/// A tiny image world: a BPE tokenizer, CLIP and Qwen2 configs, and a shard of coloured
/// squares with English and Chinese captions (`txt`, `en.txt`, `zh.txt`).
enum TinyImageWorld {
  static let captions: [(en: String, zh: String)] = [
    ("a red square", "红色的方块"), ("a blue square", "蓝色的方块"), ("a green square", "绿色的方块"),
    ("a small yellow square", "黄色的小方块"), ("a big black square", "黑色的大方块"),
  ]

  static func write(_ dir: String) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let corpus = captions.flatMap { [$0.en, $0.zh] } + ["describe the image", "描述这张图片"]
    try corpus.joined(separator: "\n").write(toFile: dir + "/corpus.txt", atomically: true, encoding: .utf8)
    try BPETrainer(vocabularySize: 300).train(corpus: [URL(fileURLWithPath: dir + "/corpus.txt")],
                                              output: URL(fileURLWithPath: dir + "/tokenizer.json"))
    let shard = try ShardFileWriter(path: dir + "/pairs.tar.zst")
    for (i, c) in captions.enumerated() {
      var pixels = [UInt8](repeating: 255, count: 28 * 28 * 3)
      for p in 0..<(28 * 28) { pixels[3 * p + i % 3] = UInt8(40 * i) }
      let jpeg = try JPEG.encode(RGBImage(width: 28, height: 28, pixels: pixels), quality: 95)
      try shard.write(ShardSample(key: "s\(i)", url: shard.path, fields: [
        SampleField(name: "jpg", data: jpeg), SampleField(name: "txt", data: Array(c.en.utf8)),
        SampleField(name: "en.txt", data: Array(c.en.utf8)), SampleField(name: "zh.txt", data: Array(c.zh.utf8)),
      ]))
    }
    try shard.finish()
    try """
      {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
       "num_attention_heads": 2, "image_size": 28, "patch_size": 7, "hidden_act": "quick_gelu"}
      """.write(toFile: dir + "/vision.json", atomically: true, encoding: .utf8)
    try """
      {"model_type": "qwen2", "vocab_size": 320, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
       "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_act": "silu", "max_position_embeddings": 64,
       "rms_norm_eps": 1e-6, "tie_word_embeddings": true, "rope_theta": 10000.0}
      """.write(toFile: dir + "/llm.json", atomically: true, encoding: .utf8)
  }

  static func recipe(_ dir: String, bridge: String, steps: Int = 3, format: String = "plain", data extra: String = "") -> String {
    """
    stage: align
    seed: 2
    model:
      vision_config: \(dir)/vision.json
      llm_config: \(dir)/llm.json
      tokenizer: \(dir)/tokenizer.json
      chat_template: chatml
      bridge: \(bridge)
      \(bridge == "mlp" ? "mlp_pool_grid: 2" : "num_query_tokens: 3\n  qformer_layers: 1")
    data:
      sources:
        - shards: \(dir)/pairs.tar.zst
      caption_format: \(format)
      max_length: 32\(extra)
    optimizer:
      lr: 1e-2
    batch_size: 2
    max_steps: \(steps)
    output: \(dir)/run-\(bridge)
    """
  }
}

@Suite("Bridges and caption ranking", .serialized)
struct BridgeRankingTests {
  /// The log-probabilities the ranker reads through a shared, copied KV prefix and padded
  /// candidate batches equal a plain full forward of prefix + candidate, token by token.
  @Test func continuationLogProbsEqualAFullForward() throws {
    let lm = tinyDecoder()
    try lm.freeze()
    let prompt: [Int32] = [3, 9, 4, 17, 2]
    let candidates: [[Int32]] = [[5], [7, 8, 9, 10], [11, 12], [13, 14, 15], [1, 2, 3, 4, 5, 6]]
    let c = lm.config.hiddenSize
    let (cache, last) = noGrad {
      let cache = KVCache(config: lm.config, capacity: prompt.count)
      let h = lm.hiddenStates(lm.embed(prompt, shape: [1, prompt.count]), cache: cache)
      return (cache, slice(reshape(h, [prompt.count, c]), axis: 0, (prompt.count - 1)..<prompt.count))
    }
    let got = lm.continuationLogProbs(prefix: cache, lastHidden: last, candidates: candidates, batch: 2)
    for (k, cand) in candidates.enumerated() {
      let all = prompt + cand
      let logits = noGrad { lm.logits(reshape(lm.hiddenStates(lm.embed(all, shape: [1, all.count])), [all.count, c])) }
      let lp = noGrad { logSoftmax(logits) }  // (T, V)
      #expect(got[k].count == cand.count)
      for (j, token) in cand.enumerated() {
        let want = lp.ptr[(prompt.count - 1 + j) * lm.config.vocabSize + Int(token)]
        #expect(abs(got[k][j] - want) < 1e-4, "candidate \(k) token \(j): \(got[k][j]) vs \(want)")
      }
    }
  }

  /// A sample may carry its own candidates (`json` {"captions", "candidates"}); the reference is
  /// added when the list lacks it, and the tally counts the images.
  @Test func candidatesCarriedBySamples() throws {
    let dir = tempDir("rank-own")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try TinyImageWorld.write(dir)
    let shard = try ShardFileWriter(path: dir + "/own.tar.zst")
    let jpeg = try JPEG.encode(RGBImage(width: 28, height: 28, pixels: [UInt8](repeating: 90, count: 28 * 28 * 3)), quality: 95)
    for i in 0..<2 {
      let json = #"{"captions": {"en": "a red square"}, "candidates": {"en": ["a blue square", "a green square"]}}"#
      try shard.write(ShardSample(key: "o\(i)", url: shard.path, fields: [SampleField(name: "jpg", data: jpeg), SampleField(name: "json", data: Array(json.utf8))]))
    }
    try shard.finish()
    let setup = try RunSetup(recipe: try Recipe.parse(TinyImageWorld.recipe(dir, bridge: "mlp"), file: "own.yaml"))
    var settings = CaptionRankSettings()
    settings.format = "plain"
    let r = try CaptionRankEvaluation.run(model: setup.model as! ChatModel, template: setup.template, image: setup.image,
                                          shards: dir + "/own.tar.zst", settings: settings)
    #expect(r.languages == ["en"] && r.tallies["en"]!.count == 2)
    #expect(r.records.allSatisfy { $0["candidates"] == "3" }, "the sample's two candidates and its reference")
    #expect(r.tallies["en"]!.ranks.allSatisfy { (1...3).contains($0) })
  }

  @Test func ranksAndChance() {
    #expect(CaptionRanking.rank(of: 2, in: [0.1, 0.5, 0.3, -1]) == 2)
    #expect(CaptionRanking.rank(of: 1, in: [0.1, 0.5, 0.3, -1]) == 1)
    #expect(CaptionRanking.rank(of: 0, in: [0.5, 0.5, 0.3]) == 2, "a tie ranks ahead of the correct candidate")
    #expect(CaptionRanking.scores([[-1, -3], [-2]], .sum) == [-4, -2])
    #expect(CaptionRanking.scores([[-1, -3], [-2]], .mean) == [-2, -2])
    #expect(CaptionRanking.scores([[-1, -3], [-2]], .pmi, priors: [-6, -1]) == [2, -1])
    var t = RankTally(candidates: 50)
    for r in [1, 1, 3, 7, 50] { t.add(r) }
    #expect(t.topK(1) == 0.4 && t.topK(5) == 0.6 && t.meanRank == 12.4)
    #expect(t.chanceTopK(1) == 0.02 && t.chanceTopK(5) == 0.1 && t.chanceMeanRank == 25.5)
  }

  /// The ranker's ranks over a shard equal ranks computed by brute force: every candidate
  /// scored by its own full forward (image + caption + end token, the training labels); for PMI
  /// less a full forward of the prompt without the image and the same caption.
  @Test(arguments: ["plain", "chat"], [CaptionRanking.Score.sum, .pmi])
  func rankingEqualsBruteForce(format: String, score: CaptionRanking.Score) throws {
    let dir = tempDir("rank-\(format)-\(score)")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try TinyImageWorld.write(dir)
    let setup = try RunSetup(recipe: try Recipe.parse(TinyImageWorld.recipe(dir, bridge: "mlp", format: format), file: "rank.yaml"))
    let model = setup.model as! ChatModel
    try model.freeze()
    var settings = CaptionRankSettings()
    settings.format = format
    settings.prompts = ["": "describe the image", "zh": "描述这张图片"]
    settings.batch = 2
    settings.score = score
    let result = try CaptionRankEvaluation.run(model: model, template: setup.template, image: setup.image,
                                               shards: dir + "/pairs.tar.zst", settings: settings)
    #expect(result.languages == ["en", "zh"], "txt beside en.txt and zh.txt is not a language of its own")
    #expect(result.tallies["en"]!.candidates == 5 && result.tallies["en"]!.count == 5)
    // Brute force: each (image, candidate) pair as a training sample; its loss × tokens is −Σ log p.
    let pixels = Tensor(empty: [1, 3, 28, 28])
    for lang in ["en", "zh"] {
      let encoder = ChatSampleEncoder(template: setup.template, imageTokenCount: model.imageTokenCount,
                                      captionPrompt: settings.prompt(lang), plainCaptions: format == "plain")
      let pool = TinyImageWorld.captions.map { lang == "en" ? $0.en : $0.zh }
      // −Σ log p(caption | prompt alone): the ids without the image slot, the same labels.
      let priors = try pool.map { caption -> Double in
        guard score == .pmi else { return 0 }
        let e: (ids: [Int32], labels: [Int32])
        if format == "plain" {
          let start = ChatSampleEncoder.plainPrefix(setup.template.tokenizer, placeholder: 0, imageTokens: 0).ids
          let text = setup.template.tokenizer.encode(caption, addSpecialTokens: false) + [ChatSampleEncoder.plainCaptionEnd(setup.template.tokenizer)!]
          e = (start + text, [Int32](repeating: ignoreLabel, count: start.count) + text)
        } else {
          let r = try setup.template.render(messages: [ChatMessage(role: "user", content: settings.prompt(lang)),
                                                       ChatMessage(role: "assistant", content: caption)], imageTokenCount: 0)
          e = (r.ids, r.labels)
        }
        let (loss, n) = noGrad { model.loss(ids: e.ids, labels: e.labels, batch: 1, length: e.ids.count, pixels: nil, imageStarts: [nil]) }
        return -Double(loss.item) * Double(n)
      }
      var expected: [Int] = [], expectedSum: [Int] = []
      let reader = try ShardSampleReader(path: dir + "/pairs.tar.zst")
      var index = 0
      while let item = try reader.next() {
        guard case .sample(let s) = item else { continue }
        try setup.image.process(jpeg: s["jpg"]!, into: pixels.ptr)
        let scores = try pool.map { caption -> Double in
          let e = try encoder.encodeCaption(caption)
          let (loss, n) = noGrad {
            model.loss(ids: e.ids, labels: e.labels, batch: 1, length: e.ids.count, pixels: pixels, imageStarts: [e.imageSlot!.lowerBound])
          }
          return -Double(loss.item) * Double(n)
        }
        expected.append(CaptionRanking.rank(of: index, in: zip(scores, priors).map { $0 - $1 }))
        expectedSum.append(CaptionRanking.rank(of: index, in: scores))
        index += 1
      }
      #expect(result.tallies[lang]!.ranks == expected, "\(lang): \(result.tallies[lang]!.ranks) vs brute force \(expected)")
      if score == .pmi { #expect(result.sumTallies[lang]!.ranks == expectedSum, "\(lang): sum ranks beside PMI") }
    }
  }

  /// Stage 1 with the MLP bridge trains only `multi_modal_projector.*`; the bridge and the
  /// caption format survive `final/` and an HF export, and both load back to the same logits.
  @Test func mlpBridgeRoundTripsThroughCheckpointsAndExport() throws {
    let dir = tempDir("mlp-bridge")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try TinyImageWorld.write(dir)
    let r = try Recipe.parse(TinyImageWorld.recipe(dir, bridge: "mlp"), file: "mlp.yaml")
    let setup = try RunSetup(recipe: r)
    let model = setup.model as! ChatModel
    #expect(model.imageTokenCount == 4, "a 4×4 patch grid pooled to 2×2")
    let trainer = try Trainer(recipe: r, model: model, source: try setup.trainingSource())
    #expect(model.trainableParameters().map(\.0) == ["multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                                                     "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"])
    trainer.onFinish = { try setup.saveFinal(into: $0) }
    try trainer.run { _ in }
    let final = r.output + "/final"
    let loaded = try ChatModel.load(folder: final)
    #expect(loaded.config.bridge == .mlp && loaded.config.mlp.poolGrid == 2 && loaded.config.captionFormat == "plain")
    #expect(loaded.qformer == nil && loaded.multiModalProjector != nil)
    let exported = dir + "/export"
    try loaded.exportHF(to: exported)
    #expect(FileManager.default.fileExists(atPath: exported + "/projector/model.safetensors"))
    let projector = try SafeTensorsFile(url: URL(fileURLWithPath: exported + "/projector/model.safetensors"))
    #expect(Set(projector.names) == ["multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                                     "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"])
    let reloaded = try ChatModel.load(folder: exported)
    // The checkpoint folder (step-N: trained parameters + the recipe) rebuilds the same model too.
    let (fromCheckpoint, _) = try ModelLoader.load(r.output + "/step-000003")
    guard case .chat(let checkpointModel) = fromCheckpoint else { Issue.record("not a chat model"); return }
    let pixels = Tensor(empty: [1, 3, 28, 28])
    var rng = PivotRNG(seed: 4)
    rng.fillNormal(pixels, std: 1)
    func logits(_ m: ChatModel) -> Tensor {
      noGrad {
        let ids = [Int32](repeating: m.config.imageTokenId, count: 4) + [5, 6, 7]
        return m.languageModel.logits(reshape(m.languageModel.hiddenStates(
          m.inputEmbeddings(ids: ids, batch: 1, length: 7, pixels: pixels, imageStarts: [0])), [7, 16]))
      }
    }
    let reference = logits(model)
    for (name, m) in [("final", loaded), ("export", reloaded), ("checkpoint", checkpointModel)] {
      // The tensor is held while its pointer is read: a released temporary's buffer goes back to
      // the pool, where a test running beside this one may write over it.
      let other = logits(m)
      let d = withExtendedLifetime(other) {
        zip(UnsafeBufferPointer(start: reference.ptr, count: reference.count), UnsafeBufferPointer(start: other.ptr, count: reference.count)).map { abs($0 - $1) }.max()!
      }
      #expect(d < 1e-6, "\(name): logits differ by \(d)")
    }
  }

  /// `data.rank_shards`: every evaluation also ranks, and metrics.jsonl holds the figures.
  @Test func recipeEvaluationRanks() throws {
    let dir = tempDir("rank-recipe")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try TinyImageWorld.write(dir)
    let text = TinyImageWorld.recipe(dir, bridge: "qformer", data: "\n  rank_shards: \(dir)/pairs.tar.zst\n  rank_images: 3\n  rank_prompts: {default: describe the image, zh: 描述这张图片}")
      + "\neval_every: 3\n"
    let r = try Recipe.parse(text, file: "rank.yaml")
    #expect(r.data.rankPrompts == ["": "describe the image", "zh": "描述这张图片"])
    let setup = try RunSetup(recipe: r)
    let trainer = try Trainer(recipe: r, model: setup.model, source: try setup.trainingSource())
    trainer.rankEvaluation = setup.rankEvaluation()
    var ranked: [String: Double] = [:]
    try trainer.run { if case .ranked(_, let m) = $0 { ranked = m } }
    #expect(ranked["rank_candidates_en"] == 3 && ranked["rank_chance_top1_zh"] == 1.0 / 3)
    #expect(ranked["rank_top5_en"] == 1, "five candidates of three always include the right one")
    let records = MetricsLog.read(r.output + "/metrics.jsonl").filter { $0["rank_top1_en"] != nil }
    #expect(records.count == 1 && records[0]["step"] as? Int == 3)
  }

  @Test func bridgeSettingsAreChecked() throws {
    let dir = tempDir("bridge-errors")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try TinyImageWorld.write(dir)
    #expect(throws: RecipeError.self) { try Recipe.parse(TinyImageWorld.recipe(dir, bridge: "perceiver"), file: "x.yaml") }
    let tooCoarse = TinyImageWorld.recipe(dir, bridge: "mlp").replacingOccurrences(of: "mlp_pool_grid: 2", with: "mlp_pool_grid: 9")
    do {
      _ = try ModelBuilder.build(try Recipe.parse(tooCoarse, file: "x.yaml"))
      Issue.record("a pooled grid larger than the patch grid was accepted")
    } catch let e as RecipeError {
      #expect(e.key == "model.mlp_pool_grid" && e.message.contains("patch grid 4"))
    }
  }
}
