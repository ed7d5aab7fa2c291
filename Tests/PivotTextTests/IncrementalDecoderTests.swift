import Foundation
import PivotText
import Testing

/// Streaming decode: pieces are whole characters and add up to the full decode.
@Suite struct IncrementalDecoderTests {
  @Test(arguments: ["qwen2", "smollm2", "llama3", "llama2", "metaspace", "prefixspace"])
  func piecesAreWholeAndAddUp(name: String) throws {
    let tokenizer = try Fixtures.tokenizer(name)
    let texts = [
      "一只橘色的猫坐在窗台上，看着外面的雨。", "猫咪🐱很可爱😻 👨‍👩‍👧‍👦", "Hello, world! 你好，世界！", "  spaced\n\nout  ", "①②③ ½ 𠀀",
    ]
    for text in texts {
      let ids = tokenizer.encode(text, addSpecialTokens: false)
      var stream = tokenizer.makeIncrementalDecoder()
      var pieces: [String] = []
      for id in ids { pieces.append(stream.push(id)) }
      pieces.append(stream.finish())
      #expect(pieces.joined() == tokenizer.decode(ids, skipSpecialTokens: true), "\(name): \(text)")
      #expect(pieces.allSatisfy { !$0.unicodeScalars.contains("\u{FFFD}") }, "\(name): \(pieces)")
    }
  }

  @Test func holdsBackAPartialCharacter() throws {
    let tokenizer = try Fixtures.tokenizer("smollm2")
    // SmolLM2 spells "猫" as three byte tokens.
    let ids = tokenizer.encode("猫", addSpecialTokens: false)
    #expect(ids.count > 1)
    var stream = tokenizer.makeIncrementalDecoder()
    let pieces = ids.map { stream.push($0) }
    #expect(pieces.dropLast().allSatisfy { $0.isEmpty })
    #expect(pieces.last == "猫")
  }
}
