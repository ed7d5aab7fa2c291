import Foundation
import PivotModels
import PivotNN
import PivotTensor
@testable import PivotTrain
import Testing

/// Deterministic token batches whose whole state is an RNG: enough to prove exact resume.
final class SyntheticSource: BatchSource {
  var rng: PivotRNG
  let vocab: Int, b: Int, t: Int
  var badSamples = 0
  init(seed: UInt64, vocab: Int, b: Int = 2, t: Int = 12) {
    rng = PivotRNG(seed: seed)
    self.vocab = vocab
    self.b = b
    self.t = t
  }
  func next() throws -> TrainBatch {
    // A learnable pattern: each row counts upward from a random start.
    var ids: [Int32] = []
    for _ in 0..<b {
      let start = Int(rng.next() % UInt64(vocab))
      ids += (0..<t).map { Int32((start + $0) % vocab) }
    }
    return TrainBatch(ids: ids, labels: ids, batch: b, length: t)
  }
  func saveState() throws -> String { String(decoding: try JSONEncoder().encode(rng), as: UTF8.self) }
  func restoreState(_ state: String) throws { rng = try JSONDecoder().decode(PivotRNG.self, from: Data(state.utf8)) }
}

func tinyDecoder() -> DecoderLM {
  var c = DecoderConfig()
  c.family = .qwen2
  c.vocabSize = 48; c.hiddenSize = 32; c.intermediateSize = 64; c.numHiddenLayers = 2
  c.numAttentionHeads = 4; c.numKeyValueHeads = 2; c.tieWordEmbeddings = true
  return DecoderLM(c, seed: 5)
}

func tempDir(_ tag: String) -> String {
  let d = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-train-\(tag)-\(getpid())").path
  try? FileManager.default.removeItem(atPath: d)
  return d
}

func recipe(output: String, steps: Int, saveEvery: Int = 0, extra: String = "") throws -> Recipe {
  try Recipe.parse("""
    stage: text
    \(extra)
    seed: 3
    batch_size: 2
    max_steps: \(steps)
    save_every: \(saveEvery)
    keep_checkpoints: 3
    output: \(output)
    optimizer:
      lr: 3e-3
      warmup_steps: 2
      schedule: cosine
      grad_clip: 1.0
    data:
      sources:
        - shards: synthetic
    """, file: "test.yaml")
}

@Suite("Training", .serialized)
struct TrainTests {
  @Test func resumeGivesBitIdenticalLosses() throws {
    let full = tempDir("full"), part = tempDir("part")
    defer { try? FileManager.default.removeItem(atPath: full); try? FileManager.default.removeItem(atPath: part) }
    var uninterrupted: [Double] = []
    let t1 = try Trainer(recipe: try recipe(output: full, steps: 8), model: tinyDecoder(), source: SyntheticSource(seed: 9, vocab: 48))
    try t1.run { if case .step(let m) = $0 { uninterrupted.append(m.loss) } }
    #expect(uninterrupted.count == 8)
    #expect(uninterrupted.last! < uninterrupted.first!, "the model should learn the counting pattern")

    // Ctrl-C after four steps (the loop saves and returns), then a fresh model and source resume.
    var first: [Double] = []
    var interrupted = false
    let t2 = try Trainer(recipe: try recipe(output: part, steps: 8), model: tinyDecoder(), source: SyntheticSource(seed: 9, vocab: 48))
    // This trainer's own stop request: the process-wide flag would stop other suites' runs too.
    var stop = false
    t2.stopRequested = { stop }
    try t2.run { event in
      if case .step(let m) = event { first.append(m.loss); if m.step == 4 { stop = true } }
      if case .interrupted = event { interrupted = true }
    }
    #expect(interrupted && first.count == 4)
    let ckpt = (part as NSString).appendingPathComponent("step-000004")
    #expect(FileManager.default.fileExists(atPath: ckpt + "/model.safetensors"))
    #expect(FileManager.default.fileExists(atPath: ckpt + "/optimizer.safetensors"))
    var rest: [Double] = []
    let t3 = try Trainer(recipe: try recipe(output: part, steps: 8), model: tinyDecoder(), source: SyntheticSource(seed: 12345, vocab: 48))
    try t3.resume(from: ckpt)
    try t3.run { if case .step(let m) = $0 { rest.append(m.loss) } }
    #expect(first + rest == uninterrupted, "resumed losses \(first + rest) vs \(uninterrupted)")
    // The metrics file holds each step once, and a plot sits beside it.
    let records = MetricsLog.read(part + "/metrics.jsonl").compactMap { $0["step"] as? Int }
    #expect(records == Array(1...8))
    #expect(FileManager.default.fileExists(atPath: part + "/loss.svg"))
    let cmp = MetricsLog.compare(run: part + "/metrics.jsonl", reference: full + "/metrics.jsonl")
    #expect(cmp?.maxAbs == 0 && cmp?.steps == 8)
  }

  /// `model.frozen_dtype: bf16`: frozen matrices keep only bfloat16 (half the bytes in the
  /// parameter table), trainable ones stay float32, and the run learns as the float32 run does.
  @Test func frozenWeightsInBF16() throws {
    let dir = tempDir("bf16")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let frozen = "frozen: [\"model.embed_tokens.*\", \"model.layers.0.*\"]"
    var losses: [String: [Double]] = [:]
    for dtype in ["f32", "bf16"] {
      let model = tinyDecoder()
      let r = try recipe(output: dir + "-" + dtype, steps: 6, extra: "\(frozen)\nmodel:\n  frozen_dtype: \(dtype)")
      let t = try Trainer(recipe: r, model: model, source: SyntheticSource(seed: 9, vocab: 48))
      for (name, p) in model.namedParameters() {
        let half = dtype == "bf16" && !p.requiresGrad && p.rank == 2
        #expect((p.bf16Values != nil) == half, "\(dtype): \(name)")
      }
      let frozenBytes = t.parameterRows().reduce(0) { $0 + $1.weightBytes }
      let full = model.namedParameters().reduce(0) { $0 + $1.1.count * 4 }
      let halved = model.namedParameters().filter { !$0.1.requiresGrad && $0.1.rank == 2 }.reduce(0) { $0 + $1.1.count * 2 }
      #expect(frozenBytes == (dtype == "bf16" ? full - halved : full))
      try t.run { if case .step(let m) = $0 { losses[dtype, default: []].append(m.loss) } }
      try? FileManager.default.removeItem(atPath: dir + "-" + dtype)
    }
    let (a, b) = (losses["f32"]!, losses["bf16"]!)
    #expect(a.count == 6 && b.count == 6)
    // bfloat16 keeps 8 bits of mantissa: the frozen half of the model moves each loss a little.
    for (x, y) in zip(a, b) { #expect(abs(x - y) < 2e-2 * abs(x), "f32 \(x) vs bf16 \(y)") }
  }

  /// `model.recompute_layers`: the trainer reruns that many layers in backward and the run's
  /// losses stay those of the run that keeps every activation; bad values name the key.
  @Test func recomputedLayersKeepTheLosses() throws {
    let dir = tempDir("recompute")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var losses: [String: [Double]] = [:]
    for setting in ["0", "1", "all"] {
      let model = tinyDecoder()
      let r = try recipe(output: dir + "-" + setting, steps: 5, extra: "model:\n  recompute_layers: \(setting)")
      let t = try Trainer(recipe: r, model: model, source: SyntheticSource(seed: 4, vocab: 48))
      #expect(model.recomputedLayers == (setting == "all" ? Int.max : Int(setting)!))
      try t.run { if case .step(let m) = $0 { losses[setting, default: []].append(m.loss) } }
      try? FileManager.default.removeItem(atPath: dir + "-" + setting)
    }
    #expect(losses["0"]!.count == 5)
    for setting in ["1", "all"] {
      for (x, y) in zip(losses["0"]!, losses[setting]!) { #expect(abs(x - y) <= 1e-5 * abs(x), "\(setting): \(y) vs \(x)") }
    }
    for bad in ["-1", "some"] {
      #expect(throws: RecipeError.self) { _ = try recipe(output: dir, steps: 1, extra: "model:\n  recompute_layers: \(bad)") }
    }
  }

  /// `model.matmul: bf16` reaches every product of the run (the losses move off the float32
  /// ones, by no more than bfloat16 rounding allows) and ends with the run: afterwards the
  /// same task multiplies in float32 again.
  @Test func bfloat16ProductsFollowTheRecipe() throws {
    let dir = tempDir("matmul")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var losses: [String: [Double]] = [:]
    for setting in ["fp32", "bf16"] {
      let r = try recipe(output: dir + "-" + setting, steps: 5, extra: "model:\n  matmul: \(setting)")
      #expect(r.model.matmul.rawValue == setting)
      let t = try Trainer(recipe: r, model: tinyDecoder(), source: SyntheticSource(seed: 4, vocab: 48))
      try t.run { if case .step(let m) = $0 { losses[setting, default: []].append(m.loss) } }
      #expect(MatmulPrecision.current == .float32)
      try? FileManager.default.removeItem(atPath: dir + "-" + setting)
    }
    #expect(losses["fp32"]!.count == 5 && losses["bf16"]!.count == 5)
    #expect(losses["fp32"]! != losses["bf16"]!, "bf16 products changed nothing")
    for (x, y) in zip(losses["fp32"]!, losses["bf16"]!) { #expect(abs(x - y) <= 1e-2 * abs(x), "bf16 \(y) vs fp32 \(x)") }
    #expect(throws: RecipeError.self) { _ = try recipe(output: dir, steps: 1, extra: "model:\n  matmul: fp16") }
  }

  @Test func interruptedCheckpointWriteLeavesThePreviousOne() throws {
    let out = tempDir("atomic")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let t = try Trainer(recipe: try recipe(output: out, steps: 2), model: tinyDecoder(), source: SyntheticSource(seed: 1, vocab: 48))
    try t.run { _ in }
    let good = out + "/step-000002"
    let before = try Data(contentsOf: URL(fileURLWithPath: good + "/model.safetensors"))
    // A write that dies after model.safetensors (an extra file into a missing folder fails).
    let state = try Checkpoint.readState(good)
    #expect(throws: (any Error).self) {
      try Checkpoint.save(to: good, parameters: t.model.trainableParameters(), optimizer: t.optimizer, state: state,
                          extraFiles: ["missing/dir/file": Data([1])])
    }
    #expect(try Data(contentsOf: URL(fileURLWithPath: good + "/model.safetensors")) == before)
    #expect(Checkpoint.list(out) == [good])
    let fresh = try Trainer(recipe: try recipe(output: out, steps: 3), model: tinyDecoder(), source: SyntheticSource(seed: 1, vocab: 48))
    try fresh.resume(from: good)
    #expect(fresh.step == 2)
  }

  @Test func nonFiniteLossStopsWithoutSaving() throws {
    let out = tempDir("nan")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let model = tinyDecoder()
    let t = try Trainer(recipe: try recipe(output: out, steps: 4, saveEvery: 2), model: model, source: SyntheticSource(seed: 1, vocab: 48))
    var steps = 0
    do {
      try t.run { event in
        if case .step = event {
          steps += 1
          // Poison a weight after step 2's checkpoint.
          if steps == 2 { model.model.norm.weight.ptr[0] = .nan }
        }
      }
      Issue.record("a NaN loss did not stop the run")
    } catch let e as TrainError {
      #expect("\(e)".contains("step 3"))
      #expect("\(e)".contains("step-000002"))
    }
    #expect(Checkpoint.list(out).map { ($0 as NSString).lastPathComponent } == ["step-000002"])
  }

  @Test func checkpointsArePruned() throws {
    let out = tempDir("prune")
    defer { try? FileManager.default.removeItem(atPath: out) }
    var r = try recipe(output: out, steps: 5, saveEvery: 1)
    r.keepCheckpoints = 2
    try Trainer(recipe: r, model: tinyDecoder(), source: SyntheticSource(seed: 1, vocab: 48)).run { _ in }
    #expect(Checkpoint.list(out).map { ($0 as NSString).lastPathComponent } == ["step-000004", "step-000005"])
  }

  @Test func sha256KnownAnswers() {
    var a = SHA256()
    #expect(a.finalize() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    var b = SHA256()
    b.update(Data("abc".utf8))
    #expect(b.finalize() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    var c = SHA256()
    let long = Data(String(repeating: "a", count: 1000).utf8)
    c.update(long.prefix(333)); c.update(long.dropFirst(333))
    #expect(c.finalize() == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
  }
}

@Suite("Recipes")
struct RecipeTests {
  @Test func unknownKeyNamesKeyFileAndLine() {
    do {
      _ = try Recipe.parse("stage: align\nbatch_size: 4\noptimizer:\n  lr: 1e-4\n  momentum: 0.9\ndata:\n  sources:\n    - shards: a.tar\n", file: "Recipes/x.yaml")
      Issue.record("accepted an unknown key")
    } catch let e as RecipeError {
      #expect(e.key == "optimizer.momentum")
      #expect(e.file == "Recipes/x.yaml")
      #expect(e.line == 5)
      #expect("\(e)".contains("Recipes/x.yaml:5"))
    } catch { Issue.record("\(error)") }
  }

  @Test func wrongTypeNamesTheKey() {
    do {
      _ = try Recipe.parse("stage: align\nbatch_size: lots\ndata:\n  sources:\n    - shards: a.tar\n", file: "r.yaml")
      Issue.record("accepted a string batch size")
    } catch let e as RecipeError {
      #expect(e.key == "batch_size" && e.line == 2 && e.message.contains("integer"))
    } catch { Issue.record("\(error)") }
  }

  @Test func unknownStageAndMissingData() {
    #expect(throws: RecipeError.self) { try Recipe.parse("stage: pretrain\ndata:\n  sources:\n    - shards: a\n", file: "r.yaml") }
    #expect(throws: RecipeError.self) { try Recipe.parse("stage: align\n", file: "r.yaml") }
  }

  @Test func stageDefaults() throws {
    let r = try Recipe.parse("stage: align\ndata:\n  sources:\n    - shards: a\n      weight: 2\n", file: "r.yaml")
    #expect(r.trainablePatterns == ["query_tokens", "qformer.*", "language_projection.*"])
    #expect(r.data.sources[0].weight == 2)
  }
}

@Suite("Shipped recipes")
struct ShippedRecipeTests {
  static let recipesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Recipes").path

  /// Every recipe in Recipes/ parses, and each has its reference loss curve beside it.
  @Test func everyRecipeParsesAndHasAReferenceCurve() throws {
    let files = try FileManager.default.contentsOfDirectory(atPath: Self.recipesDir).filter { $0.hasSuffix(".yaml") }.sorted()
    #expect(files.count >= 3)
    for f in files {
      let r = try Recipe.load((Self.recipesDir as NSString).appendingPathComponent(f))
      #expect(!r.data.sources.isEmpty, "\(f)")
      let name = (f as NSString).deletingPathExtension
      let ref = (Self.recipesDir as NSString).appendingPathComponent("reference/\(name).jsonl")
      if name.hasPrefix("demo-") {
        let records = MetricsLog.read(ref)
        #expect(records.contains { $0["loss"] != nil }, "\(f) has no reference curve at reference/\(name).jsonl")
      }
    }
  }

  /// The demo's random toy ViT stays frozen in both stages: trained from scratch against stage 1's
  /// captions it lost colour (size alone was learned), and trained in stage 2 it kept colour in
  /// some runs only.
  @Test func demoKeepsItsToyVisionTowerFrozen() throws {
    func trainsVision(_ name: String) throws -> Bool {
      let r = try Recipe.load((Self.recipesDir as NSString).appendingPathComponent("\(name).yaml"))
      let frozen = r.frozen.contains { Glob.matches($0, "vision_tower.embeddings.patch_embedding.weight") }
      return !frozen && r.trainablePatterns.contains { Glob.matches($0, "vision_tower.embeddings.patch_embedding.weight") }
    }
    #expect(try !trainsVision("demo-1-align"))
    #expect(try !trainsVision("demo-2-instruct"))
  }
}

@Suite("Hardening")
struct HardeningTests {
  /// A killed run's temporary folders go at the next start; a live process's stay.
  @Test func staleTemporariesAreRemoved() throws {
    let out = tempDir("stale")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let fm = FileManager.default
    // PIDs above the kernel's maximum (4194304) never exist.
    for name in [".step-000004.tmp-999999999", ".final.tmp-999999998", ".step-000002.tmp-999999997.old", ".step-000006.tmp-\(getpid())", "step-000002"] {
      try fm.createDirectory(atPath: out + "/" + name, withIntermediateDirectories: true)
    }
    #expect(Checkpoint.removeStaleTemporaries(in: out) == [".final.tmp-999999998", ".step-000002.tmp-999999997.old", ".step-000004.tmp-999999999"])
    #expect(Set(try fm.contentsOfDirectory(atPath: out)) == [".step-000006.tmp-\(getpid())", "step-000002"])
  }

  @Test func recipesWithBOMCRLFOrDeepNesting() throws {
    let r = try Recipe.parse("\u{FEFF}stage: align\r\nbatch_size: 3\r\ndata:\r\n  sources:\r\n    - shards: a.tar\r\n", file: "win.yaml")
    #expect(r.batchSize == 3 && r.data.sources[0].shards == "a.tar")
    let deep = "data: " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "\n"
    do {
      _ = try Recipe.parse(deep, file: "deep.yaml")
      Issue.record("a recipe 100,000 levels deep was accepted")
    } catch let e as RecipeError {
      #expect(e.file == "deep.yaml" && e.message.contains("nested more than 64"))
    }
  }
}
