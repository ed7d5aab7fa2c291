import Foundation
import PivotModels
import PivotNN
import PivotTensor

/// One training batch as the models consume it.
public struct TrainBatch: @unchecked Sendable {
  public var ids: [Int32]  // (B, T)
  public var labels: [Int32]  // (B, T), −100 where no loss
  public var batch: Int  // B
  public var length: Int  // T
  public var imageStarts: [Int?]  // (B): first position of each row's image slot
  public var pixels: Tensor?  // (N, 3, H, W): one image per row with a slot, in row order
  public var truncated = 0

  public init(ids: [Int32], labels: [Int32], batch: Int, length: Int, imageStarts: [Int?] = [], pixels: Tensor? = nil) {
    self.ids = ids
    self.labels = labels
    self.batch = batch
    self.length = length
    self.imageStarts = imageStarts.isEmpty ? Array(repeating: nil, count: batch) : imageStarts
    self.pixels = pixels
  }

  /// Tokens that carry loss (after the causal shift).
  public var countedTokens: Int {
    var n = 0
    for r in 0..<batch { for i in 1..<length where labels[r * length + i] != -100 { n += 1 } }
    return n
  }
}

/// Thrown by a source read for a finite number of epochs once they are done: the run ends
/// after the step in progress.
public struct EndOfData: Error, CustomStringConvertible {
  public let epochs: Int
  public var description: String { "the training data ran out after \(epochs) epoch(s)" }
}

/// Where batches come from. The state is opaque JSON the checkpoint stores, so a resumed run
/// continues with exactly the batches an uninterrupted one would have seen.
public protocol BatchSource: AnyObject {
  func next() throws -> TrainBatch
  func saveState() throws -> String
  func restoreState(_ state: String) throws
  /// Samples skipped as unreadable so far.
  var badSamples: Int { get }
}

/// What the trainer needs of a model.
public protocol TrainableModel: Module {
  func loss(_ batch: TrainBatch) -> (loss: Tensor, counted: Int)
  /// Frozen weights keep only a bfloat16 copy from now on; returns the bytes given back.
  @discardableResult func storeFrozenWeightsInBF16() -> Int
  /// LLM layers (from the first) that keep only their input and rerun in backward.
  var recomputedLayers: Int { get set }
}

extension ChatModel: TrainableModel {
  public var recomputedLayers: Int {
    get { languageModel.recomputedLayers }
    set { languageModel.recomputedLayers = newValue }
  }
  public func loss(_ b: TrainBatch) -> (loss: Tensor, counted: Int) {
    loss(ids: b.ids, labels: b.labels, batch: b.batch, length: b.length, pixels: b.pixels, imageStarts: b.imageStarts)
  }
}

extension DecoderLM: TrainableModel {
  public func loss(_ b: TrainBatch) -> (loss: Tensor, counted: Int) {
    causalLMLoss(hiddenStates(embed(b.ids, shape: [b.batch, b.length])), labels: b.labels)
  }
}
