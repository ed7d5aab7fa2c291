import Foundation
@testable import PivotText
import Testing

/// The tokenizer JSON reader against Foundation's JSONSerialization: the same values for real
/// tokenizer files and for every escape form, and an error (with its byte offset) for malformed input.
@Suite("Fast JSON")
struct FastJSONTests {
  /// Deep equality of two JSONSerialization-style values.
  static func same(_ a: Any, _ b: Any) -> Bool {
    switch (a, b) {
    case let (x as [String: Any], y as [String: Any]):
      return x.count == y.count && x.allSatisfy { k, v in y[k].map { same(v, $0) } ?? false }
    case let (x as [Any], y as [Any]):
      return x.count == y.count && zip(x, y).allSatisfy { same($0, $1) }
    case let (x as String, y as String): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
    case let (x as NSNumber, y as NSNumber): return x.doubleValue == y.doubleValue
    case (is NSNull, is NSNull): return true
    default: return false
    }
  }

  @Test(arguments: ["smollm2/tokenizer.json", "llama3/tokenizer.json", "llama2/tokenizer.json", "metaspace/tokenizer.json", "trainer/tokenizer.json"])
  func tokenizerFilesReadAsFoundationReadsThem(_ name: String) throws {
    let data = try Data(contentsOf: Fixtures.url(name))
    #expect(Self.same(try FastJSON.parse(data), try JSONSerialization.jsonObject(with: data)), "\(name)")
  }

  @Test func escapesNumbersAndNesting() throws {
    let text = #"""
      {"a": "plain", "b": "tab\there \"quoted\" back\\slash \/ \b\f\n\r", "c": "\u00e9\u4e2d\ud83d\ude00 Ġ中文",
       "d": [1, -2, 3.5, -0.25e2, 1E3, true, false, null, [], {}], "e": {"nested": [[["deep"]]]}, "": 0}
      """#
    let data = Data(text.utf8)
    #expect(Self.same(try FastJSON.parse(data), try JSONSerialization.jsonObject(with: data)))
    let parsed = try FastJSON.parse(data) as! [String: Any]
    #expect(parsed["c"] as? String == "é中😀 Ġ中文")
    #expect((parsed["d"] as! [Any])[5] as? Bool == true)
  }

  @Test(arguments: [
    #"{"a": 1"#, #"{"a" 1}"#, #"[1, 2,]"#, #"{"a": "\ud800"}"#, #"{"a": "\x"}"#, #"{"a": tru}"#, #"[1] 2"#, "[\"a\u{01}\"]", #"{"a": -}"#, "",
  ])
  func malformedInputIsAnError(_ text: String) {
    #expect(throws: FastJSON.SyntaxError.self) { try FastJSON.parse(Data(text.utf8)) }
  }
}
