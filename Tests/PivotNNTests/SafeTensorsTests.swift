import Foundation
import PivotNN
import PivotTensor
import Testing

@Suite("safetensors")
struct SafeTensorsTests {
  /// Files written by Python safetensors (F32, F16, BF16) read back to exactly the values
  /// PyTorch's own conversion gives.
  @Test(arguments: ["f32", "f16", "bf16"])
  func readsPythonFiles(_ dtype: String) throws {
    let file = try SafeTensorsFile(url: nnFixture("py_\(dtype).safetensors"))
    let expected = try SafeTensorsFile(url: nnFixture("py_expected.safetensors"))
    #expect(file.names == ["a", "b", "empty", "nested.c"])
    for name in file.names {
      let t = try file.tensor(name), e = try expected.tensor("\(dtype).\(name)")
      #expect(t.shape == e.shape, "\(name) shape")
      #expect(t.scalars == e.scalars, "\(dtype) \(name) values differ")
    }
    if dtype == "f32" { #expect(file.metadata == ["format": "pt", "note": "written by safetensors"]) }
  }

  @Test func readsShardedCheckpointThroughIndex() throws {
    let ckpt = try SafeTensorsCheckpoint(path: nnFixture("py_sharded").path)
    #expect(ckpt.files.count == 2)
    #expect(ckpt.names == ["a", "b", "nested.c"])
    let expected = try SafeTensorsFile(url: nnFixture("py_expected.safetensors"))
    for name in ckpt.names { #expect(try ckpt.tensor(name).scalars == expected.tensor("f32.\(name)").scalars) }
  }

  static func sampleTensors() -> [(String, Tensor)] {
    [
      ("a", Tensor((0..<6).map { Float($0) * 0.5 - 1 }, shape: [2, 3])),
      ("layer.0.weight", Tensor([0.1, -2.75, 3.14159, 1e-3, 65504, -0.0], shape: [3, 2])),
      ("scalar", Tensor([42], shape: [])),
    ]
  }

  /// Pivot's writer is deterministic and byte-identical to the committed files that
  /// Tools/check_pivot_safetensors.py loads with Python safetensors + PyTorch.
  @Test(arguments: [SafeTensorsDType.f32, .f16, .bf16])
  func writerMatchesFilesCheckedInPython(_ dtype: SafeTensorsDType) throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-st-\(getpid())-\(dtype.rawValue)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let url = dir.appendingPathComponent("w.safetensors")
    try writeSafeTensors(Self.sampleTensors(), to: url, metadata: ["format": "pt", "writer": "pivot"], dtype: dtype)
    let name = "pivot_written_\(dtype.rawValue.lowercased()).safetensors"
    if ProcessInfo.processInfo.environment["PIVOT_UPDATE_FIXTURES"] != nil {
      let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)")
      try? FileManager.default.removeItem(at: src)
      try FileManager.default.copyItem(at: url, to: src)
    }
    #expect(try Data(contentsOf: url) == Data(contentsOf: nnFixture(name)), "\(name) differs from the committed file")
    let back = try SafeTensorsFile(url: url)
    #expect(back.metadata["writer"] == "pivot")
    let headerLen = try Data(contentsOf: url).prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    #expect(headerLen % 8 == 0, "header not padded to 8 bytes")
    for (n, t) in Self.sampleTensors() {
      let r = try back.tensor(n)
      #expect(r.shape == t.shape)
      if dtype == .f32 { #expect(r.scalars == t.scalars) }
    }
  }

  /// A crash mid-write never leaves a half file under the final name.
  @Test func writeIsAtomic() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-atomic-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let url = dir.appendingPathComponent("m.safetensors")
    try writeSafeTensors(Self.sampleTensors(), to: url)
    let before = try Data(contentsOf: url)
    // Writing into a folder that vanished fails before the rename; the old file is intact.
    let missing = dir.appendingPathComponent("gone/m.safetensors")
    #expect(throws: SafeTensorsError.self) { try writeSafeTensors(Self.sampleTensors(), to: missing) }
    #expect(try Data(contentsOf: url) == before)
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["m.safetensors"])
  }

  // MARK: Malformed files

  static func file(header: String, data: [UInt8] = [], lengthOverride: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    var len = (lengthOverride ?? UInt64(h.count)).littleEndian
    return withUnsafeBytes(of: &len) { Array($0) } + h + data
  }

  static let f32x2 = #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#

  static let malformed: [(String, [UInt8], String)] = [
    ("empty file", [], "shorter than the 8-byte header length"),
    ("five bytes", [1, 2, 3, 4, 5], "shorter than the 8-byte header length"),
    ("oversized header", file(header: "{}", lengthOverride: 200_000_000), "exceeds the"),
    ("header past end", file(header: "{}", lengthOverride: 64), "runs past the end"),
    ("not an object", file(header: "[1,2]   "), "does not start with '{'"),
    ("bad JSON", file(header: "{\"w\": {\"dtype\": "), "not a JSON object"),
    ("entry not object", file(header: #"{"w": 3}"#), "entry 'w' is not an object"),
    ("missing dtype", file(header: #"{"w":{"shape":[2],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "has no dtype"),
    ("unknown dtype", file(header: #"{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0]), "unsupported dtype F8_E4M3"),
    ("shape not a list", file(header: #"{"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "has no shape list"),
    ("negative dimension", file(header: #"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "not a non-negative integer"),
    ("three offsets", file(header: #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "invalid data_offsets"),
    ("end before begin", file(header: #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, data: [UInt8](repeating: 0, count: 8)), "invalid data_offsets"),
    ("wrong dtype size", file(header: #"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "spans 8 bytes but F16 [2] needs 4"),
    ("shape overflow", file(header: #"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "overflows"),
    ("truncated data", file(header: f32x2, data: [0, 0, 0, 0]), "past the 4-byte data section"),
    ("trailing bytes", file(header: f32x2, data: [UInt8](repeating: 0, count: 12)), "trailing bytes"),
    ("overlapping", file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: [UInt8](repeating: 0, count: 8)), "overlaps"),
    ("hole", file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, data: [UInt8](repeating: 0, count: 12)), "hole in the data section"),
    ("metadata not strings", file(header: #"{"__metadata__":{"step":3}}"#), "value for 'step' is not a string"),
    ("metadata not object", file(header: #"{"__metadata__":[1]}"#), "__metadata__ is not an object"),
  ]

  @Test func everyMalformedFileIsRejectedWithItsOwnMessage() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-bad-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    #expect(Self.malformed.count >= 15)
    var messages: [String: String] = [:]
    for (i, (name, bytes, expected)) in Self.malformed.enumerated() {
      let url = dir.appendingPathComponent("bad-\(i).safetensors")
      try Data(bytes).write(to: url)
      do {
        _ = try SafeTensorsFile(url: url)
        Issue.record("\(name): accepted")
      } catch let e as SafeTensorsError {
        #expect(e.reason.contains(expected), "\(name): got '\(e.reason)'")
        #expect(e.file == url.path, "\(name): the message must name the file")
        messages[name] = e.reason
      }
    }
    // Distinct causes give distinct messages (the same rule may fire for two variants of one cause).
    #expect(Set(messages.values).count >= 15)
  }

  @Test func missingCheckpointFolderNamesThePath() {
    do {
      _ = try SafeTensorsCheckpoint(path: "/nonexistent/pivot-model")
      Issue.record("accepted a missing folder")
    } catch {
      #expect("\(error)".contains("/nonexistent/pivot-model"))
    }
  }
}
