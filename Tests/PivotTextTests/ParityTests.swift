import Foundation
import PivotText
import Testing

/// Golden parity with Python `tokenizers` (Tools/make_tokenizer_fixtures.py): ids and decoded text, every string.
@Suite struct ParityTests {
  struct Row {
    let text: String
    let ids: [Int32]
    let decoded: String
    let decodedSkippingSpecials: String
  }

  static func rows(_ name: String) throws -> [Row] {
    let list = try Fixtures.json("parity-\(name).json") as! [[String: Any]]
    return list.map {
      Row(
        text: $0["text"] as! String, ids: ($0["ids"] as! [NSNumber]).map(\.int32Value), decoded: $0["decoded"] as! String,
        decodedSkippingSpecials: $0["decoded_skip_special"] as! String)
    }
  }

  @Test(arguments: ["qwen2", "smollm2", "llama3", "llama2", "metaspace", "prefixspace"])
  func encodeAndDecodeMatchTokenizers(name: String) throws {
    let tokenizer = try Fixtures.tokenizer(name)
    let rows = try Self.rows(name)
    #expect(rows.count >= 300)
    var encodeMismatches: [String] = []
    var decodeMismatches: [String] = []
    for row in rows {
      let ids = tokenizer.encode(row.text)
      if ids != row.ids { encodeMismatches.append("\(row.text.debugDescription): \(ids) != \(row.ids)") }
      let decoded = tokenizer.decode(row.ids)
      let skipped = tokenizer.decode(row.ids, skipSpecialTokens: true)
      if decoded != row.decoded || skipped != row.decodedSkippingSpecials {
        decodeMismatches.append("\(row.ids): \(decoded.debugDescription) != \(row.decoded.debugDescription)")
      }
    }
    #expect(encodeMismatches.isEmpty, "\(name): \(encodeMismatches.count) of \(rows.count) differ, e.g. \(encodeMismatches.prefix(3))")
    #expect(decodeMismatches.isEmpty, "\(name): \(decodeMismatches.count) of \(rows.count) differ, e.g. \(decodeMismatches.prefix(3))")
  }

  @Test func qwenVocabularyIsTheRealOne() throws {
    let qwen = try Fixtures.tokenizer("qwen2")
    #expect(qwen.vocabularySize == 151_665)
    #expect(qwen.id(forToken: "<|im_start|>") == 151_644)
    #expect(qwen.id(forToken: "<|image_pad|>") == 151_655)
    #expect(qwen.encode("Hello! 毕老师！") == [9707, 0, 6567, 107, 243, 101049, 6313])
    #expect(qwen.eosTokenID == 151_645)
    #expect(try Fixtures.tokenizer("llama3").bosTokenID == 8000)
  }

  @Test func batchEncodeEqualsSingleEncodes() throws {
    let tokenizer = try Fixtures.tokenizer("llama3")
    let texts = try Self.rows("llama3").prefix(50).map(\.text)
    #expect(tokenizer.encodeBatch(texts) == texts.map { tokenizer.encode($0) })
    #expect(tokenizer.encodeBatch(texts, threads: 2) == texts.map { tokenizer.encode($0) })
  }

  /// The hand-written scanners for the GPT-2, Qwen2 and LLaMA-3 patterns against Swift's regex engine.
  @Test(arguments: KnownPattern.allCases)
  func specialisedScannerEqualsRegex(pattern: KnownPattern) throws {
    let texts = try Self.rows("qwen2").map(\.text)
    var differences: [String] = []
    for text in texts {
      let fast = try pretokenizerSplits(of: text, pattern: pattern, generic: false)
      let slow = try pretokenizerSplits(of: text, pattern: pattern, generic: true)
      if fast != slow { differences.append("\(text.debugDescription): \(fast) != \(slow)") }
    }
    #expect(differences.isEmpty, "\(differences.count) differ, e.g. \(differences.prefix(3))")
  }
}
