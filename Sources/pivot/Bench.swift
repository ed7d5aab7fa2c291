import ArgumentParser
import COpenBLAS
import Foundation
import PivotNN
import PivotTensor

/// `pivot bench`: the performance figures, one JSON object per line on stdout (the same field
/// names as shared/bench/torch_ref.py), a readable table on stderr.
struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Measure Pivot's performance (the phases and shapes of shared/bench).",
    discussion: """
      Phases: gemm, tokenize (chars/s beside HF tokenizers), data (images/s beside webdataset + PIL), stage1, stage2, prefill, decode (the last four as shared/bench/torch_ref.py, at --scale tiny, small or qwen0.5b). \
      Each prints JSON lines with calib_gflops_before/after, the 1024³ probe that tells the machine's fast and slow states apart. \
      Run each model phase in its own process: peak_rss_mib is the process's peak.
      """)

  static let modelPhases = ["stage1", "stage2", "prefill", "decode"]

  @Option(help: "Phase to measure: gemm, tokenize, data, stage1, stage2, prefill or decode.") var phase: String = "gemm"
  @Option(help: "Benchmark scale (tiny, small, qwen0.5b) for model phases.") var scale: String = "small"
  @Option(help: "Directory of <scale>/{vision,qformer,llm,pivot}.json (default: ../shared/bench/configs from the repository root).")
  var configs: String?
  @Option(help: "Storage of the frozen weights: fp32 or bf16.") var dtype: String = "fp32"
  @Option(help: "Model phases: an HF LLM folder whose weights replace the random LLM (e.g. Assets/qwen2.5-0.5b-instruct at --scale qwen0.5b).")
  var llmWeights: String?
  @Option(help: "stage1/stage2: LLM layers (from the first) that rerun in backward instead of keeping their activations (recipe key model.recompute_layers).")
  var recomputeLayers = 0
  @Option(help: "stage1/stage2: LoRA rank on every attention and MLP projection of the LLM (0: none). With it stage2 trains the bridge and the adapters; the LLM's weights stay frozen.")
  var loraRank = 0
  @Option(help: "stage1/stage2 with --lora-rank: LoRA alpha (the scale is alpha / r).")
  var loraAlpha: Double = 32
  @Option(help: "Products of more than one row: fp32, or bf16 (operands rounded to bfloat16, float32 sums; AMX tiles where the CPU has them). Recipe key model.matmul.")
  var matmul: String = "fp32"
  @Option(help: "decode: sequences decoded together, one step for all (what pivot serve does with concurrent requests); tokens_per_s is their sum.") var streams: Int = 1
  @Option(help: "Worker threads (Pivot and OpenBLAS).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
  @Option(help: "Seconds of timed repetitions per measurement (gemm).") var seconds: Double = 1.5
  @Option(help: "Untimed warm-up repetitions (default: torch_ref.py's count for the scale and phase).") var warmup: Int?
  @Option(help: "Timed repetitions (default: torch_ref.py's count for the scale and phase).") var reps: Int?
  @Option(help: "tokenize: the tokenizer (default: the real Qwen2 file among the test fixtures).") var tokenizer: String?
  @Option(help: "tokenize: MB of generated mixed Chinese/English text.") var megabytes: Int = 10
  @Option(help: "data: Python with webdataset + Pillow + transformers, to run the same pipeline beside Pivot.") var python: String?

  func validate() throws {
    guard (["gemm", "tokenize", "data"] + Self.modelPhases).contains(phase) else {
      throw ValidationError("unknown phase '\(phase)' (known: gemm, tokenize, data, \(Self.modelPhases.joined(separator: ", ")))")
    }
    guard ["fp32", "bf16"].contains(dtype) else { throw ValidationError("unknown dtype '\(dtype)' (fp32 or bf16)") }
    guard loraRank >= 0, loraAlpha > 0 else { throw ValidationError("--lora-rank must be ≥ 0 and --lora-alpha > 0") }
    guard (1...64).contains(streams) else { throw ValidationError("--streams must be in 1…64, not \(streams)") }
  }

  /// shared/bench/configs beside the repository (this file is Sources/pivot/Bench.swift).
  static var defaultConfigDir: String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return root.appendingPathComponent("../shared/bench/configs").standardized.path
  }

  func run() throws {
    Threads.set(threads)
    try setMatmulPrecision(matmul)
    switch phase {
    case "gemm": try GemmBench(threads: threads, seconds: seconds).run()
    case "tokenize":
      let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
      let qwen = root.appendingPathComponent("Tests/PivotTextTests/Fixtures/qwen2").path
      let command = try BenchTokenize.parse(["--tokenizer", tokenizer ?? qwen, "--megabytes", "\(megabytes)"])
      try command.run()
    case "data":
      var args = ["--generate-mib", "64", "--threads", "\(threads)"]
      if let python { args += ["--python", python] }
      let command = try BenchData.parse(args)
      try command.run()
    default:
      try ModelBench(
        scale: scale, phase: phase, configDir: configs ?? Self.defaultConfigDir, threads: threads, dtype: dtype,
        warmupOverride: warmup, repsOverride: reps, llmWeights: llmWeights, recomputeLayers: recomputeLayers,
        lora: loraRank > 0 ? LoRASettings(rank: loraRank, alpha: loraAlpha, targets: ["language_model.*_proj"]) : nil,
        streams: streams
      ).run()
    }
  }
}

enum BenchClock {
  static func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
  }

  /// Runs `body` `warmup` times, then until `seconds` have passed (at least `minReps` times);
  /// returns every timed repetition in seconds.
  static func repeatTimed(warmup: Int = 1, seconds: Double, minReps: Int = 3, _ body: () -> Void) -> [Double] {
    for _ in 0..<warmup { body() }
    var times: [Double] = []
    let start = now()
    while times.count < minReps || now() - start < seconds {
      let t0 = now()
      body()
      times.append(now() - t0)
    }
    return times
  }

  static func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
  }

  /// GFLOP/s of a 1024³ cblas SGEMM over about half a second: the machine-state probe.
  static func calibrationGflops() -> Double {
    let n = 1024
    let a = Tensor.full([n, n], 0.5), b = Tensor.full([n, n], 0.25), c = Tensor(empty: [n, n])
    let times = repeatTimed(warmup: 1, seconds: 0.5) {
      sgemm(transA: false, transB: false, m: n, n: n, k: n, a: a.ptr, lda: n, b: b.ptr, ldb: n, beta: 0, c: c.ptr, ldc: n)
    }
    return 2 * Double(n * n * n) / median(times) / 1e9
  }

  /// Resident set size now, from /proc/self/statm.
  static func currentRSSMiB() -> Double {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Double(fields[1]) else { return 0 }
    return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576
  }

}

/// Prints one JSON object per line with sorted keys.
func emitJSON(_ record: [String: Any]) {
  if let data = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]),
    let line = String(data: data, encoding: .utf8)
  {
    print(line)
    fflush(nil)
  }
}

/// Pads to a column width counted in characters (format's %-Ns counts bytes and ignores NSString widths).
func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
  let fill = String(repeating: " ", count: max(0, width - s.count))
  return right ? fill + s : s + fill
}

func eprint(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }

/// The engine's matmul against raw cblas_sgemm on the same buffers: the op layer's cost.
struct GemmBench {
  let threads: Int
  let seconds: Double

  func run() throws {
    let shapes: [(String, Int, Int, Int)] = [
      ("512^3", 512, 512, 512), ("1024^3", 1024, 1024, 1024), ("qwen0.5b mlp up 256x896x4864", 256, 896, 4864),
    ]
    let calibBefore = BenchClock.calibrationGflops()
    eprint("OpenBLAS core: \(Threads.blasCore), threads: \(threads)")
    eprint(pad("shape M×K×N", 32) + pad("cblas GF/s", 12, right: true) + pad("pivot GF/s", 12, right: true) + pad("ratio", 8, right: true))
    var rows: [[String: Any]] = []
    for (label, m, k, n) in shapes {
      var rng = PivotRNG(seed: 1)
      let a = Tensor(empty: [m, k]), b = Tensor(empty: [k, n])
      rng.fillUniform(a, low: -1, high: 1)
      rng.fillUniform(b, low: -1, high: 1)
      let c = Tensor(empty: [m, n])
      let flops = 2 * Double(m) * Double(n) * Double(k)
      // Interleave the two so a change of machine state hits both alike.
      var raw: [Double] = [], op: [Double] = []
      for _ in 0..<3 {
        raw += BenchClock.repeatTimed(seconds: seconds / 3) {
          sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a.ptr, lda: k, b: b.ptr, ldb: n, beta: 0, c: c.ptr, ldc: n)
        }
        op += BenchClock.repeatTimed(seconds: seconds / 3) { _ = noGrad { matmul(a, b) } }
      }
      let rawGF = flops / BenchClock.median(raw) / 1e9, opGF = flops / BenchClock.median(op) / 1e9
      eprint(pad(label, 32) + pad(String(format: "%.1f", rawGF), 12, right: true) + pad(String(format: "%.1f", opGF), 12, right: true)
        + pad(String(format: "%.3f", opGF / rawGF), 8, right: true))
      rows.append(["shape": label, "m": m, "k": k, "n": n, "cblas_gflops": rawGF, "pivot_gflops": opGF, "pivot_over_cblas": opGF / rawGF])
    }
    // One-row products as decode runs them: W (out, in) · x, float32 SGEMV against the bfloat16 GEMV.
    let gemvShapes: [(String, Int, Int)] = [
      ("qwen0.5b lm_head 1x896x151936", 896, 151936), ("qwen0.5b mlp up 1x896x4864", 896, 4864),
      ("qwen0.5b mlp down 1x4864x896", 4864, 896), ("qwen0.5b q_proj 1x896x896", 896, 896),
    ]
    eprint(pad("GEMV shape", 32) + pad("sgemv GB/s", 12, right: true) + pad("pivot GB/s", 12, right: true) + pad("bf16 GB/s", 12, right: true)
      + pad("bf16 ms", 10, right: true) + pad("4 rows ms", 11, right: true))
    for (label, k, m) in gemvShapes {
      var rng = PivotRNG(seed: 2)
      let w = Tensor(empty: [m, k]), x = Tensor(empty: [k]), y = Tensor(empty: [m])
      rng.fillUniform(w, low: -1, high: 1)
      rng.fillUniform(x, low: -1, high: 1)
      let w16 = BF16Matrix(w)
      let x4 = Tensor(empty: [4, k]), y4 = Tensor(empty: [4, m])  // four sequences' rows, as continuous batching decodes them
      rng.fillUniform(x4, low: -1, high: 1)
      var f32: [Double] = [], own: [Double] = [], b16: [Double] = [], b16x4: [Double] = []
      for _ in 0..<3 {
        f32 += BenchClock.repeatTimed(seconds: seconds / 3) {
          sgemv(trans: false, m: m, n: k, a: w.ptr, lda: k, x: x.ptr, beta: 0, y: y.ptr)
        }
        own += BenchClock.repeatTimed(seconds: seconds / 3) {
          Kernels.gemvF32(out: y.ptr, weight: w.ptr, inp: x.ptr, bias: nil, m: m, k: k)
        }
        b16 += BenchClock.repeatTimed(seconds: seconds / 3) {
          Kernels.gemvBF16(out: y.ptr, weight: w16.bits, inp: x.ptr, bias: nil, m: m, k: k)
        }
        b16x4 += BenchClock.repeatTimed(seconds: seconds / 3) {
          Kernels.gemvBF16(out: y4.ptr, weight: w16.bits, inp: x4.ptr, bias: nil, m: m, k: k, rows: 4)
        }
      }
      let f32GB = Double(m * k * 4) / BenchClock.median(f32) / 1e9, b16GB = Double(m * k * 2) / BenchClock.median(b16) / 1e9
      let ownGB = Double(m * k * 4) / BenchClock.median(own) / 1e9
      eprint(pad(label, 32) + pad(String(format: "%.1f", f32GB), 12, right: true) + pad(String(format: "%.1f", ownGB), 12, right: true)
        + pad(String(format: "%.1f", b16GB), 12, right: true)
        + pad(String(format: "%.3f", BenchClock.median(b16) * 1e3), 10, right: true)
        + pad(String(format: "%.3f", BenchClock.median(b16x4) * 1e3), 11, right: true))
      rows.append(["shape": label, "m": 1, "k": k, "n": m, "sgemv_gb_per_s": f32GB, "pivot_gemv_gb_per_s": ownGB, "bf16_gemv_gb_per_s": b16GB,
                   "sgemv_ms": BenchClock.median(f32) * 1e3, "bf16_gemv_ms": BenchClock.median(b16) * 1e3,
                   "bf16_gemv_4_rows_ms": BenchClock.median(b16x4) * 1e3])
    }
    let calibAfter = BenchClock.calibrationGflops()
    for var r in rows {
      r["phase"] = "gemm"
      r["threads"] = threads
      r["blas_core"] = Threads.blasCore
      r["calib_gflops_before"] = calibBefore
      r["calib_gflops_after"] = calibAfter
      emitJSON(r)
    }
    eprint(String(format: "calibration probe: %.0f GFLOP/s before, %.0f after", calibBefore, calibAfter))
  }
}
