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

  /// Tolerances against the float32 reference: float32 products differ from PyTorch's only in
  /// summation order; bfloat16 products round every operand to 8 significant bits (as
  /// `torch.autocast(dtype=torch.bfloat16)` does), so they are held to what that rounding allows.
  struct Tolerance {
    var loss = 1e-5, steps = 1e-4
    var gradAbs: Float = 1e-5, gradRel: Float = 1e-4
    static let float32 = Tolerance()
    static let bfloat16 = Tolerance(loss: 2e-4, steps: 1e-3, gradAbs: 5e-5, gradRel: 1e-2)
  }

  func train(stage: String, trainable: [String], recompute: Int, precision: MatmulPrecision = .float32) throws {
    try MatmulPrecision.with(precision) {
      try trainUnderPrecision(stage: stage, trainable: trainable, recompute: recompute, tolerance: precision == .float32 ? .float32 : .bfloat16)
    }
  }

  func trainUnderPrecision(stage: String, trainable: [String], recompute: Int, tolerance tol: Tolerance) throws {
    let fx = try Fixture("composed_tiny")
    let m = try Self.model(fx)
    m.languageModel.recomputedLayers = recompute
    try m.freeze()
    try m.unfreeze(trainable)
    let (ids, labels, b, t) = try Self.batch(fx, q: m.imageTokenCount)
    let pixels = try fx.tensor("pixels")
    let frozenBefore = m.namedParameters().filter { !$0.1.requiresGrad }.map { ($0.0, $0.1.scalars) }
    let (loss, _) = m.loss(ids: ids, labels: labels, batch: b, length: t, pixels: pixels, imageStarts: [0, 0])
    let ref = fx.meta["\(stage)_loss"] as! Double
    #expect(abs(Double(loss.item) - ref) / ref < tol.loss, "\(stage) loss \(loss.item) vs \(ref)")
    loss.backward()
    try expectGradients(m, fx, gradPrefix: "\(stage).grad.", atol: tol.gradAbs, rtol: tol.gradRel, only: { name in m.namedParameters().first { $0.0 == name }!.1.requiresGrad })
    for (name, p) in m.namedParameters() where !p.requiresGrad { #expect(p.grad == nil, "frozen \(name) has a gradient buffer") }

    let fresh = try Self.model(fx)
    fresh.languageModel.recomputedLayers = recompute
    try fresh.freeze()
    try fresh.unfreeze(trainable)
    Self.expectAdamWLosses(fresh, fx.meta["\(stage)_adamw_losses"] as! [Double], ids: ids, labels: labels, b: b, t: t, pixels: pixels,
                           tolerance: tol.steps, label: stage)
    let after = Dictionary(uniqueKeysWithValues: fresh.namedParameters().map { ($0.0, $0.1) })
    for (name, before) in frozenBefore { #expect(after[name]!.scalars == before, "frozen \(name) changed during \(stage)") }
  }

  /// AdamW (lr 1e-3, decay 0.01) on `m`'s trainable parameters: each step's loss against PyTorch's, relative.
  static func expectAdamWLosses(_ m: ChatModel, _ expected: [Double], ids: [Int32], labels: [Int32], b: Int, t: Int, pixels: Tensor,
                                tolerance: Double, label: String) {
    let opt = AdamW(parameters: m.trainableParameters(), groups: [ParameterGroup(name: "all", patterns: ["*"], weightDecay: 0.01)])
    for (step, want) in expected.enumerated() {
      opt.zeroGrad()
      let l = m.loss(ids: ids, labels: labels, batch: b, length: t, pixels: pixels, imageStarts: [0, 0]).loss
      l.backward()
      opt.step(lr: 1e-3)
      #expect(abs(Double(l.item) - want) / want < tolerance, "\(label) step \(step): \(l.item) vs \(want)")
    }
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

  /// Both stages with bfloat16 products (`model.matmul: bf16`): the float32 reference's loss,
  /// every gradient and 10 AdamW steps, within the rounding's tolerances (`Tolerance.bfloat16`).
  @Test(arguments: ["stage1", "stage2"]) func bfloat16Products(stage: String) throws {
    let trainable = ["qformer.*", "query_tokens", "language_projection.*"] + (stage == "stage2" ? ["language_model.*"] : [])
    try train(stage: stage, trainable: trainable, recompute: stage == "stage1" ? 1 : 0, precision: .bfloat16)
  }

  /// Stage 2 with LoRA against PEFT (Tools/make_model_fixtures.py: composed_lora_fixture): r 4,
  /// alpha 8 on every LLM projection and the bridge's projection, the Q-Former and queries in
  /// full. Loss ≤ 1e-5 relative, every trained gradient ≤ 1e-5 + 1e-4·max|g|, 10 AdamW losses
  /// ≤ 1e-5 relative.
  @Test func stage2WithLoRAMatchesPEFT() throws {
    let fx = try Fixture("composed_tiny")
    let lora = try Fixture("composed_tiny_lora")
    func adapted() throws -> ChatModel {
      let m = try Self.model(fx)
      let paths = try m.attachLoRA(LoRASettings(rank: 4, alpha: 8, targets: ["language_model.*_proj", "language_projection"]), seed: 0, source: "test")
      #expect(paths.count == 2 * 7 + 1)
      for (path, linear) in m.adaptedLinears() {
        linear.loraA!.copy(from: try lora.tensor("\(path).lora_A.weight"))
        linear.loraB!.copy(from: try lora.tensor("\(path).lora_B.weight"))
      }
      try m.freeze()
      try m.unfreeze(["qformer.*", "query_tokens", "language_projection.*"] + LoRA.adapterPatterns)
      for (_, linear) in m.adaptedLinears() {
        linear.weight.requiresGrad = false
        linear.bias?.requiresGrad = false
      }
      return m
    }
    let m = try adapted()
    #expect(Set(m.trainableParameters().map(\.0)) == Set(lora.meta["trainable"] as! [String]))
    let (ids, labels, b, t) = try Self.batch(fx, q: m.imageTokenCount)
    let pixels = try fx.tensor("pixels")
    let (loss, _) = m.loss(ids: ids, labels: labels, batch: b, length: t, pixels: pixels, imageStarts: [0, 0])
    let ref = lora.meta["loss"] as! Double
    #expect(abs(Double(loss.item) - ref) / ref < 1e-5, "loss \(loss.item) vs \(ref)")
    loss.backward()
    try expectGradients(m, lora, gradPrefix: "grad.", only: { name in m.trainableParameters().contains { $0.0 == name } })
    for (name, p) in m.namedParameters() where !p.requiresGrad { #expect(p.grad == nil, "frozen \(name) has a gradient buffer") }

    let fresh = try adapted()
    Self.expectAdamWLosses(fresh, lora.meta["adamw_losses"] as! [Double], ids: ids, labels: labels, b: b, t: t, pixels: pixels,
                           tolerance: 1e-5, label: "LoRA")
  }

  @Test func greedyGenerationWithAnImage() throws {
    let fx = try Fixture("composed_tiny")
    let m = try Self.model(fx)
    let q = m.imageTokenCount
    let prompt = (fx.meta["image_prompt"] as! [Int]).map { Int32($0) }
    let pixels = slice(try fx.tensor("pixels"), axis: 0, 0..<1)
    var options = GenerationOptions()
    options.maxNewTokens = 10
    let out = m.generate(ids: [Int32](repeating: Self.imageToken, count: q) + prompt, pixels: pixels, imageStart: 0, options: options)
    #expect(out.map(Int.init) == fx.meta["image_greedy"] as! [Int])
  }
}
