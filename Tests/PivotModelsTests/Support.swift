import Foundation
import PivotModels
import PivotNN
import PivotTensor
import Testing

func fixtureURL(_ name: String) -> URL {
  Bundle.module.resourceURL!.appendingPathComponent("Fixtures").appendingPathComponent(name)
}

/// A reference run from Tools/make_model_fixtures.py: tensors plus JSON facts.
struct Fixture {
  let file: SafeTensorsFile
  let meta: [String: Any]
  init(_ name: String) throws {
    file = try SafeTensorsFile(url: fixtureURL("\(name).safetensors"))
    meta = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtureURL("\(name).json"))) as! [String: Any]
  }
  func tensor(_ name: String) throws -> Tensor { try file.tensor(name).clone() }
  func ints(_ name: String) throws -> [Int32] { try file.int64s(name).map { Int32($0) } }
  var config: [String: Any] { meta["config"] as! [String: Any] }

  /// Loads every parameter of `module` from the fixture (names prefixed by `prefix`).
  func load(_ module: Module, prefix: String = "") throws {
    var w: [String: Tensor] = [:]
    for (name, _) in module.namedParameters() { if let t = try? tensor(prefix + name) { w[name] = t } }
    try module.load(w, source: file.path)
  }
}

func maxDiff(_ a: Tensor, _ b: Tensor) -> Float {
  precondition(a.count == b.count, "sizes \(a.shape) vs \(b.shape)")
  var m: Float = 0
  for i in 0..<a.count { m = max(m, abs(a.ptr[i] - b.ptr[i])) }
  return m
}

func maxAbs(_ a: Tensor) -> Float { a.scalars.map(abs).max() ?? 0 }

/// Every parameter's gradient against the fixture's `grad.<name>`: within atol + rtol·max|ref|.
func expectGradients(_ module: Module, _ fx: Fixture, gradPrefix: String = "grad.", atol: Float = 1e-5, rtol: Float = 1e-4, only: ((String) -> Bool)? = nil) throws {
  var checked = 0
  for (name, p) in module.namedParameters() where only?(name) ?? true {
    guard fx.file.entries[gradPrefix + name] != nil else {
      #expect(p.grad == nil || maxAbs(p.grad!) == 0, "\(name): Pivot has a gradient, PyTorch has none")
      continue
    }
    let ref = try fx.tensor(gradPrefix + name)
    guard let g = p.grad else { Issue.record("\(name): no gradient"); continue }
    let d = maxDiff(g, ref)
    #expect(d <= atol + rtol * maxAbs(ref), "gradient \(name): max diff \(d), max |ref| \(maxAbs(ref))")
    checked += 1
  }
  #expect(checked > 0, "no gradient was compared")
}
