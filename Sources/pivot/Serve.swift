import ArgumentParser
import Foundation
import PivotServe
import PivotTensor
import PivotTrain

struct Serve: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Serve a model over OpenAI's chat-completions API, with a chat page at /.",
    discussion: """
      POST /v1/chat/completions (text and data: URI images, streaming), GET /v1/models, GET /health, GET / (the page).
      The decode steps of all running requests share one pass over the weights (continuous batching).
      It binds 127.0.0.1 unless --host says otherwise; SIGTERM or Ctrl-C lets running requests finish.
      """)

  @Option(help: "Model folder (Pivot checkpoint, or an HF Qwen2/LLaMA folder for text-only chat).") var model: String
  @Option(help: "A PEFT LoRA adapter folder to apply to the model's LLM, unmerged.") var adapter: String?
  @Option(help: "Address to bind (0.0.0.0 serves other machines too).") var host = "127.0.0.1"
  @Option(help: "Port (0 picks a free one and prints it).") var port = 8080
  @Option(help: "Requests must send 'Authorization: Bearer KEY'.") var apiKey: String?
  @Option(help: "The model id /v1/models lists and requests name; default: the model folder's name.") var servedModelName: String?
  @Option(help: "Chat template (chatml, llama3, plain, …); default: the model's own.") var chatTemplate: String?
  @Option(help: "Sequences decoded together at most; more wait.") var maxBatch = 8
  @Option(help: "Requests that may wait for a slot; more get 429.") var maxQueue = 32
  @Option(help: "Prompt positions per prefill chunk, interleaved with the others' decode steps.") var prefillChunk = 256
  @Option(help: "Largest request body, bytes.") var maxBodyBytes = 20 << 20
  @Option(help: "Largest image, pixels (refused from its header, before decoding).") var maxImagePixels = 16 << 20
  @Option(help: "Tokens written when a request names no max_tokens.") var maxTokens = 512
  @Option(help: "Seconds a request may take, waiting included.") var requestTimeout = 300.0
  @Option(help: "Worker threads.") var threads = ProcessInfo.processInfo.activeProcessorCount
  @Option(help: "Weights: auto (the checkpoint's own precision), fp32, or bf16.") var dtype = "auto"
  @Option(help: "Products of more than one row (prefill): fp32, or bf16.") var matmul = "fp32"

  func validate() throws {
    guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0…65535, not \(port)") }
    for (name, value) in [("--max-batch", maxBatch), ("--prefill-chunk", prefillChunk), ("--max-body-bytes", maxBodyBytes), ("--max-image-pixels", maxImagePixels), ("--max-tokens", maxTokens)] {
      guard value >= 1 else { throw ValidationError("\(name) must be at least 1, not \(value)") }
    }
    guard maxQueue >= 0 else { throw ValidationError("--max-queue must be ≥ 0, not \(maxQueue)") }
    guard requestTimeout.isFinite && requestTimeout > 0 else { throw ValidationError("--request-timeout must be a number of seconds > 0, not \(requestTimeout)") }
    if let apiKey, apiKey.isEmpty { throw ValidationError("--api-key must not be empty") }
  }

  /// A run's folder name for its `final/` or `step-N/` (what a user calls the model), else the folder's.
  static func defaultName(_ model: String) -> String {
    let url = URL(fileURLWithPath: model).standardizedFileURL
    let last = url.lastPathComponent
    return last == "final" || last.hasPrefix("step-") ? url.deletingLastPathComponent().lastPathComponent : last
  }

  func run() throws {
    Threads.set(threads)
    try setMatmulPrecision(matmul)
    let assistant = try Assistant(modelDir: model, chatTemplate: chatTemplate, dtype: dtype, adapter: adapter)
    var settings = ServeSettings()
    settings.host = host
    settings.port = port
    settings.apiKey = apiKey
    settings.modelName = servedModelName ?? Self.defaultName(model)
    settings.maxBodyBytes = maxBodyBytes
    settings.maxImagePixels = maxImagePixels
    settings.defaultMaxTokens = maxTokens
    settings.requestTimeout = requestTimeout
    settings.maxBatch = maxBatch
    settings.maxQueue = maxQueue
    let engine = Engine(assistant: assistant, maxBatch: maxBatch, maxQueue: maxQueue, prefillChunk: prefillChunk)
    let server = OpenAIServer(engine: engine, settings: settings)
    let name = settings.modelName, host = self.host
    final class Outcome: @unchecked Sendable { var error: Error? }
    let outcome = Outcome()
    let done = DispatchSemaphore(value: 0)
    Task {
      do {
        try await server.run { port in
          eprint("Pivot serving '\(name)' on http://\(host):\(port)/ (chat page) and http://\(host):\(port)/v1 (OpenAI API)")
        }
      } catch { outcome.error = error }
      done.signal()
    }
    done.wait()
    if let error = outcome.error { throw error }
    eprint("Pivot server stopped")
  }
}
