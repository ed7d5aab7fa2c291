import ArgumentParser

@main
struct Pivot: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pivot",
    abstract: "Train and run bilingual (Chinese/English) multimodal chat models on the CPU.",
    subcommands: [
      Train.self, Chat.self, Caption.self, Eval.self, Shards.self, Tokenize.self, TokenizerGroup.self, Export.self, DemoWorldCommand.self,
      Bench.self, Translate.self, Serve.self,
    ])
}
