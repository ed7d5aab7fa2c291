import Foundation
import PivotText
import Testing

/// The chat-template interpreter against jinja2 and transformers (fixtures from Tools/make_jinja_fixtures.py),
/// and chat templates run from their Jinja source.
@Suite struct JinjaTests {
  struct Snippet: CustomTestStringConvertible, Sendable {
    let name: String
    let template: String
    let context: String
    let output: String?
    let error: String?
    let errorType: String?
    let line: Int?
    var testDescription: String { name }
  }

  static let snippets: [Snippet] = {
    guard let rows = try? Fixtures.json("jinja/snippets.json") as? [[String: Any]] else { return [] }
    return rows.map {
      Snippet(
        name: $0["name"] as! String, template: $0["template"] as! String, context: $0["context"] as! String,
        output: $0["output"] as? String, error: $0["error"] as? String, errorType: $0["error_type"] as? String,
        line: $0["line"] as? Int)
    }
  }()

  struct TemplateCase: Sendable {
    let label: String
    let context: String
    let text: String?
    let error: String?
    let generation: [[Int]]?
  }

  struct TemplateFixture: Sendable {
    let name: String
    let template: String
    let specialTokens: [String: String]
    let cases: [TemplateCase]
  }

  static let templates: [TemplateFixture] = {
    guard let rows = try? Fixtures.json("jinja/templates.json") as? [[String: Any]] else { return [] }
    return rows.map { row in
      TemplateFixture(
        name: row["name"] as! String, template: row["template"] as! String,
        specialTokens: row["special_tokens"] as! [String: String],
        cases: (row["cases"] as! [[String: Any]]).map {
          TemplateCase(
            label: $0["label"] as! String, context: $0["context"] as! String, text: $0["text"] as? String,
            error: $0["error"] as? String, generation: $0["generation"] as? [[Int]])
        })
    }
  }()
  static let templateNames: [String] = templates.map(\.name)

  static func fixture(_ name: String) -> TemplateFixture { templates.first { $0.name == name }! }

  @Test func fixturesArePresent() {
    #expect(Self.snippets.count >= 40)
    #expect(Self.templateNames.count >= 10)
  }

  @Test(arguments: snippets)
  func snippetRendersLikeJinja2(_ snippet: Snippet) throws {
    if let output = snippet.output {
      let template = try JinjaTemplate(source: snippet.template, name: snippet.name)
      let text = try template.render(contextJSON: snippet.context)
      #expect(text == output)
      return
    }
    do {
      let template = try JinjaTemplate(source: snippet.template, name: snippet.name)
      let text = try template.render(contextJSON: snippet.context)
      Issue.record(
        "rendered \(text.debugDescription) where jinja2 raised \(snippet.errorType ?? ""): \(snippet.error ?? "")")
    } catch let error as JinjaError {
      #expect(error.template == snippet.name)
      switch snippet.errorType {
      case "TemplateSyntaxError", "TemplateAssertionError":
        #expect(error.kind == .syntax, "\(error)")
        #expect(
          error.line == snippet.line, "\(error) where jinja2 says line \(snippet.line ?? -1): \(snippet.error ?? "")")
      case "TemplateError":
        #expect(error.kind == .raised, "\(error)")
        #expect(error.message == snippet.error)
      default:
        #expect(error.kind == .runtime || error.kind == .limit, "\(error)")
        #expect(error.line != nil)
      }
    }
  }

  @Test(arguments: templateNames)
  func templateRendersLikeTransformers(_ name: String) throws {
    let fixture = Self.fixture(name)
    let template = try JinjaTemplate(source: fixture.template, name: name)
    for testCase in fixture.cases {
      let label = testCase.label
      let context = testCase.context
      if let message = testCase.error {
        #expect {
          _ = try template.render(contextJSON: context)
        } throws: { error in
          guard let error = error as? JinjaError else { return false }
          return error.kind == .raised && error.message == message
        }
        continue
      }
      let (text, spans) = try template.renderWithGenerationSpans(contextJSON: context)
      #expect(text == testCase.text, "\(name) / \(label)")
      if let expected = testCase.generation {
        #expect(spans.map { Self.codePointSpan($0, in: text) } == expected, "\(name) / \(label)")
      }
    }
  }

  /// UTF-8 byte offsets as Python's character offsets.
  static func codePointSpan(_ span: Range<Int>, in text: String) -> [Int] {
    let bytes = Array(text.utf8)
    func count(_ end: Int) -> Int { String(decoding: bytes[..<end], as: UTF8.self).unicodeScalars.count }
    return [count(span.lowerBound), count(span.upperBound)]
  }

  // MARK: ChatTemplate under Jinja templates

  /// A tokenizer whose tokenizer_config.json would carry `template` and these special tokens.
  static func tokenizer(template: String, specialTokens: [String: String], name: String) throws -> Tokenizer {
    let data = try Data(contentsOf: Fixtures.url("smollm2/tokenizer.json"))
    let config = TokenizerConfig(
      bosToken: specialTokens["bos_token"], eosToken: specialTokens["eos_token"],
      padToken: specialTokens["pad_token"], chatTemplate: template, unkToken: specialTokens["unk_token"],
      chatTemplateSource: name)
    return try Tokenizer(jsonData: data, source: "smollm2/tokenizer.json", config: config)
  }

  /// ChatTemplate passes what transformers passes (messages, add_generation_prompt, special tokens), so its
  /// text matches; every assistant answer carries loss under every template; raise_exception is an error.
  @Test(arguments: templateNames)
  func chatTemplateUsesTheTokenizersTemplate(_ name: String) throws {
    let fixture = Self.fixture(name)
    let tokenizer = try Self.tokenizer(
      template: fixture.template, specialTokens: fixture.specialTokens, name: "\(name)/chat_template.jinja")
    var template = try ChatTemplate(tokenizer: tokenizer, named: nil)
    #expect(template.jinjaTemplate != nil)
    template.imagePlaceholderID = tokenizer.id(forToken: "<|im_start|>")
    var checked = 0
    for testCase in fixture.cases {
      let context = try JSONSerialization.jsonObject(with: Data(testCase.context.utf8)) as! [String: Any]
      let rawMessages = context["messages"] as! [[String: Any]]
      // Only what a ChatMessage carries: role and content, no tools, no extra template variables.
      guard context["tools"] is NSNull, rawMessages.allSatisfy({ $0.count == 2 }),
        Set(context.keys).isSubset(of: [
          "messages", "tools", "documents", "add_generation_prompt", "bos_token", "eos_token",
          "pad_token", "unk_token",
        ])
      else { continue }
      let messages = try rawMessages.map { try ChatMessage(json: $0) }
      let generation = context["add_generation_prompt"] as! Bool
      if let message = testCase.error {
        #expect {
          try template.text(messages: messages, addGenerationPrompt: generation)
        } throws: { error in
          guard let error = error as? JinjaError else { return false }
          return error.kind == .raised && error.message == message && error.template == "\(name)/chat_template.jinja"
        }
        continue
      }
      if testCase.label == "thinking" {
        // Qwen3 drops the reasoning of earlier turns, so those answers are not in the text: an error for training
        // data, not a silent mask; a prompt (add_generation_prompt) renders.
        if generation {
          #expect(
            try template.render(messages: messages, addGenerationPrompt: true).ids
              == tokenizer.encode(testCase.text!, addSpecialTokens: false))
        } else {
          #expect(throws: ChatTemplateError.self) { try template.render(messages: messages) }
        }
        #expect(try template.text(messages: messages, addGenerationPrompt: generation) == testCase.text)
        continue
      }
      #expect(try template.text(messages: messages, addGenerationPrompt: generation) == testCase.text, "\(name)")
      let chat = try template.render(messages: messages, imageTokenCount: 3, addGenerationPrompt: generation)
      let lossText = tokenizer.decode(zip(chat.ids, chat.labels).filter { $0.1 != ChatTemplate.ignoreLabel }.map(\.0))
      var rest = lossText[...]
      for message in messages where message.role == "assistant" {
        let answer = message.content.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let found = rest.range(of: answer) else {
          Issue.record("\(name): loss text \(lossText.debugDescription) misses \(answer.debugDescription)")
          break
        }
        rest = rest[found.upperBound...]
      }
      if messages.contains(where: { $0.content.contains("<image>") }) { #expect(chat.imageSlot?.count == 3) }
      checked += 1
    }
    #expect(checked > 0)
  }

  @Test(arguments: [("qwen2", "chatml"), ("smollm2", "chatml"), ("llama3", "llama3")])
  func jinjaPathEqualsBuiltInFormat(_ tokenizerName: String, _ format: String) throws {
    let tokenizer = try Fixtures.tokenizer(tokenizerName)
    var jinja = try ChatTemplate(tokenizer: tokenizer, named: nil)
    var builtIn = try ChatTemplate(tokenizer: tokenizer, named: format)
    #expect(jinja.jinjaTemplate != nil)
    #expect(builtIn.jinjaTemplate == nil)
    let rows = try Fixtures.json("chat-\(tokenizerName).json") as! [[String: Any]]
    for row in rows {
      let messages = try (row["messages"] as! [[String: Any]]).map { try ChatMessage(json: $0) }
      let generation = row["add_generation_prompt"] as! Bool
      let imageTokens = row["image_token_count"] as? Int ?? 0
      if let image = row["image_token"] as? String {
        jinja.imagePlaceholderID = tokenizer.id(forToken: image)
        builtIn.imagePlaceholderID = jinja.imagePlaceholderID
      } else {
        #expect(try jinja.text(messages: messages, addGenerationPrompt: generation) == row["text"] as! String)
      }
      let a = try jinja.render(messages: messages, imageTokenCount: imageTokens, addGenerationPrompt: generation)
      let b = try builtIn.render(messages: messages, imageTokenCount: imageTokens, addGenerationPrompt: generation)
      #expect(a == b, "\(tokenizerName): \(messages)")
      #expect(a.ids == (row["ids"] as! [NSNumber]).map(\.int32Value))
    }
  }

  /// With `{% generation %}` the labelled tokens are exactly transformers' assistant_masks.
  @Test func generationSpansAreTheLossMask() throws {
    let tokenizer = try Fixtures.tokenizer("qwen2")
    let source = Self.fixture("chatml-generation").template
    var template = try ChatTemplate(tokenizer: tokenizer, jinjaSource: source, name: "chatml-generation")
    template.imageMarker = "\u{0}"  // transformers tokenises "<image>" as text here
    #expect(template.jinjaTemplate?.marksGeneration == true)
    let rows = try Fixtures.json("jinja/generation-qwen2.json") as! [[String: Any]]
    #expect(rows.count >= 3)
    for row in rows {
      let messages = try (row["messages"] as! [[String: Any]]).map { try ChatMessage(json: $0) }
      let chat = try template.render(messages: messages)
      #expect(chat.ids == (row["ids"] as! [NSNumber]).map(\.int32Value), "\(row["label"]!)")
      let masks = (row["assistant_masks"] as! [NSNumber]).map(\.intValue)
      #expect(chat.labels.map { $0 == ChatTemplate.ignoreLabel ? 0 : 1 } == masks, "\(row["label"]!)")
      #expect(zip(chat.ids, chat.labels).allSatisfy { $0.1 == ChatTemplate.ignoreLabel || $0.1 == $0.0 })
    }
  }

  // MARK: Where the template comes from

  /// A folder with tokenizer.json and the given extra files.
  static func folder(_ files: [String: String], tokenizerFrom source: String = "smollm2/tokenizer.json") throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-jinja-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let tokenizerFile = (source as NSString).lastPathComponent
    try FileManager.default.copyItem(at: Fixtures.url(source), to: dir.appendingPathComponent(tokenizerFile))
    for (name, text) in files { try Data(text.utf8).write(to: dir.appendingPathComponent(name)) }
    return dir
  }

  /// The issue's case: a Qwen2 folder saved by current transformers keeps its template in chat_template.jinja.
  @Test func savedQwen2FolderChatsWithItsTemplate() throws {
    let saved = Fixtures.url("jinja/qwen2-saved")
    let files = try ["tokenizer_config.json", "chat_template.jinja"].reduce(into: [String: String]()) {
      $0[$1] = try String(contentsOf: saved.appendingPathComponent($1), encoding: .utf8)
    }
    let dir = try Self.folder(files, tokenizerFrom: "qwen2/tokenizer.json.gz")
    defer { try? FileManager.default.removeItem(at: dir) }
    let tokenizer = try Tokenizer(contentsOf: dir)
    #expect(tokenizer.config?.chatTemplateSource == dir.appendingPathComponent("chat_template.jinja").path)
    let template = try ChatTemplate(tokenizer: tokenizer, named: nil)
    #expect(template.format == .chatML)
    #expect(template.jinjaTemplate != nil)
    for row in try Fixtures.json("chat-qwen2.json") as! [[String: Any]] where row["image_token"] == nil {
      let messages = try (row["messages"] as! [[String: Any]]).map { try ChatMessage(json: $0) }
      let generation = row["add_generation_prompt"] as! Bool
      #expect(try template.text(messages: messages, addGenerationPrompt: generation) == row["text"] as! String)
      #expect(
        try template.render(messages: messages, addGenerationPrompt: generation).ids
          == (row["ids"] as! [NSNumber]).map(\.int32Value))
    }
  }

  @Test func chatTemplateFileWinsAndNamesItself() throws {
    let gemma = Self.fixture("gemma")
    let config = #"{"bos_token": "<bos>", "eos_token": "<eos>", "chat_template": "{{ 'from tokenizer_config.json' }}"}"#
    let dir = try Self.folder(["tokenizer_config.json": config, "chat_template.jinja": gemma.template])
    defer { try? FileManager.default.removeItem(at: dir) }
    let template = try ChatTemplate(tokenizer: try Tokenizer(contentsOf: dir), named: nil)
    #expect(template.format == .jinja)
    let messages = [ChatMessage(role: "user", content: "Hi"), ChatMessage(role: "assistant", content: "Hello!")]
    #expect(
      try template.text(messages: messages)
        == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n")
    let chat = try template.render(messages: messages)
    let loss = zip(chat.ids, chat.labels).filter { $0.1 != ChatTemplate.ignoreLabel }.map(\.0)
    #expect(template.tokenizer.decode(loss) == "Hello!<end_of_turn>")
    // The Gemma template refuses a system turn: an error naming the file, not plain text.
    let path = dir.appendingPathComponent("chat_template.jinja").path
    #expect {
      try template.render(messages: [ChatMessage(role: "system", content: "x")] + messages)
    } throws: { error in
      let error = error as? JinjaError
      return error?.kind == .raised && error?.message == "System role not supported" && "\(error!)".contains(path)
    }
    // An explicit name still overrides the tokenizer's template.
    #expect(try ChatTemplate(tokenizer: template.tokenizer, named: "chatml").jinjaTemplate == nil)
  }

  @Test func namedTemplateListTakesDefault() throws {
    let config =
      #"{"chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ messages[0].content }}!"}]}"#
    let dir = try Self.folder(["tokenizer_config.json": config])
    defer { try? FileManager.default.removeItem(at: dir) }
    let template = try ChatTemplate(tokenizer: try Tokenizer(contentsOf: dir), named: "auto")
    #expect(try template.text(messages: [ChatMessage(role: "user", content: "hey")]) == "hey!")
  }

  @Test func brokenTemplateIsAnErrorNamingTheFileAndLine() throws {
    let dir = try Self.folder(["chat_template.jinja": "{% for m in messages %}\n{{ m.content }\n{% endfor %}"])
    defer { try? FileManager.default.removeItem(at: dir) }
    let tokenizer = try Tokenizer(contentsOf: dir)
    #expect {
      _ = try ChatTemplate(tokenizer: tokenizer, named: nil)
    } throws: { error in
      guard let error = error as? JinjaError else { return false }
      return error.kind == .syntax && error.line == 2
        && "\(error)".contains(dir.appendingPathComponent("chat_template.jinja").path + ", line 2")
    }
    // Recipes that name a built-in format keep working with such a tokenizer.
    #expect(try ChatTemplate(tokenizer: tokenizer, named: "plain").format == .plain)
  }

  @Test func tokenizerWithoutTemplateStaysPlain() throws {
    let template = try ChatTemplate(tokenizer: try Fixtures.tokenizer("llama2"), named: nil)
    #expect(template.format == .plain)
    #expect(template.jinjaTemplate == nil)
  }

  @Test func rewrittenAssistantTextIsAnError() throws {
    let tokenizer = try Fixtures.tokenizer("smollm2")
    let template = try ChatTemplate(
      tokenizer: tokenizer, jinjaSource: "{% for m in messages %}{{ m.content | upper }}\n{% endfor %}",
      name: "upper.jinja")
    #expect(throws: ChatTemplateError.self) {
      try template.render(messages: [
        ChatMessage(role: "user", content: "hi"), ChatMessage(role: "assistant", content: "hello"),
      ])
    }
    // Text that survives the template is found even when it also occurs in the header text before it.
    let chatml = try ChatTemplate(
      tokenizer: tokenizer,
      jinjaSource: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    let chat = try chatml.render(messages: [
      ChatMessage(role: "user", content: "Say a"), ChatMessage(role: "assistant", content: "a"),
    ])
    let loss = zip(chat.ids, chat.labels).filter { $0.1 != ChatTemplate.ignoreLabel }.map(\.0)
    #expect(tokenizer.decode(loss) == "a<|im_end|>")
    #expect(tokenizer.decode(chat.ids).hasSuffix("<|im_start|>assistant\na<|im_end|>\n"))
  }

  // MARK: Errors and limits

  @Test func syntaxErrorNamesTemplateAndLine() throws {
    #expect {
      _ = try JinjaTemplate(source: "hello\n{{ 1 + }}", name: "chat_template.jinja")
    } throws: { error in
      "\(error)".hasPrefix("chat_template.jinja, line 2: chat template syntax error")
    }
    #expect {
      _ = try JinjaTemplate(source: "a\n{{ x | groupby('y') }}", name: "t")
    } throws: { error in
      (error as? JinjaError)?.line == 2 && "\(error)".contains("'groupby' filter is not supported")
    }
  }

  @Test func runtimeErrorNamesTheLine() throws {
    let template = try JinjaTemplate(
      source: "line 1\n{% for m in messages %}\n{{ m.content + 1 }}\n{% endfor %}", name: "t")
    #expect {
      _ = try template.render(["messages": [["content": "x"]]])
    } throws: { error in
      guard let error = error as? JinjaError else { return false }
      return error.kind == .runtime && error.line == 3 && error.message.contains("concatenate")
    }
  }

  static let hostile: [(String, String)] = [
    (
      "deep parentheses",
      "{{ " + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000) + " }}"
    ),
    ("deep lists", "{{ " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + " }}"),
    (
      "deep blocks",
      String(repeating: "{% if true %}", count: 3000) + "x" + String(repeating: "{% endif %}", count: 3000)
    ),
    ("deep not", "{{ " + String(repeating: "not ", count: 5000) + "x }}"),
    ("deep minus", "{{ " + String(repeating: "- ", count: 5000) + "1 }}"),
    ("runaway macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
    ("mutual recursion", "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}"),
    ("nested huge ranges", "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}"),
    ("huge range", "{{ range(10000000)|length }}"),
    ("string bomb", "{{ 'x' * 10000000000 }}"),
    (
      "doubling",
      "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    ("list bomb", "{{ ([1] * 100000000)|length }}"),
    (
      "deep value",
      "{% set ns = namespace(x=1) %}{% for i in range(500) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}"
    ),
    ("integer overflow", "{{ 9223372036854775807 + 1 }}"),
    ("huge power", "{{ 10 ** 100 }}"),
  ]

  @Test(arguments: 0..<hostile.count)
  func hostileTemplateErrorsInsteadOfHanging(_ index: Int) throws {
    let (name, source) = Self.hostile[index]
    let started = Date()
    #expect(throws: JinjaError.self, "\(name)") {
      let template = try JinjaTemplate(source: source, name: name)
      _ = try template.render([:])
    }
    #expect(Date().timeIntervalSince(started) < 60, "\(name) took too long")
  }

  /// The limits leave room for what real templates do (a few levels of nesting, recursive schema macros).
  @Test func nestingWithinTheLimitsRenders() throws {
    let parentheses = "{{ " + String(repeating: "(", count: 40) + "1" + String(repeating: ")", count: 40) + " }}"
    #expect(try JinjaTemplate(source: parentheses).render([:]) == "1")
    let blocks = String(repeating: "{% if true %}", count: 80) + "x" + String(repeating: "{% endif %}", count: 80)
    #expect(try JinjaTemplate(source: blocks).render([:]) == "x")
    let macro =
      "{% macro depth(n) %}{% if n > 0 %}{{ depth(n - 1) }}{% else %}bottom{% endif %}{% endmacro %}{{ depth(40) }}"
    #expect(try JinjaTemplate(source: macro).render([:]) == "bottom")
  }

  /// transformers would record a wrong position for a generation block rendered inside a macro; Pivot refuses it.
  @Test func generationInsideAMacroIsAnError() throws {
    let template = try JinjaTemplate(source: "{% macro m() %}{% generation %}x{% endgeneration %}{% endmacro %}\n{{ m() }}")
    #expect {
      _ = try template.render([:])
    } throws: { error in
      (error as? JinjaError)?.message.contains("{% generation %} inside a macro") == true
    }
  }

  @Test func selfReferenceRendersLikePython() throws {
    let template = try JinjaTemplate(source: "{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns }}")
    #expect(try template.render([:]) == "<Namespace {'a': 1, 'me': <Namespace {...}>}>")
  }
}
