import ArgumentParser
import Foundation
import PivotTensor

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Measure Pivot's performance (same phases and shapes as shared/bench).")
  @Option(help: "Phase: gemm.") var phase: String = "gemm"
  func run() throws { print("bench \(phase)") }
}
