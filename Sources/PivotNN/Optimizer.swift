import Foundation
import PivotTensor

/// A set of parameters sharing optimizer settings, chosen by name patterns.
public struct ParameterGroup: Sendable, Codable, Equatable {
  public var name: String
  /// Globs over parameter names; the first group whose pattern matches takes the parameter.
  public var patterns: [String]
  public var weightDecay: Float
  public var lrScale: Float

  public init(name: String, patterns: [String], weightDecay: Float, lrScale: Float = 1) {
    self.name = name
    self.patterns = patterns
    self.weightDecay = weightDecay
    self.lrScale = lrScale
  }

  /// The usual split: no decay on biases, norms and embeddings' norms; decay elsewhere.
  public static func standard(weightDecay: Float) -> [ParameterGroup] {
    [
      ParameterGroup(name: "no_decay", patterns: ["*.bias", "*norm*.weight", "*layernorm*", "*LayerNorm*", "*ln_*"], weightDecay: 0),
      ParameterGroup(name: "decay", patterns: ["*"], weightDecay: weightDecay),
    ]
  }
}

/// AdamW (decoupled weight decay, bias correction) over flat buffers, as PyTorch's
/// `torch.optim.AdamW`. Only trainable parameters enter: they are packed, group by group,
/// into one parameter buffer with a gradient buffer and two moment buffers beside it, so
/// zeroing gradients is one fill, clipping one pass and the update one loop.
/// Frozen parameters get none of these.
public final class AdamW: @unchecked Sendable {
  public struct Range: Sendable {
    public let name: String
    public let offset: Int
    public let count: Int
    public let group: Int
  }

  public let groups: [ParameterGroup]
  public var beta1: Float, beta2: Float, eps: Float
  public private(set) var step = 0
  public let ranges: [Range]
  public let parameterCount: Int
  let params: Storage
  let grads: Storage
  let m: Storage
  let v: Storage
  let groupSpans: [(start: Int, end: Int)]

  /// `parameters` are the trainable ones (`module.trainableParameters()`).
  public init(
    parameters: [(String, Tensor)], groups: [ParameterGroup] = [ParameterGroup(name: "all", patterns: ["*"], weightDecay: 0.01)],
    beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8
  ) {
    self.groups = groups
    self.beta1 = beta1
    self.beta2 = beta2
    self.eps = eps
    var byGroup = [[(String, Tensor)]](repeating: [], count: groups.count)
    for (name, t) in parameters {
      precondition(t.requiresGrad, "AdamW given frozen parameter \(name)")
      let g = groups.firstIndex { $0.patterns.contains { Glob.matches($0, name) } }
      precondition(g != nil, "parameter \(name) matches no optimizer group")
      byGroup[g!].append((name, t))
    }
    let total = parameters.reduce(0) { $0 + $1.1.count }
    parameterCount = total
    params = Storage(capacity: total)
    grads = Storage(capacity: total)
    m = Storage(capacity: total)
    v = Storage(capacity: total)
    grads.base.initialize(repeating: 0, count: total)
    m.base.initialize(repeating: 0, count: total)
    v.base.initialize(repeating: 0, count: total)
    var ranges: [Range] = []
    var spans: [(Int, Int)] = []
    var offset = 0
    for (gi, members) in byGroup.enumerated() {
      let start = offset
      for (name, t) in members {
        t.rebind(to: params, offset: offset)
        t.grad = Tensor(storage: grads, offset: offset, shape: t.shape)
        ranges.append(Range(name: name, offset: offset, count: t.count, group: gi))
        offset += t.count
      }
      spans.append((start, offset))
    }
    self.ranges = ranges
    self.groupSpans = spans
  }

  /// Bytes held for parameters, gradients and moments of the trainable set.
  public var stateBytes: (parameters: Int, gradients: Int, moments: Int) {
    (parameterCount * 4, parameterCount * 4, parameterCount * 8)
  }

  public func zeroGrad() { grads.base.update(repeating: 0, count: parameterCount) }

  /// Euclidean norm of all gradients together (accumulated in float64).
  public func gradNorm() -> Float {
    var acc = 0.0
    let g = grads.base
    for i in 0..<parameterCount { acc += Double(g[i]) * Double(g[i]) }
    return Float(acc.squareRoot())
  }

  /// Scales gradients so their global norm is at most `maxNorm` (torch's clip_grad_norm_),
  /// returning the norm before clipping.
  @discardableResult
  public func clipGradNorm(_ maxNorm: Float) -> Float {
    let norm = gradNorm()
    let coef = maxNorm / (norm + 1e-6)
    if coef < 1 {
      let g = grads.base
      for i in 0..<parameterCount { g[i] *= coef }
    }
    return norm
  }

  /// Multiplies every gradient by `s` (e.g. 1/accumulation steps).
  public func scaleGrads(_ s: Float) {
    let g = grads.base
    for i in 0..<parameterCount { g[i] *= s }
  }

  /// One update with learning rate `lr` (scaled per group), in PyTorch's order of operations.
  public func step(lr: Float) {
    step += 1
    let bc1 = 1 - powf(beta1, Float(step))
    let bc2 = 1 - powf(beta2, Float(step))
    let bc2Sqrt = bc2.squareRoot()
    let (b1, b2, eps) = (beta1, beta2, eps)
    let p = params.base, g = grads.base, mp = m.base, vp = v.base
    for (gi, span) in groupSpans.enumerated() where span.end > span.start {
      let groupLR = lr * groups[gi].lrScale
      let decay = 1 - groupLR * groups[gi].weightDecay
      let stepSize = groupLR / bc1
      parallelFor(span.end - span.start, grain: 32768) { r in
        // 16 lanes at a time, spelled out: the four buffers may alias as far as the compiler
        // knows, so it would not vectorise the scalar loop. Same operations, same order.
        var i = span.start + r.lowerBound
        let end = span.start + r.upperBound
        while i + 16 <= end {
          let gi = Kernels.load16(g + i)
          let mi = b1 * Kernels.load16(mp + i) + (1 - b1) * gi
          let vi = b2 * Kernels.load16(vp + i) + (1 - b2) * gi * gi
          let denom = vi.squareRoot() / bc2Sqrt + eps
          Kernels.store16(Kernels.load16(p + i) * decay - stepSize * mi / denom, p + i)
          Kernels.store16(mi, mp + i)
          Kernels.store16(vi, vp + i)
          i += 16
        }
        while i < end {
          p[i] *= decay
          mp[i] = b1 * mp[i] + (1 - b1) * g[i]
          vp[i] = b2 * vp[i] + (1 - b2) * g[i] * g[i]
          let denom = vp[i].squareRoot() / bc2Sqrt + eps
          p[i] -= stepSize * mp[i] / denom
          i += 1
        }
      }
    }
  }

  // MARK: State for checkpoints

  /// Moments as named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) for optimizer.safetensors.
  public func stateTensors() -> [(String, Tensor)] {
    ranges.flatMap { r in
      [("\(r.name).exp_avg", Tensor(storage: m, offset: r.offset, shape: [r.count])),
       ("\(r.name).exp_avg_sq", Tensor(storage: v, offset: r.offset, shape: [r.count]))]
    }
  }

  public func loadState(step: Int, tensors: (String) throws -> Tensor) throws {
    for r in ranges {
      let a = try tensors("\(r.name).exp_avg"), b = try tensors("\(r.name).exp_avg_sq")
      guard a.count == r.count, b.count == r.count else {
        throw ModuleError.loadFailed(source: "optimizer state", problems: ["moments of '\(r.name)' have \(a.count) elements, expected \(r.count)"])
      }
      (m.base + r.offset).update(from: a.ptr, count: r.count)
      (v.base + r.offset).update(from: b.ptr, count: r.count)
    }
    self.step = step
  }
}

/// Learning rate for update number `step` (0-based): warm-up reaches the peak on step warmup − 1.
public enum LRSchedule: Sendable, Codable, Equatable {
  case constant
  /// Linear warm-up from 0, then cosine decay to `minRatio` · peak at `totalSteps`.
  case cosine(warmup: Int, totalSteps: Int, minRatio: Float)
  /// Linear warm-up from 0, then linear decay to `minRatio` · peak at `totalSteps`.
  case linear(warmup: Int, totalSteps: Int, minRatio: Float)

  public func lr(peak: Float, step: Int) -> Float {
    switch self {
    case .constant:
      return peak
    case .cosine(let warmup, let total, let minRatio), .linear(let warmup, let total, let minRatio):
      if step < warmup { return peak * Float(step + 1) / Float(warmup) }
      let span = max(1, total - warmup)
      let progress = min(1, Float(step - warmup) / Float(span))
      let shape: Float
      if case .cosine = self { shape = 0.5 * (1 + cosf(Float.pi * progress)) } else { shape = 1 - progress }
      return peak * (minRatio + (1 - minRatio) * shape)
    }
  }
}
