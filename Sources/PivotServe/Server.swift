import Foundation
import Hummingbird
import NIOCore
import PivotTrain

/// `pivot serve`: OpenAI's chat-completions API and a chat page over one `Engine`.
///   POST /v1/chat/completions   GET /v1/models   GET /health   GET /
public final class OpenAIServer: Sendable {
  public let engine: Engine
  public let settings: ServeSettings
  let created = Int(Date().timeIntervalSince1970)

  public init(engine: Engine, settings: ServeSettings) {
    self.engine = engine
    self.settings = settings
  }

  /// Serves until SIGTERM or SIGINT (or the task is cancelled), then lets running requests
  /// finish. `onRunning` gets the bound port (useful with port 0).
  public func run(onRunning: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
    engine.start()
    let app = Application(
      router: router(),
      configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: "Pivot"),
      onServerRunning: { channel in onRunning(channel.localAddress?.port ?? 0) })
    defer { engine.shutdown() }
    try await app.runService()  // SIGTERM and SIGINT shut it down gracefully
  }

  func router() -> Router<BasicRequestContext> {
    let router = Router()
    router.add(middleware: OpenAIErrors(apiKey: settings.apiKey))
    router.get("/") { _, _ in
      Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: ChatPage.html)))
    }
    router.get("/health") { [engine] _, _ in
      let load = engine.load
      return json(["status": "ok", "active": load.active, "waiting": load.waiting, "cancelled": load.cancelled, "max_batch": engine.maxBatch])
    }
    router.get("/v1/models") { [settings, created] _, _ in
      json(["object": "list", "data": [["id": settings.modelName, "object": "model", "created": created, "owned_by": "pivot"]]])
    }
    router.post("/v1/chat/completions") { [self] request, _ in
      try await chatCompletion(request)
    }
    return router
  }

  func chatCompletion(_ request: Request) async throws -> Response {
    if let length = request.headers[.contentLength].flatMap(Int.init), length > settings.maxBodyBytes { throw tooLarge() }
    // A client that hangs up while its answer is being written frees its slot at once (a
    // streaming one also when a write fails).
    let hangUp = HangUp()
    return try await request.body.consumeWithInboundCloseHandler { body in
      try await self.chatCompletion(body: body, hangUp: hangUp)
    } onInboundClosed: {
      hangUp.happened()
    }
  }

  func chatCompletion(body requestBody: RequestBody, hangUp: HangUp) async throws -> Response {
    let buffer: ByteBuffer
    do { buffer = try await requestBody.collect(upTo: settings.maxBodyBytes) } catch is NIOTooManyBytesError { throw tooLarge() }
    let parsed = try RequestParser.parse(Data(buffer: buffer), assistant: engine.assistant, settings: settings)
    let (ticket, events): (JobTicket, AsyncStream<EngineEvent>)
    do { (ticket, events) = try engine.submit(parsed.job) } catch let e as EngineFailure { throw Self.apiError(e) }
    hangUp.watch(ticket)
    let (id, model) = (Answers.id(), settings.modelName)
    let created = Int(Date().timeIntervalSince1970)

    guard parsed.stream else {
      var text = ""
      return try await withTaskCancellationHandler {
        for await event in events {
          switch event {
          case .text(let piece): text += piece
          case .finished(let reason, let p, let c):
            return json(Answers.completion(id: id, created: created, model: model, text: text, finish: reason, prompt: p, completion: c))
          case .failed(let failure): throw Self.apiError(failure)
          }
        }
        throw APIError(499, "the request was cancelled", type: "cancelled")
      } onCancel: {
        ticket.cancel()
      }
    }

    // From here the body writer notices a client that went away; the request's own close
    // watch ends when this returns.
    hangUp.release()
    let includeUsage = parsed.includeUsage
    let body = ResponseBody { writer in
      func send(_ object: [String: Any]) async throws {
        var b = ByteBuffer(string: "data: ")
        b.writeBytes(Answers.data(object))
        b.writeString("\n\n")
        try await writer.write(b)
      }
      do {
        try await send(Answers.chunk(id: id, created: created, model: model, delta: ["role": "assistant", "content": ""], finish: nil))
        for await event in events {
          switch event {
          case .text(let piece): try await send(Answers.chunk(id: id, created: created, model: model, delta: ["content": piece], finish: nil))
          case .finished(let reason, let p, let c):
            try await send(Answers.chunk(id: id, created: created, model: model, delta: [:], finish: reason))
            if includeUsage { try await send(Answers.usageChunk(id: id, created: created, model: model, prompt: p, completion: c)) }
          case .failed(let failure): try await send(Self.apiError(failure).json)
          }
        }
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
        try await writer.finish(nil)
      } catch {
        ticket.cancel()  // the client went away: its slot frees before the next step
        throw error
      }
    }
    return Response(status: .ok, headers: [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-cache"], body: body)
  }

  func tooLarge() -> APIError {
    APIError(413, "the request body is larger than the server's limit of \(settings.maxBodyBytes) bytes (send a smaller image, or start the server with a larger --max-body-bytes)", code: "request_too_large")
  }

  static func apiError(_ failure: EngineFailure) -> APIError {
    switch failure {
    case .queueFull: APIError(429, failure.description, type: "rate_limit_exceeded", code: "queue_full")
    case .timedOut: APIError(504, failure.description, type: "timeout", code: "request_timeout")
    case .shuttingDown: APIError(503, failure.description, type: "server_error", code: "shutting_down")
    }
  }
}

/// The ticket of a request whose client may hang up before its answer is written.
final class HangUp: @unchecked Sendable {
  private let lock = NSLock()
  private var ticket: JobTicket?
  private var hungUp = false

  func watch(_ t: JobTicket) {
    let cancel = lock.withLock { () -> Bool in
      ticket = t
      return hungUp
    }
    if cancel { t.cancel() }
  }

  /// Stops watching (the answer is on its way and its writes notice a hang-up).
  func release() { lock.withLock { ticket = nil } }

  func happened() {
    let t = lock.withLock { () -> JobTicket? in
      hungUp = true
      return ticket
    }
    t?.cancel()
  }
}

func json(_ object: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
  Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: Answers.data(object))))
}

/// Every error leaves as OpenAI's error object (unknown routes and Hummingbird's own errors too);
/// with an API key, /v1 requests must carry it.
struct OpenAIErrors: RouterMiddleware {
  typealias Context = BasicRequestContext
  let apiKey: String?

  func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
    do {
      if let apiKey, request.uri.path.hasPrefix("/v1/"), request.headers[.authorization] != "Bearer \(apiKey)" {
        throw APIError(401, request.headers[.authorization] == nil
          ? "this server needs an API key: send 'Authorization: Bearer KEY'"
          : "the API key is not the one this server was started with", code: "invalid_api_key")
      }
      var response = try await next(request, context)
      // Completions are read with an inbound-close watch, after which Hummingbird closes the
      // connection: say so, or a client's pool reuses it and its next request fails.
      if request.uri.path == "/v1/chat/completions" { response.headers[.connection] = "close" }
      return response
    } catch let e as APIError {
      var response = json(e.json, status: .init(code: e.status))
      if request.uri.path == "/v1/chat/completions" { response.headers[.connection] = "close" }
      return response
    } catch let e as HTTPError {
      let message = e.status == .notFound ? "no route \(request.method) \(request.uri.path) (POST /v1/chat/completions, GET /v1/models, GET /health, GET /)" : "\(e)"
      return json(APIError(e.status.code, message, code: e.status == .notFound ? "not_found" : nil).json, status: e.status)
    } catch {
      return json(APIError(500, "internal error: \(error)", type: "server_error").json, status: .internalServerError)
    }
  }
}
