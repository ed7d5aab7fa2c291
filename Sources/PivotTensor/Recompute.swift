import Foundation

/// Activation recomputation (PyTorch's `torch.utils.checkpoint`): runs `body` on `x` without
/// recording its inner ops, so only `x` and the result are kept, and reruns it with recording
/// during backward to get the gradients. `parameters` are the trainable tensors `body` reads;
/// their gradients accumulate through the rerun. `body` must be deterministic (no dropout).
/// Costs one more forward of `body`; saves every activation inside it.
public func recomputed(_ x: Tensor, parameters: [Tensor], _ body: @escaping (Tensor) -> Tensor) -> Tensor {
  let trainable = parameters.filter(\.requiresGrad)
  guard GradMode.isEnabled, x.requiresGrad || !trainable.isEmpty else { return body(x) }
  let out = noGrad { body(x) }.detached()
  let shape = out.shape
  return out.record([x] + trainable) { g in
    let input = x.detached()  // a leaf: the rerun's graph stops here
    input.requiresGrad = x.requiresGrad
    let rerun = withGrad { body(input) }
    precondition(rerun.shape == shape, "recomputed: the rerun gave \(rerun.shape), the forward \(shape)")
    guard rerun.requiresGrad else { return }
    let seed = Tensor(empty: shape)
    seed.ptr.update(from: g, count: seed.count)
    rerun.backward(seed: seed)
    if x.requiresGrad, let gi = input.grad {
      let gx = x.gradPointer(), src = gi.ptr
      for i in 0..<x.count { gx[i] += src[i] }
    }
  }
}

/// Records gradients inside `body` even when called under `noGrad` (the backward pass).
func withGrad<R>(_ body: () throws -> R) rethrows -> R {
  let saved = GradMode.disabledDepth
  GradMode.disabledDepth = 0
  defer { GradMode.disabledDepth = saved }
  return try body()
}
