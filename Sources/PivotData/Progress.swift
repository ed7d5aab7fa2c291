import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// A one-line progress bar on stderr: redrawn with `\r` when stderr is a terminal, plain
/// lines every few seconds otherwise (logs, CI).
public final class ProgressBar {
  public let label: String
  public let total: Int?
  public let unit: String
  private let interactive: Bool
  private let start = Date()
  private var lastDraw = Date.distantPast
  private var done = 0
  private var detail = ""
  private var finished = false

  public init(label: String, total: Int?, unit: String) {
    self.label = label
    self.total = total
    self.unit = unit
    interactive = isatty(2) != 0
  }

  public func update(_ done: Int, detail: String = "") {
    self.done = done
    self.detail = detail
    let now = Date()
    let interval = interactive ? 0.1 : 5.0
    if now.timeIntervalSince(lastDraw) >= interval {
      lastDraw = now
      draw(final: false)
    }
  }

  public func finish(detail: String? = nil) {
    guard !finished else { return }
    finished = true
    if let detail { self.detail = detail }
    draw(final: true)
  }

  private func draw(final: Bool) {
    let elapsed = max(Date().timeIntervalSince(start), 1e-9)
    let rate = Double(done) / elapsed
    var line = label + " "
    if let total, total > 0 {
      let fraction = min(1, Double(done) / Double(total))
      let width = 24
      let filled = Int(fraction * Double(width))
      line += "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "] "
      line += "\(done)/\(total) \(unit)"
    } else {
      line += "\(done) \(unit)"
    }
    line += String(format: " %.1f/s %.0fs", rate, elapsed)
    if !detail.isEmpty { line += " " + detail }
    let text = interactive ? "\r\u{1B}[K" + line + (final ? "\n" : "") : line + "\n"
    FileHandle.standardError.write(Data(text.utf8))
  }
}

/// Peak resident memory of this process in MiB (VmHWM), or 0 where /proc is absent.
public func peakResidentMiB() -> Double {
  guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
  for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") { return kibibytesToMiB(statusLine: line) }
  return 0
}

/// "VmHWM:\t  812345 kB" → MiB: a tab, then padding spaces only while the number is under 8 digits.
func kibibytesToMiB(statusLine line: Substring) -> Double {
  let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
  return fields.compactMap { Double($0) }.first.map { $0 / 1024 } ?? 0
}
