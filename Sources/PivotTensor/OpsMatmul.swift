import Foundation

/// Matrix product on the last two axes: a (…, M, K) · b (K, N) or batched b (…, K, N).
/// `transposeA`/`transposeB` read a as (…, K, M) and b as (…, N, K) without copying.
public func matmul(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
  precondition(a.rank >= 2 && b.rank >= 2, "matmul needs rank ≥ 2, got \(a.shape) and \(b.shape)")
  let aRows = a.size(-2), aCols = a.size(-1)
  let m = transposeA ? aCols : aRows, k = transposeA ? aRows : aCols
  let bRows = b.size(-2), bCols = b.size(-1)
  let kb = transposeB ? bCols : bRows, n = transposeB ? bRows : bCols
  precondition(k == kb, "matmul inner sizes differ: \(a.shape)\(transposeA ? "ᵀ" : "") · \(b.shape)\(transposeB ? "ᵀ" : "")")
  let batchShape = Array(a.shape.dropLast(2))
  let batch = batchShape.reduce(1, *)
  let sharedB = b.rank == 2
  if !sharedB {
    precondition(Array(b.shape.dropLast(2)) == batchShape, "batched matmul needs equal batch axes: \(a.shape) · \(b.shape)")
  }
  let out = Tensor(empty: batchShape + [m, n])
  let aStride = aRows * aCols, bStride = sharedB ? 0 : bRows * bCols, cStride = m * n
  // A shared right-hand side with an untransposed left one is a single tall GEMM.
  let fold = sharedB && !transposeA
  if fold {
    sgemm(transA: false, transB: transposeB, m: batch * m, n: n, k: k, a: a.ptr, lda: aCols,
          b: b.ptr, ldb: bCols, beta: 0, c: out.ptr, ldc: n)
  } else {
    for i in 0..<batch {
      sgemm(transA: transposeA, transB: transposeB, m: m, n: n, k: k, a: a.ptr + i * aStride, lda: aCols,
            b: b.ptr + i * bStride, ldb: bCols, beta: 0, c: out.ptr + i * cStride, ldc: n)
    }
  }
  return out.record([a, b]) { g in
    if a.requiresGrad {
      let ga = a.gradPointer()
      if fold {
        sgemm(transA: false, transB: !transposeB, m: batch * m, n: k, k: n, a: g, lda: n,
              b: b.ptr, ldb: bCols, beta: 1, c: ga, ldc: aCols)
      } else {
        for i in 0..<batch {
          let gi = g + i * cStride, bi = b.ptr + i * bStride, gai = ga + i * aStride
          if !transposeA {  // dA = dC · op(B)ᵀ
            sgemm(transA: false, transB: !transposeB, m: m, n: k, k: n, a: gi, lda: n, b: bi, ldb: bCols, beta: 1, c: gai, ldc: aCols)
          } else {  // dA (K, M) = op(B) · dCᵀ
            sgemm(transA: transposeB, transB: true, m: k, n: m, k: n, a: bi, lda: bCols, b: gi, ldb: n, beta: 1, c: gai, ldc: aCols)
          }
        }
      }
    }
    if b.requiresGrad {
      let gb = b.gradPointer()
      if fold {
        if !transposeB {  // dB (K, N) = Aᵀ · dC over all rows
          sgemm(transA: true, transB: false, m: k, n: n, k: batch * m, a: a.ptr, lda: aCols, b: g, ldb: n, beta: 1, c: gb, ldc: bCols)
        } else {  // dB (N, K) = dCᵀ · A
          sgemm(transA: true, transB: false, m: n, n: k, k: batch * m, a: g, lda: n, b: a.ptr, ldb: aCols, beta: 1, c: gb, ldc: bCols)
        }
      } else {
        for i in 0..<batch {
          let gi = g + i * cStride, ai = a.ptr + i * aStride, gbi = gb + i * bStride
          if !transposeB {  // dB (K, N) = op(A)ᵀ · dC
            sgemm(transA: !transposeA, transB: false, m: k, n: n, k: m, a: ai, lda: aCols, b: gi, ldb: n, beta: 1, c: gbi, ldc: bCols)
          } else {  // dB (N, K) = dCᵀ · op(A)
            sgemm(transA: true, transB: transposeA, m: n, n: k, k: m, a: gi, lda: n, b: ai, ldb: aCols, beta: 1, c: gbi, ldc: bCols)
          }
        }
      }
    }
  }
}

extension Kernels {
  /// Every row of out (rows, cols) = row: a linear's C seeded with its bias, so the GEMM
  /// accumulates onto it (beta = 1).
  static func seedRows(_ out: UnsafeMutablePointer<Float>, with row: UnsafePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows { (out + r * cols).update(from: row, count: cols) }
  }

  /// into (cols) += Σ_rows m (rows, cols): a bias's gradient.
  static func addColumnSums(of m: UnsafePointer<Float>, rows: Int, cols: Int, into sum: UnsafeMutablePointer<Float>) {
    for r in 0..<rows { let row = m + r * cols; for j in 0..<cols { sum[j] += row[j] } }
  }
}

/// y = x · Wᵀ + b with W stored (out, in) as in PyTorch. x is (…, in).
/// A frozen W (requiresGrad false) costs no weight-gradient GEMM; the input gradient still flows.
public func linear(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil) -> Tensor {
  precondition(weight.rank == 2, "linear weight must be (out, in), got \(weight.shape)")
  let inF = weight.shape[1], outF = weight.shape[0]
  precondition(x.size(-1) == inF, "linear: input \(x.shape) does not end in \(inF) (weight \(weight.shape))")
  if let bias { precondition(bias.shape == [outF], "linear bias \(bias.shape) for \(outF) outputs") }
  let n = x.count / inF
  let out = Tensor(empty: Array(x.shape.dropLast()) + [outF])
  // The precision in effect when the op runs also rules its backward, as autocast does.
  let bf16 = n > 1 && MatmulPrecision.current == .bfloat16
  // Decode (one row, or a few sequences' rows under no-grad): a GEMV streams W once, where SGEMM
  // would pack it first, and gives each row what it gets alone.
  if n == 1 || (n <= gemvMaxRows && !GradMode.isEnabled) {
    Kernels.gemvF32(out: out.ptr, weight: weight.ptr, inp: x.ptr, bias: bias?.ptr, m: outF, k: inF, rows: n)
  } else {
    if let bias { Kernels.seedRows(out.ptr, with: bias.ptr, rows: n, cols: outF) }
    if bf16 {  // B = Wᵀ: B[p][j] = W[j][p]
      gemmBF16(m: n, n: outF, k: inF, a: x.ptr, aRowStride: inF, aColStride: 1, b: .float32(weight.ptr),
               bRowStride: 1, bColStride: inF, c: out.ptr, ldc: outF, accumulate: bias != nil)
    } else {
      sgemm(transA: false, transB: true, m: n, n: outF, k: inF, a: x.ptr, lda: inF, b: weight.ptr, ldb: inF,
            beta: bias == nil ? 0 : 1, c: out.ptr, ldc: outF)
    }
  }
  let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
  // A frozen weight's backward needs no input values: keep x only for dW.
  let xs = x.slot, savedX = weight.requiresGrad ? x : nil
  return out.record(inputs) { g in
    if xs.requiresGrad {  // dx (N, in) = dy (N, out) · W (out, in)
      if bf16 {
        gemmBF16(m: n, n: inF, k: outF, a: g, aRowStride: outF, aColStride: 1, b: .float32(weight.ptr),
                 bRowStride: inF, bColStride: 1, c: xs.gradPointer(), ldc: inF, accumulate: true)
      } else {
        sgemm(transA: false, transB: false, m: n, n: inF, k: outF, a: g, lda: outF, b: weight.ptr, ldb: inF,
              beta: 1, c: xs.gradPointer(), ldc: inF)
      }
    }
    if let savedX, weight.requiresGrad {  // dW (out, in) = dyᵀ · x
      if bf16 {
        gemmBF16(m: outF, n: inF, k: n, a: g, aRowStride: 1, aColStride: outF, b: .float32(savedX.ptr),
                 bRowStride: inF, bColStride: 1, c: weight.gradPointer(), ldc: inF, accumulate: true)
      } else {
        sgemm(transA: true, transB: false, m: outF, n: inF, k: n, a: g, lda: outF, b: savedX.ptr, ldb: inF,
              beta: 1, c: weight.gradPointer(), ldc: inF)
      }
    }
    if let bias, bias.requiresGrad { Kernels.addColumnSums(of: g, rows: n, cols: outF, into: bias.gradPointer()) }
  }
}
