import Foundation
import PivotNN
import PivotTensor
import Yams

/// A recipe problem, pointing at the file, the line and the key.
public struct RecipeError: Error, CustomStringConvertible {
  public let file: String
  public let line: Int?
  public let key: String
  public let message: String
  public var description: String {
    "\(file)\(line.map { ":\($0)" } ?? ""): \(key.isEmpty ? "" : "'\(key)': ")\(message)"
  }
}

public enum Stage: String, Sendable, Codable, CaseIterable {
  case text, align, instruct

  /// What trains by default (DESIGN.md), given the bridge's parameter patterns; a recipe's
  /// `trainable` overrides it.
  public func defaultTrainable(bridge: [String]) -> [String] {
    switch self {
    case .text: ["*"]
    case .align: bridge
    case .instruct: bridge + ["language_model.*"]
    }
  }

  /// The Q-Former bridge's patterns (the default bridge).
  public var defaultTrainable: [String] { defaultTrainable(bridge: ["query_tokens", "qformer.*", "language_projection.*"]) }
}

/// One run, as written in `Recipes/*.yaml`. Every key is documented in Recipes/README.md.
public struct Recipe: Sendable, Codable {
  public struct Model: Sendable, Codable {
    /// HF folders (or a Pivot model folder in `pivot`).
    public var pivot: String?
    public var vision: String?
    public var llm: String?
    public var qformer: String?
    /// Random initialisation from config files (HF config.json) when no weights are given.
    public var visionConfig: String?
    public var llmConfig: String?
    public var qformerConfig: String?
    public var qformerLayers: Int?
    /// A BERT-style encoder folder whose layers initialise the Q-Former (BLIP-2 starts from BERT-base).
    public var qformerInit: String?
    public var numQueryTokens = 32
    /// qformer (BLIP-2) or mlp (LLaVA-1.5's projector over patch tokens).
    public var bridge = "qformer"
    /// The MLP bridge's pooled patch grid side (nil: every patch is a soft token).
    public var mlpPoolGrid: Int?
    public var imageSize: Int?
    public var featureLayer = -1
    public var tokenizer: String?
    public var chatTemplate = "auto"
    /// Weight storage of frozen parts: f32 or bf16.
    public var frozenDtype = "f32"
    /// LLM layers (from the first) that rerun in backward instead of keeping their activations.
    public var recomputeLayers = 0
    /// Precision of products of more than one row: fp32, or bf16 operands with float32 sums.
    public var matmul: MatmulPrecision = .float32
  }
  public struct Source: Sendable, Codable {
    public var shards: String
    public var weight = 1.0
  }
  public struct Data: Sendable, Codable {
    public var sources: [Source] = []
    public var evalShards: String?
    public var maxLength = 256
    public var shuffleBuffer = 256
    public var maxBadFraction = 0.01
    public var captionPrompt = "Describe the image."
    /// chat (the chat template, caption_prompt as the user turn) or plain (LLaVA's stage-1
    /// format: the image slot, the caption, an end token; no system prompt or instruction).
    public var captionFormat = "chat"
    public var workers = 1
    /// Caption ranking at every evaluation: shards with `<lang>.txt` captions, the first
    /// `rankImages` images, the instruction per language ("" for every language).
    public var rankShards: String?
    public var rankImages: Int?
    public var rankPrompts: [String: String] = [:]
    /// How candidates are scored: sum, mean or pmi (`CaptionRanking.Score`).
    public var rankScore = "sum"
    public var augment: Augment?
  }
  /// Training-time image augmentation (`data.augment`), seeded from the data cursor.
  public struct Augment: Sendable, Codable, Equatable {
    /// Random resized crop: the area fraction and aspect-ratio ranges (torchvision's).
    public var cropScale: [Double] = [1, 1]
    public var cropRatio: [Double] = [3.0 / 4.0, 4.0 / 3.0]
    /// Probability of a horizontal flip.
    public var flip = 0.0
    /// Backgrounds drawn behind transparent images: plain, gradient, noise (empty: white).
    public var backgrounds: [String] = []
  }
  public struct Optimizer: Sendable, Codable {
    public var lr = 1e-4
    public var weightDecay = 0.01
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var eps = 1e-8
    public var noDecay: [String] = ["*.bias", "*norm*", "*layernorm*", "*LayerNorm*", "query_tokens", "*embed*"]
    public var schedule = "cosine"
    public var warmupSteps = 0
    public var minLRRatio = 0.1
    public var gradClip = 1.0
  }

  public var file = ""
  public var source = ""
  public var name = ""
  public var stage = Stage.align
  public var seed: UInt64 = 0
  public var threads = 0
  public var model = Model()
  /// LoRA adapters (`lora:`): nil trains without them.
  public var lora: LoRASettings?
  public var trainable: [String]?
  public var frozen: [String] = []
  public var data = Data()
  public var optimizer = Optimizer()
  public var batchSize = 8
  public var gradAccum = 1
  public var maxSteps = 100
  /// Whether the file set `max_steps` (with `epochs` it caps the run; alone it is the run).
  public var maxStepsGiven = false
  /// Passes over every training sample; the run's steps then follow from the sample count.
  public var epochs: Int?
  public var evalEvery = 0
  public var evalBatches = 8
  public var logEvery = 1
  public var saveEvery = 0
  public var keepCheckpoints = 2
  public var output = "Checkpoints/run"

  public var trainablePatterns: [String] { trainable ?? stage.defaultTrainable }

  /// What trains for this model: the recipe's `trainable`, or the stage's default for its bridge.
  /// With LoRA the stage's default is the bridge alone (align, instruct) or nothing (text): the
  /// adapters stand in for the LLM's weights (LLaVA's LoRA recipe trains the projector in full).
  public func trainablePatterns(bridge: [String]?) -> [String] {
    if let trainable { return trainable }
    if lora != nil { return stage == .text ? [] : (bridge ?? Stage.align.defaultTrainable) }
    return bridge.map { stage.defaultTrainable(bridge: $0) } ?? stage.defaultTrainable
  }

  public var parameterGroups: [ParameterGroup] {
    [ParameterGroup(name: "no_decay", patterns: optimizer.noDecay, weightDecay: 0),
     ParameterGroup(name: "decay", patterns: ["*"], weightDecay: Float(optimizer.weightDecay))]
  }

  public var schedule: LRSchedule {
    switch optimizer.schedule {
    case "constant": .constant
    case "linear": .linear(warmup: optimizer.warmupSteps, totalSteps: maxSteps, minRatio: Float(optimizer.minLRRatio))
    default: .cosine(warmup: optimizer.warmupSteps, totalSteps: maxSteps, minRatio: Float(optimizer.minLRRatio))
    }
  }

  public init() {}

  public static func load(_ path: String) throws -> Recipe {
    guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
      throw RecipeError(file: path, line: nil, key: "", message: "cannot read the recipe (check the path)")
    }
    return try parse(text, file: path)
  }

  /// Paths in a recipe are relative to the working directory, like every other CLI path.
  public static func parse(_ rawText: String, file: String) throws -> Recipe {
    // A byte-order mark and Windows line ends read as what they mean.
    var text = rawText.hasPrefix("\u{FEFF}") ? String(rawText.dropFirst()) : rawText
    if text.contains("\r\n") { text = text.replacingOccurrences(of: "\r\n", with: "\n") }
    try checkNesting(text, file: file)
    let root: Node
    do {
      guard let n = try Yams.compose(yaml: text) else { throw RecipeError(file: file, line: nil, key: "", message: "empty recipe") }
      root = n
    } catch let e as RecipeError {
      throw e
    } catch {
      throw RecipeError(file: file, line: nil, key: "", message: "not valid YAML: \(error)")
    }
    var r = Recipe()
    r.file = file
    r.source = text
    r.name = ((file as NSString).lastPathComponent as NSString).deletingPathExtension
    let y = YAMLReader(file: file)
    for (key, value) in try y.mapping(root, "", allowed: [
      "name", "stage", "seed", "threads", "model", "trainable", "frozen", "data", "optimizer", "batch_size", "grad_accum", "max_steps",
      "epochs", "eval_every", "eval_batches", "log_every", "save_every", "keep_checkpoints", "output", "lora",
    ]) {
      switch key {
      case "name": r.name = try y.string(value, key)
      case "stage":
        let s = try y.string(value, key)
        guard let stage = Stage(rawValue: s) else { throw y.error(value, key, "unknown stage '\(s)' (text, align or instruct)") }
        r.stage = stage
      case "seed": r.seed = UInt64(try y.int(value, key, min: 0))
      case "threads": r.threads = try y.int(value, key, min: 0)
      case "trainable": r.trainable = try y.strings(value, key)
      case "frozen": r.frozen = try y.strings(value, key)
      case "batch_size": r.batchSize = try y.int(value, key, min: 1)
      case "grad_accum": r.gradAccum = try y.int(value, key, min: 1)
      case "max_steps":
        r.maxSteps = try y.int(value, key, min: 1)
        r.maxStepsGiven = true
      case "epochs": r.epochs = try y.int(value, key, min: 1)
      case "eval_every": r.evalEvery = try y.int(value, key, min: 0)
      case "eval_batches": r.evalBatches = try y.int(value, key, min: 1)
      case "log_every": r.logEvery = try y.int(value, key, min: 1)
      case "save_every": r.saveEvery = try y.int(value, key, min: 0)
      case "keep_checkpoints": r.keepCheckpoints = try y.int(value, key, min: 1)
      case "output": r.output = try y.string(value, key)
      case "lora": r.lora = try y.lora(value, key)
      case "model":
        for (k, v) in try y.mapping(value, "model", allowed: [
          "pivot", "vision", "llm", "qformer", "vision_config", "llm_config", "qformer_config", "qformer_layers", "num_query_tokens",
          "bridge", "mlp_pool_grid", "qformer_init",
          "image_size", "feature_layer", "tokenizer", "chat_template", "frozen_dtype",
          "recompute_layers", "matmul",
        ]) {
          let p = "model.\(k)"
          switch k {
          case "pivot": r.model.pivot = try y.string(v, p)
          case "vision": r.model.vision = try y.string(v, p)
          case "llm": r.model.llm = try y.string(v, p)
          case "qformer": r.model.qformer = try y.string(v, p)
          case "vision_config": r.model.visionConfig = try y.string(v, p)
          case "llm_config": r.model.llmConfig = try y.string(v, p)
          case "qformer_config": r.model.qformerConfig = try y.string(v, p)
          case "qformer_layers": r.model.qformerLayers = try y.int(v, p, min: 1)
          case "num_query_tokens": r.model.numQueryTokens = try y.int(v, p, min: 1)
          case "bridge":
            r.model.bridge = try y.string(v, p)
            guard ["qformer", "mlp"].contains(r.model.bridge) else { throw y.error(v, p, "must be qformer or mlp") }
          case "mlp_pool_grid": r.model.mlpPoolGrid = try y.int(v, p, min: 1)
          case "qformer_init": r.model.qformerInit = try y.string(v, p)
          case "image_size": r.model.imageSize = try y.int(v, p, min: 1)
          case "feature_layer": r.model.featureLayer = try y.int(v, p)
          case "tokenizer": r.model.tokenizer = try y.string(v, p)
          case "chat_template": r.model.chatTemplate = try y.string(v, p)
          case "frozen_dtype":
            r.model.frozenDtype = try y.string(v, p)
            guard ["f32", "bf16"].contains(r.model.frozenDtype) else { throw y.error(v, p, "must be f32 or bf16") }
          case "recompute_layers":
            r.model.recomputeLayers = try y.string(v, p) == "all" ? Int.max : try y.int(v, p, min: 0)
          case "matmul":
            guard let precision = MatmulPrecision(rawValue: try y.string(v, p)) else { throw y.error(v, p, "must be fp32 or bf16") }
            r.model.matmul = precision
          default: break
          }
        }
      case "data":
        for (k, v) in try y.mapping(value, "data", allowed: [
          "sources", "eval_shards", "max_length", "shuffle_buffer", "max_bad_fraction", "caption_prompt", "caption_format", "workers",
          "rank_shards", "rank_images", "rank_prompts", "rank_score", "augment",
        ]) {
          let p = "data.\(k)"
          switch k {
          case "sources":
            guard case .sequence(let seq) = v else { throw y.error(v, p, "must be a list of {shards, weight}") }
            r.data.sources = try seq.enumerated().map { i, item in
              var s = Source(shards: "")
              var hasShards = false
              for (sk, sv) in try y.mapping(item, "\(p)[\(i)]", allowed: ["shards", "weight"]) {
                if sk == "shards" { s.shards = try y.string(sv, "\(p)[\(i)].shards"); hasShards = true }
                if sk == "weight" { s.weight = try y.double(sv, "\(p)[\(i)].weight", min: 0) }
              }
              guard hasShards else { throw y.error(item, "\(p)[\(i)]", "needs 'shards'") }
              return s
            }
          case "eval_shards": r.data.evalShards = try y.string(v, p)
          case "max_length": r.data.maxLength = try y.int(v, p, min: 2)
          case "shuffle_buffer": r.data.shuffleBuffer = try y.int(v, p, min: 0)
          case "max_bad_fraction": r.data.maxBadFraction = try y.double(v, p, min: 0)
          case "caption_prompt": r.data.captionPrompt = try y.string(v, p)
          case "caption_format":
            r.data.captionFormat = try y.string(v, p)
            guard ["chat", "plain"].contains(r.data.captionFormat) else { throw y.error(v, p, "must be chat or plain") }
          case "workers": r.data.workers = try y.int(v, p, min: 1)
          case "rank_shards": r.data.rankShards = try y.string(v, p)
          case "rank_images": r.data.rankImages = try y.int(v, p, min: 1)
          case "rank_prompts":
            guard case .mapping(let m) = v else { throw y.error(v, p, "must map languages to prompts, e.g. {en: Describe the image., zh: 描述这张图片。}") }
            for (lk, lv) in m {
              guard case .scalar(let lang) = lk else { throw y.error(lk, p, "language keys must be plain names") }
              r.data.rankPrompts[lang.string == "default" ? "" : lang.string] = try y.string(lv, "\(p).\(lang.string)")
            }
          case "rank_score":
            r.data.rankScore = try y.string(v, p)
            guard ["sum", "mean", "pmi"].contains(r.data.rankScore) else { throw y.error(v, p, "must be sum, mean or pmi") }
          case "augment": r.data.augment = try y.augmentation(v, p)
          default: break
          }
        }
      case "optimizer":
        for (k, v) in try y.mapping(value, "optimizer", allowed: [
          "lr", "weight_decay", "beta1", "beta2", "eps", "no_decay", "schedule", "warmup_steps", "min_lr_ratio", "grad_clip",
        ]) {
          let p = "optimizer.\(k)"
          switch k {
          case "lr": r.optimizer.lr = try y.double(v, p, min: 0)
          case "weight_decay": r.optimizer.weightDecay = try y.double(v, p, min: 0)
          case "beta1": r.optimizer.beta1 = try y.double(v, p, min: 0)
          case "beta2": r.optimizer.beta2 = try y.double(v, p, min: 0)
          case "eps": r.optimizer.eps = try y.double(v, p, min: 0)
          case "no_decay": r.optimizer.noDecay = try y.strings(v, p)
          case "schedule":
            r.optimizer.schedule = try y.string(v, p)
            guard ["constant", "cosine", "linear"].contains(r.optimizer.schedule) else { throw y.error(v, p, "must be constant, cosine or linear") }
          case "warmup_steps": r.optimizer.warmupSteps = try y.int(v, p, min: 0)
          case "min_lr_ratio": r.optimizer.minLRRatio = try y.double(v, p, min: 0)
          case "grad_clip": r.optimizer.gradClip = try y.double(v, p, min: 0)
          default: break
          }
        }
      default: break
      }
    }
    if r.data.sources.isEmpty {
      throw RecipeError(file: file, line: nil, key: "data.sources", message: "a recipe needs at least one data source")
    }
    return r
  }

  /// A recipe is a few levels deep; the YAML parser recurses per level, so a file nested
  /// thousands deep (by brackets or indentation) is refused before it is parsed.
  static func checkNesting(_ text: String, file: String, limit: Int = 64) throws {
    var depth = 0, deepest = 0, line = 1
    for scalar in text.unicodeScalars {
      switch scalar {
      case "[", "{": depth += 1; deepest = max(deepest, depth)
      case "]", "}": depth = max(0, depth - 1)
      case "\n": line += 1
      default: break
      }
      if deepest > limit {
        throw RecipeError(file: file, line: line, key: "", message: "nested more than \(limit) levels deep; a recipe needs a few")
      }
    }
    for (number, row) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let indent = row.prefix { $0 == " " }.count
      if indent > 2 * limit {
        throw RecipeError(file: file, line: number + 1, key: "", message: "indented \(indent) spaces, nested too deep for a recipe")
      }
    }
  }

  /// Optimizer steps that `epochs` passes over `samples` training samples take (the last
  /// micro-batch and the last step may be short); nil without `epochs`.
  public func epochSteps(over samples: Int) -> Int? {
    guard let epochs else { return nil }
    let perStep = batchSize * gradAccum
    return max(1, (samples * epochs + perStep - 1) / perStep)
  }

  /// The run's length: `epochSteps`, capped by `max_steps` when the file sets it; or `max_steps`.
  public func steps(forEpochsOver samples: Int) -> Int {
    guard let steps = epochSteps(over: samples) else { return maxSteps }
    return maxStepsGiven ? min(steps, maxSteps) : steps
  }
}

/// Typed access to YAML nodes; every error carries the file, line and dotted key.
struct YAMLReader {
  let file: String

  func error(_ node: Node, _ key: String, _ message: String) -> RecipeError {
    RecipeError(file: file, line: node.mark.map { $0.line }, key: key, message: message)
  }

  func mapping(_ node: Node, _ path: String, allowed: Set<String>) throws -> [(String, Node)] {
    guard case .mapping(let m) = node else { throw error(node, path, "must be a mapping of keys") }
    var out: [(String, Node)] = []
    var seen = Set<String>()
    for (k, v) in m {
      guard case .scalar(let ks) = k else { throw error(k, path, "keys must be plain names") }
      let name = ks.string
      let full = path.isEmpty ? name : "\(path).\(name)"
      guard allowed.contains(name) else {
        throw error(k, full, "unknown key (known here: \(allowed.sorted().joined(separator: ", ")))")
      }
      guard seen.insert(name).inserted else { throw error(k, full, "appears twice") }
      out.append((name, v))
    }
    return out
  }

  func scalar(_ node: Node, _ key: String, _ kind: String) throws -> String {
    guard case .scalar(let s) = node else { throw error(node, key, "must be \(kind)") }
    return s.string
  }

  func string(_ node: Node, _ key: String) throws -> String { try scalar(node, key, "a string") }

  func int(_ node: Node, _ key: String, min: Int? = nil) throws -> Int {
    let s = try scalar(node, key, "an integer")
    guard let v = Int(s.replacingOccurrences(of: "_", with: "")) else { throw error(node, key, "must be an integer, got '\(s)'") }
    if let min, v < min { throw error(node, key, "must be at least \(min), got \(v)") }
    return v
  }

  func double(_ node: Node, _ key: String, min: Double? = nil) throws -> Double {
    let s = try scalar(node, key, "a number")
    guard let v = Double(s) else { throw error(node, key, "must be a number, got '\(s)'") }
    if let min, v < min { throw error(node, key, "must be at least \(min), got \(v)") }
    return v
  }

  func doubles(_ node: Node, _ key: String, count: Int, min: Double) throws -> [Double] {
    guard case .sequence(let seq) = node, seq.count == count else { throw error(node, key, "must be a list of \(count) numbers") }
    return try seq.map { try double($0, key, min: min) }
  }

  func augmentation(_ node: Node, _ path: String) throws -> Recipe.Augment {
    var a = Recipe.Augment()
    for (k, v) in try mapping(node, path, allowed: ["crop_scale", "crop_ratio", "flip", "backgrounds"]) {
      let p = "\(path).\(k)"
      switch k {
      case "crop_scale":
        a.cropScale = try doubles(v, p, count: 2, min: 0)
        guard a.cropScale[0] > 0, a.cropScale[0] <= a.cropScale[1], a.cropScale[1] <= 1 else {
          throw error(v, p, "must be [min, max] with 0 < min ≤ max ≤ 1 (fractions of the image area)")
        }
      case "crop_ratio":
        a.cropRatio = try doubles(v, p, count: 2, min: 0)
        guard a.cropRatio[0] > 0, a.cropRatio[0] <= a.cropRatio[1] else { throw error(v, p, "must be [min, max] with 0 < min ≤ max") }
      case "flip":
        a.flip = try double(v, p, min: 0)
        guard a.flip <= 1 else { throw error(v, p, "is a probability: between 0 and 1") }
      case "backgrounds":
        a.backgrounds = try strings(v, p)
        for b in a.backgrounds where !["plain", "gradient", "noise"].contains(b) {
          throw error(v, p, "unknown background '\(b)' (plain, gradient or noise)")
        }
      default: break
      }
    }
    return a
  }

  func lora(_ node: Node, _ path: String) throws -> LoRASettings {
    var settings = LoRASettings(rank: 0, alpha: 0, targets: [])
    var given = Set<String>()
    for (k, v) in try mapping(node, path, allowed: ["r", "alpha", "dropout", "targets", "rslora"]) {
      let p = "\(path).\(k)"
      given.insert(k)
      switch k {
      case "r": settings.rank = try int(v, p, min: 1)
      case "alpha":
        settings.alpha = try double(v, p)
        guard settings.alpha > 0, settings.alpha.isFinite else { throw error(v, p, "must be a positive number (the scale is alpha / r)") }
      case "dropout":
        settings.dropout = try double(v, p)
        guard settings.dropout >= 0, settings.dropout < 1 else { throw error(v, p, "is a probability: at least 0 and below 1") }
      case "targets":
        settings.targets = try strings(v, p)
        guard !settings.targets.isEmpty else { throw error(v, p, "needs at least one glob over Linear paths, e.g. 'language_model.*_proj'") }
      case "rslora":
        let s = try string(v, p)
        guard let b = Bool(s) else { throw error(v, p, "must be true or false") }
        settings.rsLoRA = b
      default: break
      }
    }
    for required in ["r", "targets"] where !given.contains(required) {
      throw error(node, "\(path).\(required)", "is required (e.g. r: 16, targets: ['language_model.*_proj'])")
    }
    if !given.contains("alpha") { settings.alpha = 8 }  // PEFT's default lora_alpha
    return settings
  }

  func strings(_ node: Node, _ key: String) throws -> [String] {
    if case .scalar(let s) = node { return [s.string] }
    guard case .sequence(let seq) = node else { throw error(node, key, "must be a list of strings") }
    return try seq.map { try string($0, key) }
  }
}
