import Foundation
import PivotNN
import PivotTensor

/// What carries the image into the LLM: BLIP-2's Q-Former over learned queries, or
/// LLaVA-1.5's two-layer MLP over the vision tower's patch tokens.
public enum BridgeKind: String, Sendable, CaseIterable {
  case qformer, mlp
}

/// transformers' `LlavaMultiModalProjector` (LLaVA-1.5's `mlp2x_gelu`): linear_1 → GELU →
/// linear_2, from the tower's width to the LLM's. Parameter names as in
/// `LlavaForConditionalGeneration`: `multi_modal_projector.linear_1.*`, `.linear_2.*`.
public final class MLPProjector: Module, @unchecked Sendable {
  public let linear1: Linear
  public let linear2: Linear
  public let hiddenAct: String

  public init(visionWidth: Int, textWidth: Int, hiddenAct: String = "gelu", std: Float = 0.02, rng: inout PivotRNG) {
    linear1 = Linear(visionWidth, textWidth, bias: true, std: std, rng: &rng)
    linear2 = Linear(textWidth, textWidth, bias: true, std: std, rng: &rng)
    self.hiddenAct = hiddenAct
  }

  public override var keyOverrides: [String: String] { ["linear1": "linear_1", "linear2": "linear_2"] }

  /// (…, Dv) → (…, D).
  public func callAsFunction(_ x: Tensor) -> Tensor { linear2(activation(hiddenAct, linear1(x))) }
}

/// The MLP bridge's settings, saved in `pivot_config.json` (`bridge: mlp`).
public struct MLPBridgeConfig: Sendable, Equatable {
  /// Side of the pooled patch grid (e.g. 16×16 patches → 8×8 = 64 soft tokens); nil keeps every patch.
  public var poolGrid: Int?
  public var hiddenAct = "gelu"
  public var initializerRange: Float = 0.02
  public init(poolGrid: Int? = nil) { self.poolGrid = poolGrid }

  public var json: [String: Any] {
    var d: [String: Any] = ["projector_hidden_act": hiddenAct, "initializer_range": jd(initializerRange)]
    if let poolGrid { d["pool_grid"] = poolGrid }
    return d
  }
}
