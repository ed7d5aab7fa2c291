/// exp over 16 lanes at once: libm's expf is a call per element, and the vocabulary-wide
/// softmax of a 151936-token LM head makes ~10⁸ of them per training step.
extension Kernels {
  /// e^x to within 2 ulp of expf: x = n·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r
  /// (Cephes' expf coefficients), then 2ⁿ from the exponent bits. Below −87.3 (and for −∞)
  /// the result is 0; above ln(FLT_MAX) ≈ 88.72 it is +∞; between 88.37 and 88.72 it is
  /// e^88.37 (n must stay ≤ 127); NaN stays NaN. Softmax arguments are ≤ 0.
  @inline(__always)
  public static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
    // Only comparisons, selects, float and wrapping-integer arithmetic: the generic SIMD
    // helpers (clamped, Int32(Float) conversion, rounded) are not specialised and cost 10×.
    var clamped = x.replacing(with: -87.3, where: x .< -87.3)
    clamped.replace(with: 88.37, where: clamped .> 88.37)
    // Adding 1.5·2²³ rounds to an integer (nearest even) and leaves it in the low mantissa bits.
    let shifter: Float = 12582912
    let biased = clamped * 1.44269504088896341 + shifter
    let n = biased - shifter
    var r = clamped - n * 0.693359375
    r = r - n * -2.12194440e-4
    var p = SIMD16<Float>(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * (r * r) + r + 1
    let exponent = (unsafeBitCast(biased, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &* (1 << 23)
    var result = p * unsafeBitCast(exponent, to: SIMD16<Float>.self)
    result.replace(with: 0, where: x .< -87.3)
    result.replace(with: Float.infinity, where: x .> 88.7228)
    result.replace(with: x, where: x .!= x)
    return result
  }

  /// The 16-lane exp of one value, for scalar tails: they then agree bit for bit with the body.
  @inline(__always)
  public static func exp(lane x: Float) -> Float { exp(SIMD16<Float>(repeating: x))[0] }

  @inlinable @inline(__always)
  public static func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self) }

  @inlinable @inline(__always)
  public static func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self) }

  /// The largest of x[0..<count] (−∞ when empty).
  @inline(__always)
  public static func maxValue(_ x: UnsafePointer<Float>, count: Int) -> Float {
    var m16 = SIMD16<Float>(repeating: -.infinity)
    var i = 0
    while i + 16 <= count { let v = load16(x + i); m16.replace(with: v, where: v .> m16); i += 16 }
    var m = m16.max()
    while i < count { m = max(m, x[i]); i += 1 }
    return m
  }

  /// Σ exp(x[i] − shift); with `out`, also stores each term.
  @inline(__always)
  public static func sumExp(_ x: UnsafePointer<Float>, count: Int, shift: Float, storingTo out: UnsafeMutablePointer<Float>? = nil) -> Float {
    var s16 = SIMD16<Float>(repeating: 0)
    var i = 0
    while i + 16 <= count {
      let e = exp(load16(x + i) - shift)
      if let out { store16(e, out + i) }
      s16 += e
      i += 16
    }
    var s = s16.sum()
    while i < count {
      let e = exp(lane: x[i] - shift)
      out?[i] = e
      s += e
      i += 1
    }
    return s
  }
}
