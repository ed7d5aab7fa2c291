import Foundation
import PivotData
import PivotText
@testable import PivotTrain
import Testing

/// `epochs`: a run's length follows from its shards. Two text sources (10 and 6 samples, one of
/// them with an empty caption, which training skips), batch 3, gradient accumulation 2.
@Suite("Epochs", .serialized)
struct EpochTests {
  /// Writes the shards, a tokenizer and a tiny LLM config; returns a recipe's text for them.
  static func world(_ dir: String, extra: String) throws -> String {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let lines = (0..<16).map { "the \(["red", "blue", "green", "small"][$0 % 4]) shape number \($0) sits here" }
    try lines.joined(separator: "\n").write(toFile: dir + "/corpus.txt", atomically: true, encoding: .utf8)
    try BPETrainer(vocabularySize: 300).train(corpus: [URL(fileURLWithPath: dir + "/corpus.txt")],
                                              output: URL(fileURLWithPath: dir + "/tokenizer.json"))
    for (name, range) in [("a", 0..<10), ("b", 10..<16)] {
      let shard = try ShardFileWriter(path: "\(dir)/\(name).tar.zst")
      for i in range {
        let text = i == 12 ? "" : lines[i]  // an empty caption: a bad sample
        try shard.write(ShardSample(key: "s\(i)", url: shard.path, fields: [SampleField(name: "txt", data: Array(text.utf8))]))
      }
      try shard.finish()
    }
    try """
      {"model_type": "qwen2", "vocab_size": 320, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
       "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_act": "silu", "max_position_embeddings": 64,
       "rms_norm_eps": 1e-6, "tie_word_embeddings": true, "rope_theta": 10000.0}
      """.write(toFile: dir + "/llm.json", atomically: true, encoding: .utf8)
    return """
      stage: text
      seed: 1
      model:
        llm_config: \(dir)/llm.json
        tokenizer: \(dir)/tokenizer.json
        chat_template: chatml
      data:
        sources:
          - shards: \(dir)/a.tar.zst
            weight: 2
          - shards: \(dir)/b.tar.zst
        max_length: 32
        max_bad_fraction: 0.5
      optimizer:
        lr: 1e-3
      batch_size: 3
      grad_accum: 2
      log_every: 100
      output: \(dir)/run
      \(extra)
      """
  }

  static func train(_ dir: String, extra: String) throws -> (steps: [Int], maxSteps: Int, metrics: [[String: Any]]) {
    var r = try Recipe.parse(try world(dir, extra: extra), file: "epochs.yaml")
    let setup = try RunSetup(recipe: r)
    r.maxSteps = r.steps(forEpochsOver: try setup.countTrainingSamples())
    let trainer = try Trainer(recipe: r, model: setup.model, source: try setup.trainingSource())
    trainer.onFinish = { try setup.saveFinal(into: $0) }
    var steps: [Int] = []
    try trainer.run { if case .step(let m) = $0 { steps.append(m.step) } }
    return (steps, r.maxSteps, MetricsLog.read(dir + "/run/metrics.jsonl"))
  }

  @Test func stepsFollowFromTheSamples() throws {
    var r = try Recipe.parse("epochs: 2\nbatch_size: 3\ngrad_accum: 2\ndata:\n  sources:\n    - shards: x\n", file: "e.yaml")
    #expect(r.epochs == 2 && !r.maxStepsGiven)
    #expect(r.steps(forEpochsOver: 16) == 6)  // 32 samples, 6 per step: 5 whole steps and a short one
    #expect(r.steps(forEpochsOver: 18) == 6)
    r.maxSteps = 4
    r.maxStepsGiven = true
    #expect(r.steps(forEpochsOver: 16) == 4)
    let bad = #expect(throws: RecipeError.self) { try Recipe.parse("epochs: 0\ndata:\n  sources:\n    - shards: x\n", file: "e.yaml") }
    #expect(bad?.key == "epochs")
  }

  /// 32 items over two epochs, 30 readable: 10 micro-batches of 3, so 5 steps where the count
  /// (which cannot know a caption is empty without decoding) planned 6; the run ends cleanly
  /// when the data does, with its last step logged and saved.
  @Test func theRunEndsWithTheData() throws {
    let dir = tempDir("epochs")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let (steps, maxSteps, metrics) = try Self.train(dir, extra: "epochs: 2")
    #expect(maxSteps == 6)
    #expect(steps == [1, 2, 3, 4, 5])
    let last = metrics.last { $0["loss"] != nil }
    #expect(last?["step"] as? Int == 5)
    #expect(last?["bad_samples"] as? Int == 2, "the empty caption, once per epoch")
    #expect(FileManager.default.fileExists(atPath: dir + "/run/step-000005/model.safetensors"))
    #expect(FileManager.default.fileExists(atPath: dir + "/run/final"))
  }

  /// Three epochs would plan 8 steps; max_steps 4 stops the run first.
  @Test func maxStepsCapsAnEpochRun() throws {
    let dir = tempDir("epochs-cap")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let (steps, maxSteps, _) = try Self.train(dir, extra: "epochs: 3\nmax_steps: 4")
    #expect(maxSteps == 4)
    #expect(steps == [1, 2, 3, 4])
  }

  /// One epoch ends mid-step: the short last step still runs, is logged and is saved.
  @Test func aShortLastStepTrains() throws {
    let dir = tempDir("epochs-short")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // One epoch: 15 readable samples = 5 micro-batches = 2 whole steps and one of a single micro-batch.
    let (steps, maxSteps, metrics) = try Self.train(dir, extra: "epochs: 1")
    #expect(maxSteps == 3)
    #expect(steps == [1, 2, 3])
    let last = metrics.last { $0["loss"] != nil }
    #expect((last?["loss"] as? Double).map { $0.isFinite && $0 > 0 } == true)
    #expect(last?["step"] as? Int == 3)
  }
}
