import Foundation

/// How images become model input: the shortest side resized to `shortestSide` (bicubic, as
/// Pillow does it), a centre crop of `cropHeight` × `cropWidth`, then
/// `(pixel / 255 - mean) / std` per channel. Defaults are CLIP's `preprocessor_config.json`.
/// JPEG, PNG and WebP are read (told apart by their magic number); transparent pixels are composited
/// onto `background` first. With an `Augmentation` the crop, flip and background are random,
/// drawn from the sample's seed.
public struct ImagePreprocessing: Codable, Sendable, Equatable {
  public var shortestSide: Int
  public var cropHeight: Int
  public var cropWidth: Int
  public var mean: [Float]
  public var std: [Float]
  /// Decode JPEGs at least twice as large as needed at 1/2, 1/4 or 1/8 size (libjpeg's DCT
  /// scaling, a good low-pass in itself), keeping the decoded shortest side
  /// ≥ `dctScalingMargin` × `shortestSide` so the image is never enlarged afterwards. Decoding
  /// and resizing get 2–4× cheaper; the result is no longer bit-identical to Pillow's full decode
  /// (mean |diff| about 0.02 after normalisation, about 1.5 levels of 255). Turn it off, or raise
  /// the margin, for exact parity.
  public var useDCTScaling: Bool
  public var dctScalingMargin: Double
  /// Images whose header claims more pixels than this are refused before anything is
  /// allocated (a decompression bomb is a few hundred bytes claiming 100000 × 100000).
  public var maxPixels: Int
  /// What transparent pixels are composited onto when no random background is drawn.
  public var background: Colour

  public static let clipMean: [Float] = [0.48145466, 0.4578275, 0.40821073]
  public static let clipStd: [Float] = [0.26862954, 0.26130258, 0.27577711]
  public static let imagenetMean: [Float] = [0.485, 0.456, 0.406]
  public static let imagenetStd: [Float] = [0.229, 0.224, 0.225]
  /// 50 megapixels: above any photo a caption dataset holds, far below a bomb.
  public static let defaultMaxPixels = 50_000_000

  public init(
    shortestSide: Int = 224, cropHeight: Int? = nil, cropWidth: Int? = nil,
    mean: [Float] = ImagePreprocessing.clipMean, std: [Float] = ImagePreprocessing.clipStd,
    useDCTScaling: Bool = true, dctScalingMargin: Double = 1,
    maxPixels: Int = ImagePreprocessing.defaultMaxPixels, background: Colour = .white
  ) {
    self.shortestSide = shortestSide
    self.cropHeight = cropHeight ?? shortestSide
    self.cropWidth = cropWidth ?? shortestSide
    self.mean = mean
    self.std = std
    self.useDCTScaling = useDCTScaling
    self.dctScalingMargin = dctScalingMargin
    self.maxPixels = maxPixels
    self.background = background
  }

  /// `maxPixels` and `background` may be missing (older configurations) and take their defaults.
  public init(from decoder: any Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    shortestSide = try container.decode(Int.self, forKey: .shortestSide)
    cropHeight = try container.decode(Int.self, forKey: .cropHeight)
    cropWidth = try container.decode(Int.self, forKey: .cropWidth)
    mean = try container.decode([Float].self, forKey: .mean)
    std = try container.decode([Float].self, forKey: .std)
    useDCTScaling = try container.decode(Bool.self, forKey: .useDCTScaling)
    dctScalingMargin = try container.decode(Double.self, forKey: .dctScalingMargin)
    maxPixels = try container.decodeIfPresent(Int.self, forKey: .maxPixels) ?? ImagePreprocessing.defaultMaxPixels
    background = try container.decodeIfPresent(Colour.self, forKey: .background) ?? .white
  }

  public static func clip(size: Int = 224) -> ImagePreprocessing { ImagePreprocessing(shortestSide: size) }

  /// Floats per image. // 3 * cropHeight * cropWidth
  public var pixelCount: Int { 3 * cropHeight * cropWidth }

  /// The DCT scale denominator used for an image of this size.
  public func scaleDenominator(width: Int, height: Int) -> Int {
    let shortest = min(width, height)
    return largestScaleDenominator { denominator in
      Double((shortest + denominator - 1) / denominator) >= dctScalingMargin * Double(shortestSide)
    }
  }

  /// The DCT scale denominator for a random crop: the box, decoded smaller, must still cover
  /// the crop size (times the margin) in both directions, since it is resized to exactly that.
  func scaleDenominator(cropBox box: CropBox) -> Int {
    largestScaleDenominator { denominator in
      Double((box.width + denominator - 1) / denominator) >= dctScalingMargin * Double(cropWidth)
        && Double((box.height + denominator - 1) / denominator) >= dctScalingMargin * Double(cropHeight)
    }
  }

  private func largestScaleDenominator(_ keepsEnough: (Int) -> Bool) -> Int {
    guard useDCTScaling else { return 1 }
    for denominator in [8, 4, 2] where keepsEnough(denominator) { return denominator }
    return 1
  }

  /// Encoded image (JPEG, PNG or WebP, by magic number) → normalised pixels at `output`.
  /// // (3, cropHeight, cropWidth)
  /// Without `augmentation`: resize + centre crop, transparency over `background`. With it, every
  /// random choice comes from `seed`, so the same seed gives the same floats bit for bit.
  public func process(
    encoded data: [UInt8], key: String = "?", augmentation: Augmentation? = nil, seed: UInt64 = 0,
    into output: UnsafeMutablePointer<Float>
  ) throws {
    let format = try ImageFormat.require(data, key: key)
    if let augmentation {
      try processAugmented(data, format: format, key: key, augmentation: augmentation, seed: seed, into: output)
      return
    }
    let image: RGBImage
    switch format {
    case .jpeg:
      let header = try JPEG.header(data, key: key)
      image = try JPEG.decode(
        data, header: header, scaleDenominator: scaleDenominator(width: header.width, height: header.height),
        key: key, maxPixels: maxPixels)
    case .png, .webp:
      switch try (format == .png ? PNG.decode(data, key: key, maxPixels: maxPixels) : WebP.decode(data, key: key, maxPixels: maxPixels)) {
      case .rgb(let opaque): image = opaque
      case .rgba(let transparent): image = composite(transparent, over: background)
      }
    }
    process(image: image, into: output)
  }

  public func process(
    encoded data: [UInt8], key: String = "?", augmentation: Augmentation? = nil, seed: UInt64 = 0
  ) throws -> [Float] {
    var result = [Float](repeating: 0, count: pixelCount)
    try result.withUnsafeMutableBufferPointer {
      try process(encoded: data, key: key, augmentation: augmentation, seed: seed, into: $0.baseAddress!)
    }
    return result
  }

  /// The same as `process(encoded:)` without augmentation (PNG is read too, despite the name).
  public func process(jpeg data: [UInt8], key: String = "?", into output: UnsafeMutablePointer<Float>) throws {
    try process(encoded: data, key: key, into: output)
  }

  public func process(jpeg data: [UInt8], key: String = "?") throws -> [Float] {
    try process(encoded: data, key: key)
  }

  /// Decode (the crop box drawn on the header's full size first, so the DCT scale can follow
  /// the box) → composite over a random or fixed background → random resized crop, or resize +
  /// centre crop → normalise → maybe mirror. // (3, cropHeight, cropWidth)
  func processAugmented(
    _ data: [UInt8], format: ImageFormat, key: String, augmentation: Augmentation, seed: UInt64,
    into output: UnsafeMutablePointer<Float>
  ) throws {
    let jpegHeader = format == .jpeg ? try JPEG.header(data, key: key) : nil
    let pngHeader = format == .png ? try PNG.header(data, key: key) : nil
    let webpHeader = format == .webp ? try WebP.header(data, key: key) : nil
    let fullWidth = jpegHeader?.width ?? pngHeader?.width ?? webpHeader!.width
    let fullHeight = jpegHeader?.height ?? pngHeader?.height ?? webpHeader!.height
    try checkPixelLimit(width: fullWidth, height: fullHeight, maxPixels: maxPixels, key: key)
    let box =
      augmentation.randomResizedCrop ? augmentation.cropBox(width: fullWidth, height: fullHeight, seed: seed) : nil
    var denominator = 1
    let image: RGBImage
    if let jpegHeader {
      denominator =
        box.map { scaleDenominator(cropBox: $0) } ?? scaleDenominator(width: fullWidth, height: fullHeight)
      image = try JPEG.decode(data, header: jpegHeader, scaleDenominator: denominator, key: key, maxPixels: maxPixels)
    } else {
      let decoded = try pngHeader.map { try PNG.decode(data, header: $0, key: key, maxPixels: maxPixels) }
        ?? WebP.decode(data, header: webpHeader!, key: key, maxPixels: maxPixels)
      switch decoded {
      case .rgb(let opaque):
        image = opaque
      case .rgba(let transparent):
        let backdrop =
          augmentation.backdrop(width: transparent.width, height: transparent.height, seed: seed)
          ?? .colour(background)
        image = composite(transparent, over: backdrop)
      }
    }
    if let box {
      let region = box.scaled(by: denominator, scaledWidth: image.width, scaledHeight: image.height)
      processResizedCrop(image: image, box: region, into: output)
    } else {
      process(image: image, into: output)
    }
    if augmentation.flips(seed: seed) { mirrorRows(output, planes: 3, height: cropHeight, width: cropWidth) }
  }

  /// The `box` of `image` resized to exactly `cropWidth` × `cropHeight` (Pillow bicubic, as
  /// `image.crop(box).resize(...)` in PIL), normalised. // (3, cropHeight, cropWidth)
  func processResizedCrop(image: RGBImage, box: CropBox, into output: UnsafeMutablePointer<Float>) {
    precondition(box.x >= 0 && box.y >= 0 && box.x + box.width <= image.width && box.y + box.height <= image.height)
    // The box, cut out. // (box.height, box.width, 3)
    var cut = [UInt8](repeating: 0, count: box.width * box.height * 3)
    image.pixels.withUnsafeBufferPointer { source in
      cut.withUnsafeMutableBufferPointer { target in
        for row in 0..<box.height {
          (target.baseAddress! + row * box.width * 3).update(
            from: source.baseAddress! + ((box.y + row) * image.width + box.x) * 3, count: box.width * 3)
        }
      }
    }
    // The box at the crop size. // (cropHeight, cropWidth, 3)
    var resized = [UInt8](repeating: 0, count: cropWidth * cropHeight * 3)
    cut.withUnsafeBufferPointer { source in
      resized.withUnsafeMutableBufferPointer { target in
        bicubicResizePillow(
          source: source.baseAddress!, width: box.width, height: box.height, outWidth: cropWidth,
          outHeight: cropHeight, rows: 0..<cropHeight, columns: 0..<cropWidth, into: target.baseAddress!)
      }
    }
    let table = normalisationTable()
    let plane = cropHeight * cropWidth
    table.withUnsafeBufferPointer { table in
      resized.withUnsafeBufferPointer { source in
        let red = table.baseAddress!
        for index in 0..<plane {
          output[index] = red[Int(source[3 * index])]
          output[plane + index] = red[256 + Int(source[3 * index + 1])]
          output[2 * plane + index] = red[512 + Int(source[3 * index + 2])]
        }
      }
    }
  }

  /// RGB image → normalised pixels. // (3, cropHeight, cropWidth)
  public func process(image: RGBImage, into output: UnsafeMutablePointer<Float>) {
    let (resizedWidth, resizedHeight) = clipResizeSize(width: image.width, height: image.height, shortest: shortestSide)
    // Python floor division, so a crop larger than the image pads (with zeros before normalising).
    let top = floorDivide(resizedHeight - cropHeight, 2)
    let left = floorDivide(resizedWidth - cropWidth, 2)
    let table = normalisationTable()
    let plane = cropHeight * cropWidth
    table.withUnsafeBufferPointer { table in
      let rowsInside = max(0, top)..<min(resizedHeight, top + cropHeight)
      let columnsInside = max(0, left)..<min(resizedWidth, left + cropWidth)
      if rowsInside.count < cropHeight || columnsInside.count < cropWidth {
        // Zero-padding value where the crop leaves the image.
        for channel in 0..<3 {
          (output + channel * plane).initialize(repeating: table[channel * 256], count: plane)
        }
      }
      guard !rowsInside.isEmpty, !columnsInside.isEmpty else { return }
      let rowCount = rowsInside.count
      let columnCount = columnsInside.count
      // The kept part of the resized image. // (rowCount, columnCount, 3)
      var kept = [UInt8](repeating: 0, count: rowCount * columnCount * 3)
      image.pixels.withUnsafeBufferPointer { source in
        kept.withUnsafeMutableBufferPointer { target in
          bicubicResizePillow(
            source: source.baseAddress!, width: image.width, height: image.height,
            outWidth: resizedWidth, outHeight: resizedHeight, rows: rowsInside, columns: columnsInside,
            into: target.baseAddress!)
        }
      }
      kept.withUnsafeBufferPointer { kept in
        let red = table.baseAddress!
        let green = red + 256
        let blue = red + 512
        for row in 0..<rowCount {
          let source = kept.baseAddress! + row * columnCount * 3
          let index0 = (rowsInside.lowerBound + row - top) * cropWidth + (columnsInside.lowerBound - left)
          let r = output + index0
          let g = output + plane + index0
          let b = output + 2 * plane + index0
          for column in 0..<columnCount {
            r[column] = red[Int(source[3 * column])]
            g[column] = green[Int(source[3 * column + 1])]
            b[column] = blue[Int(source[3 * column + 2])]
          }
        }
      }
    }
  }

  /// Per channel and byte value: Float(Double(v) / 255), then (x - mean) / std in Float,
  /// the order and precision of `CLIPImageProcessor`'s rescale + normalize.
  func normalisationTable() -> [Float] {
    var table = [Float](repeating: 0, count: 768)
    for channel in 0..<3 {
      for value in 0..<256 {
        let rescaled = Float(Double(value) * (1.0 / 255.0))
        table[channel * 256 + value] = (rescaled - mean[channel]) / std[channel]
      }
    }
    return table
  }
}

func floorDivide(_ a: Int, _ b: Int) -> Int {
  let quotient = a / b
  return (a % b != 0 && (a < 0) != (b < 0)) ? quotient - 1 : quotient
}

/// `transformers`' `get_resize_output_image_size(default_to_square=False)`:
/// shortest side to `shortest`, longest side `int(shortest * long / short)`.
public func clipResizeSize(width: Int, height: Int, shortest: Int) -> (width: Int, height: Int) {
  if width <= height {
    return (shortest, Int(Double(shortest) * Double(height) / Double(width)))
  }
  return (Int(Double(shortest) * Double(width) / Double(height)), shortest)
}

/// Pillow's resampling coefficients (Resample.c, `precompute_coeffs` + `normalize_coeffs_8bpc`)
/// for the bicubic filter (a = -0.5), antialiased when shrinking.
struct PillowCoefficients {
  static let precisionBits = 32 - 8 - 2
  var kernelSize: Int
  var bounds: [Int32]  // (outSize, 2): first input index, count
  var weights: [Int32]  // (outSize, kernelSize), fixed point with precisionBits

  static func bicubic(_ value: Double) -> Double {
    let a = -0.5
    let x = abs(value)
    if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
    if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
    return 0
  }

  init(inSize: Int, outSize: Int) {
    let in0 = 0.0
    let in1 = Double(Float(inSize))
    let scale = (in1 - in0) / Double(outSize)
    let filterScale = max(scale, 1.0)
    let support = 2.0 * filterScale
    kernelSize = Int(support.rounded(.up)) * 2 + 1
    bounds = [Int32](repeating: 0, count: outSize * 2)
    weights = [Int32](repeating: 0, count: outSize * kernelSize)
    var row = [Double](repeating: 0, count: kernelSize)
    for outIndex in 0..<outSize {
      let center = in0 + (Double(outIndex) + 0.5) * scale
      let inverseScale = 1.0 / filterScale
      // C's (int) truncates toward zero.
      var xmin = Int((center - support + 0.5).rounded(.towardZero))
      if xmin < 0 { xmin = 0 }
      var xmax = Int((center + support + 0.5).rounded(.towardZero))
      if xmax > inSize { xmax = inSize }
      xmax -= xmin
      var total = 0.0
      for x in 0..<xmax {
        let weight = PillowCoefficients.bicubic((Double(x + xmin) - center + 0.5) * inverseScale)
        row[x] = weight
        total += weight
      }
      for x in 0..<kernelSize {
        var weight = x < xmax ? row[x] : 0
        if x < xmax && total != 0 { weight /= total }
        let fixed = weight * Double(1 << PillowCoefficients.precisionBits)
        weights[outIndex * kernelSize + x] = Int32(
          weight < 0 ? (-0.5 + fixed).rounded(.towardZero) : (0.5 + fixed).rounded(.towardZero))
      }
      bounds[outIndex * 2] = Int32(xmin)
      bounds[outIndex * 2 + 1] = Int32(xmax)
    }
  }
}

@inline(__always) func pillowClip8(_ value: Int32) -> UInt8 {
  let shift = Int32(PillowCoefficients.precisionBits)
  if value >= (1 << shift) << 8 { return 255 }
  if value <= 0 { return 0 }
  return UInt8(truncatingIfNeeded: value >> shift)
}

/// Pillow's two-pass 8-bit resize (horizontal into a temporary image, then vertical), computing
/// only the output `rows` × `columns` that a crop keeps; each kept pixel is bit-identical to
/// Pillow's. Writes them to `output`. // (rows.count, columns.count, 3)
func bicubicResizePillow(
  source: UnsafePointer<UInt8>, width: Int, height: Int, outWidth: Int, outHeight: Int,
  rows: Range<Int>, columns: Range<Int>, into output: UnsafeMutablePointer<UInt8>
) {
  let needHorizontal = outWidth != width
  let needVertical = outHeight != height
  let horizontal = needHorizontal ? PillowCoefficients(inSize: width, outSize: outWidth) : nil
  let vertical = needVertical ? PillowCoefficients(inSize: height, outSize: outHeight) : nil
  let half = Int32(1) << Int32(PillowCoefficients.precisionBits - 1)

  // Source rows the kept output rows need.
  var firstRow = rows.lowerBound
  var endRow = rows.upperBound
  if let vertical {
    firstRow = Int(vertical.bounds[rows.lowerBound * 2])
    endRow = Int(vertical.bounds[(rows.upperBound - 1) * 2] + vertical.bounds[(rows.upperBound - 1) * 2 + 1])
  }
  let columnCount = columns.count
  let rowStride = columnCount * 3
  // Horizontal pass over the needed rows. // (endRow - firstRow, columnCount, 3)
  let temporary = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, (endRow - firstRow) * rowStride))
  defer { temporary.deallocate() }
  if let horizontal {
    horizontal.bounds.withUnsafeBufferPointer { bounds in
      horizontal.weights.withUnsafeBufferPointer { weights in
        let kernelSize = horizontal.kernelSize
        for y in firstRow..<endRow {
          let sourceRow = source + y * width * 3
          let targetRow = temporary + (y - firstRow) * rowStride
          for outColumn in 0..<columnCount {
            let x = columns.lowerBound + outColumn
            let xmin = Int(bounds[x * 2])
            let count = Int(bounds[x * 2 + 1])
            let kernel = weights.baseAddress! + x * kernelSize
            var red = half
            var green = half
            var blue = half
            var pointer = sourceRow + xmin * 3
            for k in 0..<count {
              let weight = kernel[k]
              red &+= Int32(pointer[0]) &* weight
              green &+= Int32(pointer[1]) &* weight
              blue &+= Int32(pointer[2]) &* weight
              pointer += 3
            }
            targetRow[outColumn * 3] = pillowClip8(red)
            targetRow[outColumn * 3 + 1] = pillowClip8(green)
            targetRow[outColumn * 3 + 2] = pillowClip8(blue)
          }
        }
      }
    }
  } else {
    for y in firstRow..<endRow {
      (temporary + (y - firstRow) * rowStride).update(
        from: source + y * width * 3 + columns.lowerBound * 3, count: rowStride)
    }
  }

  // Vertical pass: contiguous rows of the temporary image, so the inner loop vectorises.
  guard let vertical else {
    for y in rows {
      (output + (y - rows.lowerBound) * rowStride).update(
        from: temporary + (y - firstRow) * rowStride, count: rowStride)
    }
    return
  }
  let accumulator = UnsafeMutablePointer<Int32>.allocate(capacity: rowStride)
  defer { accumulator.deallocate() }
  vertical.bounds.withUnsafeBufferPointer { bounds in
    vertical.weights.withUnsafeBufferPointer { weights in
      for y in rows {
        let ymin = Int(bounds[y * 2]) - firstRow
        let count = Int(bounds[y * 2 + 1])
        let kernel = weights.baseAddress! + y * vertical.kernelSize
        accumulator.initialize(repeating: half, count: rowStride)
        for k in 0..<count {
          let weight = kernel[k]
          let sourceRow = temporary + (ymin + k) * rowStride
          for index in 0..<rowStride {
            accumulator[index] &+= Int32(sourceRow[index]) &* weight
          }
        }
        let target = output + (y - rows.lowerBound) * rowStride
        for index in 0..<rowStride { target[index] = pillowClip8(accumulator[index]) }
      }
    }
  }
}
