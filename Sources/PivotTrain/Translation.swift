import Foundation

/// Translating instruction data, as VisCPM and SEEChat translated LLaVA's English conversations:
/// every human and gpt turn (or every caption) goes through an LLM line by line, and what a
/// model must not rewrite stays as it is: `<image>` markers, fenced code blocks, blank lines and
/// lines with no letters. Identical lines are translated once. A line whose translation fails a
/// check (empty, more than one line, a number of the source missing, cut off at the token limit)
/// is tried once more and then kept in the source language and recorded, never dropped.
public struct TranslationJob {
  /// One unit of text to translate and its result.
  public struct Result: Sendable, Equatable {
    public var text: String
    /// The generation hit its token limit before an end token.
    public var cutOff: Bool
    public init(text: String, cutOff: Bool = false) {
      self.text = text
      self.cutOff = cutOff
    }
  }

  /// Translates a batch of single lines; `attempt` is 0, then 1 for the retry.
  public typealias Translator = (_ lines: [String], _ attempt: Int) throws -> [Result]

  public let translate: Translator
  public var imageMarker = "<image>"
  public var batchSize = 8
  /// Lines translated so far, by source text (shared by every record).
  public private(set) var cache: [String: String] = [:]
  /// Lines sent to the model, retries included.
  public private(set) var generated = 0

  public init(batchSize: Int = 8, translate: @escaping Translator) {
    self.batchSize = max(1, batchSize)
    self.translate = translate
  }

  /// The parts of one turn: text lines to translate and everything kept as it is.
  enum Piece: Equatable {
    case keep(String)
    case line(String)
  }

  /// Splits a turn into lines, keeping fenced code blocks, markers, blank and letterless lines.
  func pieces(_ text: String) -> [Piece] {
    var out: [Piece] = []
    var inCode = false
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    for (i, raw) in lines.enumerated() {
      let newline = i < lines.count - 1 ? "\n" : ""
      let trimmed = raw.trimmingCharacters(in: .whitespaces)
      if trimmed.hasPrefix("```") { inCode.toggle(); out.append(.keep(raw + newline)); continue }
      if inCode || !raw.contains(where: \.isLetter) { out.append(.keep(raw + newline)); continue }
      // A marker stays where it is; the text around it on the line is translated, and the
      // spaces around that text belong to the layout, not to the sentence.
      func segment(_ text: Substring) {
        guard text.contains(where: \.isLetter) else { if !text.isEmpty { out.append(.keep(String(text))) }; return }
        let lead = text.prefix { $0 == " " || $0 == "\t" }, trail = String(text.reversed().prefix { $0 == " " || $0 == "\t" }.reversed())
        if !lead.isEmpty { out.append(.keep(String(lead))) }
        out.append(.line(text.trimmingCharacters(in: .whitespaces)))
        if !trail.isEmpty { out.append(.keep(trail)) }
      }
      var rest = raw[...]
      while let marker = rest.range(of: imageMarker) {
        segment(rest[..<marker.lowerBound])
        out.append(.keep(imageMarker))
        rest = rest[marker.upperBound...]
      }
      segment(rest)
      if !newline.isEmpty { out.append(.keep(newline)) }
    }
    return out
  }

  /// Why a translation of `source` is not acceptable, or nil.
  public static func problem(source: String, result: Result) -> String? {
    let text = result.text.trimmingCharacters(in: .whitespacesAndNewlines)
    if text.isEmpty { return "empty translation" }
    if result.cutOff { return "cut off at the token limit" }
    if text.contains("\n") { return "the translation has more lines than the source" }
    let numbers = { (s: String) -> [String] in
      s.split(whereSeparator: { !$0.isNumber }).map(String.init)
    }
    for n in numbers(source) where !numbers(text).contains(n) { return "number \(n) of the source is missing" }
    return nil
  }

  /// Translates the lines of `texts` not yet in the cache, in batches, retrying failures once.
  /// Returns the problems of lines kept in the source language.
  mutating func fill(_ lines: [String]) throws -> [String: String] {
    var todo: [String] = []
    var seen = Set<String>()
    for line in lines where cache[line] == nil && seen.insert(line).inserted { todo.append(line) }
    var problems: [String: String] = [:]
    for start in stride(from: 0, to: todo.count, by: batchSize) {
      let batch = Array(todo[start..<min(start + batchSize, todo.count)])
      var results = try translate(batch, 0)
      generated += batch.count
      precondition(results.count == batch.count, "the translator gave \(results.count) results for \(batch.count) lines")
      let failed = batch.indices.filter { Self.problem(source: batch[$0], result: results[$0]) != nil }
      if !failed.isEmpty {
        let retried = try translate(failed.map { batch[$0] }, 1)
        generated += failed.count
        for (k, i) in failed.enumerated() { results[i] = retried[k] }
      }
      for (i, line) in batch.enumerated() {
        if let why = Self.problem(source: line, result: results[i]) {
          problems[line] = why
          cache[line] = line  // kept in the source language, and recorded
        } else {
          cache[line] = results[i].text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
      }
    }
    return problems
  }

  /// Translates several turns together (their lines share batches); each result comes with the
  /// problems of its lines that were kept untranslated.
  public mutating func translate(turns: [String]) throws -> [(text: String, problems: [String])] {
    let split = turns.map(pieces)
    let lines = split.flatMap { $0.compactMap { if case .line(let l) = $0 { l } else { nil } } }
    let problems = try fill(lines)
    return split.map { parts in
      var text = "", found: [String] = []
      for part in parts {
        switch part {
        case .keep(let s): text += s
        case .line(let l):
          text += cache[l] ?? l
          if let why = problems[l] { found.append("'\(l)': \(why)") }
        }
      }
      return (text, found)
    }
  }
}

/// A file of records translated as it goes: each finished record is one line of
/// `<out>.partial.jsonl`, flushed, so a stopped run resumes after the last whole line; the
/// finished file replaces the partial one in one rename.
public final class TranslationLog {
  public let partialPath: String
  public private(set) var done: [[String: Any]] = []
  let handle: FileHandle

  public init(output: String) throws {
    partialPath = output + ".partial.jsonl"
    let fm = FileManager.default
    if let data = fm.contents(atPath: partialPath) {
      // Every whole line is a finished record; a last line cut by a kill is dropped and redone.
      var keep = 0
      for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
        guard let record = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { break }
        done.append(record)
        keep += line.count + 1
      }
      try Data(data.prefix(keep)).write(to: URL(fileURLWithPath: partialPath))
    } else {
      fm.createFile(atPath: partialPath, contents: nil)
    }
    guard let h = FileHandle(forWritingAtPath: partialPath) else {
      throw RecipeError(file: partialPath, line: nil, key: "", message: "cannot write the translation log (check the folder's permissions)")
    }
    handle = h
    handle.seekToEndOfFile()
  }

  public func append(_ record: [String: Any]) throws {
    var data = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .withoutEscapingSlashes])
    data.append(UInt8(ascii: "\n"))
    handle.write(data)
    try handle.synchronize()
    done.append(record)
  }

  /// Writes `records` to `output` (temp + rename) and removes the partial log.
  public func finish(output: String, write: (String) throws -> Void) throws {
    try handle.close()
    let tmp = output + ".tmp-\(getpid())"
    try write(tmp)
    try? FileManager.default.removeItem(atPath: output)
    try FileManager.default.moveItem(atPath: tmp, toPath: output)
    try FileManager.default.removeItem(atPath: partialPath)
  }
}
