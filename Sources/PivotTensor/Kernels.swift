import Foundation

/// Forward and backward kernels, side by side, over raw pointers. No autograd here:
/// outputs first, then inputs, then sizes. Backward kernels *add* into gradients.
public enum Kernels {
  // MARK: LayerNorm over the last axis (N rows of C)

  public static func layerNormForward(
    out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
    inp: UnsafePointer<Float>, weight: UnsafePointer<Float>?, bias: UnsafePointer<Float>?, n: Int, c: Int, eps: Float
  ) {
    parallelFor(n, grain: max(1, 4096 / max(c, 1))) { rows in
      for r in rows {
        let x = inp + r * c
        var m: Float = 0
        for i in 0..<c { m += x[i] }
        m /= Float(c)
        var v: Float = 0
        for i in 0..<c { let d = x[i] - m; v += d * d }
        v /= Float(c)
        let s = 1 / (v + eps).squareRoot()
        let o = out + r * c
        for i in 0..<c {
          var y = (x[i] - m) * s
          if let weight { y *= weight[i] }
          if let bias { y += bias[i] }
          o[i] = y
        }
        mean[r] = m
        rstd[r] = s
      }
    }
  }

  public static func layerNormBackward(
    dinp: UnsafeMutablePointer<Float>?, dweight: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>?,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, n: Int, c: Int
  ) {
    for r in 0..<n {
      let x = inp + r * c, g = dout + r * c
      let m = mean[r], s = rstd[r]
      var dnormMean: Float = 0, dnormNormMean: Float = 0
      for i in 0..<c {
        let norm = (x[i] - m) * s
        let dnorm = g[i] * (weight?[i] ?? 1)
        dnormMean += dnorm
        dnormNormMean += dnorm * norm
        dweight?[i] += g[i] * norm
        dbias?[i] += g[i]
      }
      dnormMean /= Float(c)
      dnormNormMean /= Float(c)
      if let dinp {
        let dx = dinp + r * c
        for i in 0..<c {
          let norm = (x[i] - m) * s
          let dnorm = g[i] * (weight?[i] ?? 1)
          dx[i] += (dnorm - dnormMean - norm * dnormNormMean) * s
        }
      }
    }
  }

  // MARK: RMSNorm over the last axis (LLaMA/Qwen2: x · rsqrt(mean(x²) + eps) · w)

  public static func rmsNormForward(
    out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
    inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, n: Int, c: Int, eps: Float
  ) {
    parallelFor(n, grain: max(1, 4096 / max(c, 1))) { rows in
      for r in rows {
        let x = inp + r * c
        var ss: Float = 0
        for i in 0..<c { ss += x[i] * x[i] }
        let s = 1 / (ss / Float(c) + eps).squareRoot()
        let o = out + r * c
        for i in 0..<c { o[i] = x[i] * s * weight[i] }
        rstd[r] = s
      }
    }
  }

  public static func rmsNormBackward(
    dinp: UnsafeMutablePointer<Float>?, dweight: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    rstd: UnsafePointer<Float>, n: Int, c: Int
  ) {
    if let dweight {
      for r in 0..<n {
        let x = inp + r * c, g = dout + r * c, s = rstd[r]
        for i in 0..<c { dweight[i] += g[i] * x[i] * s }
      }
    }
    guard let dinp else { return }
    parallelFor(n, grain: max(1, 4096 / max(c, 1))) { rows in
      for r in rows {
        let x = inp + r * c, g = dout + r * c, s = rstd[r]
        var dot: Float = 0
        for i in 0..<c { dot += g[i] * weight[i] * x[i] * s }
        dot /= Float(c)
        let dx = dinp + r * c
        for i in 0..<c { dx[i] += s * (g[i] * weight[i] - x[i] * s * dot) }
      }
    }
  }

  // MARK: Softmax over the last axis

  public static func softmaxForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, n: Int, c: Int) {
    parallelFor(n, grain: max(1, 4096 / max(c, 1))) { rows in softmaxRows(out: out, inp: inp, rows: rows, c: c) }
  }

  /// Softmax of the given rows on the calling thread (inside an already parallel loop).
  @inline(__always)
  static func softmaxRows(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows: Range<Int>, c: Int) {
    for r in rows {
      let x = inp + r * c, o = out + r * c
      let mx = maxValue(x, count: c)
      if mx == -.infinity { o.update(repeating: 0, count: c); continue }  // fully masked row
      let inv = 1 / sumExp(x, count: c, shift: mx, storingTo: o)
      for i in 0..<c { o[i] *= inv }
    }
  }

  /// dx += y ⊙ (dy − Σ dy·y)
  public static func softmaxBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>, n: Int, c: Int) {
    parallelFor(n, grain: max(1, 4096 / max(c, 1))) { rows in
      for r in rows {
        let y = out + r * c, g = dout + r * c, dx = dinp + r * c
        var dot: Float = 0
        for i in 0..<c { dot += g[i] * y[i] }
        for i in 0..<c { dx[i] += y[i] * (g[i] - dot) }
      }
    }
  }

  public static func logSoftmaxForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, n: Int, c: Int) {
    parallelFor(n, grain: max(1, 4096 / max(c, 1))) { rows in
      for r in rows {
        let x = inp + r * c, o = out + r * c
        let mx = maxValue(x, count: c)
        let lse = mx + logf(sumExp(x, count: c, shift: mx))
        for i in 0..<c { o[i] = x[i] - lse }
      }
    }
  }

  /// dx += dy − softmax · Σ dy
  public static func logSoftmaxBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>, n: Int, c: Int) {
    parallelFor(n, grain: max(1, 4096 / max(c, 1))) { rows in
      for r in rows {
        let y = out + r * c, g = dout + r * c, dx = dinp + r * c
        var sum: Float = 0
        for i in 0..<c { sum += g[i] }
        for i in 0..<c { dx[i] += g[i] - expf(y[i]) * sum }
      }
    }
  }

  // MARK: Cross-entropy with ignore_index, mean over counted rows

  /// Returns the summed loss over counted rows and their count; `lse` (N) keeps each
  /// row's log-sum-exp so backward recomputes softmax without storing (N, V) probabilities.
  public static func crossEntropyForward(
    lse: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
    n: Int, v: Int, ignoreIndex: Int32
  ) -> (sum: Double, counted: Int) {
    var partial = [Double](repeating: 0, count: n)
    partial.withUnsafeMutableBufferPointer { part in
      parallelFor(n, grain: max(1, 16384 / max(v, 1))) { rows in
        for r in rows {
          let t = targets[r]
          if t == ignoreIndex { lse[r] = 0; part[r] = 0; continue }
          let x = logits + r * v
          let mx = maxValue(x, count: v)
          let l = mx + logf(sumExp(x, count: v, shift: mx))
          lse[r] = l
          part[r] = Double(l - x[Int(t)])
        }
      }
    }
    var total = 0.0, counted = 0
    for r in 0..<n where targets[r] != ignoreIndex { total += partial[r]; counted += 1 }
    return (total, counted)
  }

  public static func crossEntropyBackward(
    dlogits: UnsafeMutablePointer<Float>, dloss: Float, logits: UnsafePointer<Float>, lse: UnsafePointer<Float>,
    targets: UnsafePointer<Int32>, n: Int, v: Int, ignoreIndex: Int32
  ) {
    parallelFor(n, grain: max(1, 16384 / max(v, 1))) { rows in
      for r in rows {
        let t = targets[r]
        if t == ignoreIndex { continue }
        let x = logits + r * v, d = dlogits + r * v, l = lse[r]
        var i = 0
        while i + 16 <= v { store16(load16(d + i) + dloss * exp(load16(x + i) - l), d + i); i += 16 }
        while i < v { d[i] += dloss * exp(SIMD16(repeating: x[i] - l))[0]; i += 1 }
        d[Int(t)] -= dloss
      }
    }
  }

  // MARK: RoPE, HF rotate_half convention, on (B, T, NH, HS) rows

  /// cos/sin tables (T, HS/2) for the given positions, computed as HF does in float32:
  /// inv_freq = 1 / theta^(2i/HS), angle = position · inv_freq.
  public static func ropeTables(positions: [Int], headSize: Int, theta: Float) -> (cos: [Float], sin: [Float]) {
    let half = headSize / 2
    let invFreq: [Float] = (0..<half).map { i in 1 / powf(theta, Float(2 * i) / Float(headSize)) }
    var cosT = [Float](repeating: 0, count: positions.count * half)
    var sinT = cosT
    for (t, p) in positions.enumerated() {
      for i in 0..<half {
        let angle = Float(p) * invFreq[i]
        cosT[t * half + i] = cosf(angle)
        sinT[t * half + i] = sinf(angle)
      }
    }
    return (cosT, sinT)
  }

  /// x (B, T, NH, HS); tables (T, HS/2) or (B·T, HS/2) when `perBatch`. `sign` −1 applies
  /// the inverse rotation, which is the backward pass.
  public static func rope(
    out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
    b: Int, t: Int, nh: Int, hs: Int, perBatch: Bool, sign: Float, accumulate: Bool
  ) {
    let half = hs / 2
    parallelFor(b * t, grain: max(1, 8192 / max(nh * hs, 1))) { rows in
      for row in rows {
        let tableRow = perBatch ? row : row % t
        let c = cos + tableRow * half, s = sin + tableRow * half
        for h in 0..<nh {
          let x = inp + (row * nh + h) * hs, o = out + (row * nh + h) * hs
          for i in 0..<half {
            let x1 = x[i], x2 = x[i + half]
            let sn = sign * s[i]
            let y1 = x1 * c[i] - x2 * sn
            let y2 = x2 * c[i] + x1 * sn
            if accumulate { o[i] += y1; o[i + half] += y2 } else { o[i] = y1; o[i + half] = y2 }
          }
        }
      }
    }
  }
}
