import Foundation

/// A frozen weight matrix (R, C) stored as bfloat16 bits (the top half of each float32), for
/// inference and for frozen layers: half the bytes of float32, and decode is bound by the
/// bytes it reads. Values are rounded to nearest even once, at conversion; every product is
/// computed in float32.
public final class BF16Matrix: @unchecked Sendable {
  public let rows: Int
  public let cols: Int
  public let bits: UnsafeMutablePointer<UInt16>  // (R, C)

  /// Rounds a float32 matrix (R, C) to bfloat16.
  public init(_ weight: Tensor) {
    precondition(weight.rank == 2, "BF16Matrix from \(weight.shape): needs (rows, cols)")
    rows = weight.shape[0]
    cols = weight.shape[1]
    var raw: UnsafeMutableRawPointer?
    guard posix_memalign(&raw, 64, max(rows * cols, 1) * 2) == 0, let raw else {
      fatalError("Pivot: out of memory allocating \(rows * cols * 2) bytes")
    }
    bits = raw.bindMemory(to: UInt16.self, capacity: rows * cols)
    let src = weight.ptr, dst = bits
    parallelFor(rows * cols, grain: 1 << 16) { r in for i in r { dst[i] = Kernels.bf16Bits(src[i]) } }
  }

  deinit { free(bits) }

  /// The float32 values it holds (R, C), for tests and export.
  public func toTensor() -> Tensor {
    let t = Tensor(empty: [rows, cols])
    Kernels.bf16ToFloat(out: t.ptr, inp: bits, count: rows * cols)
    return t
  }
}

extension Kernels {
  // MARK: bfloat16 conversion

  /// float32 → bfloat16 bits, round to nearest even (NaN stays NaN), as torch's `.to(torch.bfloat16)`.
  @inline(__always)
  public static func bf16Bits(_ x: Float) -> UInt16 {
    let u = x.bitPattern
    if x.isNaN { return UInt16(truncatingIfNeeded: u >> 16) | 0x40 }
    let roundingBias = UInt32(0x7FFF) + ((u >> 16) & 1)
    return UInt16(truncatingIfNeeded: (u &+ roundingBias) >> 16)
  }

  public static func bf16ToFloat(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<UInt16>, count: Int) {
    var i = 0
    while i + 8 <= count {
      let w = UnsafeRawPointer(inp + i).loadUnaligned(as: SIMD8<UInt16>.self)
      UnsafeMutableRawPointer(out + i).storeBytes(of: widen(w), as: SIMD8<Float>.self)
      i += 8
    }
    while i < count { out[i] = Float(bitPattern: UInt32(inp[i]) << 16); i += 1 }
  }

  /// Eight bfloat16 lanes to float32: zero-extend and shift into the high half.
  @inline(__always)
  static func widen(_ w: SIMD8<UInt16>) -> SIMD8<Float> {
    unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: w) &<< 16, to: SIMD8<Float>.self)
  }

  // MARK: GEMV with bfloat16 weights

  /// out (M) = W (M, K) · inp (K) [+ bias (M)], W as bfloat16 bits, float32 accumulation.
  /// Rows go to workers in chunks; four rows at a time share each load of `inp`.
  public static func gemvBF16(
    out: UnsafeMutablePointer<Float>, weight: UnsafePointer<UInt16>, inp: UnsafePointer<Float>,
    bias: UnsafePointer<Float>?, m: Int, k: Int
  ) {
    let k8 = k & ~7
    @inline(__always) func tail(_ row: UnsafePointer<UInt16>) -> Float {
      var s: Float = 0
      for j in k8..<k { s += Float(bitPattern: UInt32(row[j]) << 16) * inp[j] }
      return s
    }
    parallelFor(m, grain: max(4, 65536 / max(k, 1))) { rows in
      var r = rows.lowerBound
      while r + 4 <= rows.upperBound {
        let w0 = weight + r * k, w1 = w0 + k, w2 = w1 + k, w3 = w2 + k
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var j = 0
        while j < k8 {
          let x = UnsafeRawPointer(inp + j).loadUnaligned(as: SIMD8<Float>.self)
          a0.addProduct(widen(UnsafeRawPointer(w0 + j).loadUnaligned(as: SIMD8<UInt16>.self)), x)
          a1.addProduct(widen(UnsafeRawPointer(w1 + j).loadUnaligned(as: SIMD8<UInt16>.self)), x)
          a2.addProduct(widen(UnsafeRawPointer(w2 + j).loadUnaligned(as: SIMD8<UInt16>.self)), x)
          a3.addProduct(widen(UnsafeRawPointer(w3 + j).loadUnaligned(as: SIMD8<UInt16>.self)), x)
          j += 8
        }
        out[r] = a0.sum() + tail(w0) + (bias?[r] ?? 0)
        out[r + 1] = a1.sum() + tail(w1) + (bias?[r + 1] ?? 0)
        out[r + 2] = a2.sum() + tail(w2) + (bias?[r + 2] ?? 0)
        out[r + 3] = a3.sum() + tail(w3) + (bias?[r + 3] ?? 0)
        r += 4
      }
      while r < rows.upperBound {
        let w0 = weight + r * k
        var a0 = SIMD8<Float>()
        var j = 0
        while j < k8 {
          let x = UnsafeRawPointer(inp + j).loadUnaligned(as: SIMD8<Float>.self)
          a0.addProduct(widen(UnsafeRawPointer(w0 + j).loadUnaligned(as: SIMD8<UInt16>.self)), x)
          j += 8
        }
        out[r] = a0.sum() + tail(w0) + (bias?[r] ?? 0)
        r += 1
      }
    }
  }
}

/// Output features converted to float32 per tile when more than one row goes through a
/// bfloat16 weight: a tile (128, in) stays in L2 while SGEMM reads it.
let bf16TileRows = 128

/// y = x · Wᵀ + b with W a frozen bfloat16 matrix (out, in). One row is a bfloat16 GEMV; more
/// rows convert W a tile of output features at a time and run SGEMM on it. The input gradient
/// flows (dx = dy · W, tile by tile); W gets none.
public func linear(_ x: Tensor, _ weight: BF16Matrix, _ bias: Tensor? = nil) -> Tensor {
  let inF = weight.cols, outF = weight.rows
  precondition(x.size(-1) == inF, "linear: input \(x.shape) does not end in \(inF) (bf16 weight \(outF)×\(inF))")
  if let bias { precondition(bias.shape == [outF], "linear bias \(bias.shape) for \(outF) outputs") }
  let n = x.count / inF
  let out = Tensor(empty: Array(x.shape.dropLast()) + [outF])  // (N, out)
  if n == 1 {
    Kernels.gemvBF16(out: out.ptr, weight: weight.bits, inp: x.ptr, bias: bias?.ptr, m: outF, k: inF)
  } else {
    if let bias {
      let bp = bias.ptr, op = out.ptr
      for r in 0..<n { (op + r * outF).update(from: bp, count: outF) }
    }
    let tile = Tensor(empty: [min(bf16TileRows, outF), inF])  // (tile, in) float32
    for j0 in stride(from: 0, to: outF, by: bf16TileRows) {
      let rows = min(bf16TileRows, outF - j0)
      Kernels.bf16ToFloat(out: tile.ptr, inp: weight.bits + j0 * inF, count: rows * inF)
      sgemm(transA: false, transB: true, m: n, n: rows, k: inF, a: x.ptr, lda: inF, b: tile.ptr, ldb: inF,
            beta: bias == nil ? 0 : 1, c: out.ptr + j0, ldc: outF)
    }
  }
  let inputs = bias.map { [x, $0] } ?? [x]
  return out.record(inputs) { _, g in
    if x.requiresGrad {  // dx (N, in) += dy (N, out) · W (out, in), a tile of W at a time
      let dx = x.gradPointer()
      let tile = Tensor(empty: [min(bf16TileRows, outF), inF])
      for j0 in stride(from: 0, to: outF, by: bf16TileRows) {
        let rows = min(bf16TileRows, outF - j0)
        Kernels.bf16ToFloat(out: tile.ptr, inp: weight.bits + j0 * inF, count: rows * inF)
        sgemm(transA: false, transB: false, m: n, n: inF, k: rows, a: g + j0, lda: outF, b: tile.ptr, ldb: inF,
              beta: 1, c: dx, ldc: inF)
      }
    }
    if let bias, bias.requiresGrad {
      let gb = bias.gradPointer()
      for r in 0..<n { let row = g + r * outF; for j in 0..<outF { gb[j] += row[j] } }
    }
  }
}
