import Foundation
import PivotNN
import PivotTensor

/// Keys and values of past positions for each layer, so each generated token costs one
/// position's work. Buffers are (B, capacity, NKV, HS).
public final class KVCache: @unchecked Sendable {
  public let batch: Int
  public let capacity: Int
  public internal(set) var length = 0
  let keys: [Tensor]
  let values: [Tensor]

  public init(config: DecoderConfig, batch: Int = 1, capacity: Int) {
    self.batch = batch
    self.capacity = capacity
    let shape = [batch, capacity, config.numKeyValueHeads, config.resolvedHeadDim]
    keys = (0..<config.numHiddenLayers).map { _ in Tensor(empty: shape) }
    values = (0..<config.numHiddenLayers).map { _ in Tensor(empty: shape) }
  }

  public func reset() { length = 0 }

  /// Writes new rows (B, T, NKV, HS) at positions length..<length + T.
  func append(layer: Int, k: Tensor, v: Tensor) {
    let (b, t) = (k.shape[0], k.shape[1])
    let row = k.shape[2] * k.shape[3]
    precondition(length + t <= capacity, "KV cache full: \(length) + \(t) > \(capacity)")
    for bi in 0..<b {
      (keys[layer].ptr + (bi * capacity + length) * row).update(from: k.ptr + bi * t * row, count: t * row)
      (values[layer].ptr + (bi * capacity + length) * row).update(from: v.ptr + bi * t * row, count: t * row)
    }
  }
}

/// HF `Qwen2ForCausalLM` / `LlamaForCausalLM`: RMSNorm, RoPE, SwiGLU, grouped-query attention,
/// optional q/k/v bias, tied or untied LM head.
public final class DecoderLM: Module, @unchecked Sendable {
  public final class Attention: Module, @unchecked Sendable {
    public let qProj, kProj, vProj, oProj: Linear
    init(_ c: DecoderConfig, rng: inout PivotRNG) {
      let hs = c.resolvedHeadDim, std = c.initializerRange
      qProj = Linear(c.hiddenSize, c.numAttentionHeads * hs, bias: c.qkvBias, std: std, rng: &rng)
      kProj = Linear(c.hiddenSize, c.numKeyValueHeads * hs, bias: c.qkvBias, std: std, rng: &rng)
      vProj = Linear(c.hiddenSize, c.numKeyValueHeads * hs, bias: c.qkvBias, std: std, rng: &rng)
      oProj = Linear(c.numAttentionHeads * hs, c.hiddenSize, bias: c.oBias, std: std, rng: &rng)
    }
  }
  public final class MLP: Module, @unchecked Sendable {
    public let gateProj, upProj, downProj: Linear
    init(_ c: DecoderConfig, rng: inout PivotRNG) {
      gateProj = Linear(c.hiddenSize, c.intermediateSize, bias: c.mlpBias, std: c.initializerRange, rng: &rng)
      upProj = Linear(c.hiddenSize, c.intermediateSize, bias: c.mlpBias, std: c.initializerRange, rng: &rng)
      downProj = Linear(c.intermediateSize, c.hiddenSize, bias: c.mlpBias, std: c.initializerRange, rng: &rng)
    }
  }
  public final class Layer: Module, @unchecked Sendable {
    public let selfAttn: Attention
    public let mlp: MLP
    public let inputLayernorm, postAttentionLayernorm: RMSNorm
    init(_ c: DecoderConfig, rng: inout PivotRNG) {
      selfAttn = Attention(c, rng: &rng)
      mlp = MLP(c, rng: &rng)
      inputLayernorm = RMSNorm(c.hiddenSize, eps: c.rmsNormEps)
      postAttentionLayernorm = RMSNorm(c.hiddenSize, eps: c.rmsNormEps)
    }
    /// q/k/v and gate/up as single products, once `stackFrozenProjections` made them.
    var qkv: StackedLinear?
    var gateUp: StackedLinear?

    /// q, k, v of normed rows: one stacked product when no gradient is recorded and no adapter
    /// adds to a projection, else the three Linears.
    func qkvProjections(_ y: Tensor) -> (Tensor, Tensor, Tensor) {
      let a = selfAttn
      if !GradMode.isEnabled, !a.qProj.hasAdapter, !a.kProj.hasAdapter, !a.vProj.hasAdapter, let s = qkv?(y) { return (s[0], s[1], s[2]) }
      return (a.qProj(y), a.kProj(y), a.vProj(y))
    }

    /// The SwiGLU MLP of normed rows, gate and up stacked under the same rule.
    func mlpOutput(_ z: Tensor) -> Tensor {
      if !GradMode.isEnabled, !mlp.gateProj.hasAdapter, !mlp.upProj.hasAdapter, let gu = gateUp?(z) {
        return mlp.downProj(swiglu(gate: gu[0], up: gu[1]))
      }
      return mlp.downProj(swiglu(gate: mlp.gateProj(z), up: mlp.upProj(z)))
    }
  }
  public final class Body: Module, @unchecked Sendable {
    public let embedTokens: Embedding
    public let layers: [Layer]
    public let norm: RMSNorm
    init(_ c: DecoderConfig, rng: inout PivotRNG) {
      embedTokens = Embedding(c.vocabSize, c.hiddenSize, std: c.initializerRange, rng: &rng)
      layers = (0..<c.numHiddenLayers).map { _ in Layer(c, rng: &rng) }
      norm = RMSNorm(c.hiddenSize, eps: c.rmsNormEps)
    }
  }

  public let config: DecoderConfig
  public let model: Body
  /// nil when the head is tied to the input embeddings.
  public let lmHead: Linear?

  public init(_ config: DecoderConfig, seed: UInt64 = 0) {
    self.config = config
    var rng = PivotRNG(seed: seed)
    model = Body(config, rng: &rng)
    lmHead = config.tieWordEmbeddings ? nil : Linear(config.hiddenSize, config.vocabSize, bias: false, std: config.initializerRange, rng: &rng)
  }

  public var headWeight: Tensor { lmHead?.weight ?? model.embedTokens.weight }

  /// In training, the first `recomputedLayers` layers keep only their input and rerun in
  /// backward (HF's `gradient_checkpointing` when it covers every layer): each costs one more
  /// forward of the layer per step and saves all of its activations.
  public var recomputedLayers = 0

  /// Every frozen Linear weight of the decoder, and a frozen embedding table (the tied head),
  /// computes in bfloat16 from now on and gives back its float32 memory (inference, or the
  /// frozen LLM of stage 1). Trainable parameters stay float32. Returns the bytes given back.
  @discardableResult
  public func storeFrozenWeightsInBF16() -> Int {
    var saved = storeFrozenLinearWeightsInBF16()
    let table = model.embedTokens.weight
    if !table.requiresGrad && table.bf16Values == nil {
      table.keepOnlyBF16(BF16Matrix(table))
      saved += table.count * 2
    }
    return saved
  }

  /// Stacks each frozen layer's q, k, v and gate, up projections into one product each (no extra
  /// memory: the weights become views of the stacked buffer), used when no gradient is recorded.
  /// Call after `storeFrozenWeightsInBF16` when both are wanted.
  public func stackFrozenProjections() {
    for layer in model.layers {
      let a = layer.selfAttn, m = layer.mlp
      layer.qkv = StackedLinear([a.qProj, a.kProj, a.vProj])
      layer.gateUp = StackedLinear([m.gateProj, m.upProj])
    }
  }

  public func embed(_ ids: [Int32], shape: [Int]) -> Tensor { model.embedTokens(ids, shape: shape) }

  /// Hidden states (B, T, C) before the final norm. Positions default to 0..<T, or continue
  /// the cache. With a cache (inference) the new keys and values are appended to it.
  public func hiddenStates(_ x: Tensor, positions: [Int]? = nil, cache: KVCache? = nil) -> Tensor {
    let t = x.shape[1]
    let c = config, hs = c.resolvedHeadDim
    let start = cache?.length ?? 0
    let pos = positions ?? Array(start..<(start + t))
    let table = RopeTable(positions: pos, headSize: hs, theta: c.ropeTheta)
    var h = x
    for (i, layer) in model.layers.enumerated() {
      if i < recomputedLayers && cache == nil && GradMode.isEnabled {
        let parameters = layer.parameters()
        h = recomputed(h, parameters: parameters) { [unowned self] in self.layerForward(layer, $0, table: table) }
      } else {
        h = layerForward(layer, h, table: table, cache: cache.map { ($0, i, start) })
      }
    }
    cache?.length = start + t
    return h
  }

  /// One decoder layer on h (B, T, C). With a cache (inference) the layer's new keys and
  /// values are appended at `start` and attention reads the whole cache.
  func layerForward(_ layer: Layer, _ h: Tensor, table: RopeTable, cache: (KVCache, layer: Int, start: Int)? = nil) -> Tensor {
    let (b, t) = (h.shape[0], h.shape[1])
    let c = config, hs = c.resolvedHeadDim
    let a = layer.selfAttn
    let y = layer.inputLayernorm(h)
    let (qLin, kLin, vLin) = layer.qkvProjections(y)
    let q = rope(reshape(qLin, [b, t, c.numAttentionHeads, hs]), table: table)
    let k = rope(reshape(kLin, [b, t, c.numKeyValueHeads, hs]), table: table)
    let v = reshape(vLin, [b, t, c.numKeyValueHeads, hs])
    let attn: Tensor
    if let (cache, i, start) = cache {
      cache.append(layer: i, k: k, v: v)
      attn = cachedAttention(q, keys: cache.keys[i], values: cache.values[i], length: start + t)
    } else {
      attn = attention(q, k, v, causal: true)
    }
    let h = h + a.oProj(reshape(attn, [b, t, c.numAttentionHeads * hs]))
    return h + layer.mlpOutput(layer.postAttentionLayernorm(h))
  }

  /// One decode step of N independent sequences, each with its own cache (its own length): the
  /// projections, the MLP and the head run on the N rows together, so the weights are read once
  /// for all of them; rotary positions and attention are per row, over that row's cache.
  /// tokens (N) → logits (N, V); each cache grows by one position.
  public func decodeStep(_ tokens: [Int32], caches: [KVCache]) -> Tensor {
    precondition(tokens.count == caches.count && !tokens.isEmpty, "\(tokens.count) tokens for \(caches.count) caches")
    precondition(caches.allSatisfy { $0.batch == 1 && $0.length < $0.capacity }, "each row needs a one-row cache with room")
    return noGrad {
      let n = tokens.count, c = config, hs = c.resolvedHeadDim
      let (nh, nkv) = (c.numAttentionHeads, c.numKeyValueHeads)
      let table = RopeTable(positions: caches.map(\.length), headSize: hs, theta: c.ropeTheta)
      var h = embed(tokens, shape: [n, 1])  // (N, 1, C)
      for (i, layer) in model.layers.enumerated() {
        let a = layer.selfAttn
        let y = layer.inputLayernorm(h)
        let (qLin, kLin, vLin) = layer.qkvProjections(y)
        let q = rope(reshape(qLin, [n, 1, nh, hs]), table: table)  // (N, 1, NH, HS)
        let k = rope(reshape(kLin, [n, 1, nkv, hs]), table: table)  // (N, 1, NKV, HS)
        let v = reshape(vLin, [n, 1, nkv, hs])
        let attn = Tensor(empty: [n, 1, nh, hs])
        for (r, cache) in caches.enumerated() {
          cache.append(layer: i, k: k.view(offset: r * nkv * hs, shape: [1, 1, nkv, hs]), v: v.view(offset: r * nkv * hs, shape: [1, 1, nkv, hs]))
          let row = cachedAttention(q.view(offset: r * nh * hs, shape: [1, 1, nh, hs]), keys: cache.keys[i], values: cache.values[i], length: cache.length + 1)
          (attn.ptr + r * nh * hs).update(from: row.ptr, count: nh * hs)
        }
        h = h + a.oProj(reshape(attn, [n, 1, nh * hs]))
        h = h + layer.mlpOutput(layer.postAttentionLayernorm(h))
      }
      for cache in caches { cache.length += 1 }
      return logits(reshape(h, [n, c.hiddenSize]))
    }
  }

  /// Final norm and LM head on rows (N, C) → logits (N, V).
  public func logits(_ hidden: Tensor) -> Tensor { head(model.norm(hidden)) }

  /// The LM head alone on normed rows (N, C) → (N, V).
  func head(_ normed: Tensor) -> Tensor {
    if let half = headWeight.bf16Values { return linear(normed, half) }
    return linear(normed, headWeight)
  }

  /// HF's causal-LM loss over hidden (B, T, C) and unshifted labels (B·T, −100 = ignore):
  /// position t predicts labels[t + 1]. The head runs only on rows whose target counts.
  public func causalLMLoss(_ hidden: Tensor, labels: [Int32]) -> (loss: Tensor, counted: Int) {
    let (b, t) = (hidden.shape[0], hidden.shape[1])
    precondition(labels.count == b * t, "\(labels.count) labels for B=\(b), T=\(t)")
    var rows: [Int] = [], targets: [Int32] = []
    for r in 0..<b {
      for i in 0..<(t - 1) where labels[r * t + i + 1] != -100 {
        rows.append(r * t + i)
        targets.append(labels[r * t + i + 1])
      }
    }
    if rows.isEmpty { return (sum(scale(hidden, 0)), 0) }
    let picked = gatherRows(hidden, rows: rows)  // (N, C)
    if !headWeight.requiresGrad {  // a frozen head: vocabulary tiles over all rows, one sweep of W
      let frozen: FrozenHeadWeight = headWeight.bf16Values.map { .bfloat16($0) } ?? .float32(headWeight)
      return (frozenHeadCrossEntropy(model.norm(picked), head: frozen, targets: targets), rows.count)
    }
    // Row blocks: the whole (N, V) logits and their gradient never exist at once.
    let loss = chunkedHeadCrossEntropy(model.norm(picked), targets: targets, headParameters: [headWeight]) { [unowned self] in self.head($0) }
    return (loss, rows.count)
  }
}
