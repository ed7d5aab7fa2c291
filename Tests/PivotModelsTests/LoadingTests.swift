import Foundation
@testable import PivotModels
import PivotNN
import PivotTensor
import Testing

/// Loading from HF folders: a good folder loads; each broken one gives one clear message that
/// names the file and the key.
@Suite("Loading HF folders")
struct LoadingTests {
  static func tempDir(_ tag: String) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-load-\(tag)-\(getpid())").path
    try? FileManager.default.removeItem(atPath: dir)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
  }

  /// The tiny Qwen2 fixture written as an HF folder, with `edit` applied to its tensors.
  static func qwenFolder(_ tag: String, edit: (inout [(String, Tensor)]) -> Void = { _ in }) throws -> String {
    let fx = try Fixture("qwen2_tiny")
    let dir = try tempDir(tag)
    try writeJSON(fx.config, to: dir + "/config.json")
    guard case .decoder(let config) = try AnyModelConfig.parse(fx.config, file: "x") else { fatalError() }
    var tensors = try DecoderLM(config).namedParameters().map { ($0.0, try fx.tensor($0.0)) }
    edit(&tensors)
    try writeSafeTensors(tensors, to: URL(fileURLWithPath: dir + "/model.safetensors"))
    return dir
  }

  @Test func goodFolderLoadsAndMatches() throws {
    let dir = try Self.qwenFolder("good")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let m = try DecoderLM.load(folder: dir)
    let fx = try Fixture("qwen2_tiny")
    let ids = try fx.ints("input_ids")
    let logits = noGrad { m.logits(reshape(m.hiddenStates(m.embed(ids, shape: [2, 16])), [32, 64])) }
    #expect(maxDiff(logits, try fx.tensor("logits")) < 1e-5)
  }

  func expectFailure(_ dir: String, mentions: [String]) {
    do {
      _ = try DecoderLM.load(folder: dir)
      Issue.record("\(dir) loaded")
    } catch {
      let text = "\(error)"
      for m in mentions { #expect(text.contains(m), "error '\(text)' should mention '\(m)'") }
    }
  }

  @Test func missingTensor() throws {
    let dir = try Self.qwenFolder("missing") { $0.removeAll { $0.0 == "model.layers.1.mlp.up_proj.weight" } }
    defer { try? FileManager.default.removeItem(atPath: dir) }
    expectFailure(dir, mentions: [dir, "missing tensor 'model.layers.1.mlp.up_proj.weight'"])
  }

  @Test func wrongShape() throws {
    let dir = try Self.qwenFolder("shape") { t in
      let i = t.firstIndex { $0.0 == "model.norm.weight" }!
      t[i].1 = Tensor.zeros([63])
    }
    defer { try? FileManager.default.removeItem(atPath: dir) }
    expectFailure(dir, mentions: [dir, "'model.norm.weight' has shape [63], the model expects [64]"])
  }

  @Test func unusedTensor() throws {
    let dir = try Self.qwenFolder("unused") { $0.append(("model.layers.2.mlp.up_proj.weight", Tensor.zeros([2]))) }
    defer { try? FileManager.default.removeItem(atPath: dir) }
    expectFailure(dir, mentions: ["unused tensor 'model.layers.2.mlp.up_proj.weight'"])
  }

  @Test func unknownModelType() throws {
    let dir = try Self.qwenFolder("type")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var cfg = try Fixture("qwen2_tiny").config
    cfg["model_type"] = "mamba"
    try writeJSON(cfg, to: dir + "/config.json")
    expectFailure(dir, mentions: [dir + "/config.json", "unknown model_type 'mamba'"])
  }

  @Test func truncatedSafetensors() throws {
    let dir = try Self.qwenFolder("trunc")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = dir + "/model.safetensors"
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    try data.prefix(data.count - 100).write(to: URL(fileURLWithPath: path))
    expectFailure(dir, mentions: [path, "truncated"])
  }

  @Test func halfPrecisionWeightsLoad() throws {
    let fx = try Fixture("qwen2_tiny")
    for dtype in [SafeTensorsDType.bf16, .f16] {
      let dir = try Self.tempDir("half-\(dtype.rawValue)")
      defer { try? FileManager.default.removeItem(atPath: dir) }
      try writeJSON(fx.config, to: dir + "/config.json")
      guard case .decoder(let config) = try AnyModelConfig.parse(fx.config, file: "x") else { return }
      let tensors = try DecoderLM(config).namedParameters().map { ($0.0, try fx.tensor($0.0)) }
      try writeSafeTensors(tensors, to: URL(fileURLWithPath: dir + "/model.safetensors"), dtype: dtype)
      let m = try DecoderLM.load(folder: dir)
      let ids = try fx.ints("input_ids")
      let logits = noGrad { m.logits(reshape(m.hiddenStates(m.embed(ids, shape: [2, 16])), [32, 64])) }
      // Half-precision weights move logits by about the weights' rounding.
      #expect(maxDiff(logits, try fx.tensor("logits")) < (dtype == .bf16 ? 2e-2 : 2e-3), "\(dtype.rawValue)")
    }
  }
}
