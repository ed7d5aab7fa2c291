import Foundation
import PivotData
import PivotModels
import PivotTensor
import PivotText
import PivotTrain
import Testing

@testable import PivotServe

/// A tiny image chat model written to disk the way `pivot train` writes one, loaded as
/// `pivot chat` and `pivot serve` load it.
enum TinyServedModel {
  static let folder: String = {
    let dir = NSTemporaryDirectory() + "pivot-serve-\(getpid())"
    try? FileManager.default.removeItem(atPath: dir)
    do { try write(dir) } catch { fatalError("cannot write the tiny model: \(error)") }
    return dir + "/run/final"
  }()

  static func write(_ dir: String) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let corpus = ["a red square", "a blue circle", "what colour is it", "这个形状是什么颜色", "红色的方块", "describe the image"]
    try corpus.joined(separator: "\n").write(toFile: dir + "/corpus.txt", atomically: true, encoding: .utf8)
    try BPETrainer(vocabularySize: 300).train(corpus: [URL(fileURLWithPath: dir + "/corpus.txt")], output: URL(fileURLWithPath: dir + "/tokenizer.json"))
    let shard = try ShardFileWriter(path: dir + "/pairs.tar.zst")
    for i in 0..<2 {
      try shard.write(ShardSample(key: "s\(i)", url: shard.path, fields: [
        SampleField(name: "jpg", data: try jpeg(shade: UInt8(60 * i))), SampleField(name: "txt", data: Array(corpus[i].utf8)),
      ]))
    }
    try shard.finish()
    try """
      {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
       "num_attention_heads": 2, "image_size": 28, "patch_size": 7, "hidden_act": "quick_gelu"}
      """.write(toFile: dir + "/vision.json", atomically: true, encoding: .utf8)
    try """
      {"model_type": "qwen2", "vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_act": "silu", "max_position_embeddings": 4096,
       "rms_norm_eps": 1e-6, "tie_word_embeddings": true, "rope_theta": 10000.0, "initializer_range": 0.5}
      """.write(toFile: dir + "/llm.json", atomically: true, encoding: .utf8)
    let recipe = try Recipe.parse("""
      stage: align
      seed: 3
      model:
        vision_config: \(dir)/vision.json
        llm_config: \(dir)/llm.json
        tokenizer: \(dir)/tokenizer.json
        chat_template: chatml
        bridge: mlp
        mlp_pool_grid: 2
      data:
        sources:
          - shards: \(dir)/pairs.tar.zst
        max_length: 32
      optimizer:
        lr: 1e-2
      batch_size: 2
      max_steps: 1
      output: \(dir)/run
      """, file: "serve.yaml")
    let setup = try RunSetup(recipe: recipe)
    let trainer = try Trainer(recipe: recipe, model: setup.model, source: try setup.trainingSource())
    trainer.onFinish = { try setup.saveFinal(into: $0) }
    try trainer.run { _ in }
  }

  static func jpeg(shade: UInt8) throws -> [UInt8] {
    var pixels = [UInt8](repeating: 255, count: 28 * 28 * 3)
    for p in 0..<(14 * 28) { pixels[3 * p] = shade }
    return try JPEG.encode(RGBImage(width: 28, height: 28, pixels: pixels), quality: 95)
  }

  static func dataURI(_ bytes: [UInt8], mime: String = "image/jpeg") -> String { "data:\(mime);base64," + Data(bytes).base64EncodedString() }
}

/// A running server on a free loopback port, stopped by `stop()`.
final class RunningServer: @unchecked Sendable {
  let server: OpenAIServer
  let port: Int
  private let task: Task<Void, Error>

  init(settings: ServeSettings = ServeSettings(), maxBatch: Int = 4, maxQueue: Int = 8, prefillChunk: Int = 256) async throws {
    var settings = settings
    settings.port = 0
    settings.modelName = "tiny"
    let assistant = try Assistant(modelDir: TinyServedModel.folder)
    let server = OpenAIServer(engine: Engine(assistant: assistant, maxBatch: maxBatch, maxQueue: maxQueue, prefillChunk: prefillChunk), settings: settings)
    self.server = server
    let (ports, continuation) = AsyncStream<Int>.makeStream()
    task = Task { try await server.run { continuation.yield($0) } }
    var bound = 0
    for await p in ports { bound = p; break }
    port = bound
  }

  func stop() async {
    task.cancel()
    _ = await task.result
  }
}

/// HTTP/1.1 over a plain socket: the test sees exactly the bytes the server sends, and can hang
/// up in the middle of a stream.
struct HTTPReply {
  var status: Int
  var headers: [String: String]
  var body: String
  var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
  var errorMessage: String { ((json["error"] as? [String: Any])?["message"] as? String) ?? "" }
}

final class HTTPConnection {
  let fd: Int32

  init(port: Int) throws {
    fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let r = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard r == 0 else { throw POSIXError(.ECONNREFUSED) }
    var timeout = timeval(tv_sec: 60, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
  }

  deinit { close(fd) }

  func send(_ method: String, _ path: String, body: [UInt8] = [], headers: [String: String] = [:]) {
    var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n"
    for (k, v) in headers { head += "\(k): \(v)\r\n" }
    let bytes = Array((head + "\r\n").utf8) + body
    var sent = 0
    while sent < bytes.count {
      let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      if n <= 0 { return }  // the server may answer (413) and close before reading it all
      sent += n
    }
  }

  /// Bytes until the server closes, or until `until` holds.
  func receive(until: ((String) -> Bool)? = nil) -> String {
    var data = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = recv(fd, &buffer, buffer.count, 0)
      if n <= 0 { break }
      data += buffer[0..<n]
      if let until, until(String(decoding: data, as: UTF8.self)) { break }
    }
    return String(decoding: data, as: UTF8.self)
  }

  static func parse(_ raw: String) -> HTTPReply {
    guard let split = raw.range(of: "\r\n\r\n") else { return HTTPReply(status: 0, headers: [:], body: raw) }
    let lines = raw[..<split.lowerBound].components(separatedBy: "\r\n")
    let status = Int(lines[0].split(separator: " ")[1]) ?? 0
    var headers: [String: String] = [:]
    for line in lines.dropFirst() {
      if let colon = line.firstIndex(of: ":") {
        headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
      }
    }
    var body = String(raw[split.upperBound...])
    if headers["transfer-encoding"] == "chunked" { body = dechunk(body) }
    return HTTPReply(status: status, headers: headers, body: body)
  }

  static func dechunk(_ s: String) -> String {
    var bytes = Array(s.utf8)[...], out = [UInt8]()
    while let crlf = bytes.firstIndex(of: 13), let size = Int(String(decoding: bytes[bytes.startIndex..<crlf], as: UTF8.self), radix: 16), size > 0 {
      let start = crlf + 2
      out += bytes[start..<min(start + size, bytes.endIndex)]
      bytes = bytes[min(start + size + 2, bytes.endIndex)...]
    }
    return String(decoding: out, as: UTF8.self)
  }
}

/// One request and its whole reply. The blocking socket calls run on a thread of their own: on
/// the concurrency pool (two threads on two cores) they would starve the server's handlers.
func request(_ port: Int, _ method: String, _ path: String, json: Any? = nil, raw: [UInt8]? = nil, headers: [String: String] = [:]) async throws -> HTTPReply {
  let body = try raw ?? json.map { Array(try JSONSerialization.data(withJSONObject: $0)) } ?? []
  return try await onOwnThread {
    let c = try HTTPConnection(port: port)
    c.send(method, path, body: body, headers: headers)
    return HTTPConnection.parse(c.receive())
  }
}

func onOwnThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { continuation in
    Thread { continuation.resume(with: Result { try work() }) }.start()
  }
}

/// The `data:` events of a server-sent-event body, parsed, up to `[DONE]`.
func events(_ body: String) -> (chunks: [[String: Any]], done: Bool) {
  var chunks: [[String: Any]] = [], done = false
  for line in body.components(separatedBy: "\n") where line.hasPrefix("data: ") {
    let payload = String(line.dropFirst(6))
    if payload == "[DONE]" { done = true; continue }
    if let object = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any] { chunks.append(object) }
  }
  return (chunks, done)
}

func streamedText(_ chunks: [[String: Any]]) -> String {
  chunks.compactMap { (($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])?["content"] as? String }.joined()
}

func answerText(_ reply: HTTPReply) -> String {
  (((reply.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String) ?? "<none>"
}

func chatBody(_ prompt: String, image: [UInt8]? = nil, maxTokens: Int = 12, stream: Bool = false, extra: [String: Any] = [:]) -> [String: Any] {
  var content: Any = prompt
  if let image { content = [["type": "image_url", "image_url": ["url": TinyServedModel.dataURI(image)]], ["type": "text", "text": prompt]] }
  var body: [String: Any] = ["model": "tiny", "messages": [["role": "user", "content": content]], "max_tokens": maxTokens, "temperature": 0, "stream": stream]
  for (k, v) in extra { body[k] = v }
  return body
}

/// Whether /health shows, within two seconds, no sequence running and one dropped for its client.
func slotFreed(_ port: Int) async throws -> Bool {
  for _ in 0..<200 {
    let h = try await request(port, "GET", "/health").json
    if h["active"] as? Int == 0 && h["cancelled"] as? Int == 1 { return true }
    try await Task.sleep(nanoseconds: 10_000_000)
  }
  return false
}

@Suite("pivot serve", .serialized)
struct ServerTests {
  /// What `pivot chat --prompt` prints for the same model, prompt and image (greedy).
  func chatAnswer(_ prompt: String, image: [UInt8]?, maxTokens: Int) throws -> (text: String, tokens: Int) {
    let a = try Assistant(modelDir: TinyServedModel.folder)
    let pixels = try image.map { bytes -> Tensor in
      let t = Tensor(empty: [1, 3, a.image!.cropHeight, a.image!.cropWidth])
      try a.image!.process(jpeg: bytes, key: "test", into: t.ptr)
      return t
    }
    var options = GenerationOptions()
    options.maxNewTokens = maxTokens
    var text = ""
    let r = try a.reply([ChatMessage(role: "user", content: image == nil ? prompt : "<image>\n\(prompt)")], pixels: pixels, options: options) { text += $0 }
    return (text, r.ids.count)
  }

  @Test func answersEqualChatsGreedyTextStreamedOrNot() async throws {
    let s = try await RunningServer()
    defer { Task { await s.stop() } }
    let image = try TinyServedModel.jpeg(shade: 200)
    for (prompt, picture) in [("what colour is it", Optional(image)), ("这个形状是什么颜色", Optional(image)), ("describe the image", nil)] {
      let expected = try chatAnswer(prompt, image: picture, maxTokens: 12)
      #expect(!expected.text.isEmpty)
      let plain = try await request(s.port, "POST", "/v1/chat/completions", json: chatBody(prompt, image: picture))
      #expect(plain.status == 200, "\(plain.body)")
      #expect(answerText(plain) == expected.text)
      let usage = plain.json["usage"] as? [String: Any]
      #expect(usage?["completion_tokens"] as? Int == expected.tokens)
      #expect(plain.json["object"] as? String == "chat.completion")

      let streamed = try await request(s.port, "POST", "/v1/chat/completions", json: chatBody(prompt, image: picture, stream: true, extra: ["stream_options": ["include_usage": true]]))
      #expect(streamed.status == 200 && streamed.headers["content-type"]?.hasPrefix("text/event-stream") == true)
      let (chunks, done) = events(streamed.body)
      #expect(done, "the stream ends with data: [DONE]")
      #expect(chunks.allSatisfy { $0["object"] as? String == "chat.completion.chunk" })
      #expect(streamedText(chunks) == expected.text)
      #expect((chunks.last?["usage"] as? [String: Any])?["completion_tokens"] as? Int == expected.tokens)
      let finish = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String }
      #expect(finish.count == 1 && ["stop", "length"].contains(finish[0]))
    }
    let models = try await request(s.port, "GET", "/v1/models")
    #expect(((models.json["data"] as? [[String: Any]])?.first?["id"] as? String) == "tiny")
    #expect(try await request(s.port, "GET", "/health").json["status"] as? String == "ok")
    let page = try await request(s.port, "GET", "/")
    #expect(page.status == 200 && page.body.contains("/v1/chat/completions"))
  }

  /// Requests decoded together (continuous batching, several joining mid-way) give each what it
  /// gets alone.
  @Test func concurrentRequestsGetTheirOwnAnswers() async throws {
    let s = try await RunningServer(maxBatch: 3, maxQueue: 16, prefillChunk: 5)
    defer { Task { await s.stop() } }
    let image = try TinyServedModel.jpeg(shade: 90)
    let cases: [(String, [UInt8]?, Int)] = [
      ("a red square", image, 20), ("describe the image", nil, 7), ("这个形状是什么颜色", image, 15),
      ("what colour is it", nil, 30), ("红色的方块", image, 9), ("a blue circle", nil, 25),
    ]
    let expected = try cases.map { try chatAnswer($0.0, image: $0.1, maxTokens: $0.2).text }
    #expect(Set(expected).count == cases.count, "distinct answers, so a mix-up would show: \(expected)")
    let port = s.port
    let answers = try await withThrowingTaskGroup(of: (Int, String).self) { group in
      for (i, c) in cases.enumerated() {
        group.addTask {
          let r = try await request(port, "POST", "/v1/chat/completions", json: chatBody(c.0, image: c.1, maxTokens: c.2, stream: i % 2 == 0))
          return (i, i % 2 == 0 ? streamedText(events(r.body).chunks) : answerText(r))
        }
      }
      var out = [String](repeating: "", count: cases.count)
      for try await (i, text) in group { out[i] = text }
      return out
    }
    #expect(answers == expected)
  }

  @Test func badRequestsGetOpenAIErrorsAndTheServerKeepsServing() async throws {
    var settings = ServeSettings()
    settings.maxBodyBytes = 64 << 10
    settings.maxImagePixels = 500  // below the 28 × 28 test image
    let s = try await RunningServer(settings: settings)
    defer { Task { await s.stop() } }
    let image = try TinyServedModel.jpeg(shade: 10)
    func check(_ name: String, _ reply: HTTPReply, status: Int, mentions: String) {
      #expect(reply.status == status, "\(name): \(reply.status) \(reply.body)")
      #expect(reply.errorMessage.contains(mentions), "\(name): \(reply.errorMessage)")
      #expect(reply.json["error"] is [String: Any], "\(name): an OpenAI error object")
    }
    check("malformed JSON", try await request(s.port, "POST", "/v1/chat/completions", raw: Array("{\"messages\": [".utf8)), status: 400, mentions: "not valid JSON")
    var badImage = chatBody("hi")
    badImage["messages"] = [["role": "user", "content": [["type": "image_url", "image_url": ["url": "data:image/jpeg;base64,@@not base64@@"]]]]]
    check("bad base64", try await request(s.port, "POST", "/v1/chat/completions", json: badImage), status: 400, mentions: "base64")
    var remote = chatBody("hi")
    remote["messages"] = [["role": "user", "content": [["type": "image_url", "image_url": ["url": "https://example.com/cat.jpg"]]]]]
    check("remote URL", try await request(s.port, "POST", "/v1/chat/completions", json: remote), status: 400, mentions: "fetches nothing")
    check("unknown model", try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("hi", extra: ["model": "gpt-9"])), status: 404, mentions: "gpt-9")
    check("negative max_tokens", try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("hi", maxTokens: -5)), status: 400, mentions: "at least 1")
    check("beyond the context", try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("hi", maxTokens: 5000)), status: 400, mentions: "context")
    check("oversized body", try await request(s.port, "POST", "/v1/chat/completions", json: chatBody(String(repeating: "x", count: 100_000))), status: 413, mentions: "limit")
    check("too many pixels", try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("hi", image: image)), status: 400, mentions: "pixel limit")
    check("a wrong type", try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("hi", extra: ["temperature": "warm"])), status: 400, mentions: "number")
    check("no such route", try await request(s.port, "GET", "/v1/nothing"), status: 404, mentions: "no route")
    let fine = try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("describe the image", maxTokens: 4))
    let alone = try chatAnswer("describe the image", image: nil, maxTokens: 4).text
    #expect(fine.status == 200 && answerText(fine) == alone)
  }

  @Test func anAPIKeyIsRequiredWhenSet() async throws {
    var settings = ServeSettings()
    settings.apiKey = "sesame"
    let s = try await RunningServer(settings: settings)
    defer { Task { await s.stop() } }
    #expect(try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("hi", maxTokens: 2)).status == 401)
    #expect(try await request(s.port, "GET", "/v1/models", headers: ["Authorization": "Bearer wrong"]).status == 401)
    #expect(try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("hi", maxTokens: 2), headers: ["Authorization": "Bearer sesame"]).status == 200)
    #expect(try await request(s.port, "GET", "/health").status == 200, "health stays open for probes")
  }

  /// A client that hangs up mid-stream frees its slot: with one slot, the next request is served.
  @Test func aDisconnectMidStreamFreesTheSlot() async throws {
    let s = try await RunningServer(maxBatch: 1)
    defer { Task { await s.stop() } }
    let long = chatBody("a red square", maxTokens: 3000, stream: true)
    let body = Array(try JSONSerialization.data(withJSONObject: long))
    let port = s.port
    let first = try await onOwnThread {
      let c = try HTTPConnection(port: port)
      c.send("POST", "/v1/chat/completions", body: body)
      let seen = c.receive { $0.components(separatedBy: "data: ").count > 3 }
      shutdown(c.fd, Int32(SHUT_RDWR))  // hang up mid-stream
      return seen
    }
    #expect(first.contains("chat.completion.chunk"))
    #expect(try await slotFreed(s.port), "the engine dropped the sequence")
    let next = try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("describe the image", maxTokens: 4))
    #expect(next.status == 200)
  }

  /// A client that hangs up before a non-streaming answer is done frees its slot too.
  @Test func aDisconnectBeforeAPlainAnswerFreesTheSlot() async throws {
    let s = try await RunningServer(maxBatch: 1)
    defer { Task { await s.stop() } }
    let body = Array(try JSONSerialization.data(withJSONObject: chatBody("a red square", maxTokens: 3000)))
    let port = s.port
    try await onOwnThread {
      let c = try HTTPConnection(port: port)
      c.send("POST", "/v1/chat/completions", body: body)
      usleep(5_000)  // the answer has started
      shutdown(c.fd, Int32(SHUT_RDWR))
    }
    #expect(try await slotFreed(s.port), "the engine dropped the sequence")
    #expect(try await request(s.port, "POST", "/v1/chat/completions", json: chatBody("describe the image", maxTokens: 4)).status == 200)
  }

  /// A full queue is refused (HTTP 429) and a request past its time limit, waiting included,
  /// fails (HTTP 504). The engine is held stopped while requests queue, so nothing depends on timing.
  @Test func aFullQueueAndTheTimeLimitAreClearErrors() async throws {
    let assistant = try Assistant(modelDir: TinyServedModel.folder)
    let engine = Engine(assistant: assistant, maxBatch: 1, maxQueue: 2)
    let prompt = try assistant.prepare([ChatMessage(role: "user", content: "a red square")], pixels: nil, maxNewTokens: 4)
    var options = GenerationOptions()
    options.maxNewTokens = 4
    let (_, overdue) = try engine.submit(CompletionJob(prompt: prompt, options: options, stopStrings: [], timeLimit: 0.01))
    let (_, onTime) = try engine.submit(CompletionJob(prompt: prompt, options: options, stopStrings: [], timeLimit: 300))
    #expect(throws: EngineFailure.self) { try engine.submit(CompletionJob(prompt: prompt, options: options, stopStrings: [], timeLimit: 300)) }
    #expect(OpenAIServer.apiError(.queueFull(limit: 2)).status == 429)
    #expect(OpenAIServer.apiError(.timedOut(seconds: 1)).status == 504)
    try await Task.sleep(nanoseconds: 30_000_000)
    engine.start()
    defer { engine.shutdown() }
    var first: [EngineEvent] = [], second: [EngineEvent] = []
    for await e in overdue { first.append(e) }
    for await e in onTime { second.append(e) }
    guard case .failed(.timedOut) = first.last else { Issue.record("the overdue request: \(first)"); return }
    guard case .finished(_, _, let completion) = second.last else { Issue.record("the request on time: \(second)"); return }
    #expect(completion == 4)
    #expect(engine.load.waiting == 0)
  }

  @Test func stopStringsCutTheAnswerAndHoldBackPrefixes() {
    var f = StopStringFilter(stops: ["END", "\n\n"])
    #expect(f.push("hello E") == ("hello ", false))
    #expect(f.push("N") == ("", false))
    #expect(f.push("Dless") == ("", true))
    var g = StopStringFilter(stops: ["END"])
    #expect(g.push("hello E") == ("hello ", false))
    #expect(g.push("xit") == ("Exit", false))
    #expect(g.push(" E") == (" ", false))
    #expect(g.flush() == "E")
    var h = StopStringFilter(stops: [])
    #expect(h.push("as is") == ("as is", false))
  }
}
