import Foundation
import PivotNN
import PivotTensor

/// Loading is: read every shard → a per-model `sanitize` (renames, drops) → verify
/// (missing, unused and mis-shaped keys, all listed at once) → copy or map.
public enum ModelFolder {
  public static func config(_ dir: String) throws -> AnyModelConfig {
    try AnyModelConfig.read((dir as NSString).appendingPathComponent("config.json"))
  }

  /// Every tensor of a checkpoint folder, by name (mapped, converted to float32 where needed).
  /// With `keepingBF16`, BF16 matrices stay as their mapped bits (frozen, bfloat16-only).
  public static func weights(_ dir: String, keepingBF16: Bool = false) throws -> [String: Tensor] {
    let ckpt = try SafeTensorsCheckpoint(path: dir)
    var out: [String: Tensor] = [:]
    for name in ckpt.names {
      guard let e = ckpt.entry(name), [.f32, .f16, .bf16, .f64].contains(e.dtype) else { continue }
      out[name] = try ckpt.tensor(name, keepingBF16: keepingBF16)
    }
    return out
  }

  /// Loads `module` from `dir` after `sanitize`, mapping F32 tensors instead of copying.
  static func load(
    _ module: Module, from dir: String, keepingBF16: Bool = false, sanitize: ([String: Tensor]) -> [String: Tensor], allowMissing: Set<String> = []
  ) throws {
    let raw = try weights(dir, keepingBF16: keepingBF16)
    try module.load(sanitize(raw), source: dir, allowMissing: allowMissing, zeroCopy: true)
  }
}

extension CLIPVisionModel {
  /// Accepts transformers 5 names and the `vision_model.`-prefixed names of older
  /// CLIPVisionModel and full CLIPModel checkpoints (whose text half is dropped).
  public static func sanitize(_ w: [String: Tensor]) -> [String: Tensor] {
    let prefixed = w.keys.contains { $0.hasPrefix("vision_model.") }
    var out: [String: Tensor] = [:]
    for (k, v) in w where !k.hasSuffix("position_ids") {
      if prefixed {
        if k.hasPrefix("vision_model.") { out[String(k.dropFirst("vision_model.".count))] = v }
      } else if !k.hasPrefix("text_model.") && !["visual_projection.weight", "text_projection.weight", "logit_scale"].contains(k) {
        out[k] = v
      }
    }
    return out
  }
}

extension Dinov2Model {
  public static func sanitize(_ w: [String: Tensor]) -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    let renames = [(".attention.attention.query.", ".attention.q_proj."), (".attention.attention.key.", ".attention.k_proj."),
                   (".attention.attention.value.", ".attention.v_proj."), (".attention.output.dense.", ".attention.o_proj.")]
    for (k, v) in w where !k.hasPrefix("pooler") {
      var name = k.hasPrefix("dinov2.") ? String(k.dropFirst(7)) : k
      for (old, new) in renames { name = name.replacingOccurrences(of: old, with: new) }
      out[name] = v
    }
    return out
  }
}

extension QFormer {
  /// Accepts a Blip2QFormerModel folder or the `qformer.*` part of a full BLIP-2 checkpoint.
  public static func sanitize(_ w: [String: Tensor]) -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    let hasPrefix = w.keys.contains { $0.hasPrefix("qformer.") }
    for (k, v) in w {
      if hasPrefix { if k.hasPrefix("qformer.") { out[String(k.dropFirst(8))] = v } } else if !k.hasPrefix("embeddings.") { out[k] = v }
    }
    return out
  }
}

extension DecoderLM {
  /// Drops rotary buffers older checkpoints carry and a duplicate head when tied.
  public static func sanitize(_ w: [String: Tensor], config: DecoderConfig) -> [String: Tensor] {
    w.filter { k, _ in !k.hasSuffix("rotary_emb.inv_freq") && !(config.tieWordEmbeddings && k == "lm_head.weight") }
  }

  /// An HF `Qwen2ForCausalLM` / `LlamaForCausalLM` folder. With `keepingBF16` (inference), the
  /// checkpoint's BF16 matrices are used in place, mapped and never widened: no copy, half the
  /// memory, and the first token comes without converting a billion bytes first.
  public static func load(folder dir: String, keepingBF16: Bool = false) throws -> DecoderLM {
    guard case .decoder(let config) = try ModelFolder.config(dir) else {
      throw ModelLoadError(file: (dir as NSString).appendingPathComponent("config.json"), reason: "not a decoder LLM config", hint: "expected model_type qwen2 or llama")
    }
    let model = withoutInitialization { DecoderLM(config) }
    try ModelFolder.load(model, from: dir, keepingBF16: keepingBF16) { sanitize($0, config: config) }
    return model
  }
}

/// A vision tower from an HF folder (CLIPVisionModel, CLIPModel or Dinov2Model).
public func loadVisionTower(folder dir: String, inputSize: Int? = nil) throws -> any VisionTower {
  guard case .vision(let config) = try ModelFolder.config(dir) else {
    throw ModelLoadError(file: (dir as NSString).appendingPathComponent("config.json"), reason: "not a vision tower config", hint: "expected clip_vision_model, clip or dinov2")
  }
  switch config {
  case .clip(let c):
    let m = withoutInitialization { CLIPVisionModel(c) }
    try ModelFolder.load(m, from: dir, sanitize: CLIPVisionModel.sanitize)
    return m
  case .dinov2(let c):
    let m = withoutInitialization { Dinov2Model(c, inputSize: inputSize) }
    try ModelFolder.load(m, from: dir, sanitize: Dinov2Model.sanitize, allowMissing: ["embeddings.mask_token"])
    return m
  }
}

extension ChatModel {
  /// Composes a model from HF folders. The vision tower and the LLM load their weights; the
  /// Q-Former loads from `qformer` when given (a Blip2QFormerModel or BLIP-2 folder), otherwise
  /// it and the projection start from HF's initialisation.
  public static func compose(
    vision visionDir: String, llm llmDir: String, qformer qformerDir: String? = nil, qformerConfig: QFormerConfig? = nil,
    numQueryTokens: Int = 32, imageSize: Int? = nil, featureLayer: Int = -1, imageTokenId: Int32, chatTemplate: String = "chatml", seed: UInt64 = 0
  ) throws -> ChatModel {
    guard case .vision(let vision) = try ModelFolder.config(visionDir) else {
      throw ModelLoadError(file: visionDir, reason: "not a vision tower folder")
    }
    guard case .decoder(let decoder) = try ModelFolder.config(llmDir) else {
      throw ModelLoadError(file: llmDir, reason: "not a decoder LLM folder")
    }
    var q: QFormerConfig
    if let qformerDir {
      guard case .qformer(let qc) = try ModelFolder.config(qformerDir) else { throw ModelLoadError(file: qformerDir, reason: "not a Q-Former folder") }
      q = qc
    } else {
      q = qformerConfig ?? QFormerConfig()
    }
    q.encoderHiddenSize = vision.hiddenSize
    let config = ChatModelConfig(vision: vision, qformer: q, decoder: decoder, numQueryTokens: numQueryTokens, imageSize: imageSize,
                                 featureLayer: featureLayer, imageTokenId: imageTokenId, chatTemplate: chatTemplate)
    let model = ChatModel(config, seed: seed, initializeVision: false, initializeLLM: false)
    let towerNames = Set(model.visionTower.namedParameters().map(\.0))
    switch vision {
    case .clip: try ModelFolder.load(model.visionTower, from: visionDir, sanitize: CLIPVisionModel.sanitize)
    case .dinov2: try ModelFolder.load(model.visionTower, from: visionDir, sanitize: Dinov2Model.sanitize, allowMissing: towerNames.filter { $0.hasSuffix("mask_token") })
    }
    try ModelFolder.load(model.languageModel, from: llmDir) { DecoderLM.sanitize($0, config: decoder) }
    if let qformerDir, let qformer = model.qformer {
      let raw = try ModelFolder.weights(qformerDir)
      try qformer.load(QFormer.sanitize(raw), source: qformerDir, allowUnused: true, zeroCopy: true)
      if let qt = raw["query_tokens"] { try model.load(["query_tokens": qt], source: qformerDir, allowUnused: true, allowMissing: Set(model.namedParameters().map(\.0)).subtracting(["query_tokens"])) }
    }
    return model
  }

  /// A Pivot model folder: `pivot_config.json` + `model.safetensors` with every weight, or the
  /// HF-layout folders `exportHF` writes (`vision/`, `qformer/` or `projector/`, `llm/`).
  public static func load(folder dir: String) throws -> ChatModel {
    let config = try ChatModelConfig.read((dir as NSString).appendingPathComponent("pivot_config.json"))
    let model = withoutInitialization { ChatModel(config) }
    let optional = Set(model.namedParameters().map(\.0).filter { $0.hasSuffix("mask_token") })
    let fm = FileManager.default
    if !fm.fileExists(atPath: (dir as NSString).appendingPathComponent("model.safetensors")),
      fm.fileExists(atPath: (dir as NSString).appendingPathComponent("llm/model.safetensors"))
    {
      var weights: [String: Tensor] = [:]
      func add(_ sub: String, prefix: String, file: String = "model.safetensors", sanitize: ([String: Tensor]) -> [String: Tensor] = { $0 }) throws {
        let path = ((dir as NSString).appendingPathComponent(sub) as NSString).appendingPathComponent(file)
        let ckpt = try SafeTensorsCheckpoint(path: path)
        var part: [String: Tensor] = [:]
        for name in ckpt.names { part[name] = try ckpt.tensor(name) }
        for (name, t) in sanitize(part) { weights[prefix + name] = t }
      }
      switch config.vision {
      case .clip: try add("vision", prefix: "vision_tower.", sanitize: CLIPVisionModel.sanitize)
      case .dinov2: try add("vision", prefix: "vision_tower.", sanitize: Dinov2Model.sanitize)
      }
      try add("llm", prefix: "language_model.")
      switch config.bridge {
      case .qformer:
        try add("qformer", prefix: "qformer.")
        try add("qformer", prefix: "", file: "projector.safetensors")
      case .mlp:
        try add("projector", prefix: "")
      }
      try model.load(weights, source: dir, allowMissing: optional, zeroCopy: true)
      return model
    }
    try model.load(try ModelFolder.weights(dir), source: dir, allowMissing: optional, zeroCopy: true)
    return model
  }

  /// Writes a Pivot model folder (atomically per file). Adapters are merged into their
  /// weights: the folder is a plain model.
  public func save(folder dir: String, dtype: SafeTensorsDType = .f32) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try writeJSON(config.json, to: (dir as NSString).appendingPathComponent("pivot_config.json"))
    try writeSafeTensors(mergedParameters(), to: URL(fileURLWithPath: dir).appendingPathComponent("model.safetensors"),
                         metadata: ["format": "pt", "producer": "pivot"], dtype: dtype)
  }

  /// HF-layout folders that `transformers` loads: `vision/` (CLIPVisionModel or Dinov2Model),
  /// `llm/` (Qwen2ForCausalLM or LlamaForCausalLM), and the bridge: `qformer/`
  /// (Blip2QFormerModel; `projector.safetensors` beside it holds `query_tokens` and
  /// `language_projection.*`) or `projector/` (`multi_modal_projector.linear_1/2.*`, the names
  /// of LlavaForConditionalGeneration, which `LlavaMultiModalProjector` loads).
  public func exportHF(to dir: String, tokenizerFile: String? = nil) throws {
    let fm = FileManager.default
    var parts: [(String, [String: Any], [(String, Tensor)])] = [("vision", config.vision.json, visionTower.mergedParameters())]
    if let qformer {
      parts.append(("qformer", config.qformer.json.merging(["architectures": ["Blip2QFormerModel"]]) { a, _ in a }, qformer.mergedParameters()))
    }
    if let multiModalProjector {
      let projectorConfig: [String: Any] = config.mlp.json.merging([
        "model_type": "llava_projector", "vision_hidden_size": config.vision.hiddenSize, "text_hidden_size": config.decoder.hiddenSize,
        "patch_grid": config.patchGrid, "vision_feature_select_strategy": "default",
      ]) { a, _ in a }
      parts.append(("projector", projectorConfig, multiModalProjector.mergedParameters(prefix: "multi_modal_projector")))
    }
    parts.append(("llm", config.decoder.json, languageModel.mergedParameters()))
    for (sub, cfg, params) in parts {
      let path = (dir as NSString).appendingPathComponent(sub)
      try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
      try writeJSON(cfg, to: (path as NSString).appendingPathComponent("config.json"))
      try writeSafeTensors(params, to: URL(fileURLWithPath: path).appendingPathComponent("model.safetensors"), metadata: ["format": "pt"])
    }
    if let queryTokens, let languageProjection {
      let projector = [("query_tokens", queryTokens)] + languageProjection.mergedParameters(prefix: "language_projection")
      try writeSafeTensors(projector, to: URL(fileURLWithPath: dir).appendingPathComponent("qformer/projector.safetensors"), metadata: ["format": "pt"])
    }
    if let tokenizerFile {
      let dst = ((dir as NSString).appendingPathComponent("llm") as NSString).appendingPathComponent("tokenizer.json")
      try? fm.removeItem(atPath: dst)
      try fm.copyItem(atPath: tokenizerFile, toPath: dst)
    }
    try writeJSON(config.json, to: (dir as NSString).appendingPathComponent("pivot_config.json"))
  }
}

/// Pretty JSON with sorted keys, written atomically. Floating-point values keep their
/// decimal point (`1.0`, not `1`): transformers' strict configs reject an int where a float belongs.
public func writeJSON(_ object: Any, to path: String) throws {
  var out = ""
  encodeJSON(object, indent: 0, into: &out)
  try (out + "\n").data(using: .utf8)!.write(to: URL(fileURLWithPath: path), options: .atomic)
}

func encodeJSON(_ value: Any, indent: Int, into out: inout String) {
  let pad = String(repeating: "  ", count: indent + 1), close = String(repeating: "  ", count: indent)
  switch value {
  case let b as Bool: out += b ? "true" : "false"
  case let i as Int: out += String(i)
  case let i as Int32: out += String(i)
  case let d as Double: out += d.isFinite ? (d == d.rounded() && abs(d) < 1e15 ? String(format: "%.1f", d) : "\(d)") : "null"
  case let f as Float: encodeJSON(Double(f), indent: indent, into: &out)
  case let s as String:
    let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
    out += String(String(data: data, encoding: .utf8)!.dropFirst().dropLast())
  case let a as [Any]:
    if a.isEmpty { out += "[]"; return }
    out += "[\n"
    for (i, v) in a.enumerated() {
      out += pad
      encodeJSON(v, indent: indent + 1, into: &out)
      out += i + 1 < a.count ? ",\n" : "\n"
    }
    out += close + "]"
  case let d as [String: Any]:
    if d.isEmpty { out += "{}"; return }
    out += "{\n"
    let keys = d.keys.sorted()
    for (i, k) in keys.enumerated() {
      out += pad
      encodeJSON(k, indent: indent + 1, into: &out)
      out += ": "
      encodeJSON(d[k]!, indent: indent + 1, into: &out)
      out += i + 1 < keys.count ? ",\n" : "\n"
    }
    out += close + "}"
  default: out += "null"
  }
}

extension DecoderLM {
  /// An HF folder (`config.json` + `model.safetensors`) that transformers and Pivot load.
  public func save(folder dir: String, dtype: SafeTensorsDType = .f32) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try writeJSON(config.json, to: (dir as NSString).appendingPathComponent("config.json"))
    try writeSafeTensors(mergedParameters(), to: URL(fileURLWithPath: dir).appendingPathComponent("model.safetensors"), metadata: ["format": "pt"], dtype: dtype)
  }
}
