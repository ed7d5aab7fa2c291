import Foundation

/// One regular file in a tar stream.
public struct TarMember: Sendable {
  public var name: String
  public var data: [UInt8]
  /// Byte offset of the member's (first) header in the uncompressed stream.
  public var offset: Int64
}

/// Reads tar members one at a time from a byte stream: ustar, GNU long names (`L`) and pax
/// extended headers (`x`). Memory is one member plus a fixed read buffer.
///
/// A header whose checksum fails throws `DataError.tarHeader`; the next call scans forward to
/// the next valid header, so one corrupt block costs the members it covers, not the shard.
public final class TarReader {
  public let path: String
  /// Members larger than this are skipped with an error rather than loaded.
  public var maxMemberBytes: Int = 512 << 20
  private var stream: any ByteStream
  private var buffer: UnsafeMutableRawBufferPointer
  private var bufferStart = 0
  private var bufferEnd = 0
  private var streamEnded = false
  private(set) public var position: Int64 = 0
  private var resyncing = false
  private var finished = false

  public init(stream: any ByteStream, path: String, bufferSize: Int = 1 << 16) {
    self.stream = stream
    self.path = path
    buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bufferSize, 1024), alignment: 16)
  }

  deinit { buffer.deallocate() }

  private func fill() throws {
    if bufferStart == bufferEnd {
      bufferStart = 0
      bufferEnd = 0
    }
    if bufferEnd == buffer.count || streamEnded { return }
    let count = try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[bufferEnd...]))
    if count == 0 { streamEnded = true } else { bufferEnd += count }
  }

  /// Reads exactly `count` bytes into `target`; returns how many were read (less only at end).
  private func read(into target: UnsafeMutableRawBufferPointer) throws -> Int {
    var done = 0
    while done < target.count {
      if bufferStart == bufferEnd {
        try fill()
        if bufferStart == bufferEnd { break }
      }
      let count = min(target.count - done, bufferEnd - bufferStart)
      (target.baseAddress! + done).copyMemory(from: buffer.baseAddress! + bufferStart, byteCount: count)
      bufferStart += count
      done += count
    }
    position += Int64(done)
    return done
  }

  private func skip(_ count: Int) throws -> Bool {
    var remaining = count
    while remaining > 0 {
      if bufferStart == bufferEnd {
        try fill()
        if bufferStart == bufferEnd { return false }
      }
      let step = min(remaining, bufferEnd - bufferStart)
      bufferStart += step
      remaining -= step
      position += Int64(step)
    }
    return true
  }

  private func readBody(size: Int, headerOffset: Int64) throws -> [UInt8] {
    var count = 0
    // Size 0 would hand out the shared empty-array storage, which must not be written to.
    let data =
      size == 0
      ? []
      : try [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
        count = try read(into: UnsafeMutableRawBufferPointer(buffer))
        initialized = count
      }
    if count < size {
      throw DataError.truncated(
        path: path, message: "member at byte \(headerOffset) needs \(size) bytes, found \(count)")
    }
    if !(try skip(paddingAfter(size))) {
      throw DataError.truncated(path: path, message: "padding after member at byte \(headerOffset)")
    }
    return data
  }

  private func paddingAfter(_ size: Int) -> Int { (512 - size % 512) % 512 }

  /// The next regular file, or nil at the end of the archive.
  public func next() throws -> TarMember? {
    if finished { return nil }
    var longName: String? = nil
    var paxPath: String? = nil
    var paxSize: Int? = nil
    var header = [UInt8](repeating: 0, count: 512)
    while true {
      let headerOffset = position
      let count = try header.withUnsafeMutableBytes { try read(into: $0) }
      if count == 0 {
        finished = true
        return nil
      }
      if count < 512 {
        finished = true
        throw DataError.truncated(path: path, message: "partial tar header at byte \(headerOffset)")
      }
      if header.allSatisfy({ $0 == 0 }) {
        if resyncing { continue }
        // End of archive (two zero blocks, though one is enough to stop).
        finished = true
        return nil
      }
      guard TarHeader.checksumMatches(header) else {
        if resyncing { continue }
        resyncing = true
        throw DataError.tarHeader(path: path, offset: headerOffset, message: "checksum mismatch")
      }
      resyncing = false
      let parsed: TarHeader
      do {
        parsed = try TarHeader(header)
      } catch let message as TarHeader.Problem {
        resyncing = true
        throw DataError.tarHeader(path: path, offset: headerOffset, message: message.text)
      }
      let size = paxSize ?? parsed.size
      switch parsed.typeFlag {
      case UInt8(ascii: "L"):
        longName = TarHeader.cString(try readBody(size: size, headerOffset: headerOffset)[...])
        continue
      case UInt8(ascii: "x"):
        let records = TarHeader.paxRecords(try readBody(size: size, headerOffset: headerOffset))
        if let path = records["path"] { paxPath = path }
        if let sizeText = records["size"], let value = Int(sizeText), value >= 0 { paxSize = value }
        continue
      case UInt8(ascii: "0"), 0, UInt8(ascii: "7"):
        let name = paxPath ?? longName ?? parsed.name
        if size > maxMemberBytes {
          if !(try skip(size + paddingAfter(size))) {
            throw DataError.truncated(path: path, message: "member '\(name)' is cut short")
          }
          throw DataError.sample(
            path: path, key: name, message: "member of \(size) bytes is over the \(maxMemberBytes)-byte limit")
        }
        let data = try readBody(size: size, headerOffset: headerOffset)
        return TarMember(name: name, data: data, offset: headerOffset)
      default:
        // Directories, links, devices, GNU `K` long link names, pax globals: not sample data.
        if !(try skip(size + paddingAfter(size))) {
          throw DataError.truncated(path: path, message: "entry at byte \(headerOffset) is cut short")
        }
        longName = nil
        paxPath = nil
        paxSize = nil
      }
    }
  }
}

/// The fields of a 512-byte tar header that a shard reader needs.
struct TarHeader {
  struct Problem: Error { var text: String }

  var name: String
  var size: Int
  var typeFlag: UInt8

  init(_ block: [UInt8]) throws {
    let magic = Array(block[257..<263])
    let isPosixUstar = magic == Array("ustar\0".utf8)
    var name = TarHeader.cString(block[0..<100])
    if isPosixUstar {
      let prefix = TarHeader.cString(block[345..<500])
      if !prefix.isEmpty { name = prefix + "/" + name }
    }
    self.name = name
    typeFlag = block[156]
    guard let size = TarHeader.number(block[124..<136]) else {
      throw Problem(text: "unreadable size field")
    }
    guard size >= 0 else { throw Problem(text: "negative size") }
    self.size = size
  }

  static func cString(_ bytes: ArraySlice<UInt8>) -> String {
    let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
    return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
  }

  /// Octal digits (NUL/space padded) or GNU base-256 when the top bit is set.
  static func number(_ field: ArraySlice<UInt8>) -> Int? {
    guard let first = field.first else { return nil }
    if first & 0x80 != 0 {
      var value = Int(first & 0x7f)
      for byte in field.dropFirst() {
        guard value < (Int.max >> 8) else { return nil }
        value = value << 8 | Int(byte)
      }
      return value
    }
    var value = 0
    var sawDigit = false
    for byte in field {
      if byte == 0 || byte == 32 {
        if sawDigit { break } else { continue }
      }
      guard byte >= 48 && byte <= 55 else { return nil }
      guard value < (Int.max >> 3) else { return nil }
      value = value * 8 + Int(byte - 48)
      sawDigit = true
    }
    return value
  }

  static func checksumMatches(_ block: [UInt8]) -> Bool {
    guard let stored = number(block[148..<156]) else { return false }
    var unsigned = 0
    var signed = 0
    for index in 0..<512 {
      let byte = (148..<156).contains(index) ? 32 : block[index]
      unsigned += Int(byte)
      signed += Int(Int8(bitPattern: byte))
    }
    return stored == unsigned || stored == signed
  }

  /// pax records: "LENGTH key=value\n", LENGTH counting the whole record.
  static func paxRecords(_ data: [UInt8]) -> [String: String] {
    var records: [String: String] = [:]
    var index = 0
    while index < data.count {
      guard let space = data[index...].firstIndex(of: 32),
        let length = Int(String(decoding: data[index..<space], as: UTF8.self)), length > 0,
        index + length <= data.count
      else { break }
      let record = data[(space + 1)..<(index + length - 1)]
      if let equals = record.firstIndex(of: UInt8(ascii: "=")) {
        let key = String(decoding: record[record.startIndex..<equals], as: UTF8.self)
        let value = String(decoding: record[(equals + 1)...], as: UTF8.self)
        records[key] = value
      }
      index += length
    }
    return records
  }
}

/// Writes tar members: ustar headers, pax `path` records for names that do not fit.
/// Fixed owner, mode and mtime so that the same samples give the same bytes.
public final class TarWriter {
  private let sink: any ByteSink
  public var modificationTime: Int
  public private(set) var bytesWritten: Int64 = 0

  public init(sink: any ByteSink, modificationTime: Int = 0) {
    self.sink = sink
    self.modificationTime = modificationTime
  }

  private func emit(_ bytes: [UInt8]) throws {
    try bytes.withUnsafeBytes { try sink.write($0) }
    bytesWritten += Int64(bytes.count)
  }

  private func emitPadding(after size: Int) throws {
    let padding = (512 - size % 512) % 512
    if padding > 0 { try emit([UInt8](repeating: 0, count: padding)) }
  }

  private func header(name: [UInt8], size: Int, typeFlag: UInt8) -> [UInt8] {
    var block = [UInt8](repeating: 0, count: 512)
    func put(_ bytes: [UInt8], at offset: Int, width: Int) {
      for (index, byte) in bytes.prefix(width).enumerated() { block[offset + index] = byte }
    }
    func octal(_ value: Int, width: Int) -> [UInt8] {
      let digits = String(value, radix: 8)
      return Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8) + [0]
    }
    put(name, at: 0, width: 100)
    put(octal(0o644, width: 8), at: 100, width: 8)
    put(octal(0, width: 8), at: 108, width: 8)
    put(octal(0, width: 8), at: 116, width: 8)
    if size < 0o77777777777 {
      put(octal(size, width: 12), at: 124, width: 12)
    } else {
      // GNU base-256 for members of 8 GiB and more.
      block[124] = 0x80
      var value = size
      for index in stride(from: 135, through: 125, by: -1) {
        block[index] = UInt8(value & 0xff)
        value >>= 8
      }
    }
    put(octal(modificationTime, width: 12), at: 136, width: 12)
    block[156] = typeFlag
    put(Array("ustar\0".utf8), at: 257, width: 6)
    put(Array("00".utf8), at: 263, width: 2)
    put(Array("root".utf8), at: 265, width: 32)
    put(Array("root".utf8), at: 297, width: 32)
    for index in 148..<156 { block[index] = 32 }
    let sum = block.reduce(0) { $0 + Int($1) }
    let digits = String(sum, radix: 8)
    put(Array((String(repeating: "0", count: max(0, 6 - digits.count)) + digits).utf8) + [0, 32], at: 148, width: 8)
    return block
  }

  /// Appends one regular file.
  public func add(name: String, data: [UInt8]) throws {
    let nameBytes = Array(name.utf8)
    var headerName = nameBytes
    if nameBytes.count > 100 {
      // pax record "LEN path=NAME\n" where LEN counts itself.
      let body = " path=" + name + "\n"
      var length = body.utf8.count + 1
      while String(length).utf8.count + body.utf8.count != length { length += 1 }
      let record = Array((String(length) + body).utf8)
      try emit(header(name: Array("././@PaxHeader".utf8), size: record.count, typeFlag: UInt8(ascii: "x")))
      try emit(record)
      try emitPadding(after: record.count)
      headerName = Array(nameBytes.prefix(100))
    }
    try emit(header(name: headerName, size: data.count, typeFlag: UInt8(ascii: "0")))
    try emit(data)
    try emitPadding(after: data.count)
  }

  /// Writes the two zero blocks that end an archive and closes the sink.
  public func finish() throws {
    try emit([UInt8](repeating: 0, count: 1024))
    try sink.finish()
  }
}
