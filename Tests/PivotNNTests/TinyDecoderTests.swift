import Foundation
import PivotNN
import PivotTensor
import Testing

func nnFixture(_ name: String) -> URL {
  Bundle.module.resourceURL!.appendingPathComponent("Fixtures").appendingPathComponent(name)
}

func maxDiff(_ a: Tensor, _ b: Tensor) -> Float {
  precondition(a.count == b.count)
  var m: Float = 0
  for i in 0..<a.count { m = max(m, abs(a.ptr[i] - b.ptr[i])) }
  return m
}

func maxAbs(_ a: Tensor) -> Float { a.scalars.map(abs).max() ?? 0 }

/// Embedding → attention block (RMSNorm, RoPE, grouped-query heads) → SwiGLU MLP → LM head,
/// built from the engine's ops with LLaMA's parameter names.
final class TinyBlock: Module, @unchecked Sendable {
  final class Attention: Module, @unchecked Sendable {
    let qProj, kProj, vProj, oProj: Linear
    init(_ c: Int, _ nh: Int, _ nkv: Int, rng: inout PivotRNG) {
      let hs = c / nh
      qProj = Linear(c, nh * hs, bias: false, rng: &rng)
      kProj = Linear(c, nkv * hs, bias: false, rng: &rng)
      vProj = Linear(c, nkv * hs, bias: false, rng: &rng)
      oProj = Linear(nh * hs, c, bias: false, rng: &rng)
    }
  }
  final class MLP: Module, @unchecked Sendable {
    let gateProj, upProj, downProj: Linear
    init(_ c: Int, _ f: Int, rng: inout PivotRNG) {
      gateProj = Linear(c, f, bias: false, rng: &rng)
      upProj = Linear(c, f, bias: false, rng: &rng)
      downProj = Linear(f, c, bias: false, rng: &rng)
    }
  }
  final class Layer: Module, @unchecked Sendable {
    let selfAttn: Attention
    let mlp: MLP
    let inputLayernorm, postAttentionLayernorm: RMSNorm
    init(_ c: Int, _ nh: Int, _ nkv: Int, _ f: Int, rng: inout PivotRNG) {
      selfAttn = Attention(c, nh, nkv, rng: &rng)
      mlp = MLP(c, f, rng: &rng)
      inputLayernorm = RMSNorm(c)
      postAttentionLayernorm = RMSNorm(c)
    }
  }
  final class Body: Module, @unchecked Sendable {
    let embedTokens: Embedding
    let layers: [Layer]
    let norm: RMSNorm
    init(_ v: Int, _ c: Int, _ nh: Int, _ nkv: Int, _ f: Int, rng: inout PivotRNG) {
      embedTokens = Embedding(v, c, rng: &rng)
      layers = [Layer(c, nh, nkv, f, rng: &rng)]
      norm = RMSNorm(c)
    }
  }
  let model: Body
  let lmHead: Linear
  let nh = 4, nkv = 2

  init(rng: inout PivotRNG) {
    model = Body(32, 16, 4, 2, 24, rng: &rng)
    lmHead = Linear(16, 32, bias: false, rng: &rng)
  }

  func logits(_ ids: [Int32], b: Int, t: Int) -> Tensor {
    var h = model.embedTokens(ids, shape: [b, t])  // (B, T, C)
    let layer = model.layers[0]
    let c = h.size(-1), hs = c / nh
    let x = layer.inputLayernorm(h)
    let positions = Array(0..<t)
    let q = rope(reshape(layer.selfAttn.qProj(x), [b, t, nh, hs]), positions: positions, theta: 10000)
    let k = rope(reshape(layer.selfAttn.kProj(x), [b, t, nkv, hs]), positions: positions, theta: 10000)
    let v = reshape(layer.selfAttn.vProj(x), [b, t, nkv, hs])
    let a = reshape(attention(q, k, v, causal: true), [b, t, c])
    h = h + layer.selfAttn.oProj(a)
    let y = layer.postAttentionLayernorm(h)
    h = h + layer.mlp.downProj(silu(layer.mlp.gateProj(y)) * layer.mlp.upProj(y))
    return lmHead(model.norm(h))  // (B, T, V)
  }

  /// HF causal-LM loss: position t predicts labels[t + 1]; −100 is ignored.
  func loss(_ ids: [Int32], labels: [Int32], b: Int, t: Int) -> (Tensor, Tensor) {
    let l = logits(ids, b: b, t: t)
    var targets = [Int32](repeating: -100, count: b * t)
    for r in 0..<b { for i in 0..<(t - 1) { targets[r * t + i] = labels[r * t + i + 1] } }
    return (l, crossEntropy(reshape(l, [b * t, 32]), targets: targets))
  }
}

struct DecoderFixture {
  let file: SafeTensorsFile
  let meta: [String: Any]
  let ids: [Int32], labels: [Int32]
  let b: Int, t: Int

  init(_ tag: String) throws {
    file = try SafeTensorsFile(url: nnFixture("\(tag).safetensors"))
    meta = try JSONSerialization.jsonObject(with: Data(contentsOf: nnFixture("\(tag).json"))) as! [String: Any]
    ids = try file.int64s("input_ids").map { Int32($0) }
    labels = try file.int64s("labels").map { Int32($0) }
    b = file.entries["input_ids"]!.shape[0]
    t = file.entries["input_ids"]!.shape[1]
  }

  func model() throws -> TinyBlock {
    var rng = PivotRNG(seed: 0)
    let m = TinyBlock(rng: &rng)
    var weights: [String: Tensor] = [:]
    for (name, _) in m.namedParameters() { weights[name] = try file.tensor(name) }
    try m.load(weights, source: file.path)
    return m
  }
}

@Suite("Tiny decoder against PyTorch")
struct TinyDecoderTests {
  @Test func parameterNamesAreHuggingFaceNames() throws {
    var rng = PivotRNG(seed: 0)
    let names = TinyBlock(rng: &rng).namedParameters().map(\.0)
    #expect(names.contains("model.layers.0.self_attn.q_proj.weight"))
    #expect(names.contains("model.layers.0.post_attention_layernorm.weight"))
    #expect(names.contains("model.embed_tokens.weight"))
    #expect(names.contains("lm_head.weight"))
    let fx = try DecoderFixture("tiny_llama")
    let hfNames = Set(fx.file.names.filter { !$0.hasPrefix("grad.") && !$0.hasPrefix("final.") && !["input_ids", "labels", "logits"].contains($0) })
    #expect(Set(names) == hfNames)
  }

  /// Logits within 1e-5, loss within 1e-5 relative, every gradient within 1e-5 + 1e-4·|g|.
  @Test func logitsLossAndEveryGradientMatch() throws {
    let fx = try DecoderFixture("tiny_llama")
    let m = try fx.model()
    let (logits, loss) = m.loss(fx.ids, labels: fx.labels, b: fx.b, t: fx.t)
    let refLogits = try fx.file.tensor("logits")
    #expect(maxDiff(logits, refLogits) < 1e-5, "logits max diff \(maxDiff(logits, refLogits))")
    let refLoss = fx.meta["loss"] as! Double
    #expect(abs(Double(loss.item) - refLoss) / refLoss < 1e-5, "loss \(loss.item) vs \(refLoss)")
    loss.backward()
    for (name, p) in m.namedParameters() {
      let ref = try fx.file.tensor("grad.\(name)")
      let g = try #require(p.grad, "no gradient for \(name)")
      let d = maxDiff(g, ref)
      #expect(d <= 1e-5 + 1e-4 * maxAbs(ref), "gradient \(name): max diff \(d) (max |ref| \(maxAbs(ref)))")
    }
  }

  /// Ten AdamW steps (lr 1e-2, wd 0.01, clip 1.0): each loss within 1e-5 relative.
  @Test func tenAdamWStepsMatch() throws {
    let fx = try DecoderFixture("tiny_llama")
    let m = try fx.model()
    let opt = AdamW(parameters: m.trainableParameters(), groups: [ParameterGroup(name: "all", patterns: ["*"], weightDecay: 0.01)])
    let ref = fx.meta["adamw_losses"] as! [Double]
    for (step, expected) in ref.enumerated() {
      opt.zeroGrad()
      let (_, loss) = m.loss(fx.ids, labels: fx.labels, b: fx.b, t: fx.t)
      loss.backward()
      opt.clipGradNorm(1.0)
      opt.step(lr: 1e-2)
      #expect(abs(Double(loss.item) - expected) / expected < 1e-5, "step \(step): loss \(loss.item) vs \(expected)")
    }
    for (name, p) in m.namedParameters() {
      let d = maxDiff(p, try fx.file.tensor("final.\(name)"))
      #expect(d < 1e-4, "parameter \(name) after 10 steps: max diff \(d)")
    }
  }
}

@Suite("Freezing")
struct FreezingTests {
  static let frozen = ["model.embed_tokens.*", "model.layers.0.self_attn.*", "model.layers.0.input_layernorm.*"]

  /// Half the model frozen: frozen parameters get no gradient and no optimizer state, their
  /// bytes do not change, and the trainable half's gradients equal PyTorch's with
  /// requires_grad=False on the same half.
  @Test func frozenHalfHasNoStateAndTrainableHalfMatches() throws {
    let fx = try DecoderFixture("tiny_llama_frozen")
    let m = try fx.model()
    try m.freeze(Self.frozen)
    let frozenParams = m.namedParameters().filter { !$0.1.requiresGrad }
    let trainable = m.trainableParameters()
    #expect(frozenParams.count == 6)  // embed, q, k, v, o, input norm
    let frozenBefore = frozenParams.map { $0.1.scalars }
    let opt = AdamW(parameters: trainable, groups: ParameterGroup.standard(weightDecay: 0.01))
    #expect(opt.parameterCount == trainable.reduce(0) { $0 + $1.1.count })
    #expect(opt.parameterCount < m.namedParameters().reduce(0) { $0 + $1.1.count })
    #expect(!opt.ranges.contains { r in frozenParams.contains { $0.0 == r.name } }, "a frozen parameter has optimizer state")
    let (_, loss) = m.loss(fx.ids, labels: fx.labels, b: fx.b, t: fx.t)
    loss.backward()
    for (name, p) in frozenParams { #expect(p.grad == nil, "frozen \(name) has a gradient buffer") }
    for (name, p) in trainable {
      let ref = try fx.file.tensor("grad.\(name)")
      let d = maxDiff(p.grad!, ref)
      #expect(d <= 1e-5 + 1e-4 * maxAbs(ref), "trainable \(name): max diff \(d)")
    }
    for _ in 0..<3 {
      opt.step(lr: 1e-2)
      opt.zeroGrad()
      m.loss(fx.ids, labels: fx.labels, b: fx.b, t: fx.t).1.backward()
    }
    for ((name, p), before) in zip(frozenParams, frozenBefore) {
      #expect(p.scalars == before, "frozen \(name) changed")
      #expect(p.grad == nil)
    }
  }

  @Test func tenStepsWithFrozenHalfMatch() throws {
    let fx = try DecoderFixture("tiny_llama_frozen")
    let m = try fx.model()
    try m.freeze(Self.frozen)
    let opt = AdamW(parameters: m.trainableParameters(), groups: [ParameterGroup(name: "all", patterns: ["*"], weightDecay: 0.01)])
    for (step, expected) in (fx.meta["adamw_losses"] as! [Double]).enumerated() {
      opt.zeroGrad()
      let (_, loss) = m.loss(fx.ids, labels: fx.labels, b: fx.b, t: fx.t)
      loss.backward()
      opt.clipGradNorm(1.0)
      opt.step(lr: 1e-2)
      #expect(abs(Double(loss.item) - expected) / expected < 1e-5, "step \(step): loss \(loss.item) vs \(expected)")
    }
  }

  @Test func patternThatMatchesNothingIsAnError() throws {
    var rng = PivotRNG(seed: 0)
    let m = TinyBlock(rng: &rng)
    #expect(throws: ModuleError.self) { try m.freeze(["model.vision.*"]) }
    do { try m.freeze(["model.vision.*"]) } catch { #expect("\(error)".contains("model.vision.*")) }
  }

  /// Gradient accumulation: two half-batches summed (each loss scaled by ½) equal the full batch.
  @Test func gradientAccumulationEqualsFullBatch() throws {
    let fx = try DecoderFixture("tiny_llama")
    let full = try fx.model(), acc = try fx.model()
    let o1 = AdamW(parameters: full.trainableParameters()), o2 = AdamW(parameters: acc.trainableParameters())
    // Equal counted-token halves make the mean of means the full mean: use row 0 twice.
    let ids = Array(fx.ids[0..<fx.t]) + Array(fx.ids[0..<fx.t])
    let labels = Array(fx.labels[0..<fx.t]) + Array(fx.labels[0..<fx.t])
    full.loss(ids, labels: labels, b: 2, t: fx.t).1.backward()
    for _ in 0..<2 { scale(acc.loss(Array(ids[0..<fx.t]), labels: Array(labels[0..<fx.t]), b: 1, t: fx.t).1, 0.5).backward() }
    #expect(abs(o1.gradNorm() - o2.gradNorm()) < 1e-5 * o1.gradNorm())
    for ((name, a), (_, b)) in zip(full.trainableParameters(), acc.trainableParameters()) {
      #expect(maxDiff(a.grad!, b.grad!) < 1e-6, "accumulated gradient \(name)")
    }
  }

  @Test func scheduleShapes() {
    let cos = LRSchedule.cosine(warmup: 10, totalSteps: 110, minRatio: 0.1)
    #expect(cos.lr(peak: 1, step: 0) < 0.2)
    #expect(abs(cos.lr(peak: 1, step: 9) - 1) < 1e-6)
    #expect(abs(cos.lr(peak: 1, step: 60) - 0.55) < 1e-5)
    #expect(abs(cos.lr(peak: 1, step: 110) - 0.1) < 1e-6)
    let lin = LRSchedule.linear(warmup: 0, totalSteps: 100, minRatio: 0)
    #expect(abs(lin.lr(peak: 2, step: 50) - 1) < 1e-6)
    #expect(LRSchedule.constant.lr(peak: 3, step: 1000) == 3)
  }
}
