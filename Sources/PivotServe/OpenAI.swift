import Foundation
import PivotModels
import PivotTensor
import PivotText
import PivotTrain

/// An error as OpenAI's API reports it: `{"error": {"message", "type", "param", "code"}}` with an
/// HTTP status.
public struct APIError: Error, CustomStringConvertible, Sendable {
  public let status: Int
  public let message: String
  public let type: String
  public let param: String?
  public let code: String?

  public init(_ status: Int, _ message: String, type: String = "invalid_request_error", param: String? = nil, code: String? = nil) {
    self.status = status
    self.message = message
    self.type = type
    self.param = param
    self.code = code
  }

  public var description: String { "\(status): \(message)" }

  static func badRequest(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
    APIError(400, param.map { "\($0): \(message)" } ?? message, param: param, code: code)
  }

  var json: [String: Any] {
    ["error": ["message": message, "type": type, "param": param ?? NSNull(), "code": code ?? NSNull()] as [String: Any]]
  }
}

// MARK: The request as it arrives

/// `POST /v1/chat/completions`' body: the fields Pivot acts on (others are ignored, as OpenAI's
/// own server ignores fields it does not know).
struct ChatCompletionBody: Decodable {
  var model: String?
  var messages: [WireMessage]
  var maxTokens: Int?
  var maxCompletionTokens: Int?
  var temperature: Double?
  var topP: Double?
  var topK: Int?
  var repetitionPenalty: Double?
  var frequencyPenalty: Double?
  var presencePenalty: Double?
  var stop: StopList?
  var seed: Int?
  var stream: Bool?
  var streamOptions: StreamOptions?
  var n: Int?

  enum CodingKeys: String, CodingKey {
    case model, messages, temperature, stop, seed, stream, n
    case maxTokens = "max_tokens", maxCompletionTokens = "max_completion_tokens", topP = "top_p", topK = "top_k"
    case repetitionPenalty = "repetition_penalty", frequencyPenalty = "frequency_penalty", presencePenalty = "presence_penalty"
    case streamOptions = "stream_options"
  }

  struct StreamOptions: Decodable {
    var includeUsage: Bool?
    enum CodingKeys: String, CodingKey { case includeUsage = "include_usage" }
  }
}

struct WireMessage: Decodable {
  var role: String
  var content: WireContent?
}

/// A message's content: a string, or a list of text and image parts.
enum WireContent: Decodable {
  case text(String)
  case parts([WirePart])

  init(from decoder: Decoder) throws {
    let c = try decoder.singleValueContainer()
    if let s = try? c.decode(String.self) {
      self = .text(s)
      return
    }
    do {
      self = .parts(try c.decode([WirePart].self))
    } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == c.codingPath.count {
      // Neither a string nor an array; a wrong part inside an array keeps its own error.
      throw DecodingError.typeMismatch(String.self, .init(codingPath: c.codingPath, debugDescription: "expected a string or an array of content parts"))
    }
  }
}

struct WirePart: Decodable {
  var type: String
  var text: String?
  var imageURL: ImageURL?

  struct ImageURL: Decodable {
    var url: String
  }

  enum CodingKeys: String, CodingKey {
    case type, text
    case imageURL = "image_url"
  }
}

/// `stop`: one string or up to four.
struct StopList: Decodable {
  var values: [String]
  init(from decoder: Decoder) throws {
    let c = try decoder.singleValueContainer()
    if let s = try? c.decode(String.self) { values = [s] } else { values = try c.decode([String].self) }
  }
}

/// Where in the body a decoding error happened, as a user writes it: `messages[0].content`.
func fieldPath(_ path: [CodingKey]) -> String {
  var s = ""
  for key in path {
    if let i = key.intValue { s += "[\(i)]" } else { s += s.isEmpty ? key.stringValue : ".\(key.stringValue)" }
  }
  return s.isEmpty ? "body" : s
}

func describe(_ error: DecodingError) -> APIError {
  switch error {
  case .typeMismatch(let type, let c):
    let expected = type == String.self ? "a string" : type == Int.self ? "an integer" : type == Double.self ? "a number" : type == Bool.self ? "true or false" : "\(type)"
    let detail = c.debugDescription.hasPrefix("expected") ? c.debugDescription : "expected \(expected)"
    return .badRequest(detail, param: fieldPath(c.codingPath))
  case .valueNotFound(_, let c): return .badRequest("must not be null", param: fieldPath(c.codingPath))
  case .keyNotFound(let key, let c): return .badRequest("is required", param: fieldPath(c.codingPath + [key]))
  case .dataCorrupted(let c):
    if c.codingPath.isEmpty { return .badRequest("the body is not valid JSON (\(c.underlyingError.map { "\($0)" } ?? c.debugDescription))") }
    return .badRequest(c.debugDescription, param: fieldPath(c.codingPath))
  @unknown default: return .badRequest("\(error)")
  }
}

// MARK: The request as the engine takes it

/// A checked chat-completion request.
struct ChatCompletionRequest {
  var job: CompletionJob
  var stream: Bool
  var includeUsage: Bool
}

/// What the server was started with and how it limits requests.
public struct ServeSettings: Sendable {
  public var host = "127.0.0.1"
  public var port = 8080
  public var apiKey: String?
  /// The id `/v1/models` lists and requests name.
  public var modelName = "pivot"
  /// Largest request body, bytes.
  public var maxBodyBytes = 20 << 20
  /// Largest image, pixels (checked from the header, before decoding).
  public var maxImagePixels = 16 << 20
  /// Tokens written when a request names no max_tokens (less if the context is shorter).
  public var defaultMaxTokens = 512
  /// Seconds a request may take, queueing included.
  public var requestTimeout = 300.0
  public var maxBatch = 8
  public var maxQueue = 32
  public init() {}
}

enum RequestParser {
  static let roles: Set<String> = ["system", "developer", "user", "assistant"]

  static func parse(_ body: Data, assistant: Assistant, settings: ServeSettings) throws -> ChatCompletionRequest {
    let wire: ChatCompletionBody
    do { wire = try JSONDecoder().decode(ChatCompletionBody.self, from: body) } catch let e as DecodingError { throw describe(e) }
    if let model = wire.model, model != settings.modelName {
      throw APIError(404, "The model '\(model)' does not exist: this server serves '\(settings.modelName)' (GET /v1/models lists it)", param: "model", code: "model_not_found")
    }
    guard !wire.messages.isEmpty else { throw APIError.badRequest("must hold at least one message", param: "messages") }
    if let n = wire.n, n != 1 { throw APIError.badRequest("only n = 1 is supported", param: "n") }
    for (name, value) in [("frequency_penalty", wire.frequencyPenalty), ("presence_penalty", wire.presencePenalty)] {
      if let v = value, v != 0 { throw APIError.badRequest("is not supported by Pivot (repetition_penalty is)", param: name) }
    }

    var messages: [ChatMessage] = []
    var pixels: Tensor? = nil
    for (i, m) in wire.messages.enumerated() {
      guard roles.contains(m.role) else {
        throw APIError.badRequest("'\(m.role)' is not a role Pivot takes (system, developer, user, assistant)", param: "messages[\(i)].role")
      }
      var pieces: [String] = []
      switch m.content {
      case .none:
        guard m.role == "assistant" else { throw APIError.badRequest("must not be null", param: "messages[\(i)].content") }
      case .text(let s): pieces.append(s)
      case .parts(let parts):
        for (j, part) in parts.enumerated() {
          let field = "messages[\(i)].content[\(j)]"
          switch part.type {
          case "text":
            guard let text = part.text else { throw APIError.badRequest("a text part needs 'text'", param: field) }
            pieces.append(text)
          case "image_url":
            guard let url = part.imageURL?.url else { throw APIError.badRequest("an image_url part needs 'image_url': {'url': ...}", param: field) }
            guard pixels == nil else {
              throw APIError.badRequest("one image per conversation: Pivot's models take a single image slot", param: field)
            }
            pixels = try decodeImage(url, field: "\(field).image_url.url", assistant: assistant, settings: settings)
            pieces.append("<image>")
          default:
            throw APIError.badRequest("part type '\(part.type)' is not supported (text, image_url)", param: "\(field).type")
          }
        }
      }
      messages.append(ChatMessage(role: m.role == "developer" ? "system" : m.role, content: pieces.joined(separator: "\n")))
    }

    var options = GenerationOptions()
    let requested = wire.maxCompletionTokens ?? wire.maxTokens
    let budgetName = wire.maxCompletionTokens == nil ? "max_tokens" : "max_completion_tokens"
    if let requested, requested < 1 { throw APIError.badRequest("must be at least 1, not \(requested)", param: budgetName) }
    let temperature = wire.temperature ?? 1
    guard temperature.isFinite && temperature >= 0 && temperature <= 2 else {
      throw APIError.badRequest("must be between 0 and 2, not \(temperature)", param: "temperature")
    }
    let topP = wire.topP ?? 1
    guard topP.isFinite && topP > 0 && topP <= 1 else { throw APIError.badRequest("must be in (0, 1], not \(topP)", param: "top_p") }
    if let k = wire.topK, k < 0 { throw APIError.badRequest("must be ≥ 0 (0 keeps every token), not \(k)", param: "top_k") }
    let penalty = wire.repetitionPenalty ?? 1
    guard penalty.isFinite && penalty > 0 else { throw APIError.badRequest("must be a number > 0, not \(penalty)", param: "repetition_penalty") }
    let stops = wire.stop?.values ?? []
    guard stops.count <= 4 else { throw APIError.badRequest("at most 4 stop sequences, not \(stops.count)", param: "stop") }
    options.temperature = Float(temperature)
    options.topP = Float(topP)
    options.topK = wire.topK ?? 0
    options.repetitionPenalty = Float(penalty)
    options.seed = wire.seed.map { UInt64(bitPattern: Int64($0)) } ?? UInt64.random(in: .min ... .max)

    let prompt: Assistant.Prompt
    do {
      if let requested {
        prompt = try assistant.prepare(messages, pixels: pixels, maxNewTokens: requested, budgetName: budgetName)
        options.maxNewTokens = requested
      } else {
        let p = try assistant.prepare(messages, pixels: pixels, maxNewTokens: 1, budgetName: budgetName)
        options.maxNewTokens = min(settings.defaultMaxTokens, assistant.contextLength - p.ids.count)
        prompt = p
      }
    } catch let e as ContextOverflow {
      throw APIError.badRequest(e.description, param: "messages", code: "context_length_exceeded")
    } catch {
      throw APIError.badRequest("the chat template cannot render these messages: \(error)", param: "messages")
    }
    let job = CompletionJob(prompt: prompt, options: options, stopStrings: stops, timeLimit: settings.requestTimeout)
    return ChatCompletionRequest(job: job, stream: wire.stream ?? false, includeUsage: wire.streamOptions?.includeUsage ?? false)
  }

  /// A `data:` URI's image → pixels (1, 3, H, W). The server fetches nothing.
  static func decodeImage(_ url: String, field: String, assistant: Assistant, settings: ServeSettings) throws -> Tensor {
    guard var image = assistant.image else {
      throw APIError.badRequest("this model has no vision tower; send text only", param: field)
    }
    guard url.hasPrefix("data:") else {
      let shown = url.count > 60 ? String(url.prefix(60)) + "…" : url
      throw APIError.badRequest("'\(shown)' is not a data: URI; Pivot fetches nothing, so send the image inline as data:image/jpeg;base64,…", param: field, code: "invalid_image_url")
    }
    guard let comma = url.firstIndex(of: ","), url[..<comma].hasSuffix(";base64") else {
      throw APIError.badRequest("a data: URI needs ';base64,' before the image bytes", param: field, code: "invalid_image_url")
    }
    guard let bytes = Data(base64Encoded: String(url[url.index(after: comma)...])) else {
      throw APIError.badRequest("the image is not valid base64", param: field, code: "invalid_image_url")
    }
    image.maxPixels = settings.maxImagePixels
    let t = Tensor(empty: [1, 3, image.cropHeight, image.cropWidth])
    do { try image.process(jpeg: Array(bytes), key: field, into: t.ptr) } catch {
      throw APIError.badRequest("the image cannot be used: \(error)", param: field, code: "invalid_image")
    }
    return t
  }
}

// MARK: Answers

enum Answers {
  static func id() -> String { "chatcmpl-" + (0..<24).map { _ in String("0123456789abcdef".randomElement()!) }.joined() }

  static func usage(prompt: Int, completion: Int) -> [String: Any] {
    ["prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion]
  }

  static func completion(id: String, created: Int, model: String, text: String, finish: FinishReason, prompt: Int, completion: Int) -> [String: Any] {
    [
      "id": id, "object": "chat.completion", "created": created, "model": model,
      "choices": [["index": 0, "message": ["role": "assistant", "content": text], "finish_reason": finish.rawValue, "logprobs": NSNull()] as [String: Any]],
      "usage": usage(prompt: prompt, completion: completion),
    ]
  }

  static func chunk(id: String, created: Int, model: String, delta: [String: Any], finish: FinishReason?) -> [String: Any] {
    [
      "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
      "choices": [["index": 0, "delta": delta, "finish_reason": finish.map { $0.rawValue as Any } ?? NSNull(), "logprobs": NSNull()] as [String: Any]],
    ]
  }

  static func usageChunk(id: String, created: Int, model: String, prompt: Int, completion: Int) -> [String: Any] {
    ["id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [] as [Any], "usage": usage(prompt: prompt, completion: completion)]
  }

  static func data(_ object: [String: Any]) -> Data {
    (try? JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes])) ?? Data("{}".utf8)
  }
}
