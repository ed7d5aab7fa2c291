import Foundation
import PivotTensor

/// A problem with a safetensors file: which file, what is wrong, and what to try.
public struct SafeTensorsError: Error, CustomStringConvertible, Equatable {
  public let file: String
  public let reason: String
  public let hint: String
  public var description: String { "\(file): \(reason)\(hint.isEmpty ? "" : " (\(hint))")" }
}

/// Element types Pivot reads; floats convert to float32 on load.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
  case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
  case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

  public var byteSize: Int {
    switch self {
    case .f64, .i64: 8
    case .f32, .i32: 4
    case .f16, .bf16, .i16: 2
    case .i8, .u8, .bool: 1
    }
  }
  var isFloat: Bool { [.f64, .f32, .f16, .bf16].contains(self) }
}

/// A memory-mapped file; unmapped when the last tensor viewing it is gone.
final class MappedFile: @unchecked Sendable {
  let base: UnsafeMutableRawPointer
  let length: Int
  init(path: String) throws {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else {
      throw SafeTensorsError(file: path, reason: "cannot open (\(String(cString: strerror(errno))))", hint: "check the path")
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw SafeTensorsError(file: path, reason: "cannot stat", hint: "") }
    length = Int(st.st_size)
    if length == 0 {
      base = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 8)
      return
    }
    // Private copy-on-write mapping: zero-copy F32 views stay writable without touching the file.
    guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
      throw SafeTensorsError(file: path, reason: "mmap failed (\(String(cString: strerror(errno))))", hint: "")
    }
    base = p
  }
  deinit {
    if length == 0 { base.deallocate() } else { munmap(base, length) }
  }
}

/// One safetensors file, validated per the format's rules and mapped into memory.
public final class SafeTensorsFile: @unchecked Sendable {
  public struct Entry: Sendable {
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    public let range: Range<Int>  // byte range within the data section
  }
  /// Largest header accepted, as in the reference implementation.
  public static let maxHeaderBytes = 100_000_000

  public let path: String
  public let entries: [String: Entry]
  public let metadata: [String: String]
  let file: MappedFile
  let dataStart: Int

  public var names: [String] { entries.keys.sorted() }

  public convenience init(url: URL) throws { try self.init(path: url.path) }

  public init(path: String) throws {
    self.path = path
    let file = try MappedFile(path: path)
    self.file = file
    func fail(_ reason: String, _ hint: String = "the file is not valid safetensors; re-export it") -> SafeTensorsError {
      SafeTensorsError(file: path, reason: reason, hint: hint)
    }
    guard file.length >= 8 else { throw fail("file is \(file.length) bytes, shorter than the 8-byte header length", "the file is truncated") }
    let headerLen = UInt64(littleEndian: file.base.loadUnaligned(as: UInt64.self))
    guard headerLen <= UInt64(SafeTensorsFile.maxHeaderBytes) else {
      throw fail("header length \(headerLen) exceeds the \(SafeTensorsFile.maxHeaderBytes)-byte cap")
    }
    let n = Int(headerLen)
    guard 8 + n <= file.length else {
      throw fail("header length \(n) runs past the end of the \(file.length)-byte file", "the file is truncated")
    }
    let headerBytes = UnsafeRawBufferPointer(start: file.base + 8, count: n)
    guard n > 0, headerBytes[0] == UInt8(ascii: "{") else { throw fail("header does not start with '{'") }
    guard let json = try? JSONSerialization.jsonObject(with: Data(headerBytes)), let dict = json as? [String: Any] else {
      throw fail("header is not a JSON object")
    }
    dataStart = 8 + n
    let dataLen = file.length - dataStart
    var entries: [String: Entry] = [:]
    var metadata: [String: String] = [:]
    for (key, value) in dict {
      if key == "__metadata__" {
        guard let meta = value as? [String: Any] else { throw fail("__metadata__ is not an object") }
        for (mk, mv) in meta {
          guard let s = mv as? String else { throw fail("__metadata__ value for '\(mk)' is not a string") }
          metadata[mk] = s
        }
        continue
      }
      guard let info = value as? [String: Any] else { throw fail("entry '\(key)' is not an object") }
      guard let dtypeName = info["dtype"] as? String else { throw fail("entry '\(key)' has no dtype") }
      guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
        throw fail("entry '\(key)' has unsupported dtype \(dtypeName)", "Pivot reads \(SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", "))")
      }
      guard let shapeAny = info["shape"] as? [Any] else { throw fail("entry '\(key)' has no shape list") }
      var shape: [Int] = []
      for d in shapeAny {
        guard let dim = d as? Int, dim >= 0 else {
          throw fail("entry '\(key)' has a shape entry that is not a non-negative integer")
        }
        shape.append(dim)
      }
      guard let offs = info["data_offsets"] as? [Any], offs.count == 2,
        let b = offs[0] as? Int, let e = offs[1] as? Int, b >= 0, e >= b
      else { throw fail("entry '\(key)' has invalid data_offsets") }
      var elements = 1
      for d in shape {
        let (r, o) = elements.multipliedReportingOverflow(by: d)
        guard !o else { throw fail("entry '\(key)' shape \(shape) overflows") }
        elements = r
      }
      let (bytes, o) = elements.multipliedReportingOverflow(by: dtype.byteSize)
      guard !o else { throw fail("entry '\(key)' byte size overflows") }
      guard Int(e - b) == bytes else {
        throw fail("entry '\(key)' spans \(e - b) bytes but \(dtype.rawValue) \(shape) needs \(bytes)")
      }
      guard Int(e) <= dataLen else {
        throw fail("entry '\(key)' ends at byte \(e) past the \(dataLen)-byte data section", "the file is truncated")
      }
      entries[key] = Entry(dtype: dtype, shape: shape, range: Int(b)..<Int(e))
    }
    // Offsets must tile the data section exactly: no holes, no overlaps.
    var cursor = 0
    for (key, entry) in entries.sorted(by: { ($0.value.range.lowerBound, $0.value.range.upperBound) < ($1.value.range.lowerBound, $1.value.range.upperBound) }) {
      if entry.range.lowerBound < cursor { throw fail("entry '\(key)' overlaps the previous tensor (starts at \(entry.range.lowerBound), previous ends at \(cursor))") }
      if entry.range.lowerBound > cursor { throw fail("hole in the data section before '\(key)' (bytes \(cursor)..<\(entry.range.lowerBound))") }
      cursor = entry.range.upperBound
    }
    guard cursor == dataLen else {
      throw fail("\(dataLen - cursor) trailing bytes: the data section is \(dataLen) bytes but the tensors cover \(cursor)")
    }
    self.entries = entries
    self.metadata = metadata
  }

  /// The tensor as float32. An aligned F32 tensor is a zero-copy view of the mapping. With
  /// `keepingBF16`, a BF16 matrix stays as its mapped bits (a bfloat16-only tensor, no copy).
  public func tensor(_ name: String, keepingBF16 keep: Bool = false) throws -> Tensor {
    guard let e = entries[name] else {
      throw SafeTensorsError(file: path, reason: "no tensor named '\(name)'", hint: "the file has \(entries.count) tensors")
    }
    let src = file.base + dataStart + e.range.lowerBound
    let n = e.shape.reduce(1, *)
    if keep && e.dtype == .bf16 && e.shape.count == 2 {
      let bits = UnsafePointer(src.bindMemory(to: UInt16.self, capacity: max(n, 1)))
      return Tensor.bf16Only(BF16Matrix(borrowing: bits, rows: e.shape[0], cols: e.shape[1], owner: file))
    }
    if e.dtype == .f32 && Int(bitPattern: src) % 4 == 0 {
      let storage = Storage(borrowing: src.bindMemory(to: Float.self, capacity: max(n, 1)), capacity: n, owner: file)
      return Tensor(storage: storage, shape: e.shape)
    }
    let t = Tensor(empty: e.shape)
    try convertToFloat(t.ptr, from: UnsafeRawPointer(src), count: n, dtype: e.dtype, name: name)
    return t
  }

  func convertToFloat(_ dst: UnsafeMutablePointer<Float>, from src: UnsafeRawPointer, count n: Int, dtype: SafeTensorsDType, name: String) throws {
    switch dtype {
    case .f32: for i in 0..<n { dst[i] = src.loadUnaligned(fromByteOffset: i * 4, as: Float.self) }
    case .f64: for i in 0..<n { dst[i] = Float(src.loadUnaligned(fromByteOffset: i * 8, as: Double.self)) }
    // Half-precision checkpoints convert on every core: a 0.5 B model is 1 GB of bits to widen
    // before the first token.
    case .bf16: parallelFor(n, grain: 1 << 18) { r in for i in r { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)) } }
    case .f16: parallelFor(n, grain: 1 << 18) { r in for i in r { dst[i] = f16ToFloat(src.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)) } }
    default:
      throw SafeTensorsError(file: path, reason: "tensor '\(name)' is \(dtype.rawValue), not a float type", hint: "Pivot loads F32, F16, BF16 and F64 weights")
    }
  }

  /// The bytes of a U8 tensor (images in fixtures).
  public func uint8s(_ name: String) throws -> [UInt8] {
    guard let e = entries[name], e.dtype == .u8 else {
      throw SafeTensorsError(file: path, reason: "no U8 tensor named '\(name)'", hint: "")
    }
    return Array(UnsafeRawBufferPointer(start: file.base + dataStart + e.range.lowerBound, count: e.range.count))
  }

  /// Raw bytes of an entry (for integer tensors such as token ids in fixtures).
  public func int64s(_ name: String) throws -> [Int64] {
    guard let e = entries[name] else { throw SafeTensorsError(file: path, reason: "no tensor named '\(name)'", hint: "") }
    let src = UnsafeRawPointer(file.base + dataStart + e.range.lowerBound)
    let n = e.shape.reduce(1, *)
    switch e.dtype {
    case .i64: return (0..<n).map { src.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self) }
    case .i32: return (0..<n).map { Int64(src.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
    default: throw SafeTensorsError(file: path, reason: "tensor '\(name)' is \(e.dtype.rawValue), not an integer type", hint: "")
    }
  }
}

@inline(__always) public func bf16ToFloat(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }


@inline(__always) public func f16ToFloat(_ h: UInt16) -> Float {
  let sign = UInt32(h >> 15) << 31
  let exp = UInt32((h >> 10) & 0x1F)
  let mant = UInt32(h & 0x3FF)
  if exp == 0 {
    if mant == 0 { return Float(bitPattern: sign) }
    // Subnormal: value = mant · 2⁻²⁴.
    let v = Float(mant) * 0x1p-24
    return sign != 0 ? -v : v
  }
  if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
  return Float(bitPattern: sign | ((exp + 112) << 23) | (mant << 13))
}

@inline(__always) public func floatToF16(_ f: Float) -> UInt16 {
  // Through Swift's Float16 conversion, which rounds to nearest even.
  Float16(f).bitPattern
}

/// Writes tensors as one safetensors file, atomically (temp file + rename), names sorted,
/// header padded with spaces to 8 bytes. `dtype` F32, F16 or BF16.
public func writeSafeTensors(
  _ tensors: [(String, Tensor)], to url: URL, metadata: [String: String] = [:], dtype: SafeTensorsDType = .f32
) throws {
  precondition([.f32, .f16, .bf16].contains(dtype), "Pivot writes F32, F16 or BF16")
  var seen = Set<String>()
  for (name, _) in tensors {
    guard seen.insert(name).inserted else {
      throw SafeTensorsError(file: url.path, reason: "duplicate tensor name '\(name)'", hint: "")
    }
  }
  let sorted = tensors.sorted { $0.0 < $1.0 }
  var header: [String: Any] = [:]
  var offset = 0
  for (name, t) in sorted {
    let bytes = t.count * dtype.byteSize
    header[name] = ["dtype": dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
    offset += bytes
  }
  if !metadata.isEmpty { header["__metadata__"] = metadata }
  var headerData = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
  while headerData.count % 8 != 0 { headerData.append(UInt8(ascii: " ")) }
  let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
  guard FileManager.default.createFile(atPath: tmp.path, contents: nil), let handle = FileHandle(forWritingAtPath: tmp.path) else {
    throw SafeTensorsError(file: url.path, reason: "cannot create \(tmp.path)", hint: "check that the folder exists and is writable")
  }
  do {
    var len = UInt64(headerData.count).littleEndian
    try handle.write(contentsOf: Data(bytes: &len, count: 8))
    try handle.write(contentsOf: headerData)
    for (_, stored) in sorted {
      var chunk = Data(count: stored.count * dtype.byteSize)
      chunk.withUnsafeMutableBytes { raw in
        if dtype == .bf16, let half = stored.bf16Values {  // bfloat16-only weights: their bits as they are
          raw.copyMemory(from: UnsafeRawBufferPointer(start: half.bits, count: stored.count * 2))
          return
        }
        let t = stored.floatValues()
        let p = t.ptr
        switch dtype {
        case .f32: raw.copyMemory(from: UnsafeRawBufferPointer(start: p, count: t.count * 4))
        case .bf16: for i in 0..<t.count { raw.storeBytes(of: Kernels.bf16Bits(p[i]).littleEndian, toByteOffset: i * 2, as: UInt16.self) }
        default: for i in 0..<t.count { raw.storeBytes(of: floatToF16(p[i]).littleEndian, toByteOffset: i * 2, as: UInt16.self) }
        }
      }
      try handle.write(contentsOf: chunk)
    }
    try handle.synchronize()
    try handle.close()
  } catch {
    try? handle.close()
    try? FileManager.default.removeItem(at: tmp)
    throw SafeTensorsError(file: url.path, reason: "write failed: \(error)", hint: "check free disk space")
  }
  guard rename(tmp.path, url.path) == 0 else {
    try? FileManager.default.removeItem(at: tmp)
    throw SafeTensorsError(file: url.path, reason: "rename from \(tmp.lastPathComponent) failed", hint: "")
  }
}

/// A checkpoint of one or more safetensors files: a single file, a folder holding
/// `model.safetensors`, or a folder with `model.safetensors.index.json` and shards.
public final class SafeTensorsCheckpoint: @unchecked Sendable {
  public let files: [SafeTensorsFile]
  public let location: [String: Int]  // tensor name → index in files

  public var names: [String] { location.keys.sorted() }

  public init(path: String) throws {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw SafeTensorsError(file: path, reason: "no such file or folder", hint: "pass a .safetensors file or a checkpoint folder")
    }
    var paths: [String] = []
    if !isDir.boolValue {
      paths = [path]
    } else {
      let index = (path as NSString).appendingPathComponent("model.safetensors.index.json")
      if FileManager.default.fileExists(atPath: index) {
        guard let data = FileManager.default.contents(atPath: index),
          let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let map = json["weight_map"] as? [String: String]
        else { throw SafeTensorsError(file: index, reason: "not a valid index (no weight_map)", hint: "re-export the checkpoint") }
        paths = Set(map.values).sorted().map { (path as NSString).appendingPathComponent($0) }
      } else {
        let single = (path as NSString).appendingPathComponent("model.safetensors")
        if FileManager.default.fileExists(atPath: single) {
          paths = [single]
        } else {
          let all = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
          paths = all.filter { $0.hasSuffix(".safetensors") }.sorted().map { (path as NSString).appendingPathComponent($0) }
        }
      }
      if paths.isEmpty {
        throw SafeTensorsError(file: path, reason: "no .safetensors files in the folder", hint: "expected model.safetensors or model.safetensors.index.json")
      }
    }
    files = try paths.map { try SafeTensorsFile(path: $0) }
    var location: [String: Int] = [:]
    for (i, f) in files.enumerated() {
      for name in f.entries.keys {
        if let j = location[name] {
          throw SafeTensorsError(file: f.path, reason: "tensor '\(name)' is also in \(files[j].path)", hint: "shards must not repeat tensors")
        }
        location[name] = i
      }
    }
    self.location = location
  }

  public func entry(_ name: String) -> SafeTensorsFile.Entry? { location[name].map { files[$0].entries[name]! } }

  public func tensor(_ name: String, keepingBF16 keep: Bool = false) throws -> Tensor {
    guard let i = location[name] else {
      throw SafeTensorsError(file: files.first?.path ?? "", reason: "no tensor named '\(name)'", hint: "")
    }
    return try files[i].tensor(name, keepingBF16: keep)
  }
}
