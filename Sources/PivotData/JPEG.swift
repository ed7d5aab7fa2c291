import CJPEG
import CJPEGShim
import Foundation

/// An 8-bit interleaved RGB image. // (H, W, 3)
public struct RGBImage: Sendable, Equatable {
  public var width: Int
  public var height: Int
  public var pixels: [UInt8]  // (height, width, 3)

  public init(width: Int, height: Int, pixels: [UInt8]) {
    precondition(pixels.count == width * height * 3, "RGBImage needs width*height*3 bytes")
    self.width = width
    self.height = height
    self.pixels = pixels
  }
}

/// JPEG through libjpeg(-turbo), with errors (and corrupt-data warnings) thrown, never exit().
public enum JPEG {
  public struct Header: Sendable, Equatable {
    public var width: Int
    public var height: Int
    public var components: Int
  }

  private static func message(_ buffer: [CChar]) -> String {
    let text = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    return text.isEmpty ? "not a readable JPEG" : text
  }

  public static func looksLikeJPEG(_ data: [UInt8]) -> Bool {
    data.count >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF
  }

  public static func header(_ data: [UInt8], key: String = "?") throws -> Header {
    guard looksLikeJPEG(data) else {
      throw DataError.image(key: key, message: "not a JPEG (no FF D8 FF start marker)")
    }
    var info = pivot_jpeg_header_info()
    var text = [CChar](repeating: 0, count: 256)
    let status = data.withUnsafeBufferPointer { bytes in
      pivot_jpeg_read_header(bytes.baseAddress, bytes.count, &info, &text, text.count)
    }
    guard status == 0 else { throw DataError.image(key: key, message: message(text)) }
    return Header(width: Int(info.width), height: Int(info.height), components: Int(info.components))
  }

  /// Decodes to RGB at 1/`scaleDenominator` of full size (1, 2, 4 or 8; libjpeg's DCT scaling).
  /// A header claiming more than `maxPixels` (at full size) is refused before decoding.
  public static func decode(
    _ data: [UInt8], scaleDenominator: Int = 1, key: String = "?",
    maxPixels: Int = ImagePreprocessing.defaultMaxPixels
  ) throws -> RGBImage {
    let header = try header(data, key: key)
    return try decode(data, header: header, scaleDenominator: scaleDenominator, key: key, maxPixels: maxPixels)
  }

  static func decode(
    _ data: [UInt8], header: Header, scaleDenominator: Int, key: String,
    maxPixels: Int = ImagePreprocessing.defaultMaxPixels
  ) throws -> RGBImage {
    guard [1, 2, 4, 8].contains(scaleDenominator) else {
      throw DataError.image(key: key, message: "scale denominator \(scaleDenominator) is not 1, 2, 4 or 8")
    }
    guard header.width <= 65535, header.height <= 65535 else {
      throw DataError.image(key: key, message: "unusable dimensions \(header.width)x\(header.height)")
    }
    // The full size, not the scaled one: progressive files keep full-size coefficient buffers.
    try checkPixelLimit(width: header.width, height: header.height, maxPixels: maxPixels, key: key)
    let width = (header.width + scaleDenominator - 1) / scaleDenominator
    let height = (header.height + scaleDenominator - 1) / scaleDenominator
    var outWidth: Int32 = 0
    var outHeight: Int32 = 0
    var text = [CChar](repeating: 0, count: 256)
    var status: Int32 = 0
    // Every byte is written by the decoder on success; on failure the array is discarded.
    let pixels = [UInt8](unsafeUninitializedCapacity: width * height * 3) { out, initialized in
      status = data.withUnsafeBufferPointer { bytes in
        pivot_jpeg_decode_rgb(
          bytes.baseAddress, bytes.count, Int32(scaleDenominator), out.baseAddress, out.count,
          &outWidth, &outHeight, &text, text.count)
      }
      initialized = status == 0 ? width * height * 3 : 0
    }
    guard status == 0 else { throw DataError.image(key: key, message: message(text)) }
    guard Int(outWidth) == width, Int(outHeight) == height else {
      throw DataError.image(key: key, message: "decoder gave \(outWidth)x\(outHeight), expected \(width)x\(height)")
    }
    return RGBImage(width: width, height: height, pixels: pixels)
  }

  /// Encodes RGB (or, with `gray`, one channel per pixel) at the given quality.
  public static func encode(
    pixels: [UInt8], width: Int, height: Int, gray: Bool = false, quality: Int = 90
  ) throws -> [UInt8] {
    let components = gray ? 1 : 3
    guard pixels.count == width * height * components else {
      throw DataError.invalid("JPEG.encode: \(pixels.count) bytes for \(width)x\(height)x\(components)")
    }
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size = 0
    var text = [CChar](repeating: 0, count: 256)
    let status = pixels.withUnsafeBufferPointer { input in
      pivot_jpeg_encode(
        input.baseAddress, Int32(width), Int32(height), Int32(components), Int32(quality), &out, &size,
        &text, text.count)
    }
    defer { pivot_jpeg_free(out) }
    guard status == 0, let out else { throw DataError.invalid("JPEG.encode: " + message(text)) }
    return Array(UnsafeBufferPointer(start: out, count: size))
  }

  public static func encode(_ image: RGBImage, quality: Int = 90) throws -> [UInt8] {
    try encode(pixels: image.pixels, width: image.width, height: image.height, quality: quality)
  }
}
