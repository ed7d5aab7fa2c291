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

  public var description: String {
    switch self {
    case .unknownRole(let role): return "unknown conversation role \"\(role)\" (expected human, gpt or system)"
    case .malformedMessage(let text): return "malformed chat message: \(text)"
    case .unknownFormat(let name): return "unknown chat template \"\(name)\"; use chatml, llama3, plain or auto"
    case .missingToken(let token): return "the tokenizer has no \"\(token)\" token, which this chat template needs"
    case .imageWithoutPlaceholder: return "the conversation has an image but no image placeholder token is configured"
    case .moreThanOneImage: return "a conversation may hold one image"
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
}

/// Renders conversations in the formats of the model families Pivot trains, with the same text as
/// `transformers`' `apply_chat_template` for their templates, plus the label mask and the image slot.
public struct ChatTemplate: Sendable {
  public static let ignoreLabel: Int32 = -100

  public let tokenizer: Tokenizer
  public var format: ChatFormat
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

  /// `name` is a recipe's `chat_template` setting: chatml, llama3, plain, or auto (nil) to read the
  /// checkpoint's tokenizer_config.json.
  public init(tokenizer: Tokenizer, named name: String?, imagePlaceholderID: Int32? = nil) throws {
    let detected = Self.detect(tokenizer.config)
    switch name?.lowercased() {
    case nil, "auto":
      self.init(tokenizer: tokenizer, format: detected.format, defaultSystemPrompt: detected.defaultSystemPrompt,
                imagePlaceholderID: imagePlaceholderID)
    case let name?:
      guard let format = ChatFormat(rawValue: name) else { throw ChatTemplateError.unknownFormat(name) }
      self.init(tokenizer: tokenizer, format: format,
                defaultSystemPrompt: format == detected.format ? detected.defaultSystemPrompt : nil,
                imagePlaceholderID: imagePlaceholderID)
    }
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
    try parts(messages: messages, addGenerationPrompt: addGenerationPrompt).map { part in
      switch part {
      case .text(let text, _): return text
      case .image: return imageMarker
      }
    }.joined()
  }

  func parts(messages: [ChatMessage], addGenerationPrompt: Bool) throws -> [Part] {
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
    case .plain:
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
    for part in try parts(messages: messages, addGenerationPrompt: addGenerationPrompt) {
      switch part {
      case .text(let text, let loss):
        span.append((text, loss))
      case .image:
        flush(&span, into: &chat)
        guard chat.imageSlot == nil else { throw ChatTemplateError.moreThanOneImage }
        guard let placeholder = imagePlaceholderID else { throw ChatTemplateError.imageWithoutPlaceholder }
        chat.imageSlot = chat.ids.count..<(chat.ids.count + imageTokenCount)
        chat.ids.append(contentsOf: repeatElement(placeholder, count: imageTokenCount))
        chat.labels.append(contentsOf: repeatElement(Self.ignoreLabel, count: imageTokenCount))
      }
    }
    flush(&span, into: &chat)
    return chat
  }

  /// Tokenises a run of text parts as one string (exactly what tokenising the whole rendered text gives)
  /// and labels each token by the part its first byte falls in.
  private func flush(_ span: inout [(text: String, loss: Bool)], into chat: inout RenderedChat) {
    defer { span.removeAll() }
    guard !span.isEmpty else { return }
    let ids = tokenizer.encode(span.map(\.text).joined(), addSpecialTokens: false)
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
        chat.ids.append(id)
        chat.labels.append(span[part].loss ? id : Self.ignoreLabel)
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
