import Foundation
@testable import PivotModels
import PivotNN
import PivotTensor
import Testing

/// Each component against transformers on tiny random configs. Tolerances: outputs within
/// 1e-5 absolute (float32 through a few layers), gradients within 1e-5 + 1e-4·max|ref|.
@Suite("Components against transformers")
struct ComponentParityTests {
  @Test func clipVisionTower() throws {
    let fx = try Fixture("clip_tiny")
    guard case .vision(.clip(let config)) = try AnyModelConfig.parse(fx.config, file: "clip_tiny.json") else {
      Issue.record("not a CLIP config"); return
    }
    let m = CLIPVisionModel(config)
    try fx.load(m)
    let pixels = try fx.tensor("pixels")
    let last = noGrad { m.lastHiddenState(pixels) }
    #expect(maxDiff(last, try fx.tensor("last_hidden_state")) < 1e-5)
    m.featureLayer = -2
    m.applyPostLayerNorm = false
    #expect(maxDiff(noGrad { m.features(pixels) }, try fx.tensor("hidden_minus2")) < 1e-5, "feature layer −2")
    m.featureLayer = -1
    m.applyPostLayerNorm = true
    let feats = m.features(pixels)
    #expect(maxDiff(feats, try fx.tensor("features")) < 1e-5)
    feats.backward(seed: try fx.tensor("seed"))
    try expectGradients(m, fx)
  }

  @Test func dinov2TowerWithInterpolatedPositions() throws {
    let fx = try Fixture("dinov2_tiny")
    guard case .vision(.dinov2(let config)) = try AnyModelConfig.parse(fx.config, file: "dinov2_tiny.json") else {
      Issue.record("not a DINOv2 config"); return
    }
    let m = Dinov2Model(config, inputSize: 21)
    try fx.load(m)
    let out = m.lastHiddenState(try fx.tensor("pixels"))
    let d = maxDiff(out, try fx.tensor("last_hidden_state"))
    #expect(d < 2e-5, "max diff \(d)")
    out.backward(seed: try fx.tensor("seed"))
    try expectGradients(m, fx, only: { $0 != "embeddings.mask_token" })
  }

  @Test func qformer() throws {
    let fx = try Fixture("qformer_tiny")
    guard case .qformer(let config) = try AnyModelConfig.parse(fx.config, file: "qformer_tiny.json") else {
      Issue.record("not a Q-Former config"); return
    }
    let m = QFormer(config)
    #expect(m.encoder.layer[0].crossattention != nil && m.encoder.layer[1].crossattention == nil)
    try fx.load(m)
    let queries = try fx.tensor("queries"), image = try fx.tensor("image")
    queries.requiresGrad = true
    image.requiresGrad = true
    let out = m(queries, imageFeatures: image)
    #expect(maxDiff(out, try fx.tensor("out")) < 1e-5)
    out.backward(seed: try fx.tensor("seed"))
    try expectGradients(m, fx)
    #expect(maxDiff(queries.grad!, try fx.tensor("grad.queries")) < 1e-5)
    #expect(maxDiff(image.grad!, try fx.tensor("grad.image")) < 1e-5)
  }

  @Test(arguments: ["qwen2_tiny", "llama_tiny"])
  func decoder(_ name: String) throws {
    let fx = try Fixture(name)
    guard case .decoder(let config) = try AnyModelConfig.parse(fx.config, file: "\(name).json") else {
      Issue.record("not a decoder config"); return
    }
    let m = DecoderLM(config)
    try fx.load(m)
    let ids = try fx.ints("input_ids"), labels = try fx.ints("labels")
    let (b, t) = (2, ids.count / 2)
    let h = m.hiddenStates(m.embed(ids, shape: [b, t]))
    let logits = noGrad { m.logits(reshape(h, [b * t, config.hiddenSize])) }
    #expect(maxDiff(logits, try fx.tensor("logits")) < 1e-5, "logits")
    let (loss, _) = m.causalLMLoss(h, labels: labels)
    let ref = fx.meta["loss"] as! Double
    #expect(abs(Double(loss.item) - ref) / ref < 1e-5, "loss \(loss.item) vs \(ref)")
    loss.backward()
    try expectGradients(m, fx)

    // AdamW steps from the same weights (lr 3e-3, weight decay 0.01 on everything).
    let fresh = DecoderLM(config)
    try fx.load(fresh)
    let opt = AdamW(parameters: fresh.trainableParameters(), groups: [ParameterGroup(name: "all", patterns: ["*"], weightDecay: 0.01)])
    for (step, expected) in (fx.meta["adamw_losses"] as! [Double]).enumerated() {
      opt.zeroGrad()
      let l = fresh.causalLMLoss(fresh.hiddenStates(fresh.embed(ids, shape: [b, t])), labels: labels).loss
      l.backward()
      opt.step(lr: 3e-3)
      #expect(abs(Double(l.item) - expected) / expected < 1e-5, "step \(step): \(l.item) vs \(expected)")
    }
  }

  /// Greedy decoding with the KV cache gives transformers' generate ids, and the cached
  /// logits equal a full forward over the growing sequence at every step.
  @Test(arguments: ["qwen2_tiny", "llama_tiny"])
  func greedyGenerationAndCache(_ name: String) throws {
    let fx = try Fixture(name)
    guard case .decoder(let config) = try AnyModelConfig.parse(fx.config, file: "\(name).json") else { return }
    let m = DecoderLM(config)
    try fx.load(m)
    let prompt = (fx.meta["prompt"] as! [Int]).map { Int32($0) }
    var options = GenerationOptions()
    options.maxNewTokens = 12
    let out = m.generate(embeddings: noGrad { m.embed(prompt, shape: [1, prompt.count]) }, options: options)
    #expect(out.map(Int.init) == fx.meta["greedy"] as! [Int])
    noGrad {
      let cache = KVCache(config: config, capacity: 32)
      var seq = prompt
      var h = m.hiddenStates(m.embed(seq, shape: [1, seq.count]), cache: cache)
      for tok in out {
        let cachedLast = m.logits(slice(reshape(h, [h.shape[1], config.hiddenSize]), axis: 0, (h.shape[1] - 1)..<h.shape[1]))
        let full = m.hiddenStates(m.embed(seq, shape: [1, seq.count]))
        let fullLast = m.logits(slice(reshape(full, [seq.count, config.hiddenSize]), axis: 0, (seq.count - 1)..<seq.count))
        #expect(maxDiff(cachedLast, fullLast) < 1e-5, "cached logits differ at length \(seq.count)")
        seq.append(tok)
        h = m.hiddenStates(m.embed([tok], shape: [1, 1]), cache: cache)
      }
    }
  }
}
