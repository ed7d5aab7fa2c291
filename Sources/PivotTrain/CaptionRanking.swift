import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor
import PivotText

/// Caption ranking over evaluation shards: every image scores a set of candidate captions per
/// language by their log-likelihood given the image (and the prompt), the image + prompt prefix
/// computed once and reused through the KV cache, the candidates batched. Candidates are every
/// sample's caption in the same language (duplicates counted once), or the sample's own list.
///
/// Shard convention: a sample's captions are its `<lang>.txt` fields (`en.txt`, `zh.txt`; a plain
/// `txt` counts as language `txt`) or a `json` field `{"captions": {"en": …}}`; a sample may carry
/// its own candidates as `{"candidates": {"en": [...]}}` in the same json.
public struct CaptionRankSettings: Sendable {
  /// `chat`: the chat template with `prompts[lang]` as the user turn; `plain`: the image slot
  /// alone (LLaVA's stage-1 format), the same prefix for every language.
  public var format = "chat"
  /// Per-language instruction; the entry for "" applies to languages without their own.
  public var prompts: [String: String] = ["": "Describe the image."]
  public var score = CaptionRanking.Score.sum
  public var batch = 16
  public var maxImages: Int?
  public init() {}

  public func prompt(_ lang: String) -> String { prompts[lang] ?? prompts[""] ?? "Describe the image." }
}

public struct CaptionRankResult: Sendable {
  public var tallies: [String: RankTally] = [:]
  /// With PMI scoring, the same candidates ranked by the plain sum as well (what PMI corrects).
  public var sumTallies: [String: RankTally] = [:]
  /// One record per (image, language): key, rank, the reference and the top candidates.
  public var records: [[String: String]] = []
  public var languages: [String] { tallies.keys.sorted() }

  /// What metrics.jsonl and `pivot eval` print: rank_top1_en, rank_top5_en, rank_mean_en, ….
  public var metrics: [String: Double] {
    var m: [String: Double] = [:]
    for (lang, t) in tallies {
      m["rank_top1_\(lang)"] = t.topK(1)
      m["rank_top5_\(lang)"] = t.topK(5)
      m["rank_mean_\(lang)"] = t.meanRank
      m["rank_candidates_\(lang)"] = Double(t.candidates)
      m["rank_chance_top1_\(lang)"] = t.chanceTopK(1)
      m["rank_chance_top5_\(lang)"] = t.chanceTopK(5)
    }
    for (lang, t) in sumTallies {
      m["rank_top1_\(lang)_sum"] = t.topK(1)
      m["rank_top5_\(lang)_sum"] = t.topK(5)
      m["rank_mean_\(lang)_sum"] = t.meanRank
    }
    return m
  }

  public var table: String {
    var lines = ["| language | images | candidates | top-1 | top-5 | mean rank | chance top-1 | chance top-5 | chance mean rank |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    let rows = languages.flatMap { lang in [(lang, tallies[lang]!)] + (sumTallies[lang].map { [("\(lang) (sum)", $0)] } ?? []) }
    for (label, t) in rows {
      lines.append(String(format: "| %@ | %d | %d | %.1f%% | %.1f%% | %.1f | %.1f%% | %.1f%% | %.1f |", label, t.count, t.candidates,
                          100 * t.topK(1), 100 * t.topK(5), t.meanRank, 100 * t.chanceTopK(1), 100 * t.chanceTopK(5), t.chanceMeanRank))
    }
    return lines.joined(separator: "\n")
  }
}

public enum CaptionRankEvaluation {
  struct Item {
    var key: String
    var image: [UInt8]
    var captions: [String: String]
    var candidates: [String: [String]]
  }

  /// The samples of `shards` that have an image and at least one caption (the first `limit`).
  static func items(_ shards: String, limit: Int?) throws -> [Item] {
    var out: [Item] = []
    for path in try ShardList.expand(shards) {
      let reader = try ShardSampleReader(path: path)
      while let item = try reader.next() {
        guard case .sample(let s) = item, let image = s.first(of: SampleFields().image) else { continue }
        var captions: [String: String] = [:]
        var candidates: [String: [String]] = [:]
        for f in s.fields where f.name == "txt" || f.name.hasSuffix(".txt") {
          let lang = f.name == "txt" ? "txt" : String(f.name.dropLast(4))
          let text = String(decoding: f.data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
          if !text.isEmpty { captions[lang] = text }
        }
        if let js = s["json"], let obj = try? JSONSerialization.jsonObject(with: Data(js)) as? [String: Any] {
          for (lang, text) in obj["captions"] as? [String: String] ?? [:] { captions[lang] = text }
          for (lang, list) in obj["candidates"] as? [String: [String]] ?? [:] { candidates[lang] = list }
        }
        // A plain `txt` beside language fields is the loss's copy of one of them, not a language.
        if captions.count > 1 { captions["txt"] = nil }
        guard !captions.isEmpty else { continue }
        out.append(Item(key: s.key, image: image, captions: captions, candidates: candidates))
        if let limit, out.count >= limit { return out }
      }
    }
    return out
  }

  /// Ranks every image's candidates; `progress(done, total)` after each image.
  public static func run(
    model: ChatModel, template: ChatTemplate, image: ImagePreprocessing, shards: String, settings: CaptionRankSettings,
    progress: (Int, Int) -> Void = { _, _ in }
  ) throws -> CaptionRankResult {
    let samples = try items(shards, limit: settings.maxImages)
    guard !samples.isEmpty else {
      throw DataError.invalid("\(shards): no sample with an image and a caption to rank (captions are <lang>.txt or txt fields)")
    }
    let n = model.imageTokenCount
    let plain = settings.format == "plain"
    // Candidate pools per language: every caption of that language, once.
    var pools: [String: [String]] = [:]
    for s in samples {
      for (lang, text) in s.captions where !(pools[lang]?.contains(text) ?? false) { pools[lang, default: []].append(text) }
    }
    // A caption's scored tokens: what training puts loss on (the caption and its end token).
    var encoders: [String: ChatSampleEncoder] = [:]
    for lang in pools.keys {
      encoders[lang] = ChatSampleEncoder(template: template, imageTokenCount: n, captionPrompt: settings.prompt(lang), plainCaptions: plain)
    }
    var tokenCache: [String: [Int32]] = [:]
    func tokens(_ text: String, _ lang: String) throws -> [Int32] {
      let key = lang + "\u{0}" + text
      if let t = tokenCache[key] { return t }
      let e = try encoders[lang]!.encodeCaption(text)
      let t = zip(e.ids, e.labels).filter { $0.1 != ignoreLabel }.map(\.0)
      tokenCache[key] = t
      return t
    }
    let lm = model.languageModel
    // The prompt's keys, values and last hidden state, with the image's soft tokens in its slot;
    // without `soft`, the prompt alone (no slot): what PMI subtracts.
    func prefixState(_ lang: String, soft: Tensor?) throws -> (KVCache, Tensor) {
      let count = soft == nil ? 0 : n
      let ids: [Int32]
      let start: Int
      if plain {
        let p = ChatSampleEncoder.plainPrefix(template.tokenizer, placeholder: template.imagePlaceholderID ?? model.config.imageTokenId, imageTokens: count)
        ids = p.ids
        start = p.slot.lowerBound
      } else {
        let content = soft == nil ? settings.prompt(lang) : "\(template.imageMarker)\n\(settings.prompt(lang))"
        let r = try template.render(messages: [ChatMessage(role: "user", content: content)], imageTokenCount: count, addGenerationPrompt: true)
        ids = r.ids
        start = r.imageSlot?.lowerBound ?? 0
      }
      guard !ids.isEmpty else { throw DataError.invalid("caption ranking: the \(settings.format) prompt for '\(lang)' has no tokens to condition on") }
      return noGrad {
        var x = lm.embed(ids, shape: [1, ids.count])
        if let soft { x = scatterRows(x, rows: (0..<n).map { start + $0 }, from: reshape(soft, [n, lm.config.hiddenSize])) }
        let cache = KVCache(config: lm.config, capacity: ids.count)
        let h = lm.hiddenStates(x, cache: cache)  // (1, T, C)
        return (cache, slice(reshape(h, [ids.count, lm.config.hiddenSize]), axis: 0, (ids.count - 1)..<ids.count))
      }
    }
    // PMI: each candidate's log-likelihood without the image, once per language and candidate.
    var priors: [String: [String: Double]] = [:]
    if settings.score == .pmi {
      for (lang, pool) in pools {
        var texts = pool
        for s in samples { for c in s.candidates[lang] ?? [] where !texts.contains(c) { texts.append(c) } }
        let p = try prefixState(lang, soft: nil)
        let lp = lm.continuationLogProbs(prefix: p.0, lastHidden: p.1, candidates: try texts.map { try tokens($0, lang) }, batch: settings.batch)
        priors[lang] = Dictionary(uniqueKeysWithValues: zip(texts, lp.map { $0.reduce(0.0) { $0 + Double($1) } }))
      }
    }
    var result = CaptionRankResult()
    for (lang, pool) in pools {
      result.tallies[lang] = RankTally(candidates: pool.count)
      if settings.score == .pmi { result.sumTallies[lang] = RankTally(candidates: pool.count) }
    }
    let pixels = Tensor(empty: [1, 3, image.cropHeight, image.cropWidth])
    for (done, s) in samples.enumerated() {
      try image.process(jpeg: s.image, key: s.key, into: pixels.ptr)
      let soft = noGrad { model.imageTokens(pixels) }  // (1, N, D), shared by every language
      var plainPrefix: (KVCache, Tensor)?
      for lang in s.captions.keys.sorted() {
        let reference = s.captions[lang]!
        var list = s.candidates[lang] ?? pools[lang]!
        if !list.contains(reference) { list.append(reference) }
        let prefix: (KVCache, Tensor)
        if plain, let p = plainPrefix {
          prefix = p
        } else {
          prefix = try prefixState(lang, soft: soft)
          if plain { plainPrefix = prefix }
        }
        let candidateTokens = try list.map { try tokens($0, lang) }
        let logProbs = lm.continuationLogProbs(prefix: prefix.0, lastHidden: prefix.1, candidates: candidateTokens, batch: settings.batch)
        let scores = CaptionRanking.scores(logProbs, settings.score, priors: priors[lang].map { p in list.map { p[$0]! } })
        let correct = list.firstIndex(of: reference)!
        let rank = CaptionRanking.rank(of: correct, in: scores)
        result.tallies[lang]!.add(rank)
        if settings.score == .pmi { result.sumTallies[lang]!.add(CaptionRanking.rank(of: correct, in: CaptionRanking.scores(logProbs, .sum))) }
        let top = scores.indices.sorted { scores[$0] > scores[$1] }.prefix(5).map { list[$0] }
        result.records.append(["key": s.key, "lang": lang, "rank": "\(rank)", "candidates": "\(list.count)", "reference": reference,
                               "top5": top.joined(separator: " | ")])
      }
      progress(done + 1, samples.count)
    }
    return result
  }
}
