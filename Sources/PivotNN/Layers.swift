import Foundation
import PivotTensor

/// y = x Wᵀ + b, weight (out, in).
public final class Linear: Module, @unchecked Sendable {
  public let weight: Tensor
  public let bias: Tensor?

  public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, std: Float = 0.02, rng: inout PivotRNG) {
    weight = Tensor(empty: [outFeatures, inFeatures])
    rng.fillNormal(weight, std: std)
    weight.requiresGrad = true
    self.bias = bias ? Tensor.zeros([outFeatures], requiresGrad: true) : nil
  }

  /// The weight rounded to bfloat16, used instead of `weight` when present (frozen layers only).
  public private(set) var weightBF16: BF16Matrix?

  /// Computes with a bfloat16 copy of the (frozen) weight from now on: half the bytes per product.
  /// `weight` keeps its float32 values for export.
  public func storeWeightInBF16() {
    precondition(!weight.requiresGrad, "bfloat16 storage is for frozen weights; freeze the layer first")
    weightBF16 = BF16Matrix(weight)
  }

  public func callAsFunction(_ x: Tensor) -> Tensor {
    if let w = weightBF16 { return linear(x, w, bias) }
    return linear(x, weight, bias)
  }
}

public final class Embedding: Module, @unchecked Sendable {
  public let weight: Tensor
  public init(_ count: Int, _ dim: Int, std: Float = 0.02, rng: inout PivotRNG) {
    weight = Tensor(empty: [count, dim])
    rng.fillNormal(weight, std: std)
    weight.requiresGrad = true
  }
  public func callAsFunction(_ ids: [Int32], shape: [Int]) -> Tensor { embedding(ids, shape: shape, weight: weight) }
}

public final class LayerNorm: Module, @unchecked Sendable {
  public let weight: Tensor
  public let bias: Tensor?
  public let eps: Float
  public init(_ dim: Int, eps: Float = 1e-5, bias: Bool = true) {
    weight = Tensor.full([dim], 1)
    weight.requiresGrad = true
    self.bias = bias ? Tensor.zeros([dim], requiresGrad: true) : nil
    self.eps = eps
  }
  public func callAsFunction(_ x: Tensor) -> Tensor { layerNorm(x, weight: weight, bias: bias, eps: eps) }
}

public final class RMSNorm: Module, @unchecked Sendable {
  public let weight: Tensor
  public let eps: Float
  public init(_ dim: Int, eps: Float = 1e-6) {
    weight = Tensor.full([dim], 1)
    weight.requiresGrad = true
    self.eps = eps
  }
  public func callAsFunction(_ x: Tensor) -> Tensor { rmsNorm(x, weight: weight, eps: eps) }
}
