import ArgumentParser
import Foundation
import PivotText

/// `pivot tokenize`: shows how a tokenizer cuts text, or which tokens of a conversation carry loss.
struct Tokenize: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Tokenise text or render a conversation with a tokenizer.json.",
    discussion: """
      Examples:
        pivot tokenize --tokenizer Checkpoints/qwen2 --text "一只橘色的猫"
        pivot tokenize --tokenizer tokenizer.json --file notes.txt --ids
        pivot tokenize --tokenizer Checkpoints/qwen2 --chat conversation.json --image-tokens 32
      """)

  @Option(help: "A tokenizer.json file, or a checkpoint folder holding one.")
  var tokenizer: String

  @Option(help: "Text to tokenise.")
  var text: String?

  @Option(help: "A UTF-8 text file to tokenise.")
  var file: String?

  @Option(help: "A conversation (JSON list of {role, content}, or LLaVA {conversations: [{from, value}]}).")
  var chat: String?

  @Option(help: "Chat template: chatml, llama3, plain, or auto (from tokenizer_config.json).")
  var template: String = "auto"

  @Option(help: "Image placeholder positions for an <image> in the conversation (the Q-Former's query count).")
  var imageTokens: Int = 32

  @Flag(help: "Print ids only.")
  var ids = false

  @Flag(help: "Do not add the post-processor's special tokens (such as LLaMA-3's BOS).")
  var noSpecialTokens = false

  func validate() throws {
    let sources = [text, file, chat].compactMap { $0 }
    guard sources.count == 1 else { throw ValidationError("give exactly one of --text, --file or --chat") }
  }

  func run() throws {
    let loaded = try Tokenizer(contentsOf: URL(fileURLWithPath: tokenizer))
    if let chat {
      let messages = try ChatMessage.conversation(fromJSON: Data(contentsOf: URL(fileURLWithPath: chat)))
      let chatTemplate = try ChatTemplate(tokenizer: loaded, named: template)
      let rendered = try chatTemplate.render(messages: messages, imageTokenCount: imageTokens)
      if ids {
        print(rendered.ids.map(String.init).joined(separator: " "))
        print(rendered.labels.map(String.init).joined(separator: " "))
        return
      }
      print("template: \(chatTemplate.format.rawValue), \(rendered.ids.count) tokens, loss on \(rendered.labels.filter { $0 != ChatTemplate.ignoreLabel }.count)")
      if let slot = rendered.imageSlot { print("image slot: positions \(slot.lowerBound)..<\(slot.upperBound)") }
      for (position, (id, label)) in zip(rendered.ids, rendered.labels).enumerated() {
        if let slot = rendered.imageSlot, slot.contains(position), position != slot.lowerBound { continue }
        let shown = rendered.imageSlot?.lowerBound == position ? "<image> ×\(rendered.imageSlot!.count)" : loaded.decode([id]).debugDescription
        print(String(format: "%5d  %7d  %@  %@", position, id, label == ChatTemplate.ignoreLabel ? " " : "L", shown))
      }
      return
    }
    let input = try text ?? String(contentsOf: URL(fileURLWithPath: file!), encoding: .utf8)
    let encoded = loaded.encode(input, addSpecialTokens: !noSpecialTokens)
    if ids {
      print(encoded.map(String.init).joined(separator: " "))
    } else {
      for id in encoded { print(String(format: "%7d  %@", id, loaded.decode([id]).debugDescription)) }
      print("\(encoded.count) tokens, \(input.unicodeScalars.count) characters")
    }
  }
}

/// `pivot tokenizer …`: tokenizer utilities.
struct TokenizerGroup: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "tokenizer", abstract: "Tokenizer utilities.", subcommands: [TrainTokenizer.self])
}

/// `pivot tokenizer train`: learns a byte-level BPE vocabulary that Hugging Face `tokenizers` loads.
struct TrainTokenizer: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train", abstract: "Train a byte-level BPE tokenizer (Qwen2 pipeline) on text files.")

  @Option(parsing: .upToNextOption, help: "UTF-8 text files to learn from.")
  var corpus: [String]

  @Option(help: "Vocabulary size, special tokens included.")
  var vocab: Int

  @Option(help: "Output tokenizer.json path.")
  var out: String

  @Option(help: "Comma-separated special tokens, appended after the learned ones.")
  var special: String = "<|endoftext|>,<|im_start|>,<|im_end|>,<|image_pad|>"

  @Option(help: "Pairs seen fewer times are not merged.")
  var minCount: Int = 2

  func validate() throws {
    guard !corpus.isEmpty else { throw ValidationError("--corpus needs at least one file") }
    guard vocab > 256 else { throw ValidationError("--vocab must exceed the 256 byte tokens") }
  }

  func run() throws {
    var trainer = BPETrainer(vocabularySize: vocab)
    trainer.minimumPairCount = minCount
    trainer.specialTokens = special.split(separator: ",").map(String.init).filter { !$0.isEmpty }
    let output = URL(fileURLWithPath: out)
    try trainer.train(corpus: corpus.map { URL(fileURLWithPath: $0) }, output: output)
    let trained = try Tokenizer(contentsOf: output)
    print("wrote \(out): \(trained.vocabularySize) tokens")
  }
}

/// The tokenize phase of `pivot bench`.
struct BenchTokenize: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench-tokenize", abstract: "Characters/s encoding mixed Chinese/English text, beside HF tokenizers.")

  @Option(help: "Tokenizer file or folder.")
  var tokenizer: String

  @Option(help: "Corpus file (one document a line); default: generated mixed text.")
  var corpus: String?

  @Option(help: "Size of the generated corpus in MB.")
  var megabytes: Int = 10

  func run() throws {
    let report = try runTokenizeBench(
      tokenizer: URL(fileURLWithPath: tokenizer), corpus: corpus.map { URL(fileURLWithPath: $0) }, megabytes: megabytes)
    print(String(format: "corpus: %d characters, %d bytes; Pivot: %d tokens in %.2f s", report.characters, report.bytes, report.tokens, report.seconds))
    print(String(format: "Pivot (1 thread):          %12.0f chars/s", report.charactersPerSecond))
    if let reference = report.referenceCharactersPerSecond {
      print(String(format: "HF tokenizers (1 thread):  %12.0f chars/s   (%d tokens)", reference, report.referenceTokens ?? -1))
      print(String(format: "ratio: %.2f× HF", report.charactersPerSecond / reference))
      print("same ids as HF: \(report.idsMatchReference == true ? "yes" : "NO")")
    } else {
      print("HF tokenizers: \(report.referenceNote ?? "not run")")
    }
  }
}
