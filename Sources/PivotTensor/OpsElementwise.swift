import Foundation

// MARK: Broadcasting

/// NumPy broadcasting of two shapes.
public func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int] {
  let r = max(a.count, b.count)
  let pa = [Int](repeating: 1, count: r - a.count) + a
  let pb = [Int](repeating: 1, count: r - b.count) + b
  return (0..<r).map { i in
    precondition(pa[i] == pb[i] || pa[i] == 1 || pb[i] == 1, "shapes \(a) and \(b) do not broadcast")
    return max(pa[i], pb[i])
  }
}

/// Walks `out` in runs along its last axis, giving the matching offsets into two inputs
/// broadcast to it (a step of 0 means that input repeats along the run).
struct BroadcastWalk {
  let outShape: [Int]
  let aStrides: [Int], bStrides: [Int]
  let inner: Int, aStep: Int, bStep: Int, runs: Int

  init(out: [Int], a: [Int], b: [Int]) {
    outShape = out
    func strides(_ s: [Int]) -> [Int] {
      let p = [Int](repeating: 1, count: out.count - s.count) + s
      var st = [Int](repeating: 0, count: out.count)
      var acc = 1
      for i in stride(from: out.count - 1, through: 0, by: -1) {
        st[i] = p[i] == 1 ? 0 : acc
        acc *= p[i]
      }
      return st
    }
    aStrides = strides(a)
    bStrides = strides(b)
    inner = out.last ?? 1
    aStep = aStrides.last ?? 0
    bStep = bStrides.last ?? 0
    runs = out.count == 0 ? 1 : out.dropLast().reduce(1, *)
  }

  @inline(__always)
  func offsets(run: Int) -> (a: Int, b: Int) {
    var rem = run, ao = 0, bo = 0
    var i = outShape.count - 2
    while i >= 0 {
      let idx = rem % outShape[i]
      rem /= outShape[i]
      ao += idx * aStrides[i]
      bo += idx * bStrides[i]
      i -= 1
    }
    return (ao, bo)
  }
}

public enum BinaryOp: Sendable { case add, sub, mul, div }

func binary(_ a: Tensor, _ b: Tensor, _ op: BinaryOp) -> Tensor {
  let shape = a.shape == b.shape ? a.shape : broadcastShape(a.shape, b.shape)
  let out = Tensor(empty: shape)
  let ap = a.ptr, bp = b.ptr, op_ = out.ptr
  @inline(__always) func apply(_ x: Float, _ y: Float) -> Float {
    switch op { case .add: x + y; case .sub: x - y; case .mul: x * y; case .div: x / y }
  }
  if a.shape == b.shape {
    parallelFor(out.count) { r in for i in r { op_[i] = apply(ap[i], bp[i]) } }
  } else {
    let w = BroadcastWalk(out: shape, a: a.shape, b: b.shape)
    parallelFor(w.runs, grain: max(1, 16384 / max(w.inner, 1))) { runs in
      for run in runs {
        let (ao, bo) = w.offsets(run: run)
        let o = op_ + run * w.inner
        for j in 0..<w.inner { o[j] = apply(ap[ao + j * w.aStep], bp[bo + j * w.bStep]) }
      }
    }
  }
  if op == .add || op == .sub, a.shape == b.shape {
    // Sums need no values in backward: keep only the slots, so the graph frees both inputs.
    let (sa, sb, n) = (a.slot, b.slot, a.count)
    let sign: Float = op == .add ? 1 : -1
    return out.record([a, b]) { g in
      if sa.requiresGrad { let ga = sa.gradPointer(); parallelFor(n) { r in for i in r { ga[i] += g[i] } } }
      if sb.requiresGrad { let gb = sb.gradPointer(); parallelFor(n) { r in for i in r { gb[i] += sign * g[i] } } }
    }
  }
  return out.record([a, b]) { g in
    // d/da and d/db of each op, as a function of (grad, a, b).
    @inline(__always) func da(_ g: Float, _ x: Float, _ y: Float) -> Float {
      switch op { case .add, .sub: g; case .mul: g * y; case .div: g / y }
    }
    @inline(__always) func db(_ g: Float, _ x: Float, _ y: Float) -> Float {
      switch op { case .add: g; case .sub: -g; case .mul: g * x; case .div: -g * x / (y * y) }
    }
    if a.shape == b.shape {
      if a.requiresGrad { let ga = a.gradPointer(); parallelFor(a.count) { r in for i in r { ga[i] += da(g[i], ap[i], bp[i]) } } }
      if b.requiresGrad { let gb = b.gradPointer(); parallelFor(b.count) { r in for i in r { gb[i] += db(g[i], ap[i], bp[i]) } } }
      return
    }
    // Broadcast inputs receive sums over the repeated axes: a serial walk keeps it race-free.
    let w = BroadcastWalk(out: shape, a: a.shape, b: b.shape)
    let ga = a.requiresGrad ? a.gradPointer() : nil
    let gb = b.requiresGrad ? b.gradPointer() : nil
    for run in 0..<w.runs {
      let (ao, bo) = w.offsets(run: run)
      let gr = g + run * w.inner
      for j in 0..<w.inner {
        let ai = ao + j * w.aStep, bi = bo + j * w.bStep
        ga?[ai] += da(gr[j], ap[ai], bp[bi])
        gb?[bi] += db(gr[j], ap[ai], bp[bi])
      }
    }
  }
}

public func + (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .add) }
public func - (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .sub) }
public func * (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .mul) }
public func / (a: Tensor, b: Tensor) -> Tensor { binary(a, b, .div) }

/// y = s · x
public func scale(_ x: Tensor, _ s: Float) -> Tensor {
  let out = Tensor(empty: x.shape)
  let xp = x.ptr, op = out.ptr
  parallelFor(x.count) { r in for i in r { op[i] = xp[i] * s } }
  let (xs, n) = (x.slot, x.count)
  return out.record([x]) { g in
    let gx = xs.gradPointer()
    parallelFor(n) { r in for i in r { gx[i] += g[i] * s } }
  }
}
public func * (x: Tensor, s: Float) -> Tensor { scale(x, s) }

// MARK: Unary maps

/// Elementwise map with its derivative given the input and the output.
@inline(__always)
func unary(_ x: Tensor, _ f: @escaping (Float) -> Float, _ df: @escaping (_ x: Float, _ y: Float) -> Float) -> Tensor {
  let out = Tensor(empty: x.shape)
  let xp = x.ptr, op = out.ptr
  parallelFor(x.count, grain: 8192) { r in for i in r { op[i] = f(xp[i]) } }
  let y = out.detached()
  return out.record([x]) { g in
    let gx = x.gradPointer(), yp = y.ptr
    parallelFor(x.count, grain: 8192) { r in for i in r { gx[i] += g[i] * df(xp[i], yp[i]) } }
  }
}

public func exp(_ x: Tensor) -> Tensor { unary(x, { expf($0) }, { _, y in y }) }
public func log(_ x: Tensor) -> Tensor { unary(x, { logf($0) }, { x, _ in 1 / x }) }
public func sqrt(_ x: Tensor) -> Tensor { unary(x, { $0.squareRoot() }, { _, y in 0.5 / y }) }

/// GELU with the exact erf (HF "gelu").
public func gelu(_ x: Tensor) -> Tensor {
  unary(x, { v in 0.5 * v * (1 + erff(v * 0.70710678118654752)) }) { v, _ in
    let cdf = 0.5 * (1 + erff(v * 0.70710678118654752))
    let pdf = expf(-0.5 * v * v) * 0.39894228040143268
    return cdf + v * pdf
  }
}

/// GELU, tanh approximation (HF "gelu_new" / "gelu_pytorch_tanh").
public func geluTanh(_ x: Tensor) -> Tensor {
  let c: Float = 0.79788456080286536  // √(2/π)
  return unary(x, { v in 0.5 * v * (1 + tanhf(c * (v + 0.044715 * v * v * v))) }) { v, _ in
    let u = c * (v + 0.044715 * v * v * v)
    let t = tanhf(u)
    return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v)
  }
}

/// x · σ(1.702 x), CLIP's activation.
public func quickGelu(_ x: Tensor) -> Tensor { sigmoidGated(x, slope: 1.702) }

/// x · σ(x), LLaMA/Qwen2's activation.
public func silu(_ x: Tensor) -> Tensor { sigmoidGated(x, slope: 1) }

/// x · σ(a·x) on 16 lanes with the vector exp (quick_gelu a = 1.702, silu a = 1).
func sigmoidGated(_ x: Tensor, slope: Float) -> Tensor {
  let out = Tensor(empty: x.shape)
  Kernels.sigmoidGatedForward(out: out.ptr, inp: x.ptr, slope: slope, n: x.count)
  return out.record([x]) { g in
    Kernels.sigmoidGatedBackward(dinp: x.gradPointer(), dout: g, inp: x.ptr, slope: slope, n: x.count)
  }
}

/// silu(gate) ⊙ up, the SwiGLU of LLaMA/Qwen2 MLPs, in one pass: no (N, I) silu output is
/// stored for backward, which recomputes σ(gate) from the inputs it keeps anyway.
public func swiglu(gate: Tensor, up: Tensor) -> Tensor {
  precondition(gate.shape == up.shape, "swiglu: gate \(gate.shape), up \(up.shape)")
  let out = Tensor(empty: gate.shape)
  Kernels.swigluForward(out: out.ptr, gate: gate.ptr, up: up.ptr, n: gate.count)
  return out.record([gate, up]) { g in
    Kernels.swigluBackward(
      dgate: gate.requiresGrad ? gate.gradPointer() : nil, dup: up.requiresGrad ? up.gradPointer() : nil,
      dout: g, gate: gate.ptr, up: up.ptr, n: gate.count)
  }
}

extension Kernels {
  /// Runs `body(i, lanes)` over r in steps of 16; the last step may have fewer lanes.
  @inline(__always)
  static func byLanes(_ r: Range<Int>, _ body: (Int, Int) -> Void) {
    var i = r.lowerBound
    while i + 16 <= r.upperBound { body(i, 16); i += 16 }
    if i < r.upperBound { body(i, r.upperBound - i) }
  }

  /// 16 floats, or fewer padded with zeros: tails go through the same lanes as the body.
  @inline(__always)
  static func load(_ p: UnsafePointer<Float>, lanes: Int) -> SIMD16<Float> {
    if lanes == 16 { return load16(p) }
    var v = SIMD16<Float>(repeating: 0)
    for l in 0..<lanes { v[l] = p[l] }
    return v
  }

  @inline(__always)
  static func store(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>, lanes: Int) {
    if lanes == 16 { store16(v, p); return }
    for l in 0..<lanes { p[l] = v[l] }
  }

  /// out = x · σ(a·x).
  public static func sigmoidGatedForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, slope: Float, n: Int) {
    parallelFor(n, grain: 8192) { r in
      byLanes(r) { i, lanes in
        let x = load(inp + i, lanes: lanes)
        store(x / (1 + exp(x * -slope)), out + i, lanes: lanes)
      }
    }
  }

  /// dinp += dout · (σ(a·x) + a·x·σ(a·x)(1 − σ(a·x))).
  public static func sigmoidGatedBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, slope: Float, n: Int) {
    parallelFor(n, grain: 8192) { r in
      byLanes(r) { i, lanes in
        let x = load(inp + i, lanes: lanes), s = 1 / (1 + exp(x * -slope))
        store(load(dinp + i, lanes: lanes) + load(dout + i, lanes: lanes) * (s + x * slope * s * (1 - s)), dinp + i, lanes: lanes)
      }
    }
  }

  public static func swigluForward(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, n: Int) {
    parallelFor(n, grain: 8192) { r in
      byLanes(r) { i, lanes in
        let x = load(gate + i, lanes: lanes)
        store(x / (1 + exp(-x)) * load(up + i, lanes: lanes), out + i, lanes: lanes)
      }
    }
  }

  /// dgate += dout · up · σ(g)(1 + g(1 − σ(g))), dup += dout · g σ(g).
  public static func swigluBackward(
    dgate: UnsafeMutablePointer<Float>?, dup: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, n: Int
  ) {
    parallelFor(n, grain: 8192) { r in
      byLanes(r) { i, lanes in
        let x = load(gate + i, lanes: lanes), g = load(dout + i, lanes: lanes), s = 1 / (1 + exp(-x))
        if let dgate {
          store(load(dgate + i, lanes: lanes) + g * load(up + i, lanes: lanes) * s * (1 + x * (1 - s)), dgate + i, lanes: lanes)
        }
        if let dup { store(load(dup + i, lanes: lanes) + g * x * s, dup + i, lanes: lanes) }
      }
    }
  }
}

/// Activation by its HF config name.
public func activation(_ name: String, _ x: Tensor) -> Tensor {
  switch name {
  case "gelu": gelu(x)
  case "gelu_new", "gelu_pytorch_tanh", "gelu_fast": geluTanh(x)
  case "quick_gelu": quickGelu(x)
  case "silu", "swish": silu(x)
  default: preconditionFailure("unknown activation \(name) (known: gelu, gelu_new, gelu_pytorch_tanh, quick_gelu, silu)")
  }
}

/// Inverted dropout with a seeded mask; identity when `p` is 0 or gradients are off.
public func dropout(_ x: Tensor, p: Float, rng: inout PivotRNG, training: Bool = true) -> Tensor {
  guard training, p > 0 else { return x }
  let mask = Tensor(empty: x.shape)
  let keep = 1 / (1 - p)
  let mp = mask.ptr
  for i in 0..<x.count { mp[i] = rng.uniform() < p ? 0 : keep }
  return x * mask.detached()
}
