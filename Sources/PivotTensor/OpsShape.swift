import Foundation

/// Same elements, new shape (one axis may be −1). A view: no copy.
public func reshape(_ x: Tensor, _ shape: [Int]) -> Tensor {
  var shape = shape
  if let i = shape.firstIndex(of: -1) {
    let known = shape.enumerated().filter { $0.offset != i }.map(\.element).reduce(1, *)
    shape[i] = x.count / max(known, 1)
  }
  precondition(shape.reduce(1, *) == x.count, "cannot reshape \(x.shape) to \(shape)")
  let out = Tensor(storage: x.storage, offset: x.offset, shape: shape)
  let (xs, n) = (x.slot, x.count)
  return out.record([x]) { g in
    let gx = xs.gradPointer()
    for i in 0..<n { gx[i] += g[i] }
  }
}

/// Axes reordered: out.shape[i] = x.shape[perm[i]]. Copies into a contiguous tensor.
public func permute(_ x: Tensor, _ perm: [Int]) -> Tensor {
  precondition(perm.sorted() == Array(0..<x.rank), "permute \(perm) of rank \(x.rank)")
  let outShape = perm.map { x.shape[$0] }
  let inStrides = x.strides
  let srcStrides = perm.map { inStrides[$0] }  // stride in x for each output axis
  let out = Tensor(empty: outShape)
  // Walk the output in runs along its last axis.
  func walk(_ body: (_ outStart: Int, _ inStart: Int, _ inStep: Int, _ n: Int) -> Void) {
    let r = outShape.count
    guard r > 0 else { body(0, 0, 0, 1); return }
    let inner = outShape[r - 1], step = srcStrides[r - 1]
    let runs = outShape.dropLast().reduce(1, *)
    for run in 0..<runs {
      var rem = run, src = 0
      var i = r - 2
      while i >= 0 { let idx = rem % outShape[i]; rem /= outShape[i]; src += idx * srcStrides[i]; i -= 1 }
      body(run * inner, src, step, inner)
    }
  }
  let xp = x.ptr, op = out.ptr
  walk { o, s, step, n in for j in 0..<n { op[o + j] = xp[s + j * step] } }
  return out.record([x]) { g in
    let gx = x.gradPointer()
    walk { o, s, step, n in for j in 0..<n { gx[s + j * step] += g[o + j] } }
  }
}

public func transpose(_ x: Tensor, _ a: Int, _ b: Int) -> Tensor {
  var perm = Array(0..<x.rank)
  perm.swapAt(normalize(axis: a, rank: x.rank), normalize(axis: b, rank: x.rank))
  return permute(x, perm)
}

/// Joins tensors along `axis`; the other axes must agree.
public func concat(_ xs: [Tensor], axis: Int) -> Tensor {
  precondition(!xs.isEmpty, "concat of nothing")
  let ax = normalize(axis: axis, rank: xs[0].rank)
  var shape = xs[0].shape
  for x in xs.dropFirst() {
    var s = x.shape
    s[ax] = shape[ax]
    precondition(s == shape, "concat along \(ax): \(x.shape) does not match \(xs[0].shape)")
  }
  shape[ax] = xs.map { $0.shape[ax] }.reduce(0, +)
  let (outer, total, inner) = around(shape, ax)
  let out = Tensor(empty: shape)
  var start = 0
  var starts: [Int] = []
  for x in xs {
    let n = x.shape[ax]
    starts.append(start)
    for o in 0..<outer {
      (out.ptr + (o * total + start) * inner).update(from: x.ptr + o * n * inner, count: n * inner)
    }
    start += n
  }
  let slots = xs.map(\.slot)  // the backward copies gradients only: no input values kept
  return out.record(xs) { g in
    for (x, s) in zip(slots, starts) where x.requiresGrad {
      let n = x.shape[ax], gx = x.gradPointer()
      for o in 0..<outer {
        let src = g + (o * total + s) * inner, dst = gx + o * n * inner
        for j in 0..<(n * inner) { dst[j] += src[j] }
      }
    }
  }
}

/// Elements start..<end along `axis`, copied.
public func slice(_ x: Tensor, axis: Int, _ range: Range<Int>) -> Tensor {
  let ax = normalize(axis: axis, rank: x.rank)
  precondition(range.lowerBound >= 0 && range.upperBound <= x.shape[ax], "slice \(range) of axis \(ax) with size \(x.shape[ax])")
  let (outer, n, inner) = around(x.shape, ax)
  var shape = x.shape
  shape[ax] = range.count
  let out = Tensor(empty: shape)
  let len = range.count * inner
  for o in 0..<outer {
    (out.ptr + o * len).update(from: x.ptr + (o * n + range.lowerBound) * inner, count: len)
  }
  let xs = x.slot
  return out.record([x]) { g in
    let gx = xs.gradPointer()
    for o in 0..<outer {
      let dst = gx + (o * n + range.lowerBound) * inner, src = g + o * len
      for j in 0..<len { dst[j] += src[j] }
    }
  }
}

/// Pieces of the given sizes along `axis`.
public func split(_ x: Tensor, axis: Int, sizes: [Int]) -> [Tensor] {
  let ax = normalize(axis: axis, rank: x.rank)
  precondition(sizes.reduce(0, +) == x.shape[ax], "split sizes \(sizes) do not add up to \(x.shape[ax])")
  var start = 0
  return sizes.map { n in
    defer { start += n }
    return slice(x, axis: ax, start..<(start + n))
  }
}
