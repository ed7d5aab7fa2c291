import Foundation
import PivotModels
import PivotNN
import PivotTensor

/// The model a recipe describes, plus the base weight files it was built from.
public struct BuiltModel {
  public let model: any TrainableModel
  public let base: [BaseReference]
  /// Where to find the tokenizer when the recipe does not name one.
  public let tokenizerFolder: String?
  /// With `model.qformer_init`: where each Q-Former parameter came from (BERT or new).
  public var qformerInitTable: String? = nil
  /// Linear paths that carry a LoRA adapter (`lora:`).
  public var adapted: [String] = []
}

public enum ModelBuilder {
  /// `text` builds the decoder alone; `align`/`instruct` build the composed model, from a Pivot
  /// model folder, from HF folders, or from config files (random initialisation).
  /// With `lora:`, the adapters are attached after the base weights load (their names are
  /// not in the base files), so a checkpoint's adapters find their tensors on resume.
  public static func build(_ r: Recipe, hashBase: Bool = true) throws -> BuiltModel {
    var built = try buildBase(r, hashBase: hashBase)
    if let lora = r.lora {
      do {
        built.adapted = try built.model.attachLoRA(lora, seed: r.seed, source: r.file)
      } catch let e as LoRAError {
        throw RecipeError(file: r.file, line: nil, key: "lora.targets", message: e.reason)
      }
    }
    return built
  }

  static func buildBase(_ r: Recipe, hashBase: Bool) throws -> BuiltModel {
    let m = r.model
    func refs(_ dirs: [String?]) throws -> [BaseReference] {
      guard hashBase else { return [] }
      return try dirs.compactMap { $0 }.flatMap { try BaseReference.of(folder: $0) }
    }
    func fail(_ key: String, _ message: String) -> RecipeError { RecipeError(file: r.file, line: nil, key: key, message: message) }
    if r.stage == .text {
      if let llm = m.llm {
        return BuiltModel(model: try DecoderLM.load(folder: llm), base: try refs([llm]), tokenizerFolder: llm)
      }
      guard let cfgPath = m.llmConfig else { throw fail("model.llm", "stage text needs model.llm (an HF folder) or model.llm_config") }
      guard case .decoder(let c) = try AnyModelConfig.read(cfgPath) else { throw fail("model.llm_config", "\(cfgPath) is not a qwen2/llama config") }
      return BuiltModel(model: DecoderLM(c, seed: r.seed), base: [], tokenizerFolder: nil)
    }
    if let pivot = m.pivot {
      let model = try ChatModel.load(folder: pivot)
      return BuiltModel(model: model, base: try refs([pivot]), tokenizerFolder: pivot)
    }
    // Vision tower: HF folder or config.
    let visionConfig: VisionConfig
    if let v = m.vision {
      guard case .vision(let c) = try ModelFolder.config(v) else { throw fail("model.vision", "\(v) is not a vision tower folder") }
      visionConfig = c
    } else if let v = m.visionConfig {
      guard case .vision(let c) = try AnyModelConfig.read(v) else { throw fail("model.vision_config", "\(v) is not a vision config") }
      visionConfig = c
    } else {
      throw fail("model.vision", "stages align and instruct need model.vision, model.vision_config or model.pivot")
    }
    // LLM: HF folder or config.
    let decoderConfig: DecoderConfig
    if let l = m.llm {
      guard case .decoder(let c) = try ModelFolder.config(l) else { throw fail("model.llm", "\(l) is not a qwen2/llama folder") }
      decoderConfig = c
    } else if let l = m.llmConfig {
      guard case .decoder(let c) = try AnyModelConfig.read(l) else { throw fail("model.llm_config", "\(l) is not a qwen2/llama config") }
      decoderConfig = c
    } else {
      throw fail("model.llm", "stages align and instruct need model.llm, model.llm_config or model.pivot")
    }
    var q = QFormerConfig()
    if let qc = m.qformerConfig {
      guard case .qformer(let c) = try AnyModelConfig.read(qc) else { throw fail("model.qformer_config", "\(qc) is not a blip_2_qformer config") }
      q = c
    } else if let qd = m.qformer {
      guard case .qformer(let c) = try ModelFolder.config(qd) else { throw fail("model.qformer", "\(qd) is not a Q-Former folder") }
      q = c
    } else {
      // BLIP-2's shape, scaled to the vision width.
      q.hiddenSize = visionConfig.hiddenSize
      q.numAttentionHeads = max(1, visionConfig.hiddenSize / 64)
      q.intermediateSize = 4 * visionConfig.hiddenSize
      q.numHiddenLayers = 4
    }
    // A BERT-style encoder initialises the Q-Former: its shape becomes the Q-Former's.
    var bertInit: (weights: [String: Tensor], table: [(qformer: String, bert: String)], bertKeys: [String])?
    if let qi = m.qformerInit {
      if m.qformer != nil || m.qformerConfig != nil { throw fail("model.qformer_init", "give model.qformer_init or model.qformer/qformer_config, not both") }
      guard FileManager.default.fileExists(atPath: (qi as NSString).appendingPathComponent("config.json")) else {
        throw fail("model.qformer_init", "\(qi) is not a BERT-style encoder folder (no config.json there)")
      }
      var shape = try BertEncoderConfig.read(qi).qformerConfig(crossAttentionFrequency: q.crossAttentionFrequency, encoderHiddenSize: visionConfig.hiddenSize)
      if let layers = m.qformerLayers { shape.numHiddenLayers = layers }
      q = shape
      let raw = try ModelFolder.weights(qi)
      let mapped = try QFormer.bertInitialization(from: raw, config: q, source: qi)
      bertInit = (mapped.weights, mapped.table, raw.keys.sorted())
    }
    if let layers = m.qformerLayers { q.numHiddenLayers = layers }
    q.encoderHiddenSize = visionConfig.hiddenSize
    let bridge = BridgeKind(rawValue: m.bridge) ?? .qformer
    if bridge == .mlp && (m.qformer != nil || m.qformerConfig != nil || m.qformerInit != nil) {
      throw fail("model.bridge", "bridge mlp has no Q-Former: drop model.qformer, model.qformer_config and model.qformer_init")
    }
    if bridge == .qformer && m.mlpPoolGrid != nil { throw fail("model.mlp_pool_grid", "applies to bridge: mlp only") }
    let config = ChatModelConfig(vision: visionConfig, bridge: bridge, qformer: q, mlp: MLPBridgeConfig(poolGrid: m.mlpPoolGrid),
                                 decoder: decoderConfig, numQueryTokens: m.numQueryTokens,
                                 imageSize: m.imageSize, featureLayer: m.featureLayer, imageTokenId: 0, chatTemplate: m.chatTemplate,
                                 captionFormat: r.data.captionFormat)
    do { try config.validateBridge(file: r.file) } catch let e as ModelLoadError {
      let key = ["image_size", "feature_layer", "num_query_tokens"].first { e.reason.hasPrefix($0) } ?? "mlp_pool_grid"
      throw fail("model.\(key)", e.reason)
    }
    let model = ChatModel(config, seed: r.seed, initializeVision: m.vision == nil, initializeLLM: m.llm == nil)
    if let v = m.vision {
      let tower = try loadVisionTower(folder: v, inputSize: m.imageSize)
      try model.visionTower.load(Dictionary(uniqueKeysWithValues: tower.namedParameters()), source: v, zeroCopy: true)
    }
    if let l = m.llm {
      let llm = try DecoderLM.load(folder: l)
      try model.languageModel.load(Dictionary(uniqueKeysWithValues: llm.namedParameters()), source: l, zeroCopy: true)
    }
    if let qd = m.qformer, let qformer = model.qformer {
      let raw = try ModelFolder.weights(qd)
      try qformer.load(QFormer.sanitize(raw), source: qd, allowUnused: true, zeroCopy: true)
    }
    var built = BuiltModel(model: model, base: try refs([m.vision, m.llm, m.qformer, m.qformerInit]), tokenizerFolder: m.llm)
    if let bertInit, let qformer = model.qformer {
      try qformer.load(bertInitialization: bertInit.weights, source: m.qformerInit!)
      built.qformerInitTable = qformer.initializationTable(bertInit.table, bertKeys: bertInit.bertKeys)
    }
    return built
  }
}
