import Foundation
import PivotData
import PivotText

/// Turns captions and conversations into ids, labels and the image slot with the chat template:
/// where PivotData meets PivotText.
public struct ChatSampleEncoder: SampleEncoder {
  public let template: ChatTemplate
  public let imageTokenCount: Int
  public let captionPrompt: String
  /// Stage 0: the caption field is plain text and every token carries loss.
  public let plainText: Bool
  /// LLaVA's stage-1 `plain` format: the image slot, the caption, an end token; loss on the
  /// caption and the end token. A sample costs its soft tokens plus its caption.
  public let plainCaptions: Bool
  public let padId: Int32

  public init(template: ChatTemplate, imageTokenCount: Int, captionPrompt: String, plainText: Bool = false, plainCaptions: Bool = false) {
    self.template = template
    self.imageTokenCount = imageTokenCount
    self.captionPrompt = captionPrompt
    self.plainText = plainText
    self.plainCaptions = plainCaptions
    let tok = template.tokenizer
    padId = tok.id(forToken: "<|endoftext|>") ?? tok.eosTokenID ?? 0
  }

  public func encodeCaption(_ caption: String) throws -> EncodedSample {
    if plainText {
      var ids = template.tokenizer.encode(caption, addSpecialTokens: false)
      if let eos = template.tokenizer.id(forToken: "<|endoftext|>") ?? template.tokenizer.eosTokenID { ids.append(eos) }
      return EncodedSample(ids: ids, labels: ids, imageSlot: nil)
    }
    if plainCaptions { return try plainCaption(caption) }
    let messages = [ChatMessage(role: "user", content: "\(template.imageMarker)\n\(captionPrompt)"), ChatMessage(role: "assistant", content: caption)]
    let r = try template.render(messages: messages, imageTokenCount: imageTokenCount)
    return EncodedSample(ids: r.ids, labels: r.labels, imageSlot: r.imageSlot)
  }

  /// The end token of a plain caption: the tokenizer's end of text, else its eos.
  public static func plainCaptionEnd(_ tokenizer: Tokenizer) -> Int32? {
    tokenizer.id(forToken: "<|endoftext|>") ?? tokenizer.eosTokenID
  }

  /// What a plain caption starts with: a document-start token, then the image slot. The first
  /// position of a causal LLM is where attention sinks form (LLaVA's plain format starts with
  /// LLaMA's <s>), so a soft token should not sit there.
  /// The tokenizer's bos, else its end of text (how Qwen separates its pretraining documents).
  public static func plainPrefix(_ tokenizer: Tokenizer, placeholder: Int32, imageTokens n: Int) -> (ids: [Int32], slot: Range<Int>) {
    let start = (tokenizer.config?.bosToken).flatMap { tokenizer.id(forToken: $0) } ?? plainCaptionEnd(tokenizer)
    let head = start.map { [$0] } ?? []
    return (head + [Int32](repeating: placeholder, count: n), head.count..<(head.count + n))
  }

  /// <start> [image slot] caption <end>: ids and labels (the caption and end token carry loss).
  func plainCaption(_ caption: String) throws -> EncodedSample {
    guard let placeholder = template.imagePlaceholderID else { throw ChatTemplateError.imageWithoutPlaceholder }
    guard let end = Self.plainCaptionEnd(template.tokenizer) else { throw ChatTemplateError.missingToken("<|endoftext|> or an eos token") }
    let text = template.tokenizer.encode(caption, addSpecialTokens: false) + [end]
    let prefix = Self.plainPrefix(template.tokenizer, placeholder: placeholder, imageTokens: imageTokenCount)
    return EncodedSample(ids: prefix.ids + text, labels: [Int32](repeating: ignoreLabel, count: prefix.ids.count) + text, imageSlot: prefix.slot)
  }

  public func encodeConversation(_ turns: [ConversationTurn]) throws -> EncodedSample {
    let roles = ["human": "user", "gpt": "assistant", "system": "system"]
    let messages = turns.map { ChatMessage(role: roles[$0.from] ?? $0.from, content: $0.value) }
    let r = try template.render(messages: messages, imageTokenCount: imageTokenCount)
    return EncodedSample(ids: r.ids, labels: r.labels, imageSlot: r.imageSlot)
  }
}
