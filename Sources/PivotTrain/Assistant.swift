import Foundation
import PivotData
import PivotModels
import PivotNN
import PivotTensor
import PivotText

/// A problem with a model folder or a request to it, said for the person who gave it.
public struct AssistantError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// A loaded model with its tokenizer and chat template, ready to answer.
public final class Assistant: @unchecked Sendable {
  public let model: LoadedModel
  public let tokenizer: Tokenizer
  public let template: ChatTemplate
  public let image: ImagePreprocessing?
  public let stopIds: Set<Int32>

  /// `dtype`: `auto` computes with the checkpoint's own precision (a BF16 LLM folder from its
  /// mapped bits, float32 otherwise), `fp32` widens everything, `bf16` rounds every weight of the LLM and the vision tower.
  /// `adapter`: a PEFT LoRA folder applied, unmerged, to the LLM before anything is stacked.
  public init(modelDir: String, chatTemplate: String? = nil, dtype: String = "auto", adapter: String? = nil) throws {
    guard ["auto", "fp32", "bf16"].contains(dtype) else { throw AssistantError("--dtype must be auto, fp32 or bf16, not '\(dtype)'") }
    // The tokenizer beside the weights loads on another thread while the weights load: for a
    // 0.5 B model that is most of a second off the time to the first token.
    final class Pending: @unchecked Sendable { var tokenizer: Tokenizer? }
    let pending = Pending()
    let loading = DispatchGroup()
    if FileManager.default.fileExists(atPath: (modelDir as NSString).appendingPathComponent("tokenizer.json")) {
      DispatchQueue.global().async(group: loading) { pending.tokenizer = try? Tokenizer(contentsOf: URL(fileURLWithPath: modelDir)) }
    }
    let (model, folder) = try ModelLoader.load(modelDir, keepingBF16: dtype != "fp32")
    if let adapter { try model.applyAdapter(adapter, name: modelDir) }
    try model.module.freeze()  // inference: nothing trains, so frozen storage and fused products apply
    if dtype == "bf16" { model.module.storeFrozenWeightsInBF16() }
    switch model {
    case .llm(let m): m.stackFrozenProjections()
    case .chat(let m): m.languageModel.stackFrozenProjections()
    }
    loading.wait()
    self.model = model
    guard let folder, FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("tokenizer.json")) else {
      throw AssistantError("\(modelDir): no tokenizer.json beside the model")
    }
    if folder == modelDir, let early = pending.tokenizer {
      tokenizer = early
    } else {
      tokenizer = try Tokenizer(contentsOf: URL(fileURLWithPath: folder))
    }
    try RunSetup.checkVocabulary(tokenizer, path: (folder as NSString).appendingPathComponent("tokenizer.json"), model: model.module)
    var placeholder: Int32? = nil
    if case .chat(let m) = model {
      placeholder = tokenizer.id(forToken: "<|image_pad|>") ?? tokenizer.id(forToken: "<image>") ?? m.config.imageTokenId
      image = RunSetup.preprocessing(for: m, visionFolder: nil)
    } else {
      image = nil
    }
    // An explicit choice wins, then the template the model was trained with, then the tokenizer's.
    var name = chatTemplate
    if name == nil, case .chat(let m) = model, m.config.chatTemplate != "auto" { name = m.config.chatTemplate }
    template = try ChatTemplate(tokenizer: tokenizer, named: name, imagePlaceholderID: placeholder)
    var stops = Set<Int32>()
    for t in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>"] { if let id = tokenizer.id(forToken: t) { stops.insert(id) } }
    if let eos = tokenizer.eosTokenID { stops.insert(eos) }
    if case .llm(let m) = model { for id in m.config.eosTokenIds { stops.insert(Int32(id)) } }
    stopIds = stops
  }

  public var hasVision: Bool { if case .chat = model { true } else { false } }

  public func pixels(jpegAt path: String) throws -> Tensor {
    guard let image else { throw AssistantError("this model has no vision tower; drop --image") }
    guard let data = FileManager.default.contents(atPath: path) else { throw AssistantError("cannot read \(path)") }
    let t = Tensor(empty: [1, 3, image.cropHeight, image.cropWidth])
    try image.process(jpeg: Array(data), key: path, into: t.ptr)
    return t
  }

  /// A caption in LLaVA's stage-1 `plain` format: the image slot alone, then whatever the
  /// model writes up to its end token.
  public func plainCaption(pixels: Tensor, options: GenerationOptions) throws -> [Int32] {
    guard case .chat(let m) = model else { throw AssistantError("plain captions need an image model") }
    var options = options
    options.stopTokenIds.formUnion(stopIds)
    let prefix = ChatSampleEncoder.plainPrefix(tokenizer, placeholder: template.imagePlaceholderID ?? m.config.imageTokenId, imageTokens: m.imageTokenCount)
    return m.generate(ids: prefix.ids, pixels: pixels, imageStart: prefix.slot.lowerBound, options: options)
  }

  /// A rendered prompt: its ids, and the image whose soft tokens fill its slot.
  public struct Prompt: @unchecked Sendable {
    public let ids: [Int32]
    public let pixels: Tensor?  // (1, 3, H, W)
    public let imageStart: Int?
  }

  /// The LLM's context length in positions.
  public var contextLength: Int {
    switch model { case .chat(let m): m.config.decoder.maxPositionEmbeddings; case .llm(let m): m.config.maxPositionEmbeddings }
  }

  /// Renders `messages` with the chat template (`<image>` in a message marks where the picture
  /// goes); refuses a prompt that leaves no room for `maxNewTokens`. Only the tokenizer runs:
  /// safe beside a thread that runs the model.
  public func prepare(_ messages: [ChatMessage], pixels: Tensor?, maxNewTokens: Int, budgetName: String = "--max-new-tokens") throws -> Prompt {
    let q: Int
    if case .chat(let m) = model { q = pixels == nil ? 0 : m.imageTokenCount } else { q = 0 }
    let rendered = try template.render(messages: messages, imageTokenCount: q, addGenerationPrompt: true)
    let context = contextLength
    guard rendered.ids.count + maxNewTokens <= context else {
      throw ContextOverflow(promptTokens: rendered.ids.count, maxNewTokens: maxNewTokens, context: context, budgetName: budgetName)
    }
    return Prompt(ids: rendered.ids, pixels: q > 0 ? pixels : nil, imageStart: q > 0 ? rendered.imageSlot?.lowerBound : nil)
  }

  /// The LLM's input rows (1, T, C) for a prompt: token embeddings, the image's soft tokens in
  /// its slot.
  public func embeddings(_ prompt: Prompt) -> Tensor {
    noGrad {
      switch model {
      case .chat(let m): m.inputEmbeddings(ids: prompt.ids, batch: 1, length: prompt.ids.count, pixels: prompt.pixels, imageStarts: [prompt.imageStart])
      case .llm(let m): m.embed(prompt.ids, shape: [1, prompt.ids.count])
      }
    }
  }

  /// Generates a reply to `messages`; `<image>` in a message marks where the picture goes.
  /// Streams text through `emit`; returns the new ids and the seconds to the first token.
  public func reply(
    _ messages: [ChatMessage], pixels: Tensor?, options: GenerationOptions, stopStrings: [String] = [], emit: (String) -> Void
  ) throws -> (ids: [Int32], firstTokenSeconds: Double, seconds: Double) {
    let prompt = try prepare(messages, pixels: pixels, maxNewTokens: options.maxNewTokens)
    var options = options
    options.stopTokenIds.formUnion(stopIds)
    var stream = tokenizer.makeIncrementalDecoder(skipSpecialTokens: true)
    var text = ""
    let start = Date()
    var first: Double? = nil
    let onToken: (Int32) -> Bool = { id in
      if first == nil { first = Date().timeIntervalSince(start) }
      if options.stopTokenIds.contains(id) { return false }
      let piece = stream.push(id)
      text += piece
      emit(piece)
      return !stopStrings.contains { text.hasSuffix($0) }
    }
    let ids = model.languageModel.generate(embeddings: embeddings(prompt), history: prompt.ids, options: options, onToken: onToken)
    emit(stream.finish())
    return (ids, first ?? 0, Date().timeIntervalSince(start))
  }
}


/// A prompt and a token budget that do not fit the model's context.
public struct ContextOverflow: Error, CustomStringConvertible {
  public let promptTokens: Int, maxNewTokens: Int, context: Int
  public let budgetName: String
  public var description: String {
    "the prompt is \(promptTokens) tokens and \(budgetName) \(maxNewTokens): more than the model's context of \(context) positions (shorten the prompt or lower \(budgetName))"
  }
}
