import Foundation
import PivotText

enum Fixtures {
  static let root: URL = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

  static func url(_ name: String) -> URL { root.appendingPathComponent(name) }

  static func json(_ name: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(contentsOf: url(name)))
  }

  /// The tokenizers, each loaded once per test process.
  static let tokenizers: [String: Tokenizer] = {
    var loaded: [String: Tokenizer] = [:]
    for name in ["qwen2", "smollm2", "llama3", "llama2", "metaspace", "prefixspace"] { loaded[name] = try? loadTokenizer(name) }
    return loaded
  }()

  static func tokenizer(_ name: String) throws -> Tokenizer {
    guard let tokenizer = tokenizers[name] else { return try loadTokenizer(name) }
    return tokenizer
  }

  /// Folders hold tokenizer.json, or tokenizer.json.gz for the real Qwen2 file (see Tokenizer(contentsOf:)).
  static func loadTokenizer(_ name: String) throws -> Tokenizer {
    try Tokenizer(contentsOf: url(name))
  }
}
