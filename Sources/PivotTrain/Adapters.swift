import Foundation
import PivotModels
import PivotNN
import PivotTensor

/// PEFT's LoRA adapter folder: `adapter_config.json` + `adapter_model.safetensors`, keys
/// `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight` with module paths relative to
/// the causal LM (`model.layers.0.self_attn.q_proj`), what `PeftModel.from_pretrained` loads onto
/// the base LLM and what `save_pretrained` writes. Pivot adds the base's fingerprint to the
/// file's metadata so an adapter applied to another base is refused.
public enum PEFTAdapter {
  public static let configFile = "adapter_config.json"
  public static let weightsFile = "adapter_model.safetensors"
  static let keyPrefix = "base_model.model."
  static let fingerprintKey = "pivot.base_fingerprint"

  /// Whether `dir` holds an adapter folder.
  public static func exists(_ dir: String) -> Bool {
    FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent(configFile))
  }

  /// A hash of what an adapter is meant for: each adapted weight's path, shape and a strided
  /// sample of its values rounded to bfloat16 (so a float32 base and its bfloat16 copy agree).
  public static func fingerprint(_ llm: DecoderLM, paths: [String]) -> String {
    let byPath = Dictionary(uniqueKeysWithValues: llm.namedLinears())
    var hash = SHA256()
    for path in paths.sorted() {
      guard let linear = byPath[path] else { continue }
      hash.update(Data("\(path) \(linear.weight.shape)\n".utf8))
      let count = linear.weight.count, stride = max(1, count / 4096)
      var samples: [UInt16] = []
      samples.reserveCapacity(count / stride + 1)
      if let half = linear.weight.bf16Values {
        for i in Swift.stride(from: 0, to: count, by: stride) { samples.append(half.bits[i]) }
      } else {
        let p = linear.weight.ptr
        for i in Swift.stride(from: 0, to: count, by: stride) { samples.append(Kernels.bf16Bits(p[i])) }
      }
      samples.withUnsafeBytes { hash.update($0) }
    }
    return hash.finalize()
  }

  /// Writes the adapters of `llm` (the LLM of a chat model, or the model of stage text).
  /// `baseModel` goes into `base_model_name_or_path`: the folder the adapter applies to.
  public static func write(_ llm: DecoderLM, to dir: String, dropout: Double = 0, rsLoRA: Bool = false, baseModel: String) throws {
    let adapted = llm.adaptedLinears()
    guard let first = adapted.first?.1, let a0 = first.loraA else {
      throw ModelLoadError(file: dir, reason: "the model has no LoRA adapters in its language model to write")
    }
    let rank = a0.shape[0], scale = first.loraScale
    for (path, l) in adapted where l.loraA!.shape[0] != rank || l.loraScale != scale {
      throw ModelLoadError(file: dir, reason: "\(path) has another rank or scale than the other adapters; PEFT's folder needs one (r, alpha)")
    }
    let alpha = rsLoRA ? Double(scale) * Double(rank).squareRoot() : Double(scale) * Double(rank)
    let paths = adapted.map(\.0)
    let config: [String: Any] = [
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel,
      "r": rank, "lora_alpha": (alpha * 1e6).rounded() / 1e6, "lora_dropout": dropout,
      "target_modules": targetModules(for: Set(paths), among: llm.namedLinears().map(\.0)),
      "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
      "use_rslora": rsLoRA, "use_dora": false, "modules_to_save": NSNull(), "layers_to_transform": NSNull(),
      "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](), "revision": NSNull(),
    ]
    let fm = FileManager.default
    let tmp = dir + ".tmp-\(getpid())"
    try? fm.removeItem(atPath: tmp)
    try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
    try writeJSON(config, to: (tmp as NSString).appendingPathComponent(configFile))
    var tensors: [(String, Tensor)] = []
    for (path, l) in adapted {
      tensors.append(("\(keyPrefix)\(path).lora_A.weight", l.loraA!))
      tensors.append(("\(keyPrefix)\(path).lora_B.weight", l.loraB!))
    }
    try writeSafeTensors(tensors, to: URL(fileURLWithPath: tmp).appendingPathComponent(weightsFile),
                         metadata: ["format": "pt", fingerprintKey: fingerprint(llm, paths: paths)])
    try? fm.removeItem(atPath: dir)
    try fm.moveItem(atPath: tmp, toPath: dir)
  }

  /// PEFT matches a `target_modules` entry to a module whose name equals it or ends in
  /// `.entry`. The last path components when they pick exactly the adapted set (what users
  /// write: `q_proj`, `v_proj`), otherwise every adapted path.
  static func targetModules(for adapted: Set<String>, among all: [String]) -> [String] {
    let suffixes = Set(adapted.map { String($0.split(separator: ".").last!) })
    let picked = Set(all.filter { suffixes.contains(String($0.split(separator: ".").last!)) })
    return picked == adapted ? suffixes.sorted() : adapted.sorted()
  }

  /// Whether PEFT's `target_modules` (a list, a regular expression, or "all-linear") selects `path`.
  static func selects(_ targets: Any, _ path: String, isOutputLayer: Bool) -> Bool {
    if let list = targets as? [String] { return list.contains { path == $0 || path.hasSuffix("." + $0) } }
    guard let s = targets as? String else { return false }
    if s == "all-linear" { return !isOutputLayer }
    guard let re = try? NSRegularExpression(pattern: "^(?:\(s))$") else { return false }
    return re.firstMatch(in: path, range: NSRange(path.startIndex..., in: path)) != nil
  }

  /// Attaches the adapter folder `dir` to `llm` (unmerged: the base weights stay as they are).
  /// Shapes that differ, a recorded base fingerprint that differs, a key naming no Linear, or a
  /// PEFT option Pivot does not run are errors naming both folders. Returns the adapted paths.
  @discardableResult
  public static func apply(_ dir: String, to llm: DecoderLM, model modelName: String) throws -> [String] {
    let configPath = (dir as NSString).appendingPathComponent(configFile)
    guard FileManager.default.fileExists(atPath: configPath) else {
      throw ModelLoadError(file: dir, reason: "not a PEFT adapter folder (no \(configFile))", hint: "pass the folder PEFT's save_pretrained or Pivot's export wrote")
    }
    let c = try readJSONObject(configPath)
    func fail(_ reason: String, _ hint: String = "") -> ModelLoadError { ModelLoadError(file: configPath, reason: reason, hint: hint) }
    guard (c["peft_type"] as? String)?.uppercased() == "LORA" else { throw fail("peft_type is \(c["peft_type"] ?? "missing"); Pivot runs LORA adapters") }
    guard let rank = c["r"] as? Int, rank > 0 else { throw fail("'r' must be a positive integer") }
    guard let alpha = (c["lora_alpha"] as? NSNumber)?.doubleValue, alpha > 0 else { throw fail("'lora_alpha' must be a positive number") }
    if c["use_dora"] as? Bool == true { throw fail("'use_dora' is true: DoRA adapters are not LoRA's two products", "merge it in PEFT and load the merged model") }
    if let bias = c["bias"] as? String, bias != "none" { throw fail("'bias' is \(bias): Pivot's adapters train no biases (\"none\")") }
    if c["fan_in_fan_out"] as? Bool == true { throw fail("'fan_in_fan_out' is true (GPT-2 Conv1D layout); Pivot's weights are (out, in)") }
    for key in ["rank_pattern", "alpha_pattern"] {
      if let d = c[key] as? [String: Any], !d.isEmpty { throw fail("'\(key)' gives layers their own \(key == "rank_pattern" ? "rank" : "alpha"); Pivot applies one (r, lora_alpha)") }
    }
    for key in ["lora_bias", "use_qalora"] where c[key] as? Bool == true { throw fail("'\(key)' is true; Pivot applies plain LoRA adapters only") }
    for key in ["modules_to_save", "layers_to_transform", "target_parameters", "trainable_token_indices", "layer_replication", "exclude_modules"] where !(c[key] == nil || c[key] is NSNull || (c[key] as? [Any])?.isEmpty == true) {
      throw fail("'\(key)' is set; Pivot applies plain LoRA adapters only")
    }
    let rsLoRA = c["use_rslora"] as? Bool ?? false
    let scale = Float(rsLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank))

    let weightsPath = (dir as NSString).appendingPathComponent(weightsFile)
    let file = try SafeTensorsFile(path: weightsPath)
    let linears = Dictionary(uniqueKeysWithValues: llm.namedLinears())
    var pairs: [String: (a: String?, b: String?)] = [:]
    for key in file.entries.keys.sorted() {
      var path = key.hasPrefix(keyPrefix) ? String(key.dropFirst(keyPrefix.count)) : key
      let isA: Bool
      if path.hasSuffix(".lora_A.weight") { isA = true } else if path.hasSuffix(".lora_B.weight") { isA = false } else {
        throw ModelLoadError(file: weightsPath, reason: "tensor '\(key)' is not a lora_A/lora_B weight", hint: "Pivot applies plain LoRA adapters only")
      }
      path.removeLast(".lora_A.weight".count)
      path = path.replacingOccurrences(of: ".default", with: "")  // an unsaved state dict's adapter name
      var entry = pairs[path] ?? (nil, nil)
      if isA { entry.a = key } else { entry.b = key }
      pairs[path] = entry
    }
    var problems: [String] = []
    for (path, keys) in pairs.sorted(by: { $0.key < $1.key }) {
      guard let linear = linears[path] else { problems.append("'\(path)' is not a Linear of \(modelName)"); continue }
      guard let a = keys.a, let b = keys.b else { problems.append("'\(path)' has only one of lora_A and lora_B"); continue }
      let (outF, inF) = (linear.weight.shape[0], linear.weight.shape[1])
      if file.entries[a]!.shape != [rank, inF] { problems.append("'\(a)' has shape \(file.entries[a]!.shape), \(modelName)'s \(path) needs [\(rank), \(inF)]") }
      if file.entries[b]!.shape != [outF, rank] { problems.append("'\(b)' has shape \(file.entries[b]!.shape), \(modelName)'s \(path) needs [\(outF), \(rank)]") }
      if linear.hasAdapter { problems.append("'\(path)' of \(modelName) already has an adapter") }
    }
    if let targets = c["target_modules"] {
      let output = llm.lmHead == nil ? "" : "lm_head"
      for path in linears.keys.sorted() where selects(targets, path, isOutputLayer: path == output) && pairs[path] == nil {
        problems.append("target_modules selects '\(path)' but \(weightsFile) has no adapter for it")
      }
    }
    if pairs.isEmpty { problems.append("\(weightsFile) holds no adapter tensors") }
    if !problems.isEmpty {
      throw ModelLoadError(file: dir, reason: "this adapter is not for \(modelName):\n" + problems.prefix(8).map { "  - \($0)" }.joined(separator: "\n")
        + (problems.count > 8 ? "\n  - … \(problems.count - 8) more" : ""), hint: "apply it to the base model it was trained on")
    }
    let paths = pairs.keys.sorted()
    if let recorded = file.metadata[fingerprintKey] {
      let actual = fingerprint(llm, paths: paths)
      guard actual == recorded else {
        throw ModelLoadError(file: dir, reason: "this adapter was trained on another base than \(modelName) (base fingerprint \(recorded.prefix(12))…, \(modelName) has \(actual.prefix(12))…)",
                             hint: "apply it to the base it was trained on; a merged model already holds its adapter")
      }
    }
    var rng = PivotRNG(seed: 0)
    for path in paths {
      let linear = linears[path]!
      withoutInitialization { linear.attachAdapter(rank: rank, scale: scale, dropout: 0, seed: LoRA.pathSeed(path), rng: &rng) }
      linear.loraA!.copy(from: try file.tensor(pairs[path]!.a!))
      linear.loraB!.copy(from: try file.tensor(pairs[path]!.b!))
    }
    return paths
  }
}
