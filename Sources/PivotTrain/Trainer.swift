import Foundation
import PivotModels
import PivotNN
import PivotTensor

/// What a run reports; the CLI turns it into a table, a progress bar and log lines.
public enum TrainEvent {
  case parameters([ParameterRow])
  case resumed(step: Int, from: String)
  case step(StepMetrics)
  case evaluated(step: Int, loss: Double)
  /// Caption ranking at an evaluation (`data.rank_shards`): rank_top1_en, rank_top5_zh, ….
  case ranked(step: Int, metrics: [String: Double])
  case checkpoint(step: Int, path: String)
  case interrupted(step: Int)
}

public struct ParameterRow: Sendable {
  public var module: String
  public var trainable: Int
  public var frozen: Int
  /// Bytes of weights, gradients and optimizer moments this module holds.
  public var weightBytes: Int, gradientBytes: Int, optimizerBytes: Int
  public init(module: String, trainable: Int = 0, frozen: Int = 0, weightBytes: Int = 0, gradientBytes: Int = 0, optimizerBytes: Int = 0) {
    self.module = module
    self.trainable = trainable
    self.frozen = frozen
    self.weightBytes = weightBytes
    self.gradientBytes = gradientBytes
    self.optimizerBytes = optimizerBytes
  }
}

public struct StepMetrics: Sendable {
  public var step: Int, maxSteps: Int
  public var loss: Double, lr: Double, gradNorm: Double
  public var seconds: Double, tokensPerSecond: Double
  public var countedTokens: Int, badSamples: Int, truncated: Int
}

public enum TrainError: Error, CustomStringConvertible {
  case nonFinite(step: Int, loss: Double, lastCheckpoint: String?)
  public var description: String {
    switch self {
    case .nonFinite(let step, let loss, let last):
      "loss became \(loss) at step \(step); stopped without saving. "
        + (last.map { "The last good checkpoint is \($0)." } ?? "No checkpoint was written yet.")
        + " Lower optimizer.lr, raise optimizer.warmup_steps or set optimizer.grad_clip."
    }
  }
}

/// Set by SIGINT or SIGTERM (what `kill` and schedulers send): the loop finishes its step,
/// writes a checkpoint and returns; the process then exits 128 + the signal (130, 143).
public enum Interrupt {
  nonisolated(unsafe) public static var requested = false
  nonisolated(unsafe) public static var signalNumber: Int32 = 0
  public static func install() {
    for sig in [SIGINT, SIGTERM] {
      signal(sig) { received in
        if Interrupt.requested { exit(128 + received) }  // a second signal leaves at once
        Interrupt.signalNumber = received
        Interrupt.requested = true
      }
    }
  }
  /// The exit status of an interrupted run.
  public static var exitStatus: Int32 { 128 + (signalNumber == 0 ? SIGINT : signalNumber) }
}

/// The training loop for every stage: gradient accumulation, clipping, schedule, AdamW,
/// evaluation, metrics, atomic checkpoints and exact resume.
public final class Trainer {
  public let recipe: Recipe
  public let model: any TrainableModel
  public let source: BatchSource
  public let makeEvalSource: (() throws -> BatchSource)?
  public let optimizer: AdamW
  public let base: [BaseReference]
  public private(set) var step = 0
  public var rng: PivotRNG
  public var lastCheckpoint: String?
  /// Caption ranking run at each evaluation, when the recipe names `data.rank_shards`.
  public var rankEvaluation: (() throws -> [String: Double])?
  /// Called when the run ends normally, to write the complete model (e.g. `final/`).
  public var onFinish: ((String) throws -> Void)?
  /// Asked before each step: true saves a checkpoint and returns (SIGINT/SIGTERM by default;
  /// tests stop one trainer this way without touching the process-wide flag others read).
  public var stopRequested: () -> Bool = { Interrupt.requested }

  public init(recipe: Recipe, model: any TrainableModel, source: BatchSource, makeEvalSource: (() throws -> BatchSource)? = nil, base: [BaseReference] = []) throws {
    self.recipe = recipe
    self.model = model
    self.source = source
    self.makeEvalSource = makeEvalSource
    self.base = base
    try model.freeze()
    try model.unfreeze(recipe.trainablePatterns(bridge: (model as? ChatModel)?.bridgePatterns))
    if !recipe.frozen.isEmpty { try model.freeze(recipe.frozen) }
    try Trainer.trainAdaptersOnly(model, recipe: recipe)
    if recipe.model.frozenDtype == "bf16" { model.storeFrozenWeightsInBF16() }
    model.recomputedLayers = recipe.model.recomputeLayers
    optimizer = AdamW(parameters: model.trainableParameters(), groups: recipe.parameterGroups,
                      beta1: Float(recipe.optimizer.beta1), beta2: Float(recipe.optimizer.beta2), eps: Float(recipe.optimizer.eps))
    rng = PivotRNG(seed: recipe.seed)
  }

  /// With `lora:`, the adapters train and the weights (and biases) they adapt are frozen, as
  /// PEFT's `bias: none` has it. A `trainable` pattern that names an adapted weight is an error.
  static func trainAdaptersOnly(_ model: any TrainableModel, recipe: Recipe) throws {
    guard recipe.lora != nil else { return }
    let adapted = model.adaptedLinears()
    if recipe.trainable != nil, let (name, _) = adapted.first(where: { $0.1.weight.requiresGrad }) {
      throw RecipeError(file: recipe.file, line: nil, key: "trainable",
                        message: "'\(name).weight' is adapted by lora.targets and cannot also train in full; drop it from trainable or from lora.targets")
    }
    for (_, linear) in adapted {
      linear.weight.requiresGrad = false
      linear.bias?.requiresGrad = false
      linear.loraA?.requiresGrad = true
      linear.loraB?.requiresGrad = true
    }
  }

  /// Parameter counts and memory per top-level part (and per second-level part of big ones).
  public func parameterRows() -> [ParameterRow] {
    var rows: [String: ParameterRow] = [:]
    var order: [String] = []
    for (name, t) in model.namedParameters() {
      let parts = name.split(separator: ".")
      let part = parts.count > 2 && ["language_model", "vision_tower", "model"].contains(String(parts[0]))
        ? parts.prefix(2).joined(separator: ".") : String(parts[0])
      let key = LoRA.isAdapterName(name) ? "\(part) (lora)" : part
      if rows[key] == nil { rows[key] = ParameterRow(module: key, trainable: 0, frozen: 0, weightBytes: 0, gradientBytes: 0, optimizerBytes: 0); order.append(key) }
      if t.requiresGrad {
        rows[key]!.trainable += t.count
        rows[key]!.gradientBytes += t.count * 4
        rows[key]!.optimizerBytes += t.count * 8
      } else {
        rows[key]!.frozen += t.count
      }
      rows[key]!.weightBytes += t.count * (t.bf16Values == nil ? 4 : 2)
    }
    return order.map { rows[$0]! }
  }

  public func resume(from dir: String) throws {
    let state = try Checkpoint.readState(dir)
    for ref in state.base { try ref.verify() }
    try Checkpoint.loadParameters(dir, into: model.trainableParameters())
    try Checkpoint.loadOptimizer(dir, into: optimizer, step: state.step)
    try source.restoreState(state.dataState)
    rng = state.rng
    step = state.step
    lastCheckpoint = dir
  }

  public func save(loss: Double?) throws -> String {
    let dir = (recipe.output as NSString).appendingPathComponent(Checkpoint.directoryName(step: step))
    let state = CheckpointState(step: step, dataState: try source.saveState(), rng: rng, recipe: recipe.source, recipeFile: recipe.file,
                                base: base, trainable: model.trainableParameters().map(\.0), loss: loss)
    try Checkpoint.save(to: dir, parameters: model.trainableParameters(), optimizer: optimizer, state: state)
    Checkpoint.prune(recipe.output, keep: recipe.keepCheckpoints)
    lastCheckpoint = dir
    return dir
  }

  /// Mean loss over `recipe.evalBatches` batches of a fresh evaluation source, without gradients.
  public func evaluate() throws -> Double? {
    try MatmulPrecision.with(recipe.model.matmul) { try evaluateUnderPrecision() }
  }

  private func evaluateUnderPrecision() throws -> Double? {
    guard let make = makeEvalSource else { return nil }
    let src = try make()
    var total = 0.0, counted = 0
    try noGrad {
      for _ in 0..<recipe.evalBatches {
        let b = try src.next()
        let (loss, n) = model.loss(b)
        total += Double(loss.item) * Double(n)
        counted += n
      }
    }
    return counted == 0 ? nil : total / Double(counted)
  }

  /// Trains to `maxSteps`, every product at the recipe's `model.matmul` precision.
  public func run(onEvent: (TrainEvent) -> Void) throws {
    try MatmulPrecision.with(recipe.model.matmul) { try runSteps(onEvent: onEvent) }
  }

  private func runSteps(onEvent: (TrainEvent) -> Void) throws {
    try FileManager.default.createDirectory(atPath: recipe.output, withIntermediateDirectories: true)
    Checkpoint.removeStaleTemporaries(in: recipe.output)
    let metrics = try MetricsLog(directory: recipe.output, append: step > 0)
    if step > 0 { try metrics.truncate(after: step) }
    onEvent(.parameters(parameterRows()))
    let peak = Float(recipe.optimizer.lr)
    var lastLoss: Double?
    var logged = step, evaluated = step, saved = step
    let title = "\(recipe.name) (\(recipe.stage.rawValue))"
    // The step's records: a metrics line, an evaluation and a checkpoint at their intervals,
    // and all three at the run's last step, whether max_steps or the end of the data ends it.
    func record(_ m: StepMetrics?, last: Bool) throws {
      if let m, step % recipe.logEvery == 0 || last, logged != step {
        metrics.write(["step": step, "loss": m.loss, "lr": m.lr, "grad_norm": m.gradNorm, "seconds": m.seconds,
                       "tokens_per_s": m.tokensPerSecond, "tokens": m.countedTokens, "bad_samples": m.badSamples, "truncated": m.truncated])
        metrics.drawPlot(title: title)
        logged = step
      }
      if recipe.evalEvery > 0 && (step % recipe.evalEvery == 0 || last) && evaluated != step {
        evaluated = step
        if let e = try evaluate() {
          metrics.write(["step": step, "eval_loss": e, "eval_ppl": Foundation.exp(e)])
          metrics.drawPlot(title: title)
          onEvent(.evaluated(step: step, loss: e))
        }
        if let rankEvaluation {
          let ranked = try MatmulPrecision.with(recipe.model.matmul) { try noGrad { try rankEvaluation() } }
          var record: [String: Any] = ["step": step]
          for (k, v) in ranked { record[k] = v }
          metrics.write(record)
          onEvent(.ranked(step: step, metrics: ranked))
        }
      }
      if ((recipe.saveEvery > 0 && step % recipe.saveEvery == 0) || last) && saved != step {
        let dir = try save(loss: lastLoss)
        saved = step
        onEvent(.checkpoint(step: step, path: dir))
      }
    }
    var lastMetrics: StepMetrics?
    var dataEnded = false
    while step < recipe.maxSteps && !dataEnded {
      if stopRequested() {
        let dir = try save(loss: lastLoss)
        onEvent(.checkpoint(step: step, path: dir))
        onEvent(.interrupted(step: step))
        return
      }
      let t0 = Date()
      optimizer.zeroGrad()
      var lossSum = 0.0, counted = 0, truncated = 0, microBatches = 0
      for micro in 0..<recipe.gradAccum {
        LoRADropout.stepSeed = recipe.seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(step * recipe.gradAccum + micro)
        let batch: TrainBatch
        do { batch = try source.next() } catch is EndOfData {
          dataEnded = true
          break
        }
        truncated += batch.truncated
        let (loss, n) = model.loss(batch)
        let value = Double(loss.item)
        if !value.isFinite { throw TrainError.nonFinite(step: step + 1, loss: value, lastCheckpoint: lastCheckpoint) }
        scale(loss, 1 / Float(recipe.gradAccum)).backward()
        lossSum += value
        counted += n
        microBatches += 1
      }
      if microBatches == 0 { break }
      // A last step short of micro-batches: the gradient is their mean, as for a whole step.
      if microBatches < recipe.gradAccum { optimizer.scaleGrads(Float(recipe.gradAccum) / Float(microBatches)) }
      let loss = lossSum / Double(microBatches)
      let norm = recipe.optimizer.gradClip > 0 ? optimizer.clipGradNorm(Float(recipe.optimizer.gradClip)) : optimizer.gradNorm()
      if !norm.isFinite { throw TrainError.nonFinite(step: step + 1, loss: Double(norm), lastCheckpoint: lastCheckpoint) }
      let lr = recipe.schedule.lr(peak: peak, step: step)
      optimizer.step(lr: lr)
      step += 1
      lastLoss = loss
      let seconds = Date().timeIntervalSince(t0)
      let m = StepMetrics(step: step, maxSteps: recipe.maxSteps, loss: loss, lr: Double(lr), gradNorm: Double(norm), seconds: seconds,
                          tokensPerSecond: Double(counted) / max(seconds, 1e-9), countedTokens: counted, badSamples: source.badSamples, truncated: truncated)
      lastMetrics = m
      onEvent(.step(m))
      try record(m, last: step == recipe.maxSteps || dataEnded)
    }
    // The data ran out between steps: the step before is the last.
    if dataEnded && step > 0 { try record(lastMetrics, last: true) }
    try onFinish?(recipe.output)
  }
}
