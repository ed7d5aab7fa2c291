import CPivotAMX
import Foundation

/// A frozen weight matrix (R, C) stored as bfloat16 bits (the top half of each float32), for
/// inference and for frozen layers: half the bytes of float32, and decode is bound by the
/// bytes it reads. Values are rounded to nearest even once, at conversion (or taken as they
/// are from a bfloat16 checkpoint); every product is computed in float32.
public final class BF16Matrix: @unchecked Sendable {
  public let rows: Int
  public let cols: Int
  public let bits: UnsafePointer<UInt16>  // (R, C)
  /// Frees `bits` on deinit when this matrix allocated them.
  private let allocated: UnsafeMutablePointer<UInt16>?
  /// Keeps borrowed bits alive: a mapped checkpoint or the matrix this one is a row block of.
  private let owner: AnyObject?

  /// Uninitialised storage for (rows, cols).
  private init(rows: Int, cols: Int) {
    self.rows = rows
    self.cols = cols
    var raw: UnsafeMutableRawPointer?
    guard posix_memalign(&raw, 64, max(rows * cols, 1) * 2) == 0, let raw else {
      fatalError("Pivot: out of memory allocating \(rows * cols * 2) bytes")
    }
    let p = raw.bindMemory(to: UInt16.self, capacity: max(rows * cols, 1))
    allocated = p
    bits = UnsafePointer(p)
    owner = nil
  }

  /// Rounds a float32 matrix (R, C) to bfloat16.
  public convenience init(_ weight: Tensor) {
    precondition(weight.rank == 2, "BF16Matrix from \(weight.shape): needs (rows, cols)")
    self.init(rows: weight.shape[0], cols: weight.shape[1])
    let src = weight.ptr, dst = allocated!
    parallelFor(rows * cols, grain: 1 << 16) { r in for i in r { dst[i] = Kernels.bf16Bits(src[i]) } }
  }

  /// Bits owned by someone else (a bfloat16 tensor of a mapped checkpoint): no copy.
  public init(borrowing bits: UnsafePointer<UInt16>, rows: Int, cols: Int, owner: AnyObject) {
    self.rows = rows
    self.cols = cols
    self.bits = bits
    self.allocated = nil
    self.owner = owner
  }

  /// Rows `range` of `parent`, sharing its bits.
  public init(rowsOf parent: BF16Matrix, _ range: Range<Int>) {
    precondition(range.upperBound <= parent.rows, "rows \(range) of a \(parent.rows)-row matrix")
    rows = range.count
    cols = parent.cols
    bits = parent.bits + range.lowerBound * parent.cols
    allocated = nil
    owner = parent
  }

  /// The row blocks of `parts` (equal column counts) one after another. Parts that already
  /// follow each other in memory (gate and up of an HF checkpoint, mapped) are viewed, not copied.
  public static func stacking(_ parts: [BF16Matrix]) -> BF16Matrix {
    let cols = parts[0].cols, rows = parts.reduce(0) { $0 + $1.rows }
    precondition(parts.allSatisfy { $0.cols == cols }, "stacked bfloat16 matrices need equal column counts")
    if zip(parts, parts.dropFirst()).allSatisfy({ $0.bits + $0.rows * cols == $1.bits }) {
      return BF16Matrix(borrowing: parts[0].bits, rows: rows, cols: cols, owner: Owners(parts))
    }
    let m = BF16Matrix(rows: rows, cols: cols)
    var row = 0
    for p in parts {
      (m.allocated! + row * cols).update(from: p.bits, count: p.rows * cols)
      row += p.rows
    }
    return m
  }

  deinit { if let allocated { free(allocated) } }

  /// The float32 values it holds (R, C), for tests and export.
  public func toTensor() -> Tensor {
    let t = Tensor(empty: [rows, cols])
    let src = bits, dst = t.ptr
    parallelFor(rows * cols, grain: 1 << 18) { r in
      Kernels.bf16ToFloat(out: dst + r.lowerBound, inp: src + r.lowerBound, count: r.count)
    }
    return t
  }
}

/// Keeps the matrices a stacked view borrows from alive.
private final class Owners {
  let parts: [BF16Matrix]
  init(_ parts: [BF16Matrix]) { self.parts = parts }
}

/// An address range with no access rights, standing in for float32 values that were given back:
/// a stray read of them faults at once instead of returning stale numbers.
final class NoAccessRange: @unchecked Sendable {
  let base: UnsafeMutableRawPointer
  let bytes: Int
  init(bytes: Int) {
    self.bytes = max(bytes, 4096)
    guard let p = mmap(nil, self.bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), p != MAP_FAILED else {
      fatalError("Pivot: cannot reserve \(bytes) bytes of address space")
    }
    base = p
  }
  deinit { munmap(base, bytes) }
}

extension Tensor {
  /// Makes `values` the only copy of this frozen (R, C) parameter: its float32 memory is given
  /// back. Layers that know bfloat16 (Linear, Embedding) compute with it; `floatValues()` widens
  /// it for export. Reading `ptr` afterwards faults.
  public func keepOnlyBF16(_ values: BF16Matrix) {
    precondition(!requiresGrad, "bfloat16-only storage is for frozen weights; freeze the parameter first")
    precondition(shape == [values.rows, values.cols], "bfloat16 values \(values.rows)×\(values.cols) for a \(shape) parameter")
    repoint(to: Tensor.noAccessStorage(count), offset: 0)
    bf16Values = values
    // The float32 block just went back to the pool; hand it to the system now, or converting a
    // whole model would hold every converted matrix's float32 copy idle at once.
    BufferPool.shared.drain()
  }

  /// A frozen (R, C) tensor whose only values are `values`.
  public static func bf16Only(_ values: BF16Matrix) -> Tensor {
    let n = values.rows * values.cols
    let t = Tensor(storage: noAccessStorage(n), shape: [values.rows, values.cols])
    t.bf16Values = values
    return t
  }

  private static func noAccessStorage(_ count: Int) -> Storage {
    let range = NoAccessRange(bytes: count * 4)
    return Storage(borrowing: range.base.bindMemory(to: Float.self, capacity: max(count, 1)), capacity: count, owner: range)
  }

  /// The float32 values: this tensor, or its bfloat16-only values widened (export, checks).
  public func floatValues() -> Tensor { bf16Values?.toTensor() ?? self }
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

  // MARK: GEMV

  /// out (N, M) = inp (N, K) · W (M, K)ᵀ [+ bias (M)], W float32 or bfloat16 bits, float32
  /// accumulation, for few rows N (decode: one row per sequence). Bound by reading W: rows of W
  /// go to Pivot's workers in contiguous blocks, four at a time share each load of an input, and
  /// a block of four is used by every input row while it is in cache, so N rows read W from
  /// memory once. Each input row's arithmetic is the same whatever N is, so a sequence decoded
  /// beside others gets exactly the numbers it gets alone.
  @inline(__always)
  static func gemv<W: GEMVWeight>(
    _: W.Type, out: UnsafeMutablePointer<Float>, weight: UnsafePointer<W>, inp: UnsafePointer<Float>,
    bias: UnsafePointer<Float>?, m: Int, k: Int, rows n: Int = 1
  ) {
    let k16 = k & ~15, k8 = k & ~7
    @inline(__always) func rest(_ row: UnsafePointer<W>, _ inp: UnsafePointer<Float>, _ acc: SIMD8<Float>) -> Float {
      var acc = acc
      if k16 < k8 { acc.addProduct(W.load8(row + k16), UnsafeRawPointer(inp + k16).loadUnaligned(as: SIMD8<Float>.self)) }
      var s = acc.sum()
      for j in k8..<k { s += W.widen(row[j]) * inp[j] }
      return s
    }
    parallelFor(m, grain: max(4, 65536 / max(k, 1))) { rows in
      var r = rows.lowerBound
      while r + 4 <= rows.upperBound {
        let w0 = weight + r * k, w1 = w0 + k, w2 = w1 + k, w3 = w2 + k
        for b in 0..<n {
          let inp = inp + b * k, out = out + b * m
          var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
          var b0 = SIMD8<Float>(), b1 = SIMD8<Float>(), b2 = SIMD8<Float>(), b3 = SIMD8<Float>()
          var j = 0
          while j < k16 {
            let x = UnsafeRawPointer(inp + j).loadUnaligned(as: SIMD8<Float>.self)
            let y = UnsafeRawPointer(inp + j + 8).loadUnaligned(as: SIMD8<Float>.self)
            a0.addProduct(W.load8(w0 + j), x); b0.addProduct(W.load8(w0 + j + 8), y)
            a1.addProduct(W.load8(w1 + j), x); b1.addProduct(W.load8(w1 + j + 8), y)
            a2.addProduct(W.load8(w2 + j), x); b2.addProduct(W.load8(w2 + j + 8), y)
            a3.addProduct(W.load8(w3 + j), x); b3.addProduct(W.load8(w3 + j + 8), y)
            j += 16
          }
          out[r] = rest(w0, inp, a0 + b0) + (bias?[r] ?? 0)
          out[r + 1] = rest(w1, inp, a1 + b1) + (bias?[r + 1] ?? 0)
          out[r + 2] = rest(w2, inp, a2 + b2) + (bias?[r + 2] ?? 0)
          out[r + 3] = rest(w3, inp, a3 + b3) + (bias?[r + 3] ?? 0)
        }
        r += 4
      }
      while r < rows.upperBound {
        let w0 = weight + r * k
        for b in 0..<n {
          let inp = inp + b * k
          var a0 = SIMD8<Float>(), b0 = SIMD8<Float>()
          var j = 0
          while j < k16 {
            a0.addProduct(W.load8(w0 + j), UnsafeRawPointer(inp + j).loadUnaligned(as: SIMD8<Float>.self))
            b0.addProduct(W.load8(w0 + j + 8), UnsafeRawPointer(inp + j + 8).loadUnaligned(as: SIMD8<Float>.self))
            j += 16
          }
          out[b * m + r] = rest(w0, inp, a0 + b0) + (bias?[r] ?? 0)
        }
        r += 1
      }
    }
  }

  /// out (N, M) = inp (N, K) · W (M, K)ᵀ [+ bias], W float32; see `gemv`.
  public static func gemvF32(
    out: UnsafeMutablePointer<Float>, weight: UnsafePointer<Float>, inp: UnsafePointer<Float>, bias: UnsafePointer<Float>?, m: Int, k: Int,
    rows n: Int = 1
  ) {
    gemv(Float.self, out: out, weight: weight, inp: inp, bias: bias, m: m, k: k, rows: n)
  }

  /// out (N, M) = inp (N, K) · W (M, K)ᵀ [+ bias], W bfloat16 bits. For even K, each 32-bit load
  /// holds two weights: `<< 16` makes the even one a float32 and `& 0xFFFF0000` the odd one, so
  /// widening costs two bit operations per 16 weights, against inputs split into even and odd
  /// lanes once per call. Several rows share each block of W as `gemv` does.
  public static func gemvBF16(
    out: UnsafeMutablePointer<Float>, weight: UnsafePointer<UInt16>, inp: UnsafePointer<Float>, bias: UnsafePointer<Float>?, m: Int, k: Int,
    rows n: Int = 1
  ) {
    guard k % 2 == 0, k >= 32 else {
      gemv(UInt16.self, out: out, weight: weight, inp: inp, bias: bias, m: m, k: k, rows: n)
      return
    }
    let half = k / 2
    let split = UnsafeMutablePointer<Float>.allocate(capacity: n * k)  // (N, 2, K/2): each row's even lanes, then odd lanes
    defer { split.deallocate() }
    for b in 0..<n {
      let x = inp + b * k, e = split + b * k
      for i in 0..<half { e[i] = x[2 * i]; e[half + i] = x[2 * i + 1] }
    }
    let h8 = half & ~7
    /// Pairs `from..<K/2` of one weight row against one input row, one at a time (after the 8-pair SIMD loop).
    @inline(__always) func pairTail(_ row: UnsafePointer<UInt16>, _ even: UnsafePointer<Float>, from start: Int) -> Float {
      let odd = even + half
      var s: Float = 0
      for i in start..<half {
        s += Float(bitPattern: UInt32(row[2 * i]) << 16) * even[i] + Float(bitPattern: UInt32(row[2 * i + 1]) << 16) * odd[i]
      }
      return s
    }
    @inline(__always) func dot(_ row: UnsafePointer<UInt16>, _ even: UnsafePointer<Float>) -> Float {
      let pairs = UnsafeRawPointer(row), odd = even + half
      var a = SIMD8<Float>(), b = SIMD8<Float>()
      var i = 0
      while i < h8 {
        let u = pairs.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self)
        a.addProduct(unsafeBitCast(u &<< 16, to: SIMD8<Float>.self), UnsafeRawPointer(even + i).loadUnaligned(as: SIMD8<Float>.self))
        b.addProduct(unsafeBitCast(u & 0xFFFF_0000, to: SIMD8<Float>.self), UnsafeRawPointer(odd + i).loadUnaligned(as: SIMD8<Float>.self))
        i += 8
      }
      return (a + b).sum() + pairTail(row, even, from: i)
    }
    parallelFor(m, grain: max(4, 65536 / k)) { rows in
      var r = rows.lowerBound
      // Four rows per pass: four weight streams in flight (decode waits on memory, not arithmetic).
      while r + 4 <= rows.upperBound {
        let w0 = UnsafeRawPointer(weight + r * k), w1 = w0 + 2 * k, w2 = w1 + 2 * k, w3 = w2 + 2 * k
        // Four input rows at a time: two weight rows widened once serve all four (eight
        // accumulators, each summed in the same order as below and as one row alone).
        var grouped = 0
        while grouped + 4 <= n {
          for pair in stride(from: 0, to: 4, by: 2) {
            let p0 = w0 + pair * 2 * k, p1 = p0 + 2 * k
            let e0 = UnsafePointer(split + grouped * k), e1 = e0 + k, e2 = e1 + k, e3 = e2 + k
            var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>(), a03 = SIMD8<Float>()
            var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>(), a13 = SIMD8<Float>()
            var i = 0
            while i < h8 {
              // The next two weight rows' lines, so memory streams while these rows are multiplied.
              pivot_prefetch(p0 + 4 * k + i * 4)
              pivot_prefetch(p1 + 4 * k + i * 4)
              let u0 = p0.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self)
              let u1 = p1.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self)
              let ev0 = unsafeBitCast(u0 &<< 16, to: SIMD8<Float>.self), od0 = unsafeBitCast(u0 & 0xFFFF_0000, to: SIMD8<Float>.self)
              let ev1 = unsafeBitCast(u1 &<< 16, to: SIMD8<Float>.self), od1 = unsafeBitCast(u1 & 0xFFFF_0000, to: SIMD8<Float>.self)
              @inline(__always) func step(_ x: UnsafePointer<Float>, _ a0: inout SIMD8<Float>, _ a1: inout SIMD8<Float>) {
                let xe = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
                let xo = UnsafeRawPointer(x + half + i).loadUnaligned(as: SIMD8<Float>.self)
                a0.addProduct(ev0, xe)
                a1.addProduct(ev1, xe)
                a0.addProduct(od0, xo)
                a1.addProduct(od1, xo)
              }
              step(e0, &a00, &a10)
              step(e1, &a01, &a11)
              step(e2, &a02, &a12)
              step(e3, &a03, &a13)
              i += 8
            }
            let sums = (SIMD4<Float>(a00.sum(), a01.sum(), a02.sum(), a03.sum()), SIMD4<Float>(a10.sum(), a11.sum(), a12.sum(), a13.sum()))
            for q in 0..<2 {
              let row = r + pair + q, rowSums = q == 0 ? sums.0 : sums.1
              for t in 0..<4 { out[(grouped + t) * m + row] = rowSums[t] + pairTail(weight + row * k, e0 + t * k, from: i) + (bias?[row] ?? 0) }
            }
          }
          grouped += 4
        }
        for b in grouped..<n {
          let even = UnsafePointer(split + b * k), odd = even + half, out = out + b * m
          var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
          let ahead = b == 0  // the first pass over these rows fetches the next four
          var i = 0
          while i < h8 {
            if ahead {
              pivot_prefetch(w0 + 8 * k + i * 4)
              pivot_prefetch(w1 + 8 * k + i * 4)
              pivot_prefetch(w2 + 8 * k + i * 4)
              pivot_prefetch(w3 + 8 * k + i * 4)
            }
            let xe = UnsafeRawPointer(even + i).loadUnaligned(as: SIMD8<Float>.self)
            let xo = UnsafeRawPointer(odd + i).loadUnaligned(as: SIMD8<Float>.self)
            let u0 = w0.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self)
            let u1 = w1.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self)
            let u2 = w2.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self)
            let u3 = w3.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self)
            a0.addProduct(unsafeBitCast(u0 &<< 16, to: SIMD8<Float>.self), xe)
            a1.addProduct(unsafeBitCast(u1 &<< 16, to: SIMD8<Float>.self), xe)
            a2.addProduct(unsafeBitCast(u2 &<< 16, to: SIMD8<Float>.self), xe)
            a3.addProduct(unsafeBitCast(u3 &<< 16, to: SIMD8<Float>.self), xe)
            a0.addProduct(unsafeBitCast(u0 & 0xFFFF_0000, to: SIMD8<Float>.self), xo)
            a1.addProduct(unsafeBitCast(u1 & 0xFFFF_0000, to: SIMD8<Float>.self), xo)
            a2.addProduct(unsafeBitCast(u2 & 0xFFFF_0000, to: SIMD8<Float>.self), xo)
            a3.addProduct(unsafeBitCast(u3 & 0xFFFF_0000, to: SIMD8<Float>.self), xo)
            i += 8
          }
          let sums = SIMD4<Float>(a0.sum(), a1.sum(), a2.sum(), a3.sum())
          for q in 0..<4 { out[r + q] = sums[q] + pairTail(weight + (r + q) * k, even, from: i) + (bias?[r + q] ?? 0) }
        }
        r += 4
      }
      while r < rows.upperBound {
        for b in 0..<n { out[b * m + r] = dot(weight + r * k, split + b * k) + (bias?[r] ?? 0) }
        r += 1
      }
    }
  }
}

/// A weight element type the GEMV kernel reads: float32, or bfloat16 bits widened on load.
protocol GEMVWeight {
  static func load8(_ p: UnsafePointer<Self>) -> SIMD8<Float>
  static func widen(_ x: Self) -> Float
}

extension Float: GEMVWeight {
  @inline(__always) static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
  @inline(__always) static func widen(_ x: Float) -> Float { x }
}

extension UInt16: GEMVWeight {
  @inline(__always) static func load8(_ p: UnsafePointer<UInt16>) -> SIMD8<Float> {
    Kernels.widen(UnsafeRawPointer(p).loadUnaligned(as: SIMD8<UInt16>.self))
  }
  @inline(__always) static func widen(_ x: UInt16) -> Float { Float(bitPattern: UInt32(x) << 16) }
}

/// Inference rows up to this many go through the GEMV kernels (each row as it would go alone);
/// more go through GEMM.
public let gemvMaxRows = 8

/// Output features converted to float32 per tile when more than one row goes through a
/// bfloat16 weight: a tile (128, in) stays in L2 while SGEMM reads it.
let bf16TileRows = 128

/// y = x · Wᵀ + b with W a frozen bfloat16 matrix (out, in). One row is a bfloat16 GEMV; more
/// rows give each worker whole tiles of output features, which it widens to float32 and
/// multiplies with a one-thread SGEMM. The input gradient flows (dx = dy · W, each worker
/// summing its tiles' share, then the shares added); W gets none.
public func linear(_ x: Tensor, _ weight: BF16Matrix, _ bias: Tensor? = nil) -> Tensor {
  let inF = weight.cols, outF = weight.rows
  precondition(x.size(-1) == inF, "linear: input \(x.shape) does not end in \(inF) (bf16 weight \(outF)×\(inF))")
  if let bias { precondition(bias.shape == [outF], "linear bias \(bias.shape) for \(outF) outputs") }
  let n = x.count / inF
  let out = Tensor(empty: Array(x.shape.dropLast()) + [outF])  // (N, out)
  let tiles = (outF + bf16TileRows - 1) / bf16TileRows
  let bf16 = n > 1 && MatmulPrecision.current == .bfloat16
  if n == 1 || (n <= gemvMaxRows && !GradMode.isEnabled) {  // decode, one row per sequence
    Kernels.gemvBF16(out: out.ptr, weight: weight.bits, inp: x.ptr, bias: bias?.ptr, m: outF, k: inF, rows: n)
  } else {
    if let bias { Kernels.seedRows(out.ptr, with: bias.ptr, rows: n, cols: outF) }
    if bf16 {  // bfloat16 products read the bits as they are: B = Wᵀ
      gemmBF16(m: n, n: outF, k: inF, a: x.ptr, aRowStride: inF, aColStride: 1, b: .bits(weight.bits),
               bRowStride: 1, bColStride: inF, c: out.ptr, ldc: outF, accumulate: bias != nil)
    } else {
      let xp = x.ptr, op = out.ptr, beta: Float = bias == nil ? 0 : 1
      parallelOverBLASCalls(tiles, grain: 1) { mine in
        let tile = Tensor(empty: [min(bf16TileRows, outF), inF])  // (tile, in) float32
        defer { withExtendedLifetime(tile) {} }  // until the last SGEMM has read it
        for t in mine {
          let j0 = t * bf16TileRows, rows = min(bf16TileRows, outF - j0)
          Kernels.bf16ToFloat(out: tile.ptr, inp: weight.bits + j0 * inF, count: rows * inF)
          sgemm(transA: false, transB: true, m: n, n: rows, k: inF, a: xp, lda: inF, b: tile.ptr, ldb: inF,
                beta: beta, c: op + j0, ldc: outF)
        }
      }
    }
  }
  let inputs = bias.map { [x, $0] } ?? [x]
  let xs = x.slot  // the weight is frozen: no input values kept
  return out.record(inputs) { g in
    if xs.requiresGrad && bf16 {  // dx (N, in) += dy (N, out) · W (out, in)
      gemmBF16(m: n, n: inF, k: outF, a: g, aRowStride: outF, aColStride: 1, b: .bits(weight.bits),
               bRowStride: inF, bColStride: 1, c: xs.gradPointer(), ldc: inF, accumulate: true)
    } else if xs.requiresGrad {
      let dx = xs.gradPointer()
      let workers = min(Threads.count, tiles)
      let shares = (1..<max(workers, 1)).map { _ in Tensor.zeros([n, inF]) }  // (N, in) per extra worker
      let chunk = (tiles + workers - 1) / workers
      parallelOverBLASCalls(workers, grain: 1) { ws in
        let tile = Tensor(empty: [min(bf16TileRows, outF), inF])
        defer { withExtendedLifetime(tile) {} }
        for w in ws {
          let sum = w == 0 ? dx : shares[w - 1].ptr
          for t in (w * chunk)..<min(tiles, (w + 1) * chunk) {
            let j0 = t * bf16TileRows, rows = min(bf16TileRows, outF - j0)
            Kernels.bf16ToFloat(out: tile.ptr, inp: weight.bits + j0 * inF, count: rows * inF)
            sgemm(transA: false, transB: false, m: n, n: inF, k: rows, a: g + j0, lda: outF, b: tile.ptr, ldb: inF,
                  beta: 1, c: sum, ldc: inF)
          }
        }
      }
      for share in shares { let sp = share.ptr; for i in 0..<(n * inF) { dx[i] += sp[i] } }
    }
    if let bias, bias.requiresGrad { Kernels.addColumnSums(of: g, rows: n, cols: outF, into: bias.gradPointer()) }
  }
}

/// Rows of a bfloat16 embedding table (V, C) for ids, widened: (ids…, C). The table is frozen,
/// so nothing is recorded for it.
public func embedding(_ ids: [Int32], shape idsShape: [Int], weight: BF16Matrix) -> Tensor {
  let c = weight.cols, v = weight.rows
  precondition(ids.count == idsShape.reduce(1, *), "embedding: \(ids.count) ids for shape \(idsShape)")
  let out = Tensor(empty: idsShape + [c])
  for (r, id) in ids.enumerated() {
    precondition(id >= 0 && Int(id) < v, "token id \(id) outside the embedding table of \(v) rows")
    Kernels.bf16ToFloat(out: out.ptr + r * c, inp: weight.bits + Int(id) * c, count: c)
  }
  return out
}
