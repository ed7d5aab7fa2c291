import Foundation

/// An 8-bit RGB colour; written `[r, g, b]` in configurations.
public struct Colour: Codable, Sendable, Equatable, Hashable {
  public var red: UInt8
  public var green: UInt8
  public var blue: UInt8

  public init(red: UInt8, green: UInt8, blue: UInt8) {
    self.red = red
    self.green = green
    self.blue = blue
  }

  public static let white = Colour(red: 255, green: 255, blue: 255)
  public static let black = Colour(red: 0, green: 0, blue: 0)

  public init(from decoder: any Decoder) throws {
    var container = try decoder.unkeyedContainer()
    let values = [try container.decode(UInt8.self), try container.decode(UInt8.self), try container.decode(UInt8.self)]
    guard container.isAtEnd else {
      throw DecodingError.dataCorruptedError(in: container, debugDescription: "a colour is [r, g, b], three bytes")
    }
    self.init(red: values[0], green: values[1], blue: values[2])
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.unkeyedContainer()
    try container.encode(red)
    try container.encode(green)
    try container.encode(blue)
  }
}

/// Training-time image augmentation. Every random choice comes from the one `UInt64` seed a
/// sample carries (a pure function of the data cursor), so the same seed gives the same pixels
/// bit for bit and a resumed run sees exactly the images an uninterrupted one would.
///
/// Each kind of choice draws from its own stream, `SplitMix64(mix(seed, stream))`: switching
/// flips on does not move the crops, and an opaque image (no background drawn) does not shift
/// anything either.
public struct Augmentation: Codable, Sendable, Equatable {
  /// What goes behind an image with transparency.
  public enum Background: String, Codable, Sendable, CaseIterable {
    /// One random colour.
    case plain
    /// A linear gradient between two random colours in a random direction.
    case gradient
    /// Random colour per pixel, box-blurred over `noiseSmoothing` pixels each side.
    case noise
  }

  /// torchvision's `RandomResizedCrop`; false keeps the resize + centre crop.
  public var randomResizedCrop: Bool
  /// Fraction of the image area the crop covers, drawn uniformly (torchvision's default 0.08…1;
  /// captions that name the whole scene may prefer something like 0.5…1).
  public var scale: ClosedRange<Double>
  /// Width / height of the crop, drawn log-uniformly.
  public var ratio: ClosedRange<Double>
  /// Probability of a left–right mirror (0 = never). Off by default: captions say "left".
  public var horizontalFlipProbability: Double
  /// Background kinds for images with alpha, one picked uniformly per sample; empty = the fixed
  /// `ImagePreprocessing.background`.
  public var backgrounds: [Background]
  /// Box-blur radius of the noise background in pixels (0 = raw per-pixel noise).
  public var noiseSmoothing: Int

  public init(
    randomResizedCrop: Bool = true, scale: ClosedRange<Double> = 0.08...1.0,
    ratio: ClosedRange<Double> = (3.0 / 4.0)...(4.0 / 3.0), horizontalFlipProbability: Double = 0,
    backgrounds: [Background] = Background.allCases, noiseSmoothing: Int = 1
  ) {
    self.randomResizedCrop = randomResizedCrop
    self.scale = scale
    self.ratio = ratio
    self.horizontalFlipProbability = horizontalFlipProbability
    self.backgrounds = backgrounds
    self.noiseSmoothing = noiseSmoothing
  }

  /// Missing keys take the defaults above.
  public init(from decoder: any Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    let defaults = Augmentation()
    randomResizedCrop =
      try container.decodeIfPresent(Bool.self, forKey: .randomResizedCrop) ?? defaults.randomResizedCrop
    scale = try container.decodeIfPresent(ClosedRange<Double>.self, forKey: .scale) ?? defaults.scale
    ratio = try container.decodeIfPresent(ClosedRange<Double>.self, forKey: .ratio) ?? defaults.ratio
    horizontalFlipProbability =
      try container.decodeIfPresent(Double.self, forKey: .horizontalFlipProbability)
      ?? defaults.horizontalFlipProbability
    backgrounds = try container.decodeIfPresent([Background].self, forKey: .backgrounds) ?? defaults.backgrounds
    noiseSmoothing = try container.decodeIfPresent(Int.self, forKey: .noiseSmoothing) ?? defaults.noiseSmoothing
  }

  /// Throws on settings that cannot work, naming the setting.
  public func validate() throws {
    guard scale.lowerBound > 0, scale.upperBound <= 1 else {
      throw DataError.invalid("augmentation: scale \(scale) must lie in (0, 1]")
    }
    guard ratio.lowerBound > 0, ratio.upperBound.isFinite else {
      throw DataError.invalid("augmentation: ratio \(ratio) must be positive and finite")
    }
    guard (0...1).contains(horizontalFlipProbability) else {
      throw DataError.invalid("augmentation: horizontalFlipProbability \(horizontalFlipProbability) is not in [0, 1]")
    }
    guard (0...64).contains(noiseSmoothing) else {
      throw DataError.invalid("augmentation: noiseSmoothing \(noiseSmoothing) is not in 0…64")
    }
  }

  /// The independent random streams of one sample's seed.
  enum Stream: UInt64 {
    case crop = 1
    case flip = 2
    case background = 3
  }

  static func generator(seed: UInt64, _ stream: Stream) -> SplitMix64 {
    SplitMix64(seed: SplitMix64.mix(seed, stream.rawValue))
  }

  /// The crop box `RandomResizedCrop.get_params` picks for a `width` × `height` image, in its
  /// pixels: up to 10 tries of area fraction ~ U(scale) and log-ratio ~ U(log ratio), sides
  /// rounded half-to-even as Python's `round`; then torchvision's fallback, the centre crop
  /// clamped to the ratio range.
  public func cropBox(width: Int, height: Int, seed: UInt64) -> CropBox {
    var generator = Augmentation.generator(seed: seed, .crop)
    let area = Double(width) * Double(height)
    let logRatio = log(ratio.lowerBound)...log(ratio.upperBound)
    for _ in 0..<10 {
      let targetArea = area * generator.uniform(scale)
      let aspectRatio = exp(generator.uniform(logRatio))
      let w = Int((targetArea * aspectRatio).squareRoot().rounded(.toNearestOrEven))
      let h = Int((targetArea / aspectRatio).squareRoot().rounded(.toNearestOrEven))
      if w > 0 && w <= width && h > 0 && h <= height {
        let top = generator.below(height - h + 1)
        let left = generator.below(width - w + 1)
        return CropBox(x: left, y: top, width: w, height: h, isFallback: false)
      }
    }
    let inRatio = Double(width) / Double(height)
    var w = width
    var h = height
    if inRatio < ratio.lowerBound {
      h = Int((Double(w) / ratio.lowerBound).rounded(.toNearestOrEven))
    } else if inRatio > ratio.upperBound {
      w = Int((Double(h) * ratio.upperBound).rounded(.toNearestOrEven))
    }
    return CropBox(x: (width - w) / 2, y: (height - h) / 2, width: w, height: h, isFallback: true)
  }

  /// Whether this sample is mirrored.
  public func flips(seed: UInt64) -> Bool {
    guard horizontalFlipProbability > 0 else { return false }
    var generator = Augmentation.generator(seed: seed, .flip)
    return generator.unitInterval() < horizontalFlipProbability
  }

  /// The background this sample's transparent pixels go over, or nil for the fixed colour.
  func backdrop(width: Int, height: Int, seed: UInt64) -> Backdrop? {
    guard !backgrounds.isEmpty else { return nil }
    var generator = Augmentation.generator(seed: seed, .background)
    switch backgrounds[generator.below(backgrounds.count)] {
    case .plain:
      return .colour(generator.colour())
    case .gradient:
      return .image(gradientBackground(width: width, height: height, using: &generator))
    case .noise:
      return .image(noiseBackground(width: width, height: height, smoothing: noiseSmoothing, using: &generator))
    }
  }
}

/// A crop rectangle in an image's pixels.
public struct CropBox: Sendable, Equatable {
  public var x: Int
  public var y: Int
  public var width: Int
  public var height: Int
  /// True when no try fitted and torchvision's centre-crop fallback was used.
  public var isFallback: Bool

  /// The same region in an image decoded at 1/`denominator` (`scaledWidth` × `scaledHeight`):
  /// corners rounded outwards, at least one pixel.
  func scaled(by denominator: Int, scaledWidth: Int, scaledHeight: Int) -> CropBox {
    guard denominator > 1 else { return self }
    let left = min(x / denominator, scaledWidth - 1)
    let top = min(y / denominator, scaledHeight - 1)
    let right = min(scaledWidth, (x + width + denominator - 1) / denominator)
    let bottom = min(scaledHeight, (y + height + denominator - 1) / denominator)
    return CropBox(
      x: left, y: top, width: max(1, right - left), height: max(1, bottom - top), isFallback: isFallback)
  }
}

/// What transparent pixels are composited onto.
enum Backdrop {
  case colour(Colour)
  case image(RGBImage)
}

extension SplitMix64 {
  /// Uniform in [0, 1) with 53 random bits.
  mutating func unitInterval() -> Double { Double(next() >> 11) * 0x1p-53 }

  mutating func uniform(_ range: ClosedRange<Double>) -> Double {
    range.lowerBound + (range.upperBound - range.lowerBound) * unitInterval()
  }

  /// Uniform in 0..<count by a 64×64 → 128-bit multiply (bias below count / 2^64), spelled out
  /// so that no library change can alter the numbers.
  mutating func below(_ count: Int) -> Int {
    precondition(count > 0)
    return Int(next().multipliedFullWidth(by: UInt64(count)).high)
  }

  mutating func colour() -> Colour {
    let bits = next()
    return Colour(
      red: UInt8(truncatingIfNeeded: bits), green: UInt8(truncatingIfNeeded: bits >> 8),
      blue: UInt8(truncatingIfNeeded: bits >> 16))
  }
}

/// Two random colours blended along a random direction: the direction is a point drawn
/// uniformly in the unit disc (rejection sampling, so no trigonometry), and each pixel centre's
/// projection onto it, scaled to the image's extent along it, gives t ∈ [0, 1];
/// channel = round(c0 + (c1 − c0)·t). Only IEEE basic operations, so the same on every machine.
func gradientBackground(width: Int, height: Int, using generator: inout SplitMix64) -> RGBImage {
  let start = generator.colour()
  let end = generator.colour()
  var dx = 1.0
  var dy = 0.0
  for _ in 0..<64 {
    let u = 2 * generator.unitInterval() - 1
    let v = 2 * generator.unitInterval() - 1
    let length2 = u * u + v * v
    if length2 > 1e-6 && length2 <= 1 {
      dx = u
      dy = v
      break
    }
  }
  let extent = abs(Double(width) * dx) + abs(Double(height) * dy)
  let centreX = Double(width) / 2
  let centreY = Double(height) / 2
  let from = [Double(start.red), Double(start.green), Double(start.blue)]
  let span = [Double(end.red) - from[0], Double(end.green) - from[1], Double(end.blue) - from[2]]
  var pixels = [UInt8](repeating: 0, count: width * height * 3)  // (height, width, 3)
  pixels.withUnsafeMutableBufferPointer { pixels in
    for y in 0..<height {
      let rowProjection = (Double(y) + 0.5 - centreY) * dy
      for x in 0..<width {
        let projection = (Double(x) + 0.5 - centreX) * dx + rowProjection
        let t = min(1, max(0, projection / extent + 0.5))
        let index = (y * width + x) * 3
        for channel in 0..<3 {
          pixels[index + channel] = UInt8((from[channel] + span[channel] * t).rounded())
        }
      }
    }
  }
  return RGBImage(width: width, height: height, pixels: pixels)
}

/// Uniform random bytes, 8 per generator step, then (with `smoothing` r > 0) a separable box
/// blur over 2r + 1 pixels with edges replicated: round(sum / (2r + 1)) per pass.
func noiseBackground(width: Int, height: Int, smoothing: Int, using generator: inout SplitMix64) -> RGBImage {
  let count = width * height * 3
  var pixels = [UInt8](repeating: 0, count: count)  // (height, width, 3)
  pixels.withUnsafeMutableBufferPointer { pixels in
    var index = 0
    while index < count {
      var bits = generator.next()
      for _ in 0..<min(8, count - index) {
        pixels[index] = UInt8(truncatingIfNeeded: bits)
        bits >>= 8
        index += 1
      }
    }
  }
  guard smoothing > 0 else { return RGBImage(width: width, height: height, pixels: pixels) }
  let window = 2 * smoothing + 1
  var blurred = [UInt8](repeating: 0, count: count)  // (height, width, 3)
  pixels.withUnsafeBufferPointer { source in
    blurred.withUnsafeMutableBufferPointer { target in
      // Horizontal pass: pixels → blurred.
      for y in 0..<height {
        let row = y * width * 3
        for x in 0..<width {
          for channel in 0..<3 {
            var sum = 0
            for offset in -smoothing...smoothing {
              sum += Int(source[row + min(width - 1, max(0, x + offset)) * 3 + channel])
            }
            target[row + x * 3 + channel] = UInt8((sum + window / 2) / window)
          }
        }
      }
    }
  }
  blurred.withUnsafeBufferPointer { source in
    pixels.withUnsafeMutableBufferPointer { target in
      // Vertical pass: blurred → pixels.
      for y in 0..<height {
        for x in 0..<width {
          for channel in 0..<3 {
            var sum = 0
            for offset in -smoothing...smoothing {
              sum += Int(source[(min(height - 1, max(0, y + offset)) * width + x) * 3 + channel])
            }
            target[(y * width + x) * 3 + channel] = UInt8((sum + window / 2) / window)
          }
        }
      }
    }
  }
  return RGBImage(width: width, height: height, pixels: pixels)
}

/// Alpha compositing of one 8-bit channel: out = a·fg + (1 − a)·bg with a = alpha / 255,
/// rounded to nearest: (alpha·fg + (255 − alpha)·bg + 127) / 255 in integers. 255 is odd, so
/// the exact quotient is never a tie and this is round(), with alpha 255 giving fg and 0 bg.
@inline(__always) func compositeChannel(foreground: UInt8, background: UInt8, alpha: UInt8) -> UInt8 {
  let a = Int(alpha)
  return UInt8((a * Int(foreground) + (255 - a) * Int(background) + 127) / 255)
}

/// An RGBA image over a plain colour (see `compositeChannel` for the formula).
public func composite(_ image: RGBAImage, over colour: Colour) -> RGBImage {
  let count = image.width * image.height
  var pixels = [UInt8](repeating: 0, count: count * 3)  // (H, W, 3)
  image.pixels.withUnsafeBufferPointer { source in
    pixels.withUnsafeMutableBufferPointer { target in
      for index in 0..<count {
        let alpha = source[4 * index + 3]
        target[3 * index] = compositeChannel(foreground: source[4 * index], background: colour.red, alpha: alpha)
        target[3 * index + 1] = compositeChannel(
          foreground: source[4 * index + 1], background: colour.green, alpha: alpha)
        target[3 * index + 2] = compositeChannel(
          foreground: source[4 * index + 2], background: colour.blue, alpha: alpha)
      }
    }
  }
  return RGBImage(width: image.width, height: image.height, pixels: pixels)
}

/// An RGBA image over an RGB background of the same size, pixel by pixel.
public func composite(_ image: RGBAImage, over background: RGBImage) -> RGBImage {
  precondition(image.width == background.width && image.height == background.height, "composite: sizes differ")
  let count = image.width * image.height
  var pixels = [UInt8](repeating: 0, count: count * 3)  // (H, W, 3)
  image.pixels.withUnsafeBufferPointer { source in
    background.pixels.withUnsafeBufferPointer { behind in
      pixels.withUnsafeMutableBufferPointer { target in
        for index in 0..<count {
          let alpha = source[4 * index + 3]
          for channel in 0..<3 {
            target[3 * index + channel] = compositeChannel(
              foreground: source[4 * index + channel], background: behind[3 * index + channel], alpha: alpha)
          }
        }
      }
    }
  }
  return RGBImage(width: image.width, height: image.height, pixels: pixels)
}

func composite(_ image: RGBAImage, over backdrop: Backdrop) -> RGBImage {
  switch backdrop {
  case .colour(let colour): return composite(image, over: colour)
  case .image(let background): return composite(image, over: background)
  }
}

/// Mirrors each row of `planes` planes in place. // (planes, height, width)
func mirrorRows(_ values: UnsafeMutablePointer<Float>, planes: Int, height: Int, width: Int) {
  for row in 0..<(planes * height) {
    let start = values + row * width
    var left = 0
    var right = width - 1
    while left < right {
      let value = start[left]
      start[left] = start[right]
      start[right] = value
      left += 1
      right -= 1
    }
  }
}
