import Foundation

/// A frozen output layer's weight (V, C): float32 values or bfloat16 bits.
public enum FrozenHeadWeight {
  case float32(Tensor)
  case bfloat16(BF16Matrix)

  var vocab: Int { switch self { case .float32(let w): w.shape[0]; case .bfloat16(let m): m.rows } }
  var width: Int { switch self { case .float32(let w): w.shape[1]; case .bfloat16(let m): m.cols } }

  /// logits (N, cols) = x (N, C) · W[columns]ᵀ, row stride `ldl`. `scratch` holds a float32
  /// copy of a bfloat16 tile when products are float32.
  func logits(_ x: UnsafePointer<Float>, n: Int, columns: Range<Int>, into out: UnsafeMutablePointer<Float>, ldl: Int, scratch: Tensor) {
    product(x, lda: width, n: n, columns: columns, forward: true, into: out, ldo: ldl, accumulate: false, scratch: scratch)
  }

  /// dx (N, C) += dlogits (N, cols) · W[columns]; `scratch` as `logits` left it for these columns.
  func addInputGradient(_ dlogits: UnsafePointer<Float>, n: Int, columns: Range<Int>, ldl: Int, into dx: UnsafeMutablePointer<Float>, scratch: Tensor) {
    product(dlogits, lda: ldl, n: n, columns: columns, forward: false, into: dx, ldo: width, accumulate: true, scratch: scratch)
  }

  /// Row `index` of W as float32.
  func copyRow(_ index: Int, into out: inout [Float]) {
    let c = width
    out.withUnsafeMutableBufferPointer { o in
      switch self {
      case .float32(let w): o.baseAddress!.update(from: w.ptr + index * c, count: c)
      case .bfloat16(let m): Kernels.bf16ToFloat(out: o.baseAddress!, inp: m.bits + index * c, count: c)
      }
    }
  }

  /// forward: out (N, cols) = a (N, C) · W[columns]ᵀ; otherwise out (N, C) = a (N, cols) · W[columns].
  private func product(_ a: UnsafePointer<Float>, lda: Int, n: Int, columns: Range<Int>, forward: Bool,
                       into out: UnsafeMutablePointer<Float>, ldo: Int, accumulate: Bool, scratch: Tensor) {
    let c = width, v0 = columns.lowerBound, cols = columns.count
    let (outCols, depth) = forward ? (cols, c) : (c, cols)
    if MatmulPrecision.current == .bfloat16 {
      let b: BF16Operand = switch self {
      case .float32(let w): .float32(w.ptr + v0 * c)
      case .bfloat16(let m): .bits(m.bits + v0 * c)
      }
      gemmBF16(m: n, n: outCols, k: depth, a: a, aRowStride: lda, aColStride: 1, b: b,
               bRowStride: forward ? 1 : c, bColStride: forward ? c : 1, c: out, ldc: ldo, accumulate: accumulate)
      return
    }
    let w: UnsafePointer<Float>
    switch self {
    case .float32(let t): w = UnsafePointer(t.ptr + v0 * c)
    case .bfloat16(let m):
      if forward { Kernels.bf16ToFloat(out: scratch.ptr, inp: m.bits + v0 * c, count: cols * c) }
      w = UnsafePointer(scratch.ptr)
    }
    sgemm(transA: false, transB: forward, m: n, n: outCols, k: depth, a: a, lda: lda, b: w, ldb: c,
          beta: accumulate ? 1 : 0, c: out, ldc: ldo)
  }
}

/// Mean next-token cross-entropy of x (N, C) through a frozen head W (V, C), ignoring
/// `ignoreIndex` targets, in one sweep over vocabulary tiles for all rows at once. Each tile's
/// logits update a running max m and Σ exp(l − m) per row (Milakov and Gimelshein's online
/// softmax), and exp(l − m) · W[tile] is added to an unnormalised dx whose rows are rescaled by
/// exp(m_old − m_new) whenever m grows, as flash attention does with its output. At the end
/// dx = dx / Σ − W[target]. Neither the (N, V) logits nor their gradient ever exist, and each
/// tile of the head is used by two products (logits, dx), where recomputing logits in a
/// second sweep would need three. Only x gets a gradient: the head is frozen.
public func frozenHeadCrossEntropy(_ x: Tensor, head: FrozenHeadWeight, targets: [Int32], ignoreIndex: Int32 = -100, vocabTile: Int = 2048) -> Tensor {
  let c = x.size(-1), n = x.count / c, v = head.vocab
  precondition(head.width == c, "frozen head (\(v), \(head.width)) for input \(x.shape)")
  precondition(targets.count == n, "cross-entropy: \(targets.count) targets for \(n) rows")
  for t in targets where t != ignoreIndex { precondition(t >= 0 && Int(t) < v, "cross-entropy target \(t) outside the vocabulary of \(v)") }
  let counted = targets.reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) }
  if counted == 0 { return Tensor([0], shape: []) }
  let needsGradient = GradMode.isEnabled && x.requiresGrad
  let tileWidth = min(vocabTile, v)
  let tile = Tensor(empty: [n, tileWidth])  // (N, tile) logits, then exp(logit − running max)
  // (tile, C) float32 copy of a bfloat16 tile, needed only when products are float32.
  let widens = if case .bfloat16 = head, MatmulPrecision.current == .float32 { true } else { false }
  let widened = Tensor(empty: widens ? [tileWidth, c] : [1])
  let dx = needsGradient ? Tensor.zeros([n, c]) : Tensor(empty: [1])  // (N, C) unnormalised
  let xp = x.ptr, lp = tile.ptr, dxp = dx.ptr

  var runningMax = [Float](repeating: -.infinity, count: n), runningSum = [Double](repeating: 0, count: n)
  var targetLogit = [Float](repeating: 0, count: n)
  for v0 in stride(from: 0, to: v, by: tileWidth) {
    let cols = v0..<min(v0 + tileWidth, v)
    head.logits(xp, n: n, columns: cols, into: lp, ldl: tileWidth, scratch: widened)
    runningMax.withUnsafeMutableBufferPointer { mx in
      runningSum.withUnsafeMutableBufferPointer { sm in
        targetLogit.withUnsafeMutableBufferPointer { tl in
          parallelFor(n, grain: max(1, 16384 / cols.count)) { rows in
            for r in rows {
              let row = lp + r * tileWidth
              if targets[r] == ignoreIndex {
                if needsGradient { row.update(repeating: 0, count: cols.count) }
                continue
              }
              let t = Int(targets[r])
              if cols.contains(t) { tl[r] = row[t - v0] }
              let m = max(mx[r], Kernels.maxValue(row, count: cols.count))
              if m > mx[r] {
                // 0 on the first tile (dx and Σ still 0), and when m jumps by more than ~104:
                // then Σ and dx must both drop what they held, so dx is tested before Σ changes.
                let rescale = expf(mx[r] - m)
                if needsGradient && sm[r] > 0 {
                  let d = dxp + r * c
                  for i in 0..<c { d[i] *= rescale }
                }
                sm[r] *= Double(rescale)
                mx[r] = m
              }
              sm[r] += Double(Kernels.sumExp(row, count: cols.count, shift: m, storingTo: needsGradient ? row : nil))
            }
          }
        }
      }
    }
    if needsGradient { head.addInputGradient(lp, n: n, columns: cols, ldl: tileWidth, into: dxp, scratch: widened) }
  }
  withExtendedLifetime((tile, widened)) {}

  var total = 0.0
  for r in 0..<n where targets[r] != ignoreIndex {
    total += Double(runningMax[r] + Float(log(runningSum[r])) - targetLogit[r])
  }
  let out = Tensor([Float(total / Double(counted))], shape: [])
  guard needsGradient else { return out }

  // dx = softmax · W − W[target]: normalise each row and subtract its target's weight row.
  var weightRow = [Float](repeating: 0, count: c)
  for r in 0..<n {
    let row = dxp + r * c
    if targets[r] == ignoreIndex { continue }
    let inverse = Float(1 / runningSum[r])
    head.copyRow(Int(targets[r]), into: &weightRow)
    for i in 0..<c { row[i] = row[i] * inverse - weightRow[i] }
  }
  return out.record([x]) { g in
    let scale = g[0] / Float(counted), gx = x.gradPointer(), src = dx.ptr
    for i in 0..<(n * c) { gx[i] += scale * src[i] }
  }
}
