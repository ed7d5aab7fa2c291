import Foundation

/// A block of float32 memory. Pooled blocks go back to `BufferPool` when the last tensor
/// viewing them dies, so a training step that allocates the same shapes every step stops
/// calling malloc after the first one.
public final class Storage: @unchecked Sendable {
  public let base: UnsafeMutablePointer<Float>
  public let capacity: Int
  private let pooled: Bool
  /// Keeps an external owner (an mmap'd file, a parent buffer) alive while this storage lives.
  private let owner: AnyObject?

  /// Pooled, uninitialised memory for `capacity` floats.
  public init(capacity: Int) {
    self.capacity = capacity
    self.base = BufferPool.shared.take(capacity)
    self.pooled = true
    self.owner = nil
  }

  /// Wraps memory owned by someone else (mmap'd weights, a flat parameter buffer).
  public init(borrowing base: UnsafeMutablePointer<Float>, capacity: Int, owner: AnyObject?) {
    self.base = base
    self.capacity = capacity
    self.pooled = false
    self.owner = owner
  }

  deinit {
    if pooled { BufferPool.shared.give(base, capacity) }
  }
}

/// Size-keyed free lists of float buffers. Training repeats the same shapes every step,
/// so exact-size reuse hits almost always; the cap keeps a shape change from hoarding memory.
public final class BufferPool: @unchecked Sendable {
  public static let shared = BufferPool()
  private var free: [Int: [UnsafeMutablePointer<Float>]] = [:]
  private var pooledFloats = 0
  private let lock = NSLock()
  /// Most floats kept idle (1 GiB).
  public var capFloats = 256 << 20

  func take(_ count: Int) -> UnsafeMutablePointer<Float> {
    let n = max(count, 1)
    lock.lock()
    if var list = free[n], let p = list.popLast() {
      free[n] = list
      pooledFloats -= n
      lock.unlock()
      return p
    }
    lock.unlock()
    // 64-byte alignment keeps SIMD loads and BLAS packing on cache lines.
    var raw: UnsafeMutableRawPointer?
    guard posix_memalign(&raw, 64, n * MemoryLayout<Float>.stride) == 0, let raw else {
      fatalError("Pivot: out of memory allocating \(n * 4) bytes")
    }
    return raw.bindMemory(to: Float.self, capacity: n)
  }

  func give(_ p: UnsafeMutablePointer<Float>, _ count: Int) {
    let n = max(count, 1)
    lock.lock()
    if pooledFloats + n <= capFloats {
      free[n, default: []].append(p)
      pooledFloats += n
      lock.unlock()
      return
    }
    lock.unlock()
    Foundation.free(p)
  }

  /// Returns every idle buffer to the system (between phases of different shapes).
  public func drain() {
    lock.lock()
    let lists = free
    free = [:]
    pooledFloats = 0
    lock.unlock()
    for (_, list) in lists { for p in list { Foundation.free(p) } }
  }

  public var idleBytes: Int {
    lock.lock()
    defer { lock.unlock() }
    return pooledFloats * 4
  }
}
