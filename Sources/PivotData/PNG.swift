import CPNG
import CPNGShim
import Foundation

/// An 8-bit interleaved RGBA image, alpha not premultiplied. // (H, W, 4)
public struct RGBAImage: Sendable, Equatable {
  public var width: Int
  public var height: Int
  public var pixels: [UInt8]  // (height, width, 4)

  public init(width: Int, height: Int, pixels: [UInt8]) {
    precondition(pixels.count == width * height * 4, "RGBAImage needs width*height*4 bytes")
    self.width = width
    self.height = height
    self.pixels = pixels
  }
}

/// A decoded image: RGB when the file has no transparency, RGBA when it has.
public enum DecodedImage: Sendable, Equatable {
  case rgb(RGBImage)
  case rgba(RGBAImage)

  public var width: Int {
    switch self {
    case .rgb(let image): return image.width
    case .rgba(let image): return image.width
    }
  }

  public var height: Int {
    switch self {
    case .rgb(let image): return image.height
    case .rgba(let image): return image.height
    }
  }
}

/// Image formats Pivot reads, told apart by their magic number, never by the field name.
public enum ImageFormat: String, Sendable {
  case jpeg
  case png
  case webp

  /// JPEG starts FF D8, PNG 89 50 4E 47 ("\x89PNG"), WebP "RIFF" <size> "WEBP".
  public static func detect(_ data: [UInt8]) -> ImageFormat? {
    if data.count >= 2 && data[0] == 0xFF && data[1] == 0xD8 { return .jpeg }
    if data.count >= 4 && data[0] == 0x89 && data[1] == 0x50 && data[2] == 0x4E && data[3] == 0x47 { return .png }
    if data.count >= 12 && data[0..<4].elementsEqual("RIFF".utf8) && data[8..<12].elementsEqual("WEBP".utf8) { return .webp }
    return nil
  }

  /// The shard field name for this format (webdataset's extensions).
  public var fieldName: String {
    switch self {
    case .jpeg: "jpg"
    case .png: "png"
    case .webp: "webp"
    }
  }

  /// The format, or an error naming the sample and the first bytes.
  public static func require(_ data: [UInt8], key: String) throws -> ImageFormat {
    if let format = detect(data) { return format }
    let start = data.prefix(4).map { String(format: "%02X", $0) }.joined(separator: " ")
    throw DataError.image(
      key: key,
      message: data.isEmpty
        ? "the image field is empty"
        : "unknown image format (starts \(start); JPEG starts FF D8, PNG 89 50 4E 47, WebP 52 49 46 46 … 57 45 42 50)")
  }
}

/// Refuses a claimed size over `maxPixels` before anything proportional to it is allocated: a
/// few hundred bytes of header can claim 100000 × 100000 (a decompression bomb).
func checkPixelLimit(width: Int, height: Int, maxPixels: Int, key: String) throws {
  guard width > 0, height > 0 else {
    throw DataError.image(key: key, message: "unusable dimensions \(width)x\(height)")
  }
  let (pixels, overflow) = width.multipliedReportingOverflow(by: height)
  guard !overflow, pixels <= maxPixels else {
    throw DataError.image(
      key: key,
      message: "\(width)x\(height) is over the \(maxPixels)-pixel limit (ImagePreprocessing.maxPixels); "
        + "a damaged or hostile header?")
  }
}

/// PNG through libpng, with errors thrown, never longjmp'ed past Swift.
public enum PNG {
  public struct Header: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// Bits per sample in the file: 1, 2, 4, 8 or 16.
    public var bitDepth: Int
    /// PNG colour type: 0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA.
    public var colorType: Int
    public var interlaced: Bool
    /// An alpha channel or a tRNS chunk: decoding gives RGBA.
    public var hasAlpha: Bool
  }

  private static func message(_ buffer: [CChar]) -> String {
    let text = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    return text.isEmpty ? "not a readable PNG" : "PNG: " + text
  }

  public static func looksLikePNG(_ data: [UInt8]) -> Bool { ImageFormat.detect(data) == .png }

  public static func header(_ data: [UInt8], key: String = "?") throws -> Header {
    guard looksLikePNG(data) else {
      throw DataError.image(key: key, message: "not a PNG (no 89 50 4E 47 signature)")
    }
    var info = pivot_png_header_info()
    var text = [CChar](repeating: 0, count: 256)
    let status = data.withUnsafeBufferPointer { bytes in
      pivot_png_read_header(bytes.baseAddress, bytes.count, &info, &text, text.count)
    }
    guard status == 0 else { throw DataError.image(key: key, message: message(text)) }
    return Header(
      width: Int(info.width), height: Int(info.height), bitDepth: Int(info.bit_depth),
      colorType: Int(info.color_type), interlaced: info.interlaced != 0, hasAlpha: info.has_alpha != 0)
  }

  /// Decodes to RGB, or to RGBA when the file has transparency.
  public static func decode(
    _ data: [UInt8], key: String = "?", maxPixels: Int = ImagePreprocessing.defaultMaxPixels
  ) throws -> DecodedImage {
    let header = try header(data, key: key)
    return try decode(data, header: header, key: key, maxPixels: maxPixels)
  }

  /// Decodes to RGBA whatever the file holds (alpha 255 where it has none).
  public static func decodeRGBA(
    _ data: [UInt8], key: String = "?", maxPixels: Int = ImagePreprocessing.defaultMaxPixels
  ) throws -> RGBAImage {
    let header = try header(data, key: key)
    let (width, height, pixels) = try decodePixels(data, header: header, channels: 4, key: key, maxPixels: maxPixels)
    return RGBAImage(width: width, height: height, pixels: pixels)
  }

  static func decode(_ data: [UInt8], header: Header, key: String, maxPixels: Int) throws -> DecodedImage {
    let channels = header.hasAlpha ? 4 : 3
    let (width, height, pixels) = try decodePixels(
      data, header: header, channels: channels, key: key, maxPixels: maxPixels)
    return header.hasAlpha
      ? .rgba(RGBAImage(width: width, height: height, pixels: pixels))
      : .rgb(RGBImage(width: width, height: height, pixels: pixels))
  }

  private static func decodePixels(
    _ data: [UInt8], header: Header, channels: Int, key: String, maxPixels: Int
  ) throws -> (width: Int, height: Int, pixels: [UInt8]) {
    try checkPixelLimit(width: header.width, height: header.height, maxPixels: maxPixels, key: key)
    let width = header.width
    let height = header.height
    var outWidth: Int32 = 0
    var outHeight: Int32 = 0
    var text = [CChar](repeating: 0, count: 256)
    var status: Int32 = 0
    // Every byte is written by the decoder on success; on failure the array is discarded.
    let pixels = [UInt8](unsafeUninitializedCapacity: width * height * channels) { out, initialized in
      status = data.withUnsafeBufferPointer { bytes in
        pivot_png_decode(
          bytes.baseAddress, bytes.count, Int32(channels), out.baseAddress, out.count, &outWidth, &outHeight,
          &text, text.count)
      }
      initialized = status == 0 ? width * height * channels : 0
    }
    guard status == 0 else { throw DataError.image(key: key, message: message(text)) }
    guard Int(outWidth) == width, Int(outHeight) == height else {
      throw DataError.image(key: key, message: "decoder gave \(outWidth)x\(outHeight), expected \(width)x\(height)")
    }
    return (width, height, pixels)
  }
}
