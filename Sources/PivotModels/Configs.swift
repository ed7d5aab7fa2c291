import Foundation

/// A problem with a model folder: the file, what is wrong, and a hint.
public struct ModelLoadError: Error, CustomStringConvertible {
  public let file: String
  public let reason: String
  public let hint: String
  public init(file: String, reason: String, hint: String = "") {
    self.file = file
    self.reason = reason
    self.hint = hint
  }
  public var description: String { "\(file): \(reason)\(hint.isEmpty ? "" : " (\(hint))")" }
}

/// Reads `config.json` keys with defaults, so configs follow the HF files field for field.
struct ConfigReader {
  let dict: [String: Any]
  let file: String

  func int(_ key: String, _ fallback: Int? = nil) throws -> Int {
    if let v = dict[key] as? Int { return v }
    if let v = dict[key] as? Double, v == v.rounded() { return Int(v) }
    if let fallback { return fallback }
    throw ModelLoadError(file: file, reason: "missing integer '\(key)'", hint: "is this the right config.json?")
  }
  func float(_ key: String, _ fallback: Float? = nil) throws -> Float {
    if let v = dict[key] as? Double { return Float(v) }
    if let v = dict[key] as? Int { return Float(v) }
    if let fallback { return fallback }
    throw ModelLoadError(file: file, reason: "missing number '\(key)'")
  }
  func bool(_ key: String, _ fallback: Bool) -> Bool { dict[key] as? Bool ?? fallback }
  func string(_ key: String, _ fallback: String) -> String { dict[key] as? String ?? fallback }
  func ints(_ key: String) -> [Int] {
    if let v = dict[key] as? Int { return [v] }
    return dict[key] as? [Int] ?? []
  }
}

/// Checks a configuration before anything is allocated: every problem found, listed together,
/// each naming the key, the value and the rule.
struct ConfigCheck {
  let file: String
  private(set) var problems: [String] = []
  init(file: String) { self.file = file }

  /// Sizes Pivot allocates from: positive and below a bound no real model reaches, so a typo
  /// (or 10¹²) is an error instead of an allocation.
  mutating func size(_ key: String, _ value: Int, max: Int) {
    if value < 1 || value > max { problems.append("'\(key)' is \(value): must be between 1 and \(max)") }
  }
  mutating func positive(_ key: String, _ value: Float) {
    if !(value > 0 && value.isFinite) { problems.append("'\(key)' is \(value): must be a positive finite number") }
  }
  mutating func divides(_ divisorKey: String, _ divisor: Int, _ key: String, _ value: Int) {
    if divisor >= 1 && value % divisor != 0 { problems.append("'\(key)' \(value) is not a multiple of '\(divisorKey)' \(divisor)") }
  }
  mutating func oneOf(_ key: String, _ value: String, _ known: [String]) {
    if !known.contains(value) { problems.append("'\(key)' is '\(value)': Pivot computes \(known.joined(separator: ", "))") }
  }
  mutating func require(_ ok: Bool, _ message: String) { if !ok { problems.append(message) } }

  /// What every ViT config must satisfy (CLIP's and DINOv2's keys are the same).
  mutating func visionTower(hidden: Int, layers: Int, heads: Int, channels: Int, image: Int, patch: Int, act: String, eps: Float) {
    size("hidden_size", hidden, max: 16384)
    size("num_hidden_layers", layers, max: 256)
    size("num_attention_heads", heads, max: 1024)
    divides("num_attention_heads", heads, "hidden_size", hidden)
    require(channels == 3, "'num_channels' is \(channels): Pivot feeds RGB images (3)")
    size("image_size", image, max: 4096)
    size("patch_size", patch, max: 4096)
    require(patch <= image, "'patch_size' \(patch) is larger than 'image_size' \(image)")
    oneOf("hidden_act", act, knownActivations)
    positive("layer_norm_eps", eps)
  }

  func done() throws {
    guard !problems.isEmpty else { return }
    throw ModelLoadError(file: file, reason: "invalid configuration:\n" + problems.map { "  - \($0)" }.joined(separator: "\n"),
                         hint: "fix these keys of the config.json")
  }
}

/// Activations `activation(_:_:)` computes.
let knownActivations = ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "silu", "swish"]

public func readJSONObject(_ path: String) throws -> [String: Any] {
  guard let data = FileManager.default.contents(atPath: path) else {
    throw ModelLoadError(file: path, reason: "cannot read the file", hint: "a model folder needs config.json")
  }
  guard let obj = try? JSONSerialization.jsonObject(with: data), let dict = obj as? [String: Any] else {
    throw ModelLoadError(file: path, reason: "not a JSON object")
  }
  return dict
}

/// HF `CLIPVisionConfig` (also read from the `vision_config` of a full CLIP config).
public struct CLIPVisionConfig: Sendable, Equatable {
  public var hiddenSize = 768, intermediateSize = 3072, numHiddenLayers = 12, numAttentionHeads = 12
  public var numChannels = 3, imageSize = 224, patchSize = 32
  public var hiddenAct = "quick_gelu"
  public var layerNormEps: Float = 1e-5
  public var initializerRange: Float = 0.02, initializerFactor: Float = 1

  public init() {}
  init(_ r: ConfigReader) throws {
    hiddenSize = try r.int("hidden_size", 768)
    intermediateSize = try r.int("intermediate_size", 3072)
    numHiddenLayers = try r.int("num_hidden_layers", 12)
    numAttentionHeads = try r.int("num_attention_heads", 12)
    numChannels = try r.int("num_channels", 3)
    imageSize = try r.int("image_size", 224)
    patchSize = try r.int("patch_size", 32)
    hiddenAct = r.string("hidden_act", "quick_gelu")
    layerNormEps = try r.float("layer_norm_eps", 1e-5)
    initializerRange = try r.float("initializer_range", 0.02)
    initializerFactor = try r.float("initializer_factor", 1)
    var check = ConfigCheck(file: r.file)
    check.size("intermediate_size", intermediateSize, max: 131072)
    check.visionTower(hidden: hiddenSize, layers: numHiddenLayers, heads: numAttentionHeads, channels: numChannels,
                      image: imageSize, patch: patchSize, act: hiddenAct, eps: layerNormEps)
    try check.done()
  }
  public var json: [String: Any] {
    ["model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"], "hidden_size": hiddenSize, "intermediate_size": intermediateSize,
     "num_hidden_layers": numHiddenLayers, "num_attention_heads": numAttentionHeads, "num_channels": numChannels,
     "image_size": imageSize, "patch_size": patchSize, "hidden_act": hiddenAct, "layer_norm_eps": jd(layerNormEps),
     "initializer_range": jd(initializerRange), "initializer_factor": jd(initializerFactor)]
  }
}

/// HF `Dinov2Config`.
public struct Dinov2Config: Sendable, Equatable {
  public var hiddenSize = 384, numHiddenLayers = 12, numAttentionHeads = 6, mlpRatio = 4
  public var numChannels = 3, imageSize = 518, patchSize = 14
  public var hiddenAct = "gelu"
  public var layerNormEps: Float = 1e-6, layerscaleValue: Float = 1, initializerRange: Float = 0.02
  public var qkvBias = true, useSwigluFfn = false

  public init() {}
  init(_ r: ConfigReader) throws {
    hiddenSize = try r.int("hidden_size", 768)
    numHiddenLayers = try r.int("num_hidden_layers", 12)
    numAttentionHeads = try r.int("num_attention_heads", 12)
    mlpRatio = try r.int("mlp_ratio", 4)
    numChannels = try r.int("num_channels", 3)
    imageSize = try r.int("image_size", 224)
    patchSize = try r.int("patch_size", 14)
    hiddenAct = r.string("hidden_act", "gelu")
    layerNormEps = try r.float("layer_norm_eps", 1e-6)
    layerscaleValue = try r.float("layerscale_value", 1)
    initializerRange = try r.float("initializer_range", 0.02)
    qkvBias = r.bool("qkv_bias", true)
    useSwigluFfn = r.bool("use_swiglu_ffn", false)
    if useSwigluFfn { throw ModelLoadError(file: r.file, reason: "use_swiglu_ffn is not supported", hint: "Pivot runs the ViT-S/B/L DINOv2 variants") }
    var check = ConfigCheck(file: r.file)
    check.size("mlp_ratio", mlpRatio, max: 64)
    check.visionTower(hidden: hiddenSize, layers: numHiddenLayers, heads: numAttentionHeads, channels: numChannels,
                      image: imageSize, patch: patchSize, act: hiddenAct, eps: layerNormEps)
    try check.done()
  }
  public var json: [String: Any] {
    ["model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": hiddenSize, "num_hidden_layers": numHiddenLayers,
     "num_attention_heads": numAttentionHeads, "mlp_ratio": mlpRatio, "num_channels": numChannels, "image_size": imageSize,
     "patch_size": patchSize, "hidden_act": hiddenAct, "layer_norm_eps": jd(layerNormEps),
     "layerscale_value": jd(layerscaleValue), "initializer_range": jd(initializerRange), "qkv_bias": qkvBias, "use_swiglu_ffn": false]
  }
}

/// HF `Blip2QFormerConfig`.
public struct QFormerConfig: Sendable, Equatable {
  public var hiddenSize = 768, numHiddenLayers = 12, numAttentionHeads = 12, intermediateSize = 3072
  public var hiddenAct = "gelu"
  public var layerNormEps: Float = 1e-12, initializerRange: Float = 0.02
  public var crossAttentionFrequency = 2, encoderHiddenSize = 1408
  public var vocabSize = 30522, maxPositionEmbeddings = 512

  public init() {}
  init(_ r: ConfigReader) throws {
    hiddenSize = try r.int("hidden_size", 768)
    numHiddenLayers = try r.int("num_hidden_layers", 12)
    numAttentionHeads = try r.int("num_attention_heads", 12)
    intermediateSize = try r.int("intermediate_size", 3072)
    hiddenAct = r.string("hidden_act", "gelu")
    layerNormEps = try r.float("layer_norm_eps", 1e-12)
    initializerRange = try r.float("initializer_range", 0.02)
    crossAttentionFrequency = try r.int("cross_attention_frequency", 2)
    encoderHiddenSize = try r.int("encoder_hidden_size", 1408)
    vocabSize = try r.int("vocab_size", 30522)
    maxPositionEmbeddings = try r.int("max_position_embeddings", 512)
    if r.bool("use_qformer_text_input", false) {
      throw ModelLoadError(file: r.file, reason: "use_qformer_text_input is not supported", hint: "Pivot's Q-Former reads learned queries only")
    }
    var check = ConfigCheck(file: r.file)
    check.size("hidden_size", hiddenSize, max: 16384)
    check.size("num_hidden_layers", numHiddenLayers, max: 256)
    check.size("num_attention_heads", numAttentionHeads, max: 1024)
    check.divides("num_attention_heads", numAttentionHeads, "hidden_size", hiddenSize)
    check.size("intermediate_size", intermediateSize, max: 131072)
    check.size("cross_attention_frequency", crossAttentionFrequency, max: 256)
    check.size("encoder_hidden_size", encoderHiddenSize, max: 16384)
    check.oneOf("hidden_act", hiddenAct, knownActivations)
    check.positive("layer_norm_eps", layerNormEps)
    try check.done()
  }
  public var json: [String: Any] {
    ["model_type": "blip_2_qformer", "hidden_size": hiddenSize, "num_hidden_layers": numHiddenLayers, "num_attention_heads": numAttentionHeads,
     "intermediate_size": intermediateSize, "hidden_act": hiddenAct, "layer_norm_eps": jd(layerNormEps),
     "initializer_range": jd(initializerRange), "cross_attention_frequency": crossAttentionFrequency,
     "encoder_hidden_size": encoderHiddenSize, "vocab_size": vocabSize, "max_position_embeddings": maxPositionEmbeddings,
     "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "use_qformer_text_input": false]
  }
}

/// HF `Qwen2Config` / `LlamaConfig`: the decoder LLM.
public struct DecoderConfig: Sendable, Equatable {
  public enum Family: String, Sendable { case qwen2, llama }
  public var family = Family.qwen2
  public var vocabSize = 151936, hiddenSize = 896, intermediateSize = 4864
  public var numHiddenLayers = 24, numAttentionHeads = 14, numKeyValueHeads = 2
  public var headDim: Int? = nil
  public var hiddenAct = "silu"
  public var rmsNormEps: Float = 1e-6, ropeTheta: Float = 10000, initializerRange: Float = 0.02
  public var tieWordEmbeddings = false
  /// Bias on q, k and v (Qwen2 always; LLaMA when `attention_bias`, which also biases o).
  public var qkvBias = true, oBias = false, mlpBias = false
  public var maxPositionEmbeddings = 32768
  public var bosTokenId: Int? = nil
  public var eosTokenIds: [Int] = []

  public var resolvedHeadDim: Int { headDim ?? hiddenSize / numAttentionHeads }

  public init() {}
  init(_ r: ConfigReader) throws {
    let type = r.string("model_type", "")
    guard let fam = Family(rawValue: type) else {
      throw ModelLoadError(file: r.file, reason: "unknown decoder model_type '\(type)'", hint: "Pivot runs qwen2 and llama")
    }
    family = fam
    vocabSize = try r.int("vocab_size")
    hiddenSize = try r.int("hidden_size")
    intermediateSize = try r.int("intermediate_size")
    numHiddenLayers = try r.int("num_hidden_layers")
    numAttentionHeads = try r.int("num_attention_heads")
    numKeyValueHeads = try r.int("num_key_value_heads", numAttentionHeads)
    headDim = r.dict["head_dim"] as? Int
    hiddenAct = r.string("hidden_act", "silu")
    rmsNormEps = try r.float("rms_norm_eps", 1e-6)
    // transformers 5 moves rope_theta into rope_parameters.
    let ropeParams = r.dict["rope_parameters"] as? [String: Any] ?? r.dict["rope_scaling"] as? [String: Any] ?? [:]
    if let kind = ropeParams["rope_type"] as? String ?? ropeParams["type"] as? String, kind != "default" {
      throw ModelLoadError(file: r.file, reason: "rope type '\(kind)' is not supported", hint: "Pivot implements the default RoPE")
    }
    ropeTheta = try r.float("rope_theta", (ropeParams["rope_theta"] as? Double).map(Float.init) ?? 10000)
    initializerRange = try r.float("initializer_range", 0.02)
    tieWordEmbeddings = r.bool("tie_word_embeddings", fam == .qwen2 ? false : false)
    if fam == .qwen2 {
      qkvBias = true; oBias = false; mlpBias = false
    } else {
      qkvBias = r.bool("attention_bias", false); oBias = qkvBias; mlpBias = r.bool("mlp_bias", false)
    }
    maxPositionEmbeddings = try r.int("max_position_embeddings", 4096)
    bosTokenId = r.dict["bos_token_id"] as? Int
    eosTokenIds = r.ints("eos_token_id")
    var check = ConfigCheck(file: r.file)
    check.size("vocab_size", vocabSize, max: 4_000_000)
    check.size("hidden_size", hiddenSize, max: 65536)
    check.size("intermediate_size", intermediateSize, max: 524_288)
    check.size("num_hidden_layers", numHiddenLayers, max: 1024)
    check.size("num_attention_heads", numAttentionHeads, max: 1024)
    check.size("num_key_value_heads", numKeyValueHeads, max: 1024)
    check.divides("num_key_value_heads", numKeyValueHeads, "num_attention_heads", numAttentionHeads)
    if let headDim { check.size("head_dim", headDim, max: 4096) } else { check.divides("num_attention_heads", numAttentionHeads, "hidden_size", hiddenSize) }
    // The MLP is SwiGLU whatever the name says: another activation would compute something else silently.
    check.oneOf("hidden_act", hiddenAct, ["silu", "swish"])
    check.positive("rms_norm_eps", rmsNormEps)
    check.positive("rope_theta", ropeTheta)
    check.size("max_position_embeddings", maxPositionEmbeddings, max: 16_777_216)
    for id in eosTokenIds + (bosTokenId.map { [$0] } ?? []) where id < 0 || id >= vocabSize {
      check.require(false, "token id \(id) (bos_token_id / eos_token_id) is outside the vocabulary of \(vocabSize)")
    }
    try check.done()
  }

  public var json: [String: Any] {
    var d: [String: Any] = [
      "model_type": family.rawValue, "architectures": [family == .qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"],
      "vocab_size": vocabSize, "hidden_size": hiddenSize, "intermediate_size": intermediateSize,
      "num_hidden_layers": numHiddenLayers, "num_attention_heads": numAttentionHeads, "num_key_value_heads": numKeyValueHeads,
      "hidden_act": hiddenAct, "rms_norm_eps": jd(rmsNormEps), "rope_theta": jd(ropeTheta),
      "initializer_range": jd(initializerRange), "tie_word_embeddings": tieWordEmbeddings,
      "max_position_embeddings": maxPositionEmbeddings, "torch_dtype": "float32",
    ]
    if let headDim { d["head_dim"] = headDim }
    if family == .llama { d["attention_bias"] = qkvBias; d["mlp_bias"] = mlpBias }
    if let bosTokenId { d["bos_token_id"] = bosTokenId }
    if !eosTokenIds.isEmpty { d["eos_token_id"] = eosTokenIds.count == 1 ? eosTokenIds[0] as Any : eosTokenIds as Any }
    return d
  }
}

/// A vision tower's configuration, chosen by `model_type`.
public enum VisionConfig: Sendable, Equatable {
  case clip(CLIPVisionConfig)
  case dinov2(Dinov2Config)

  public var hiddenSize: Int {
    switch self { case .clip(let c): c.hiddenSize; case .dinov2(let c): c.hiddenSize }
  }
  public var imageSize: Int {
    switch self { case .clip(let c): c.imageSize; case .dinov2(let c): c.imageSize }
  }
  public var patchSize: Int {
    switch self { case .clip(let c): c.patchSize; case .dinov2(let c): c.patchSize }
  }
  public var json: [String: Any] {
    switch self { case .clip(let c): c.json; case .dinov2(let c): c.json }
  }
}

/// Every model config Pivot reads, by the `model_type` of a `config.json`.
public enum AnyModelConfig: Sendable {
  case vision(VisionConfig)
  case qformer(QFormerConfig)
  case decoder(DecoderConfig)

  public static func read(_ path: String) throws -> AnyModelConfig {
    try parse(readJSONObject(path), file: path)
  }

  public static func parse(_ dict: [String: Any], file: String) throws -> AnyModelConfig {
    let type = dict["model_type"] as? String ?? ""
    let r = ConfigReader(dict: dict, file: file)
    switch type {
    case "clip_vision_model": return .vision(.clip(try CLIPVisionConfig(r)))
    case "clip":
      guard let v = dict["vision_config"] as? [String: Any] else {
        throw ModelLoadError(file: file, reason: "CLIP config without vision_config")
      }
      return .vision(.clip(try CLIPVisionConfig(ConfigReader(dict: v, file: file))))
    case "dinov2": return .vision(.dinov2(try Dinov2Config(r)))
    case "blip_2_qformer": return .qformer(try QFormerConfig(r))
    case "qwen2", "llama": return .decoder(try DecoderConfig(r))
    default:
      throw ModelLoadError(
        file: file, reason: "unknown model_type '\(type)'",
        hint: "Pivot reads clip_vision_model, clip, dinov2, blip_2_qformer, qwen2 and llama")
    }
  }
}

/// A float32 config value as the decimal it was written as (1e-5, not 9.99999974e-06).
func jd(_ f: Float) -> Double { Double("\(f)") ?? Double(f) }
