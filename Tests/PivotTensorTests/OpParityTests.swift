import Foundation
import PivotNN
import PivotTensor
import Testing

/// Every differentiable primitive against PyTorch (float64 reference, Tools/make_fixtures.py):
/// forward values and input gradients for a random seed gradient, then a finite-difference
/// gradient check of the same function.
struct OpCase: CustomStringConvertible, Sendable {
  let name: String
  let f: @Sendable (_ inputs: [Tensor], _ fixture: SafeTensorsFile) throws -> Tensor
  var description: String { name }
}

func ints(_ file: SafeTensorsFile, _ key: String) throws -> [Int] { try file.int64s(key).map { Int($0) } }

let opCases: [OpCase] = [
  OpCase(name: "matmul") { x, _ in matmul(x[0], x[1]) },
  OpCase(name: "matmul_ta") { x, _ in matmul(x[0], x[1], transposeA: true) },
  OpCase(name: "matmul_tb") { x, _ in matmul(x[0], x[1], transposeB: true) },
  OpCase(name: "matmul_tab") { x, _ in matmul(x[0], x[1], transposeA: true, transposeB: true) },
  OpCase(name: "bmm") { x, _ in matmul(x[0], x[1]) },
  OpCase(name: "matmul_shared") { x, _ in matmul(x[0], x[1]) },
  OpCase(name: "linear") { x, _ in linear(x[0], x[1], x[2]) },
  OpCase(name: "linear_nobias") { x, _ in linear(x[0], x[1]) },
  OpCase(name: "add") { x, _ in x[0] + x[1] },
  OpCase(name: "sub") { x, _ in x[0] - x[1] },
  OpCase(name: "mul") { x, _ in x[0] * x[1] },
  OpCase(name: "div") { x, _ in x[0] / x[1] },
  OpCase(name: "scale") { x, _ in scale(x[0], 0.37) },
  OpCase(name: "sum_axis") { x, _ in sum(x[0], axis: 1) },
  OpCase(name: "mean_axis") { x, _ in mean(x[0], axis: -1, keepDims: true) },
  OpCase(name: "sum_all") { x, _ in sum(x[0]) },
  OpCase(name: "exp") { x, _ in exp(x[0]) },
  OpCase(name: "log") { x, _ in log(x[0]) },
  OpCase(name: "sqrt") { x, _ in sqrt(x[0]) },
  OpCase(name: "softmax") { x, _ in softmax(x[0]) },
  OpCase(name: "log_softmax") { x, _ in logSoftmax(x[0]) },
  OpCase(name: "layer_norm") { x, _ in layerNorm(x[0], weight: x[1], bias: x[2], eps: 1e-5) },
  OpCase(name: "rms_norm") { x, _ in rmsNorm(x[0], weight: x[1], eps: 1e-6) },
  OpCase(name: "gelu") { x, _ in gelu(x[0]) },
  OpCase(name: "gelu_tanh") { x, _ in geluTanh(x[0]) },
  OpCase(name: "quick_gelu") { x, _ in quickGelu(x[0]) },
  OpCase(name: "silu") { x, _ in silu(x[0]) },
  OpCase(name: "embedding") { x, f in embedding(try f.int64s("embedding.ids").map { Int32($0) }, shape: [2, 3], weight: x[0]) },
  OpCase(name: "rope") { x, f in rope(x[0], positions: try ints(f, "rope.positions"), theta: 10000) },
  OpCase(name: "attention_causal") { x, _ in attention(x[0], x[1], x[2], causal: true) },
  OpCase(name: "attention_cached") { x, _ in attention(x[0], x[1], x[2], causal: true) },
  OpCase(name: "attention_masked") { x, f in attention(x[0], x[1], x[2], causal: false, keyMask: try f.tensor("attention_masked.key_mask")) },
  OpCase(name: "cross_entropy") { x, f in crossEntropy(x[0], targets: try f.int64s("cross_entropy.targets").map { Int32($0) }) },
  OpCase(name: "permute") { x, _ in permute(x[0], [2, 0, 1]) },
  OpCase(name: "transpose") { x, _ in transpose(x[0], 1, 2) },
  OpCase(name: "concat") { x, _ in concat([x[0], x[1]], axis: 1) },
  OpCase(name: "slice") { x, _ in slice(x[0], axis: 1, 1..<3) },
  OpCase(name: "reshape") { x, _ in reshape(x[0], [4, 6]) },
  OpCase(name: "patch_embed") { x, _ in patchEmbed(x[0], weight: x[1], bias: x[2]) },
  OpCase(name: "gather_rows") { x, f in gatherRows(x[0], rows: try ints(f, "gather_rows.rows")) },
  OpCase(name: "scatter_rows") { x, f in scatterRows(x[0], rows: try ints(f, "scatter_rows.rows"), from: x[1]) },
]

let opsFixture = try! SafeTensorsFile(url: fixtureURL("ops.safetensors"))

func fixtureInputs(_ name: String) throws -> [Tensor] {
  var inputs: [Tensor] = []
  while opsFixture.entries["\(name).in.\(inputs.count)"] != nil {
    inputs.append(try opsFixture.tensor("\(name).in.\(inputs.count)").clone())
  }
  return inputs
}

@Suite("Ops against PyTorch")
struct OpParityTests {
  /// Forward within 1e-5 (abs) + 1e-5 (rel) of the float64 reference; input gradients likewise.
  @Test(arguments: opCases)
  func forwardAndBackwardMatchPyTorch(_ c: OpCase) throws {
    let inputs = try fixtureInputs(c.name)
    #expect(!inputs.isEmpty, "no fixture inputs for \(c.name)")
    for x in inputs { x.requiresGrad = true }
    let out = try c.f(inputs, opsFixture)
    let expected = try opsFixture.tensor("\(c.name).out")
    let (ok, diff) = compare(out, expected, atol: 1e-5, rtol: 1e-5)
    #expect(ok, "\(c.name) forward: max |diff| \(diff), shapes \(out.shape) vs \(expected.shape)")
    out.backward(seed: try opsFixture.tensor("\(c.name).seed").clone())
    for (i, x) in inputs.enumerated() {
      let g = x.grad ?? Tensor.zeros(x.shape)
      let (gok, gdiff) = compare(g, try opsFixture.tensor("\(c.name).grad.\(i)"), atol: 1e-5, rtol: 1e-5)
      #expect(gok, "\(c.name) gradient of input \(i): max |diff| \(gdiff)")
    }
  }

  /// Finite differences (h = 1e-2, float64 accumulation) against backward:
  /// |analytic − numeric| ≤ 2e-3 + 2e-2·|numeric| for every element.
  @Test(arguments: opCases)
  func gradientMatchesFiniteDifferences(_ c: OpCase) throws {
    let inputs = try fixtureInputs(c.name)
    let (worst, at) = gradcheck(inputs) { try! c.f($0, opsFixture) }
    #expect(worst <= 1, "\(c.name): finite-difference mismatch at \(at)")
  }
}

/// Ops whose reference is a property rather than a PyTorch run: dropout draws its own mask
/// (PyTorch's RNG stream differs), split is slices.
@Suite("Dropout and split")
struct DropoutSplitTests {
  /// The mask is seeded: same seed, same mask; kept values are scaled by 1/(1−p); the
  /// gradient passes through the mask (finite differences at the same seed agree).
  @Test func dropoutIsSeededInvertedAndDifferentiable() {
    var r = PivotRNG(seed: 4)
    let x = Tensor(empty: [64, 64])
    r.fillUniform(x, low: 0.5, high: 1.5)
    func f(_ t: [Tensor]) -> Tensor {
      var rng = PivotRNG(seed: 11)
      return dropout(t[0], p: 0.25, rng: &rng)
    }
    let y = noGrad { f([x]) }
    var zeros = 0
    for i in 0..<x.count {
      if y.ptr[i] == 0 { zeros += 1 } else { #expect(abs(y.ptr[i] - x.ptr[i] / 0.75) < 1e-6) }
    }
    #expect(abs(Double(zeros) / Double(x.count) - 0.25) < 0.03, "dropped fraction \(Double(zeros) / Double(x.count))")
    #expect(noGrad { f([x]) }.scalars == y.scalars, "same seed, different mask")
    var other = PivotRNG(seed: 12)
    #expect(noGrad { dropout(x, p: 0.25, rng: &other) }.scalars != y.scalars)
    #expect(noGrad { dropout(x, p: 0.25, rng: &other, training: false) }.scalars == x.scalars)
    let small = Tensor(empty: [3, 5])
    r.fillUniform(small, low: -1, high: 1)
    let (worst, at) = gradcheck([small], f)
    #expect(worst <= 1, "dropout: \(at)")
  }

  @Test func splitIsSlices() {
    var r = PivotRNG(seed: 5)
    let x = Tensor(empty: [2, 6, 3])
    r.fillUniform(x, low: -1, high: 1)
    let parts = split(x, axis: 1, sizes: [1, 2, 3])
    #expect(parts.map(\.shape) == [[2, 1, 3], [2, 2, 3], [2, 3, 3]])
    #expect(concat(parts, axis: 1).scalars == x.scalars)
    let (worst, at) = gradcheck([x]) { t in
      let p = split(t[0], axis: 1, sizes: [1, 2, 3])
      return concat([p[2], p[0], scale(p[1], 2)], axis: 1)
    }
    #expect(worst <= 1, "split: \(at)")
  }

  /// Recomputation: the same output and gradients (input and a parameter read inside) as the
  /// recorded body, by gradcheck and against the plain graph; a frozen parameter gets none.
  @Test func recomputedMatchesRecordedBody() {
    var r = PivotRNG(seed: 6)
    let x = Tensor(empty: [2, 3, 4]), w = Tensor(empty: [5, 4]), frozen = Tensor(empty: [5])
    for t in [x, w, frozen] { r.fillUniform(t, low: -1, high: 1) }
    func body(_ h: Tensor, _ w: Tensor) -> Tensor { silu(linear(h, w, frozen)) }
    let (worst, at) = gradcheck([x, w]) { t in recomputed(t[0], parameters: [t[1], frozen]) { body($0, t[1]) } }
    #expect(worst <= 1, "recomputed: \(at)")

    let seed = Tensor.full([2, 3, 5], 0.5)
    frozen.requiresGrad = false
    for t in [x, w] { t.requiresGrad = true; t.grad = nil }
    body(x, w).backward(seed: seed)
    let (gx, gw) = (x.grad!.clone(), w.grad!.clone())
    for t in [x, w] { t.grad = nil }
    let y = recomputed(x, parameters: [w, frozen]) { body($0, w) }
    #expect(y.scalars == noGrad { body(x, w) }.scalars)
    y.backward(seed: seed)
    #expect(compare(x.grad!, gx, atol: 1e-6, rtol: 0).ok && compare(w.grad!, gw, atol: 1e-6, rtol: 0).ok)
    #expect(frozen.grad == nil)

    // Only parameters train (the input is data): still recorded, the parameter gets its gradient.
    let data = x.detached()
    w.grad = nil
    recomputed(data, parameters: [w]) { body($0, w) }.backward(seed: seed)
    #expect(w.grad != nil && data.grad == nil)
  }

  /// The graph keeps an intermediate's values only when a backward rule needs them: a frozen
  /// weight's linear, a sum, a reshape and a rotation keep none; a trainable weight's linear keeps
  /// its input for dW. Gradients are unchanged either way.
  @Test func graphKeepsOnlyValuesBackwardNeeds() {
    var r = PivotRNG(seed: 8)
    let x = Tensor(empty: [2, 3, 8]), w = Tensor(empty: [8, 8])
    for t in [x, w] { r.fillUniform(t, low: -1, high: 1) }
    x.requiresGrad = true
    let table = RopeTable(positions: [0, 1, 2], headSize: 4, theta: 10_000)
    func run(trainableWeight: Bool) -> (kept: Bool, dx: [Float]) {
      w.requiresGrad = trainableWeight
      x.grad = nil
      w.grad = nil
      weak var intermediate: Storage?
      let y: Tensor = {
        let h = scale(x, 2)  // (2, 3, 8)
        intermediate = h.storage
        let z = linear(h, w) + scale(x, 1)
        return rope(reshape(z, [2, 3, 2, 4]), table: table)
      }()
      let kept = intermediate != nil
      y.backward(seed: Tensor.full(y.shape, 0.5))
      return (kept, x.grad!.scalars)
    }
    let frozen = run(trainableWeight: false), trainable = run(trainableWeight: true)
    #expect(!frozen.kept, "a frozen weight's linear kept its input")
    #expect(trainable.kept, "a trainable weight's linear needs its input for dW")
    #expect(frozen.dx == trainable.dx)
    #expect(w.grad != nil)
    let (worst, at) = gradcheck([x]) { t in
      w.requiresGrad = false
      return rope(reshape(linear(scale(t[0], 2), w) + t[0], [2, 3, 2, 4]), table: table)
    }
    #expect(worst <= 1, "\(at)")
  }
}
