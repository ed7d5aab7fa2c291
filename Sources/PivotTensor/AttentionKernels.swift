import Foundation

extension Kernels {
  /// Sizes of one scaled-dot-product attention call. q and out are (B, T, NH, HS);
  /// k and v are (B, S, NKV, HS) rows of a buffer whose batch stride is `kvBatchStride`
  /// (S·NKV·HS when contiguous, larger for a KV cache). Query row i sits at absolute
  /// position S − T + i, which is what the causal mask compares against.
  public struct AttentionShape: Sendable {
    public var b, t, s, nh, nkv, hs: Int
    public var kvBatchStride: Int
    public var scale: Float
    public var causal: Bool
    public init(b: Int, t: Int, s: Int, nh: Int, nkv: Int, hs: Int, kvBatchStride: Int? = nil, scale: Float? = nil, causal: Bool) {
      self.b = b; self.t = t; self.s = s; self.nh = nh; self.nkv = nkv; self.hs = hs
      self.kvBatchStride = kvBatchStride ?? s * nkv * hs
      self.scale = scale ?? 1 / Float(hs).squareRoot()
      self.causal = causal
    }
  }

  /// probs (B, NH, T, S) is kept for backward; keyMask (B, S) holds 1 for keys to attend, 0 to skip.
  /// Heads run in parallel, each with single-threaded SGEMMs: a head's products (T × S × HS) are
  /// too small for OpenBLAS's own threading to pay off.
  public static func attentionForward(
    out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>,
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    keyMask: UnsafePointer<Float>?, shape d: AttentionShape
  ) {
    if d.t == 1 && d.hs % 8 == 0 {
      singleQueryAttentionForward(out: out, probs: probs, q: q, k: k, v: v, keyMask: keyMask, shape: d)
      return
    }
    let group = d.nh / d.nkv
    let qStride = d.nh * d.hs, kvStride = d.nkv * d.hs
    let headCost = d.t * d.s * d.hs
    parallelOverBLASCalls(d.b * d.nh, grain: max(1, 65536 / max(headCost, 1))) { heads in
      for bh in heads {
        let b = bh / d.nh, h = bh % d.nh, g = h / group
        let qb = q + b * d.t * qStride + h * d.hs
        let kb = k + b * d.kvBatchStride + g * d.hs
        let vb = v + b * d.kvBatchStride + g * d.hs
        let p = probs + bh * d.t * d.s
        sgemm(transA: false, transB: true, m: d.t, n: d.s, k: d.hs, alpha: d.scale,
              a: qb, lda: qStride, b: kb, ldb: kvStride, beta: 0, c: p, ldc: d.s)
        if d.causal || keyMask != nil {
          let shift = d.s - d.t
          for i in 0..<d.t {
            let row = p + i * d.s
            if d.causal { for j in max(0, i + shift + 1)..<d.s { row[j] = -.infinity } }
            if let keyMask { for j in 0..<d.s where keyMask[b * d.s + j] == 0 { row[j] = -.infinity } }
          }
        }
        softmaxRows(out: p, inp: p, rows: 0..<d.t, c: d.s)
        sgemm(transA: false, transB: false, m: d.t, n: d.hs, k: d.s,
              a: p, lda: d.s, b: vb, ldb: kvStride, beta: 0, c: out + b * d.t * qStride + h * d.hs, ldc: qStride)
      }
    }
  }

  /// One query row per head (a decode step): dot products and the weighted sum of values as
  /// SIMD loops, heads on parallel workers, no BLAS call (whose per-call cost exceeds the work).
  static func singleQueryAttentionForward(
    out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>,
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    keyMask: UnsafePointer<Float>?, shape d: AttentionShape
  ) {
    let group = d.nh / d.nkv
    let kvStride = d.nkv * d.hs
    parallelFor(d.b * d.nh, grain: max(1, 32768 / max(d.s * d.hs, 1))) { heads in
      for bh in heads {
        let b = bh / d.nh, h = bh % d.nh, g = h / group
        let qh = q + bh * d.hs  // (HS): q is (B, 1, NH, HS)
        let kb = k + b * d.kvBatchStride + g * d.hs, vb = v + b * d.kvBatchStride + g * d.hs
        let p = probs + bh * d.s  // (S)
        var mx = -Float.infinity
        for j in 0..<d.s {
          if let keyMask, keyMask[b * d.s + j] == 0 { p[j] = -.infinity; continue }
          let kj = kb + j * kvStride
          var acc = SIMD8<Float>()
          for i in stride(from: 0, to: d.hs, by: 8) {
            acc.addProduct(UnsafeRawPointer(qh + i).loadUnaligned(as: SIMD8<Float>.self),
                           UnsafeRawPointer(kj + i).loadUnaligned(as: SIMD8<Float>.self))
          }
          p[j] = acc.sum() * d.scale
          mx = max(mx, p[j])
        }
        let o = out + bh * d.hs  // (HS)
        if mx == -.infinity { o.update(repeating: 0, count: d.hs); p.update(repeating: 0, count: d.s); continue }
        let inv = 1 / Kernels.sumExp(p, count: d.s, shift: mx, storingTo: p)
        for j in 0..<d.s { p[j] *= inv }
        o.update(repeating: 0, count: d.hs)
        for j in 0..<d.s {
          let w = SIMD8<Float>(repeating: p[j]), vj = vb + j * kvStride
          for i in stride(from: 0, to: d.hs, by: 8) {
            var acc = UnsafeRawPointer(o + i).loadUnaligned(as: SIMD8<Float>.self)
            acc.addProduct(w, UnsafeRawPointer(vj + i).loadUnaligned(as: SIMD8<Float>.self))
            UnsafeMutableRawPointer(o + i).storeBytes(of: acc, as: SIMD8<Float>.self)
          }
        }
      }
    }
  }

  /// Adds into dq, dk, dv (any may be nil). `scratch` holds T·S floats per key/value head of
  /// each batch row (B·NKV·T·S). Work is split by (batch row, key/value head): the query heads
  /// of one group add into the same dk and dv rows, so they stay on one worker.
  public static func attentionBackward(
    dq: UnsafeMutablePointer<Float>?, dk: UnsafeMutablePointer<Float>?, dv: UnsafeMutablePointer<Float>?,
    scratch: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, shape d: AttentionShape
  ) {
    let group = d.nh / d.nkv
    let qStride = d.nh * d.hs, kvStride = d.nkv * d.hs
    let groupCost = group * d.t * d.s * d.hs
    parallelOverBLASCalls(d.b * d.nkv, grain: max(1, 65536 / max(groupCost, 1))) { groups in
      for bg in groups {
        let b = bg / d.nkv, g = bg % d.nkv
        let ds = scratch + bg * d.t * d.s  // (T, S)
        for h in (g * group)..<((g + 1) * group) {
          let bh = b * d.nh + h
          let qOff = b * d.t * qStride + h * d.hs
          let kvOff = b * d.kvBatchStride + g * d.hs
          let p = probs + bh * d.t * d.s
          let go = dout + qOff
          if let dv {
            sgemm(transA: true, transB: false, m: d.s, n: d.hs, k: d.t,
                  a: p, lda: d.s, b: go, ldb: qStride, beta: 1, c: dv + kvOff, ldc: kvStride)
          }
          guard dq != nil || dk != nil else { continue }
          sgemm(transA: false, transB: true, m: d.t, n: d.s, k: d.hs,
                a: go, lda: qStride, b: v + kvOff, ldb: kvStride, beta: 0, c: ds, ldc: d.s)
          for i in 0..<d.t {
            let pr = p + i * d.s, dr = ds + i * d.s
            var dot: Float = 0
            for j in 0..<d.s { dot += pr[j] * dr[j] }
            for j in 0..<d.s { dr[j] = pr[j] * (dr[j] - dot) }
          }
          if let dq {
            sgemm(transA: false, transB: false, m: d.t, n: d.hs, k: d.s, alpha: d.scale,
                  a: ds, lda: d.s, b: k + kvOff, ldb: kvStride, beta: 1, c: dq + qOff, ldc: qStride)
          }
          if let dk {
            sgemm(transA: true, transB: false, m: d.s, n: d.hs, k: d.t, alpha: d.scale,
                  a: ds, lda: d.s, b: q + qOff, ldb: qStride, beta: 1, c: dk + kvOff, ldc: kvStride)
          }
        }
      }
    }
  }
}
