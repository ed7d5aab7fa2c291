import Foundation
import PivotModels
import PivotNN
import PivotTensor

/// What `--model DIR` names: a Pivot model folder, a training checkpoint, or an HF LLM folder.
public enum LoadedModel {
  case chat(ChatModel)
  case llm(DecoderLM)

  /// The LLM (the chat model's language model).
  public var languageModel: DecoderLM {
    switch self { case .chat(let m): m.languageModel; case .llm(let m): m }
  }

  /// Applies a PEFT LoRA folder, unmerged, to the LLM; `name` is the model's folder, for errors.
  public func applyAdapter(_ dir: String, name: String) throws {
    if case .chat = self {
      try PEFTAdapter.apply(dir, to: languageModel, model: "\(name) (its language model)")
    } else {
      try PEFTAdapter.apply(dir, to: languageModel, model: name)
    }
  }

  public var module: any TrainableModel {
    switch self { case .chat(let m): m; case .llm(let m): m }
  }
}

public enum ModelLoader {
  /// The recipe a checkpoint (or a recipe file) names, nil for model folders.
  public static func recipe(of dir: String) -> Recipe? {
    if dir.hasSuffix(".yaml") || dir.hasSuffix(".yml") { return try? Recipe.load(dir) }
    guard let state = try? Checkpoint.readState(dir), var recipe = try? Recipe.parse(state.recipe, file: state.recipeFile) else { return nil }
    recipe.file = state.recipeFile
    return recipe
  }

  /// One loader serves every kind of folder; the tokenizer folder is where `tokenizer.json` lives.
  /// `keepingBF16` (inference) keeps an HF LLM folder's BF16 matrices as their mapped bits.
  public static func load(_ dir: String, keepingBF16: Bool = false) throws -> (model: LoadedModel, tokenizerFolder: String?) {
    let fm = FileManager.default
    if dir.hasSuffix(".yaml") || dir.hasSuffix(".yml") {
      // A recipe's starting point, untrained: what "before training" measures.
      let recipe = try Recipe.load(dir)
      let built = try ModelBuilder.build(recipe, hashBase: false)
      let tokenizerFolder = recipe.model.tokenizer.map { ($0 as NSString).deletingLastPathComponent } ?? built.tokenizerFolder
      if let chat = built.model as? ChatModel { return (.chat(chat), tokenizerFolder) }
      if let llm = built.model as? DecoderLM { return (.llm(llm), tokenizerFolder) }
    }
    func has(_ f: String) -> Bool { fm.fileExists(atPath: (dir as NSString).appendingPathComponent(f)) }
    if has("pivot_config.json") {
      return (.chat(try ChatModel.load(folder: dir)), dir)
    }
    if has("state.json") {
      let state = try Checkpoint.readState(dir)
      var recipe = try Recipe.parse(state.recipe, file: state.recipeFile)
      recipe.file = state.recipeFile
      for ref in state.base { try ref.verify() }
      let built = try ModelBuilder.build(recipe, hashBase: false)
      let byName = Dictionary(uniqueKeysWithValues: built.model.namedParameters())
      let trained = try state.trainable.map { name -> (String, Tensor) in
        guard let t = byName[name] else {
          throw RecipeError(file: dir, line: nil, key: name, message: "the checkpoint trained a parameter the recipe's model does not have")
        }
        return (name, t)
      }
      try Checkpoint.loadParameters(dir, into: trained)
      let tokenizerFolder = recipe.model.tokenizer.map { ($0 as NSString).deletingLastPathComponent } ?? built.tokenizerFolder
      if let chat = built.model as? ChatModel { return (.chat(chat), has("tokenizer.json") ? dir : tokenizerFolder) }
      if let llm = built.model as? DecoderLM { return (.llm(llm), has("tokenizer.json") ? dir : tokenizerFolder) }
    }
    if has("config.json") {
      return (.llm(try DecoderLM.load(folder: dir, keepingBF16: keepingBF16)), dir)
    }
    throw ModelLoadError(file: dir, reason: "not a model folder", hint: "expected pivot_config.json (Pivot model), state.json (checkpoint) or config.json (HF LLM)")
  }
}
