import Foundation
import PivotNN
import PivotTensor
import Testing

/// The fast paths (GEMV for one row, bfloat16 weights) against the plain float32 SGEMM path.
/// They differ only in summation order, hence the tolerances.
@Suite("Kernel paths")
struct KernelPathTests {
  static func random(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = PivotRNG(seed: seed)
    let t = Tensor(empty: shape)
    rng.fillUniform(t, low: -1, high: 1)
    return t
  }

  @Test func bf16RoundsToNearestEven() {
    #expect(Kernels.bf16Bits(1) == 0x3F80)
    #expect(Kernels.bf16Bits(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // tie, even stays
    #expect(Kernels.bf16Bits(Float(bitPattern: 0x3F81_8000)) == 0x3F82)  // tie, odd rounds up
    #expect(Kernels.bf16Bits(Float(bitPattern: 0x3F80_8001)) == 0x3F81)
    #expect(Kernels.bf16Bits(-2.5) == 0xC020)
    #expect(Kernels.bf16Bits(.nan) & 0x7FC0 == 0x7FC0)
  }

  /// One row (GEMV: odd widths, and an even width whose pairs end in a tail) and several rows
  /// (tiles converted for SGEMM), odd sizes, more than one tile.
  @Test(arguments: [(1, 67, 300), (5, 67, 300), (1, 896, 131), (3, 64, 128), (1, 38, 299)])
  func bf16LinearMatchesFloatLinearOnRoundedWeights(rows: Int, inF: Int, outF: Int) {
    let w = Self.random([outF, inF], seed: 1)
    let bias = Self.random([outF], seed: 2)
    let w16 = BF16Matrix(w)
    let rounded = w16.toTensor()
    for i in 0..<w.count { #expect(rounded.ptr[i] == Float(bitPattern: UInt32(Kernels.bf16Bits(w.ptr[i])) << 16)) }

    let x = Self.random([rows, inF], seed: 3)
    x.requiresGrad = true
    let y = linear(x, w16, bias)
    let seed = Self.random(y.shape, seed: 4)
    y.backward(seed: seed)
    let dx = x.grad!.clone()

    x.grad = nil
    let ref = linear(x, rounded, bias)
    ref.backward(seed: seed)
    let (okY, dY) = compare(y, ref, atol: 1e-4, rtol: 1e-5)
    #expect(okY, "bf16 linear \(rows)×\(inF)→\(outF): max diff \(dY)")
    let (okX, dX) = compare(dx, x.grad!, atol: 1e-4, rtol: 1e-5)
    #expect(okX, "bf16 linear input gradient: max diff \(dX)")
  }

  /// A one-row float32 linear goes through Pivot's GEMV; it must equal that row of the SGEMM
  /// result. Widths cover every tail of the 16- and 8-wide loops, row counts the 4-row blocks.
  @Test(arguments: [(67, 300), (896, 4864), (8, 5), (24, 7), (16, 2), (3, 9), (4099, 3)])
  func gemvRowMatchesGemm(inF: Int, outF: Int) {
    let w = Self.random([outF, inF], seed: 5)
    let bias = Self.random([outF], seed: 6)
    let x = Self.random([3, inF], seed: 7)
    let all = linear(x, w, bias)  // (3, out) by SGEMM (grad mode on: GEMV takes several rows only under no-grad)
    for r in 0..<3 {
      let row = noGrad { linear(slice(x, axis: 0, r..<(r + 1)), w, bias) }  // (1, out) by SGEMV
      // Sums of K products of magnitude ≤ 1 in another order: a few float32 ulps of √K-sized sums.
      let (ok, d) = compare(row, slice(all, axis: 0, r..<(r + 1)), atol: 1e-4, rtol: 1e-5)
      #expect(ok, "row \(r): max diff \(d)")
    }
  }

  /// A few rows under no-grad (decode of several sequences) go through the GEMV kernels together,
  /// reading each weight block once; every row must be bit for bit what it is alone, so a
  /// sequence decoded beside others gets exactly its own answer. Float32 and bfloat16 weights,
  /// widths covering every tail, output counts covering the 4-row blocks and their remainder.
  @Test(arguments: [(67, 300), (896, 131), (38, 29), (64, 4), (4099, 7)])
  func severalGemvRowsEqualEachRowAlone(inF: Int, outF: Int) {
    let w = Self.random([outF, inF], seed: 8)
    let w16 = BF16Matrix(w)
    let bias = Self.random([outF], seed: 9)
    for rows in [2, 5, gemvMaxRows] {
      let x = Self.random([rows, inF], seed: UInt64(10 + rows))
      let together = noGrad { (linear(x, w, bias), linear(x, w16, bias)) }
      for r in 0..<rows {
        let one = slice(x, axis: 0, r..<(r + 1))
        let alone = noGrad { (linear(one, w, bias), linear(one, w16, bias)) }
        for j in 0..<outF {
          #expect(together.0.ptr[r * outF + j] == alone.0.ptr[j], "float32 \(rows) rows, row \(r), output \(j)")
          #expect(together.1.ptr[r * outF + j] == alone.1.ptr[j], "bfloat16 \(rows) rows, row \(r), output \(j)")
        }
      }
    }
  }

  /// The fused SwiGLU against silu(gate) * up: values and both gradients.
  @Test func swigluMatchesComposite() {
    let gate = Self.random([3, 70000], seed: 20)  // more than one parallel chunk
    let up = Self.random([3, 70000], seed: 21)
    for x in [gate, up] { x.ptr[0] = 30; x.ptr[1] = -30 }  // saturated sigmoid on both sides
    let seed = Self.random([3, 70000], seed: 22)
    func run(_ f: (Tensor, Tensor) -> Tensor) -> [Tensor] {
      for x in [gate, up] { x.grad = nil; x.requiresGrad = true }
      let y = f(gate, up)
      y.backward(seed: seed)
      return [y.detached(), gate.grad!.clone(), up.grad!.clone()]
    }
    let fused = run { swiglu(gate: $0, up: $1) }
    let composite = run { silu($0) * $1 }
    for (i, name) in ["out", "dgate", "dup"].enumerated() {
      let (ok, d) = compare(fused[i], composite[i], atol: 1e-6, rtol: 1e-5)
      #expect(ok, "\(name): max diff \(d)")
    }
  }

  @Test func linearLayerUsesItsBF16Copy() {
    var rng = PivotRNG(seed: 8)
    let layer = Linear(40, 24, bias: true, rng: &rng)
    layer.weight.requiresGrad = false
    let x = Self.random([2, 40], seed: 9)
    layer.storeWeightInBF16()
    let y = noGrad { layer(x) }
    #expect(layer.weight.bf16Values != nil, "the float32 weight is given back")
    let ref = noGrad { linear(x, layer.weight.floatValues(), layer.bias) }
    let (ok, d) = compare(y, ref, atol: 1e-6, rtol: 1e-6)
    #expect(ok, "max diff \(d)")
  }
}

/// Attention with heads spread over workers against a plain one-head-at-a-time reference,
/// grouped-query heads, batch > 1, causal, values and all three gradients.
@Suite("Parallel attention", .serialized)
struct ParallelAttentionTests {
  /// softmax(q kᵀ · scale, causal) v per (batch row, head), in float64.
  static func reference(_ q: Tensor, _ k: Tensor, _ v: Tensor) -> [Double] {
    let (b, t, nh, hs) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let (s, nkv) = (k.shape[1], k.shape[2])
    let scale = 1 / Double(hs).squareRoot()
    var out = [Double](repeating: 0, count: q.count)
    for bi in 0..<b {
      for h in 0..<nh {
        let g = h / (nh / nkv)
        for i in 0..<t {
          var scores = [Double](repeating: -.infinity, count: s)
          for j in 0...(i + s - t) {
            var dot = 0.0
            for d in 0..<hs { dot += Double(q.ptr[((bi * t + i) * nh + h) * hs + d]) * Double(k.ptr[((bi * s + j) * nkv + g) * hs + d]) }
            scores[j] = dot * scale
          }
          let mx = scores.max()!
          let e = scores.map { $0 == -.infinity ? 0 : Foundation.exp($0 - mx) }
          let total = e.reduce(0, +)
          for d in 0..<hs {
            var acc = 0.0
            for j in 0..<s { acc += e[j] / total * Double(v.ptr[((bi * s + j) * nkv + g) * hs + d]) }
            out[((bi * t + i) * nh + h) * hs + d] = acc
          }
        }
      }
    }
    return out
  }

  /// One pass: output and the three input gradients for a fixed seed.
  static func run(_ q: Tensor, _ k: Tensor, _ v: Tensor, seed: Tensor) -> [Tensor] {
    for x in [q, k, v] { x.grad = nil; x.requiresGrad = true }
    let y = attention(q, k, v, causal: true)
    y.backward(seed: seed)
    return [y.detached(), q.grad!.clone(), k.grad!.clone(), v.grad!.clone()]
  }

  /// Sizes large enough that heads (forward) and key/value groups (backward) go to two workers.
  @Test func workersMatchOneThreadAndReference() {
    let (b, t, nh, nkv, hs) = (2, 64, 4, 2, 16)
    let q = KernelPathTests.random([b, t, nh, hs], seed: 11)
    let k = KernelPathTests.random([b, t, nkv, hs], seed: 12)
    let v = KernelPathTests.random([b, t, nkv, hs], seed: 13)
    let seed = KernelPathTests.random([b, t, nh, hs], seed: 14)
    let saved = Threads.count
    defer { Threads.set(saved) }
    Threads.set(1)
    let serial = Self.run(q, k, v, seed: seed)
    Threads.set(2)
    let parallel = Self.run(q, k, v, seed: seed)
    for (i, name) in ["out", "dq", "dk", "dv"].enumerated() {
      let (ok, d) = compare(parallel[i], serial[i], atol: 1e-5, rtol: 1e-5)
      #expect(ok, "\(name): max diff \(d) between two workers and one thread")
    }
    let ref = Self.reference(q, k, v)
    var worst: Float = 0
    for i in 0..<ref.count { worst = max(worst, abs(parallel[0].ptr[i] - Float(ref[i]))) }
    #expect(worst < 1e-5, "out against the float64 reference: max diff \(worst)")
  }

  /// One query row (decode) takes the SIMD path: against the float64 reference, and gradcheck
  /// through it (its probabilities feed the general backward).
  @Test func singleQueryMatchesReferenceAndGradcheck() {
    let q = KernelPathTests.random([2, 1, 4, 16], seed: 15)
    let k = KernelPathTests.random([2, 37, 2, 16], seed: 16)
    let v = KernelPathTests.random([2, 37, 2, 16], seed: 17)
    let y = noGrad { attention(q, k, v, causal: true) }
    let ref = Self.reference(q, k, v)
    var worst: Float = 0
    for i in 0..<ref.count { worst = max(worst, abs(y.ptr[i] - Float(ref[i]))) }
    #expect(worst < 1e-5, "single-query attention against the float64 reference: max diff \(worst)")
    let small = [KernelPathTests.random([1, 1, 2, 8], seed: 18), KernelPathTests.random([1, 5, 1, 8], seed: 19),
                 KernelPathTests.random([1, 5, 1, 8], seed: 20)]
    let (ratio, at) = gradcheck(small) { x in attention(x[0], x[1], x[2], causal: true) }
    #expect(ratio <= 1, "worst gradient at \(at)")
  }
}

/// The LM head's cross-entropy in row blocks against the whole-logits path: loss, input gradient
/// and (trainable head) weight gradient; float32 and bfloat16 frozen heads; blocks that do not
/// divide the rows; ignored targets.
@Suite("Chunked head cross-entropy")
struct ChunkedHeadCrossEntropyTests {
  @Test(arguments: [1, 3, 64])
  func blocksMatchWholeLogits(chunkRows: Int) {
    let (n, c, v) = (7, 24, 50)
    let w = KernelPathTests.random([v, c], seed: 30)
    let x = KernelPathTests.random([n, c], seed: 31)
    var targets: [Int32] = (0..<n).map { Int32(($0 * 13) % v) }
    targets[2] = -100
    let w16 = BF16Matrix(w)
    for variant in ["frozen", "frozen bf16", "trainable"] {
      w.requiresGrad = variant == "trainable"
      let head: (Tensor) -> Tensor = { variant == "frozen bf16" ? linear($0, w16) : linear($0, w) }
      func run(_ loss: () -> Tensor) -> (Float, Tensor, Tensor?) {
        x.grad = nil
        w.grad = nil
        x.requiresGrad = true
        let l = loss()
        l.backward(seed: Tensor([0.5], shape: []))
        return (l.item, x.grad!.clone(), w.grad?.clone())
      }
      let whole = run { crossEntropy(head(x), targets: targets) }
      let blocks = run { chunkedHeadCrossEntropy(x, targets: targets, chunkRows: chunkRows, headParameters: [w], head: head) }
      #expect(abs(blocks.0 - whole.0) < 1e-5, "\(variant): loss \(blocks.0) vs \(whole.0)")
      let (okX, dX) = compare(blocks.1, whole.1, atol: 1e-6, rtol: 1e-5)
      #expect(okX, "\(variant), blocks of \(chunkRows): input gradient differs by \(dX)")
      #expect((blocks.2 == nil) == (variant != "trainable"))
      if let gw = blocks.2, let ref = whole.2 {
        let (okW, dW) = compare(gw, ref, atol: 1e-6, rtol: 1e-5)
        #expect(okW, "blocks of \(chunkRows): head gradient differs by \(dW)")
      }
      let inference = noGrad { chunkedHeadCrossEntropy(x, targets: targets, chunkRows: chunkRows, headParameters: [w], head: head) }
      #expect(abs(inference.item - blocks.0) < 1e-6)
    }
    w.requiresGrad = false
  }
}

/// A frozen head's cross-entropy by vocabulary tiles (online softmax, one sweep of W)
/// against the whole logits: loss and input gradient, float32 and bfloat16 weights, tiles that
/// do not divide the vocabulary, ignored targets; under bfloat16 products against the row-block
/// path under the same precision; and a finite-difference gradcheck.
@Suite("Frozen head cross-entropy")
struct FrozenHeadCrossEntropyTests {
  static let (n, c, v) = (7, 24, 50)
  static var targets: [Int32] {
    var t: [Int32] = (0..<n).map { Int32(($0 * 13) % v) }
    t[2] = -100
    return t
  }

  static func run(_ x: Tensor, _ loss: () -> Tensor) -> (Float, Tensor) {
    x.grad = nil
    x.requiresGrad = true
    let l = loss()
    l.backward(seed: Tensor([0.5], shape: []))
    return (l.item, x.grad!.clone())
  }

  @Test(arguments: [7, 16, 64])
  func tilesMatchWholeLogits(vocabTile: Int) {
    let w = KernelPathTests.random([Self.v, Self.c], seed: 40)
    let x = KernelPathTests.random([Self.n, Self.c], seed: 41)
    let w16 = BF16Matrix(w)
    for bf16 in [false, true] {
      let head: (Tensor) -> Tensor = { bf16 ? linear($0, w16) : linear($0, w) }
      let frozen: FrozenHeadWeight = bf16 ? .bfloat16(w16) : .float32(w)
      let whole = Self.run(x) { crossEntropy(head(x), targets: Self.targets) }
      let tiles = Self.run(x) { frozenHeadCrossEntropy(x, head: frozen, targets: Self.targets, vocabTile: vocabTile) }
      #expect(abs(tiles.0 - whole.0) < 1e-5, "bf16 \(bf16), tile \(vocabTile): loss \(tiles.0) vs \(whole.0)")
      let (ok, d) = compare(tiles.1, whole.1, atol: 1e-6, rtol: 1e-5)
      #expect(ok, "bf16 \(bf16), tile \(vocabTile): input gradient differs by \(d)")
      let inference = noGrad { frozenHeadCrossEntropy(x, head: frozen, targets: Self.targets, vocabTile: vocabTile) }
      #expect(abs(inference.item - tiles.0) < 1e-6)

      MatmulPrecision.with(.bfloat16) {
        let blocks = Self.run(x) { chunkedHeadCrossEntropy(x, targets: Self.targets, headParameters: [w], head: head) }
        let tiled = Self.run(x) { frozenHeadCrossEntropy(x, head: frozen, targets: Self.targets, vocabTile: vocabTile) }
        #expect(abs(tiled.0 - blocks.0) < 1e-5, "bf16 products: loss \(tiled.0) vs \(blocks.0)")
        #expect(abs(tiled.0 - whole.0) > 1e-7, "bf16 products changed nothing")
        // Both round to bfloat16, at different points (row blocks round softmax − onehot; tiles
        // round exp(logit − running max) and subtract W[target] in float32): bfloat16 agreement,
        // 1% of the largest element as the composed model's bf16 test (measured 0.26%).
        let largest = (0..<blocks.1.count).reduce(Float(0)) { max($0, abs(blocks.1.ptr[$1])) }
        let (okB, dB) = compare(tiled.1, blocks.1, atol: 1e-2 * largest, rtol: 0)
        #expect(okB, "bf16 products, tile \(vocabTile): input gradient differs by \(dB) of \(largest)")
        let (okW, dW) = compare(tiled.1, whole.1, atol: 1e-2 * largest, rtol: 0)
        #expect(okW, "bf16 products, tile \(vocabTile): input gradient differs from float32 by \(dW) of \(largest)")
      }
    }
  }

  /// A later tile whose logit is 120 above everything before it: the running sum and the
  /// unnormalised dx both underflow to 0 on rescaling, and dx must lose what it held too.
  @Test func aMaxJumpBeyondFloatRangeResetsTheGradient() {
    let w = Tensor([0, 1, 0, 1, 120, 0, 0, 0], shape: [4, 2])  // logits of x = (1, 0): 0, 0, 120, 0
    let x = Tensor([1, 0], shape: [1, 2])
    let whole = Self.run(x) { crossEntropy(linear(x, w), targets: [0]) }
    let tiles = Self.run(x) { frozenHeadCrossEntropy(x, head: .float32(w), targets: [0], vocabTile: 2) }
    #expect(abs(tiles.0 - whole.0) < 1e-4, "loss \(tiles.0) vs \(whole.0)")
    let (ok, d) = compare(tiles.1, whole.1, atol: 1e-5, rtol: 1e-5)
    #expect(ok, "input gradient \(Array(UnsafeBufferPointer(start: tiles.1.ptr, count: 2))) differs by \(d)")
  }

  @Test func gradcheckThroughTiles() {
    let w = KernelPathTests.random([30, 8], seed: 42)
    let x = KernelPathTests.random([5, 8], seed: 43)
    let targets: [Int32] = [3, -100, 29, 0, 17]
    let (worst, at) = gradcheck([x]) { t in frozenHeadCrossEntropy(t[0], head: .float32(w), targets: targets, vocabTile: 7) }
    #expect(worst <= 1, "worst gradient at \(at)")
    #expect(w.grad == nil)
  }
}

/// The 16-lane exp against libm's expf: within 2 ulp from −87 to 88.3, and the edges
/// softmax relies on (−∞ → 0, masked rows; NaN stays NaN).
@Suite("Vector exp")
struct VectorExpTests {
  @Test func matchesLibmWithinTwoUlp() {
    var worst: Float = 0, at: Float = 0
    var x: Float = -87
    while x < 88.3 {
      let lanes = SIMD16<Float>((0..<16).map { x + Float($0) * 0.0037 })
      let got = Kernels.exp(lanes)
      for l in 0..<16 {
        let want = Foundation.exp(Double(lanes[l]))
        let ulps = Float(abs(Double(got[l]) - want) / Double(Float(want).ulp))
        if ulps > worst { worst = ulps; at = lanes[l] }
      }
      x += 0.0601
    }
    #expect(worst <= 2, "worst \(worst) ulp at x = \(at)")
    let edges = Kernels.exp(SIMD16<Float>([-.infinity, -100, -87.4, 0, 89, .infinity, .nan, 1, 1, 1, 1, 1, 1, 1, 1, 1]))
    #expect(edges[0] == 0 && edges[1] == 0 && edges[2] == 0)
    #expect(edges[3] == 1)
    #expect(edges[4] == .infinity && edges[5] == .infinity)
    #expect(edges[6].isNaN)
  }

  @Test func sumExpAndMaxCoverTails() {
    for count in [0, 1, 15, 16, 17, 40] {
      let values = (0..<count).map { Float(($0 * 7) % 11) - 5 }
      values.withUnsafeBufferPointer { x in
        let mx = Kernels.maxValue(x.baseAddress!, count: count)
        #expect(mx == (values.max() ?? -.infinity))
        var stored = [Float](repeating: 0, count: count)
        let s = stored.withUnsafeMutableBufferPointer { Kernels.sumExp(x.baseAddress!, count: count, shift: 1, storingTo: $0.baseAddress!) }
        let want = values.reduce(0.0) { $0 + Foundation.exp(Double($1 - 1)) }
        #expect(abs(Double(s) - want) <= 1e-6 * max(want, 1))
        for (i, v) in values.enumerated() { #expect(abs(Double(stored[i]) - Foundation.exp(Double(v - 1))) <= 2e-7 * Foundation.exp(Double(v - 1))) }
      }
    }
  }

  /// quick_gelu and silu (16 lanes, `sigmoidGated`): one call over 256 values against 256 calls of
  /// one value, values and gradients bit for bit.
  @Test func laneMapsAgreeBetweenBodyAndTail() {
    let n = 256
    let values = (0..<n).map { Float($0) * 0.0731 - 9.3 }
    for (name, f) in [("quick_gelu", quickGelu), ("silu", silu)] as [(String, (Tensor) -> Tensor)] {
      let whole = Tensor(values, shape: [n])
      whole.requiresGrad = true
      let y = f(whole)
      y.backward(seed: Tensor((0..<n).map { Float($0 % 5) - 2 }, shape: [n]))
      var differing = 0
      for i in 0..<n {
        let one = Tensor([values[i]], shape: [1])
        one.requiresGrad = true
        let yi = f(one)
        yi.backward(seed: Tensor([Float(i % 5) - 2], shape: [1]))
        if yi.ptr[0] != y.ptr[i] || one.grad!.ptr[0] != whole.grad!.ptr[i] { differing += 1 }
      }
      #expect(differing == 0, "\(name): \(differing) of \(n) elements differ between body and tail")
    }
  }

  /// An element's SwiGLU value and gradients do not depend on whether it falls in the 16-lane
  /// body or the scalar tail of a loop: 256 values in one call (all body) against 256 calls of
  /// one element (all tail), bit for bit.
  @Test func swigluTailsMatchTheVectorBody() {
    let n = 256
    let gate = (0..<n).map { Float($0) * 0.0731 - 9.3 }, up = (0..<n).map { Float($0 % 7) * 0.5 - 1.2 }
    let dout = (0..<n).map { Float($0 % 5) * 0.3 - 0.6 }
    func run(_ range: Range<Int>, _ out: inout [Float], _ dgate: inout [Float], _ dup: inout [Float]) {
      let at = range.lowerBound
      gate.withUnsafeBufferPointer { g in up.withUnsafeBufferPointer { u in dout.withUnsafeBufferPointer { d in
        out.withUnsafeMutableBufferPointer { o in dgate.withUnsafeMutableBufferPointer { dg in dup.withUnsafeMutableBufferPointer { du in
          Kernels.swigluForward(out: o.baseAddress! + at, gate: g.baseAddress! + at, up: u.baseAddress! + at, n: range.count)
          Kernels.swigluBackward(dgate: dg.baseAddress! + at, dup: du.baseAddress! + at, dout: d.baseAddress! + at,
                                 gate: g.baseAddress! + at, up: u.baseAddress! + at, n: range.count)
        } } }
      } } }
    }
    var body = [Float](repeating: 0, count: n), bodyDgate = body, bodyDup = body
    run(0..<n, &body, &bodyDgate, &bodyDup)
    var tail = [Float](repeating: 0, count: n), tailDgate = tail, tailDup = tail
    for i in 0..<n { run(i..<(i + 1), &tail, &tailDgate, &tailDup) }
    for (name, a, b) in [("out", body, tail), ("dgate", bodyDgate, tailDgate), ("dup", bodyDup, tailDup)] {
      let differing = zip(a, b).filter { $0 != $1 }.count
      #expect(differing == 0, "\(name): \(differing) of \(n) elements differ between body and tail")
    }
    for i in stride(from: 0, to: n, by: 17) {
      let x = Double(gate[i]), want = x / (1 + Foundation.exp(-x)) * Double(up[i])
      #expect(abs(Double(body[i]) - want) <= 1e-6 * abs(want) + 1e-12)
    }
  }
}
