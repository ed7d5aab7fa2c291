import ArgumentParser
import Foundation
import PivotModels
import PivotTrain

struct Export: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Write a model as Hugging Face folders that transformers loads.",
    discussion: "A composed model becomes vision/, qformer/ (with projector.safetensors) and llm/; an LLM becomes one folder.")

  @Option(help: "A Pivot model folder, a training checkpoint, or an HF LLM folder.") var model: String
  @Option(help: "Output folder.") var out: String
  @Option(help: "Weight dtype: f32, bf16 or f16.") var dtype: String = "f32"

  func validate() throws {
    guard ["f32", "bf16", "f16"].contains(dtype) else { throw ValidationError("--dtype must be f32, bf16 or f16") }
  }

  func run() throws {
    let (loaded, tokenizerFolder) = try ModelLoader.load(model)
    let tokenizer = tokenizerFolder.map { ($0 as NSString).appendingPathComponent("tokenizer.json") }.flatMap { FileManager.default.fileExists(atPath: $0) ? $0 : nil }
    switch loaded {
    case .chat(let m):
      try m.exportHF(to: out, tokenizerFile: tokenizer)
      print("wrote \(out)/vision, \(out)/qformer, \(out)/llm")
    case .llm(let m):
      try m.save(folder: out, dtype: dtype == "bf16" ? .bf16 : dtype == "f16" ? .f16 : .f32)
      if let tokenizer { try? FileManager.default.copyItem(atPath: tokenizer, toPath: (out as NSString).appendingPathComponent("tokenizer.json")) }
      print("wrote \(out)")
    }
  }
}
