import CPivotAMX

/// How `linear` multiplies when more than one row goes through it, as PyTorch's
/// `torch.set_float32_matmul_precision`: `float32` is exact float32 SGEMM; `bfloat16` rounds
/// both operands to bfloat16 and accumulates in float32 (what `torch.autocast(dtype=bfloat16)`
/// does to a linear), which Intel AMX tiles run several times faster than float32 FMA.
/// One-row products (decode) stay float32 GEMVs: they are bound by memory, not arithmetic.
public enum MatmulPrecision: String, Sendable, CaseIterable, Codable {
  case float32 = "fp32"
  case bfloat16 = "bf16"

  /// Set once at start-up (recipe `model.matmul`, `--matmul`).
  nonisolated(unsafe) public static var global: MatmulPrecision = .float32
  /// A scoped override (`with(_:_:)`): task-local, so concurrent tests do not see each other's.
  @TaskLocal static var scoped: MatmulPrecision?

  public static var current: MatmulPrecision { scoped ?? global }

  /// Runs `body` with `precision` in effect for this task, then restores the previous setting.
  public static func with<R>(_ precision: MatmulPrecision, _ body: () throws -> R) rethrows -> R {
    try $scoped.withValue(precision, operation: body)
  }
}

public enum AMX {
  /// The CPU has AMX-BF16 and the OS gave this process tile state.
  public static let available: Bool = pivot_amx_available() != 0
  /// Set to false (for this task) to send bfloat16 products through the portable path
  /// (rounded operands, SGEMM): the tests check both paths where the CPU has AMX.
  @TaskLocal public static var enabled = true
  public static var inUse: Bool { available && enabled }
}

/// The right-hand operand of a bfloat16 product: float32 values (rounded on packing) or
/// bfloat16 bits, with B[p][j] at `base[p * rowStride + j * colStride]`.
public enum BF16Operand {
  case float32(UnsafePointer<Float>)
  case bits(UnsafePointer<UInt16>)
}

/// C (m, n) = A·B (+ C when `accumulate`), A (m, k) float32 with A[i][p] at
/// a[i·aRowStride + p·aColStride], every input rounded to bfloat16, sums in float32.
/// Strides express transposes, so one routine serves a linear's forward, dx and dW.
public func gemmBF16(
  m: Int, n: Int, k: Int,
  a: UnsafePointer<Float>, aRowStride: Int, aColStride: Int,
  b: BF16Operand, bRowStride: Int, bColStride: Int,
  c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool
) {
  if m == 0 || n == 0 { return }
  if k == 0 {
    if !accumulate { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
    return
  }
  if AMX.inUse {
    amxGEMM(m: m, n: n, k: k, a: a, aRowStride: aRowStride, aColStride: aColStride, b: b,
            bRowStride: bRowStride, bColStride: bColStride, c: c, ldc: ldc, accumulate: accumulate)
  } else {
    roundedSGEMM(m: m, n: n, k: k, a: a, aRowStride: aRowStride, aColStride: aColStride, b: b,
                 bRowStride: bRowStride, bColStride: bColStride, c: c, ldc: ldc, accumulate: accumulate)
  }
}

/// A packed once into tiles, then each worker takes whole 32-column panels of B and C.
private func amxGEMM(
  m: Int, n: Int, k: Int, a: UnsafePointer<Float>, aRowStride: Int, aColStride: Int,
  b: BF16Operand, bRowStride: Int, bColStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool
) {
  let packed = Tensor(empty: [(pivot_amx_packed_a_count(Int32(m), Int32(k)) + 1) / 2])  // bfloat16 tiles in float32 storage
  let panelFloats = (pivot_amx_panel_count() + 1) / 2
  let packedBits = UnsafeMutableRawPointer(packed.ptr).assumingMemoryBound(to: UInt16.self)
  pivot_amx_pack_a(a, aRowStride, aColStride, Int32(m), Int32(k), packedBits)
  let (bBase, bIsBits): (UnsafeRawPointer, Int32) = switch b {
  case .float32(let p): (UnsafeRawPointer(p), 0)
  case .bits(let p): (UnsafeRawPointer(p), 1)
  }
  let panels = (n + 31) / 32
  parallelFor(panels, grain: 1) { mine in
    let scratch = Tensor(empty: [panelFloats])  // this worker's packed B panels
    let scratchBits = UnsafeMutableRawPointer(scratch.ptr).assumingMemoryBound(to: UInt16.self)
    pivot_amx_gemm_columns(
      packedBits, Int32(m), Int32(k), bBase, bIsBits, bRowStride, bColStride,
      Int32(mine.lowerBound * 32), Int32(min(n, mine.upperBound * 32)), c, ldc, accumulate ? 1 : 0, scratchBits)
    withExtendedLifetime(scratch) {}
  }
  withExtendedLifetime(packed) {}
}

/// The same product without AMX: operands rounded to bfloat16 (kept as float32), then SGEMM,
/// B a block of columns at a time so no full rounded copy of a large weight exists.
private func roundedSGEMM(
  m: Int, n: Int, k: Int, a: UnsafePointer<Float>, aRowStride: Int, aColStride: Int,
  b: BF16Operand, bRowStride: Int, bColStride: Int, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool
) {
  let roundedA = Tensor(empty: [m, k])  // (M, K)
  let ra = roundedA.ptr
  parallelFor(m, grain: max(1, 16384 / k)) { rows in
    for i in rows { for p in 0..<k { ra[i * k + p] = Kernels.roundedToBF16(a[i * aRowStride + p * aColStride]) } }
  }
  let block = 256
  let roundedB = Tensor(empty: [k, min(block, n)])  // (K, block)
  let rb = roundedB.ptr
  for j0 in stride(from: 0, to: n, by: block) {
    let cols = min(block, n - j0)
    for p in 0..<k {
      for j in 0..<cols {
        let at = p * bRowStride + (j0 + j) * bColStride
        rb[p * cols + j] = switch b {
        case .float32(let v): Kernels.roundedToBF16(v[at])
        case .bits(let v): Float(bitPattern: UInt32(v[at]) << 16)
        }
      }
    }
    sgemm(transA: false, transB: false, m: m, n: cols, k: k, a: ra, lda: k, b: rb, ldb: cols,
          beta: accumulate ? 1 : 0, c: c + j0, ldc: ldc)
  }
  withExtendedLifetime((roundedA, roundedB)) {}
}

extension Kernels {
  /// x rounded to the nearest bfloat16 (even on ties), as float32.
  @inline(__always)
  public static func roundedToBF16(_ x: Float) -> Float { Float(bitPattern: UInt32(bf16Bits(x)) << 16) }
}
