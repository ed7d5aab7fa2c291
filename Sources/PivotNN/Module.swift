import Foundation
import PivotTensor

/// A node of the model tree. Parameters are found by reflection over stored properties:
/// a `Tensor` is a parameter, a `Module` a child, a `[Module]` a numbered list. Each property's
/// key is its name in snake_case (`qProj` → `q_proj`), or the entry in `keyOverrides`, so
/// dotted paths equal the Hugging Face safetensors names and checkpoints load unconverted.
open class Module: @unchecked Sendable {
  public init() {}

  /// Property name → key, where snake_case of the Swift name is not the HF key.
  open var keyOverrides: [String: String] { [:] }

  /// Every parameter with its dotted name, in declaration order.
  public func namedParameters(prefix: String = "") -> [(String, Tensor)] {
    var out: [(String, Tensor)] = []
    visit(prefix: prefix) { out.append(($0, $1)) }
    return out
  }

  public func parameters() -> [Tensor] { namedParameters().map(\.1) }

  public func namedModules(prefix: String = "") -> [(String, Module)] {
    var out: [(String, Module)] = [(prefix, self)]
    for (key, child) in children() {
      let p = prefix.isEmpty ? key : "\(prefix).\(key)"
      switch child {
      case .module(let m): out += m.namedModules(prefix: p)
      case .list(let ms): for (i, m) in ms.enumerated() { out += m.namedModules(prefix: "\(p).\(i)") }
      case .tensor: break
      }
    }
    return out
  }

  enum Child {
    case tensor(Tensor)
    case module(Module)
    case list([Module])
  }

  func children() -> [(String, Child)] {
    var out: [(String, Child)] = []
    var mirror: Mirror? = Mirror(reflecting: self)
    var levels: [[(String, Child)]] = []
    // Walk superclass mirrors too, base class properties first.
    while let m = mirror {
      var level: [(String, Child)] = []
      for c in m.children {
        guard var label = c.label else { continue }
        if label.hasPrefix("_") { label.removeFirst() }
        let key = keyOverrides[label] ?? Module.snakeCase(label)
        if let child = Module.classify(c.value) { level.append((key, child)) }
      }
      levels.append(level)
      mirror = m.superclassMirror
    }
    for level in levels.reversed() { out += level }
    return out
  }

  static func classify(_ value: Any) -> Child? {
    if let t = value as? Tensor { return .tensor(t) }
    if let m = value as? Module { return .module(m) }
    if let ms = value as? [Module] { return .list(ms) }
    let mirror = Mirror(reflecting: value)
    if mirror.displayStyle == .optional {
      guard let inner = mirror.children.first?.value else { return nil }
      return classify(inner)
    }
    return nil
  }

  func visit(prefix: String, _ body: (String, Tensor) -> Void) {
    for (key, child) in children() {
      let p = prefix.isEmpty ? key : "\(prefix).\(key)"
      switch child {
      case .tensor(let t): body(p, t)
      case .module(let m): m.visit(prefix: p, body)
      case .list(let ms): for (i, m) in ms.enumerated() { m.visit(prefix: "\(p).\(i)", body) }
      }
    }
  }

  public static func snakeCase(_ s: String) -> String {
    var out = ""
    for ch in s {
      if ch.isUppercase {
        out += "_" + ch.lowercased()
      } else if ch.isNumber, let last = out.last, !last.isNumber, last != "_" {
        out += String(ch)
      } else {
        out.append(ch)
      }
    }
    return out
  }

  // MARK: Freezing

  /// Sets `requiresGrad` on every parameter matching any pattern; a pattern matching
  /// nothing is an error that names it.
  public func setTrainable(_ trainable: Bool, matching patterns: [String]) throws {
    let params = namedParameters()
    for pattern in patterns {
      var hit = false
      for (name, t) in params where Glob.matches(pattern, name) {
        if trainable && t.bf16Values != nil { throw ModuleError.bf16OnlyNotTrainable(name) }
        t.requiresGrad = trainable
        hit = true
      }
      if !hit { throw ModuleError.patternMatchesNothing(pattern) }
    }
  }

  public func freeze(_ patterns: [String] = ["*"]) throws { try setTrainable(false, matching: patterns) }
  public func unfreeze(_ patterns: [String] = ["*"]) throws { try setTrainable(true, matching: patterns) }

  public func trainableParameters() -> [(String, Tensor)] { namedParameters().filter { $0.1.requiresGrad } }

  /// Every frozen Linear below this module computes with its weight in bfloat16 and gives
  /// back the float32 copy. Returns the bytes given back.
  @discardableResult
  public func storeFrozenLinearWeightsInBF16() -> Int {
    var saved = 0
    for (_, m) in namedModules() {
      guard let linear = m as? Linear, !linear.weight.requiresGrad, linear.weight.bf16Values == nil else { continue }
      linear.storeWeightInBF16()
      saved += linear.weight.count * 2
    }
    return saved
  }

  // MARK: Loading

  /// Copies every parameter from `weights` (name → tensor), after checking that nothing is
  /// missing, nothing is left over (unless allowed) and every shape agrees. All problems are
  /// listed together. Tensors whose storage can be borrowed (mmap'd F32) are pointed at
  /// directly when `zeroCopy` is set.
  public func load(
    _ weights: [String: Tensor], source: String, allowUnused: Bool = false, allowMissing: Set<String> = [], zeroCopy: Bool = false
  ) throws {
    let params = namedParameters()
    var problems: [String] = []
    let names = Set(params.map(\.0))
    for (name, t) in params {
      guard let w = weights[name] else {
        if !allowMissing.contains(name) { problems.append("missing tensor '\(name)' (expected shape \(t.shape))") }
        continue
      }
      if w.shape != t.shape { problems.append("tensor '\(name)' has shape \(w.shape), the model expects \(t.shape)") }
    }
    if !allowUnused {
      for name in weights.keys.sorted() where !names.contains(name) { problems.append("unused tensor '\(name)'") }
    }
    if !problems.isEmpty { throw ModuleError.loadFailed(source: source, problems: problems) }
    for (name, t) in params {
      guard let w = weights[name] else { continue }
      if let half = w.bf16Values {  // a bfloat16 matrix of the checkpoint, kept as it is: frozen
        t.requiresGrad = false
        t.keepOnlyBF16(half)
      } else if zeroCopy {
        t.repoint(to: w.storage, offset: w.offset)
      } else {
        t.copy(from: w)
      }
    }
  }
}

public enum ModuleError: Error, CustomStringConvertible {
  case patternMatchesNothing(String)
  case loadFailed(source: String, problems: [String])
  case bf16OnlyNotTrainable(String)

  public var description: String {
    switch self {
    case .patternMatchesNothing(let p):
      "parameter pattern '\(p)' matches no parameter (patterns are globs over dotted names, e.g. 'model.layers.*.mlp.*')"
    case .bf16OnlyNotTrainable(let name):
      "parameter '\(name)' is held only in bfloat16 (frozen storage) and cannot train; load the model with float32 weights to train it"
    case .loadFailed(let source, let problems):
      "\(source): \(problems.count) problem\(problems.count == 1 ? "" : "s") loading weights:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
  }
}

/// Shell-style globs over parameter names: `*` matches any run of characters (dots included),
/// `?` one character.
public enum Glob {
  public static func matches(_ pattern: String, _ text: String) -> Bool {
    let p = Array(pattern.utf8), t = Array(text.utf8)
    var pi = 0, ti = 0, star = -1, mark = 0
    while ti < t.count {
      if pi < p.count && (p[pi] == UInt8(ascii: "?") || p[pi] == t[ti]) {
        pi += 1; ti += 1
      } else if pi < p.count && p[pi] == UInt8(ascii: "*") {
        star = pi; mark = ti; pi += 1
      } else if star >= 0 {
        pi = star + 1; mark += 1; ti = mark
      } else {
        return false
      }
    }
    while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
    return pi == p.count
  }
}
