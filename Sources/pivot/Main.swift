import ArgumentParser

@main
struct Pivot: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pivot",
    abstract: "Train and run bilingual (Chinese/English) multimodal chat models on the CPU.",
    subcommands: [Export.self, Bench.self])
}
