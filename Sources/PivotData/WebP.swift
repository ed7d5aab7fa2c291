import CWebP
import Foundation

/// WebP (lossy VP8, lossless VP8L, with or without alpha) through libwebp. The header is read
/// first, so a claimed size over the pixel limit is refused before anything is allocated.
public enum WebP {
  public struct Header: Sendable, Equatable {
    public var width: Int
    public var height: Int
    public var hasAlpha: Bool
    public var animated: Bool
    /// 1 lossy, 2 lossless, 0 mixed (animations).
    public var format: Int
  }

  public static func header(_ data: [UInt8], key: String = "?") throws -> Header {
    guard ImageFormat.detect(data) == .webp else {
      throw DataError.image(key: key, message: "not a WebP (no RIFF … WEBP signature)")
    }
    var features = WebPBitstreamFeatures()
    let status = data.withUnsafeBufferPointer { WebPGetFeatures($0.baseAddress, $0.count, &features) }
    guard status == VP8_STATUS_OK else { throw DataError.image(key: key, message: "WebP: \(describe(status))") }
    return Header(width: Int(features.width), height: Int(features.height), hasAlpha: features.has_alpha != 0,
                  animated: features.has_animation != 0, format: Int(features.format))
  }

  /// Decodes to RGB, or to RGBA when the file has an alpha channel.
  public static func decode(_ data: [UInt8], key: String = "?", maxPixels: Int = ImagePreprocessing.defaultMaxPixels) throws -> DecodedImage {
    let header = try header(data, key: key)
    return try decode(data, header: header, key: key, maxPixels: maxPixels)
  }

  /// Decodes to RGBA whatever the file holds (alpha 255 where it has none).
  public static func decodeRGBA(_ data: [UInt8], key: String = "?", maxPixels: Int = ImagePreprocessing.defaultMaxPixels) throws -> RGBAImage {
    let header = try header(data, key: key)
    let pixels = try decodePixels(data, header: header, channels: 4, key: key, maxPixels: maxPixels)
    return RGBAImage(width: header.width, height: header.height, pixels: pixels)
  }

  static func decode(_ data: [UInt8], header: Header, key: String, maxPixels: Int) throws -> DecodedImage {
    let channels = header.hasAlpha ? 4 : 3
    let pixels = try decodePixels(data, header: header, channels: channels, key: key, maxPixels: maxPixels)
    return header.hasAlpha
      ? .rgba(RGBAImage(width: header.width, height: header.height, pixels: pixels))
      : .rgb(RGBImage(width: header.width, height: header.height, pixels: pixels))
  }

  private static func decodePixels(_ data: [UInt8], header: Header, channels: Int, key: String, maxPixels: Int) throws -> [UInt8] {
    if header.animated {
      throw DataError.image(key: key, message: "an animated WebP: Pivot reads still images (save one frame as its own file)")
    }
    try checkPixelLimit(width: header.width, height: header.height, maxPixels: maxPixels, key: key)
    let (w, h) = (header.width, header.height)
    var ok = false
    // Every byte is written by the decoder on success; on failure the array is discarded.
    let pixels = [UInt8](unsafeUninitializedCapacity: w * h * channels) { out, initialized in
      let written = data.withUnsafeBufferPointer { bytes in
        channels == 4
          ? WebPDecodeRGBAInto(bytes.baseAddress, bytes.count, out.baseAddress, out.count, Int32(w * 4))
          : WebPDecodeRGBInto(bytes.baseAddress, bytes.count, out.baseAddress, out.count, Int32(w * 3))
      }
      ok = written != nil
      initialized = ok ? w * h * channels : 0
    }
    guard ok else { throw DataError.image(key: key, message: "WebP: the bitstream is damaged or truncated (the header reads \(w)x\(h))") }
    return pixels
  }

  static func describe(_ status: VP8StatusCode) -> String {
    switch status {
    case VP8_STATUS_OUT_OF_MEMORY: "out of memory"
    case VP8_STATUS_INVALID_PARAM: "invalid parameter"
    case VP8_STATUS_BITSTREAM_ERROR: "a damaged bitstream"
    case VP8_STATUS_UNSUPPORTED_FEATURE: "a feature libwebp does not support"
    case VP8_STATUS_SUSPENDED: "suspended"
    case VP8_STATUS_USER_ABORT: "aborted"
    case VP8_STATUS_NOT_ENOUGH_DATA: "the file is truncated (not enough data)"
    default: "status \(status.rawValue)"
    }
  }
}
