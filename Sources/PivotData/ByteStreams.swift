import CZstd
import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// The C library's read and write, named apart from the stream methods of the same name.
@inline(__always) private func systemRead(_ descriptor: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int
{
  #if canImport(Glibc)
    return Glibc.read(descriptor, buffer, count)
  #else
    return Darwin.read(descriptor, buffer, count)
  #endif
}

@inline(__always) private func systemWrite(_ descriptor: Int32, _ buffer: UnsafeRawPointer?, _ count: Int) -> Int {
  #if canImport(Glibc)
    return Glibc.write(descriptor, buffer, count)
  #else
    return Darwin.write(descriptor, buffer, count)
  #endif
}

/// A source of bytes read in pieces; `read` returns 0 at the end.
public protocol ByteStream {
  mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

/// Reads a file through a file descriptor, in whatever pieces the caller asks for.
public final class FileByteStream: ByteStream {
  public let path: String
  private var descriptor: Int32

  public init(path: String) throws {
    self.path = path
    descriptor = open(path, O_RDONLY)
    if descriptor < 0 {
      throw DataError.io(path: path, message: String(cString: strerror(errno)))
    }
  }

  deinit { if descriptor >= 0 { close(descriptor) } }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
    while true {
      let count = systemRead(descriptor, buffer.baseAddress, buffer.count)
      if count >= 0 { return count }
      if errno == EINTR { continue }
      throw DataError.io(path: path, message: String(cString: strerror(errno)))
    }
  }
}

/// Reads bytes from memory (tests and in-memory shards).
public final class MemoryByteStream: ByteStream {
  private let bytes: [UInt8]
  private var position = 0
  public init(_ bytes: [UInt8]) { self.bytes = bytes }
  public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
    let count = min(buffer.count, bytes.count - position)
    if count > 0 {
      bytes.withUnsafeBytes { source in
        buffer.baseAddress!.copyMemory(from: source.baseAddress! + position, byteCount: count)
      }
      position += count
    }
    return count
  }
}

/// Decompresses a zstd stream (one or more frames) with fixed buffers: memory stays at about
/// ZSTD_DStreamInSize() + the decoder's window, whatever the size of the shard.
public final class ZstdDecompressingStream: ByteStream {
  private var source: any ByteStream
  private let path: String
  private let context: OpaquePointer
  private let inputCapacity: Int
  private let input: UnsafeMutableRawPointer
  private var inputSize = 0
  private var inputPosition = 0
  private var sourceEnded = false
  /// What the last decompress call said is still needed to finish the frame (0 = frame ended).
  private var frameRemaining = 0
  private var sawAnyInput = false

  public init(source: any ByteStream, path: String) throws {
    self.source = source
    self.path = path
    guard let context = ZSTD_createDStream() else {
      throw DataError.zstd(path: path, message: "cannot create a decompression context")
    }
    self.context = context
    ZSTD_initDStream(context)
    inputCapacity = ZSTD_DStreamInSize()
    input = UnsafeMutableRawPointer.allocate(byteCount: inputCapacity, alignment: 16)
  }

  deinit {
    ZSTD_freeDStream(context)
    input.deallocate()
  }

  public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
    guard buffer.count > 0 else { return 0 }
    while true {
      if inputPosition == inputSize && !sourceEnded {
        inputSize = try source.read(into: UnsafeMutableRawBufferPointer(start: input, count: inputCapacity))
        inputPosition = 0
        if inputSize == 0 { sourceEnded = true } else { sawAnyInput = true }
      }
      if inputPosition == inputSize && sourceEnded {
        if frameRemaining != 0 {
          throw DataError.truncated(path: path, message: "the zstd frame ends before its end mark")
        }
        return 0
      }
      var inBuffer = ZSTD_inBuffer(src: input, size: inputSize, pos: inputPosition)
      var outBuffer = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
      let result = ZSTD_decompressStream(context, &outBuffer, &inBuffer)
      if ZSTD_isError(result) != 0 {
        throw DataError.zstd(path: path, message: String(cString: ZSTD_getErrorName(result)))
      }
      inputPosition = inBuffer.pos
      frameRemaining = result
      if outBuffer.pos > 0 { return outBuffer.pos }
    }
  }
}

/// A byte sink (file or memory).
public protocol ByteSink: AnyObject {
  func write(_ bytes: UnsafeRawBufferPointer) throws
  func finish() throws
}

public final class FileByteSink: ByteSink {
  public let path: String
  private var descriptor: Int32

  public init(path: String) throws {
    self.path = path
    descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if descriptor < 0 {
      throw DataError.io(path: path, message: "cannot create: " + String(cString: strerror(errno)))
    }
  }

  deinit { if descriptor >= 0 { close(descriptor) } }

  public func write(_ bytes: UnsafeRawBufferPointer) throws {
    var offset = 0
    while offset < bytes.count {
      let count = systemWrite(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
      if count < 0 {
        if errno == EINTR { continue }
        throw DataError.io(path: path, message: "write failed: " + String(cString: strerror(errno)))
      }
      offset += count
    }
  }

  public func finish() throws {
    if descriptor >= 0 {
      if close(descriptor) != 0 {
        descriptor = -1
        throw DataError.io(path: path, message: "close failed: " + String(cString: strerror(errno)))
      }
      descriptor = -1
    }
  }
}

public final class MemoryByteSink: ByteSink {
  public private(set) var bytes: [UInt8] = []
  public init() {}
  public func write(_ bytes: UnsafeRawBufferPointer) throws { self.bytes.append(contentsOf: bytes) }
  public func finish() throws {}
}

/// Compresses everything written into one zstd frame with a checksum.
public final class ZstdCompressingSink: ByteSink {
  private let sink: any ByteSink
  private let path: String
  private let context: OpaquePointer
  private let outputCapacity: Int
  private let output: UnsafeMutableRawPointer
  private var finished = false

  public init(sink: any ByteSink, path: String, level: Int32) throws {
    self.sink = sink
    self.path = path
    guard let context = ZSTD_createCCtx() else {
      throw DataError.zstd(path: path, message: "cannot create a compression context")
    }
    self.context = context
    ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
    ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1)
    outputCapacity = ZSTD_CStreamOutSize()
    output = UnsafeMutableRawPointer.allocate(byteCount: outputCapacity, alignment: 16)
  }

  deinit {
    ZSTD_freeCCtx(context)
    output.deallocate()
  }

  private func pump(_ bytes: UnsafeRawBufferPointer, mode: ZSTD_EndDirective) throws {
    var inBuffer = ZSTD_inBuffer(src: bytes.baseAddress, size: bytes.count, pos: 0)
    while true {
      var outBuffer = ZSTD_outBuffer(dst: output, size: outputCapacity, pos: 0)
      let remaining = ZSTD_compressStream2(context, &outBuffer, &inBuffer, mode)
      if ZSTD_isError(remaining) != 0 {
        throw DataError.zstd(path: path, message: String(cString: ZSTD_getErrorName(remaining)))
      }
      if outBuffer.pos > 0 {
        try sink.write(UnsafeRawBufferPointer(start: output, count: outBuffer.pos))
      }
      let done = mode == ZSTD_e_end ? remaining == 0 : inBuffer.pos == inBuffer.size
      if done { return }
    }
  }

  public func write(_ bytes: UnsafeRawBufferPointer) throws {
    if bytes.count > 0 { try pump(bytes, mode: ZSTD_e_continue) }
  }

  public func finish() throws {
    if finished { return }
    finished = true
    try pump(UnsafeRawBufferPointer(start: nil, count: 0), mode: ZSTD_e_end)
    try sink.finish()
  }
}

/// Opens a shard for reading: `.zst`/`.tar.zst` through zstd, anything else as plain tar.
public func openShardStream(path: String) throws -> any ByteStream {
  let file = try FileByteStream(path: path)
  if path.hasSuffix(".zst") || path.hasSuffix(".zstd") {
    return try ZstdDecompressingStream(source: file, path: path)
  }
  return file
}
