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
  public let padId: Int32

  public init(template: ChatTemplate, imageTokenCount: Int, captionPrompt: String, plainText: Bool = false) {
    self.template = template
    self.imageTokenCount = imageTokenCount
    self.captionPrompt = captionPrompt
    self.plainText = plainText
    let tok = template.tokenizer
    padId = tok.id(forToken: "<|endoftext|>") ?? tok.eosTokenID ?? 0
  }

  public func encodeCaption(_ caption: String) throws -> EncodedSample {
    if plainText {
      var ids = template.tokenizer.encode(caption, addSpecialTokens: false)
      if let eos = template.tokenizer.id(forToken: "<|endoftext|>") ?? template.tokenizer.eosTokenID { ids.append(eos) }
      return EncodedSample(ids: ids, labels: ids, imageSlot: nil)
    }
    let messages = [ChatMessage(role: "user", content: "\(template.imageMarker)\n\(captionPrompt)"), ChatMessage(role: "assistant", content: caption)]
    let r = try template.render(messages: messages, imageTokenCount: imageTokenCount)
    return EncodedSample(ids: r.ids, labels: r.labels, imageSlot: r.imageSlot)
  }

  public func encodeConversation(_ turns: [ConversationTurn]) throws -> EncodedSample {
    let roles = ["human": "user", "gpt": "assistant", "system": "system"]
    let messages = turns.map { ChatMessage(role: roles[$0.from] ?? $0.from, content: $0.value) }
    let r = try template.render(messages: messages, imageTokenCount: imageTokenCount)
    return EncodedSample(ids: r.ids, labels: r.labels, imageSlot: r.imageSlot)
  }
}
