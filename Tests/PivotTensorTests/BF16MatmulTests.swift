import Foundation
import PivotTensor
import Testing

/// Products with bfloat16 operands and float32 sums (`MatmulPrecision.bfloat16`): the AMX
/// kernel and the portable path, each against a float64 sum of the rounded operands. The
/// only difference allowed is float32 summation order, bounded by 1e-5 of Σ|a·b| per entry.
@Suite("bfloat16 products")
struct BF16MatmulTests {
  static func random(_ count: Int, seed: UInt64) -> [Float] {
    var rng = PivotRNG(seed: seed)
    let t = Tensor(empty: [count])
    rng.fillUniform(t, low: -1, high: 1)
    return t.scalars
  }

  static func rounded(_ x: Float) -> Double { Double(Kernels.roundedToBF16(x)) }

  /// Both paths where the CPU has AMX, the portable one alone where it has not.
  static var paths: [Bool] { AMX.available ? [true, false] : [false] }

  /// Every layout a linear uses: A plain or transposed (dW's dyᵀ), B = Wᵀ (forward) or W (dx)
  /// or activations (dW), float32 or bfloat16 bits; beta 0 or 1. Shapes cover partial tiles,
  /// more than one 256-column block and K beyond one 1024-deep chunk.
  @Test(arguments: [(5, 7, 3), (16, 16, 32), (40, 50, 70), (37, 600, 64), (33, 45, 2080), (40, 40, 1100)])
  func gemmMatchesRoundedFloat64Sum(m: Int, n: Int, k: Int) {
    let aValues = Self.random(m * k, seed: 1), bValues = Self.random(k * n, seed: 2), cStart = Self.random(m * n, seed: 3)
    let bBits = bValues.map { Kernels.bf16Bits($0) }
    for transposedA in [false, true] {
      for transposedB in [false, true] {
        let (ars, acs) = transposedA ? (1, m) : (k, 1)
        let (brs, bcs) = transposedB ? (1, k) : (n, 1)
        var expected = [Double](repeating: 0, count: m * n), bound = expected
        for i in 0..<m {
          for j in 0..<n {
            for p in 0..<k {
              let prod = Self.rounded(aValues[i * ars + p * acs]) * Self.rounded(bValues[p * brs + j * bcs])
              expected[i * n + j] += prod
              bound[i * n + j] += abs(prod)
            }
          }
        }
        for amx in Self.paths {
          for asBits in [false, true] {
            for accumulate in [false, true] {
              var c = accumulate ? cStart : [Float](repeating: .nan, count: m * n)
              aValues.withUnsafeBufferPointer { a in
                bValues.withUnsafeBufferPointer { bf in
                  bBits.withUnsafeBufferPointer { bb in
                    c.withUnsafeMutableBufferPointer { cp in
                      AMX.$enabled.withValue(amx) {
                        gemmBF16(
                          m: m, n: n, k: k, a: a.baseAddress!, aRowStride: ars, aColStride: acs,
                          b: asBits ? .bits(bb.baseAddress!) : .float32(bf.baseAddress!), bRowStride: brs, bColStride: bcs,
                          c: cp.baseAddress!, ldc: n, accumulate: accumulate)
                      }
                    }
                  }
                }
              }
              var worst = 0.0
              for e in 0..<(m * n) {
                let want = expected[e] + (accumulate ? Double(cStart[e]) : 0)
                worst = max(worst, abs(Double(c[e]) - want) / (1e-5 * (bound[e] + abs(want)) + 1e-6))
              }
              #expect(worst <= 1, "\(m)×\(k)·\(k)×\(n) A\(transposedA ? "ᵀ" : "") B\(transposedB ? "ᵀ" : "") \(asBits ? "bf16" : "f32") accumulate \(accumulate) amx \(amx): \(worst) of the bound")
            }
          }
        }
      }
    }
  }

  /// A linear under bfloat16 precision: output, dx, dW and db against float64 sums of the
  /// rounded x, W and dy (dW reads dy and x rounded, db sums dy unrounded, as autocast does),
  /// for a trainable float32 weight and a frozen bfloat16 one.
  @Test(arguments: [false, true])
  func linearForwardAndBackward(bf16Weight: Bool) throws {
    let (rows, inF, outF) = (6, 67, 90)
    let w = Tensor(Self.random(outF * inF, seed: 4), shape: [outF, inF])
    let bias = Tensor(Self.random(outF, seed: 5), shape: [outF])
    let x = Tensor(Self.random(rows * inF, seed: 6), shape: [rows, inF])
    let dy = Tensor(Self.random(rows * outF, seed: 7), shape: [rows, outF])
    x.requiresGrad = true
    w.requiresGrad = !bf16Weight
    bias.requiresGrad = true
    let w16 = BF16Matrix(w)
    for amx in Self.paths {
      x.grad = nil; w.grad = nil; bias.grad = nil
      AMX.$enabled.withValue(amx) {
        MatmulPrecision.with(.bfloat16) {
          let y = bf16Weight ? linear(x, w16, bias) : linear(x, w, bias)
          y.backward(seed: dy)
          for i in 0..<rows {
            for j in 0..<outF {
              var s = Double(bias.ptr[j])
              for p in 0..<inF { s += Self.rounded(x.ptr[i * inF + p]) * Self.rounded(w.ptr[j * inF + p]) }
              #expect(abs(Double(y.ptr[i * outF + j]) - s) < 1e-5, "y[\(i), \(j)] amx \(amx)")
            }
          }
        }
      }
      for i in 0..<rows {
        for p in 0..<inF {
          var s = 0.0
          for j in 0..<outF { s += Self.rounded(dy.ptr[i * outF + j]) * Self.rounded(w.ptr[j * inF + p]) }
          #expect(abs(Double(x.grad!.ptr[i * inF + p]) - s) < 1e-5, "dx[\(i), \(p)] amx \(amx)")
        }
      }
      if bf16Weight {
        #expect(w.grad == nil)
      } else {
        for j in 0..<outF {
          for p in 0..<inF {
            var s = 0.0
            for i in 0..<rows { s += Self.rounded(dy.ptr[i * outF + j]) * Self.rounded(x.ptr[i * inF + p]) }
            #expect(abs(Double(w.grad!.ptr[j * inF + p]) - s) < 1e-5, "dW[\(j), \(p)] amx \(amx)")
          }
        }
      }
      for j in 0..<outF {
        let s = (0..<rows).reduce(0.0) { $0 + Double(dy.ptr[$1 * outF + j]) }
        #expect(abs(Double(bias.grad!.ptr[j]) - s) < 1e-5, "db[\(j)]")
      }
    }
  }

  /// One row (and a few under no-grad) stays a float32 GEMV whatever the precision (decode is
  /// bound by bytes read, and its results must not change with a training setting).
  @Test func oneRowStaysFloat32() {
    let w = Tensor(Self.random(40 * 33, seed: 8), shape: [40, 33])
    let x = Tensor(Self.random(33, seed: 9), shape: [1, 33])
    let exact = noGrad { linear(x, w) }
    let underBF16 = MatmulPrecision.with(.bfloat16) { noGrad { linear(x, w) } }
    #expect(exact.scalars == underBF16.scalars)
    // A few rows under no-grad are several sequences' decode: float32 GEMV rows too.
    let few = Tensor(Self.random(2 * 33, seed: 10), shape: [2, 33])
    #expect(MatmulPrecision.with(.bfloat16) { noGrad { linear(few, w) } }.scalars == noGrad { linear(few, w) }.scalars)
    let n = gemvMaxRows + 1
    let several = Tensor(Self.random(n * 33, seed: 10), shape: [n, 33])
    let rows = MatmulPrecision.with(.bfloat16) { noGrad { linear(several, w) } }
    #expect(rows.scalars != noGrad { linear(several, w) }.scalars, "a GEMM's rows under bf16 precision are rounded")
  }
}
