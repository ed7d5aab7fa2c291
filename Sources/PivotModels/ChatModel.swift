import Foundation
import PivotNN
import PivotTensor

/// Pivot's composition (DESIGN.md): image → vision tower → Q-Former over learned queries →
/// Linear into the LLM width → soft tokens placed in the text's image slot → decoder LLM.
/// Parameter names: `vision_tower.*` (the tower's HF names), `query_tokens`, `qformer.*`
/// (Blip2QFormerModel names), `language_projection.*`, `language_model.*` (the LLM's HF names).
public final class ChatModel: Module, @unchecked Sendable {
  public let visionTower: any VisionTower
  public let queryTokens: Tensor  // (1, Q, Dq)
  public let qformer: QFormer
  public let languageProjection: Linear
  public let languageModel: DecoderLM
  public var config: ChatModelConfig

  public var numQueryTokens: Int { queryTokens.shape[1] }

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
    var q = config.qformer
    q.encoderHiddenSize = config.vision.hiddenSize
    queryTokens = Tensor(empty: [1, config.numQueryTokens, q.hiddenSize])
    rng.fillNormal(queryTokens, std: q.initializerRange)
    queryTokens.requiresGrad = true
    qformer = QFormer(q, seed: rng.next())
    languageProjection = Linear(q.hiddenSize, config.decoder.hiddenSize, bias: true, std: q.initializerRange, rng: &rng)
    let llmSeed = rng.next()
    languageModel = maybe(initializeLLM) { DecoderLM(config.decoder, seed: llmSeed) }
  }

  /// The frozen Linears of the vision tower and the frozen weights of the LLM keep only a
  /// bfloat16 copy (the Q-Former and projection train in every stage and stay float32).
  @discardableResult
  public func storeFrozenWeightsInBF16() -> Int {
    visionTower.storeFrozenLinearWeightsInBF16() + languageModel.storeFrozenWeightsInBF16()
  }

  var visionIsFrozen: Bool { !visionTower.parameters().contains { $0.requiresGrad } }

  /// Soft tokens (B, Q, D) for pixels (B, 3, H, W). A frozen tower runs without recording.
  public func imageTokens(_ pixels: Tensor) -> Tensor {
    let b = pixels.shape[0]
    let features = visionIsFrozen ? noGrad { visionTower.features(pixels) } : visionTower.features(pixels)
    return softTokens(imageFeatures: features)
  }

  /// Soft tokens (B, Q, D) from vision features (B, S, Dv): Q-Former over the learned queries, then the projection.
  public func softTokens(imageFeatures features: Tensor) -> Tensor {
    let b = features.shape[0]
    let queries = b == 1 ? queryTokens : concat(Array(repeating: queryTokens, count: b), axis: 0)
    return languageProjection(qformer(queries, imageFeatures: features))
  }

  /// Token embeddings (B, T, D) with each row's image slot (Q positions starting at
  /// `imageStarts[b]`) replaced by soft tokens. `pixels` holds one image per row whose start is
  /// not nil, in row order, so text-only rows cost no vision work.
  public func inputEmbeddings(ids: [Int32], batch b: Int, length t: Int, pixels: Tensor?, imageStarts: [Int?]) -> Tensor {
    let text = languageModel.embed(ids, shape: [b, t])
    guard let pixels else { return text }
    let q = numQueryTokens
    precondition(imageStarts.count == b, "\(imageStarts.count) image slots for \(b) rows")
    precondition(pixels.shape[0] == imageStarts.compactMap { $0 }.count, "\(pixels.shape[0]) images for \(imageStarts.compactMap { $0 }.count) image slots")
    let soft = reshape(imageTokens(pixels), [pixels.shape[0] * q, languageModel.config.hiddenSize])  // (N·Q, D)
    var rows: [Int] = []
    for (r, start) in imageStarts.enumerated() {
      guard let start else { continue }
      precondition(start + q <= t, "image slot at \(start) + \(q) queries does not fit in \(t) positions")
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
  public var qformer: QFormerConfig
  public var decoder: DecoderConfig
  public var numQueryTokens: Int
  /// Input resolution of the images (the tower's own unless overridden, e.g. DINOv2 at 224).
  public var imageSize: Int
  public var featureLayer: Int
  /// Token id of the placeholder the chat template expands into the image slot.
  public var imageTokenId: Int32
  public var chatTemplate: String

  public init(vision: VisionConfig, qformer: QFormerConfig, decoder: DecoderConfig, numQueryTokens: Int, imageSize: Int? = nil,
              featureLayer: Int = -1, imageTokenId: Int32 = 0, chatTemplate: String = "chatml") {
    self.vision = vision
    self.qformer = qformer
    self.decoder = decoder
    self.numQueryTokens = numQueryTokens
    self.imageSize = imageSize ?? vision.imageSize
    self.featureLayer = featureLayer
    self.imageTokenId = imageTokenId
    self.chatTemplate = chatTemplate
  }

  public var json: [String: Any] {
    ["vision": vision.json, "qformer": qformer.json, "decoder": decoder.json, "num_query_tokens": numQueryTokens,
     "image_size": imageSize, "feature_layer": featureLayer, "image_token_id": Int(imageTokenId), "chat_template": chatTemplate,
     "format": "pivot-chat-model", "version": 1]
  }

  public static func read(_ path: String) throws -> ChatModelConfig {
    let d = try readJSONObject(path)
    guard d["format"] as? String == "pivot-chat-model" else {
      throw ModelLoadError(file: path, reason: "not a Pivot chat-model config (format != pivot-chat-model)")
    }
    guard let v = d["vision"] as? [String: Any], let q = d["qformer"] as? [String: Any], let l = d["decoder"] as? [String: Any] else {
      throw ModelLoadError(file: path, reason: "needs vision, qformer and decoder sections")
    }
    guard case .vision(let vision) = try AnyModelConfig.parse(v, file: path + " [vision]") else {
      throw ModelLoadError(file: path, reason: "the vision section is not a vision tower config")
    }
    guard case .qformer(let qformer) = try AnyModelConfig.parse(q, file: path + " [qformer]") else {
      throw ModelLoadError(file: path, reason: "the qformer section is not a blip_2_qformer config")
    }
    guard case .decoder(let decoder) = try AnyModelConfig.parse(l, file: path + " [decoder]") else {
      throw ModelLoadError(file: path, reason: "the decoder section is not a qwen2/llama config")
    }
    let r = ConfigReader(dict: d, file: path)
    return ChatModelConfig(
      vision: vision, qformer: qformer, decoder: decoder, numQueryTokens: try r.int("num_query_tokens"),
      imageSize: try r.int("image_size", vision.imageSize), featureLayer: try r.int("feature_layer", -1),
      imageTokenId: Int32(try r.int("image_token_id", 0)), chatTemplate: r.string("chat_template", "chatml"))
  }
}
