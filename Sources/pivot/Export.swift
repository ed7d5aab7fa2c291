import ArgumentParser
import Foundation
import PivotModels
import PivotNN
import PivotTrain

struct Export: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Write a model as Hugging Face folders that transformers loads.",
    discussion: "A composed model becomes vision/, qformer/ (with projector.safetensors) and llm/; an LLM becomes one folder.")

  @Option(help: "A Pivot model folder, a training checkpoint, or an HF LLM folder.") var model: String
  @Option(help: "A PEFT LoRA adapter folder to merge into the model's LLM (it is also written again, as adapter/).") var adapter: String?
  @Option(help: "Output folder.") var out: String
  @Option(help: "Weight dtype: f32, bf16 or f16.") var dtype: String = "f32"

  func validate() throws {
    guard ["f32", "bf16", "f16"].contains(dtype) else { throw ValidationError("--dtype must be f32, bf16 or f16") }
  }

  func run() throws {
    let (loaded, tokenizerFolder) = try ModelLoader.load(model)
    if let adapter { try loaded.applyAdapter(adapter, name: model) }
    let tokenizer = tokenizerFolder.map { ($0 as NSString).appendingPathComponent("tokenizer.json") }.flatMap { FileManager.default.fileExists(atPath: $0) ? $0 : nil }
    let llm: DecoderLM
    switch loaded {
    case .chat(let m):
      try m.exportHF(to: out, tokenizerFile: tokenizer)
      print("wrote \(out)/vision, \(out)/\(m.qformer == nil ? "projector" : "qformer"), \(out)/llm")
      llm = m.languageModel
    case .llm(let m):
      try m.save(folder: out, dtype: dtype == "bf16" ? .bf16 : dtype == "f16" ? .f16 : .f32)
      if let tokenizer { try? FileManager.default.copyItem(atPath: tokenizer, toPath: (out as NSString).appendingPathComponent("tokenizer.json")) }
      print("wrote \(out)")
      llm = m
    }
    // A LoRA run: the folders above hold the merged weights; the adapter goes beside them for PEFT.
    if !llm.adaptedLinears().isEmpty {
      let recipe = ModelLoader.recipe(of: model)
      let llmFolder = adapter == nil ? recipe?.model.llm : model
      let base = llmFolder ?? ""
      let dir = (out as NSString).appendingPathComponent("adapter")
      try PEFTAdapter.write(llm, to: dir, dropout: recipe?.lora?.dropout ?? 0, rsLoRA: recipe?.lora?.rsLoRA ?? false, baseModel: base)
      print("wrote \(dir) (PEFT LoRA adapter for \(base.isEmpty ? "the base LLM" : base); the other folders hold the merged weights)")
    }
  }
}
