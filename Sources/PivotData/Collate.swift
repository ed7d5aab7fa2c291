import Foundation

/// One turn of a LLaVA-style conversation: `from` is `human`, `gpt` or `system`.
public struct ConversationTurn: Codable, Sendable, Equatable {
  public var from: String
  public var value: String
  public init(from: String, value: String) {
    self.from = from
    self.value = value
  }
}

/// A tokenised sample. `labels` has -100 wherever no loss is taken.
public struct EncodedSample: Sendable, Equatable {
  public var ids: [Int32]  // (T)
  public var labels: [Int32]  // (T)
  /// Positions of the image placeholder tokens that the soft tokens replace.
  public var imageSlot: Range<Int>?
  public init(ids: [Int32], labels: [Int32], imageSlot: Range<Int>?) {
    self.ids = ids
    self.labels = labels
    self.imageSlot = imageSlot
  }
}

public let ignoreLabel: Int32 = -100

/// Where PivotData meets the tokenizer (PivotText implements it with its chat templates).
public protocol SampleEncoder: Sendable {
  /// Stage 1: prompt template with the image slot + caption; labels on the caption (+ end token) only.
  func encodeCaption(_ caption: String) throws -> EncodedSample
  /// Stage 2: chat template with `<image>` expanded to the image slot; labels on assistant turns only.
  func encodeConversation(_ turns: [ConversationTurn]) throws -> EncodedSample
  var padId: Int32 { get }
}

/// What a sample holds: a caption (stage 1) or a conversation (stage 2).
public enum SampleKind: String, Codable, Sendable {
  case caption
  case conversation
}

/// Which fields to read. The image field's format is told by its bytes, not by its name.
public struct SampleFields: Codable, Sendable, Equatable {
  public var image: [String] = ["jpg", "jpeg", "png", "webp"]
  public var caption: [String] = ["txt", "caption"]
  public var conversation: [String] = ["json"]
  public init() {}
}

/// A batch, ready for the model. B = batch size, T = sequence length (longest sample, capped at
/// `maxLength`, or exactly `maxLength` with `padToMaxLength`), H × W = crop size.
public struct Batch: Sendable {
  public var batchSize: Int  // B
  public var sequenceLength: Int  // T
  public var imageHeight: Int  // H
  public var imageWidth: Int  // W
  public var ids: [Int32]  // (B, T), padId on padding
  public var labels: [Int32]  // (B, T), -100 on padding, prompts and image slots
  public var attentionMask: [Int32]  // (B, T), 1 on tokens, 0 on padding
  public var imageSlots: [Range<Int>?]  // (B)
  public var hasImage: [Bool]  // (B)
  public var pixels: [Float]  // (B, 3, H, W)
  public var keys: [String]  // (B)
  public var shards: [String]  // (B)
  /// Samples in this batch that were cut to `maxLength`.
  public var truncatedCount: Int
  /// The position right after this batch: save it, restore it, get the batches that follow.
  public var cursor: DataCursor
  /// Totals read and skipped so far (since this process opened the dataset).
  public var stats: DataStats
}

/// A decoded, tokenised sample waiting to be batched.
public struct PreparedSample: Sendable {
  public var key: String
  public var shard: String
  public var encoded: EncodedSample
  public var pixels: [Float]?  // (3, H, W), nil when the sample has no image
  public var truncated: Bool
}

/// The decode + tokenize stage: raw sample → `PreparedSample`, or an error naming the problem.
public struct SampleDecoder: Sendable {
  public var kind: SampleKind
  public var fields: SampleFields
  public var image: ImagePreprocessing
  public var encoder: any SampleEncoder
  public var maxLength: Int
  public var requireImage: Bool
  /// nil: the plain resize + centre crop.
  public var augmentation: Augmentation?

  public init(
    kind: SampleKind, encoder: any SampleEncoder, image: ImagePreprocessing = .clip(), maxLength: Int = 512,
    fields: SampleFields = SampleFields(), requireImage: Bool = true, augmentation: Augmentation? = nil
  ) {
    self.kind = kind
    self.encoder = encoder
    self.image = image
    self.maxLength = maxLength
    self.fields = fields
    self.requireImage = requireImage
    self.augmentation = augmentation
  }

  struct Problem: Error { var message: String }

  /// `seed` drives the augmentation (the loader derives it from the data cursor); without
  /// augmentation it is unused.
  public func prepare(_ sample: ShardSample, seed: UInt64 = 0) throws -> PreparedSample {
    var encoded: EncodedSample
    switch kind {
    case .caption:
      guard let data = sample.first(of: fields.caption) else {
        throw Problem(message: "missing caption (no \(fields.caption.joined(separator: "/")) field)")
      }
      let caption = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
      guard !caption.isEmpty else { throw Problem(message: "empty caption") }
      encoded = try encoder.encodeCaption(caption)
    case .conversation:
      guard let data = sample.first(of: fields.conversation) else {
        throw Problem(message: "missing conversation (no \(fields.conversation.joined(separator: "/")) field)")
      }
      let turns = try parseConversation(data)
      encoded = try encoder.encodeConversation(turns)
    }
    guard encoded.ids.count == encoded.labels.count else {
      throw Problem(message: "encoder gave \(encoded.ids.count) ids but \(encoded.labels.count) labels")
    }
    var truncated = false
    if encoded.ids.count > maxLength {
      if let slot = encoded.imageSlot, slot.upperBound > maxLength {
        throw Problem(message: "the image slot ends at \(slot.upperBound), past maxLength \(maxLength)")
      }
      encoded.ids.removeLast(encoded.ids.count - maxLength)
      encoded.labels.removeLast(encoded.labels.count - maxLength)
      truncated = true
    }
    var pixels: [Float]? = nil
    if let encodedImage = sample.first(of: fields.image) {
      pixels = try image.process(encoded: encodedImage, key: sample.key, augmentation: augmentation, seed: seed)
    } else if requireImage {
      throw Problem(message: "missing image (no \(fields.image.joined(separator: "/")) field)")
    }
    return PreparedSample(key: sample.key, shard: sample.url, encoded: encoded, pixels: pixels, truncated: truncated)
  }

  func parseConversation(_ data: [UInt8]) throws -> [ConversationTurn] {
    let object: Any
    do {
      object = try JSONSerialization.jsonObject(with: Data(data))
    } catch {
      throw Problem(message: "json field is not valid JSON")
    }
    let list: Any?
    if let dictionary = object as? [String: Any] {
      list = dictionary["conversations"]
    } else {
      list = object
    }
    guard let entries = list as? [[String: Any]], !entries.isEmpty else {
      throw Problem(message: "json has no 'conversations' list")
    }
    return try entries.map { entry in
      guard let from = entry["from"] as? String, let value = entry["value"] as? String else {
        throw Problem(message: "a conversation turn lacks 'from' or 'value'")
      }
      guard ["human", "gpt", "system"].contains(from) else {
        throw Problem(message: "turn from '\(from)' (expected human, gpt or system)")
      }
      return ConversationTurn(from: from, value: value)
    }
  }
}

/// Pads prepared samples into a batch. // ids, labels, mask: (B, T); pixels: (B, 3, H, W)
public func collate(
  _ samples: [PreparedSample], padId: Int32, image: ImagePreprocessing, maxLength: Int, padToMaxLength: Bool,
  cursor: DataCursor, stats: DataStats
) -> Batch {
  let batchSize = samples.count
  let longest = samples.map(\.encoded.ids.count).max() ?? 0
  let length = padToMaxLength ? maxLength : min(longest, maxLength)
  var ids = [Int32](repeating: padId, count: batchSize * length)
  var labels = [Int32](repeating: ignoreLabel, count: batchSize * length)
  var mask = [Int32](repeating: 0, count: batchSize * length)
  let plane = image.pixelCount
  var pixels = [Float](repeating: 0, count: batchSize * plane)
  for (row, sample) in samples.enumerated() {
    let count = min(sample.encoded.ids.count, length)
    for t in 0..<count {
      ids[row * length + t] = sample.encoded.ids[t]
      labels[row * length + t] = sample.encoded.labels[t]
      mask[row * length + t] = 1
    }
    if let samplePixels = sample.pixels {
      pixels.withUnsafeMutableBufferPointer { target in
        samplePixels.withUnsafeBufferPointer { source in
          (target.baseAddress! + row * plane).update(from: source.baseAddress!, count: plane)
        }
      }
    }
  }
  return Batch(
    batchSize: batchSize, sequenceLength: length, imageHeight: image.cropHeight, imageWidth: image.cropWidth,
    ids: ids, labels: labels, attentionMask: mask, imageSlots: samples.map(\.encoded.imageSlot),
    hasImage: samples.map { $0.pixels != nil }, pixels: pixels, keys: samples.map(\.key),
    shards: samples.map(\.shard), truncatedCount: samples.filter(\.truncated).count, cursor: cursor, stats: stats)
}
