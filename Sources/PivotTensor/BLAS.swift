import COpenBLAS

/// Row-major SGEMM: C = alpha · op(A) · op(B) + beta · C, with op(A) (M, K) and op(B) (K, N).
/// `lda`, `ldb`, `ldc` are the row strides of A, B and C as stored.
@inline(__always)
public func sgemm(
  transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
  alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
  if m == 0 || n == 0 { return }
  if k == 0 {
    if beta == 0 { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
    return
  }
  cblas_sgemm(
    CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// Row-major SGEMV: y = alpha · op(A) · x + beta · y, A stored (M, N) with row stride `lda`;
/// op(A) is A (y has M entries) or Aᵀ (y has N entries).
@inline(__always)
public func sgemv(
  trans: Bool, m: Int, n: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
  x: UnsafePointer<Float>, beta: Float, y: UnsafeMutablePointer<Float>
) {
  if m == 0 || n == 0 { return }
  cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), alpha, a, Int32(lda), x, 1, beta, y, 1)
}
