import Foundation
import PivotNN
import PivotTensor

/// Bidirectional multi-head attention over x (B, T, C) with separate q/k/v projections,
/// keys and values from `context` (B, S, Ck) when given (cross-attention). Returns (B, T, C).
func multiHeadAttention(_ x: Tensor, context: Tensor? = nil, q: Linear, k: Linear, v: Linear, heads: Int, keyMask: Tensor? = nil) -> Tensor {
  let (b, t) = (x.shape[0], x.shape[1])
  let kv = context ?? x
  let s = kv.shape[1]
  let inner = q.weight.shape[0], hs = inner / heads
  let qh = reshape(q(x), [b, t, heads, hs])
  let kh = reshape(k(kv), [b, s, heads, hs])
  let vh = reshape(v(kv), [b, s, heads, hs])
  return reshape(attention(qh, kh, vh, causal: false, keyMask: keyMask), [b, t, inner])
}

/// What the Q-Former reads: image features (B, S, C) from some vision tower.
public protocol VisionTower: Module {
  var hiddenSize: Int { get }
  var imageSize: Int { get }
  /// Image features for pixels (B, 3, H, W), normalised as the tower expects.
  func features(_ pixels: Tensor) -> Tensor
}

// MARK: CLIP

/// HF `CLIPVisionModel` (transformers 5 names, without the `vision_model.` prefix that older
/// checkpoints carry and `sanitize` strips): patch embedding (no bias), class token, learned positions,
/// pre-LayerNorm encoder with quick_gelu MLPs, post-LayerNorm.
public final class CLIPVisionModel: Module, VisionTower, @unchecked Sendable {
  public final class Embeddings: Module, @unchecked Sendable {
    public let classEmbedding: Tensor  // (C)
    public let patchEmbedding: PatchConv
    public let positionEmbedding: Embedding  // (1 + NP, C)
    init(_ c: CLIPVisionConfig, rng: inout PivotRNG) {
      let f = c.initializerFactor
      classEmbedding = Tensor(empty: [c.hiddenSize])
      rng.fillNormal(classEmbedding, std: pow(Float(c.hiddenSize), -0.5) * f)
      classEmbedding.requiresGrad = true
      patchEmbedding = PatchConv(c.numChannels, c.hiddenSize, patch: c.patchSize, bias: false, std: c.initializerRange * f, rng: &rng)
      let np = (c.imageSize / c.patchSize) * (c.imageSize / c.patchSize)
      positionEmbedding = Embedding(np + 1, c.hiddenSize, std: c.initializerRange * f, rng: &rng)
    }
  }
  public final class Attention: Module, @unchecked Sendable {
    public let qProj, kProj, vProj, outProj: Linear
    init(_ c: CLIPVisionConfig, rng: inout PivotRNG) {
      let f = c.initializerFactor, d = Float(c.hiddenSize)
      let inStd = pow(d, -0.5) * pow(Float(2 * c.numHiddenLayers), -0.5) * f
      qProj = Linear(c.hiddenSize, c.hiddenSize, std: inStd, rng: &rng)
      kProj = Linear(c.hiddenSize, c.hiddenSize, std: inStd, rng: &rng)
      vProj = Linear(c.hiddenSize, c.hiddenSize, std: inStd, rng: &rng)
      outProj = Linear(c.hiddenSize, c.hiddenSize, std: pow(d, -0.5) * f, rng: &rng)
    }
  }
  public final class MLP: Module, @unchecked Sendable {
    public let fc1, fc2: Linear
    init(_ c: CLIPVisionConfig, rng: inout PivotRNG) {
      let f = c.initializerFactor, d = Float(c.hiddenSize)
      fc1 = Linear(c.hiddenSize, c.intermediateSize, std: pow(2 * d, -0.5) * f, rng: &rng)
      fc2 = Linear(c.intermediateSize, c.hiddenSize, std: pow(d, -0.5) * pow(Float(2 * c.numHiddenLayers), -0.5) * f, rng: &rng)
    }
  }
  public final class Layer: Module, @unchecked Sendable {
    public let selfAttn: Attention
    public let layerNorm1: LayerNorm
    public let mlp: MLP
    public let layerNorm2: LayerNorm
    init(_ c: CLIPVisionConfig, rng: inout PivotRNG) {
      selfAttn = Attention(c, rng: &rng)
      layerNorm1 = LayerNorm(c.hiddenSize, eps: c.layerNormEps)
      mlp = MLP(c, rng: &rng)
      layerNorm2 = LayerNorm(c.hiddenSize, eps: c.layerNormEps)
    }
    public override var keyOverrides: [String: String] { ["layerNorm1": "layer_norm1", "layerNorm2": "layer_norm2"] }
  }
  public final class Encoder: Module, @unchecked Sendable {
    public let layers: [Layer]
    init(_ c: CLIPVisionConfig, rng: inout PivotRNG) { layers = (0..<c.numHiddenLayers).map { _ in Layer(c, rng: &rng) } }
  }
  public let config: CLIPVisionConfig
  public let embeddings: Embeddings
  public let preLayrnorm: LayerNorm  // sic: HF's key is "pre_layrnorm"
  public let encoder: Encoder
  public let postLayernorm: LayerNorm
  /// Which hidden state feeds the Q-Former: −1 the last layer's output, −2 the one before (LLaVA).
  public var featureLayer = -1
  /// BLIP-2 applies the tower's final LayerNorm to every token before the Q-Former.
  public var applyPostLayerNorm = true

  public var hiddenSize: Int { config.hiddenSize }
  public var imageSize: Int { config.imageSize }

  public init(_ config: CLIPVisionConfig, seed: UInt64 = 0) {
    self.config = config
    var rng = PivotRNG(seed: seed)
    embeddings = Embeddings(config, rng: &rng)
    preLayrnorm = LayerNorm(config.hiddenSize, eps: config.layerNormEps)
    encoder = Encoder(config, rng: &rng)
    postLayernorm = LayerNorm(config.hiddenSize, eps: config.layerNormEps)
  }

  /// Hidden states after the embeddings (index 0) and after each layer, up to `upTo` layers.
  func hiddenStates(_ pixels: Tensor, layers upTo: Int) -> Tensor {
    let b = pixels.shape[0], c = config.hiddenSize
    let e = embeddings
    let patches = e.patchEmbedding(pixels)  // (B, NP, C)
    let np = patches.shape[1]
    precondition(np + 1 == e.positionEmbedding.weight.shape[0], "image \(pixels.shape) gives \(np) patches; the tower has \(e.positionEmbedding.weight.shape[0] - 1) positions")
    let cls = reshape(concat(Array(repeating: reshape(e.classEmbedding, [1, 1, c]), count: b), axis: 0), [b, 1, c])
    var h = concat([cls, patches], axis: 1) + reshape(e.positionEmbedding.weight, [1, np + 1, c])  // (B, 1+NP, C)
    h = preLayrnorm(h)
    for layer in encoder.layers.prefix(upTo) {
      h = h + layer.selfAttn.outProj(multiHeadAttention(
        layer.layerNorm1(h), q: layer.selfAttn.qProj, k: layer.selfAttn.kProj, v: layer.selfAttn.vProj, heads: config.numAttentionHeads))
      h = h + layer.mlp.fc2(activation(config.hiddenAct, layer.mlp.fc1(layer.layerNorm2(h))))
    }
    return h
  }

  /// `last_hidden_state` as HF returns it (before the post-LayerNorm).
  public func lastHiddenState(_ pixels: Tensor) -> Tensor { hiddenStates(pixels, layers: config.numHiddenLayers) }

  public func features(_ pixels: Tensor) -> Tensor {
    let n = config.numHiddenLayers + 1 + featureLayer  // hidden_states has L + 1 entries
    let h = hiddenStates(pixels, layers: n)
    return applyPostLayerNorm ? postLayernorm(h) : h
  }
}

/// A stride = kernel Conv2d with PyTorch's weight layout (C, Cin, P, P).
public final class PatchConv: Module, @unchecked Sendable {
  public let weight: Tensor
  public let bias: Tensor?
  init(_ cin: Int, _ cout: Int, patch: Int, bias: Bool, std: Float, rng: inout PivotRNG) {
    weight = Tensor(empty: [cout, cin, patch, patch])
    rng.fillNormal(weight, std: std)
    weight.requiresGrad = true
    self.bias = bias ? Tensor.zeros([cout], requiresGrad: true) : nil
  }
  public func callAsFunction(_ images: Tensor) -> Tensor { patchEmbed(images, weight: weight, bias: bias) }
}

// MARK: DINOv2

/// HF `Dinov2Model`: patch 14, class token, learned positions interpolated (bicubic) to the
/// input grid, pre-norm layers with layer scale, GELU MLP, final LayerNorm.
public final class Dinov2Model: Module, VisionTower, @unchecked Sendable {
  public final class PatchEmbeddings: Module, @unchecked Sendable {
    public let projection: PatchConv
    init(_ c: Dinov2Config, rng: inout PivotRNG) {
      projection = PatchConv(c.numChannels, c.hiddenSize, patch: c.patchSize, bias: true, std: c.initializerRange, rng: &rng)
    }
  }
  public final class Embeddings: Module, @unchecked Sendable {
    public let clsToken: Tensor  // (1, 1, C)
    public let maskToken: Tensor  // (1, C), unused without masking but part of the checkpoint
    public let positionEmbeddings: Tensor  // (1, 1 + G², C)
    public let patchEmbeddings: PatchEmbeddings
    init(_ c: Dinov2Config, rng: inout PivotRNG) {
      clsToken = Tensor(empty: [1, 1, c.hiddenSize])
      rng.fillNormal(clsToken, std: c.initializerRange)
      clsToken.requiresGrad = true
      maskToken = Tensor.zeros([1, c.hiddenSize], requiresGrad: true)
      let g = c.imageSize / c.patchSize
      positionEmbeddings = Tensor(empty: [1, 1 + g * g, c.hiddenSize])
      rng.fillNormal(positionEmbeddings, std: c.initializerRange)
      positionEmbeddings.requiresGrad = true
      patchEmbeddings = PatchEmbeddings(c, rng: &rng)
    }
  }
  /// transformers 5 names (q_proj … o_proj); `sanitize` maps the older
  /// `attention.attention.query` / `attention.output.dense` names.
  public final class Attention: Module, @unchecked Sendable {
    public let qProj, kProj, vProj, oProj: Linear
    init(_ c: Dinov2Config, rng: inout PivotRNG) {
      qProj = Linear(c.hiddenSize, c.hiddenSize, bias: c.qkvBias, std: c.initializerRange, rng: &rng)
      kProj = Linear(c.hiddenSize, c.hiddenSize, bias: c.qkvBias, std: c.initializerRange, rng: &rng)
      vProj = Linear(c.hiddenSize, c.hiddenSize, bias: c.qkvBias, std: c.initializerRange, rng: &rng)
      oProj = Linear(c.hiddenSize, c.hiddenSize, std: c.initializerRange, rng: &rng)
    }
  }
  public final class LayerScale: Module, @unchecked Sendable {
    public let lambda1: Tensor
    init(_ c: Dinov2Config) {
      lambda1 = Tensor.full([c.hiddenSize], c.layerscaleValue)
      lambda1.requiresGrad = true
    }
  }
  public final class MLP: Module, @unchecked Sendable {
    public let fc1, fc2: Linear
    init(_ c: Dinov2Config, rng: inout PivotRNG) {
      fc1 = Linear(c.hiddenSize, c.hiddenSize * c.mlpRatio, std: c.initializerRange, rng: &rng)
      fc2 = Linear(c.hiddenSize * c.mlpRatio, c.hiddenSize, std: c.initializerRange, rng: &rng)
    }
  }
  public final class Layer: Module, @unchecked Sendable {
    public let norm1: LayerNorm
    public let attention: Attention
    public let layerScale1: LayerScale
    public let norm2: LayerNorm
    public let mlp: MLP
    public let layerScale2: LayerScale
    init(_ c: Dinov2Config, rng: inout PivotRNG) {
      norm1 = LayerNorm(c.hiddenSize, eps: c.layerNormEps)
      attention = Attention(c, rng: &rng)
      layerScale1 = LayerScale(c)
      norm2 = LayerNorm(c.hiddenSize, eps: c.layerNormEps)
      mlp = MLP(c, rng: &rng)
      layerScale2 = LayerScale(c)
    }
    public override var keyOverrides: [String: String] { ["layerScale1": "layer_scale1", "layerScale2": "layer_scale2"] }
  }
  public final class Encoder: Module, @unchecked Sendable {
    public let layer: [Layer]
    init(_ c: Dinov2Config, rng: inout PivotRNG) { layer = (0..<c.numHiddenLayers).map { _ in Layer(c, rng: &rng) } }
  }

  public let config: Dinov2Config
  public let embeddings: Embeddings
  public let encoder: Encoder
  public let layernorm: LayerNorm
  public var featureLayer = -1
  /// The final LayerNorm on every token (HF's last_hidden_state includes it).
  public var applyPostLayerNorm = true
  /// Input resolution for the interpolated position grid (224 for the usual preprocessing).
  public var inputSize: Int

  public var hiddenSize: Int { config.hiddenSize }
  public var imageSize: Int { inputSize }

  public init(_ config: Dinov2Config, inputSize: Int? = nil, seed: UInt64 = 0) {
    self.config = config
    self.inputSize = inputSize ?? config.imageSize
    var rng = PivotRNG(seed: seed)
    embeddings = Embeddings(config, rng: &rng)
    encoder = Encoder(config, rng: &rng)
    layernorm = LayerNorm(config.hiddenSize, eps: config.layerNormEps)
  }

  /// Position embeddings for a gh × gw grid: the stored grid resampled bicubically
  /// (PyTorch's interpolate, align_corners=False) as a linear map, so gradients flow.
  func positions(gh: Int, gw: Int) -> Tensor {
    let pe = embeddings.positionEmbeddings
    let c = config.hiddenSize, n = pe.shape[1] - 1
    let g = Int(Double(n).squareRoot().rounded())
    if gh == g && gw == g { return reshape(pe, [1, n + 1, c]) }
    let mh = bicubicMatrix(from: g, to: gh), mw = bicubicMatrix(from: g, to: gw)
    // kron(Mh, Mw): (gh·gw, g²)
    let k = Tensor.zeros([gh * gw, g * g])
    for i in 0..<gh { for j in 0..<gw { for a in 0..<g { for bb in 0..<g {
      k.ptr[(i * gw + j) * g * g + a * g + bb] = mh[i * g + a] * mw[j * g + bb]
    } } } }
    let grid = slice(reshape(pe, [n + 1, c]), axis: 0, 1..<(n + 1))  // (G², C)
    let cls = slice(reshape(pe, [n + 1, c]), axis: 0, 0..<1)
    return reshape(concat([cls, matmul(k, grid)], axis: 0), [1, 1 + gh * gw, c])
  }

  func hiddenStates(_ pixels: Tensor, layers upTo: Int) -> Tensor {
    let b = pixels.shape[0], c = config.hiddenSize, p = config.patchSize
    let gh = pixels.shape[2] / p, gw = pixels.shape[3] / p
    let patches = embeddings.patchEmbeddings.projection(pixels)  // (B, NP, C)
    let cls = concat(Array(repeating: embeddings.clsToken, count: b), axis: 0)  // (B, 1, C)
    var h = concat([cls, patches], axis: 1) + positions(gh: gh, gw: gw)
    for layer in encoder.layer.prefix(upTo) {
      let a = layer.attention
      let attn = a.oProj(multiHeadAttention(layer.norm1(h), q: a.qProj, k: a.kProj, v: a.vProj, heads: config.numAttentionHeads))
      h = h + attn * layer.layerScale1.lambda1
      let m = layer.mlp.fc2(activation(config.hiddenAct, layer.mlp.fc1(layer.norm2(h))))
      h = h + m * layer.layerScale2.lambda1
    }
    _ = c
    return h
  }

  /// HF `last_hidden_state` (after the final LayerNorm).
  public func lastHiddenState(_ pixels: Tensor) -> Tensor { layernorm(hiddenStates(pixels, layers: config.numHiddenLayers)) }

  public func features(_ pixels: Tensor) -> Tensor {
    let h = hiddenStates(pixels, layers: config.numHiddenLayers + 1 + featureLayer)
    return applyPostLayerNorm ? layernorm(h) : h
  }
}

/// Rows of PyTorch's bicubic resampling (A = −0.75, align_corners = False, edge clamp) from
/// `n` to `m` samples: out[i] = Σ_j M[i, j] · in[j]. Row-major (m, n).
public func bicubicMatrix(from n: Int, to m: Int) -> [Float] {
  var w = [Float](repeating: 0, count: m * n)
  let scale = Double(n) / Double(m)
  let a = -0.75
  func cubic1(_ x: Double) -> Double { ((a + 2) * x - (a + 3)) * x * x + 1 }
  func cubic2(_ x: Double) -> Double { ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
  for i in 0..<m {
    let src = (Double(i) + 0.5) * scale - 0.5
    let f = floor(src)
    let t = src - f
    let coeffs = [cubic2(t + 1), cubic1(t), cubic1(1 - t), cubic2(2 - t)]
    for k in 0..<4 {
      let idx = min(max(Int(f) - 1 + k, 0), n - 1)
      w[i * n + idx] += Float(coeffs[k])
    }
  }
  return w
}
