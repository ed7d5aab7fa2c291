import ArgumentParser
import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor
import PivotTrain

struct Train: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run a training recipe (stage text, align or instruct).",
    discussion: "Shows a parameter table, a progress bar and evaluation lines; writes metrics.jsonl, loss.svg and checkpoints to the recipe's output. Ctrl-C writes a checkpoint and exits.")

  @Argument(help: "Recipe file (YAML, see Recipes/README.md).") var recipe: String
  @Option(help: "Continue from this checkpoint folder.") var resume: String?
  @Option(help: "After the run, compare its losses with a reference metrics.jsonl.") var compare: String?
  @Option(help: "Override the recipe's max_steps.") var maxSteps: Int?

  func validate() throws {
    if let maxSteps, maxSteps < 1 { throw ValidationError("--max-steps must be at least 1, not \(maxSteps)") }
  }

  var trainerStartsFresh: Bool { resume == nil }

  func run() throws {
    var r = try Recipe.load(recipe)
    if let maxSteps {
      r.maxSteps = maxSteps
      r.maxStepsGiven = true
    }
    Threads.set(r.threads > 0 ? r.threads : ProcessInfo.processInfo.activeProcessorCount)
    let setup = try RunSetup(recipe: r)
    if let table = setup.built.qformerInitTable, trainerStartsFresh { eprint("Q-Former initialised from \(r.model.qformerInit!):\n" + table) }
    if let epochs = r.epochs {  // the run's length (and the LR schedule's) follows from the data
      let counting = ProgressBar(label: "counting samples", total: nil, unit: "shards")
      let samples = try setup.countTrainingSamples { done, shards, samples in counting.update(done, detail: "of \(shards), \(samples) samples") }
      counting.finish(detail: "\(samples) samples")
      let all = r.epochSteps(over: samples) ?? r.maxSteps
      r.maxSteps = r.steps(forEpochsOver: samples)
      eprint("epochs: \(epochs) × \(samples) samples at \(r.batchSize * r.gradAccum) per step: \(all) steps"
             + (r.maxSteps < all ? "; max_steps stops the run at \(r.maxSteps)" : ""))
    }
    let trainer = try Trainer(recipe: r, model: setup.model, source: try setup.trainingSource(),
                              makeEvalSource: setup.evalSourceFactory(), base: setup.built.base)
    trainer.onFinish = { try setup.saveFinal(into: $0) }
    trainer.rankEvaluation = setup.rankEvaluation()
    if let resume {
      try trainer.resume(from: resume)
      if trainer.step >= r.maxSteps {
        throw ValidationError("\(resume) is at step \(trainer.step), already at or past max_steps \(r.maxSteps): nothing to train (raise --max-steps)")
      }
    }
    Interrupt.install()
    let bar = ProgressBar(label: "\(r.name) [\(r.stage.rawValue)]", total: r.maxSteps, unit: "steps")
    let start = Date()
    let firstStep = trainer.step
    try trainer.run { event in
      switch event {
      case .parameters(let rows): printParameterTable(rows, optimizer: trainer.optimizer)
      case .resumed(let step, let from): eprint("resumed at step \(step) from \(from)")
      case .step(let m):
        let elapsed = Date().timeIntervalSince(start)
        let done = m.step - firstStep
        let eta = done > 0 ? elapsed / Double(done) * Double(m.maxSteps - m.step) : 0
        bar.update(m.step, detail: String(format: "loss %.4f  lr %.2e  %.0f tok/s  ETA %@", m.loss, m.lr, m.tokensPerSecond, formatDuration(eta))
          + (m.badSamples > 0 ? "  bad \(m.badSamples)" : ""))
      case .evaluated(let step, let loss): eprint(String(format: "\nstep %d: eval loss %.4f  perplexity %.2f", step, loss, Foundation.exp(loss)))
      case .ranked(let step, let m):
        // rank_top1_<lang> (the PMI ranks' sum counterparts are rank_top1_<lang>_sum)
        let langs = Set(m.keys.compactMap { $0.hasPrefix("rank_chance_top1_") ? String($0.dropFirst(17)) : nil }).sorted()
        eprint("\nstep \(step): caption ranking " + langs.map { String(format: "%@ top-1 %.1f%% top-5 %.1f%% (chance %.1f%%)", $0,
          100 * (m["rank_top1_\($0)"] ?? 0), 100 * (m["rank_top5_\($0)"] ?? 0), 100 * (m["rank_chance_top1_\($0)"] ?? 0)) }.joined(separator: ", "))
      case .checkpoint(let step, let path): eprint("\nstep \(step): checkpoint \(path)")
      case .interrupted(let step): eprint("\ninterrupted at step \(step); resume with --resume \(trainer.lastCheckpoint ?? "")")
      }
    }
    if Interrupt.requested {
      bar.finish(detail: String(format: "%@ elapsed, interrupted", formatDuration(Date().timeIntervalSince(start))))
      eprint("metrics: \(r.output)/metrics.jsonl   plot: \(r.output)/loss.svg   checkpoint: \(trainer.lastCheckpoint ?? "none")")
      throw ExitCode(Interrupt.exitStatus)
    }
    bar.finish(detail: String(format: "%@ elapsed, peak memory %@", formatDuration(Date().timeIntervalSince(start)),
                              formatBytes(Int(peakResidentMiB() * 1_048_576))))
    eprint("metrics: \(r.output)/metrics.jsonl   plot: \(r.output)/loss.svg   model: \(r.output)/final")
    if let compare {
      guard let c = MetricsLog.compare(run: (r.output as NSString).appendingPathComponent("metrics.jsonl"), reference: compare) else {
        throw ValidationError("no common steps between this run and \(compare)")
      }
      print(String(format: "largest |loss − reference| = %.5f at step %d (over %d steps)", c.maxAbs, c.atStep, c.steps))
    }
  }
}

func formatDuration(_ s: Double) -> String {
  let t = Int(s.rounded())
  return t >= 3600 ? String(format: "%dh%02dm", t / 3600, (t % 3600) / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

func formatBytes(_ b: Int) -> String {
  let d = Double(b), gib = 1073741824.0, mib = 1048576.0
  if d >= gib { return String(format: "%.2f GiB", d / gib) }
  return d >= mib ? String(format: "%.1f MiB", d / mib) : String(format: "%.1f KiB", d / 1024)
}

/// Trainable and frozen parameters per part, and the memory their weights, gradients and
/// AdamW moments take: a frozen LLM shows 0 in the last two columns.
func printParameterTable(_ rows: [ParameterRow], optimizer: AdamW) {
  eprint(pad("module", 34) + pad("trainable", 14, right: true) + pad("frozen", 14, right: true) + pad("weights", 12, right: true)
    + pad("grads", 12, right: true) + pad("AdamW", 12, right: true))
  var tot = ParameterRow(module: "total")
  for r in rows {
    eprint(pad(r.module, 34) + pad("\(r.trainable)", 14, right: true) + pad("\(r.frozen)", 14, right: true) + pad(formatBytes(r.weightBytes), 12, right: true)
      + pad(formatBytes(r.gradientBytes), 12, right: true) + pad(formatBytes(r.optimizerBytes), 12, right: true))
    tot.trainable += r.trainable; tot.frozen += r.frozen; tot.weightBytes += r.weightBytes; tot.gradientBytes += r.gradientBytes; tot.optimizerBytes += r.optimizerBytes
  }
  eprint(pad("total", 34) + pad("\(tot.trainable)", 14, right: true) + pad("\(tot.frozen)", 14, right: true) + pad(formatBytes(tot.weightBytes), 12, right: true)
    + pad(formatBytes(tot.gradientBytes), 12, right: true) + pad(formatBytes(tot.optimizerBytes), 12, right: true))
}
