import Foundation
import PivotText
import Testing

/// Chat rendering against `transformers`' apply_chat_template (Tools/make_tokenizer_fixtures.py), and label masks.
@Suite struct ChatTemplateTests {
  static let families: [(tokenizer: String, format: ChatFormat, header: String, end: String)] = [
    ("qwen2", .chatML, "assistant\n", "<|im_end|>"),
    ("smollm2", .chatML, "assistant\n", "<|im_end|>"),
    ("llama3", .llama3, "<|end_header_id|>\n\n", "<|eot_id|>"),
  ]

  @Test(arguments: 0..<3)
  func renderingMatchesApplyChatTemplate(family: Int) throws {
    let (name, format, header, end) = Self.families[family]
    let tokenizer = try Fixtures.tokenizer(name)
    let template = try ChatTemplate(tokenizer: tokenizer, named: nil)
    #expect(template.format == format)
    let rows = try Fixtures.json("chat-\(name).json") as! [[String: Any]]
    for row in rows {
      let messages = try (row["messages"] as! [[String: Any]]).map { try ChatMessage(json: $0) }
      let generation = row["add_generation_prompt"] as! Bool
      let expectedIDs = (row["ids"] as! [NSNumber]).map(\.int32Value)
      var chat: RenderedChat
      if let count = row["image_token_count"] as? Int {
        var imageTemplate = template
        imageTemplate.imagePlaceholderID = tokenizer.id(forToken: row["image_token"] as! String)
        chat = try imageTemplate.render(messages: messages, imageTokenCount: count, addGenerationPrompt: generation)
        let slot = try #require(chat.imageSlot)
        #expect(slot.count == count)
        #expect(chat.ids[slot].allSatisfy { $0 == imageTemplate.imagePlaceholderID })
        #expect(chat.labels[slot].allSatisfy { $0 == ChatTemplate.ignoreLabel })
      } else {
        #expect(try template.text(messages: messages, addGenerationPrompt: generation) == row["text"] as! String)
        chat = try template.render(messages: messages, addGenerationPrompt: generation)
        #expect(chat.imageSlot == nil)
      }
      #expect(chat.ids == expectedIDs, "\(name): \(messages)")
      #expect(chat.labels == Self.expectedLabels(chat.ids, tokenizer: tokenizer, header: header, end: end), "\(name): \(messages)")
    }
  }

  /// Loss starts at the first token that begins after an assistant header and runs through the turn's
  /// end token; everything else is ignored. Worked out token by token from decoded text.
  static func expectedLabels(_ ids: [Int32], tokenizer: Tokenizer, header: String, end: String) -> [Int32] {
    let endID = tokenizer.id(forToken: end)!
    let start = tokenizer.id(forToken: header == "assistant\n" ? "<|im_start|>" : "<|start_header_id|>")!
    var labels = [Int32](repeating: ChatTemplate.ignoreLabel, count: ids.count)
    var k = 0
    while k < ids.count {
      guard ids[k] == start else { k += 1; continue }
      // Role text after the start token, e.g. "assistant\n" or "assistant<|end_header_id|>\n\n".
      var role = ""
      var j = k + 1
      while j < ids.count && role.utf8.count < ("assistant" + (header == "assistant\n" ? "\n" : header)).utf8.count {
        role += tokenizer.decode([ids[j]])
        j += 1
      }
      k += 1
      guard role.hasPrefix("assistant") else { continue }
      while j < ids.count {
        labels[j] = ids[j]
        if ids[j] == endID { break }
        j += 1
      }
      k = j + 1
    }
    return labels
  }

  @Test func labelMaskCoversAssistantContentAndEndTokenOnly() throws {
    let tokenizer = try Fixtures.tokenizer("qwen2")
    let template = ChatTemplate(tokenizer: tokenizer, format: .chatML, defaultSystemPrompt: nil)
    let chat = try template.render(messages: [
      ChatMessage(role: "user", content: "<image>\n这是什么？"), ChatMessage(role: "assistant", content: "一只猫。"),
    ], imageTokenCount: 32)
    let lossIDs = zip(chat.ids, chat.labels).filter { $0.1 != ChatTemplate.ignoreLabel }.map(\.0)
    #expect(tokenizer.decode(lossIDs) == "一只猫。<|im_end|>")
    #expect(chat.imageSlot?.count == 32)
    #expect(chat.ids[chat.imageSlot!].allSatisfy { $0 == 151_655 })
    #expect(tokenizer.decode(Array(chat.ids[..<chat.imageSlot!.lowerBound])) == "<|im_start|>user\n")
  }

  @Test func llavaConversationsConvert() throws {
    let data = Data(#"{"conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}]}"#.utf8)
    let messages = try ChatMessage.conversation(fromJSON: data)
    #expect(messages == [ChatMessage(role: "user", content: "<image>\nHi"), ChatMessage(role: "assistant", content: "Hello")])
  }

  @Test func plainFormatPutsLossOnAnswerAndEOS() throws {
    let tokenizer = try Fixtures.tokenizer("smollm2")
    let template = ChatTemplate(tokenizer: tokenizer, format: .plain)
    let chat = try template.render(messages: [ChatMessage(role: "user", content: "2+2?"), ChatMessage(role: "assistant", content: "4")])
    let lossIDs = zip(chat.ids, chat.labels).filter { $0.1 != ChatTemplate.ignoreLabel }.map(\.0)
    #expect(tokenizer.decode(lossIDs) == "4<|im_end|>")
    #expect(tokenizer.decode(chat.ids) == "User: 2+2?\nAssistant: 4<|im_end|>\n")
  }

  @Test func detectsDefaultSystemPrompts() throws {
    #expect(try ChatTemplate(tokenizer: Fixtures.tokenizer("qwen2"), named: "auto").defaultSystemPrompt
      == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    #expect(try ChatTemplate(tokenizer: Fixtures.tokenizer("smollm2"), named: nil).defaultSystemPrompt
      == "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    #expect(throws: ChatTemplateError.self) { try ChatTemplate(tokenizer: Fixtures.tokenizer("qwen2"), named: "jinja") }
  }
}
