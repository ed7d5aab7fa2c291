import Foundation
import PivotNN
import PivotTensor

/// Pivot's composition (DESIGN.md): image → vision tower → Q-Former over learned queries →
/// Linear into the LLM width → soft tokens placed in the text's image slot → decoder LLM.
/// Parameter names: `vision_tower.*` (the tower's HF names), `query_tokens`, `qformer.*`
/// (Blip2QFormerModel names), `language_projection.*`, `language_model.*` (the LLM's HF names).
public final class ChatModel: Module, @unchecked Sendable {
  public let visionTower: any VisionTower
  /// The Q-Former bridge (nil for the MLP bridge).
  public let queryTokens: Tensor?  // (1, Q, Dq)
  public let qformer: QFormer?
  public let languageProjection: Linear?
  /// The MLP bridge (nil for the Q-Former).
  public let multiModalProjector: MLPProjector?
  public let languageModel: DecoderLM
  public var config: ChatModelConfig

  /// Soft tokens per image: the Q-Former's queries, or the MLP's (pooled) patch count.
  public var imageTokenCount: Int { config.imageTokenCount }

  /// `initializeVision` / `initializeLLM` false skip drawing weights that a checkpoint will replace.
  public init(_ config: ChatModelConfig, seed: UInt64 = 0, initializeVision: Bool = true, initializeLLM: Bool = true) {
    self.config = config
    var rng = PivotRNG(seed: seed)
    let visionSeed = rng.next()
    func maybe<T>(_ initialize: Bool, _ body: () -> T) -> T { initialize ? body() : withoutInitialization(body) }
    switch config.vision {
    case .clip(let c):
      let tower = maybe(initializeVision) { CLIPVisionModel(c, seed: visionSeed) }
      tower.featureLayer = config.featureLayer
      visionTower = tower
    case .dinov2(let c):
      let tower = maybe(initializeVision) { Dinov2Model(c, inputSize: config.imageSize, seed: visionSeed) }
      tower.featureLayer = config.featureLayer
      visionTower = tower
    }
    switch config.bridge {
    case .qformer:
      var q = config.qformer
      q.encoderHiddenSize = config.vision.hiddenSize
      let tokens = Tensor(empty: [1, config.numQueryTokens, q.hiddenSize])
      rng.fillNormal(tokens, std: q.initializerRange)
      tokens.requiresGrad = true
      queryTokens = tokens
      qformer = QFormer(q, seed: rng.next())
      languageProjection = Linear(q.hiddenSize, config.decoder.hiddenSize, bias: true, std: q.initializerRange, rng: &rng)
      multiModalProjector = nil
    case .mlp:
      queryTokens = nil
      qformer = nil
      languageProjection = nil
      multiModalProjector = MLPProjector(visionWidth: config.vision.hiddenSize, textWidth: config.decoder.hiddenSize,
                                         hiddenAct: config.mlp.hiddenAct, std: config.mlp.initializerRange, rng: &rng)
    }
    let llmSeed = rng.next()
    languageModel = maybe(initializeLLM) { DecoderLM(config.decoder, seed: llmSeed) }
  }

  /// Parameter patterns of the bridge (what stage 1 trains).
  public var bridgePatterns: [String] {
    switch config.bridge {
    case .qformer: ["query_tokens", "qformer.*", "language_projection.*"]
    case .mlp: ["multi_modal_projector.*"]
    }
  }

  /// The frozen Linears of the vision tower and the frozen weights of the LLM keep only a
  /// bfloat16 copy (the bridge trains in every stage and stays float32).
  @discardableResult
  public func storeFrozenWeightsInBF16() -> Int {
    visionTower.storeFrozenLinearWeightsInBF16() + languageModel.storeFrozenWeightsInBF16()
  }

  var visionIsFrozen: Bool { !visionTower.parameters().contains { $0.requiresGrad } }

  /// Soft tokens (B, N, D) for pixels (B, 3, H, W). A frozen tower runs without recording.
  public func imageTokens(_ pixels: Tensor) -> Tensor {
    let features = visionIsFrozen ? noGrad { visionTower.features(pixels) } : visionTower.features(pixels)
    return softTokens(imageFeatures: features)
  }

  /// Soft tokens (B, N, D) from vision features (B, S, Dv): the Q-Former over the learned
  /// queries, then the projection; or the patch rows (class token dropped, LLaVA's `default`
  /// selection), average-pooled over the grid when configured, then the MLP.
  /// The bridge's products stay float32 under `matmul: bf16`: its updates (about lr per element,
  /// ~0.1% of a weight) are below bfloat16's resolution (0.4%), so rounded weights would hide
  /// most steps' changes; it is about 1% of a step's products.
  public func softTokens(imageFeatures features: Tensor) -> Tensor {
    MatmulPrecision.with(.float32) { bridgeForward(features) }
  }

  func bridgeForward(_ features: Tensor) -> Tensor {
    let b = features.shape[0]
    switch config.bridge {
    case .qformer:
      let queries = b == 1 ? queryTokens! : concat(Array(repeating: queryTokens!, count: b), axis: 0)
      return languageProjection!(qformer!(queries, imageFeatures: features))
    case .mlp:
      let g = config.patchGrid, s = features.shape[1]
      precondition(s == g * g || s == g * g + 1, "vision features \(features.shape) for a \(g)×\(g) patch grid")
      var patches = s == g * g ? features : slice(features, axis: 1, 1..<s)  // (B, G·G, Dv)
      if let p = config.mlp.poolGrid, p != g { patches = adaptiveAvgPoolGrid(patches, grid: g, to: p) }  // (B, P·P, Dv)
      return multiModalProjector!(patches)
    }
  }

  /// Token embeddings (B, T, D) with each row's image slot (N positions starting at
  /// `imageStarts[b]`) replaced by soft tokens. `pixels` holds one image per row whose start is
  /// not nil, in row order, so text-only rows cost no vision work.
  public func inputEmbeddings(ids: [Int32], batch b: Int, length t: Int, pixels: Tensor?, imageStarts: [Int?]) -> Tensor {
    let text = languageModel.embed(ids, shape: [b, t])
    guard let pixels else { return text }
    let q = imageTokenCount
    precondition(imageStarts.count == b, "\(imageStarts.count) image slots for \(b) rows")
    precondition(pixels.shape[0] == imageStarts.compactMap { $0 }.count, "\(pixels.shape[0]) images for \(imageStarts.compactMap { $0 }.count) image slots")
    let soft = reshape(imageTokens(pixels), [pixels.shape[0] * q, languageModel.config.hiddenSize])  // (N·Q, D)
    var rows: [Int] = []
    for (r, start) in imageStarts.enumerated() {
      guard let start else { continue }
      precondition(start + q <= t, "image slot at \(start) + \(q) soft tokens does not fit in \(t) positions")
      rows += (0..<q).map { r * t + start + $0 }
    }
    return scatterRows(text, rows: rows, from: soft)
  }

  /// Mean next-token loss over counted labels (−100 elsewhere, including the image slot).
  public func loss(ids: [Int32], labels: [Int32], batch b: Int, length t: Int, pixels: Tensor?, imageStarts: [Int?]) -> (loss: Tensor, counted: Int) {
    let x = inputEmbeddings(ids: ids, batch: b, length: t, pixels: pixels, imageStarts: imageStarts)
    return languageModel.causalLMLoss(languageModel.hiddenStates(x), labels: labels)
  }
}

/// How the parts are put together, saved as `pivot_config.json` beside the weights.
public struct ChatModelConfig: Sendable {
  public var vision: VisionConfig
  public var bridge: BridgeKind
  /// The Q-Former's configuration (used when `bridge` is qformer).
  public var qformer: QFormerConfig
  /// The MLP bridge's settings (used when `bridge` is mlp).
  public var mlp: MLPBridgeConfig
  public var decoder: DecoderConfig
  public var numQueryTokens: Int
  /// Input resolution of the images (the tower's own unless overridden, e.g. DINOv2 at 224).
  public var imageSize: Int
  public var featureLayer: Int
  /// Token id of the placeholder the chat template expands into the image slot.
  public var imageTokenId: Int32
  public var chatTemplate: String
  /// How captions were last trained: `chat` (the chat template with an instruction) or
  /// `plain` (LLaVA's stage-1 format: the image slot, then the caption and an end token).
  public var captionFormat: String

  public init(vision: VisionConfig, bridge: BridgeKind = .qformer, qformer: QFormerConfig, mlp: MLPBridgeConfig = MLPBridgeConfig(),
              decoder: DecoderConfig, numQueryTokens: Int, imageSize: Int? = nil,
              featureLayer: Int = -1, imageTokenId: Int32 = 0, chatTemplate: String = "chatml", captionFormat: String = "chat") {
    self.vision = vision
    self.bridge = bridge
    self.qformer = qformer
    self.mlp = mlp
    self.decoder = decoder
    self.numQueryTokens = numQueryTokens
    self.imageSize = imageSize ?? vision.imageSize
    self.featureLayer = featureLayer
    self.imageTokenId = imageTokenId
    self.chatTemplate = chatTemplate
    self.captionFormat = captionFormat
  }

  /// Side of the tower's patch grid at `imageSize`.
  public var patchGrid: Int { imageSize / vision.patchSize }

  /// Soft tokens per image.
  public var imageTokenCount: Int {
    switch bridge {
    case .qformer: numQueryTokens
    case .mlp: (mlp.poolGrid ?? patchGrid) * (mlp.poolGrid ?? patchGrid)
    }
  }

  public var json: [String: Any] {
    var d: [String: Any] = [
      "vision": vision.json, "bridge": bridge.rawValue, "decoder": decoder.json,
      "image_size": imageSize, "feature_layer": featureLayer, "image_token_id": Int(imageTokenId), "chat_template": chatTemplate,
      "caption_format": captionFormat, "format": "pivot-chat-model", "version": 1,
    ]
    switch bridge {
    case .qformer:
      d["qformer"] = qformer.json
      d["num_query_tokens"] = numQueryTokens
    case .mlp:
      d["mlp"] = mlp.json
    }
    return d
  }

  public static func read(_ path: String) throws -> ChatModelConfig {
    let d = try readJSONObject(path)
    guard d["format"] as? String == "pivot-chat-model" else {
      throw ModelLoadError(file: path, reason: "not a Pivot chat-model config (format != pivot-chat-model)")
    }
    let r = ConfigReader(dict: d, file: path)
    let bridgeName = d["bridge"].map { "\($0)" } ?? "qformer"
    guard d["bridge"] == nil || d["bridge"] is String, let bridge = BridgeKind(rawValue: bridgeName) else {
      throw ModelLoadError(file: path, reason: "unknown bridge '\(bridgeName)'", hint: "qformer or mlp")
    }
    guard let v = d["vision"] as? [String: Any], let l = d["decoder"] as? [String: Any] else {
      throw ModelLoadError(file: path, reason: "needs vision and decoder sections")
    }
    guard case .vision(let vision) = try AnyModelConfig.parse(v, file: path + " [vision]") else {
      throw ModelLoadError(file: path, reason: "the vision section is not a vision tower config")
    }
    guard case .decoder(let decoder) = try AnyModelConfig.parse(l, file: path + " [decoder]") else {
      throw ModelLoadError(file: path, reason: "the decoder section is not a qwen2/llama config")
    }
    var qformer = QFormerConfig()
    var mlp = MLPBridgeConfig()
    switch bridge {
    case .qformer:
      guard let q = d["qformer"] as? [String: Any] else { throw ModelLoadError(file: path, reason: "bridge qformer needs a qformer section") }
      guard case .qformer(let qc) = try AnyModelConfig.parse(q, file: path + " [qformer]") else {
        throw ModelLoadError(file: path, reason: "the qformer section is not a blip_2_qformer config")
      }
      qformer = qc
    case .mlp:
      let m = ConfigReader(dict: d["mlp"] as? [String: Any] ?? [:], file: path + " [mlp]")
      mlp.poolGrid = m.dict["pool_grid"] == nil ? nil : try m.int("pool_grid")
      mlp.hiddenAct = m.string("projector_hidden_act", "gelu")
      mlp.initializerRange = try m.float("initializer_range", 0.02)
    }
    let captionFormat = d["caption_format"] ?? "chat"
    guard let captionFormat = captionFormat as? String, ["chat", "plain"].contains(captionFormat) else {
      throw ModelLoadError(file: path, reason: "caption_format is \(captionFormat): must be \"chat\" or \"plain\"")
    }
    let config = ChatModelConfig(
      vision: vision, bridge: bridge, qformer: qformer, mlp: mlp, decoder: decoder,
      numQueryTokens: bridge == .qformer ? try r.int("num_query_tokens") : 0,
      imageSize: try r.int("image_size", vision.imageSize), featureLayer: try r.int("feature_layer", -1),
      imageTokenId: Int32(try r.int("image_token_id", 0)), chatTemplate: r.string("chat_template", "chatml"),
      captionFormat: captionFormat)
    try config.validateBridge(file: path)
    return config
  }

  /// The composition's own settings: the image size against the tower's patches, the feature
  /// layer inside the tower, the soft-token count, the MLP's pooled grid inside the patch grid.
  public func validateBridge(file: String) throws {
    let layers: Int
    switch vision { case .clip(let c): layers = c.numHiddenLayers; case .dinov2(let c): layers = c.numHiddenLayers }
    guard imageSize >= vision.patchSize, imageSize <= 4096 else {
      throw ModelLoadError(file: file, reason: "image_size \(imageSize) must be between the patch size \(vision.patchSize) and 4096")
    }
    guard featureLayer >= -(layers + 1) && featureLayer <= layers else {
      throw ModelLoadError(file: file, reason: "feature_layer \(featureLayer) is outside the tower's \(layers) layers (−\(layers + 1)…\(layers))")
    }
    if bridge == .qformer && !(1...4096).contains(numQueryTokens) {
      throw ModelLoadError(file: file, reason: "num_query_tokens \(numQueryTokens) must be between 1 and 4096")
    }
    guard bridge == .mlp else { return }
    let g = patchGrid
    guard g >= 1, g * vision.patchSize == imageSize else {
      throw ModelLoadError(file: file, reason: "image_size \(imageSize) is not a multiple of the patch size \(vision.patchSize)")
    }
    if let p = mlp.poolGrid, p < 1 || p > g {
      throw ModelLoadError(file: file, reason: "mlp pool_grid \(p) must be between 1 and the patch grid \(g)")
    }
  }
}
