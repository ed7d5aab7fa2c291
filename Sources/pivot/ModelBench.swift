import ArgumentParser
import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor

/// The model phases of shared/bench/torch_ref.py (stage1, stage2, prefill, decode) on the same
/// composition, shapes, warm-up and repetition counts, with its JSON field names.
struct ModelBench {
  let scale: String
  let phase: String
  let configDir: String
  let threads: Int
  let dtype: String
  let warmupOverride: Int?
  let repsOverride: Int?
  /// An HF LLM folder whose weights replace the random LLM (same shapes as the scale's llm.json).
  let llmWeights: String?
  /// Training phases: how many LLM layers rerun in backward (activation recomputation).
  let recomputeLayers: Int
  /// Training phases: adapters on the LLM's projections (PEFT's r, alpha, target_modules).
  var lora: LoRASettings? = nil
  /// decode: sequences decoded together, one `decodeStep` a token for all (continuous batching).
  var streams = 1

  /// (warm-up, timed repetitions) per scale and phase, as torch_ref.py's DEFAULT_REPS.
  static let defaultReps: [String: [String: (Int, Int)]] = [
    "tiny": ["stage1": (5, 30), "stage2": (5, 30), "prefill": (5, 30), "decode": (3, 20)],
    "small": ["stage1": (2, 5), "stage2": (2, 5), "prefill": (2, 7), "decode": (1, 5)],
    "qwen0.5b": ["stage1": (2, 5), "stage2": (2, 4), "prefill": (2, 5), "decode": (1, 4)],
  ]
  static let decodeNewTokens = 32

  struct Setup {
    let model: ChatModel
    let batch: Int  // B
    let textLength: Int  // T
    let queries: Int  // Q
    let pixels: Tensor  // (B, 3, H, H)
    let text: [Int32]  // (B, T)
  }

  func build(batch overrideBatch: Int? = nil) throws -> Setup {
    let dir = (configDir as NSString).appendingPathComponent(scale)
    func section(_ name: String) throws -> AnyModelConfig {
      let file = (dir as NSString).appendingPathComponent(name + ".json")
      return try AnyModelConfig.parse(readJSONObject(file), file: file)
    }
    guard case .vision(let vision) = try section("vision"), case .qformer(let qformer) = try section("qformer"),
      case .decoder(let decoder) = try section("llm")
    else { throw ValidationError("\(dir): expected vision.json, qformer.json and llm.json of the matching model types") }
    let pivot = try readJSONObject((dir as NSString).appendingPathComponent("pivot.json"))
    guard let q = pivot["num_query_tokens"] as? Int, let b = pivot["batch_size"] as? Int, let t = pivot["text_len"] as? Int,
      let size = pivot["image_size"] as? Int
    else { throw ValidationError("\(dir)/pivot.json needs num_query_tokens, batch_size, text_len and image_size") }
    let config = ChatModelConfig(vision: vision, qformer: qformer, decoder: decoder, numQueryTokens: q, imageSize: size)
    let model = ChatModel(config, seed: 0)
    if let llmWeights {
      let weights = DecoderLM.sanitize(try ModelFolder.weights(llmWeights), config: decoder)
      try model.languageModel.load(weights, source: llmWeights, zeroCopy: true)
    }
    let batch = overrideBatch ?? b
    var rng = PivotRNG(seed: 1234)
    let pixels = Tensor(empty: [batch, 3, size, size])
    rng.fillNormal(pixels, std: 1)
    let vocab = UInt64(decoder.vocabSize)
    let text = (0..<(batch * t)).map { _ in Int32(rng.next() % vocab) }
    return Setup(model: model, batch: batch, textLength: t, queries: q, pixels: pixels, text: text)
  }

  func reps() -> (warmup: Int, reps: Int) {
    let (w, r) = Self.defaultReps[scale]?[phase] ?? (1, 3)
    return (warmupOverride ?? w, repsOverride ?? r)
  }

  func run() throws {
    switch phase {
    case "stage1": try train(stage: 1)
    case "stage2": try train(stage: 2)
    case "prefill": try prefillPhase()
    case "decode": try decodePhase()
    default: throw ValidationError("unknown phase \(phase)")
    }
  }

  func common(_ s: Setup) -> [String: Any] {
    [
      "scale": scale, "threads": threads, "blas_core": Threads.blasCore, "dtype": dtype, "impl": "pivot", "llm_weights": llmWeights ?? "random",
      "recompute_layers": recomputeLayers, "matmul": MatmulPrecision.current.rawValue, "amx": AMX.inUse,
      "params_vision": s.model.visionTower.parameters().reduce(0) { $0 + $1.count },
      "params_qformer": (s.model.qformer?.parameters().reduce(0) { $0 + $1.count } ?? 0) + (s.model.queryTokens?.count ?? 0),
      "params_proj": s.model.languageProjection?.parameters().reduce(0) { $0 + $1.count } ?? 0,
      "params_llm": s.model.languageModel.parameters().reduce(0) { $0 + $1.count },
    ]
  }

  /// Memory once the model is built (resident now, and the peak so far, which a conversion
  /// during the build may set), then the whole process's peak when the record is written.
  struct BuildMemory {
    let resident = BenchClock.currentRSSMiB(), peak = peakResidentMiB()
    var fields: [String: Any] {
      ["rss_after_build_mib": resident, "peak_rss_after_build_mib": peak, "peak_rss_mib": peakResidentMiB()]
    }
  }

  static func summary(_ times: [Double]) -> [String: Any] {
    let med = BenchClock.median(times), mn = times.min() ?? 0
    return [
      "seconds_median": med, "seconds_min": mn, "seconds_max": times.max() ?? 0, "reps": times.count,
      "seconds_all": times.map { ($0 * 1e6).rounded() / 1e6 },
      "median_s": med, "min_s": mn,
    ]
  }

  static func medians(_ rows: [[String: Double]]) -> [String: Double] {
    var out: [String: Double] = [:]
    for k in rows.first?.keys ?? [:].keys { out[k] = BenchClock.median(rows.map { $0[k]! }) }
    return out
  }

  // MARK: Training steps

  func train(stage: Int) throws {
    let t0 = BenchClock.now()
    let s = try build()
    let model = s.model
    let (b, t, q) = (s.batch, s.textLength, s.queries)
    try model.freeze()
    var trainable = ["query_tokens", "qformer.*", "language_projection.*"]
    if let lora {  // the bridge and the adapters train; the adapted weights stay frozen
      try model.attachLoRA(lora, seed: 0, source: "pivot bench")
      trainable += LoRA.adapterPatterns
    } else if stage == 2 {
      trainable.append("language_model.*")
    }
    try model.unfreeze(trainable)
    if dtype == "bf16" { model.storeFrozenWeightsInBF16() }
    model.languageModel.recomputedLayers = recomputeLayers
    let optimizer = AdamW(parameters: model.trainableParameters(), groups: [ParameterGroup(name: "all", patterns: ["*"], weightDecay: 0.01)])
    let buildSeconds = BenchClock.now() - t0
    BufferPool.shared.drain()
    let built = BuildMemory()
    // ids = [placeholder × Q ; text] per row, labels −100 on the image slot.
    var ids: [Int32] = [], labels: [Int32] = []
    for r in 0..<b {
      let row = Array(s.text[(r * t)..<((r + 1) * t)])
      ids += [Int32](repeating: model.config.imageTokenId, count: q) + row
      labels += [Int32](repeating: -100, count: q) + row
    }
    let length = q + t
    let slotRows = (0..<b).flatMap { r in (0..<q).map { r * length + $0 } }

    func step() -> ([String: Double], Float) {
      let t0 = BenchClock.now()
      optimizer.zeroGrad()
      let features = noGrad { model.visionTower.features(s.pixels) }
      let t1 = BenchClock.now()
      let soft = reshape(model.softTokens(imageFeatures: features), [b * q, model.languageModel.config.hiddenSize])
      let text = model.languageModel.embed(ids, shape: [b, length])
      let x = scatterRows(text, rows: slotRows, from: soft)
      let (loss, _) = model.languageModel.causalLMLoss(model.languageModel.hiddenStates(x), labels: labels)
      let t2 = BenchClock.now()
      loss.backward()
      let t3 = BenchClock.now()
      optimizer.step(lr: 1e-4)
      let t4 = BenchClock.now()
      return (["vision_fwd": t1 - t0, "qformer_llm_fwd_loss": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "total": t4 - t0], loss.item)
    }

    let (warmup, reps) = reps()
    eprint("[\(scale) stage\(stage)] build \(String(format: "%.1f", buildSeconds))s, warmup \(warmup), reps \(reps), BLAS core \(Threads.blasCore)")
    let calibBefore = BenchClock.calibrationGflops()
    var losses: [Float] = []
    for i in 0..<warmup {
      let (r, l) = step()
      losses.append(l)
      eprint(String(format: "  warmup %d: %.3fs loss %.4f", i, r["total"]!, l))
    }
    var rows: [[String: Double]] = []
    let meter = CPUMeter()
    for i in 0..<reps {
      let (r, l) = step()
      losses.append(l)
      rows.append(r)
      eprint(String(format: "  rep %d: %.3fs loss %.4f", i, r["total"]!, l))
    }
    let cores = meter.effectiveCores()
    let calibAfter = BenchClock.calibrationGflops()
    let sum = Self.summary(rows.map { $0["total"]! })
    var record = common(s).merging(sum) { a, _ in a }.merging(built.fields) { a, _ in a }
    record.merge([
      "lora_rank": lora?.rank ?? 0, "lora_alpha": lora?.alpha ?? 0, "lora_targets": lora?.targets ?? [],
      "phase": "stage\(stage)", "metric": "train_step", "B": b, "T": t, "num_query_tokens": q, "seq_len": length,
      "text_tokens_per_s": Double(b * t) / (sum["seconds_median"] as! Double),
      "breakdown_median_s": Self.medians(rows),
      "trainable_params": optimizer.parameterCount, "optimizer": "AdamW(lr=1e-4, wd=0.01) flat buffers",
      "losses": losses.map { Double(($0 * 1e5).rounded() / 1e5) }, "build_s": buildSeconds,
      "effective_cores": cores,
      "calib_gflops_before": calibBefore, "calib_gflops_after": calibAfter,
    ]) { a, _ in a }
    emitJSON(record)
  }

  // MARK: Inference

  func inferenceSetup() throws -> Setup {
    let s = try build(batch: 1)
    try s.model.freeze()
    if dtype == "bf16" { s.model.storeFrozenWeightsInBF16() }
    s.model.languageModel.stackFrozenProjections()
    BufferPool.shared.drain()
    return s
  }

  /// ViT, Q-Former, projection and the LLM over Q + T positions into `cache`; returns the timings and the greedy next token.
  func prefill(_ s: Setup, cache: KVCache) -> ([String: Double], Int32) {
    let model = s.model, lm = s.model.languageModel
    return noGrad {
      let t0 = BenchClock.now()
      let features = model.visionTower.features(s.pixels)
      let t1 = BenchClock.now()
      let soft = model.softTokens(imageFeatures: features)  // (1, Q, D)
      let t2 = BenchClock.now()
      let x = concat([soft, lm.embed(s.text, shape: [1, s.textLength])], axis: 1)  // (1, Q + T, D)
      cache.reset()
      let h = lm.hiddenStates(x, cache: cache)
      let last = slice(reshape(h, [s.queries + s.textLength, lm.config.hiddenSize]), axis: 0, (s.queries + s.textLength - 1)..<(s.queries + s.textLength))
      let next = argmax(lm.logits(last))
      let t3 = BenchClock.now()
      return (["vision": t1 - t0, "qformer_proj": t2 - t1, "llm": t3 - t2, "total": t3 - t0], next)
    }
  }

  func argmax(_ logits: Tensor) -> Int32 {
    let p = logits.ptr
    var best = 0
    for i in 1..<logits.count where p[i] > p[best] { best = i }
    return Int32(best)
  }

  func prefillPhase() throws {
    let t0 = BenchClock.now()
    let s = try inferenceSetup()
    let buildSeconds = BenchClock.now() - t0
    let built = BuildMemory()
    let length = s.queries + s.textLength
    let cache = KVCache(config: s.model.languageModel.config, capacity: length + Self.decodeNewTokens)
    let (warmup, reps) = reps()
    eprint("[\(scale) prefill] build \(String(format: "%.1f", buildSeconds))s, warmup \(warmup), reps \(reps), BLAS core \(Threads.blasCore)")
    let calibBefore = BenchClock.calibrationGflops()
    for _ in 0..<warmup { _ = prefill(s, cache: cache) }
    var rows: [[String: Double]] = []
    let meter = CPUMeter()
    for i in 0..<reps {
      let (r, _) = prefill(s, cache: cache)
      rows.append(r)
      eprint(String(format: "  rep %d: %.4fs", i, r["total"]!))
    }
    let cores = meter.effectiveCores()
    let calibAfter = BenchClock.calibrationGflops()
    let sum = Self.summary(rows.map { $0["total"]! })
    let llm = BenchClock.median(rows.map { $0["llm"]! })
    var record = common(s).merging(sum) { a, _ in a }.merging(built.fields) { a, _ in a }
    record.merge([
      "phase": "prefill", "metric": "prefill", "B": 1, "T": s.textLength, "num_query_tokens": s.queries, "seq_len": length,
      "tokens_per_s": Double(length) / (sum["seconds_median"] as! Double),
      "llm_only_seconds_median": llm, "llm_only_tokens_per_s": Double(length) / llm,
      "breakdown_median_s": Self.medians(rows), "build_s": buildSeconds,
      "effective_cores": cores,
      "calib_gflops_before": calibBefore, "calib_gflops_after": calibAfter,
    ]) { a, _ in a }
    emitJSON(record)
  }

  func decodePhase() throws {
    let t0 = BenchClock.now()
    let s = try inferenceSetup()
    let buildSeconds = BenchClock.now() - t0
    let built = BuildMemory()
    let lm = s.model.languageModel
    let length = s.queries + s.textLength
    let n = Self.decodeNewTokens
    let cache = KVCache(config: lm.config, capacity: length + n)

    let caches = (0..<streams).map { _ in KVCache(config: lm.config, capacity: length + n) }
    func runOnce() -> (Double, [Int32]) {
      if streams > 1 {  // each sequence prefilled alone, then decoded beside the others
        var next = caches.map { prefill(s, cache: $0).1 }
        var tokens: [Int32] = []
        let t0 = BenchClock.now()
        for _ in 0..<n {
          let logits = lm.decodeStep(next, caches: caches)  // (streams, V)
          next = (0..<streams).map { argmax(slice(logits, axis: 0, $0..<($0 + 1))) }
          tokens.append(next[0])
        }
        return (BenchClock.now() - t0, tokens)
      }
      var (_, next) = prefill(s, cache: cache)
      var tokens: [Int32] = []
      let t0 = BenchClock.now()
      noGrad {
        for _ in 0..<n {
          let h = lm.hiddenStates(lm.embed([next], shape: [1, 1]), cache: cache)
          next = argmax(lm.logits(reshape(h, [1, lm.config.hiddenSize])))
          tokens.append(next)
        }
      }
      return (BenchClock.now() - t0, tokens)
    }

    let (warmup, reps) = reps()
    eprint("[\(scale) decode] build \(String(format: "%.1f", buildSeconds))s, warmup \(warmup), reps \(reps), BLAS core \(Threads.blasCore), \(dtype), \(streams) stream(s)")
    let calibBefore = BenchClock.calibrationGflops()
    for _ in 0..<warmup { _ = runOnce() }
    var times: [Double] = []
    var tokens: [Int32] = []
    let meter = CPUMeter()
    for i in 0..<reps {
      let (dt, toks) = runOnce()
      times.append(dt)
      tokens = toks
      eprint(String(format: "  rep %d: %.3fs (%.1f tok/s)", i, dt, Double(n * streams) / dt))
    }
    let cores = meter.effectiveCores()
    let calibAfter = BenchClock.calibrationGflops()
    let sum = Self.summary(times)
    let med = sum["seconds_median"] as! Double
    var record = common(s).merging(sum) { a, _ in a }.merging(built.fields) { a, _ in a }
    record.merge([
      "phase": "decode", "metric": streams > 1 ? "decode_step_batched" : "decode_manual_kv_loop", "B": 1, "streams": streams,
      "prompt_len": length, "new_tokens": n,
      "final_cache_len": length + n, "tokens_per_s": Double(n * streams) / med, "ms_per_token": 1000 * med / Double(n),
      "first_tokens": tokens.prefix(8).map { Int($0) }, "build_s": buildSeconds,
      "effective_cores": cores,
      "calib_gflops_before": calibBefore, "calib_gflops_after": calibAfter,
    ]) { a, _ in a }
    emitJSON(record)
  }
}

/// Process CPU time over wall time since creation: how many cores the timed loop kept busy.
struct CPUMeter {
  let wall0 = BenchClock.now()
  let cpu0 = CPUMeter.cpuSeconds()

  static func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) * 1e-6 }
    return s(usage.ru_utime) + s(usage.ru_stime)
  }

  func effectiveCores() -> Double {
    let wall = BenchClock.now() - wall0
    return wall > 0 ? (Self.cpuSeconds() - cpu0) / wall : 0
  }
}
