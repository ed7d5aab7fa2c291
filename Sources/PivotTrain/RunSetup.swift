import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor
import PivotText

/// Everything a recipe needs, built once: model, tokenizer, chat template, data sources.
public struct RunSetup {
  public let recipe: Recipe
  public let built: BuiltModel
  public let tokenizer: Tokenizer
  public let tokenizerPath: String
  public let template: ChatTemplate
  public let encoder: ChatSampleEncoder
  public let image: ImagePreprocessing

  public var model: any TrainableModel { built.model }

  public init(recipe: Recipe) throws {
    self.recipe = recipe
    built = try ModelBuilder.build(recipe)
    guard let path = RunSetup.tokenizerPath(recipe: recipe, folder: built.tokenizerFolder) else {
      throw RecipeError(file: recipe.file, line: nil, key: "model.tokenizer", message: "no tokenizer: name a tokenizer.json in model.tokenizer")
    }
    tokenizerPath = path
    tokenizer = try Tokenizer(contentsOf: URL(fileURLWithPath: path))
    try RunSetup.checkVocabulary(tokenizer, path: path, model: built.model)
    let chat = built.model as? ChatModel
    let placeholder = tokenizer.id(forToken: "<|image_pad|>") ?? tokenizer.id(forToken: "<image>")
    if chat != nil && placeholder == nil {
      throw RecipeError(file: path, line: nil, key: "model.tokenizer", message: "the tokenizer has no image placeholder token (<|image_pad|> or <image>)")
    }
    if let chat, let placeholder { chat.config.imageTokenId = placeholder }
    // What the saved model was last trained on: captions (in the recipe's format) or conversations.
    if let chat { chat.config.captionFormat = recipe.stage == .instruct ? "chat" : recipe.data.captionFormat }
    template = try ChatTemplate(tokenizer: tokenizer, named: recipe.model.chatTemplate == "auto" ? nil : recipe.model.chatTemplate, imagePlaceholderID: placeholder)
    encoder = ChatSampleEncoder(template: template, imageTokenCount: chat?.imageTokenCount ?? 0, captionPrompt: recipe.data.captionPrompt,
                                plainText: recipe.stage == .text, plainCaptions: recipe.data.captionFormat == "plain")
    image = chat.map { RunSetup.preprocessing(for: $0, visionFolder: recipe.model.vision) } ?? .clip(size: 224)
  }

  /// A recipe's `data.augment` as PivotData's augmentation (a crop scale of [1, 1] keeps the
  /// plain resize + centre crop).
  public static func augmentation(_ a: Recipe.Augment) -> Augmentation {
    Augmentation(randomResizedCrop: a.cropScale != [1, 1], scale: a.cropScale[0]...a.cropScale[1],
                 ratio: a.cropRatio[0]...a.cropRatio[1], horizontalFlipProbability: a.flip,
                 backgrounds: a.backgrounds.compactMap { Augmentation.Background(rawValue: $0) })
  }

  /// Every id the tokenizer can produce must have a row in the embedding table: an id past it
  /// would read outside the table.
  public static func checkVocabulary(_ tokenizer: Tokenizer, path: String, model: any TrainableModel) throws {
    let rows: Int
    switch model {
    case let chat as ChatModel: rows = chat.config.decoder.vocabSize
    case let llm as DecoderLM: rows = llm.config.vocabSize
    default: return
    }
    guard tokenizer.vocabularySize <= rows else {
      throw ModelLoadError(file: path, reason: "the tokenizer has ids up to \(tokenizer.vocabularySize - 1) but the model's embedding table has \(rows) rows",
                           hint: "use the tokenizer the model was trained with, or a model whose vocab_size covers it")
    }
  }

  static func tokenizerPath(recipe: Recipe, folder: String?) -> String? {
    if let t = recipe.model.tokenizer { return t }
    guard let folder else { return nil }
    let p = (folder as NSString).appendingPathComponent("tokenizer.json")
    return FileManager.default.fileExists(atPath: p) ? p : nil
  }

  /// The tower's own preprocessing: its preprocessor_config.json when the folder has one,
  /// otherwise CLIP's mean/std for CLIP and ImageNet's (resize 256/224 · crop) for DINOv2.
  public static func preprocessing(for model: ChatModel, visionFolder: String?) -> ImagePreprocessing {
    let size = model.config.imageSize
    if let folder = visionFolder, let d = try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: (folder as NSString).appendingPathComponent("preprocessor_config.json")))) as? [String: Any] {
      let mean = (d["image_mean"] as? [Double])?.map(Float.init) ?? ImagePreprocessing.clipMean
      let std = (d["image_std"] as? [Double])?.map(Float.init) ?? ImagePreprocessing.clipStd
      let shortest = (d["size"] as? [String: Any])?["shortest_edge"] as? Int ?? size
      return ImagePreprocessing(shortestSide: max(shortest, size), cropHeight: size, cropWidth: size, mean: mean, std: std)
    }
    if case .dinov2 = model.config.vision {
      return ImagePreprocessing(shortestSide: size * 256 / 224, cropHeight: size, cropWidth: size,
                                mean: ImagePreprocessing.imagenetMean, std: ImagePreprocessing.imagenetStd)
    }
    return .clip(size: size)
  }

  public func datasetConfig(sources: [Recipe.Source], training: Bool) throws -> DatasetConfig {
    let specs = try sources.enumerated().map { i, s in
      DataSourceSpec(name: "source\(i):\(s.shards)", shards: try ShardList.expand(s.shards), weight: s.weight)
    }
    var c = DatasetConfig(sources: specs, kind: recipe.stage == .instruct ? .conversation : .caption,
                          batchSize: recipe.batchSize, maxLength: recipe.data.maxLength)
    c.seed = recipe.seed
    c.image = image
    c.requireImage = recipe.stage != .text
    c.shuffle = training
    c.shuffleWindow = recipe.data.shuffleBuffer
    c.maxBadFraction = recipe.data.maxBadFraction
    c.decodeThreads = recipe.data.workers
    // Training views only: evaluation always sees the plain resize + centre crop.
    if training, let a = recipe.data.augment { c.augmentation = RunSetup.augmentation(a) }
    return c
  }

  public func trainingSource() throws -> ShardBatchSource {
    var c = try datasetConfig(sources: recipe.data.sources, training: true)
    c.epochs = recipe.epochs
    return try ShardBatchSource(config: c, encoder: encoder)
  }

  /// Samples in the training sources (every item a shard holds, readable or not), read once
  /// without decoding: what `epochs` multiplies. `progress` gets (shards done, shards, samples).
  public func countTrainingSamples(progress: (Int, Int, Int) -> Void = { _, _, _ in }) throws -> Int {
    let shards = try recipe.data.sources.filter { $0.weight > 0 }.flatMap { try ShardList.expand($0.shards) }
    var samples = 0
    for (i, shard) in shards.enumerated() {
      do {
        let reader = try ShardSampleReader(path: shard)
        while try reader.next() != nil { samples += 1 }
      } catch {
        throw RecipeError(file: recipe.file, line: nil, key: "epochs",
                          message: "counting samples: \(shard): \(error) (check it with `pivot shards verify`)")
      }
      progress(i + 1, shards.count, samples)
    }
    return samples
  }

  /// Caption ranking over `data.rank_shards` (nil when the recipe names none).
  public func rankEvaluation() -> (() throws -> [String: Double])? {
    guard let shards = recipe.data.rankShards, let chat = model as? ChatModel else { return nil }
    var settings = CaptionRankSettings()
    settings.format = recipe.stage == .instruct ? "chat" : recipe.data.captionFormat
    if !recipe.data.rankPrompts.isEmpty { settings.prompts = recipe.data.rankPrompts } else { settings.prompts = ["": recipe.data.captionPrompt] }
    settings.maxImages = recipe.data.rankImages
    settings.score = CaptionRanking.Score(rawValue: recipe.data.rankScore) ?? .sum
    return { [template, image] in
      try CaptionRankEvaluation.run(model: chat, template: template, image: image, shards: shards, settings: settings).metrics
    }
  }

  public func evalSourceFactory() -> (() throws -> BatchSource)? {
    guard let shards = recipe.data.evalShards else { return nil }
    return {
      var c = try self.datasetConfig(sources: [Recipe.Source(shards: shards)], training: false)
      c.epochs = nil
      return try ShardBatchSource(config: c, encoder: self.encoder)
    }
  }

  /// The complete model, written after training so the next stage (or `pivot chat`) starts from it.
  /// The tokenizer's own tokenizer_config.json when it has one; otherwise one whose Jinja
  /// `chat_template` is the template this run trained with, so Pivot and transformers format
  /// prompts the way training did.
  func writeTokenizerConfig(into dir: String) throws {
    let folder = (tokenizerPath as NSString).deletingLastPathComponent
    // Current transformers keeps the template in chat_template.jinja; it travels with the model.
    let jinja = (folder as NSString).appendingPathComponent("chat_template.jinja")
    if FileManager.default.fileExists(atPath: jinja) {
      try FileManager.default.copyItem(atPath: jinja, toPath: (dir as NSString).appendingPathComponent("chat_template.jinja"))
    }
    let own = (folder as NSString).appendingPathComponent("tokenizer_config.json")
    let dst = (dir as NSString).appendingPathComponent("tokenizer_config.json")
    if FileManager.default.fileExists(atPath: own) {
      try FileManager.default.copyItem(atPath: own, toPath: dst)
      return
    }
    var config: [String: Any] = ["tokenizer_class": "PreTrainedTokenizerFast"]
    switch template.format {
    case .chatML:
      config["chat_template"] = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
      config["eos_token"] = "<|im_end|>"
    case .llama3:
      config["chat_template"] = "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
      config["eos_token"] = "<|eot_id|>"
    default:
      break
    }
    if tokenizer.id(forToken: "<|endoftext|>") != nil { config["pad_token"] = "<|endoftext|>" }
    let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    try data.write(to: URL(fileURLWithPath: dst))
  }

  /// With `lora:` on the LLM, its adapters as a PEFT folder beside the merged model, for the
  /// base the recipe started from (`model.llm`).
  public func writeAdapter(into dir: String) throws {
    guard let lora = recipe.lora else { return }
    let llm: DecoderLM
    switch built.model {
    case let chat as ChatModel: llm = chat.languageModel
    case let m as DecoderLM: llm = m
    default: return
    }
    guard !llm.adaptedLinears().isEmpty else { return }
    let base = recipe.model.llm ?? ""
    try PEFTAdapter.write(llm, to: dir, dropout: lora.dropout, rsLoRA: lora.rsLoRA, baseModel: base)
  }

  public func saveFinal(into output: String) throws {
    let dir = (output as NSString).appendingPathComponent("final")
    let tmp = (output as NSString).appendingPathComponent(".final.tmp-\(getpid())")
    try? FileManager.default.removeItem(atPath: tmp)
    switch built.model {
    case let chat as ChatModel: try chat.save(folder: tmp)
    case let llm as DecoderLM: try llm.save(folder: tmp)
    default: return
    }
    try FileManager.default.copyItem(atPath: tokenizerPath, toPath: (tmp as NSString).appendingPathComponent("tokenizer.json"))
    try writeTokenizerConfig(into: tmp)
    try writeAdapter(into: (tmp as NSString).appendingPathComponent("adapter"))
    try? FileManager.default.removeItem(atPath: dir)
    try FileManager.default.moveItem(atPath: tmp, toPath: dir)
  }
}
