import Foundation
import PivotText
import Testing

/// Broken tokenizer.json files give an error naming the problem and the file, never a crash.
@Suite struct MalformedTokenizerTests {
  static func minimal(model: String = #""vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]"#, extra: String = "") -> Data {
    Data(#"{"added_tokens": [], "normalizer": null, \#(extra) "model": {"type": "BPE", \#(model)}}"#.utf8)
  }

  static func error(_ data: Data) -> TokenizerError? {
    do {
      _ = try Tokenizer(jsonData: data, source: "broken/tokenizer.json")
      return nil
    } catch let error as TokenizerError {
      return error
    } catch {
      return nil
    }
  }

  @Test func minimalFileLoads() throws {
    let tokenizer = try Tokenizer(jsonData: Self.minimal(), source: "ok.json")
    #expect(tokenizer.encode("abab") == [2, 2])
  }

  @Test func badJSON() {
    let error = Self.error(Data(#"{"model": {"type": "BPE", "#.utf8))
    guard case .malformedJSON(let file, _) = error else { Issue.record("got \(String(describing: error))"); return }
    #expect(file == "broken/tokenizer.json")
    #expect(error!.description.contains("broken/tokenizer.json"))
  }

  @Test(arguments: [
    (#""pre_tokenizer": {"type": "BertPreTokenizer"},"#, "pre_tokenizer", "BertPreTokenizer"),
    (#""normalizer": {"type": "BertNormalizer"},"#, "normalizer", "BertNormalizer"),
    (#""decoder": {"type": "WordPiece"},"#, "decoder", "WordPiece"),
    (#""post_processor": {"type": "RobertaProcessing"},"#, "post_processor", "RobertaProcessing"),
  ])
  func unknownComponentTypeIsNamed(extra: String, kind: String, type: String) {
    let json = String(decoding: Self.minimal(extra: extra), as: UTF8.self).replacingOccurrences(of: #""normalizer": null, "normalizer""#, with: #""normalizer""#)
    let error = Self.error(Data(json.utf8))
    #expect(error == .unsupportedComponent(kind: kind, type: type, file: "broken/tokenizer.json"))
    #expect(error?.description.contains(type) == true)
  }

  @Test func unknownModelType() {
    let data = Data(#"{"model": {"type": "WordPiece", "vocab": {}}}"#.utf8)
    #expect(Self.error(data) == .unsupportedComponent(kind: "model", type: "WordPiece", file: "broken/tokenizer.json"))
  }

  @Test func missingMerges() {
    let error = Self.error(Self.minimal(model: #""vocab": {"a": 0}"#))
    #expect(error == .missingField(component: "model", field: "merges", file: "broken/tokenizer.json"))
  }

  @Test func missingVocab() {
    let error = Self.error(Self.minimal(model: #""merges": []"#))
    #expect(error == .missingField(component: "model", field: "vocab", file: "broken/tokenizer.json"))
  }

  @Test func mergeOfUnknownTokens() {
    let error = Self.error(Self.minimal(model: #""vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a c"]"#))
    #expect(error == .unknownMergeToken(merge: "a c", token: "c", file: "broken/tokenizer.json"))
    let pairForm = Self.error(Self.minimal(model: #""vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]"#))
    #expect(pairForm == .unknownMergeToken(merge: "a b", token: "ab", file: "broken/tokenizer.json"))
  }

  @Test func malformedMergeEntry() {
    let error = Self.error(Self.minimal(model: #""vocab": {"a": 0}, "merges": ["a b c"]"#))
    guard case .invalidValue(let component, _, _) = error else { Issue.record("got \(String(describing: error))"); return }
    #expect(component == "model")
  }

  @Test func missingFileIsUnreadable() {
    #expect(throws: TokenizerError.self) { try Tokenizer(contentsOf: URL(fileURLWithPath: "/nonexistent/tokenizer.json")) }
  }
}
