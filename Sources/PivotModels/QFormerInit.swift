import Foundation
import PivotNN
import PivotTensor

/// HF `BertConfig`, read from a BERT `config.json` (`model_type` bert): the encoder a Q-Former
/// starts from, as BLIP-2 starts from bert-base-uncased (LAVIS's `Blip2Base.init_Qformer`).
public struct BertEncoderConfig: Sendable, Equatable {
  public var hiddenSize = 768, numHiddenLayers = 12, numAttentionHeads = 12, intermediateSize = 3072
  public var hiddenAct = "gelu"
  public var layerNormEps: Float = 1e-12, initializerRange: Float = 0.02
  public var vocabSize = 30522, maxPositionEmbeddings = 512

  /// The activations Pivot's layers compute (`activation(_:_:)`).
  static let knownActivations: Set = ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "silu", "swish"]

  public init() {}

  public init(_ dict: [String: Any], file: String) throws {
    let type = dict["model_type"] as? String ?? ""
    guard type == "bert" else {
      throw ModelLoadError(file: file, reason: "model_type '\(type)' is not bert", hint: "a Q-Former starts from a BERT-style encoder's config.json")
    }
    let r = ConfigReader(dict: dict, file: file)
    hiddenSize = try r.int("hidden_size")
    numHiddenLayers = try r.int("num_hidden_layers")
    numAttentionHeads = try r.int("num_attention_heads")
    intermediateSize = try r.int("intermediate_size")
    hiddenAct = r.string("hidden_act", "gelu")
    layerNormEps = try r.float("layer_norm_eps", 1e-12)
    initializerRange = try r.float("initializer_range", 0.02)
    vocabSize = try r.int("vocab_size", 30522)
    maxPositionEmbeddings = try r.int("max_position_embeddings", 512)
    guard Self.knownActivations.contains(hiddenAct) else {
      throw ModelLoadError(file: file, reason: "hidden_act '\(hiddenAct)' is not supported", hint: "Pivot computes \(Self.knownActivations.sorted().joined(separator: ", "))")
    }
    guard numAttentionHeads > 0, hiddenSize % numAttentionHeads == 0 else {
      throw ModelLoadError(file: file, reason: "hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(numAttentionHeads)")
    }
  }

  /// `config.json` itself, or the folder holding it.
  public static func read(_ path: String) throws -> BertEncoderConfig {
    var isDir: ObjCBool = false
    let file = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
      ? (path as NSString).appendingPathComponent("config.json") : path
    return try BertEncoderConfig(readJSONObject(file), file: file)
  }

  /// The Q-Former this encoder initialises: its widths, heads, depth, eps and activation, with
  /// cross-attention to `encoderHiddenSize`-wide image features every `crossAttentionFrequency` layers.
  public func qformerConfig(crossAttentionFrequency: Int = 2, encoderHiddenSize: Int) -> QFormerConfig {
    var q = QFormerConfig()
    q.hiddenSize = hiddenSize
    q.numHiddenLayers = numHiddenLayers
    q.numAttentionHeads = numAttentionHeads
    q.intermediateSize = intermediateSize
    q.hiddenAct = hiddenAct
    q.layerNormEps = layerNormEps
    q.initializerRange = initializerRange
    q.vocabSize = vocabSize
    q.maxPositionEmbeddings = maxPositionEmbeddings
    q.crossAttentionFrequency = crossAttentionFrequency
    q.encoderHiddenSize = encoderHiddenSize
    return q
  }
}

extension QFormer {
  /// Q-Former name ← BERT name of one module, as LAVIS's `init_Qformer` leaves them: self-attention
  /// and its output from BERT's, and the query feed-forward (`*_query`) copied from BERT's text
  /// feed-forward. Each module contributes its `weight` and `bias`.
  static func bertModules(_ c: QFormerConfig) -> [(qformer: String, bert: String, outWidth: Int, inWidth: Int?)] {
    let h = c.hiddenSize, i = c.intermediateSize
    var out: [(qformer: String, bert: String, outWidth: Int, inWidth: Int?)] = [("layernorm", "embeddings.LayerNorm", h, nil)]
    for n in 0..<c.numHiddenLayers {
      let p = "encoder.layer.\(n)."
      out += [
        (p + "attention.attention.query", p + "attention.self.query", h, h),
        (p + "attention.attention.key", p + "attention.self.key", h, h),
        (p + "attention.attention.value", p + "attention.self.value", h, h),
        (p + "attention.output.dense", p + "attention.output.dense", h, h),
        (p + "attention.output.LayerNorm", p + "attention.output.LayerNorm", h, nil),
        (p + "intermediate_query.dense", p + "intermediate.dense", i, h),
        (p + "output_query.dense", p + "output.dense", h, i),
        (p + "output_query.LayerNorm", p + "output.LayerNorm", h, nil),
      ]
    }
    return out
  }

  /// Maps a BERT checkpoint into Q-Former names for a Q-Former of `config`. Keys may carry the
  /// `bert.` prefix (BertForPreTraining, bert-base-uncased) or not (BertModel, sentence-transformers'
  /// MiniLM); LayerNorm `gamma`/`beta` (older checkpoints) read as `weight`/`bias`. Cross-attention
  /// is not in BERT and stays as initialised, as do the query tokens. Every missing key and shape
  /// mismatch is listed in one error naming `source`. The tensors are the checkpoint's own (no copy).
  public static func bertInitialization(
    from weights: [String: Tensor], config: QFormerConfig, source: String
  ) throws -> (weights: [String: Tensor], table: [(qformer: String, bert: String)]) {
    let byName = bertKeysByCanonicalName(weights.keys)
    var mapped: [String: Tensor] = [:]
    var table: [(qformer: String, bert: String)] = []
    var problems: [String] = []
    for m in bertModules(config) {
      let shapes = [("weight", m.inWidth.map { [m.outWidth, $0] } ?? [m.outWidth]), ("bias", [m.outWidth])]
      for (leaf, shape) in shapes {
        let qName = "\(m.qformer).\(leaf)", bName = "\(m.bert).\(leaf)"
        guard let fileKey = byName[bName], let t = weights[fileKey] else {
          problems.append("missing tensor '\(bName)' (for the Q-Former's '\(qName)', shape \(shape))")
          continue
        }
        guard t.shape == shape else {
          problems.append("tensor '\(fileKey)' has shape \(t.shape), the Q-Former's '\(qName)' needs \(shape)")
          continue
        }
        mapped[qName] = t
        table.append((qformer: qName, bert: fileKey))
      }
    }
    if !problems.isEmpty {
      throw ModelLoadError(
        file: source, reason: "\(problems.count) problem\(problems.count == 1 ? "" : "s") mapping BERT weights into the Q-Former:\n"
          + problems.map { "  - \($0)" }.joined(separator: "\n"),
        hint: "build the Q-Former's config from the BERT config.json (BertEncoderConfig.qformerConfig) and check the file is that model's")
    }
    return (mapped, table)
  }

  /// The BERT folder's config and mapped weights (`config.json` + `*.safetensors`).
  public static func bertInitialization(
    folder dir: String, crossAttentionFrequency: Int = 2, encoderHiddenSize: Int
  ) throws -> (config: QFormerConfig, weights: [String: Tensor], table: [(qformer: String, bert: String)], bertKeys: [String]) {
    let config = try BertEncoderConfig.read(dir).qformerConfig(crossAttentionFrequency: crossAttentionFrequency, encoderHiddenSize: encoderHiddenSize)
    let raw = try ModelFolder.weights(dir)
    let single = (dir as NSString).appendingPathComponent("model.safetensors")
    let source = FileManager.default.fileExists(atPath: single) ? single : dir
    let (weights, table) = try bertInitialization(from: raw, config: config, source: source)
    return (config, weights, table, raw.keys.sorted())
  }

  /// Canonical BERT name (no `bert.` prefix, LayerNorm `weight`/`bias`) → the key in the file.
  /// With any `bert.`-prefixed key present, only those are the encoder (the rest are heads).
  static func bertKeysByCanonicalName(_ keys: some Collection<String>) -> [String: String] {
    let prefixed = keys.contains { $0.hasPrefix("bert.") }
    var out: [String: String] = [:]
    for key in keys {
      var name = key
      if prefixed {
        guard name.hasPrefix("bert.") else { continue }
        name.removeFirst(5)
      }
      if name.hasSuffix("LayerNorm.gamma") { name = String(name.dropLast(5)) + "weight" }
      if name.hasSuffix("LayerNorm.beta") { name = String(name.dropLast(4)) + "bias" }
      out[name] = key
    }
    return out
  }

  /// Loads weights mapped by `bertInitialization`; every parameter they lack (cross-attention)
  /// keeps its initialisation. A name that is not this Q-Former's, or a shape that differs, fails.
  public func load(bertInitialization mapped: [String: Tensor], source: String) throws {
    let missing = Set(namedParameters().map(\.0)).subtracting(mapped.keys)
    try load(mapped, source: source, allowMissing: missing, zeroCopy: true)
  }

  /// Where each Q-Former parameter came from, one line each (`name  shape  bert:<key>` or `new`),
  /// then the BERT tensors with no place in a Q-Former, with the reason. `bertKeys` are the
  /// checkpoint's keys as in the file.
  public func initializationTable(_ table: [(qformer: String, bert: String)], bertKeys: some Sequence<String>) -> String {
    let from = Dictionary(table.map { ($0.qformer, $0.bert) }, uniquingKeysWith: { a, _ in a })
    let params = namedParameters()
    let nameWidth = params.map(\.0.count).max() ?? 0
    let shapeWidth = params.map { "\($0.1.shape)".count }.max() ?? 0
    func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(0, n - s.count)) }
    var lines = [pad("Q-Former parameter", nameWidth) + "  " + pad("shape", shapeWidth) + "  source"]
    for (name, t) in params {
      lines.append(pad(name, nameWidth) + "  " + pad("\(t.shape)", shapeWidth) + "  " + (from[name].map { "bert:\($0)" } ?? "new"))
    }
    let fromBert = params.filter { from[$0.0] != nil }.count
    lines.append("\(fromBert) from BERT, \(params.count - fromBert) new (cross-attention keeps its initialisation)")
    let used = Set(from.values)
    let unused = bertKeys.filter { !used.contains($0) }.sorted()
    if !unused.isEmpty {
      lines.append("unused from BERT (\(unused.count)):")
      for key in unused { lines.append("  \(key)  (\(whyUnused(key)))") }
    }
    return lines.joined(separator: "\n")
  }

  func whyUnused(_ key: String) -> String {
    if key.hasPrefix("cls.") { return "pre-training head" }
    let name = key.hasPrefix("bert.") ? String(key.dropFirst(5)) : key
    if name.hasPrefix("embeddings.") { return "text embeddings: the Q-Former reads learned queries, not tokens" }
    if name.hasPrefix("pooler.") { return "pooler: not part of a Q-Former" }
    let parts = name.split(separator: ".")
    if parts.count > 2, parts[0] == "encoder", parts[1] == "layer", let n = Int(parts[2]), n >= config.numHiddenLayers {
      return "layer \(n) is beyond the Q-Former's \(config.numHiddenLayers)"
    }
    return "no Q-Former parameter takes it"
  }
}
