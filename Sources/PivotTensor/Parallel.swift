import COpenBLAS
import Dispatch
import Foundation

/// Threads used by `parallelFor`. Set once at start-up (from `--threads` or the core count).
public enum Threads {
  nonisolated(unsafe) public static var count = max(1, min(ProcessInfoCores.available, 8))

  /// Sets Pivot's own worker count and OpenBLAS's together.
  public static func set(_ n: Int) {
    count = max(1, n)
    openblas_set_num_threads(Int32(count))
  }

  public static var blasCore: String {
    guard let name = openblas_get_corename() else { return "unknown" }
    return String(cString: name)
  }
}

enum ProcessInfoCores {
  static var available: Int { ProcessInfo.processInfo.activeProcessorCount }
}

/// Lets a non-escaping body cross into Dispatch's @Sendable worker closure; each worker
/// touches a disjoint range, which is what makes this sound.
private struct UncheckedBody: @unchecked Sendable {
  let run: (Range<Int>) -> Void
}

/// Splits `0..<n` into contiguous chunks run on `Threads.count` workers. Work smaller than
/// `grain` items per worker runs inline: waking threads costs more than a small loop.
@inline(__always)
public func parallelFor(_ n: Int, grain: Int = 16384, _ body: (Range<Int>) -> Void) {
  let workers = min(Threads.count, max(1, n / max(grain, 1)))
  if workers <= 1 {
    if n > 0 { body(0..<n) }
    return
  }
  let chunk = (n + workers - 1) / workers
  withoutActuallyEscaping(body) { body in
    let box = UncheckedBody(run: body)
    DispatchQueue.concurrentPerform(iterations: workers) { w in
      let start = w * chunk
      let end = min(n, start + chunk)
      if start < end { box.run(start..<end) }
    }
  }
}

/// `parallelFor` whose body calls BLAS: OpenBLAS runs single-threaded inside it (each worker
/// makes its own calls, which the pthread build of OpenBLAS allows) and gets its thread count back after.
public func parallelOverBLASCalls(_ n: Int, grain: Int, _ body: (Range<Int>) -> Void) {
  let workers = min(Threads.count, max(1, n / max(grain, 1)))
  if workers <= 1 {
    if n > 0 { body(0..<n) }
    return
  }
  openblas_set_num_threads(1)
  defer { openblas_set_num_threads(Int32(Threads.count)) }
  parallelFor(n, grain: grain, body)
}
