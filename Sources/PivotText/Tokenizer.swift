import Foundation

/// The parts of a checkpoint's `tokenizer_config.json` (and `chat_template.jinja`) that Pivot uses.
public struct TokenizerConfig: Sendable {
  public var bosToken: String?
  public var eosToken: String?
  public var padToken: String?
  public var unkToken: String?
  /// The Jinja chat template source.
  public var chatTemplate: String?
  /// Where `chatTemplate` was read from, to name it in errors.
  public var chatTemplateSource: String?

  public init(bosToken: String? = nil, eosToken: String? = nil, padToken: String? = nil, chatTemplate: String? = nil,
              unkToken: String? = nil, chatTemplateSource: String? = nil) {
    self.bosToken = bosToken
    self.eosToken = eosToken
    self.padToken = padToken
    self.unkToken = unkToken
    self.chatTemplate = chatTemplate
    self.chatTemplateSource = chatTemplateSource
  }

  public init(contentsOf url: URL) throws {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw TokenizerError.unreadable(file: url.path, reason: error.localizedDescription)
    }
    let object: Any
    do { object = try FastJSON.parse(data) } catch {
      throw TokenizerError.malformedJSON(file: url.path, reason: "\(error)")
    }
    guard let dict = object as? [String: Any] else {
      throw TokenizerError.malformedJSON(file: url.path, reason: "top level is not an object")
    }
    // Special tokens are written either as strings or as {"content": ...} objects.
    func token(_ key: String) -> String? {
      if let text = dict[key] as? String { return text }
      return (dict[key] as? [String: Any])?["content"] as? String
    }
    bosToken = token("bos_token")
    eosToken = token("eos_token")
    padToken = token("pad_token")
    unkToken = token("unk_token")
    if let template = dict["chat_template"] as? String {
      chatTemplate = template
    } else if let named = dict["chat_template"] as? [[String: Any]] {
      chatTemplate = (named.first { $0["name"] as? String == "default" } ?? named.first)?["template"] as? String
    }
    if chatTemplate != nil { chatTemplateSource = url.path + " (chat_template)" }
  }

  /// Current transformers writes the template to `chat_template.jinja` beside the tokenizer rather than into
  /// tokenizer_config.json; when that file exists its template is the one transformers uses.
  mutating func readChatTemplateFile(_ url: URL) throws {
    do {
      chatTemplate = try String(contentsOf: url, encoding: .utf8)
    } catch {
      throw TokenizerError.unreadable(file: url.path, reason: error.localizedDescription)
    }
    chatTemplateSource = url.path
  }
}

/// A Hugging Face `tokenizer.json` pipeline: added tokens → normalizer → pre-tokenizer → BPE → post-processor,
/// and the decoder back. Encodes exactly as the `tokenizers` library does for the Qwen2, LLaMA-3 and GPT-2 families.
public final class Tokenizer: Sendable {
  /// Where the tokenizer was read from (for messages).
  public let source: String
  public let config: TokenizerConfig?
  let model: BPEModel
  let normalizer: (any Normalizer)?
  let preTokenizer: (any PreTokenizer)?
  let postProcessor: (any PostProcessor)?
  let decoder: (any TokenDecoder)?
  let byteLevel: Bool
  let addedTokens: [AddedToken]
  let rawMatcher: AddedTokenMatcher  // tokens with normalized=false, matched on the input text
  let normalizedMatcher: AddedTokenMatcher  // tokens with normalized=true, matched after normalisation
  let addedByID: [Int32: AddedToken]
  let addedByContent: [String: Int32]
  let addedSpellings: [Int32: String]
  let specialContents: Set<String>

  /// Reads a `tokenizer.json` file, or a folder holding `tokenizer.json` (and optionally `tokenizer_config.json`
  /// and `chat_template.jinja`).
  /// A `tokenizer.json.gz` is read too: the real Qwen2 file is 4.8 MB, more than the repository should hold,
  /// so it is committed gzip'd. PivotText has no zlib; the `gzip` command, present on every Linux and macOS
  /// machine, decompresses it.
  public convenience init(contentsOf url: URL) throws {
    let file = try Self.resolveFile(url)
    let configURL = file.deletingLastPathComponent().appendingPathComponent("tokenizer_config.json")
    var config = FileManager.default.fileExists(atPath: configURL.path) ? try TokenizerConfig(contentsOf: configURL) : nil
    let templateURL = file.deletingLastPathComponent().appendingPathComponent("chat_template.jinja")
    if FileManager.default.fileExists(atPath: templateURL.path) {
      var withTemplate = config ?? TokenizerConfig()
      try withTemplate.readChatTemplateFile(templateURL)
      config = withTemplate
    }
    let data: Data
    do {
      data = file.pathExtension == "gz" ? try gunzip(file) : try Data(contentsOf: file)
    } catch let error as TokenizerError {
      throw error
    } catch {
      throw TokenizerError.unreadable(file: file.path, reason: error.localizedDescription)
    }
    try self.init(jsonData: data, source: file.path, config: config)
  }

  /// The tokenizer file a path names: itself, or a folder's tokenizer.json (or tokenizer.json.gz).
  static func resolveFile(_ url: URL) throws -> URL {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
      throw TokenizerError.unreadable(file: url.path, reason: "no such file or folder")
    }
    guard isDirectory.boolValue else { return url }
    let plain = url.appendingPathComponent("tokenizer.json")
    let compressed = url.appendingPathComponent("tokenizer.json.gz")
    if !FileManager.default.fileExists(atPath: plain.path) && FileManager.default.fileExists(atPath: compressed.path) {
      return compressed
    }
    return plain
  }

  /// Parses tokenizer.json content; `source` names it in errors.
  public init(jsonData: Data, source: String = "tokenizer.json", config: TokenizerConfig? = nil) throws {
    self.source = source
    self.config = config
    let object: Any
    do { object = try FastJSON.parse(jsonData) } catch {
      throw TokenizerError.malformedJSON(file: source, reason: "\(error)")
    }
    guard let root = object as? [String: Any] else {
      throw TokenizerError.malformedJSON(file: source, reason: "top level is not an object")
    }
    let modelNode = try JSONNode(root["model"], component: "model", file: source)
    let modelType = modelNode.type ?? "BPE"  // older files omit the type of their BPE model
    guard modelType == "BPE" else { throw TokenizerError.unsupportedComponent(kind: "model", type: modelType, file: source) }
    model = try BPEModel(node: modelNode)
    let normalizer = try NormalizerFactory.make(root["normalizer"], file: source)
    self.normalizer = normalizer
    let preTokenizer = try PreTokenizerFactory.make(root["pre_tokenizer"], file: source)
    self.preTokenizer = preTokenizer
    byteLevel = preTokenizer?.isByteLevel ?? false
    postProcessor = try PostProcessorFactory.make(root["post_processor"], file: source)
    decoder = try DecoderFactory.make(root["decoder"], file: source)

    var added: [AddedToken] = []
    for entry in (root["added_tokens"] as? [Any]) ?? [] {
      let node = try JSONNode(entry, component: "added_tokens entry", file: source)
      guard let id = (node.object["id"] as? NSNumber)?.int32Value else { throw node.fail("added token without an id") }
      added.append(
        AddedToken(
          id: id, content: try node.string("content"), isSpecial: node.bool("special", default: false),
          singleWord: node.bool("single_word", default: false), leftStrip: node.bool("lstrip", default: false),
          rightStrip: node.bool("rstrip", default: false), normalized: node.bool("normalized", default: true)))
    }
    addedTokens = added
    let raw = added.filter { !$0.normalized }
    rawMatcher = AddedTokenMatcher(raw, spellings: raw.map(\.content))
    // `tokenizers` matches (and decodes) a normalized added token by its normalised content.
    let normalized = added.filter(\.normalized)
    let normalizedSpellings = normalized.map { normalizer?.normalize($0.content) ?? $0.content }
    normalizedMatcher = AddedTokenMatcher(normalized, spellings: normalizedSpellings)
    var spellings = Dictionary(raw.map { ($0.id, $0.content) }, uniquingKeysWith: { first, _ in first })
    for (token, spelling) in zip(normalized, normalizedSpellings) where spellings[token.id] == nil { spellings[token.id] = spelling }
    addedSpellings = spellings
    specialContents = Set(added.filter(\.isSpecial).map(\.content))
    addedByID = Dictionary(added.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    addedByContent = Dictionary(added.map { ($0.content, $0.id) }, uniquingKeysWith: { first, _ in first })
  }

  // MARK: Vocabulary

  /// Number of ids: the model's vocabulary plus added tokens beyond it.
  public var vocabularySize: Int { max(model.vocabularySize, Int(addedByID.keys.max() ?? -1) + 1) }

  /// The id of a token spelled as in the vocabulary (e.g. `"<|im_end|>"`, `"Ġthe"`).
  public func id(forToken token: String) -> Int32? {
    addedByContent[token] ?? model.vocab[Array(token.utf8)]
  }

  /// The vocabulary spelling of an id, or nil if the id is unknown.
  public func token(forID id: Int32) -> String? {
    if let spelling = addedSpellings[id] { return spelling }
    guard id >= 0, Int(id) < model.tokens.count, !model.tokens[Int(id)].isEmpty else { return nil }
    return model.tokens[Int(id)]
  }

  public func isSpecial(_ id: Int32) -> Bool { addedByID[id]?.isSpecial ?? false }

  public var specialTokens: [AddedToken] { addedTokens.filter(\.isSpecial) }

  /// The end-of-sequence id generation stops at: tokenizer_config.json's `eos_token`, else a known end token.
  public var eosTokenID: Int32? {
    if let eos = config?.eosToken, let id = id(forToken: eos) { return id }
    for name in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"] { if let id = id(forToken: name) { return id } }
    return nil
  }

  /// tokenizer_config.json's `bos_token` id, if any.
  public var bosTokenID: Int32? { config?.bosToken.flatMap { id(forToken: $0) } }

  // MARK: Encoding

  /// Token ids of `text`; `addSpecialTokens` applies the post-processor (LLaMA-3's BOS, for example).
  public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int32] {
    var ids: [Int32] = []
    ids.reserveCapacity(text.utf8.count / 3 + 4)
    var bytes = Array(text.utf8)
    var segments: [Segment] = []
    if rawMatcher.isEmpty {
      segments.append(.text(0..<bytes.count))
    } else {
      rawMatcher.split(bytes, 0..<bytes.count, into: &segments)
    }
    for segment in segments {
      switch segment {
      case .token(let id):
        ids.append(id)
      case .text(let range):
        if let normalizer {
          let normalized = normalizer.normalize(String(decoding: bytes[range], as: UTF8.self))
          var local = Array(normalized.utf8)
          encodeNormalized(&local, 0..<local.count, atStart: range.lowerBound == 0, into: &ids)
        } else {
          encodeNormalized(&bytes, range, atStart: range.lowerBound == 0, into: &ids)
        }
      }
    }
    if addSpecialTokens, let postProcessor { return postProcessor.process(ids) }
    return ids
  }

  /// Encodes many texts, on `threads` threads when more than one (the word cache is shared).
  public func encodeBatch(_ texts: [String], addSpecialTokens: Bool = true, threads: Int = 1) -> [[Int32]] {
    guard threads > 1 && texts.count > 1 else { return texts.map { encode($0, addSpecialTokens: addSpecialTokens) } }
    let results = BatchResults(count: texts.count)
    let chunks = min(threads, texts.count)
    DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
      for k in stride(from: chunk, to: texts.count, by: chunks) {
        results.set(k, encode(texts[k], addSpecialTokens: addSpecialTokens))
      }
    }
    return results.values
  }

  /// `atStart`: the text begins at the start of the input (Metaspace's "first" prepend scheme needs it).
  private func encodeNormalized(_ bytes: inout [UInt8], _ range: Range<Int>, atStart: Bool, into ids: inout [Int32]) {
    if range.isEmpty { return }
    if normalizedMatcher.isEmpty {
      encodePieces(&bytes, range, atStart: atStart, into: &ids)
      return
    }
    var segments: [Segment] = []
    normalizedMatcher.split(bytes, range, into: &segments)
    for segment in segments {
      switch segment {
      case .token(let id): ids.append(id)
      case .text(let part): encodePieces(&bytes, part, atStart: atStart && part.lowerBound == range.lowerBound, into: &ids)
      }
    }
  }

  private func encodePieces(_ bytes: inout [UInt8], _ range: Range<Int>, atStart: Bool, into ids: inout [Int32]) {
    guard let preTokenizer else {
      model.tokenize(bytes, range, byteLevel: false, into: &ids)
      return
    }
    var pieces = PieceList(bytes: bytes, ranges: [range], firstStartsInput: atStart)
    bytes = []  // hand the buffer over so appends in the pre-tokenizer do not copy it
    preTokenizer.split(&pieces)
    for piece in pieces.ranges {
      model.tokenize(pieces.bytes, piece, byteLevel: byteLevel, into: &ids)
    }
    bytes = pieces.bytes
  }

  // MARK: Decoding

  /// The vocabulary spellings of `ids` (added tokens by their content), skipping unknown ids.
  public func tokens(forIDs ids: [Int32], skipSpecialTokens: Bool = false) -> [String] {
    ids.compactMap { id in
      guard let token = token(forID: id) else { return nil }
      // Skipping goes by spelling, as in `tokenizers`: a normalized special token decodes under its
      // normalised spelling and is then not recognised as special.
      if skipSpecialTokens && specialContents.contains(token) { return nil }
      return token
    }
  }

  /// Text of `ids`, as `tokenizers`' decode: the decoder chain over the token strings.
  public func decode(_ ids: [Int32], skipSpecialTokens: Bool = false) -> String {
    let pieces = tokens(forIDs: ids, skipSpecialTokens: skipSpecialTokens)
    guard let decoder else { return pieces.joined(separator: " ") }
    return decoder.decodeChain(pieces).joined()
  }

  /// The raw bytes one token stands for, when the vocabulary is byte-level (nil otherwise).
  func bytes(ofID id: Int32) -> [UInt8]? {
    if let spelling = addedSpellings[id] { return Array(spelling.utf8) }
    guard byteLevel, let token = token(forID: id) else { return nil }
    return ByteLevelAlphabet.bytes(ofToken: token) ?? Array(token.utf8)
  }

  /// A decoder for streaming generation that only ever emits whole characters.
  public func makeIncrementalDecoder(skipSpecialTokens: Bool = true) -> IncrementalDecoder {
    IncrementalDecoder(tokenizer: self, skipSpecialTokens: skipSpecialTokens)
  }
}

/// Slots written by distinct indices from several threads; each index is written once.
private final class BatchResults: @unchecked Sendable {
  private var storage: [[Int32]]
  private let lock = NSLock()
  init(count: Int) { storage = Array(repeating: [], count: count) }
  func set(_ index: Int, _ value: [Int32]) {
    lock.lock()
    storage[index] = value
    lock.unlock()
  }
  var values: [[Int32]] { storage }
}

/// Decompresses a .gz file with the system's `gzip`.
func gunzip(_ file: URL) throws -> Data {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
  process.arguments = ["gzip", "-dc", file.path]
  let pipe = Pipe()
  process.standardOutput = pipe
  process.standardError = FileHandle.nullDevice
  do { try process.run() } catch {
    throw TokenizerError.unreadable(file: file.path, reason: "cannot run gzip to decompress it (\(error))")
  }
  let data = pipe.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  guard process.terminationStatus == 0 else {
    throw TokenizerError.unreadable(file: file.path, reason: "gzip -dc failed with status \(process.terminationStatus)")
  }
  return data
}
