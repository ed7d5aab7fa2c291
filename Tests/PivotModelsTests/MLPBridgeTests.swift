import Foundation
@testable import PivotModels
import PivotNN
import PivotTensor
import Testing

/// The MLP bridge against transformers' `LlavaMultiModalProjector` (Tools/make_bridge_fixtures.py):
/// a 4×4 patch grid (after the class token) pooled to 2×2 by PyTorch's avg_pool2d, then the
/// projector; outputs within 1e-5, gradients within 1e-5 + 1e-4·max|ref|.
@Suite("MLP bridge against transformers")
struct MLPBridgeTests {
  static func model(poolGrid: Int?) throws -> ChatModel {
    var vision = CLIPVisionConfig()
    vision.hiddenSize = 8; vision.intermediateSize = 16; vision.numHiddenLayers = 1; vision.numAttentionHeads = 2
    vision.imageSize = 28; vision.patchSize = 7
    var decoder = DecoderConfig()
    decoder.vocabSize = 32; decoder.hiddenSize = 12; decoder.intermediateSize = 24; decoder.numHiddenLayers = 1
    decoder.numAttentionHeads = 2; decoder.numKeyValueHeads = 1
    let config = ChatModelConfig(vision: .clip(vision), bridge: .mlp, qformer: QFormerConfig(), mlp: MLPBridgeConfig(poolGrid: poolGrid),
                                 decoder: decoder, numQueryTokens: 0)
    let m = ChatModel(config)
    let fx = try Fixture("mlp_projector_tiny")
    try fx.load(m.multiModalProjector!, prefix: "multi_modal_projector.")
    return m
  }

  @Test func pooledProjectorMatchesTransformers() throws {
    let fx = try Fixture("mlp_projector_tiny")
    let m = try Self.model(poolGrid: 2)
    #expect(m.imageTokenCount == 4)
    #expect(m.namedParameters().filter { $0.0.hasPrefix("multi_modal_projector") }.map(\.0) == [
      "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
      "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"])
    let features = try fx.tensor("features")  // (2, 1 + 16, 8), the class token first
    features.requiresGrad = true
    let out = m.softTokens(imageFeatures: features)
    #expect(out.shape == [2, 4, 12])
    #expect(maxDiff(out, try fx.tensor("output")) < 1e-5)
    out.backward(seed: try fx.tensor("seed"))
    try expectGradients(m.multiModalProjector!, fx, gradPrefix: "grad.multi_modal_projector.")
    let ref = try fx.tensor("grad.features")
    #expect(maxDiff(features.grad!, ref) <= 1e-5 + 1e-4 * maxAbs(ref), "gradient of the features (zero on the class token)")
  }

  @Test func everyPatchWithoutPooling() throws {
    let fx = try Fixture("mlp_projector_tiny")
    let m = try Self.model(poolGrid: nil)
    #expect(m.imageTokenCount == 16)
    let out = noGrad { m.softTokens(imageFeatures: try! fx.tensor("features")) }
    #expect(maxDiff(out, try fx.tensor("output_unpooled")) < 1e-5)
  }

  /// Windows as adaptive_avg_pool2d draws them when the grid does not divide: 5 → 2 overlaps.
  @Test func adaptivePoolingWindows() {
    #expect((0..<2).map { adaptivePoolWindow($0, inSize: 5, outSize: 2) }.map { [$0.0, $0.1] } == [[0, 3], [2, 5]])
    let x = Tensor(empty: [1, 25, 1])
    for i in 0..<25 { x.ptr[i] = Float(i) }
    let y = adaptiveAvgPoolGrid(x, grid: 5, to: 2)
    // Cell (0, 0) averages rows 0..<3 × columns 0..<3 of the 5×5 grid.
    #expect(abs(y.ptr[0] - Float([0, 1, 2, 5, 6, 7, 10, 11, 12].reduce(0, +)) / 9) < 1e-6)
    #expect(abs(y.ptr[3] - Float([12, 13, 14, 17, 18, 19, 22, 23, 24].reduce(0, +)) / 9) < 1e-6)
  }
}
