import Foundation
import PivotModels
import PivotNN
import PivotTensor
@testable import PivotTrain
import Testing

/// LoRA against PEFT + transformers (Tools/make_lora_fixtures.py, tiny Qwen2 and LLaMA, r 4,
/// alpha 8 on every projection): logits and loss ≤ 1e-5, every adapter gradient
/// ≤ 1e-5 + 1e-4·max|g|, 10 AdamW losses ≤ 1e-5 relative; PEFT's verdict on Pivot's adapter folder
/// and transformers' on Pivot's merged folder; merged equals unmerged; the checks on bad adapters.
@Suite("LoRA against PEFT", .serialized)
struct LoRATests {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/lora").path
  static func path(_ family: String, _ sub: String) -> String { "\(root)/\(family)/\(sub)" }

  struct Reference {
    let file: SafeTensorsFile
    let meta: [String: Any]
    init(_ family: String) throws {
      file = try SafeTensorsFile(path: LoRATests.path(family, "reference.safetensors"))
      meta = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: LoRATests.path(family, "reference.json")))) as! [String: Any]
    }
    func tensor(_ name: String) throws -> Tensor { try file.tensor(name).clone() }
    func ids(_ name: String) throws -> [Int32] { try file.int64s(name).map { Int32($0) } }
  }

  static func maxDiff(_ a: Tensor, _ b: Tensor) -> Float {
    precondition(a.count == b.count, "sizes \(a.shape) vs \(b.shape)")
    var m: Float = 0
    for i in 0..<a.count { m = max(m, abs(a.ptr[i] - b.ptr[i])) }
    return m
  }

  /// Logits (B, T, V) and the causal-LM loss of `m` on the fixture's batch.
  static func run(_ m: DecoderLM, _ ref: Reference) throws -> (logits: Tensor, loss: Tensor) {
    let ids = try ref.ids("ids"), labels = try ref.ids("labels")
    let (b, t) = (2, ids.count / 2)
    let hidden = m.hiddenStates(m.embed(ids, shape: [b, t]))
    let logits = noGrad { reshape(m.logits(reshape(hidden, [b * t, m.config.hiddenSize])), [b, t, m.config.vocabSize]) }
    return (logits, m.causalLMLoss(hidden, labels: labels).loss)
  }

  /// The base with PEFT's own adapter folder applied, only the adapters trainable.
  static func adapted(_ family: String, adapter: String = "peft_adapter") throws -> DecoderLM {
    let m = try DecoderLM.load(folder: path(family, "base"))
    try PEFTAdapter.apply(path(family, adapter), to: m, model: path(family, "base"))
    try m.freeze()
    try m.unfreeze(LoRA.adapterPatterns)
    return m
  }

  @Test(arguments: ["qwen2", "llama"])
  func logitsLossAndGradientsMatchPEFT(family: String) throws {
    let ref = try Reference(family)
    let m = try Self.adapted(family)
    #expect(m.adaptedLinears().count == 14)  // 7 projections × 2 layers
    #expect(m.trainableParameters().allSatisfy { LoRA.isAdapterName($0.0) })
    let (logits, loss) = try Self.run(m, ref)
    #expect(Self.maxDiff(logits, try ref.tensor("logits")) <= 1e-5)
    let base = try Self.run(try DecoderLM.load(folder: Self.path(family, "base")), ref).logits
    #expect(Self.maxDiff(base, logits) > 1e-3, "the fixture's adapter should change the logits")
    #expect(abs(loss.item - (try ref.tensor("loss")).item) <= 1e-5)
    loss.backward()
    var checked = 0
    for (name, p) in m.trainableParameters() {
      let g = try ref.tensor("grad.base_model.model.\(name)")
      guard let mine = p.grad else { Issue.record("\(name): no gradient"); continue }
      let bound = 1e-5 + 1e-4 * (g.scalars.map(abs).max() ?? 0)
      #expect(Self.maxDiff(mine, g) <= bound, "gradient \(name)")
      checked += 1
    }
    #expect(checked == 28)
    // The frozen base: no gradient buffers at all.
    #expect(m.namedParameters().filter { !LoRA.isAdapterName($0.0) }.allSatisfy { $0.1.grad == nil })
  }

  @Test(arguments: ["qwen2", "llama"])
  func tenAdamWStepsMatchPyTorch(family: String) throws {
    let ref = try Reference(family)
    let m = try Self.adapted(family)
    let opt = AdamW(parameters: m.trainableParameters(), groups: [ParameterGroup(name: "all", patterns: ["*"], weightDecay: Float(ref.meta["weight_decay"] as! Double))])
    let expected = ref.meta["adamw_losses"] as! [Double]
    for (i, want) in expected.enumerated() {
      opt.zeroGrad()
      let (_, loss) = try Self.run(m, ref)
      #expect(abs(Double(loss.item) - want) <= 1e-5 * abs(want), "step \(i + 1): Pivot \(loss.item), PyTorch \(want)")
      loss.backward()
      opt.step(lr: Float(ref.meta["lr"] as! Double))
    }
  }

  @Test(arguments: ["qwen2", "llama"])
  func mergedAndPivotWrittenFoldersMatchPEFTAndTransformers(family: String) throws {
    let ref = try Reference(family)
    let m = try Self.adapted(family)
    let unmerged = try Self.run(m, ref).logits
    // PEFT's merge_and_unload, and transformers on the merged folder Pivot wrote.
    #expect(Self.maxDiff(unmerged, try ref.tensor("merged_logits")) <= 1e-5)
    #expect(Self.maxDiff(unmerged, try ref.tensor("transformers_on_pivot_merged")) <= 1e-5)
    #expect(Self.maxDiff(unmerged, try ref.tensor("peft_on_pivot_adapter")) <= 1e-5)
    let merged = try DecoderLM.load(folder: Self.path(family, "pivot_export"))
    #expect(merged.adaptedLinears().isEmpty)
    #expect(Self.maxDiff(unmerged, try Self.run(merged, ref).logits) <= 1e-5)

    // What Pivot writes now is what PEFT was shown: same keys, same values; it applies back.
    let dir = tempDir("lora-write-\(family)")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try PEFTAdapter.write(m, to: dir, baseModel: "base")
    let mine = try SafeTensorsFile(path: "\(dir)/\(PEFTAdapter.weightsFile)")
    let shown = try SafeTensorsFile(path: Self.path(family, "pivot_export/adapter/\(PEFTAdapter.weightsFile)"))
    #expect(mine.names == shown.names)
    #expect(mine.names.allSatisfy { $0.hasPrefix("base_model.model.model.layers.") })
    for name in mine.names { #expect(Self.maxDiff(try mine.tensor(name), try shown.tensor(name)) == 0, "\(name)") }
    let again = try DecoderLM.load(folder: Self.path(family, "base"))
    try PEFTAdapter.apply(dir, to: again, model: "base")
    #expect(Self.maxDiff(unmerged, try Self.run(again, ref).logits) == 0)
  }

  @Test func anAdapterForAnotherBaseIsRefused() throws {
    // Same shapes, other weights: the recorded fingerprint names the mismatch.
    let llama = try DecoderLM.load(folder: Self.path("llama", "base"))
    let wrongBase = #expect(throws: ModelLoadError.self) {
      try PEFTAdapter.apply(Self.path("qwen2", "pivot_export/adapter"), to: llama, model: "llama-base")
    }
    #expect("\(wrongBase!)".contains("another base than llama-base"))
    // The merged model already holds its adapter: applying it again is refused too.
    let merged = try DecoderLM.load(folder: Self.path("qwen2", "pivot_export"))
    #expect(throws: ModelLoadError.self) { try PEFTAdapter.apply(Self.path("qwen2", "pivot_export/adapter"), to: merged, model: "merged") }
    // Other shapes: every offending tensor is named, with both folders.
    var c = DecoderConfig()
    c.vocabSize = 96; c.hiddenSize = 16; c.intermediateSize = 48; c.numHiddenLayers = 2; c.numAttentionHeads = 4; c.numKeyValueHeads = 2
    let small = DecoderLM(c)
    let shapes = #expect(throws: ModelLoadError.self) { try PEFTAdapter.apply(Self.path("qwen2", "peft_adapter"), to: small, model: "small-model") }
    #expect("\(shapes!)".contains("small-model"))
    #expect("\(shapes!)".contains("peft_adapter"))
    #expect("\(shapes!)".contains("needs [4, 16]"))
  }

  @Test func unsupportedAdapterOptionsAreErrors() throws {
    let dir = tempDir("lora-bad-config")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: Self.path("qwen2", "peft_adapter/\(PEFTAdapter.weightsFile)"), toPath: "\(dir)/\(PEFTAdapter.weightsFile)")
    let good = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.path("qwen2", "peft_adapter/adapter_config.json")))) as! [String: Any]
    for (key, value, words) in [("use_dora", true as Any, "DoRA"), ("peft_type", "IA3" as Any, "peft_type"), ("r", 0 as Any, "'r'"),
                                ("lora_alpha", -1 as Any, "lora_alpha"), ("bias", "all" as Any, "bias"), ("rank_pattern", ["q_proj": 8] as Any, "rank_pattern")] {
      var c = good
      c[key] = value
      try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: "\(dir)/adapter_config.json"))
      let m = try DecoderLM.load(folder: Self.path("qwen2", "base"))
      let e = #expect(throws: ModelLoadError.self) { try PEFTAdapter.apply(dir, to: m, model: "base") }
      #expect("\(e!)".contains(words) && "\(e!)".contains("adapter_config.json"), "\(key): \(e!)")
    }
    // Targets that select a layer the file has no tensors for: the file is incomplete.
    var c = good
    c["target_modules"] = ["q_proj", "lm_head"]
    try JSONSerialization.data(withJSONObject: c).write(to: URL(fileURLWithPath: "\(dir)/adapter_config.json"))
    let m = try DecoderLM.load(folder: Self.path("qwen2", "base"))
    let e = #expect(throws: ModelLoadError.self) { try PEFTAdapter.apply(dir, to: m, model: "base") }
    #expect("\(e!)".contains("lm_head"))
  }

  @Test func targetSuffixesWhenTheyPickExactlyTheAdaptedSet() {
    let all = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    #expect(PEFTAdapter.targetModules(for: Set(all), among: all) == ["q_proj", "v_proj"])
    let some = Set([all[0], all[1]])
    #expect(PEFTAdapter.targetModules(for: some, among: all) == some.sorted())
    #expect(PEFTAdapter.selects(["q_proj"], all[0], isOutputLayer: false))
    #expect(!PEFTAdapter.selects(["proj"], all[0], isOutputLayer: false))
    #expect(PEFTAdapter.selects(".*layers\\.1.*q_proj", all[2], isOutputLayer: false))
    #expect(!PEFTAdapter.selects(".*layers\\.1.*q_proj", all[0], isOutputLayer: false))
    #expect(PEFTAdapter.selects("all-linear", all[0], isOutputLayer: false) && !PEFTAdapter.selects("all-linear", "lm_head", isOutputLayer: true))
  }
}

@Suite("LoRA training", .serialized)
struct LoRATrainingTests {
  static let lora = """
    lora:
      r: 4
      alpha: 8
      dropout: 0.1
      targets: ['model.layers.*_proj']
    """

  static func adaptedTinyDecoder(_ r: Recipe) throws -> DecoderLM {
    let m = tinyDecoder()
    try m.attachLoRA(r.lora!, seed: r.seed, source: r.file)
    return m
  }

  @Test func onlyAdaptersTrainAndResumeIsExact() throws {
    let full = tempDir("lora-full"), part = tempDir("lora-part")
    defer { try? FileManager.default.removeItem(atPath: full); try? FileManager.default.removeItem(atPath: part) }
    let r = try recipe(output: full, steps: 8, saveEvery: 4, extra: Self.lora)
    #expect(r.lora == LoRASettings(rank: 4, alpha: 8, dropout: 0.1, targets: ["model.layers.*_proj"]))
    let model = try Self.adaptedTinyDecoder(r)
    let before = model.model.layers[0].selfAttn.qProj.weight.clone()
    let t1 = try Trainer(recipe: r, model: model, source: SyntheticSource(seed: 9, vocab: 48))
    // Stage text with LoRA: the adapters alone train; the base has no gradient and no moments.
    #expect(t1.model.trainableParameters().count == 2 * 14)
    #expect(t1.model.trainableParameters().allSatisfy { LoRA.isAdapterName($0.0) })
    #expect(t1.parameterRows().contains { $0.module.hasSuffix("(lora)") && $0.trainable > 0 && $0.frozen == 0 })
    var losses: [Double] = []
    try t1.run { if case .step(let m) = $0 { losses.append(m.loss) } }
    #expect(losses.last! < losses.first!, "the adapters should learn the counting pattern")
    #expect(Self.maxDiff(before, model.model.layers[0].selfAttn.qProj.weight) == 0, "the base weight must not move")
    // The checkpoint holds the adapters only.
    let saved = try SafeTensorsFile(path: "\(full)/step-000008/model.safetensors")
    #expect(saved.names.count == 28 && saved.names.allSatisfy(LoRA.isAdapterName))

    // Resume from step 4 in a fresh process-like setup: the same last four losses, bit for bit
    // (dropout masks come from the step, so they repeat).
    let r2 = try recipe(output: part, steps: 8, saveEvery: 4, extra: Self.lora)
    let t2 = try Trainer(recipe: r2, model: try Self.adaptedTinyDecoder(r2), source: SyntheticSource(seed: 9, vocab: 48))
    try FileManager.default.createDirectory(atPath: part, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: "\(full)/step-000004", toPath: "\(part)/step-000004")
    try t2.resume(from: "\(part)/step-000004")
    var resumed: [Double] = []
    try t2.run { if case .step(let m) = $0 { resumed.append(m.loss) } }
    #expect(resumed == Array(losses.suffix(4)))
  }

  static func maxDiff(_ a: Tensor, _ b: Tensor) -> Float { LoRATests.maxDiff(a, b) }

  @Test func bfloat16BaseTrainsAdaptersInFloat32() throws {
    let out = tempDir("lora-bf16")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let r = try recipe(output: out, steps: 6, extra: Self.lora + "\nmodel:\n  frozen_dtype: bf16")
    let model = try Self.adaptedTinyDecoder(r)
    let t = try Trainer(recipe: r, model: model, source: SyntheticSource(seed: 9, vocab: 48))
    let q = model.model.layers[0].selfAttn.qProj
    #expect(q.weight.bf16Values != nil && q.loraA!.bf16Values == nil && q.loraA!.requiresGrad)
    var losses: [Double] = []
    try t.run { if case .step(let m) = $0 { losses.append(m.loss) } }
    #expect(losses.count == 6 && losses.allSatisfy(\.isFinite) && losses.last! < losses.first!)
  }

  @Test func mergedComposedModelEqualsUnmerged() throws {
    var vision = CLIPVisionConfig()
    vision.hiddenSize = 8; vision.intermediateSize = 16; vision.numHiddenLayers = 1; vision.numAttentionHeads = 2
    vision.imageSize = 28; vision.patchSize = 7
    var decoder = DecoderConfig()
    decoder.vocabSize = 32; decoder.hiddenSize = 12; decoder.intermediateSize = 24; decoder.numHiddenLayers = 2
    decoder.numAttentionHeads = 2; decoder.numKeyValueHeads = 1
    let config = ChatModelConfig(vision: .clip(vision), bridge: .mlp, qformer: QFormerConfig(), mlp: MLPBridgeConfig(poolGrid: 2),
                                 decoder: decoder, numQueryTokens: 0)
    let m = ChatModel(config, seed: 4)
    let adapted = try m.attachLoRA(LoRASettings(rank: 2, alpha: 4, targets: ["language_model.*_proj", "multi_modal_projector.linear_1"]), seed: 1, source: "test")
    #expect(adapted.count == 15)
    var rng = PivotRNG(seed: 8)
    for (_, l) in m.adaptedLinears() { rng.fillNormal(l.loraB!, std: 0.2) }
    let pixels = Tensor(empty: [1, 3, 28, 28])
    rng.fillNormal(pixels, std: 1)
    let ids: [Int32] = [1, 2, 3, 3, 3, 3, 4, 5, 6]
    let labels: [Int32] = [-100, -100, -100, -100, -100, -100, 4, 5, 6]
    let unmerged = noGrad { m.loss(ids: ids, labels: labels, batch: 1, length: 9, pixels: pixels, imageStarts: [2]).loss.item }
    let dir = tempDir("lora-merged-chat")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try m.save(folder: dir)
    let plain = try ChatModel.load(folder: dir)
    #expect(plain.adaptedLinears().isEmpty)
    let merged = noGrad { plain.loss(ids: ids, labels: labels, batch: 1, length: 9, pixels: pixels, imageStarts: [2]).loss.item }
    #expect(abs(unmerged - merged) <= 1e-5 * abs(unmerged))
    let base = ChatModel(config, seed: 4)
    let without = noGrad { base.loss(ids: ids, labels: labels, batch: 1, length: 9, pixels: pixels, imageStarts: [2]).loss.item }
    #expect(abs(without - unmerged) > 1e-4, "the adapters should change the loss")
  }

  @Test func badLoRARecipesNameTheKey() throws {
    for (block, key) in [("lora: {r: 0, targets: ['*']}", "lora.r"), ("lora: {r: 4, alpha: 0, targets: ['*']}", "lora.alpha"),
                         ("lora: {r: 4, dropout: 1.0, targets: ['*']}", "lora.dropout"), ("lora: {r: 4}", "lora.targets"),
                         ("lora: {r: 4, targets: ['*'], rank: 3}", "lora.rank")] {
      let e = #expect(throws: RecipeError.self) { try recipe(output: "/tmp/x", steps: 1, extra: block) }
      #expect(e?.key == key && e?.file == "test.yaml", "\(block): \(String(describing: e))")
    }
    let r = try recipe(output: "/tmp/x", steps: 1, extra: "lora: {r: 4, targets: ['vision_tower.*']}")
    let e = #expect(throws: LoRAError.self) { try tinyDecoder().attachLoRA(r.lora!, seed: 0, source: r.file) }
    #expect("\(e!)".contains("test.yaml") && "\(e!)".contains("vision_tower.*") && "\(e!)".contains("model.layers.0"))
  }
}
