import Foundation
import PivotNN
import PivotTensor

/// Decoding settings, as `transformers`' generate names them.
public struct GenerationOptions: Sendable {
  public var maxNewTokens = 128
  /// 0 means greedy.
  public var temperature: Float = 0
  public var topK = 0
  public var topP: Float = 1
  public var repetitionPenalty: Float = 1
  public var seed: UInt64 = 0
  public var stopTokenIds: Set<Int32> = []
  public init() {}
}

/// Picks the next token from last-position logits, in transformers' order: repetition
/// penalty, then temperature, top-k, top-p, then a seeded draw (or argmax when greedy).
public struct TokenSampler: Sendable {
  public var options: GenerationOptions
  var rng: PivotRNG
  public init(_ options: GenerationOptions) {
    self.options = options
    rng = PivotRNG(seed: options.seed)
  }

  public mutating func next(logits input: UnsafePointer<Float>, vocab: Int, history: [Int32]) -> Int32 {
    var logits = Array(UnsafeBufferPointer(start: input, count: vocab))
    if options.repetitionPenalty != 1 {
      for id in Set(history) where id >= 0 && Int(id) < vocab {
        let s = logits[Int(id)]
        logits[Int(id)] = s < 0 ? s * options.repetitionPenalty : s / options.repetitionPenalty
      }
    }
    if options.temperature <= 0 {
      var best = 0
      for i in 1..<vocab where logits[i] > logits[best] { best = i }
      return Int32(best)
    }
    for i in 0..<vocab { logits[i] /= options.temperature }
    var order = Array(0..<vocab)
    order.sort { logits[$0] > logits[$1] }
    var keep = vocab
    if options.topK > 0 { keep = min(keep, options.topK) }
    let mx = logits[order[0]]
    var probs = order.prefix(keep).map { expf(logits[$0] - mx) }
    var total = probs.reduce(0, +)
    if options.topP < 1 {
      // Smallest prefix whose mass reaches top_p (at least one token).
      var cum: Float = 0
      var cut = probs.count
      for (i, p) in probs.enumerated() {
        cum += p / total
        if cum >= options.topP { cut = i + 1; break }
      }
      probs = Array(probs.prefix(cut))
      total = probs.reduce(0, +)
    }
    var u = rng.uniform() * total
    for (i, p) in probs.enumerated() {
      u -= p
      if u <= 0 { return Int32(order[i]) }
    }
    return Int32(order[probs.count - 1])
  }
}

extension DecoderLM {
  /// Generates after `embeddings` (1, T, C) with a KV cache, calling `onToken` for each new
  /// token (return false to stop). Returns the new ids, a stop token included.
  @discardableResult
  public func generate(
    embeddings: Tensor, history: [Int32] = [], options: GenerationOptions, onToken: (Int32) -> Bool = { _ in true }
  ) -> [Int32] {
    precondition(embeddings.shape[0] == 1, "generation runs one sequence at a time")
    return noGrad {
      let t = embeddings.shape[1]
      let cache = KVCache(config: config, capacity: t + options.maxNewTokens)
      var sampler = TokenSampler(options)
      var history = history
      var out: [Int32] = []
      var h = hiddenStates(embeddings, cache: cache)
      while out.count < options.maxNewTokens {
        let last = slice(reshape(h, [h.shape[1], config.hiddenSize]), axis: 0, (h.shape[1] - 1)..<h.shape[1])
        let logits = self.logits(last)
        let tok = sampler.next(logits: logits.ptr, vocab: config.vocabSize, history: history)
        out.append(tok)
        history.append(tok)
        if options.stopTokenIds.contains(tok) || !onToken(tok) { break }
        if out.count == options.maxNewTokens { break }
        h = hiddenStates(embed([tok], shape: [1, 1]), cache: cache)
      }
      return out
    }
  }
}

extension DecoderLM {
  /// Generates after each of several prompts (embeddings (1, T_i, C) each, with their ids as the
  /// repetition history): each prompt's prefill runs alone, then the decode steps of every
  /// unfinished sequence run as one `decodeStep`, so N sequences read the weights once per token.
  /// Each sequence stops on its own (a stop token, `maxNewTokens`, or `onToken` returning false)
  /// and gives exactly what `generate(embeddings:)` gives it alone.
  public func generateBatch(
    prompts: [Tensor], histories: [[Int32]], options: GenerationOptions, onToken: (Int, Int32) -> Bool = { _, _ in true }
  ) -> [[Int32]] {
    precondition(prompts.count == histories.count, "\(prompts.count) prompts for \(histories.count) histories")
    precondition(prompts.allSatisfy { $0.shape[0] == 1 }, "each prompt is one row")
    return noGrad {
      var caches: [KVCache] = [], samplers: [TokenSampler] = [], history = histories
      var out = [[Int32]](repeating: [], count: prompts.count)
      var active: [Int] = [], next: [Int32] = []
      for (i, x) in prompts.enumerated() {
        let t = x.shape[1]
        let cache = KVCache(config: config, capacity: t + options.maxNewTokens)
        let h = hiddenStates(x, cache: cache)
        let last = slice(reshape(h, [t, config.hiddenSize]), axis: 0, (t - 1)..<t)
        var sampler = TokenSampler(options)
        let tok = sampler.next(logits: self.logits(last).ptr, vocab: config.vocabSize, history: history[i])
        caches.append(cache)
        samplers.append(sampler)
        out[i].append(tok)
        history[i].append(tok)
        if !options.stopTokenIds.contains(tok) && onToken(i, tok) && out[i].count < options.maxNewTokens {
          active.append(i)
          next.append(tok)
        }
      }
      while !active.isEmpty {
        let logits = decodeStep(next, caches: active.map { caches[$0] })  // (N, V)
        var stillActive: [Int] = [], following: [Int32] = []
        for (row, i) in active.enumerated() {
          let tok = samplers[i].next(logits: logits.ptr + row * config.vocabSize, vocab: config.vocabSize, history: history[i])
          out[i].append(tok)
          history[i].append(tok)
          if !options.stopTokenIds.contains(tok) && onToken(i, tok) && out[i].count < options.maxNewTokens {
            stillActive.append(i)
            following.append(tok)
          }
        }
        active = stillActive
        next = following
      }
      return out
    }
  }
}

extension ChatModel {
  /// Generates a reply to prompt ids (1 row) whose image slot starts at `imageStart`.
  @discardableResult
  public func generate(
    ids: [Int32], pixels: Tensor?, imageStart: Int?, options: GenerationOptions, onToken: (Int32) -> Bool = { _ in true }
  ) -> [Int32] {
    let x = noGrad { inputEmbeddings(ids: ids, batch: 1, length: ids.count, pixels: pixels, imageStarts: [imageStart]) }
    return languageModel.generate(embeddings: x, history: ids, options: options, onToken: onToken)
  }
}
