import Foundation
@testable import PivotModels
import PivotNN
import PivotTensor
import Testing

/// `exportHF` writes folders transformers loads: Tools/check_export.py loads the committed
/// Fixtures/export_tiny with CLIPVisionModel, Blip2QFormerModel and Qwen2ForCausalLM, runs the
/// composition and saves its logits; this test re-exports (byte-identical) and compares logits.
@Suite("Export to HF layout")
struct ExportTests {
  @Test func exportIsWhatTransformersLoaded() throws {
    let fx = try Fixture("composed_tiny")
    let m = try ComposedParityTests.model(fx)
    let dir = try LoadingTests.tempDir("export")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try m.exportHF(to: dir)
    let committed = fixtureURL("export_tiny").path
    if ProcessInfo.processInfo.environment["PIVOT_UPDATE_FIXTURES"] != nil {
      let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/export_tiny").path
      try? FileManager.default.removeItem(atPath: src)
      try FileManager.default.copyItem(atPath: dir, toPath: src)
    }
    for file in ["vision/config.json", "vision/model.safetensors", "qformer/config.json", "qformer/model.safetensors",
                 "qformer/projector.safetensors", "llm/config.json", "llm/model.safetensors", "pivot_config.json"] {
      let a = FileManager.default.contents(atPath: dir + "/" + file), b = FileManager.default.contents(atPath: committed + "/" + file)
      #expect(a != nil && a == b, "\(file) differs from the committed export")
    }
    // What transformers computed from the exported folders.
    let ref = try SafeTensorsFile(url: fixtureURL("export_tiny_reference.safetensors"))
    let pixels = try ref.tensor("pixels").clone()
    let ids = try ref.int64s("input_ids").map { Int32($0) }
    let q = m.imageTokenCount, t = ids.count
    let all = [Int32](repeating: ComposedParityTests.imageToken, count: q) + ids
    let logits = noGrad {
      let x = m.inputEmbeddings(ids: all, batch: 1, length: q + t, pixels: pixels, imageStarts: [0])
      return m.languageModel.logits(reshape(m.languageModel.hiddenStates(x), [q + t, m.config.decoder.hiddenSize]))
    }
    #expect(maxDiff(logits, try ref.tensor("logits")) < 1e-5)
    // Pivot loads its own export back (the HF-layout folders), to the same logits.
    let back = try ChatModel.load(folder: dir)
    #expect(back.config.bridge == .qformer && back.qformer != nil)
    let again = noGrad {
      let x = back.inputEmbeddings(ids: all, batch: 1, length: q + t, pixels: pixels, imageStarts: [0])
      return back.languageModel.logits(reshape(back.languageModel.hiddenStates(x), [q + t, back.config.decoder.hiddenSize]))
    }
    #expect(maxDiff(again, logits) < 1e-6)
  }
}
