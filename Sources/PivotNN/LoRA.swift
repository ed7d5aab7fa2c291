import Foundation
import PivotTensor

/// LoRA (Hu et al. 2021) as PEFT defines it: a Linear y = x Wᵀ + b gains
/// y += s · B(A(dropout(x))) with A (r, in) drawn as PEFT's Kaiming-uniform, B (out, r) zero,
/// s = alpha / r. W stays frozen: no weight-gradient GEMM, no gradient, no moments; the adapter
/// is two thin GEMMs and ΔW = B·A is never formed (except by `mergedWeight` for export).
public struct LoRASettings: Sendable, Codable, Equatable {
  public var rank: Int
  public var alpha: Double
  public var dropout: Double
  /// Globs over Linear module paths (`language_model.*.self_attn.*_proj`).
  public var targets: [String]
  /// rsLoRA's scale alpha / √r instead of alpha / r (PEFT's `use_rslora`).
  public var rsLoRA = false

  public init(rank: Int, alpha: Double, dropout: Double = 0, targets: [String], rsLoRA: Bool = false) {
    self.rank = rank
    self.alpha = alpha
    self.dropout = dropout
    self.targets = targets
    self.rsLoRA = rsLoRA
  }

  public var scale: Float { Float(rsLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank)) }
}

/// Dropout masks on the adapter path come from this seed mixed with each layer's own, so a
/// layer rerun in backward (recomputation) or a resumed step draws the same mask. The trainer
/// sets it before each micro-batch. Per thread, as `GradMode` is, so trainers running side by side
/// (tests, evaluation threads) never draw each other's masks.
public enum LoRADropout {
  private static let key: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k, nil)
    return k
  }()

  public static var stepSeed: UInt64 {
    get { UInt64(UInt(bitPattern: pthread_getspecific(key))) }
    set { pthread_setspecific(key, UnsafeRawPointer(bitPattern: UInt(newValue))) }
  }
}

public enum LoRAError: Error, CustomStringConvertible {
  case targetMatchesNothing(pattern: String, source: String, examples: [String])
  case alreadyAdapted(String)

  /// The problem without the file's name.
  public var reason: String {
    switch self {
    case .targetMatchesNothing(let p, _, let examples):
      "LoRA target '\(p)' matches no Linear layer (targets are globs over Linear module paths"
        + (examples.isEmpty ? ")" : ", e.g. \(examples.prefix(3).joined(separator: ", ")))")
    case .alreadyAdapted(let path): "\(path) already has a LoRA adapter"
    }
  }

  public var description: String {
    switch self {
    case .targetMatchesNothing(_, let source, _): "\(source): \(reason)"
    case .alreadyAdapted: reason
    }
  }
}

extension Linear {
  /// Gives this layer an adapter of rank `rank`: A from PEFT's `kaiming_uniform_(a=√5)`
  /// (bound 1/√in), B zero, so the layer's output is unchanged until B trains.
  public func attachAdapter(rank: Int, scale: Float, dropout: Float, seed: UInt64, rng: inout PivotRNG) {
    let inF = weight.shape[1], outF = weight.shape[0]
    let a = Tensor(empty: [rank, inF])
    let bound = 1 / Float(inF).squareRoot()
    rng.fillUniform(a, low: -bound, high: bound)
    a.requiresGrad = true
    loraA = a
    loraB = Tensor.zeros([outF, rank], requiresGrad: true)
    loraScale = scale
    loraDropout = dropout
    loraSeed = seed
  }

  /// s · (dropout(x) Aᵀ) Bᵀ, x (…, in) → (…, out). The scale goes on the (N, r) product, the
  /// smaller of the two. Float32 products under `matmul: bf16` as well: the adapter trains, its
  /// updates sit below bfloat16's resolution, and it is r/out of the layer's work.
  func adapterOutput(_ x: Tensor, _ a: Tensor, _ b: Tensor) -> Tensor {
    MatmulPrecision.with(.float32) {
      var input = x
      if loraDropout > 0 && GradMode.isEnabled {
        var rng = PivotRNG(seed: LoRADropout.stepSeed ^ loraSeed)
        input = dropout(x, p: loraDropout, rng: &rng)
      }
      return linear(scale(linear(input, a), loraScale), b)  // (…, r) → (…, out)
    }
  }

  /// W + s · B·A (out, in) in float32: the weight a plain Linear needs to compute what this
  /// adapted one does.
  public func mergedWeight() -> Tensor {
    let w = weight.floatValues()
    guard let a = loraA, let b = loraB else { return w }
    let merged = Tensor(empty: w.shape)
    merged.ptr.update(from: w.ptr, count: w.count)
    let (outF, inF, r) = (w.shape[0], w.shape[1], a.shape[0])
    sgemm(transA: false, transB: false, m: outF, n: inF, k: r, alpha: loraScale, a: b.ptr, lda: r, b: a.ptr, ldb: inF,
          beta: 1, c: merged.ptr, ldc: inF)
    return merged
  }
}

extension Module {
  /// Every Linear below this module with its dotted path.
  public func namedLinears(prefix: String = "") -> [(String, Linear)] {
    namedModules(prefix: prefix).compactMap { name, m in (m as? Linear).map { (name, $0) } }
  }

  /// Linears with an adapter.
  public func adaptedLinears(prefix: String = "") -> [(String, Linear)] { namedLinears(prefix: prefix).filter { $0.1.hasAdapter } }

  /// Attaches an adapter to every Linear whose path matches one of `settings.targets`; a target
  /// that matches none is an error naming it and `source`. Returns the adapted paths in order.
  @discardableResult
  public func attachLoRA(_ settings: LoRASettings, seed: UInt64, source: String, exclude: Set<String> = []) throws -> [String] {
    let linears = namedLinears().filter { !exclude.contains($0.0) }
    var chosen = Set<String>()
    for pattern in settings.targets {
      let hits = linears.filter { Glob.matches(pattern, $0.0) }
      if hits.isEmpty {
        throw LoRAError.targetMatchesNothing(pattern: pattern, source: source, examples: linears.map(\.0))
      }
      for (name, _) in hits { chosen.insert(name) }
    }
    var rng = PivotRNG(seed: seed ^ 0x4C6F_5241)  // "LoRA"
    var adapted: [String] = []
    for (name, linear) in linears where chosen.contains(name) {
      if linear.hasAdapter { throw LoRAError.alreadyAdapted(name) }
      linear.attachAdapter(rank: settings.rank, scale: settings.scale, dropout: Float(settings.dropout),
                           seed: LoRA.pathSeed(name), rng: &rng)
      adapted.append(name)
    }
    return adapted
  }

  /// Parameters as a plain model has them: each adapted weight merged (W + s·B·A), the adapter
  /// tensors left out. What every export writes, so transformers loads it as a plain checkpoint.
  public func mergedParameters(prefix: String = "") -> [(String, Tensor)] {
    var merged: [ObjectIdentifier: Tensor] = [:]
    var adapterTensors = Set<ObjectIdentifier>()
    for (_, linear) in adaptedLinears() {
      merged[ObjectIdentifier(linear.weight)] = linear.mergedWeight()
      if let a = linear.loraA, let b = linear.loraB { adapterTensors.formUnion([ObjectIdentifier(a), ObjectIdentifier(b)]) }
    }
    if merged.isEmpty { return namedParameters(prefix: prefix) }
    return namedParameters(prefix: prefix).compactMap { name, t in
      if adapterTensors.contains(ObjectIdentifier(t)) { return nil }
      return (name, merged[ObjectIdentifier(t)] ?? t)
    }
  }
}

public enum LoRA {
  /// Parameter-name globs of every adapter tensor.
  public static let adapterPatterns = ["*.lora_A.weight", "*.lora_B.weight"]

  public static func isAdapterName(_ name: String) -> Bool { name.hasSuffix(".lora_A.weight") || name.hasSuffix(".lora_B.weight") }

  /// FNV-1a of a module path: a per-layer seed that does not depend on attachment order.
  public static func pathSeed(_ path: String) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for byte in path.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01B3 }
    return h
  }
}
