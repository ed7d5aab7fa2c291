import Foundation
@testable import PivotModels
import Testing

/// Configurations are checked before anything is allocated: zero, negative, huge or
/// indivisible sizes, unknown activations and bad epsilons are errors that name the file, every
/// offending key, its value and the rule.
@Suite("Configuration validation")
struct ConfigValidationTests {
  static func problems(_ json: [String: Any]) -> String? {
    do {
      _ = try AnyModelConfig.parse(json, file: "bad/config.json")
      return nil
    } catch {
      return "\(error)"
    }
  }

  @Test func decoderListsEveryProblem() throws {
    let message = try #require(Self.problems([
      "model_type": "qwen2", "vocab_size": -1, "hidden_size": 1 << 40, "intermediate_size": 0, "num_hidden_layers": 1_000_000_000_000,
      "num_attention_heads": 7, "num_key_value_heads": 3, "hidden_act": "gelu", "rms_norm_eps": -1e-6, "eos_token_id": 5_000_000,
    ]))
    #expect(message.hasPrefix("bad/config.json"))
    for needle in ["'vocab_size' is -1", "'hidden_size' is 1099511627776", "'intermediate_size' is 0", "'num_hidden_layers' is 1000000000000",
                   "'num_attention_heads' 7 is not a multiple of 'num_key_value_heads' 3", "'hidden_act' is 'gelu'", "'rms_norm_eps' is -1e-06",
                   "token id 5000000"] {
      #expect(message.contains(needle), "missing: \(needle) in \(message)")
    }
  }

  @Test func headsMustDivideTheWidth() {
    let m = Self.problems(["model_type": "llama", "vocab_size": 10, "hidden_size": 10, "intermediate_size": 8, "num_hidden_layers": 1,
                           "num_attention_heads": 3])
    #expect(m?.contains("'hidden_size' 10 is not a multiple of 'num_attention_heads' 3") == true)
  }

  @Test func visionAndQFormerSizes() {
    let clip = Self.problems(["model_type": "clip_vision_model", "hidden_size": 16, "patch_size": 0, "image_size": 100000, "num_attention_heads": 0,
                              "hidden_act": "relu"])
    for needle in ["'patch_size' is 0", "'image_size' is 100000", "'num_attention_heads' is 0", "'hidden_act' is 'relu'"] {
      #expect(clip?.contains(needle) == true, "missing: \(needle)")
    }
    let dino = Self.problems(["model_type": "dinov2", "hidden_size": 32, "num_attention_heads": 4, "patch_size": 300, "image_size": 224])
    #expect(dino?.contains("'patch_size' 300 is larger than 'image_size' 224") == true)
    let q = Self.problems(["model_type": "blip_2_qformer", "hidden_size": 32, "num_attention_heads": 4, "cross_attention_frequency": 0,
                           "layer_norm_eps": 0])
    #expect(q?.contains("'cross_attention_frequency' is 0") == true && q?.contains("'layer_norm_eps' is 0.0") == true)
  }

  @Test func aValidConfigStillParses() {
    #expect(Self.problems(["model_type": "qwen2", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "eos_token_id": [1, 2]]) == nil)
  }

  @Test func compositionChecksTheFeatureLayerAndQueries() throws {
    var vision = CLIPVisionConfig()
    vision.numHiddenLayers = 2
    let config = ChatModelConfig(vision: .clip(vision), qformer: QFormerConfig(), decoder: DecoderConfig(), numQueryTokens: 4, featureLayer: -7)
    #expect(throws: ModelLoadError.self) { try config.validateBridge(file: "pivot_config.json") }
    var none = config
    none.featureLayer = -1
    none.numQueryTokens = 0
    #expect(throws: ModelLoadError.self) { try none.validateBridge(file: "pivot_config.json") }
  }
}
