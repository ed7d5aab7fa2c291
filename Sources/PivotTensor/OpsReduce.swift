import Foundation

/// Splits a shape around `axis` into (outer, length, inner) so that a reduction or a
/// concatenation along any axis is a loop over contiguous runs.
@inline(__always)
func around(_ shape: [Int], _ axis: Int) -> (outer: Int, n: Int, inner: Int) {
  (shape[..<axis].reduce(1, *), shape[axis], shape[(axis + 1)...].reduce(1, *))
}

@inline(__always)
func normalize(axis: Int, rank: Int) -> Int {
  let a = axis < 0 ? axis + rank : axis
  precondition(a >= 0 && a < rank, "axis \(axis) out of range for rank \(rank)")
  return a
}

/// Sum over one axis.
public func sum(_ x: Tensor, axis: Int, keepDims: Bool = false) -> Tensor {
  let ax = normalize(axis: axis, rank: x.rank)
  let (outer, n, inner) = around(x.shape, ax)
  var shape = x.shape
  if keepDims { shape[ax] = 1 } else { shape.remove(at: ax) }
  let out = Tensor.zeros(shape)
  let xp = x.ptr, op = out.ptr
  for o in 0..<outer {
    for i in 0..<n {
      let src = xp + (o * n + i) * inner, dst = op + o * inner
      for j in 0..<inner { dst[j] += src[j] }
    }
  }
  return out.record([x]) { g in
    let gx = x.gradPointer()
    for o in 0..<outer {
      for i in 0..<n {
        let dst = gx + (o * n + i) * inner, src = g + o * inner
        for j in 0..<inner { dst[j] += src[j] }
      }
    }
  }
}

public func mean(_ x: Tensor, axis: Int, keepDims: Bool = false) -> Tensor {
  scale(sum(x, axis: axis, keepDims: keepDims), 1 / Float(x.size(axis)))
}

/// Sum of every element, a scalar (shape []). Accumulated in float64.
public func sum(_ x: Tensor) -> Tensor {
  var acc = 0.0
  let xp = x.ptr
  for i in 0..<x.count { acc += Double(xp[i]) }
  let out = Tensor([Float(acc)], shape: [])
  return out.record([x]) { g in
    let gx = x.gradPointer(), gv = g[0]
    for i in 0..<x.count { gx[i] += gv }
  }
}

public func mean(_ x: Tensor) -> Tensor { scale(sum(x), 1 / Float(x.count)) }
