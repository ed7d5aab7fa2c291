import Foundation

/// Appends one JSON object per line (metrics.jsonl) and redraws the loss plot beside it.
public final class MetricsLog {
  public let jsonlPath: String
  public let plotPath: String
  private var handle: FileHandle?
  private(set) var trainPoints: [(Int, Double)] = []
  private(set) var evalPoints: [(Int, Double)] = []

  public init(directory: String, append: Bool) throws {
    jsonlPath = (directory as NSString).appendingPathComponent("metrics.jsonl")
    plotPath = (directory as NSString).appendingPathComponent("loss.svg")
    if !append || !FileManager.default.fileExists(atPath: jsonlPath) {
      guard FileManager.default.createFile(atPath: jsonlPath, contents: nil) else {
        throw RecipeError(file: jsonlPath, line: nil, key: "output", message: "cannot create the metrics file (is the output folder writable?)")
      }
    } else {
      for record in MetricsLog.read(jsonlPath) { remember(record) }
    }
    handle = FileHandle(forWritingAtPath: jsonlPath)
    handle?.seekToEndOfFile()
  }

  deinit { try? handle?.close() }

  /// Drops records after `step` (a resumed run rewrites what followed its checkpoint).
  public func truncate(after step: Int) throws {
    let kept = MetricsLog.read(jsonlPath).filter { ($0["step"] as? Int ?? 0) <= step }
    try? handle?.close()
    let lines = kept.compactMap { try? JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }.map { String(decoding: $0, as: UTF8.self) }
    try (lines.joined(separator: "\n") + (lines.isEmpty ? "" : "\n")).write(toFile: jsonlPath, atomically: true, encoding: .utf8)
    trainPoints = []
    evalPoints = []
    for r in kept { remember(r) }
    handle = FileHandle(forWritingAtPath: jsonlPath)
    handle?.seekToEndOfFile()
  }

  private func remember(_ r: [String: Any]) {
    guard let step = r["step"] as? Int else { return }
    if let l = r["loss"] as? Double { trainPoints.append((step, l)) }
    if let l = r["eval_loss"] as? Double { evalPoints.append((step, l)) }
  }

  public func write(_ record: [String: Any]) {
    remember(record)
    if let data = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) {
      handle?.write(data)
      handle?.write("\n".data(using: .utf8)!)
    }
  }

  public static func read(_ path: String) -> [[String: Any]] {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
    return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
  }

  /// The loss curve as SVG: training loss as a line, evaluation loss as dots.
  public func drawPlot(title: String) {
    try? MetricsLog.svg(train: trainPoints, eval: evalPoints, title: title).write(toFile: plotPath, atomically: true, encoding: .utf8)
  }

  static func svg(train: [(Int, Double)], eval: [(Int, Double)], title: String) -> String {
    let w = 720.0, h = 400.0, left = 60.0, right = 20.0, top = 40.0, bottom = 40.0
    let all = train + eval
    guard let minStep = all.map(\.0).min(), let maxStep = all.map(\.0).max() else {
      return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\"></svg>"
    }
    let finite = all.map(\.1).filter(\.isFinite)
    let lo = (finite.min() ?? 0), hi = max((finite.max() ?? 1), lo + 1e-6)
    func x(_ s: Int) -> Double { left + (w - left - right) * Double(s - minStep) / Double(max(maxStep - minStep, 1)) }
    func y(_ v: Double) -> Double { top + (h - top - bottom) * (1 - (v - lo) / (hi - lo)) }
    var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
    out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    out += "<text x=\"\(Int(left))\" y=\"24\" font-size=\"15\">\(title.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;"))</text>\n"
    out += "<line x1=\"\(left)\" y1=\"\(h - bottom)\" x2=\"\(w - right)\" y2=\"\(h - bottom)\" stroke=\"black\"/>\n"
    out += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\"\(h - bottom)\" stroke=\"black\"/>\n"
    for i in 0...4 {
      let v = lo + (hi - lo) * Double(i) / 4
      out += "<text x=\"4\" y=\"\(String(format: "%.1f", y(v) + 4))\">\(String(format: "%.3f", v))</text>\n"
      out += "<line x1=\"\(left)\" y1=\"\(String(format: "%.1f", y(v)))\" x2=\"\(w - right)\" y2=\"\(String(format: "%.1f", y(v)))\" stroke=\"#ddd\"/>\n"
    }
    out += "<text x=\"\(Int(left))\" y=\"\(Int(h - 12))\">step \(minStep)</text><text x=\"\(Int(w - right - 80))\" y=\"\(Int(h - 12))\">step \(maxStep)</text>\n"
    let pts = train.filter { $0.1.isFinite }.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
    out += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"\(pts)\"/>\n"
    for (s, v) in eval where v.isFinite {
      out += "<circle cx=\"\(String(format: "%.1f", x(s)))\" cy=\"\(String(format: "%.1f", y(v)))\" r=\"4\" fill=\"#d62728\"/>\n"
    }
    out += "<text x=\"\(Int(w - 200))\" y=\"24\" fill=\"#1f77b4\">— train loss</text><text x=\"\(Int(w - 100))\" y=\"24\" fill=\"#d62728\">● eval loss</text>\n"
    return out + "</svg>\n"
  }

  /// Largest |loss − reference| over the steps both curves have.
  public static func compare(run: String, reference: String) -> (maxAbs: Double, atStep: Int, steps: Int)? {
    let a = Dictionary(read(run).compactMap { r -> (Int, Double)? in
      guard let s = r["step"] as? Int, let l = r["loss"] as? Double else { return nil }
      return (s, l)
    }, uniquingKeysWith: { _, b in b })
    var worst = 0.0, at = 0, n = 0
    for r in read(reference) {
      guard let s = r["step"] as? Int, let l = r["loss"] as? Double, let mine = a[s] else { continue }
      n += 1
      if abs(mine - l) > worst { worst = abs(mine - l); at = s }
    }
    return n == 0 ? nil : (worst, at, n)
  }
}
