import Foundation
import PivotNN
import PivotTensor

/// A base weight file a checkpoint was trained on: the checkpoint stores only what trained,
/// so it is complete only together with these files, and the hash says they are the same ones.
public struct BaseReference: Codable, Sendable, Equatable {
  public var path: String
  public var bytes: Int
  public var sha256: String

  public static func of(folder: String) throws -> [BaseReference] {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDir) else { return [] }
    let files = isDir.boolValue
      ? ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted().map { (folder as NSString).appendingPathComponent($0) }
      : [folder]
    return try files.map { path in
      let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
      return BaseReference(path: path, bytes: size, sha256: try SHA256.file(path))
    }
  }

  /// Throws when the file changed since the checkpoint was written.
  public func verify() throws {
    guard FileManager.default.fileExists(atPath: path) else {
      throw RecipeError(file: path, line: nil, key: "", message: "base weights referenced by the checkpoint are missing")
    }
    let hash = try SHA256.file(path)
    guard hash == sha256 else {
      throw RecipeError(file: path, line: nil, key: "", message: "base weights changed since the checkpoint (sha256 \(hash.prefix(12))…, expected \(sha256.prefix(12))…)")
    }
  }
}

/// `state.json` of a checkpoint.
public struct CheckpointState: Codable, Sendable {
  public var format = "pivot-checkpoint"
  public var version = 1
  public var step: Int
  public var dataState: String
  public var rng: PivotRNG
  public var recipe: String
  public var recipeFile: String
  public var base: [BaseReference]
  public var trainable: [String]
  public var loss: Double?
}

public enum Checkpoint {
  public static func directoryName(step: Int) -> String { String(format: "step-%06d", step) }

  /// Removes the temporary folders (`.step-N.tmp-PID`, `.final.tmp-PID`, and their `.old`)
  /// that a killed run left in `output`, when their process is gone. Returns their names.
  @discardableResult
  public static func removeStaleTemporaries(in output: String) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: output)) ?? []
    var removed: [String] = []
    for name in names where name.hasPrefix(".") {
      guard let range = name.range(of: ".tmp-") else { continue }
      let digits = name[range.upperBound...].prefix { $0.isNumber }
      guard let pid = Int32(digits) else { continue }
      // kill(pid, 0) fails with ESRCH when no such process exists.
      if pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH {
        if (try? FileManager.default.removeItem(atPath: (output as NSString).appendingPathComponent(name))) != nil { removed.append(name) }
      }
    }
    return removed.sorted()
  }

  /// Writes model.safetensors (trained parameters), optimizer.safetensors (moments) and
  /// state.json into a temporary folder, then renames it into place: a crash at any point
  /// leaves the previous checkpoints as they were.
  public static func save(
    to dir: String, parameters: [(String, Tensor)], optimizer: AdamW, state: CheckpointState, extraFiles: [String: Data] = [:]
  ) throws {
    let fm = FileManager.default
    let parent = (dir as NSString).deletingLastPathComponent
    try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
    let tmp = (parent as NSString).appendingPathComponent(".\((dir as NSString).lastPathComponent).tmp-\(getpid())")
    try? fm.removeItem(atPath: tmp)
    try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    try writeSafeTensors(parameters, to: URL(fileURLWithPath: tmp).appendingPathComponent("model.safetensors"), metadata: ["format": "pt", "step": "\(state.step)"])
    try writeSafeTensors(optimizer.stateTensors(), to: URL(fileURLWithPath: tmp).appendingPathComponent("optimizer.safetensors"), metadata: ["step": "\(optimizer.step)"])
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try enc.encode(state).write(to: URL(fileURLWithPath: tmp).appendingPathComponent("state.json"))
    for (name, data) in extraFiles { try data.write(to: URL(fileURLWithPath: tmp).appendingPathComponent(name)) }
    if fm.fileExists(atPath: dir) {
      let old = tmp + ".old"
      try fm.moveItem(atPath: dir, toPath: old)
      try fm.moveItem(atPath: tmp, toPath: dir)
      try? fm.removeItem(atPath: old)
    } else {
      try fm.moveItem(atPath: tmp, toPath: dir)
    }
  }

  public static func readState(_ dir: String) throws -> CheckpointState {
    let path = (dir as NSString).appendingPathComponent("state.json")
    guard let data = FileManager.default.contents(atPath: path) else {
      throw RecipeError(file: path, line: nil, key: "", message: "not a checkpoint (no state.json)")
    }
    do { return try JSONDecoder().decode(CheckpointState.self, from: data) } catch {
      throw RecipeError(file: path, line: nil, key: "", message: "unreadable checkpoint state: \(error)")
    }
  }

  /// Copies the trained parameters of a checkpoint into the model's tensors.
  public static func loadParameters(_ dir: String, into params: [(String, Tensor)]) throws {
    let file = try SafeTensorsFile(path: (dir as NSString).appendingPathComponent("model.safetensors"))
    var problems: [String] = []
    for (name, t) in params {
      guard let e = file.entries[name] else { problems.append("missing tensor '\(name)'"); continue }
      guard e.shape == t.shape else { problems.append("'\(name)' has shape \(e.shape), the model expects \(t.shape)"); continue }
      t.copy(from: try file.tensor(name))
    }
    if !problems.isEmpty { throw ModuleError.loadFailed(source: file.path, problems: problems) }
  }

  public static func loadOptimizer(_ dir: String, into optimizer: AdamW, step: Int) throws {
    let file = try SafeTensorsFile(path: (dir as NSString).appendingPathComponent("optimizer.safetensors"))
    let optimizerStep = Int(file.metadata["step"] ?? "") ?? step
    try optimizer.loadState(step: optimizerStep) { try file.tensor($0) }
  }

  /// Step folders in `output`, oldest first.
  public static func list(_ output: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: output)) ?? [])
      .filter { $0.hasPrefix("step-") && !$0.contains(".tmp") }.sorted()
      .map { (output as NSString).appendingPathComponent($0) }
  }

  /// Deletes all but the newest `keep` step folders.
  public static func prune(_ output: String, keep: Int) {
    let all = list(output)
    for dir in all.dropLast(keep) { try? FileManager.default.removeItem(atPath: dir) }
  }
}
