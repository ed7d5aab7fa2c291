import Foundation
@testable import PivotModels
import PivotNN
import PivotTensor
import Testing

/// Batched decoding (`decodeStep`, `generateBatch`): several prompts of different lengths, each
/// with its own cache, give token for token what each gives alone.
@Suite("Batched decoding")
struct BatchedGenerationTests {
  static func model(stacked: Bool, bf16: Bool) throws -> DecoderLM {
    var c = DecoderConfig()
    c.vocabSize = 64; c.hiddenSize = 32; c.intermediateSize = 48; c.numHiddenLayers = 2
    c.numAttentionHeads = 4; c.numKeyValueHeads = 2; c.qkvBias = true
    let m = DecoderLM(c, seed: 3)
    try m.freeze()
    if bf16 { m.storeFrozenWeightsInBF16() }
    if stacked { m.stackFrozenProjections() }
    return m
  }

  @Test(arguments: [(false, false), (true, false), (true, true)])
  func batchEqualsOneAtATime(stacked: Bool, bf16: Bool) throws {
    let m = try Self.model(stacked: stacked, bf16: bf16)
    let prompts: [[Int32]] = [[1, 2, 3], [5, 9, 4, 4, 7, 1, 2], [8], [3, 3, 3, 3, 60]]
    var options = GenerationOptions()
    options.maxNewTokens = 9
    options.stopTokenIds = [11]  // some rows may stop early, the others go on
    let alone = prompts.map { ids in m.generate(embeddings: noGrad { m.embed(ids, shape: [1, ids.count]) }, history: ids, options: options) }
    let together = m.generateBatch(prompts: prompts.map { ids in noGrad { m.embed(ids, shape: [1, ids.count]) } }, histories: prompts, options: options)
    #expect(together == alone)
    #expect(Set(alone.map(\.count)).count >= 1 && alone.allSatisfy { !$0.isEmpty })
  }

  /// Sampling too: each row draws from its own sampler, seeded as it would be alone.
  @Test func sampledRowsFollowTheirOwnSeed() throws {
    let m = try Self.model(stacked: true, bf16: false)
    var options = GenerationOptions()
    options.maxNewTokens = 6
    options.temperature = 0.9
    options.topP = 0.9
    options.seed = 21
    let prompts: [[Int32]] = [[4, 5], [6, 7, 8, 9]]
    let alone = prompts.map { ids in m.generate(embeddings: noGrad { m.embed(ids, shape: [1, ids.count]) }, history: ids, options: options) }
    let together = m.generateBatch(prompts: prompts.map { ids in noGrad { m.embed(ids, shape: [1, ids.count]) } }, histories: prompts, options: options)
    #expect(together == alone)
  }

  /// One decode step's logits for N rows equal each row's own single-row step.
  @Test func decodeStepLogitsMatchSingleRows() throws {
    let m = try Self.model(stacked: false, bf16: false)
    let prompts: [[Int32]] = [[1, 2, 3, 4], [7, 8]]
    func prefilled(_ ids: [Int32]) -> KVCache {
      let cache = KVCache(config: m.config, capacity: 16)
      _ = noGrad { m.hiddenStates(m.embed(ids, shape: [1, ids.count]), cache: cache) }
      return cache
    }
    let batched = m.decodeStep([10, 20], caches: prompts.map(prefilled))
    for (r, ids) in prompts.enumerated() {
      let cache = prefilled(ids)
      let h = noGrad { m.hiddenStates(m.embed([[10, 20][r]], shape: [1, 1]), cache: cache) }
      let single = noGrad { m.logits(reshape(h, [1, m.config.hiddenSize])) }
      var worst: Float = 0
      for j in 0..<m.config.vocabSize { worst = max(worst, abs(single.ptr[j] - batched.ptr[r * m.config.vocabSize + j])) }
      #expect(worst < 1e-5, "row \(r): \(worst)")
    }
  }
}
