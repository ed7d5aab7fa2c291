import Foundation
@testable import PivotModels
import PivotNN
import PivotTensor
import Testing

/// The composed model (frozen CLIP → Q-Former → projection → Qwen2) against the bench's
/// PyTorch composition at the tiny scale.
@Suite("Composed model against transformers")
struct ComposedParityTests {
  static let imageToken: Int32 = 1

  static func model(_ fx: Fixture) throws -> ChatModel {
    let c = fx.config
    guard case .vision(let vision) = try AnyModelConfig.parse(c["vision"] as! [String: Any], file: "vision"),
      case .qformer(let q) = try AnyModelConfig.parse(c["qformer"] as! [String: Any], file: "qformer"),
      case .decoder(let d) = try AnyModelConfig.parse(c["llm"] as! [String: Any], file: "llm")
    else { throw ModelLoadError(file: "composed_tiny.json", reason: "bad configs") }
    let m = ChatModel(ChatModelConfig(vision: vision, qformer: q, decoder: d, numQueryTokens: c["num_query_tokens"] as! Int, imageTokenId: imageToken))
    try fx.load(m)
    return m
  }

  /// ids = [image slot × Q ; text], labels = [−100 × Q ; text], as the bench builds them.
  static func batch(_ fx: Fixture, q: Int) throws -> (ids: [Int32], labels: [Int32], b: Int, t: Int) {
    let text = try fx.ints("input_ids")
    let b = 2, tt = text.count / 2
    var ids: [Int32] = [], labels: [Int32] = []
    for r in 0..<b {
      ids += [Int32](repeating: imageToken, count: q) + text[(r * tt)..<((r + 1) * tt)]
      labels += [Int32](repeating: -100, count: q) + text[(r * tt)..<((r + 1) * tt)]
    }
    return (ids, labels, b, q + tt)
  }

  func train(stage: String, trainable: [String], recompute: Int) throws {
    let fx = try Fixture("composed_tiny")
    let m = try Self.model(fx)
    m.languageModel.recomputedLayers = recompute
    try m.freeze()
    try m.unfreeze(trainable)
    let (ids, labels, b, t) = try Self.batch(fx, q: m.numQueryTokens)
    let pixels = try fx.tensor("pixels")
    let frozenBefore = m.namedParameters().filter { !$0.1.requiresGrad }.map { ($0.0, $0.1.scalars) }
    let (loss, _) = m.loss(ids: ids, labels: labels, batch: b, length: t, pixels: pixels, imageStarts: [0, 0])
    let ref = fx.meta["\(stage)_loss"] as! Double
    #expect(abs(Double(loss.item) - ref) / ref < 1e-5, "\(stage) loss \(loss.item) vs \(ref)")
    loss.backward()
    try expectGradients(m, fx, gradPrefix: "\(stage).grad.", only: { name in m.namedParameters().first { $0.0 == name }!.1.requiresGrad })
    for (name, p) in m.namedParameters() where !p.requiresGrad { #expect(p.grad == nil, "frozen \(name) has a gradient buffer") }

    let fresh = try Self.model(fx)
    fresh.languageModel.recomputedLayers = recompute
    try fresh.freeze()
    try fresh.unfreeze(trainable)
    let opt = AdamW(parameters: fresh.trainableParameters(), groups: [ParameterGroup(name: "all", patterns: ["*"], weightDecay: 0.01)])
    for (step, expected) in (fx.meta["\(stage)_adamw_losses"] as! [Double]).enumerated() {
      opt.zeroGrad()
      let l = fresh.loss(ids: ids, labels: labels, batch: b, length: t, pixels: pixels, imageStarts: [0, 0]).loss
      l.backward()
      opt.step(lr: 1e-3)
      #expect(abs(Double(l.item) - expected) / expected < 1e-4, "\(stage) step \(step): \(l.item) vs \(expected)")
    }
    let after = Dictionary(uniqueKeysWithValues: fresh.namedParameters().map { ($0.0, $0.1) })
    for (name, before) in frozenBefore { #expect(after[name]!.scalars == before, "frozen \(name) changed during \(stage)") }
  }

  /// Stage 1: only the Q-Former, queries and projection train; ViT and LLM bytes stay the same.
  /// `recompute`: that many LLM layers (of 2) rerun in backward instead of keeping their activations.
  @Test(arguments: [0, 1, 2]) func stage1Align(recompute: Int) throws {
    try train(stage: "stage1", trainable: ["qformer.*", "query_tokens", "language_projection.*"], recompute: recompute)
  }

  /// Stage 2: the LLM trains too.
  @Test(arguments: [0, 2]) func stage2Instruct(recompute: Int) throws {
    try train(stage: "stage2", trainable: ["qformer.*", "query_tokens", "language_projection.*", "language_model.*"], recompute: recompute)
  }

  @Test func greedyGenerationWithAnImage() throws {
    let fx = try Fixture("composed_tiny")
    let m = try Self.model(fx)
    let q = m.numQueryTokens
    let prompt = (fx.meta["image_prompt"] as! [Int]).map { Int32($0) }
    let pixels = slice(try fx.tensor("pixels"), axis: 0, 0..<1)
    var options = GenerationOptions()
    options.maxNewTokens = 10
    let out = m.generate(ids: [Int32](repeating: Self.imageToken, count: q) + prompt, pixels: pixels, imageStart: 0, options: options)
    #expect(out.map(Int.init) == fx.meta["image_greedy"] as! [Int])
  }
}
