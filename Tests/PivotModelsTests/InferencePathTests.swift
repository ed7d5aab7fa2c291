import Foundation
import PivotModels
import PivotNN
import PivotTensor
import Testing

/// Inference-only paths of the decoder (stacked q/k/v and gate/up products, bfloat16 weights)
/// against the plain path, on the tiny Qwen2 and LLaMA fixtures.
@Suite("Decoder inference paths")
struct InferencePathTests {
  static func load(_ name: String) throws -> (DecoderLM, DecoderConfig, [Int32]) {
    let fx = try Fixture(name)
    guard case .decoder(let config) = try AnyModelConfig.parse(fx.config, file: "\(name).json") else {
      throw ModelLoadError(file: name, reason: "not a decoder fixture")
    }
    let m = DecoderLM(config)
    try fx.load(m)
    try m.freeze()
    return (m, config, (fx.meta["prompt"] as! [Int]).map { Int32($0) })
  }

  /// Last-position logits after the prompt and after each of `steps` greedy tokens, with the KV cache.
  static func cachedLogits(_ m: DecoderLM, _ config: DecoderConfig, prompt: [Int32], steps: Int) -> [Tensor] {
    noGrad {
      let cache = KVCache(config: config, capacity: prompt.count + steps)
      var h = m.hiddenStates(m.embed(prompt, shape: [1, prompt.count]), cache: cache)
      var out: [Tensor] = []
      for _ in 0..<steps {
        let t = h.shape[1]
        let logits = m.logits(slice(reshape(h, [t, config.hiddenSize]), axis: 0, (t - 1)..<t))
        out.append(logits)
        var best = 0
        for i in 0..<logits.count where logits.ptr[i] > logits.ptr[best] { best = i }
        h = m.hiddenStates(m.embed([Int32(best)], shape: [1, 1]), cache: cache)
      }
      return out
    }
  }

  @Test(arguments: ["qwen2_tiny", "llama_tiny"])
  func stackedProjectionsMatchSeparateOnes(_ name: String) throws {
    let (m, config, prompt) = try Self.load(name)
    let plain = Self.cachedLogits(m, config, prompt: prompt, steps: 6)
    m.stackFrozenProjections()
    let stacked = Self.cachedLogits(m, config, prompt: prompt, steps: 6)
    for (i, (a, b)) in zip(stacked, plain).enumerated() {
      #expect(maxDiff(a, b) < 1e-5, "step \(i): stacked logits differ by \(maxDiff(a, b))")
    }
  }

  /// bfloat16 weights (stacked too) give the logits of float32 weights rounded to bfloat16.
  @Test(arguments: ["qwen2_tiny", "llama_tiny"])
  func bf16WeightsMatchRoundedFloatWeights(_ name: String) throws {
    let (m, config, prompt) = try Self.load(name)
    let (rounded, _, _) = try Self.load(name)
    for (_, l) in rounded.namedModules() {
      guard let lin = l as? Linear else { continue }
      lin.weight.copy(from: BF16Matrix(lin.weight).toTensor())
    }
    let table = rounded.model.embedTokens.weight  // the frozen table keeps only bfloat16 too
    table.copy(from: BF16Matrix(table).toTensor())
    let given = m.storeFrozenWeightsInBF16()
    #expect(given == m.namedParameters().filter { $0.1.rank == 2 }.reduce(0) { $0 + $1.1.count * 2 })
    #expect(m.namedParameters().allSatisfy { ($0.1.rank == 2) == ($0.1.bf16Values != nil) }, "every matrix bfloat16-only, every vector float32")
    m.stackFrozenProjections()
    let bf16 = Self.cachedLogits(m, config, prompt: prompt, steps: 6)
    let ref = Self.cachedLogits(rounded, config, prompt: prompt, steps: 6)
    for (i, (a, b)) in zip(bf16, ref).enumerated() {
      #expect(maxDiff(a, b) < 1e-4, "step \(i): bf16 logits differ by \(maxDiff(a, b))")
    }
  }

  /// A BF16 checkpoint loaded for inference keeps its mapped bits (no float32 copy), gives the
  /// logits of the same checkpoint widened to float32, exports back to the same values, and
  /// refuses to train.
  @Test(arguments: ["qwen2_tiny", "llama_tiny"])
  func bf16CheckpointIsUsedInPlace(_ name: String) throws {
    let (m, config, prompt) = try Self.load(name)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-bf16-\(name)-\(getpid())").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try m.save(folder: dir, dtype: .bf16)

    let widened = try DecoderLM.load(folder: dir)
    try widened.freeze()
    let kept = try DecoderLM.load(folder: dir, keepingBF16: true)
    for (param, t) in kept.namedParameters() {
      #expect((t.rank == 2) == (t.bf16Values != nil), "\(param): matrices stay bfloat16, vectors widen")
      #expect(!t.requiresGrad || t.rank == 1, "\(param): bfloat16-only parameters are frozen")
    }
    try kept.freeze()
    #expect(throws: ModuleError.self) { try kept.unfreeze(["model.layers.0.mlp.*"]) }

    kept.stackFrozenProjections()
    let a = Self.cachedLogits(kept, config, prompt: prompt, steps: 6)
    let b = Self.cachedLogits(widened, config, prompt: prompt, steps: 6)
    for (i, (x, y)) in zip(a, b).enumerated() {
      #expect(maxDiff(x, y) < 1e-4, "step \(i): logits differ by \(maxDiff(x, y))")
    }

    let back = dir + "-f32"
    defer { try? FileManager.default.removeItem(atPath: back) }
    try kept.save(folder: back)
    let reloaded = Dictionary(uniqueKeysWithValues: try DecoderLM.load(folder: back).namedParameters())
    for (param, t) in widened.namedParameters() {
      #expect(maxDiff(reloaded[param]!, t) == 0, "\(param) exported from bfloat16-only storage")
    }
  }
}
