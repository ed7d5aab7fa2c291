import Foundation

// MARK: Normalisation and softmax (last axis)

public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
  let c = x.size(-1), n = x.count / c
  if let weight { precondition(weight.shape == [c], "layer norm weight \(weight.shape) for width \(c)") }
  let out = Tensor(empty: x.shape)
  let stats = Tensor(empty: [2, n])  // mean, rstd
  Kernels.layerNormForward(out: out.ptr, mean: stats.ptr, rstd: stats.ptr + n, inp: x.ptr,
                           weight: weight?.ptr, bias: bias?.ptr, n: n, c: c, eps: eps)
  let inputs = [x] + [weight, bias].compactMap { $0 }
  return out.record(inputs) { g in
    Kernels.layerNormBackward(
      dinp: x.requiresGrad ? x.gradPointer() : nil,
      dweight: weight?.requiresGrad == true ? weight!.gradPointer() : nil,
      dbias: bias?.requiresGrad == true ? bias!.gradPointer() : nil,
      dout: g, inp: x.ptr, weight: weight?.ptr, mean: stats.ptr, rstd: stats.ptr + n, n: n, c: c)
  }
}

public func rmsNorm(_ x: Tensor, weight: Tensor, eps: Float) -> Tensor {
  let c = x.size(-1), n = x.count / c
  precondition(weight.shape == [c], "RMS norm weight \(weight.shape) for width \(c)")
  let out = Tensor(empty: x.shape)
  let rstd = Tensor(empty: [n])
  Kernels.rmsNormForward(out: out.ptr, rstd: rstd.ptr, inp: x.ptr, weight: weight.ptr, n: n, c: c, eps: eps)
  return out.record([x, weight]) { g in
    Kernels.rmsNormBackward(
      dinp: x.requiresGrad ? x.gradPointer() : nil, dweight: weight.requiresGrad ? weight.gradPointer() : nil,
      dout: g, inp: x.ptr, weight: weight.ptr, rstd: rstd.ptr, n: n, c: c)
  }
}

public func softmax(_ x: Tensor) -> Tensor {
  let c = x.size(-1), n = x.count / c
  let out = Tensor(empty: x.shape)
  Kernels.softmaxForward(out: out.ptr, inp: x.ptr, n: n, c: c)
  let (xs, y) = (x.slot, out.detached())  // the backward needs the output, not the input
  return out.record([x]) { g in
    Kernels.softmaxBackward(dinp: xs.gradPointer(), dout: g, out: y.ptr, n: n, c: c)
  }
}

public func logSoftmax(_ x: Tensor) -> Tensor {
  let c = x.size(-1), n = x.count / c
  let out = Tensor(empty: x.shape)
  Kernels.logSoftmaxForward(out: out.ptr, inp: x.ptr, n: n, c: c)
  let (xs, y) = (x.slot, out.detached())
  return out.record([x]) { g in
    Kernels.logSoftmaxBackward(dinp: xs.gradPointer(), dout: g, out: y.ptr, n: n, c: c)
  }
}

// MARK: Loss

/// Mean cross-entropy of logits (N, V) against targets (N), skipping `ignoreIndex`
/// (PyTorch's default −100). Returns a scalar; 0 when nothing is counted.
public func crossEntropy(_ logits: Tensor, targets: [Int32], ignoreIndex: Int32 = -100) -> Tensor {
  let v = logits.size(-1), n = logits.count / v
  precondition(targets.count == n, "cross-entropy: \(targets.count) targets for \(n) rows of logits")
  for t in targets where t != ignoreIndex {
    precondition(t >= 0 && Int(t) < v, "cross-entropy target \(t) outside the vocabulary of \(v)")
  }
  let lse = Tensor(empty: [n])
  let (total, counted) = targets.withUnsafeBufferPointer {
    Kernels.crossEntropyForward(lse: lse.ptr, logits: logits.ptr, targets: $0.baseAddress!, n: n, v: v, ignoreIndex: ignoreIndex)
  }
  let out = Tensor([counted == 0 ? 0 : Float(total / Double(counted))], shape: [])
  return out.record([logits]) { g in
    guard counted > 0 else { return }
    targets.withUnsafeBufferPointer {
      Kernels.crossEntropyBackward(dlogits: logits.gradPointer(), dloss: g[0] / Float(counted), logits: logits.ptr,
                                   lse: lse.ptr, targets: $0.baseAddress!, n: n, v: v, ignoreIndex: ignoreIndex)
    }
  }
}

/// Mean cross-entropy of an LM head over x (N, C): `head` maps a row block (R, C) to its logits
/// (R, V) with the head's parameters `headParameters`. Rows go through in blocks of `chunkRows`, so
/// the (N, V) logits and their gradient never exist at once (256 rows × 151,936 logits are 155 MB
/// each). A frozen head's gradient is all the input's: each block's is computed in the forward
/// pass, unscaled, and scaled by the upstream gradient in backward. A trainable head recomputes
/// each block's logits in backward (one more head GEMM) and accumulates its own gradient too.
/// Equals `crossEntropy(head(x), targets)` up to summation order.
public func chunkedHeadCrossEntropy(
  _ x: Tensor, targets: [Int32], ignoreIndex: Int32 = -100, chunkRows: Int = 64, headParameters: [Tensor],
  head: @escaping (Tensor) -> Tensor
) -> Tensor {
  let c = x.size(-1), n = x.count / c
  precondition(targets.count == n, "cross-entropy: \(targets.count) targets for \(n) rows")
  let headTrains = headParameters.contains { $0.requiresGrad }
  let recording = GradMode.isEnabled && (x.requiresGrad || headTrains)
  let blocks = stride(from: 0, to: n, by: chunkRows).map { $0..<min($0 + chunkRows, n) }

  /// One block: its logits, their log-sum-exp, the summed loss and the counted rows.
  func forward(_ rows: Range<Int>, grad: Bool) -> (block: Tensor, logits: Tensor, lse: Tensor, total: Double, counted: Int) {
    let block = Tensor(empty: [rows.count, c])  // (R, C), a leaf
    block.ptr.update(from: x.ptr + rows.lowerBound * c, count: rows.count * c)
    block.requiresGrad = grad && x.requiresGrad
    let logits = grad ? head(block) : noGrad { head(block) }  // (R, V)
    let v = logits.size(-1)
    let lse = Tensor(empty: [rows.count])
    let (total, counted) = targets[rows].withUnsafeBufferPointer { t in
      for id in t where id != ignoreIndex { precondition(id >= 0 && Int(id) < v, "cross-entropy target \(id) outside the vocabulary of \(v)") }
      return Kernels.crossEntropyForward(lse: lse.ptr, logits: logits.ptr, targets: t.baseAddress!, n: rows.count, v: v, ignoreIndex: ignoreIndex)
    }
    return (block, logits, lse, total, counted)
  }

  /// Backpropagates dloss · (softmax − onehot) of one block through the head: into the head's
  /// gradients when it trains, and returns the block's input gradient (R, C) when x needs one.
  func backward(_ rows: Range<Int>, _ f: (block: Tensor, logits: Tensor, lse: Tensor, total: Double, counted: Int), dloss: Float) -> Tensor? {
    guard f.counted > 0, f.logits.requiresGrad else { return nil }
    let dlogits = Tensor.zeros(f.logits.shape)  // (R, V)
    targets[rows].withUnsafeBufferPointer { t in
      Kernels.crossEntropyBackward(dlogits: dlogits.ptr, dloss: dloss, logits: f.logits.ptr, lse: f.lse.ptr, targets: t.baseAddress!,
                                   n: rows.count, v: f.logits.size(-1), ignoreIndex: ignoreIndex)
    }
    f.logits.backward(seed: dlogits)
    return f.block.grad
  }

  var total = 0.0, counted = 0
  // A frozen head: the input gradient, unscaled, block by block now (N, C).
  let dx = recording && !headTrains ? Tensor.zeros([n, c]) : nil
  for rows in blocks {
    let f = forward(rows, grad: dx != nil)
    total += f.total
    counted += f.counted
    if let dx, let g = backward(rows, f, dloss: 1) { (dx.ptr + rows.lowerBound * c).update(from: g.ptr, count: rows.count * c) }
  }
  let out = Tensor([counted == 0 ? 0 : Float(total / Double(counted))], shape: [])
  guard recording, counted > 0 else { return out }
  return out.record([x] + headParameters) { g in
    let scale = g[0] / Float(counted)
    if let dx {
      let gx = x.gradPointer(), src = dx.ptr
      for i in 0..<(n * c) { gx[i] += scale * src[i] }
      return
    }
    for rows in blocks {  // a trainable head: recompute each block's logits, then backpropagate them
      let f = forward(rows, grad: true)
      if let gblock = backward(rows, f, dloss: scale), x.requiresGrad {
        let gx = x.gradPointer() + rows.lowerBound * c, src = gblock.ptr
        for i in 0..<(rows.count * c) { gx[i] += src[i] }
      }
    }
  }
}

// MARK: Attention

/// cos/sin tables (T or B·T rows, HS/2) for a set of positions: a decoder computes them once
/// per forward and every layer's q and k reuse them.
public struct RopeTable: Sendable {
  public let positions: Int
  public let headSize: Int
  let cos: [Float]
  let sin: [Float]
  public init(positions: [Int], headSize: Int, theta: Float) {
    self.positions = positions.count
    self.headSize = headSize
    (cos, sin) = Kernels.ropeTables(positions: positions, headSize: headSize, theta: theta)
  }
}

/// Rotary embedding on x (B, T, NH, HS) at the given positions (T, shared by the batch,
/// or B·T), HF `rotate_half` convention.
public func rope(_ x: Tensor, positions: [Int], theta: Float) -> Tensor {
  precondition(x.rank == 4, "rope expects (B, T, NH, HS), got \(x.shape)")
  return rope(x, table: RopeTable(positions: positions, headSize: x.shape[3], theta: theta))
}

public func rope(_ x: Tensor, table: RopeTable) -> Tensor {
  precondition(x.rank == 4, "rope expects (B, T, NH, HS), got \(x.shape)")
  let (b, t, nh, hs) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
  precondition(table.positions == t || table.positions == b * t, "rope: \(table.positions) positions for B=\(b), T=\(t)")
  precondition(table.headSize == hs, "rope table for head size \(table.headSize), input \(x.shape)")
  let perBatch = table.positions == b * t && b > 1
  let (cosT, sinT) = (table.cos, table.sin)
  let out = Tensor(empty: x.shape)
  Kernels.rope(out: out.ptr, inp: x.ptr, cos: cosT, sin: sinT, b: b, t: t, nh: nh, hs: hs, perBatch: perBatch, sign: 1, accumulate: false)
  let xs = x.slot  // a rotation: its backward needs no values
  return out.record([x]) { g in
    Kernels.rope(out: xs.gradPointer(), inp: g, cos: cosT, sin: sinT, b: b, t: t, nh: nh, hs: hs, perBatch: perBatch, sign: -1, accumulate: true)
  }
}

/// Scaled dot-product attention. q (B, T, NH, HS); k, v (B, S, NKV, HS) with NH a multiple
/// of NKV (grouped-query heads); keyMask (B, S), 1 = attend. Returns (B, T, NH, HS).
/// With `causal`, query i (at absolute position S − T + i) sees keys 0…S − T + i.
public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, causal: Bool, keyMask: Tensor? = nil, scale: Float? = nil) -> Tensor {
  precondition(q.rank == 4 && k.rank == 4 && v.rank == 4, "attention expects rank-4 q, k, v")
  let (b, t, nh, hs) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
  let (s, nkv) = (k.shape[1], k.shape[2])
  precondition(k.shape == [b, s, nkv, hs] && v.shape == k.shape, "attention: q \(q.shape), k \(k.shape), v \(v.shape)")
  precondition(nh % nkv == 0, "attention: \(nh) query heads not a multiple of \(nkv) key/value heads")
  if let keyMask { precondition(keyMask.shape == [b, s], "key mask \(keyMask.shape), expected [\(b), \(s)]") }
  let shape = Kernels.AttentionShape(b: b, t: t, s: s, nh: nh, nkv: nkv, hs: hs, scale: scale, causal: causal)
  let out = Tensor(empty: q.shape)
  let probs = Tensor(empty: [b, nh, t, s])  // (B, NH, T, S)
  Kernels.attentionForward(out: out.ptr, probs: probs.ptr, q: q.ptr, k: k.ptr, v: v.ptr, keyMask: keyMask?.ptr, shape: shape)
  return out.record([q, k, v]) { g in
    let scratch = Tensor(empty: [b, nkv, t, s])  // one (T, S) block per worker unit
    defer { withExtendedLifetime(scratch) {} }
    Kernels.attentionBackward(
      dq: q.requiresGrad ? q.gradPointer() : nil, dk: k.requiresGrad ? k.gradPointer() : nil,
      dv: v.requiresGrad ? v.gradPointer() : nil, scratch: scratch.ptr, dout: g, probs: probs.ptr,
      q: q.ptr, k: k.ptr, v: v.ptr, shape: shape)
  }
}

// MARK: Lookup

/// Rows of `weight` (V, C) picked by `ids`; the result has shape `idsShape + [C]`.
/// Backward scatter-adds into the weight's gradient.
public func embedding(_ ids: [Int32], shape idsShape: [Int], weight: Tensor) -> Tensor {
  let c = weight.size(-1), v = weight.shape[0]
  precondition(ids.count == idsShape.reduce(1, *), "embedding: \(ids.count) ids for shape \(idsShape)")
  let out = Tensor(empty: idsShape + [c])
  let wp = weight.ptr, op = out.ptr
  for (r, id) in ids.enumerated() {
    precondition(id >= 0 && Int(id) < v, "token id \(id) outside the embedding table of \(v) rows")
    (op + r * c).update(from: wp + Int(id) * c, count: c)
  }
  return out.record([weight]) { g in
    let gw = weight.gradPointer()
    for (r, id) in ids.enumerated() {
      let dst = gw + Int(id) * c, src = g + r * c
      for j in 0..<c { dst[j] += src[j] }
    }
  }
}

/// Rows `rows` of x viewed as (N, C): the LM head then runs only where labels count.
public func gatherRows(_ x: Tensor, rows: [Int]) -> Tensor {
  let c = x.size(-1), n = x.count / c
  let out = Tensor(empty: [rows.count, c])
  for (i, r) in rows.enumerated() {
    precondition(r >= 0 && r < n, "gatherRows: row \(r) of \(n)")
    (out.ptr + i * c).update(from: x.ptr + r * c, count: c)
  }
  let xs = x.slot
  return out.record([x]) { g in
    let gx = xs.gradPointer()
    for (i, r) in rows.enumerated() {
      let dst = gx + r * c, src = g + i * c
      for j in 0..<c { dst[j] += src[j] }
    }
  }
}

/// x (…, C) with the rows `rows` (as a flat (N, C) view) replaced by the rows of `src` (len(rows), C):
/// how soft image tokens take the place of the image slot's placeholder embeddings.
public func scatterRows(_ x: Tensor, rows: [Int], from src: Tensor) -> Tensor {
  let c = x.size(-1), n = x.count / c
  precondition(src.shape == [rows.count, c], "scatterRows: source \(src.shape) for \(rows.count) rows of width \(c)")
  let out = x.clone()
  for (i, r) in rows.enumerated() {
    precondition(r >= 0 && r < n, "scatterRows: row \(r) of \(n)")
    (out.ptr + r * c).update(from: src.ptr + i * c, count: c)
  }
  let replaced = Set(rows)
  return out.record([x, src]) { g in
    if x.requiresGrad {
      let gx = x.gradPointer()
      for r in 0..<n where !replaced.contains(r) {
        let dst = gx + r * c, s = g + r * c
        for j in 0..<c { dst[j] += s[j] }
      }
    }
    if src.requiresGrad {
      let gs = src.gradPointer()
      for (i, r) in rows.enumerated() {
        let dst = gs + i * c, s = g + r * c
        for j in 0..<c { dst[j] += s[j] }
      }
    }
  }
}

// MARK: Patch embedding

/// Non-overlapping P×P patches of images (B, Cin, H, W) as rows (B, NP, Cin·P·P), patch order
/// row-major, features ordered (cin, y, x) to match a conv weight (C, Cin, P, P).
public func unfoldPatches(_ images: Tensor, patch p: Int) -> Tensor {
  precondition(images.rank == 4, "patches expect (B, C, H, W), got \(images.shape)")
  let (b, cin, h, w) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
  precondition(h % p == 0 && w % p == 0, "image \(h)×\(w) is not a multiple of the patch size \(p)")
  let gh = h / p, gw = w / p, np = gh * gw, f = cin * p * p
  let out = Tensor(empty: [b, np, f])
  @inline(__always) func walk(_ body: (_ patchIndex: Int, _ pixelIndex: Int, _ count: Int) -> Void) {
    for bi in 0..<b {
      for py in 0..<gh {
        for px in 0..<gw {
          let row = (bi * np + py * gw + px) * f
          for c in 0..<cin {
            for y in 0..<p {
              let src = ((bi * cin + c) * h + py * p + y) * w + px * p
              body(row + (c * p + y) * p, src, p)
            }
          }
        }
      }
    }
  }
  let ip = images.ptr, op = out.ptr
  walk { dst, src, n in (op + dst).update(from: ip + src, count: n) }
  return out.record([images]) { g in
    let gi = images.gradPointer()
    walk { dst, src, n in for j in 0..<n { gi[src + j] += g[dst + j] } }
  }
}

/// A stride = kernel conv2d, as unfold + GEMM: images (B, Cin, H, W), weight (C, Cin, P, P) → (B, NP, C).
public func patchEmbed(_ images: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
  let p = weight.shape[2]
  let cols = unfoldPatches(images, patch: p)
  return linear(cols, reshape(weight, [weight.shape[0], weight.count / weight.shape[0]]), bias)
}

/// Inference-only attention against a KV cache. q (B, T, NH, HS); `keys`/`values` are cache
/// buffers (B, capacity, NKV, HS) whose first `length` rows are valid (the T new ones included).
/// Causal: new row i sits at position length − T + i. Records no gradient.
public func cachedAttention(_ q: Tensor, keys: Tensor, values: Tensor, length: Int) -> Tensor {
  let (b, t, nh, hs) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
  let (capacity, nkv) = (keys.shape[1], keys.shape[2])
  precondition(keys.shape == [b, capacity, nkv, hs] && values.shape == keys.shape, "cache \(keys.shape) for q \(q.shape)")
  precondition(length <= capacity && length >= t, "cache length \(length) for \(t) new rows and capacity \(capacity)")
  let shape = Kernels.AttentionShape(b: b, t: t, s: length, nh: nh, nkv: nkv, hs: hs, kvBatchStride: capacity * nkv * hs, causal: true)
  let out = Tensor(empty: q.shape)
  let probs = Tensor(empty: [b, nh, t, length])
  // Held to the end of the call: Swift may release a local after its last use, `.ptr`.
  withExtendedLifetime(probs) {
    Kernels.attentionForward(out: out.ptr, probs: probs.ptr, q: q.ptr, k: keys.ptr, v: values.ptr, keyMask: nil, shape: shape)
  }
  return out
}

// MARK: Pooling

/// The input cells (start, end) that output cell `i` of `outSize` averages over an axis of
/// `inSize`, as PyTorch's adaptive_avg_pool2d picks them (equal to avg_pool2d with
/// kernel = stride = in/out when that divides).
@inline(__always) public func adaptivePoolWindow(_ i: Int, inSize: Int, outSize: Int) -> (Int, Int) {
  (i * inSize / outSize, ((i + 1) * inSize + outSize - 1) / outSize)
}

/// 2-D adaptive average pooling of a square grid of tokens: x (B, G·G, C), rows in row-major
/// grid order → (B, P·P, C). How an MLP bridge shows the LLM a few positions per image.
public func adaptiveAvgPoolGrid(_ x: Tensor, grid g: Int, to p: Int) -> Tensor {
  precondition(x.rank == 3 && x.shape[1] == g * g, "grid pooling expects (B, \(g)·\(g), C), got \(x.shape)")
  precondition(p >= 1 && p <= g, "pooled grid \(p) must be between 1 and the grid \(g)")
  let (b, c) = (x.shape[0], x.shape[2])
  let out = Tensor.zeros([b, p * p, c])
  // Each output cell: its window and 1 / its cell count.
  var windows: [(y0: Int, y1: Int, x0: Int, x1: Int, weight: Float)] = []
  for oy in 0..<p {
    let (y0, y1) = adaptivePoolWindow(oy, inSize: g, outSize: p)
    for ox in 0..<p {
      let (x0, x1) = adaptivePoolWindow(ox, inSize: g, outSize: p)
      windows.append((y0, y1, x0, x1, 1 / Float((y1 - y0) * (x1 - x0))))
    }
  }
  for bi in 0..<b {
    for (cell, w) in windows.enumerated() {
      let dst = out.ptr + (bi * p * p + cell) * c
      for y in w.y0..<w.y1 {
        for xx in w.x0..<w.x1 {
          let src = x.ptr + (bi * g * g + y * g + xx) * c
          for j in 0..<c { dst[j] += src[j] }
        }
      }
      for j in 0..<c { dst[j] *= w.weight }
    }
  }
  let xs = x.slot
  return out.record([x]) { grad in
    let gx = xs.gradPointer()
    for bi in 0..<b {
      for (cell, w) in windows.enumerated() {
        let src = grad + (bi * p * p + cell) * c
        for y in w.y0..<w.y1 {
          for xx in w.x0..<w.x1 {
            let dst = gx + (bi * g * g + y * g + xx) * c
            for j in 0..<c { dst[j] += src[j] * w.weight }
          }
        }
      }
    }
  }
}
