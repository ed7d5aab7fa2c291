import Foundation
import PivotNN
import PivotTensor
import Testing

/// Largest absolute difference, and whether every element is within atol + rtol·|expected|.
func compare(_ actual: Tensor, _ expected: Tensor, atol: Float, rtol: Float) -> (ok: Bool, maxDiff: Float) {
  guard actual.shape == expected.shape else { return (false, .infinity) }
  var ok = true, maxDiff: Float = 0
  let a = actual.ptr, e = expected.ptr
  for i in 0..<actual.count {
    let d = abs(a[i] - e[i])
    if !(d <= atol + rtol * abs(e[i])) { ok = false }
    if d > maxDiff || d.isNaN { maxDiff = d.isNaN ? .nan : d }
  }
  return (ok, maxDiff)
}

func fixtureURL(_ name: String) -> URL {
  Bundle.module.resourceURL!.appendingPathComponent("Fixtures").appendingPathComponent(name)
}

/// Central finite differences of ⟨f(x), seed⟩ for every element of every input, accumulated
/// in float64, against the analytic gradient from backward(seed:).
/// Returns the worst |analytic − numeric| / (atol + rtol·|numeric|) ratio and where it occurred.
func gradcheck(
  _ inputs: [Tensor], h: Float = 1e-2, atol: Double = 2e-3, rtol: Double = 2e-2, _ f: ([Tensor]) -> Tensor
) -> (worst: Double, at: String) {
  for x in inputs { x.requiresGrad = true; x.grad = nil }
  let out = f(inputs)
  var rng = PivotRNG(seed: 99)
  let seed = Tensor(empty: out.shape)
  rng.fillUniform(seed, low: -1, high: 1)
  out.backward(seed: seed)
  var worst = 0.0, at = ""
  func dot(_ y: Tensor) -> Double {
    var acc = 0.0
    for i in 0..<y.count { acc += Double(y.ptr[i]) * Double(seed.ptr[i]) }
    return acc
  }
  for (n, x) in inputs.enumerated() {
    let analytic = x.grad?.scalars ?? [Float](repeating: 0, count: x.count)
    for i in 0..<x.count {
      let saved = x.ptr[i]
      x.ptr[i] = saved + h
      let plus = noGrad { dot(f(inputs)) }
      x.ptr[i] = saved - h
      let minus = noGrad { dot(f(inputs)) }
      x.ptr[i] = saved
      let numeric = (plus - minus) / (2 * Double(h))
      let ratio = abs(Double(analytic[i]) - numeric) / (atol + rtol * abs(numeric))
      if ratio > worst { worst = ratio; at = "input \(n) element \(i): analytic \(analytic[i]) numeric \(numeric)" }
    }
  }
  return (worst, at)
}
