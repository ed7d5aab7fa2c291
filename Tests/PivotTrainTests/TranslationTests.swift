import Foundation
@testable import PivotTrain
import Testing

/// `pivot translate`'s core with a stand-in translator (upper-casing, so what was sent is visible):
/// markers, code, blank and letterless lines kept; lines translated once; failed checks retried
/// once, then kept and recorded; the partial log resumes after its last whole record.
@Suite("Translation")
struct TranslationTests {
  final class Calls: @unchecked Sendable { var batches: [[String]] = []; var attempts: [Int] = [] }

  static func job(_ calls: Calls, batch: Int = 3, answer: @escaping (String, Int) -> TranslationJob.Result = { s, _ in .init(text: s.uppercased()) }) -> TranslationJob {
    TranslationJob(batchSize: batch) { lines, attempt in
      calls.batches.append(lines)
      calls.attempts.append(attempt)
      return lines.map { answer($0, attempt) }
    }
  }

  @Test func keepsStructureAndTranslatesEachLineOnce() throws {
    let calls = Calls()
    var job = Self.job(calls)
    let turns = ["<image>\nDescribe the image.", "Describe the image.\n<image>", "A bus.\n\n```\nlet x = 1\n```\n42", "  Two cats <image> and a dog.  "]
    let out = try job.translate(turns: turns)
    #expect(out.map(\.text) == ["<image>\nDESCRIBE THE IMAGE.", "DESCRIBE THE IMAGE.\n<image>", "A BUS.\n\n```\nlet x = 1\n```\n42", "  TWO CATS <image> AND A DOG.  "])
    #expect(out.allSatisfy { $0.problems.isEmpty })
    // Four distinct lines ("Describe the image." once), in batches of at most three.
    #expect(calls.batches.flatMap { $0 }.sorted() == ["A bus.", "Describe the image.", "Two cats", "and a dog."].sorted())
    #expect(calls.batches.allSatisfy { $0.count <= 3 } && job.generated == 4)
    // A second call reuses the cache.
    _ = try job.translate(turns: ["Describe the image."])
    #expect(job.generated == 4)
  }

  @Test func failedChecksAreRetriedOnceThenKeptAndRecorded() throws {
    let calls = Calls()
    var job = Self.job(calls) { s, attempt in
      if s.hasPrefix("Empty") { return .init(text: " ") }
      if s.hasPrefix("Fixed") { return attempt == 0 ? .init(text: "", cutOff: true) : .init(text: "FIXED") }
      if s.contains("3") { return .init(text: "three buses") }  // the number is lost
      return .init(text: s.uppercased())
    }
    let out = try job.translate(turns: ["Empty line", "Fixed later", "3 buses", "Fine."])
    #expect(out.map(\.text) == ["Empty line", "FIXED", "3 buses", "FINE."])
    #expect(out[0].problems == ["'Empty line': empty translation"])
    #expect(out[2].problems == ["'3 buses': number 3 of the source is missing"])
    #expect(out[1].problems.isEmpty && out[3].problems.isEmpty)
    #expect(calls.attempts == [0, 1, 0])  // the first three lines, their failures' retry, then the fourth line
    #expect(TranslationJob.problem(source: "a", result: .init(text: "b\nc")) == "the translation has more lines than the source")
    #expect(TranslationJob.problem(source: "a", result: .init(text: "b", cutOff: true)) == "cut off at the token limit")
  }

  @Test func theLogResumesAfterItsLastWholeRecord() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-translate-\(getpid())").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let out = "\(dir)/zh.json"
    let first = try TranslationLog(output: out)
    try first.append(["id": "a", "value": "一"])
    try first.append(["id": "b", "value": "二"])
    // A kill mid-write leaves half a line.
    let h = FileHandle(forWritingAtPath: first.partialPath)!
    h.seekToEndOfFile()
    h.write(Data("{\"id\": \"c\", \"val".utf8))
    try h.close()
    let resumed = try TranslationLog(output: out)
    #expect(resumed.done.map { $0["id"] as! String } == ["a", "b"])
    try resumed.append(["id": "c", "value": "三"])
    try resumed.finish(output: out) { path in
      try JSONSerialization.data(withJSONObject: resumed.done.map { $0["value"] as! String }).write(to: URL(fileURLWithPath: path))
    }
    #expect(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out))) as? [String] == ["一", "二", "三"])
    #expect(!FileManager.default.fileExists(atPath: resumed.partialPath))
  }
}
