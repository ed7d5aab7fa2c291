import Foundation
import PivotTensor

/// y = x Wᵀ + b, weight (out, in); with a LoRA adapter, y + s · (x Aᵀ) Bᵀ (`LoRA.swift`).
public final class Linear: Module, @unchecked Sendable {
  public let weight: Tensor
  public let bias: Tensor?
  /// The adapter, under PEFT's names: `lora_A.weight` (r, in), `lora_B.weight` (out, r).
  public internal(set) var loraA: Tensor?
  public internal(set) var loraB: Tensor?
  /// alpha / r (alpha / √r with rsLoRA), and the dropout probability on the adapter's input.
  public internal(set) var loraScale: Float = 0
  public internal(set) var loraDropout: Float = 0
  /// Mixed with the step's seed for this layer's dropout mask (from its path, so order-free).
  var loraSeed: UInt64 = 0

  public override var keyOverrides: [String: String] { ["loraA": "lora_A.weight", "loraB": "lora_B.weight"] }
  public var hasAdapter: Bool { loraA != nil }

  public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, std: Float = 0.02, rng: inout PivotRNG) {
    weight = Tensor(empty: [outFeatures, inFeatures])
    rng.fillNormal(weight, std: std)
    weight.requiresGrad = true
    self.bias = bias ? Tensor.zeros([outFeatures], requiresGrad: true) : nil
  }

  /// Computes with the (frozen) weight rounded to bfloat16 from now on, and gives back its
  /// float32 memory: half the bytes per product and in memory. Export widens it again.
  public func storeWeightInBF16() {
    precondition(!weight.requiresGrad, "bfloat16 storage is for frozen weights; freeze the layer first")
    if weight.bf16Values == nil { weight.keepOnlyBF16(BF16Matrix(weight)) }
  }

  public func callAsFunction(_ x: Tensor) -> Tensor {
    let y = weight.bf16Values.map { linear(x, $0, bias) } ?? linear(x, weight, bias)
    guard let loraA, let loraB else { return y }
    return y + adapterOutput(x, loraA, loraB)
  }
}

/// Frozen Linears that read the same input (q, k, v; gate, up) run as one product: their weights
/// and biases become row blocks of one (ΣOut, In) buffer that the layers' own tensors then view,
/// so no memory is added, and a one-row product (decode) makes one GEMV call instead of several.
/// Float32 or bfloat16-only weights, not a mix. Inference only: the outputs are copies or views
/// with no autograd history.
public final class StackedLinear: @unchecked Sendable {
  /// (ΣOut, In) float32, or nil when the weights are bfloat16-only.
  public let weight: Tensor?
  public let weightBF16: BF16Matrix?
  public let bias: Tensor?  // (ΣOut)
  public let inFeatures: Int
  public let outFeatures: [Int]

  /// nil unless every layer is frozen without an adapter, has the same input width and weight storage, and all or none have biases.
  public init?(_ layers: [Linear]) {
    guard let first = layers.first, layers.allSatisfy({ !$0.weight.requiresGrad && $0.bias?.requiresGrad != true && !$0.hasAdapter }) else { return nil }
    let inF = first.weight.shape[1]
    let hasBias = first.bias != nil, half = first.weight.bf16Values != nil
    guard layers.allSatisfy({ $0.weight.shape[1] == inF && ($0.bias != nil) == hasBias && ($0.weight.bf16Values != nil) == half }) else { return nil }
    inFeatures = inF
    outFeatures = layers.map { $0.weight.shape[0] }
    let total = outFeatures.reduce(0, +)
    bias = hasBias ? Tensor(empty: [total]) : nil
    var row = 0
    if half {
      let stacked = BF16Matrix.stacking(layers.map { $0.weight.bf16Values! })
      for l in layers {
        l.weight.keepOnlyBF16(BF16Matrix(rowsOf: stacked, row..<(row + l.weight.shape[0])))
        row += l.weight.shape[0]
      }
      weight = nil
      weightBF16 = stacked
    } else {
      let stacked = Tensor(empty: [total, inF])
      for l in layers {
        l.weight.rebind(to: stacked.storage, offset: stacked.offset + row * inF)
        row += l.weight.shape[0]
      }
      weight = stacked
      weightBF16 = nil
    }
    row = 0
    for l in layers {
      if let b = l.bias, let bias { b.rebind(to: bias.storage, offset: bias.offset + row) }
      row += l.weight.shape[0]
    }
  }

  /// x (…, In) → one tensor (…, Out_i) per stacked layer.
  public func callAsFunction(_ x: Tensor) -> [Tensor] {
    let y = noGrad { weightBF16.map { linear(x, $0, bias) } ?? linear(x, weight!, bias) }  // (N, ΣOut)
    let lead = Array(x.shape.dropLast())
    let n = x.count / inFeatures, total = outFeatures.reduce(0, +)
    if n == 1 {  // each part is a contiguous run of the one output row
      var start = 0
      return outFeatures.map { f in
        defer { start += f }
        return y.view(offset: start, shape: lead + [f])
      }
    }
    var start = 0
    return outFeatures.map { f in
      defer { start += f }
      let part = Tensor(empty: lead + [f])
      for r in 0..<n { (part.ptr + r * f).update(from: y.ptr + r * total + start, count: f) }
      return part
    }
  }
}


public final class Embedding: Module, @unchecked Sendable {
  public let weight: Tensor
  public init(_ count: Int, _ dim: Int, std: Float = 0.02, rng: inout PivotRNG) {
    weight = Tensor(empty: [count, dim])
    rng.fillNormal(weight, std: std)
    weight.requiresGrad = true
  }
  public func callAsFunction(_ ids: [Int32], shape: [Int]) -> Tensor {
    if let w = weight.bf16Values { return embedding(ids, shape: shape, weight: w) }
    return embedding(ids, shape: shape, weight: weight)
  }
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
