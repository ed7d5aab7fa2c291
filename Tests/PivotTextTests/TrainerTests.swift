import Foundation
import PivotText
import Testing

/// The BPE trainer: its output loads in `tokenizers` and encodes identically (Tools/make_trainer_fixture.py),
/// and training is reproducible byte for byte.
@Suite struct TrainerTests {
  @Test func trainedTokenizerMatchesTokenizers() throws {
    let tokenizer = try Tokenizer(contentsOf: Fixtures.url("trainer"))
    #expect(tokenizer.vocabularySize == 2000)
    let rows = try ParityTests.rows("trained")
    var mismatches: [String] = []
    for row in rows {
      let ids = tokenizer.encode(row.text)
      if ids != row.ids || tokenizer.decode(ids) != row.decoded { mismatches.append(row.text.debugDescription) }
    }
    #expect(mismatches.isEmpty, "\(mismatches.count) of \(rows.count) differ, e.g. \(mismatches.prefix(3))")
  }

  @Test func retrainingReproducesTheCommittedFile() throws {
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-trained-\(getpid()).json")
    defer { try? FileManager.default.removeItem(at: output) }
    try BPETrainer(vocabularySize: 2000).train(corpus: [Fixtures.url("trainer/corpus.txt")], output: output)
    #expect(try Data(contentsOf: output) == Data(contentsOf: Fixtures.url("trainer/tokenizer.json")))
  }

  @Test func mergesFollowFrequency() throws {
    var counts: [[UInt8]: Int] = [:]
    BPETrainer.countWords("low low low lower lowest 你好 你好", into: &counts)
    var trainer = BPETrainer(vocabularySize: 256 + 3 + 4)
    trainer.minimumPairCount = 1
    let result = try trainer.train(wordCounts: counts)
    // " l"+"o" style pairs: the most frequent pair ("l","o" inside "low"/" low") merges first.
    #expect(result.merges.first.map { $0.0 + $0.1 } == "lo" || result.merges.first.map { $0.0 + $0.1 } == "Ġl")
    #expect(result.tokens.count == 259)
  }
}
