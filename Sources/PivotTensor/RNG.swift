import Foundation

/// Seeded, splittable random numbers (xoshiro256**, seeded through SplitMix64).
/// The state is four words, so a checkpoint can save and restore it exactly.
public struct PivotRNG: RandomNumberGenerator, Codable, Sendable, Equatable {
  public var state: [UInt64]

  public init(seed: UInt64) {
    var sm = seed
    state = (0..<4).map { _ in PivotRNG.splitMix(&sm) }
  }

  static func splitMix(_ x: inout UInt64) -> UInt64 {
    x &+= 0x9E37_79B9_7F4A_7C15
    var z = x
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  @inline(__always)
  public mutating func next() -> UInt64 {
    let result = ((state[1] &* 5) << 7 | (state[1] &* 5) >> 57) &* 9
    let t = state[1] << 17
    state[2] ^= state[0]
    state[3] ^= state[1]
    state[1] ^= state[2]
    state[0] ^= state[3]
    state[2] ^= t
    state[3] = (state[3] << 45) | (state[3] >> 19)
    return result
  }

  /// An independent stream derived from this one (for per-worker or per-module randomness).
  public mutating func split() -> PivotRNG { PivotRNG(seed: next()) }

  /// Uniform in [0, 1).
  @inline(__always)
  public mutating func uniform() -> Float { Float(next() >> 40) * (1.0 / Float(1 << 24)) }

  /// Standard normal (Box–Muller).
  public mutating func normal() -> Float {
    let u1 = max(Double(next() >> 11) * 0x1.0p-53, 1e-300)
    let u2 = Double(next() >> 11) * 0x1.0p-53
    return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
  }

  public mutating func fillNormal(_ t: Tensor, mean: Float = 0, std: Float) {
    if Initialization.isSkipped { return }
    let p = t.ptr
    for i in 0..<t.count { p[i] = mean + std * normal() }
  }

  public mutating func fillUniform(_ t: Tensor, low: Float, high: Float) {
    if Initialization.isSkipped { return }
    let p = t.ptr
    for i in 0..<t.count { p[i] = low + (high - low) * uniform() }
  }
}

/// Random initialisation can be switched off while a model whose weights are about to be
/// loaded is built: drawing 500 M normals costs seconds that loading then throws away.
/// Per thread, like `GradMode`.
public enum Initialization {
  private static let key: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k, nil)
    return k
  }()
  static var depth: Int {
    get { Int(bitPattern: pthread_getspecific(key)) }
    set { pthread_setspecific(key, UnsafeRawPointer(bitPattern: newValue)) }
  }
  public static var isSkipped: Bool { depth > 0 }
}

/// Builds modules without drawing random weights (their values are undefined until loaded).
public func withoutInitialization<R>(_ body: () throws -> R) rethrows -> R {
  Initialization.depth += 1
  defer { Initialization.depth -= 1 }
  return try body()
}
