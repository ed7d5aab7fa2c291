import Foundation

/// A float32 tensor: a contiguous, row-major view at `offset` into a `Storage`.
///
/// Layout operations that would need strides (transpose, permute, slice) copy; reshape is a
/// free view. Keeping every tensor contiguous keeps every kernel a plain loop over pointers.
/// Dimension letters used across Pivot: B batch, T time, S key length, C channels,
/// V vocab, NH heads, NKV key/value heads, HS head size, Q queries.
public final class Tensor: @unchecked Sendable, CustomStringConvertible {
  public private(set) var storage: Storage
  public private(set) var offset: Int
  public let shape: [Int]
  public let count: Int

  /// This tensor's place in the autograd graph. The graph holds slots, not tensors, so an
  /// intermediate's values are freed once the forward code drops it, unless a backward rule
  /// captured them because it needs them.
  let slot: GradSlot
  /// Whether gradients flow to (leaf) or through (interior) this tensor.
  public var requiresGrad: Bool {
    get { slot.requiresGrad }
    set { slot.requiresGrad = newValue }
  }
  /// Accumulated gradient, same shape. For trainable parameters a view into the flat
  /// gradient buffer; for interior tensors allocated during backward and freed after use.
  public var grad: Tensor? {
    get { slot.grad }
    set { slot.grad = newValue }
  }
  /// Keeps the gradient of an interior tensor after backward (for tests and inspection).
  public var retainsGrad: Bool {
    get { slot.retainsGrad }
    set { slot.retainsGrad = newValue }
  }
  var node: BackwardNode? { slot.node }
  public var name: String?
  /// Set when a frozen (R, C) parameter keeps only bfloat16 values (`keepOnlyBF16`).
  public internal(set) var bf16Values: BF16Matrix?

  public init(storage: Storage, offset: Int = 0, shape: [Int], requiresGrad: Bool = false) {
    let n = shape.reduce(1, *)
    precondition(offset + n <= storage.capacity, "view \(shape) at \(offset) exceeds storage of \(storage.capacity)")
    self.storage = storage
    self.offset = offset
    self.shape = shape
    self.count = n
    self.slot = GradSlot(shape: shape, requiresGrad: requiresGrad)
  }

  /// Uninitialised tensor from the pool (every element must be written).
  public convenience init(empty shape: [Int]) {
    self.init(storage: Storage(capacity: shape.reduce(1, *)), shape: shape)
  }

  public static func zeros(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
    let t = Tensor(empty: shape)
    t.ptr.initialize(repeating: 0, count: t.count)
    t.requiresGrad = requiresGrad
    return t
  }

  public static func full(_ shape: [Int], _ value: Float) -> Tensor {
    let t = Tensor(empty: shape)
    t.ptr.initialize(repeating: value, count: t.count)
    return t
  }

  public convenience init(_ values: [Float], shape: [Int], requiresGrad: Bool = false) {
    precondition(values.count == shape.reduce(1, *), "\(values.count) values for shape \(shape)")
    self.init(empty: shape)
    values.withUnsafeBufferPointer { ptr.update(from: $0.baseAddress!, count: values.count) }
    self.requiresGrad = requiresGrad
  }

  public var ptr: UnsafeMutablePointer<Float> { storage.base + offset }
  public var rank: Int { shape.count }
  public var isLeaf: Bool { node == nil }
  /// Row-major strides of the contiguous layout, in elements.
  public var strides: [Int] {
    var s = [Int](repeating: 1, count: shape.count)
    var acc = 1
    for i in stride(from: shape.count - 1, through: 0, by: -1) { s[i] = acc; acc *= shape[i] }
    return s
  }
  public func size(_ axis: Int) -> Int { shape[axis < 0 ? shape.count + axis : axis] }

  public var scalars: [Float] { Array(UnsafeBufferPointer(start: ptr, count: count)) }
  public var item: Float {
    precondition(count == 1, "item() on a tensor of shape \(shape)")
    return ptr[0]
  }

  /// A view sharing storage (no autograd edge: used for parameters and buffers).
  public func view(offset extra: Int, shape: [Int]) -> Tensor {
    Tensor(storage: storage, offset: offset + extra, shape: shape)
  }

  /// Moves this tensor's values into `storage` at `offset` and points the tensor there.
  /// Used once, when parameters are packed into a flat buffer.
  public func rebind(to storage: Storage, offset: Int) {
    precondition(offset + count <= storage.capacity)
    precondition(bf16Values == nil, "a bfloat16-only parameter has no float32 values to move")
    (storage.base + offset).update(from: ptr, count: count)
    self.storage = storage
    self.offset = offset
  }

  /// Points this tensor at other memory without copying (memory-mapped weights).
  public func repoint(to storage: Storage, offset: Int) {
    precondition(offset + count <= storage.capacity)
    self.storage = storage
    self.offset = offset
    bf16Values = nil
  }

  public func copy(from other: Tensor) {
    precondition(other.count == count, "copy of \(other.shape) into \(shape)")
    ptr.update(from: other.ptr, count: count)
  }

  /// A detached copy with its own storage.
  public func clone() -> Tensor {
    let t = Tensor(empty: shape)
    t.ptr.update(from: ptr, count: count)
    return t
  }

  /// Same values, no autograd history.
  public func detached() -> Tensor { Tensor(storage: storage, offset: offset, shape: shape) }

  public var description: String {
    let head = scalars.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
    return "Tensor(\(shape)\(name.map { " \($0)" } ?? ""): [\(head)\(count > 8 ? ", …" : "")])"
  }

  /// Gradient buffer, created zeroed on first use; backward kernels add into it.
  @inline(__always)
  func gradPointer() -> UnsafeMutablePointer<Float> { slot.gradPointer() }
}

/// A tensor's gradient state, apart from its values: what the graph refers to. A backward rule
/// captures the slots of inputs whose values it does not need, and the tensors of those it does.
final class GradSlot {
  let shape: [Int]
  var requiresGrad: Bool
  var grad: Tensor?
  var retainsGrad = false
  var node: BackwardNode?

  init(shape: [Int], requiresGrad: Bool) {
    self.shape = shape
    self.requiresGrad = requiresGrad
  }

  @inline(__always)
  func gradPointer() -> UnsafeMutablePointer<Float> {
    if let g = grad { return g.ptr }
    let g = Tensor.zeros(shape)
    grad = g
    return g.ptr
  }
}

/// One recorded op: the inputs' slots and the rule that turns the output's gradient into input
/// gradients. A rule that needs the output's values captures a view of them (`detached()`,
/// another slot), so the graph holds no reference cycles.
final class BackwardNode {
  let inputs: [GradSlot]
  let rule: (_ gradOutput: UnsafeMutablePointer<Float>) -> Void
  init(_ inputs: [GradSlot], _ rule: @escaping (UnsafeMutablePointer<Float>) -> Void) {
    self.inputs = inputs
    self.rule = rule
  }
}

/// Gradient recording switch. Inference and frozen towers run inside `noGrad { … }`.
/// Per thread, so a data or evaluation thread under `noGrad` never changes what the
/// training thread records.
public enum GradMode {
  private static let key: pthread_key_t = {
    var k = pthread_key_t()
    pthread_key_create(&k, nil)
    return k
  }()

  static var disabledDepth: Int {
    get { Int(bitPattern: pthread_getspecific(key)) }
    set { pthread_setspecific(key, UnsafeRawPointer(bitPattern: newValue)) }
  }

  public static var isEnabled: Bool { disabledDepth == 0 }
}

@discardableResult
public func noGrad<R>(_ body: () throws -> R) rethrows -> R {
  GradMode.disabledDepth += 1
  defer { GradMode.disabledDepth -= 1 }
  return try body()
}

extension Tensor {
  /// Records `rule` as this tensor's backward step when any input needs a gradient.
  @inline(__always)
  func record(_ inputs: [Tensor], _ rule: @escaping (UnsafeMutablePointer<Float>) -> Void) -> Tensor {
    guard GradMode.isEnabled, inputs.contains(where: { $0.requiresGrad }) else { return self }
    requiresGrad = true
    slot.node = BackwardNode(inputs.map(\.slot), rule)
    return self
  }

  /// Reverse-mode sweep from this tensor. A scalar seeds with 1; otherwise pass `seed`.
  /// Interior gradients are freed as soon as they are consumed, and the graph is released.
  public func backward(seed: Tensor? = nil) {
    precondition(requiresGrad, "backward() on a tensor that does not require grad")
    if let seed {
      precondition(seed.shape == shape, "seed \(seed.shape) for \(shape)")
      gradPointer().update(from: seed.ptr, count: count)
    } else {
      precondition(count == 1, "backward() without a seed needs a scalar, got \(shape)")
      gradPointer()[0] += 1
    }
    // Iterative post-order DFS: deep graphs (24 layers × many ops) must not overflow the stack.
    var order: [GradSlot] = []
    var visited = Set<ObjectIdentifier>()
    var stack: [(GradSlot, Bool)] = [(slot, false)]
    while let (t, expanded) = stack.popLast() {
      if expanded { order.append(t); continue }
      let id = ObjectIdentifier(t)
      if visited.contains(id) { continue }
      visited.insert(id)
      stack.append((t, true))
      if let node = t.node {
        for input in node.inputs where input.requiresGrad && !visited.contains(ObjectIdentifier(input)) {
          stack.append((input, false))
        }
      }
    }
    for t in order.reversed() {
      guard let node = t.node else { continue }
      if let g = t.grad { node.rule(g.ptr) }
      t.node = nil
      if !t.retainsGrad { t.grad = nil }
    }
  }
}
