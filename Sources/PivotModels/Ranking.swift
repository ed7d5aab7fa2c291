import Foundation
import PivotNN
import PivotTensor

extension KVCache {
  /// A cache of `batch` rows, each starting as a copy of row 0 of `prefix` (its `length`
  /// positions), with room for `extra` more: candidates that share a prompt read it once.
  public convenience init(repeating prefix: KVCache, config: DecoderConfig, batch: Int, extra: Int) {
    self.init(config: config, batch: batch, capacity: prefix.length + extra)
    let row = config.numKeyValueHeads * config.resolvedHeadDim
    let used = prefix.length * row
    for layer in 0..<keys.count {
      for bi in 0..<batch {
        (keys[layer].ptr + bi * capacity * row).update(from: prefix.keys[layer].ptr, count: used)
        (values[layer].ptr + bi * capacity * row).update(from: prefix.values[layer].ptr, count: used)
      }
    }
    length = prefix.length
  }
}

extension DecoderLM {
  /// The log-probability of every token of every candidate continuation of a shared prompt:
  /// the prompt's keys and values are in `prefix` (one row, computed once), `lastHidden` (1, C)
  /// is the prompt's last hidden state, which predicts each candidate's first token. Candidates
  /// run `batch` at a time over copies of the prefix cache, padded at their ends (causal
  /// attention keeps padding out of the real tokens). Returns, per candidate, one log-probability
  /// per token.
  public func continuationLogProbs(prefix: KVCache, lastHidden: Tensor, candidates: [[Int32]], batch: Int = 16) -> [[Float]] {
    precondition(prefix.batch == 1, "the shared prefix is one row")
    let c = config.hiddenSize, v = config.vocabSize
    return noGrad {
      let first = logSoftmax(logits(reshape(lastHidden, [1, c])))  // (1, V): every candidate's first token
      // Batches of similar lengths: padding is compute spent on nothing.
      let order = candidates.indices.sorted { candidates[$0].count < candidates[$1].count }
      var byOrder: [[Float]] = []
      var start = 0
      while start < order.count {
        let group = order[start..<min(start + batch, order.count)].map { candidates[$0] }
        start += group.count
        let longest = group.map(\.count).max() ?? 0
        var scores = group.map { ids in ids.isEmpty ? [Float]() : [first.ptr[Int(ids[0])]] }
        // Tokens 1..<n of each candidate are predicted at positions 0..<n-1 of its continuation.
        let steps = longest - 1
        if steps > 0 {
          let b = group.count
          let cache = KVCache(repeating: prefix, config: config, batch: b, extra: steps)
          var ids = [Int32](repeating: 0, count: b * steps)  // (B, steps): each candidate but its last token
          for (r, cand) in group.enumerated() {
            for j in 0..<steps { ids[r * steps + j] = j < cand.count - 1 ? cand[j] : (cand.last ?? 0) }
          }
          let h = hiddenStates(embed(ids, shape: [b, steps]), cache: cache)  // (B, steps, C)
          var rows: [Int] = [], targets: [(candidate: Int, token: Int32)] = []
          for (r, cand) in group.enumerated() where cand.count > 1 {
            for j in 0..<(cand.count - 1) {
              rows.append(r * steps + j)
              targets.append((r, cand[j + 1]))
            }
          }
          // Row blocks keep the (rows, V) logits to a few hundred rows at a time.
          let block = 256
          var offset = 0
          while offset < rows.count {
            let part = Array(rows[offset..<min(offset + block, rows.count)])
            let lp = targetLogProbs(logits(gatherRows(h, rows: part)), targets: targets[offset..<(offset + part.count)].map(\.token), vocab: v)
            for (i, t) in targets[offset..<(offset + part.count)].enumerated() { scores[t.candidate].append(lp[i]) }
            offset += part.count
          }
        }
        byOrder += scores
      }
      var out = [[Float]](repeating: [], count: candidates.count)
      for (k, index) in order.enumerated() { out[index] = byOrder[k] }
      return out
    }
  }
}

/// log p(target) for each row of logits (N, V): the row's log-sum-exp (float64 sums) only.
func targetLogProbs(_ logits: Tensor, targets: [Int32], vocab v: Int) -> [Float] {
  let p = logits.ptr
  return targets.enumerated().map { r, target in
    let row = p + r * v
    var mx = -Float.infinity
    for i in 0..<v where row[i] > mx { mx = row[i] }
    var total = 0.0
    for i in 0..<v { total += Double(expf(row[i] - mx)) }
    return row[Int(target)] - mx - Float(Foundation.log(total))
  }
}

/// Ranks each image's candidate captions by their log-likelihood (LAVIS and BLIP-2 rank
/// retrieval candidates the same way, with their own scores). What an image's prompt is, and
/// the candidates' tokens, are the caller's; the image + prompt prefix runs once.
public struct CaptionRanking: Sendable {
  public enum Score: String, Sendable, CaseIterable {
    /// Σ log p(token | image, prompt, earlier tokens), end token included.
    case sum
    /// The same, divided by the candidate's token count.
    case mean
    /// Pointwise mutual information: the sum less the candidate's log-likelihood given the prompt
    /// without the image, so a short, common caption gains nothing from being likely anyway.
    case pmi
  }

  /// Scores of every candidate for one prefix; `priors` (one per candidate) only for `.pmi`.
  public static func scores(_ logProbs: [[Float]], _ score: Score, priors: [Double]? = nil) -> [Double] {
    precondition(score != .pmi || priors?.count == logProbs.count, "PMI needs one prior per candidate")
    return logProbs.enumerated().map { i, lp in
      let total = lp.reduce(0.0) { $0 + Double($1) }
      switch score {
      case .sum: return total
      case .mean: return total / Double(max(lp.count, 1))
      case .pmi: return total - priors![i]
      }
    }
  }

  /// 1-based rank of `correct` among `scores` (ties count against it: a candidate scoring
  /// the same as the correct one ranks ahead of it).
  public static func rank(of correct: Int, in scores: [Double]) -> Int {
    let s = scores[correct]
    var ahead = 0
    for (i, x) in scores.enumerated() where i != correct && x >= s { ahead += 1 }
    return ahead + 1
  }
}

/// Per-language tallies of ranks.
public struct RankTally: Sendable {
  public private(set) var ranks: [Int] = []
  public let candidates: Int
  public init(candidates: Int) { self.candidates = candidates }
  public mutating func add(_ rank: Int) { ranks.append(rank) }
  public var count: Int { ranks.count }
  public func topK(_ k: Int) -> Double { ranks.isEmpty ? 0 : Double(ranks.filter { $0 <= k }.count) / Double(ranks.count) }
  public var meanRank: Double { ranks.isEmpty ? 0 : Double(ranks.reduce(0, +)) / Double(ranks.count) }
  /// What uniform guessing gives: top-k = k / N, mean rank = (N + 1) / 2.
  public func chanceTopK(_ k: Int) -> Double { candidates == 0 ? 0 : min(1, Double(k) / Double(candidates)) }
  public var chanceMeanRank: Double { Double(candidates + 1) / 2 }
}
