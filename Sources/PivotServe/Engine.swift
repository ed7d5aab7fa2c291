import Foundation
import PivotModels
import PivotNN
import PivotTensor
import PivotText
import PivotTrain

/// Why a completion ended, in OpenAI's words.
public enum FinishReason: String, Sendable {
  case stop, length
}

/// What the engine tells a request, in order: text pieces, then one `finished` or `failed`.
public enum EngineEvent: Sendable {
  case text(String)
  case finished(FinishReason, promptTokens: Int, completionTokens: Int)
  case failed(EngineFailure)
}

public enum EngineFailure: Error, Sendable, CustomStringConvertible {
  case queueFull(limit: Int)
  case timedOut(seconds: Double)
  case shuttingDown

  public var description: String {
    switch self {
    case .queueFull(let n): "the server is busy: \(n) requests are already waiting (try again shortly)"
    case .timedOut(let s): String(format: "the request ran past the server's time limit of %.0f s (ask for fewer tokens, or start the server with a larger --request-timeout)", s)
    case .shuttingDown: "the server is shutting down"
    }
  }
}

/// One request's generation: a prompt ready for prefill, its sampling settings and stop rules.
public struct CompletionJob: Sendable {
  public var prompt: Assistant.Prompt
  public var options: GenerationOptions
  public var stopStrings: [String]
  public var timeLimit: Double

  public init(prompt: Assistant.Prompt, options: GenerationOptions, stopStrings: [String], timeLimit: Double) {
    self.prompt = prompt
    self.options = options
    self.stopStrings = stopStrings
    self.timeLimit = timeLimit
  }
}

/// A submitted job as its submitter holds it: cancel it (a client that went away) and the
/// engine drops it before its next step.
public final class JobTicket: @unchecked Sendable {
  private let lock = NSLock()
  private var isCancelled = false
  public func cancel() { lock.withLock { isCancelled = true } }
  var cancelled: Bool { lock.withLock { isCancelled } }
}

/// Continuous batching over one model: a single thread owns the model and, step after step,
/// runs the decode step of every active sequence as one `decodeStep` (the weights are read once
/// for all of them), admits waiting requests between steps, and interleaves their prefill in
/// chunks so a long prompt never stalls the others for more than one chunk.
public final class Engine: @unchecked Sendable {
  public let assistant: Assistant
  /// Sequences decoded together at most; more wait.
  public let maxBatch: Int
  /// Requests that may wait for a slot; beyond it `submit` refuses (HTTP 429).
  public let maxQueue: Int
  /// Prompt positions per prefill chunk.
  public let prefillChunk: Int

  private let condition = NSCondition()
  private var waiting: [(CompletionJob, JobTicket, AsyncStream<EngineEvent>.Continuation, deadline: Date)] = []
  private var accepting = true
  private var activeCount = 0
  private var cancelledCount = 0
  private var thread: Thread?
  private let stopped = DispatchSemaphore(value: 0)

  public init(assistant: Assistant, maxBatch: Int = 8, maxQueue: Int = 32, prefillChunk: Int = 256) {
    precondition(maxBatch >= 1 && maxQueue >= 0 && prefillChunk >= 1)
    self.assistant = assistant
    self.maxBatch = maxBatch
    self.maxQueue = maxQueue
    self.prefillChunk = prefillChunk
  }

  public func start() {
    let t = Thread { [self] in loop() }
    t.name = "pivot-engine"
    t.stackSize = 8 << 20
    thread = t
    t.start()
  }

  /// Queues a job; its events arrive on the stream. Throws `queueFull` or `shuttingDown`.
  public func submit(_ job: CompletionJob) throws -> (JobTicket, AsyncStream<EngineEvent>) {
    let (stream, continuation) = AsyncStream<EngineEvent>.makeStream(bufferingPolicy: .unbounded)
    let ticket = JobTicket()
    condition.lock()
    defer { condition.unlock() }
    guard accepting else { throw EngineFailure.shuttingDown }
    guard waiting.count < maxQueue else { throw EngineFailure.queueFull(limit: maxQueue) }
    waiting.append((job, ticket, continuation, Date().addingTimeInterval(job.timeLimit)))  // the limit counts the wait
    condition.signal()
    return (ticket, stream)
  }

  /// Sequences decoding or prefilling and requests waiting right now, and how many sequences
  /// were dropped unfinished because their client went away.
  public var load: (active: Int, waiting: Int, cancelled: Int) {
    condition.lock()
    defer { condition.unlock() }
    return (activeCount, waiting.count, cancelledCount)
  }

  /// Stops taking requests, lets the running ones finish, fails the waiting ones, and returns
  /// when the engine thread has ended.
  public func shutdown() {
    condition.lock()
    accepting = false
    let dropped = waiting
    waiting.removeAll()
    condition.signal()
    condition.unlock()
    for (_, _, c, _) in dropped {
      c.yield(.failed(.shuttingDown))
      c.finish()
    }
    if thread != nil { stopped.wait() }
  }

  /// One sequence in flight.
  private final class Sequence {
    let job: CompletionJob
    let ticket: JobTicket
    let events: AsyncStream<EngineEvent>.Continuation
    let cache: KVCache
    var sampler: TokenSampler
    var history: [Int32]
    var prefilled = 0
    var embeddings: Tensor?  // (1, T, C), made on the engine thread when prefill starts
    var generated = 0
    var nextToken: Int32 = 0
    var text: StopStringFilter
    var decoder: IncrementalDecoder
    let deadline: Date

    init(_ job: CompletionJob, _ ticket: JobTicket, _ events: AsyncStream<EngineEvent>.Continuation, deadline: Date, config: DecoderConfig, tokenizer: Tokenizer) {
      self.job = job
      self.ticket = ticket
      self.events = events
      cache = KVCache(config: config, capacity: job.prompt.ids.count + job.options.maxNewTokens)
      sampler = TokenSampler(job.options)
      history = job.prompt.ids
      text = StopStringFilter(stops: job.stopStrings)
      decoder = tokenizer.makeIncrementalDecoder(skipSpecialTokens: true)
      self.deadline = deadline
    }
  }

  private func loop() {
    let llm = assistant.model.languageModel
    let vocab = llm.config.vocabSize
    var active: [Sequence] = []
    var prefilling: Sequence?
    defer { stopped.signal() }
    while true {
      condition.lock()
      while accepting && waiting.isEmpty && active.isEmpty && prefilling == nil { condition.wait() }
      if !accepting && active.isEmpty && prefilling == nil {
        condition.unlock()
        return
      }
      // Waiting requests that ran out of time or lost their client leave the queue.
      let now = Date()
      var expired: [(EngineEvent?, AsyncStream<EngineEvent>.Continuation)] = []
      waiting.removeAll { w in
        if w.1.cancelled { expired.append((nil, w.2)); cancelledCount += 1; return true }
        if now > w.deadline { expired.append((.failed(.timedOut(seconds: w.0.timeLimit)), w.2)); return true }
        return false
      }
      if prefilling == nil && active.count < maxBatch && !waiting.isEmpty {
        let (job, ticket, events, deadline) = waiting.removeFirst()
        prefilling = Sequence(job, ticket, events, deadline: deadline, config: llm.config, tokenizer: assistant.tokenizer)
      }
      activeCount = active.count + (prefilling == nil ? 0 : 1)
      condition.unlock()
      for (event, c) in expired {
        if let event { c.yield(event) }
        c.finish()
      }

      // A cancelled or overdue sequence frees its slot before any more work is spent on it.
      func dropped(_ s: Sequence) -> Bool {
        if s.ticket.cancelled {
          s.events.finish()
          condition.withLock { cancelledCount += 1 }
          return true
        }
        if now > s.deadline {
          s.events.yield(.failed(.timedOut(seconds: s.job.timeLimit)))
          s.events.finish()
          return true
        }
        return false
      }
      active.removeAll(where: dropped)
      if let p = prefilling, dropped(p) { prefilling = nil }

      // One chunk of the waiting prompt's prefill; its last chunk gives its first token.
      if let p = prefilling {
        let total = p.job.prompt.ids.count
        let end = min(total, p.prefilled + prefillChunk)
        let h = noGrad {
          if p.embeddings == nil { p.embeddings = assistant.embeddings(p.job.prompt) }
          let x = p.prefilled == 0 && end == total ? p.embeddings! : slice(p.embeddings!, axis: 1, p.prefilled..<end)
          return llm.hiddenStates(x, cache: p.cache)
        }
        p.prefilled = end
        if end == total {
          prefilling = nil
          p.embeddings = nil
          let t = h.shape[1]
          let logits = noGrad { llm.logits(slice(reshape(h, [t, llm.config.hiddenSize]), axis: 0, (t - 1)..<t)) }
          if accept(p.sampler.next(logits: logits.ptr, vocab: vocab, history: p.history), into: p) { active.append(p) }
        }
      }

      // One decode step for every active sequence together.
      if !active.isEmpty {
        let logits = llm.decodeStep(active.map(\.nextToken), caches: active.map(\.cache))  // (N, V)
        var still: [Sequence] = []
        for (row, s) in active.enumerated() {
          let token = s.sampler.next(logits: logits.ptr + row * vocab, vocab: vocab, history: s.history)
          if accept(token, into: s) { still.append(s) }
        }
        active = still
      }
      condition.withLock { activeCount = active.count + (prefilling == nil ? 0 : 1) }
    }
  }

  /// Records a sampled token, streams its text; false when the sequence has finished.
  private func accept(_ token: Int32, into s: Sequence) -> Bool {
    s.generated += 1
    s.history.append(token)
    let stopIds = s.job.options.stopTokenIds.union(assistant.stopIds)
    var reason: FinishReason? = nil
    if stopIds.contains(token) {
      reason = .stop
    } else {
      let (piece, hitStop) = s.text.push(s.decoder.push(token))
      if !piece.isEmpty { s.events.yield(.text(piece)) }
      if hitStop { reason = .stop } else if s.generated >= s.job.options.maxNewTokens { reason = .length }
    }
    guard let reason else {
      s.nextToken = token
      return true
    }
    if !s.text.stopped {
      let (rest, _) = s.text.push(s.decoder.finish())
      let tail = rest + s.text.flush()
      if !tail.isEmpty { s.events.yield(.text(tail)) }
    }
    s.events.yield(.finished(reason, promptTokens: s.job.prompt.ids.count, completionTokens: s.generated))
    s.events.finish()
    return false
  }
}

/// Streams text while holding back what could be the start of a stop string, and cuts the
/// text before the first stop string (OpenAI leaves it out of the answer).
struct StopStringFilter {
  let stops: [String]
  private var pending = ""
  private(set) var stopped = false

  init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

  /// Adds decoded text; returns what may be shown now, and whether a stop string appeared.
  mutating func push(_ piece: String) -> (String, Bool) {
    guard !stopped else { return ("", true) }
    pending += piece
    if stops.isEmpty {
      defer { pending = "" }
      return (pending, false)
    }
    if let cut = stops.compactMap({ pending.range(of: $0)?.lowerBound }).min() {
      stopped = true
      defer { pending = "" }
      return (String(pending[..<cut]), true)
    }
    // Keep the longest tail that a stop string starts with; show the rest.
    var keep = 0
    for stop in stops {
      for n in stride(from: min(stop.count - 1, pending.count), to: keep, by: -1) where pending.hasSuffix(String(stop.prefix(n))) {
        keep = n
        break
      }
    }
    let shown = String(pending.dropLast(keep))
    pending = String(pending.suffix(keep))
    return (shown, false)
  }

  /// What is held back, at the end of a completion that stopped for another reason.
  mutating func flush() -> String {
    defer { pending = "" }
    return stopped ? "" : pending
  }
}
