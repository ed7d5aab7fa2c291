import Foundation

/// Learns a byte-level BPE vocabulary from text and writes it as a Hugging Face `tokenizer.json` with
/// Qwen2's pipeline (NFC, Qwen2's split pattern, ByteLevel), which `tokenizers` loads and encodes identically.
public struct BPETrainer: Sendable {
  /// Total vocabulary size, special tokens included.
  public var vocabularySize: Int
  /// Pairs seen fewer times than this are never merged.
  public var minimumPairCount: Int = 2
  /// Added after the learned tokens, in this order (ids `vocabularySize - count ..< vocabularySize`).
  public var specialTokens: [String] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]

  public init(vocabularySize: Int) {
    self.vocabularySize = vocabularySize
  }

  /// The word counts of a corpus, as Qwen2's pre-tokenizer cuts it (raw bytes of each piece → count).
  public static func countWords(_ text: String, into counts: inout [[UInt8]: Int]) {
    let normalized = UnicodeNormalizer(form: .nfc).normalize(text)
    let bytes = Array(normalized.utf8)
    for range in QwenStyleScanner(maxDigits: 1).matches(in: bytes, 0..<bytes.count) {
      counts[Array(bytes[range]), default: 0] += 1
    }
  }

  public struct Result: Sendable {
    /// Token spellings (byte-level alphabet) in id order, without the special tokens.
    public var tokens: [String]
    public var merges: [(String, String)]
  }

  /// Runs the merges: most frequent adjacent pair first; ties go to the pair with the smaller ids.
  public func train(wordCounts: [[UInt8]: Int]) throws -> Result {
    let learnedBudget = vocabularySize - specialTokens.count
    guard learnedBudget >= 256 else {
      throw TokenizerError.invalidValue(component: "trainer", reason: "vocabulary size \(vocabularySize) leaves no room for the 256 byte tokens", file: "-")
    }
    var tokens = (0..<256).map { ByteLevelAlphabet.spell([UInt8($0)]) }
    var idOfToken = Dictionary(uniqueKeysWithValues: tokens.enumerated().map { ($1, Int32($0)) })
    var merges: [(String, String)] = []
    // Words sorted so the run does not depend on dictionary order.
    let sortedWords = wordCounts.sorted { $0.key.lexicographicallyPrecedes($1.key) }
    var words: [[Int32]] = sortedWords.map { $0.key.map { Int32($0) } }
    let counts: [Int] = sortedWords.map(\.value)

    var pairCounts: [UInt64: Int] = [:]
    var pairWords: [UInt64: Set<Int>] = [:]
    @inline(__always) func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(a)) << 32 | UInt64(UInt32(b)) }
    for (w, word) in words.enumerated() where word.count > 1 {
      for k in 0..<(word.count - 1) {
        let pair = key(word[k], word[k + 1])
        pairCounts[pair, default: 0] += counts[w]
        pairWords[pair, default: []].insert(w)
      }
    }
    var heap = PairHeap()
    for (pair, count) in pairCounts { heap.push(count: count, pair: pair) }

    while tokens.count < learnedBudget, let top = heap.pop() {
      let current = pairCounts[top.pair] ?? 0
      if current != top.count {
        if current > 0 { heap.push(count: current, pair: top.pair) }  // stale entry: requeue at its true count
        continue
      }
      if current < minimumPairCount { break }
      let left = Int32(truncatingIfNeeded: top.pair >> 32)
      let right = Int32(truncatingIfNeeded: top.pair & 0xFFFF_FFFF)
      // Two different merges can spell the same token ("a"+"bc", "ab"+"c"): they share its id.
      let spelling = tokens[Int(left)] + tokens[Int(right)]
      let newID: Int32
      if let existing = idOfToken[spelling] {
        newID = existing
      } else {
        newID = Int32(tokens.count)
        tokens.append(spelling)
        idOfToken[spelling] = newID
      }
      merges.append((tokens[Int(left)], tokens[Int(right)]))
      var touched: [UInt64: Int] = [:]
      for w in (pairWords[top.pair] ?? []).sorted() {
        let old = words[w]
        var merged: [Int32] = []
        merged.reserveCapacity(old.count)
        var k = 0
        while k < old.count {
          if k + 1 < old.count && old[k] == left && old[k + 1] == right {
            merged.append(newID)
            k += 2
          } else {
            merged.append(old[k])
            k += 1
          }
        }
        if merged.count == old.count { continue }
        for k in 0..<(old.count - 1) {
          let pair = key(old[k], old[k + 1])
          pairCounts[pair, default: 0] -= counts[w]
          touched[pair] = 0
        }
        for k in 0..<max(0, merged.count - 1) {
          let pair = key(merged[k], merged[k + 1])
          pairCounts[pair, default: 0] += counts[w]
          pairWords[pair, default: []].insert(w)
          touched[pair] = 0
        }
        words[w] = merged
      }
      pairCounts[top.pair] = nil
      pairWords[top.pair] = nil
      for pair in touched.keys.sorted() {
        if let count = pairCounts[pair], count > 0 { heap.push(count: count, pair: pair) } else { pairCounts[pair] = nil }
      }
    }
    return Result(tokens: tokens, merges: merges)
  }

  /// Trains on text files and writes `tokenizer.json` to `output`.
  public func train(corpus: [URL], output: URL) throws {
    var counts: [[UInt8]: Int] = [:]
    for file in corpus {
      let text: String
      do { text = try String(contentsOf: file, encoding: .utf8) } catch {
        throw TokenizerError.unreadable(file: file.path, reason: error.localizedDescription)
      }
      // One line at a time keeps memory flat on large corpora; newlines still count as words.
      // Counted in chunks of about 1 MB cut at line ends, so memory stays flat on large corpora.
      var chunk = ""
      for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        chunk += line
        chunk += "\n"
        if chunk.utf8.count > 1 << 20 {
          Self.countWords(chunk, into: &counts)
          chunk = ""
        }
      }
      if !chunk.isEmpty { Self.countWords(chunk, into: &counts) }
    }
    let result = try train(wordCounts: counts)
    try tokenizerJSON(result).write(to: output)
  }

  /// Serialises a trained vocabulary as tokenizer.json (keys sorted so the file is reproducible).
  public func tokenizerJSON(_ result: Result) throws -> Data {
    var vocab: [String: Int] = [:]
    for (id, token) in result.tokens.enumerated() { vocab[token] = id }
    let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false]
    let added: [[String: Any]] = specialTokens.enumerated().map { k, content in
      ["id": result.tokens.count + k, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
       "normalized": false, "special": true]
    }
    let document: [String: Any] = [
      "version": "1.0", "truncation": NSNull(), "padding": NSNull(), "added_tokens": added,
      "normalizer": ["type": "NFC"],
      "pre_tokenizer": ["type": "Sequence", "pretokenizers": [
        ["type": "Split", "pattern": ["Regex": KnownPattern.qwen2.rawValue], "behavior": "Isolated", "invert": false],
        byteLevel,
      ]],
      "post_processor": byteLevel, "decoder": byteLevel,
      "model": [
        "type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
        "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
        "vocab": vocab, "merges": result.merges.map { [$0.0, $0.1] },
      ] as [String: Any],
    ]
    return try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])
  }
}

/// Max-heap of (count, pair); ties pop the smaller pair first so training is deterministic.
struct PairHeap {
  private var items: [(count: Int, pair: UInt64)] = []

  private static func before(_ a: (count: Int, pair: UInt64), _ b: (count: Int, pair: UInt64)) -> Bool {
    a.count != b.count ? a.count > b.count : a.pair < b.pair
  }

  mutating func push(count: Int, pair: UInt64) {
    items.append((count, pair))
    var child = items.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard Self.before(items[child], items[parent]) else { break }
      items.swapAt(child, parent)
      child = parent
    }
  }

  mutating func pop() -> (count: Int, pair: UInt64)? {
    guard !items.isEmpty else { return nil }
    let top = items[0]
    let last = items.removeLast()
    if !items.isEmpty {
      items[0] = last
      var parent = 0
      while true {
        let left = 2 * parent + 1
        let right = left + 1
        var best = parent
        if left < items.count && Self.before(items[left], items[best]) { best = left }
        if right < items.count && Self.before(items[right], items[best]) { best = right }
        if best == parent { break }
        items.swapAt(parent, best)
        parent = best
      }
    }
    return top
  }
}
