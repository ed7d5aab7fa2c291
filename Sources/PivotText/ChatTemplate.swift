import Foundation

/// One turn of a conversation. LLaVA-style data (`from: human|gpt`, `value`) converts with `init(llava:)`.
public struct ChatMessage: Sendable, Hashable, Codable {
  public var role: String
  public var content: String

  public init(role: String, content: String) {
    self.role = role
    self.content = content
  }

  /// Reads `{"role", "content"}` or LLaVA's `{"from": "human"|"gpt"|"system", "value"}`.
  public init(json: [String: Any]) throws {
    if let role = json["role"] as? String, let content = json["content"] as? String {
      self.init(role: role, content: content)
    } else if let from = json["from"] as? String, let value = json["value"] as? String {
      let roles = ["human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"]
      guard let role = roles[from] else { throw ChatTemplateError.unknownRole(from) }
      self.init(role: role, content: value)
    } else {
      throw ChatTemplateError.malformedMessage("\(json)")
    }
  }

  /// A conversation file: a list of messages, or an object with `messages` or LLaVA's `conversations`.
  public static func conversation(fromJSON data: Data) throws -> [ChatMessage] {
    let object = try JSONSerialization.jsonObject(with: data)
    let list: Any? =
      (object as? [Any]) ?? (object as? [String: Any])?["messages"] ?? (object as? [String: Any])?["conversations"]
    guard let items = list as? [[String: Any]] else {
      throw ChatTemplateError.malformedMessage("expected a list of messages, or {\"messages\": [...]} or {\"conversations\": [...]}")
    }
    return try items.map { try ChatMessage(json: $0) }
  }
}

public enum ChatTemplateError: Error, CustomStringConvertible, Sendable {
  case unknownRole(String)
  case malformedMessage(String)
  case unknownFormat(String)
  case missingToken(String)
  case imageWithoutPlaceholder
  case moreThanOneImage
  /// The template changed an assistant message's text so it cannot be found in the output to put the loss on.
  case assistantContentNotFound(template: String, message: Int)

  public var description: String {
    switch self {
    case .unknownRole(let role): return "unknown conversation role \"\(role)\" (expected human, gpt or system)"
    case .malformedMessage(let text): return "malformed chat message: \(text)"
    case .unknownFormat(let name): return "unknown chat template \"\(name)\"; use chatml, llama3, plain or auto"
    case .missingToken(let token): return "the tokenizer has no \"\(token)\" token, which this chat template needs"
    case .imageWithoutPlaceholder: return "the conversation has an image but no image placeholder token is configured"
    case .moreThanOneImage: return "a conversation may hold one image"
    case .assistantContentNotFound(let template, let message):
      return "\(template): the text of message \(message + 1) (assistant) is not in what the chat template renders, "
        + "so the loss cannot be placed on it; mark the assistant output with {% generation %}…{% endgeneration %} "
        + "in the template, or choose chatml, llama3 or plain"
    }
  }
}

/// A conversation ready for training: `labels[i]` is `ids[i]` where the loss counts (assistant content
/// and its end token) and `ChatTemplate.ignoreLabel` elsewhere; `imageSlot` holds the image placeholders.
public struct RenderedChat: Sendable, Equatable {
  public var ids: [Int32]
  public var labels: [Int32]
  public var imageSlot: Range<Int>?
}

public enum ChatFormat: String, Sendable, CaseIterable {
  /// Qwen2, SmolLM2: `<|im_start|>role\n…<|im_end|>\n`.
  case chatML = "chatml"
  /// LLaMA-3: `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` after `<|begin_of_text|>`.
  case llama3
  /// `User: …\nAssistant: …<eos>\n`, for tokenizers with no chat tokens (the demo's).
  case plain
  /// The tokenizer's own Jinja template, of a family with no built-in format (Mistral, Gemma, Phi-3, ...).
  case jinja
}

/// Renders conversations with the same text as `transformers`' `apply_chat_template`, plus the label mask and
/// the image slot: by running the checkpoint's own Jinja template (`jinjaTemplate`), or in a built-in format.
///
/// The loss mask under a Jinja template. With `{% generation %}` tags, every token that overlaps a generation
/// span carries loss (transformers' `return_assistant_tokens_mask`). Without them, each assistant message is found
/// in the rendered text, in order, searching forward: its content as written or with surrounding whitespace
/// trimmed (templates often apply `trim`), preferring an occurrence immediately followed by an end-of-turn text
/// (the tokenizer's eos token, `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, `</s>`, ...) before the next
/// message's text; the answer and that end-of-turn text carry loss. A token carries loss if any of its bytes other
/// than whitespace falls in them: " Sure" after "[/INST]" is the answer's first word, "\n\n" after "assistant"
/// (the header's newline and the answer's) is not. An answer's leading whitespace counts only if the template
/// keeps it (checked by rendering once more without it: a header ending in "\n\n" before a trimmed "\nHi" reads
/// the same as a header ending in "\n" before an untrimmed one). The search resumes after the match, and after
/// each user message's text, so an answer is never found in an earlier turn. An assistant message that cannot be
/// found is an error, not a silently unlabelled turn (unless the conversation is a prompt, rendered with
/// `addGenerationPrompt`, which is not trained on); empty ones carry no loss. `<image>` markers pass through the
/// template and become the image slot. On the ChatML and LLaMA-3 templates this gives the built-in formats' labels.
public struct ChatTemplate: Sendable {
  public static let ignoreLabel: Int32 = -100

  public let tokenizer: Tokenizer
  /// The family: a built-in format, or `.jinja`. With `jinjaTemplate` set this only names the family.
  public var format: ChatFormat
  /// The checkpoint's template, run by the interpreter; nil renders `format` with the built-in code.
  public var jinjaTemplate: JinjaTemplate?
  /// Inserted as the system turn when a conversation has none (Qwen2.5 and SmolLM2 templates do this).
  public var defaultSystemPrompt: String?
  /// The text in a message that stands for the image.
  public var imageMarker: String = "<image>"
  /// Token id repeated for each image query (Qwen's `<|image_pad|>` is 151655).
  public var imagePlaceholderID: Int32?

  public init(tokenizer: Tokenizer, format: ChatFormat, defaultSystemPrompt: String? = nil, imagePlaceholderID: Int32? = nil) {
    self.tokenizer = tokenizer
    self.format = format
    self.defaultSystemPrompt = defaultSystemPrompt
    self.imagePlaceholderID = imagePlaceholderID ?? tokenizer.id(forToken: "<|image_pad|>")
  }

  /// `name` is a recipe's `chat_template` setting: chatml, llama3, plain (the built-in formats), or auto (nil)
  /// to run the checkpoint's own template (chat_template.jinja or tokenizer_config.json's `chat_template`);
  /// a tokenizer without one gets plain. A template that cannot be parsed is an error naming its file.
  public init(tokenizer: Tokenizer, named name: String?, imagePlaceholderID: Int32? = nil) throws {
    let detected = Self.detect(tokenizer.config)
    switch name?.lowercased() {
    case nil, "auto":
      self.init(tokenizer: tokenizer, format: detected.format, defaultSystemPrompt: detected.defaultSystemPrompt,
                imagePlaceholderID: imagePlaceholderID)
      if let config = tokenizer.config, let source = config.chatTemplate {
        jinjaTemplate = try JinjaTemplate(source: source, name: config.chatTemplateSource ?? "chat_template")
        if format == .plain { format = .jinja }
      }
    case let name?:
      // "jinja" is not a name to choose: auto runs the tokenizer's own template.
      guard let format = ChatFormat(rawValue: name), format != .jinja else {
        throw ChatTemplateError.unknownFormat(name)
      }
      self.init(tokenizer: tokenizer, format: format,
                defaultSystemPrompt: format == detected.format ? detected.defaultSystemPrompt : nil,
                imagePlaceholderID: imagePlaceholderID)
    }
  }

  /// Renders with the Jinja template `source` (named `name` in errors), whatever the tokenizer's own template.
  public init(
    tokenizer: Tokenizer, jinjaSource source: String, name: String = "chat_template", imagePlaceholderID: Int32? = nil
  ) throws {
    let family = Self.detect(TokenizerConfig(chatTemplate: source)).format
    self.init(tokenizer: tokenizer, format: family == .plain ? .jinja : family, imagePlaceholderID: imagePlaceholderID)
    jinjaTemplate = try JinjaTemplate(source: source, name: name)
  }

  /// Recognises the family of a Jinja chat template by its tokens, and the default system prompt it inserts.
  public static func detect(_ config: TokenizerConfig?) -> (format: ChatFormat, defaultSystemPrompt: String?) {
    guard let template = config?.chatTemplate else { return (.plain, nil) }
    if template.contains("<|start_header_id|>") { return (.llama3, nil) }
    guard template.contains("<|im_start|>") else { return (.plain, nil) }
    // A literal '<|im_start|>system\n…<|im_end|>' that is text, not an expression, is the default prompt.
    var rest = template[...]
    while let start = rest.range(of: "<|im_start|>system") {
      var after = rest[start.upperBound...]
      if after.hasPrefix("\\n") { after = after.dropFirst(2) } else if after.hasPrefix("\n") { after = after.dropFirst() }
      if let end = after.range(of: "<|im_end|>") {
        let prompt = after[..<end.lowerBound]
        if !prompt.isEmpty && !prompt.contains(where: { "'\"{}+[]".contains($0) }) {
          return (.chatML, String(prompt).replacingOccurrences(of: "\\n", with: "\n"))
        }
      }
      rest = after
    }
    return (.chatML, nil)
  }

  /// A run of conversation text and whether its tokens carry loss, or the image.
  enum Part {
    case text(String, loss: Bool)
    case image
  }

  /// The rendered text, as `apply_chat_template(messages, tokenize=False)` gives it.
  public func text(messages: [ChatMessage], addGenerationPrompt: Bool = false) throws -> String {
    try parts(messages: messages, addGenerationPrompt: addGenerationPrompt, labels: false).map { part in
      switch part {
      case .text(let text, _): return text
      case .image: return imageMarker
      }
    }.joined()
  }

  /// `labels: false` when only the text is wanted (no loss placement under a Jinja template).
  func parts(messages: [ChatMessage], addGenerationPrompt: Bool, labels: Bool = true) throws -> [Part] {
    if let jinjaTemplate {
      return try jinjaParts(jinjaTemplate, messages: messages, addGenerationPrompt: addGenerationPrompt, labels: labels)
    }
    var parts: [Part] = []
    func content(_ text: String, loss: Bool) {
      var rest = text[...]
      while let marker = rest.range(of: imageMarker) {
        if marker.lowerBound > rest.startIndex { parts.append(.text(String(rest[..<marker.lowerBound]), loss: loss)) }
        parts.append(.image)
        rest = rest[marker.upperBound...]
      }
      if !rest.isEmpty { parts.append(.text(String(rest), loss: loss)) }
    }
    switch format {
    case .chatML:
      if let defaultSystemPrompt, messages.first?.role != "system" {
        parts.append(.text("<|im_start|>system\n\(defaultSystemPrompt)<|im_end|>\n", loss: false))
      }
      for message in messages {
        let isAssistant = message.role == "assistant"
        parts.append(.text("<|im_start|>\(message.role)\n", loss: false))
        content(message.content, loss: isAssistant)
        parts.append(.text("<|im_end|>", loss: isAssistant))
        parts.append(.text("\n", loss: false))
      }
      if addGenerationPrompt { parts.append(.text("<|im_start|>assistant\n", loss: false)) }
    case .llama3:
      let bos = tokenizer.config?.bosToken ?? "<|begin_of_text|>"
      for (k, message) in messages.enumerated() {
        let isAssistant = message.role == "assistant"
        // Jinja's `trim`, which the LLaMA-3 template applies to every message.
        let trimmed = message.content.trimmingCharacters(in: .whitespacesAndNewlines)
        parts.append(.text((k == 0 ? bos : "") + "<|start_header_id|>\(message.role)<|end_header_id|>\n\n", loss: false))
        content(trimmed, loss: isAssistant)
        parts.append(.text("<|eot_id|>", loss: isAssistant))
      }
      if addGenerationPrompt { parts.append(.text("<|start_header_id|>assistant<|end_header_id|>\n\n", loss: false)) }
    case .plain, .jinja:
      let eos = tokenizer.config?.eosToken ?? "<|endoftext|>"
      for message in messages {
        switch message.role {
        case "system":
          content(message.content, loss: false)
          parts.append(.text("\n\n", loss: false))
        case "assistant":
          parts.append(.text("Assistant: ", loss: false))
          content(message.content, loss: true)
          parts.append(.text(eos, loss: true))
          parts.append(.text("\n", loss: false))
        default:
          parts.append(.text("User: ", loss: false))
          content(message.content, loss: false)
          parts.append(.text("\n", loss: false))
        }
      }
      if addGenerationPrompt { parts.append(.text("Assistant:", loss: false)) }
    }
    return parts
  }

  /// Token ids, labels and image slot of a conversation. Each `<image>` expands to `imageTokenCount`
  /// copies of the placeholder id (the Q-Former's query count); those positions never carry loss.
  public func render(messages: [ChatMessage], imageTokenCount: Int = 0, addGenerationPrompt: Bool = false) throws -> RenderedChat {
    var chat = RenderedChat(ids: [], labels: [], imageSlot: nil)
    var span: [(text: String, loss: Bool)] = []
    let rule: LabelRule = jinjaTemplate.map { $0.marksGeneration ? .overlap : .overlapWithText } ?? .firstByte
    for part in try parts(messages: messages, addGenerationPrompt: addGenerationPrompt) {
      switch part {
      case .text(let text, let loss):
        span.append((text, loss))
      case .image:
        flush(&span, into: &chat, rule: rule)
        guard chat.imageSlot == nil else { throw ChatTemplateError.moreThanOneImage }
        guard let placeholder = imagePlaceholderID else { throw ChatTemplateError.imageWithoutPlaceholder }
        chat.imageSlot = chat.ids.count..<(chat.ids.count + imageTokenCount)
        chat.ids.append(contentsOf: repeatElement(placeholder, count: imageTokenCount))
        chat.labels.append(contentsOf: repeatElement(Self.ignoreLabel, count: imageTokenCount))
      }
    }
    flush(&span, into: &chat, rule: rule)
    return chat
  }

  /// Which tokens carry loss when a token straddles the edge of a part with loss.
  enum LabelRule {
    /// The part its first byte falls in decides (the built-in formats).
    case firstByte
    /// Any byte in a part with loss (transformers' assistant mask over `{% generation %}` spans).
    case overlap
    /// Any byte other than whitespace in a part with loss: " Sure" after "[/INST]" is the answer's first word,
    /// but "\n\n" after "assistant" (a header's newline and an answer's) is not (answers found in the text).
    case overlapWithText
  }

  /// Tokenises a run of text parts as one string (exactly what tokenising the whole rendered text gives)
  /// and labels each token by `rule`.
  private func flush(_ span: inout [(text: String, loss: Bool)], into chat: inout RenderedChat, rule: LabelRule) {
    defer { span.removeAll() }
    guard !span.isEmpty else { return }
    let text = span.map(\.text).joined()
    let ids = tokenizer.encode(text, addSpecialTokens: false)
    let bytes = rule == .overlapWithText ? Array(text.utf8) : []
    var partEnds: [Int] = []
    var total = 0
    for part in span {
      total += part.text.utf8.count
      partEnds.append(total)
    }
    let lengths = ids.map { tokenizer.bytes(ofID: $0)?.count ?? -1 }
    if lengths.allSatisfy({ $0 >= 0 }) && lengths.reduce(0, +) == total {
      var offset = 0
      var part = 0
      for (id, length) in zip(ids, lengths) {
        while part < span.count - 1 && offset >= partEnds[part] { part += 1 }
        var loss = span[part].loss
        var later = part
        while rule != .firstByte && !loss && later < span.count - 1 && partEnds[later] < offset + length {
          later += 1
          guard span[later].loss else { continue }
          let inside = partEnds[later - 1]..<min(partEnds[later], offset + length)
          loss = rule == .overlap || bytes[inside].contains { !" \t\n\r\u{0B}\u{0C}".utf8.contains($0) }
        }
        chat.ids.append(id)
        chat.labels.append(loss ? id : Self.ignoreLabel)
        offset += length
      }
    } else {
      // Offsets unknown (normalisation changed the text, or a non-byte-level vocabulary): tokenise part by part.
      for part in span {
        let partIDs = tokenizer.encode(part.text, addSpecialTokens: false)
        chat.ids.append(contentsOf: partIDs)
        chat.labels.append(contentsOf: part.loss ? partIDs : Array(repeating: Self.ignoreLabel, count: partIDs.count))
      }
    }
  }
}

// MARK: Jinja templates

extension ChatTemplate {
  /// Text that closes a turn in the families Pivot knows; the loss covers it when it follows an answer.
  static let endOfTurnMarkers = ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>",
                                 "<|end_of_text|>", "<|END_OF_TURN_TOKEN|>", "<｜end▁of▁sentence｜>"]

  /// What transformers passes a chat template: the messages, add_generation_prompt, tools and documents
  /// (none), and the tokenizer's named special tokens that are set.
  func jinjaContext(messages: [ChatMessage], addGenerationPrompt: Bool) -> [String: JinjaValue] {
    var list: [JinjaValue] = []
    for message in messages {
      var dict = JinjaDict()
      dict.set("role", .string(message.role))
      dict.set("content", .string(message.content))
      list.append(.dict(dict))
    }
    var context: [String: JinjaValue] = [
      "messages": .list(list), "add_generation_prompt": .bool(addGenerationPrompt), "tools": .null, "documents": .null,
    ]
    let config = tokenizer.config
    let tokens = [
      ("bos_token", config?.bosToken), ("eos_token", config?.eosToken), ("pad_token", config?.padToken),
      ("unk_token", config?.unkToken),
    ]
    for (name, token) in tokens {
      if let token { context[name] = .string(token) }
    }
    return context
  }

  /// The rendered conversation as parts; `labels: false` skips placing the loss (only the text is wanted).
  func jinjaParts(_ template: JinjaTemplate, messages: [ChatMessage], addGenerationPrompt: Bool, labels: Bool) throws
    -> [Part]
  {
    let context = jinjaContext(messages: messages, addGenerationPrompt: addGenerationPrompt)
    let (text, generation) = try template.render(values: context)
    let bytes = Array(text.utf8)
    var loss: [Range<Int>] = []
    if labels && template.marksGeneration {
      loss = generation
    } else if labels {
      // Does the template keep an answer's leading whitespace? Render once more without it and compare.
      var keepsLeadingWhitespace = false
      let stripped = messages.map { m in
        m.role == "assistant" ? ChatMessage(role: m.role, content: PythonText.strip(m.content, trailing: false)) : m
      }
      if stripped != messages {
        let probeContext = jinjaContext(messages: stripped, addGenerationPrompt: addGenerationPrompt)
        if let probe = try? template.render(values: probeContext) { keepsLeadingWhitespace = probe.text != text }
      }
      loss = try assistantSpans(
        in: bytes, messages: messages, templateName: template.name, keepsLeadingWhitespace: keepsLeadingWhitespace,
        strict: !addGenerationPrompt)
    }
    loss.sort { $0.lowerBound < $1.lowerBound }
    func decode(_ range: Range<Int>) -> String { String(decoding: bytes[range], as: UTF8.self) }
    var parts: [Part] = []
    func addText(_ range: Range<Int>) {
      var at = range.lowerBound
      for span in loss where span.upperBound > at && span.lowerBound < range.upperBound {
        let start = max(span.lowerBound, at)
        let end = min(span.upperBound, range.upperBound)
        if start > at { parts.append(.text(decode(at..<start), loss: false)) }
        if end > start { parts.append(.text(decode(start..<end), loss: true)) }
        at = max(at, end)
      }
      if at < range.upperBound { parts.append(.text(decode(at..<range.upperBound), loss: false)) }
    }
    // Image markers anywhere in the output (they come from message content) become the image slot.
    let marker = Array(imageMarker.utf8)
    var at = 0
    while !marker.isEmpty, let found = Self.find(marker, in: bytes, from: at) {
      addText(at..<found)
      parts.append(.image)
      at = found + marker.count
    }
    addText(at..<bytes.count)
    return parts
  }

  /// A piece of message text found in the output; `skip` leading bytes of it are whitespace that carries no loss.
  private struct TextMatch {
    var range: Range<Int>
    var skip: Int
  }

  /// The byte ranges of the assistant messages (and the end-of-turn text right after each) in a rendered
  /// conversation, found as the type's documentation describes. `strict`: an answer that is not found is an
  /// error (training data); otherwise it carries no loss (a prompt).
  func assistantSpans(
    in bytes: [UInt8], messages: [ChatMessage], templateName: String, keepsLeadingWhitespace: Bool, strict: Bool
  ) throws -> [Range<Int>] {
    var ends = Self.endOfTurnMarkers
    if let eos = tokenizer.config?.eosToken, !eos.isEmpty, !ends.contains(eos) { ends.insert(eos, at: 0) }
    let endBytes = ends.map { Array($0.utf8) }
    /// The content as written and trimmed, each with the leading whitespace that carries no loss.
    func forms(_ message: ChatMessage) -> [(bytes: [UInt8], skip: Int)] {
      let exact = Array(message.content.utf8)
      let trimmed = Array(PythonText.strip(message.content).utf8)
      if trimmed.isEmpty { return [] }
      if exact == trimmed { return [(exact, 0)] }
      let leading = exact.count - PythonText.strip(message.content, trailing: false).utf8.count
      return [(exact, keepsLeadingWhitespace ? 0 : leading), (trimmed, 0)]
    }
    /// The earliest occurrence of any form at or after `from`; the longest on a tie.
    func earliest(_ forms: [(bytes: [UInt8], skip: Int)], from: Int) -> TextMatch? {
      var best: TextMatch?
      for form in forms {
        guard let start = Self.find(form.bytes, in: bytes, from: from) else { continue }
        let match = TextMatch(range: start..<(start + form.bytes.count), skip: form.skip)
        guard let current = best else {
          best = match
          continue
        }
        if start < current.range.lowerBound || (start == current.range.lowerBound && match.range.count > current.range.count) {
          best = match
        }
      }
      return best
    }
    /// The earliest occurrence of any form that an end-of-turn text follows, starting before `window`.
    func earliestClosed(_ forms: [(bytes: [UInt8], skip: Int)], from: Int, before window: Int) -> TextMatch? {
      var best: TextMatch?
      for form in forms {
        var at = from
        let limit = best.map { min(window, $0.range.lowerBound + 1) } ?? window
        while let start = Self.find(form.bytes, in: bytes, from: at), start < limit {
          let end = start + form.bytes.count
          if let marker = endBytes.first(where: { bytes[end...].starts(with: $0) }) {
            let match = TextMatch(range: start..<(end + marker.count), skip: form.skip)
            if best == nil || start < best!.range.lowerBound || match.range.count > best!.range.count { best = match }
            break
          }
          at = start + 1
        }
      }
      return best
    }
    var spans: [Range<Int>] = []
    var cursor = 0
    for (k, message) in messages.enumerated() {
      let texts = forms(message)
      guard !texts.isEmpty else { continue }
      guard message.role == "assistant" else {
        // Past each user turn's text, so a later answer is not found in it (system text may be anywhere).
        if message.role != "system", let match = earliest(texts, from: cursor) { cursor = match.range.upperBound }
        continue
      }
      guard let first = earliest(texts, from: cursor) else {
        if strict { throw ChatTemplateError.assistantContentNotFound(template: templateName, message: k) }
        continue
      }
      // The answer followed by its end-of-turn text wins, if it comes before the next message's text.
      var window = bytes.count
      if let next = messages[(k + 1)...].first(where: { $0.role != "system" && !forms($0).isEmpty }),
        let nextMatch = earliest(forms(next), from: first.range.upperBound)
      {
        window = nextMatch.range.lowerBound
      }
      let match = earliestClosed(texts, from: cursor, before: window) ?? first
      spans.append((match.range.lowerBound + match.skip)..<match.range.upperBound)
      cursor = match.range.upperBound
    }
    return spans
  }

  static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
    guard !needle.isEmpty, from >= 0, from + needle.count <= hay.count else { return nil }
    return hay.withUnsafeBufferPointer { h in
      needle.withUnsafeBufferPointer { n in
        let base = h.baseAddress!
        let last = h.count - n.count
        var k = from
        while k <= last {
          guard let hit = memchr(base + k, Int32(n[0]), last - k + 1) else { return nil }
          let at = hit.assumingMemoryBound(to: UInt8.self) - UnsafeMutablePointer(mutating: base)
          if memcmp(base + at, n.baseAddress!, n.count) == 0 { return at }
          k = at + 1
        }
        return nil
      }
    }
  }
}
