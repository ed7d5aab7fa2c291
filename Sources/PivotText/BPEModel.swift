import Foundation

/// The tokenizer.json `model` of type BPE: vocabulary, ranked merges, and the options byte-level and
/// SentencePiece-style files use (byte fallback, unknown token, ignore_merges, subword prefix/suffix).
/// Token spellings (UTF-8 bytes) → ids: an open-addressing table over one byte arena. A
/// dictionary keyed by `[UInt8]` hashed byte by byte and chased a heap buffer per probe, which
/// made loading a 150k-token vocabulary (three lookups per merge) take most of a second.
struct ByteVocabulary: Sendable {
  private struct Slot {
    var hash: UInt64 = 0
    var start: Int32 = 0
    var length: Int32 = 0
    var id: Int32 = -1  // -1: empty
  }
  private var arena: [UInt8] = []
  private var slots: [Slot]
  private(set) var count = 0

  init(minimumCapacity: Int = 0) {
    var size = 16
    while size < minimumCapacity * 2 { size <<= 1 }
    slots = Array(repeating: Slot(), count: size)
  }

  /// FNV-1a, 64-bit (short keys, no setup cost), then a finalising mix so that the low bits
  /// used as the slot index spread well (linear probing clusters on weak low bits).
  private static func hash(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    h ^= h >> 33
    h = h &* 0xff51_afd7_ed55_8ccd
    h ^= h >> 33
    return h
  }

  /// The id of a spelling given as raw bytes (no array needed).
  func id(_ bytes: UnsafeBufferPointer<UInt8>) -> Int32? {
    let s = slots[find(bytes, hash: Self.hash(bytes))]
    return s.id < 0 ? nil : s.id
  }

  /// The slot holding `bytes`, or the empty slot where they would go.
  private func find(_ bytes: UnsafeBufferPointer<UInt8>, hash h: UInt64) -> Int {
    let mask = slots.count - 1
    var i = Int(truncatingIfNeeded: h) & mask
    return arena.withUnsafeBufferPointer { a in
      while true {
        let s = slots[i]
        if s.id < 0 { return i }
        if s.hash == h && Int(s.length) == bytes.count
          && (bytes.isEmpty || memcmp(a.baseAddress! + Int(s.start), bytes.baseAddress!, bytes.count) == 0) {
          return i
        }
        i = (i + 1) & mask
      }
    }
  }

  subscript(bytes: [UInt8]) -> Int32? {
    get { bytes.withUnsafeBufferPointer { id($0) } }
    set {
      guard let id = newValue else { preconditionFailure("ByteVocabulary does not remove entries") }
      if (count + 1) * 2 > slots.count { grow() }
      bytes.withUnsafeBufferPointer { b in
        let h = Self.hash(b)
        let i = find(b, hash: h)
        if slots[i].id < 0 {
          slots[i] = Slot(hash: h, start: Int32(arena.count), length: Int32(b.count), id: id)
          arena.append(contentsOf: b)
          count += 1
        } else {
          slots[i].id = id
        }
      }
    }
  }

  private mutating func grow() {
    let old = slots
    slots = Array(repeating: Slot(), count: old.count * 2)
    let mask = slots.count - 1
    for s in old where s.id >= 0 {
      var i = Int(truncatingIfNeeded: s.hash) & mask
      while slots[i].id >= 0 { i = (i + 1) & mask }
      slots[i] = s
    }
  }
}

final class BPEModel: Sendable {
  /// Token text (as UTF-8 bytes, so canonically-equivalent spellings stay distinct) → id.
  let vocab: ByteVocabulary
  /// id → token text; empty where the vocabulary has a gap.
  let tokens: [String]
  /// (left id << 32 | right id) → (rank << 32 | merged id).
  let merges: [UInt64: UInt64]
  let unknownID: Int32?
  let byteFallback: Bool
  let fuseUnknown: Bool
  let ignoreMerges: Bool
  let continuingSubwordPrefix: String?
  let endOfWordSuffix: String?
  /// id of the byte-level character spelling each byte (-1 if the vocabulary lacks it).
  let byteSymbolIDs: [Int32]
  let cache = WordCache()

  init(node: JSONNode) throws {
    let file = node.file
    guard let vocabObject = node.object["vocab"] as? [String: Any] else {
      throw TokenizerError.missingField(component: "model", field: "vocab", file: file)
    }
    var vocab = ByteVocabulary(minimumCapacity: vocabObject.count)
    var maxID = -1
    for (token, value) in vocabObject {
      guard let id = (value as? NSNumber)?.intValue, id >= 0, id < Int(Int32.max) else {
        throw node.fail("vocab entry \"\(token)\" has no valid id")
      }
      vocab[Array(token.utf8)] = Int32(id)
      maxID = max(maxID, id)
    }
    var tokens = [String](repeating: "", count: maxID + 1)
    for (token, value) in vocabObject { tokens[(value as! NSNumber).intValue] = token }
    self.vocab = vocab
    self.tokens = tokens

    guard node.has("merges"), let mergeList = node.object["merges"] as? [Any] else {
      throw TokenizerError.missingField(component: "model", field: "merges", file: file)
    }
    var merges: [UInt64: UInt64] = [:]
    merges.reserveCapacity(mergeList.count)
    var joined: [UInt8] = []  // left + right, reused across merges
    for (rank, entry) in mergeList.enumerated() {
      let pair: (String, String)
      if let line = entry as? String {
        // Legacy form "a b"; tokens never contain a space in byte-level vocabularies.
        let parts = line.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2 else { throw node.fail("merge \"\(line)\" is not two tokens separated by one space") }
        pair = (String(parts[0]), String(parts[1]))
      } else if let list = entry as? [Any], list.count == 2, let a = list[0] as? String, let b = list[1] as? String {
        pair = (a, b)
      } else {
        throw node.fail("merge #\(rank) is neither \"a b\" nor [\"a\", \"b\"]")
      }
      // Looked up as bytes in place: three lookups for each of ~150k merges are most of the load.
      let leftID = pair.0.utf8.withContiguousStorageIfAvailable { vocab.id($0) } ?? vocab[Array(pair.0.utf8)]
      let rightID = pair.1.utf8.withContiguousStorageIfAvailable { vocab.id($0) } ?? vocab[Array(pair.1.utf8)]
      joined.removeAll(keepingCapacity: true)
      joined.append(contentsOf: pair.0.utf8)
      joined.append(contentsOf: pair.1.utf8)
      guard let leftID else { throw TokenizerError.unknownMergeToken(merge: "\(pair.0) \(pair.1)", token: pair.0, file: file) }
      guard let rightID else { throw TokenizerError.unknownMergeToken(merge: "\(pair.0) \(pair.1)", token: pair.1, file: file) }
      guard let mergedID = vocab[joined] else {
        throw TokenizerError.unknownMergeToken(merge: "\(pair.0) \(pair.1)", token: pair.0 + pair.1, file: file)
      }
      let key = UInt64(UInt32(leftID)) << 32 | UInt64(UInt32(rightID))
      if merges[key] == nil { merges[key] = UInt64(rank) << 32 | UInt64(UInt32(mergedID)) }
    }
    self.merges = merges

    if let unk = node.optionalString("unk_token") {
      guard let id = vocab[Array(unk.utf8)] else { throw node.fail("unk_token \"\(unk)\" is not in the vocabulary") }
      unknownID = id
    } else {
      unknownID = nil
    }
    byteFallback = node.bool("byte_fallback", default: false)
    fuseUnknown = node.bool("fuse_unk", default: false)
    ignoreMerges = node.bool("ignore_merges", default: false)
    let prefix = node.optionalString("continuing_subword_prefix")
    continuingSubwordPrefix = (prefix?.isEmpty ?? true) ? nil : prefix
    let suffix = node.optionalString("end_of_word_suffix")
    endOfWordSuffix = (suffix?.isEmpty ?? true) ? nil : suffix
    if let dropout = node.object["dropout"] as? NSNumber, dropout.doubleValue > 0 {
      throw node.fail("BPE dropout is not supported (training-time randomness; set it to null)")
    }
    byteSymbolIDs = ByteLevelAlphabet.utf8ForByte.map { vocab[$0] ?? -1 }
  }

  var vocabularySize: Int { tokens.count }

  /// Appends the ids of one pre-tokenised piece. `byteLevel`: the piece is raw bytes to be spelled
  /// with the byte-level alphabet; otherwise it is text whose characters are the initial symbols.
  func tokenize(_ bytes: [UInt8], _ range: Range<Int>, byteLevel: Bool, into out: inout [Int32]) {
    if range.isEmpty { return }
    if range.count == 1 && byteLevel {
      let id = byteSymbolIDs[Int(bytes[range.lowerBound])]
      if id >= 0 { out.append(id); return }
    }
    if let cached = cache.lookup(bytes[range]) {
      out.append(contentsOf: cached)
      return
    }
    var symbols = byteLevel ? byteLevelSymbols(bytes[range]) : characterSymbols(bytes[range])
    if ignoreMerges, let whole = wholeWordID(bytes[range], byteLevel: byteLevel) {
      symbols = [whole]
    } else {
      mergeAll(&symbols)
    }
    cache.store(Array(bytes[range]), symbols)
    out.append(contentsOf: symbols)
  }

  private func wholeWordID(_ word: ArraySlice<UInt8>, byteLevel: Bool) -> Int32? {
    if !byteLevel { return vocab[Array(word)] }
    var spelled: [UInt8] = []
    spelled.reserveCapacity(word.count * 2)
    for byte in word { spelled.append(contentsOf: ByteLevelAlphabet.utf8ForByte[Int(byte)]) }
    return vocab[spelled]
  }

  private func byteLevelSymbols(_ word: ArraySlice<UInt8>) -> [Int32] {
    var symbols: [Int32] = []
    symbols.reserveCapacity(word.count)
    for byte in word {
      let id = byteSymbolIDs[Int(byte)]
      if id >= 0 {
        symbols.append(id)
      } else if let unknownID, !(fuseUnknown && symbols.last == unknownID) {
        symbols.append(unknownID)
      }
    }
    return symbols
  }

  /// SentencePiece-style start: one symbol per character, then `<0xXX>` bytes or the unknown token.
  private func characterSymbols(_ word: ArraySlice<UInt8>) -> [Int32] {
    let text = String(decoding: word, as: UTF8.self)
    let scalars = Array(text.unicodeScalars)
    var symbols: [Int32] = []
    symbols.reserveCapacity(scalars.count)
    var previousUnknown = false
    for (k, scalar) in scalars.enumerated() {
      var piece = String(scalar)
      if k > 0, let continuingSubwordPrefix { piece = continuingSubwordPrefix + piece }
      if k == scalars.count - 1, let endOfWordSuffix { piece += endOfWordSuffix }
      if let id = vocab[Array(piece.utf8)] {
        symbols.append(id)
        previousUnknown = false
        continue
      }
      if byteFallback {
        let ids = String(scalar).utf8.map { vocab[Array(String(format: "<0x%02X>", $0).utf8)] }
        if ids.allSatisfy({ $0 != nil }) {
          symbols.append(contentsOf: ids.map { $0! })
          previousUnknown = false
          continue
        }
      }
      if let unknownID {
        if !(fuseUnknown && previousUnknown) { symbols.append(unknownID) }
        previousUnknown = true
      }
    }
    return symbols
  }

  /// Repeatedly merges the adjacent pair of lowest rank (leftmost on ties), as `tokenizers` does.
  private func mergeAll(_ symbols: inout [Int32]) {
    guard symbols.count > 1 else { return }
    if symbols.count > 48 {
      mergeAllLong(&symbols)
      return
    }
    // ranks[k] is the merge of symbols[k] and symbols[k + 1] (rank << 32 | merged id), or .max.
    var ranks = [UInt64](repeating: .max, count: symbols.count - 1)
    for k in 0..<ranks.count { ranks[k] = pairRank(symbols[k], symbols[k + 1]) }
    while !ranks.isEmpty {
      var best = 0
      var bestValue = ranks[0]
      for k in 1..<ranks.count where ranks[k] >> 32 < bestValue >> 32 {
        best = k
        bestValue = ranks[k]
      }
      if bestValue == .max { break }
      symbols[best] = Int32(truncatingIfNeeded: bestValue & 0xFFFF_FFFF)
      symbols.remove(at: best + 1)
      ranks.remove(at: best)
      if best > 0 { ranks[best - 1] = pairRank(symbols[best - 1], symbols[best]) }
      if best < ranks.count { ranks[best] = pairRank(symbols[best], symbols[best + 1]) }
    }
  }

  /// The same merge order for long words (SentencePiece-style files give whole texts as one word):
  /// a linked list of symbols and a min-heap of candidate merges, O(n log n) instead of O(n²).
  private func mergeAllLong(_ symbols: inout [Int32]) {
    let n = symbols.count
    var next = Array(1...n)
    next[n - 1] = -1
    var previous = Array(-1..<(n - 1))
    var alive = [Bool](repeating: true, count: n)
    // Heap entries: rank << 32 | position, smallest first; ties in rank go to the leftmost position.
    var heap: [UInt64] = []
    heap.reserveCapacity(n)
    func push(_ value: UInt64) {
      heap.append(value)
      var child = heap.count - 1
      while child > 0 {
        let parent = (child - 1) / 2
        guard heap[child] < heap[parent] else { break }
        heap.swapAt(child, parent)
        child = parent
      }
    }
    func pop() -> UInt64 {
      let top = heap[0]
      let last = heap.removeLast()
      if !heap.isEmpty {
        heap[0] = last
        var parent = 0
        while true {
          let left = 2 * parent + 1
          var best = parent
          if left < heap.count && heap[left] < heap[best] { best = left }
          if left + 1 < heap.count && heap[left + 1] < heap[best] { best = left + 1 }
          if best == parent { break }
          heap.swapAt(parent, best)
          parent = best
        }
      }
      return top
    }
    for k in 0..<(n - 1) {
      let merge = pairRank(symbols[k], symbols[k + 1])
      if merge != .max { push(merge & 0xFFFF_FFFF_0000_0000 | UInt64(k)) }
    }
    while !heap.isEmpty {
      let entry = pop()
      let position = Int(entry & 0xFFFF_FFFF)
      let right = next[position]
      guard alive[position], right >= 0 else { continue }
      let merge = pairRank(symbols[position], symbols[right])
      guard merge != .max, merge >> 32 == entry >> 32 else { continue }  // stale: a neighbour changed
      symbols[position] = Int32(truncatingIfNeeded: merge & 0xFFFF_FFFF)
      alive[right] = false
      next[position] = next[right]
      if next[right] >= 0 { previous[next[right]] = position }
      if previous[position] >= 0 {
        let left = previous[position]
        let candidate = pairRank(symbols[left], symbols[position])
        if candidate != .max { push(candidate & 0xFFFF_FFFF_0000_0000 | UInt64(left)) }
      }
      if next[position] >= 0 {
        let candidate = pairRank(symbols[position], symbols[next[position]])
        if candidate != .max { push(candidate & 0xFFFF_FFFF_0000_0000 | UInt64(position)) }
      }
    }
    var merged: [Int32] = []
    merged.reserveCapacity(n)
    var k = 0
    while k >= 0 {
      merged.append(symbols[k])
      k = next[k]
    }
    symbols = merged
  }

  @inline(__always) private func pairRank(_ left: Int32, _ right: Int32) -> UInt64 {
    merges[UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))] ?? .max
  }
}

/// Word → ids memo shared by every encode on a tokenizer; bounded so a long run cannot grow it forever.
final class WordCache: @unchecked Sendable {
  private var entries: [[UInt8]: [Int32]] = [:]
  private let lock = NSLock()
  private let capacity = 100_000

  func lookup(_ word: ArraySlice<UInt8>) -> [Int32]? {
    guard word.count <= 64 else { return nil }
    let key = Array(word)
    lock.lock()
    defer { lock.unlock() }
    return entries[key]
  }

  func store(_ word: [UInt8], _ ids: [Int32]) {
    guard word.count <= 64 else { return }
    lock.lock()
    defer { lock.unlock() }
    if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
    entries[word] = ids
  }
}
