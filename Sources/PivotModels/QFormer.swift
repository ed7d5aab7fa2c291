import Foundation
import PivotNN
import PivotTensor

/// HF `Blip2QFormerModel` for learned queries: LayerNorm on the query embeddings, then BERT
/// layers (post-LayerNorm) with self-attention over the queries, cross-attention to the image
/// features every `cross_attention_frequency` layers, and the query feed-forward.
public final class QFormer: Module, @unchecked Sendable {
  public final class SelfAttention: Module, @unchecked Sendable {
    public let query, key, value: Linear
    init(_ c: QFormerConfig, keyWidth: Int, rng: inout PivotRNG) {
      query = Linear(c.hiddenSize, c.hiddenSize, std: c.initializerRange, rng: &rng)
      key = Linear(keyWidth, c.hiddenSize, std: c.initializerRange, rng: &rng)
      value = Linear(keyWidth, c.hiddenSize, std: c.initializerRange, rng: &rng)
    }
  }
  /// dense → residual → LayerNorm (BERT's post-norm).
  public final class Output: Module, @unchecked Sendable {
    public let dense: Linear
    public let layerNorm: LayerNorm
    init(_ inWidth: Int, _ c: QFormerConfig, rng: inout PivotRNG) {
      dense = Linear(inWidth, c.hiddenSize, std: c.initializerRange, rng: &rng)
      layerNorm = LayerNorm(c.hiddenSize, eps: c.layerNormEps)
    }
    public override var keyOverrides: [String: String] { ["layerNorm": "LayerNorm"] }
    func callAsFunction(_ x: Tensor, residual: Tensor) -> Tensor { layerNorm(dense(x) + residual) }
  }
  public final class Attention: Module, @unchecked Sendable {
    public let attention: SelfAttention
    public let output: Output
    init(_ c: QFormerConfig, keyWidth: Int, rng: inout PivotRNG) {
      attention = SelfAttention(c, keyWidth: keyWidth, rng: &rng)
      output = Output(c.hiddenSize, c, rng: &rng)
    }
    func callAsFunction(_ x: Tensor, context: Tensor?, heads: Int) -> Tensor {
      output(multiHeadAttention(x, context: context, q: attention.query, k: attention.key, v: attention.value, heads: heads), residual: x)
    }
  }
  public final class Intermediate: Module, @unchecked Sendable {
    public let dense: Linear
    init(_ c: QFormerConfig, rng: inout PivotRNG) { dense = Linear(c.hiddenSize, c.intermediateSize, std: c.initializerRange, rng: &rng) }
  }
  public final class Layer: Module, @unchecked Sendable {
    public let attention: Attention
    public let crossattention: Attention?
    public let intermediateQuery: Intermediate
    public let outputQuery: Output
    init(_ c: QFormerConfig, index: Int, rng: inout PivotRNG) {
      attention = Attention(c, keyWidth: c.hiddenSize, rng: &rng)
      crossattention = index % c.crossAttentionFrequency == 0 ? Attention(c, keyWidth: c.encoderHiddenSize, rng: &rng) : nil
      intermediateQuery = Intermediate(c, rng: &rng)
      outputQuery = Output(c.intermediateSize, c, rng: &rng)
    }
  }
  public final class Encoder: Module, @unchecked Sendable {
    public let layer: [Layer]
    init(_ c: QFormerConfig, rng: inout PivotRNG) { layer = (0..<c.numHiddenLayers).map { Layer(c, index: $0, rng: &rng) } }
  }

  public let config: QFormerConfig
  public let layernorm: LayerNorm
  public let encoder: Encoder

  public init(_ config: QFormerConfig, seed: UInt64 = 0) {
    self.config = config
    var rng = PivotRNG(seed: seed)
    layernorm = LayerNorm(config.hiddenSize, eps: config.layerNormEps)
    encoder = Encoder(config, rng: &rng)
  }

  /// queries (B, Q, Dq), imageFeatures (B, S, Dv) → (B, Q, Dq).
  public func callAsFunction(_ queries: Tensor, imageFeatures: Tensor) -> Tensor {
    var h = layernorm(queries)
    let heads = config.numAttentionHeads
    for layer in encoder.layer {
      h = layer.attention(h, context: nil, heads: heads)
      if let cross = layer.crossattention { h = cross(h, context: imageFeatures, heads: heads) }
      h = layer.outputQuery(activation(config.hiddenAct, layer.intermediateQuery.dense(h)), residual: h)
    }
    return h
  }
}
