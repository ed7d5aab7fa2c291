import Foundation

/// Everything that can go wrong reading a tokenizer or chat configuration. Each case names the file.
public enum TokenizerError: Error, CustomStringConvertible, Sendable, Equatable {
  case unreadable(file: String, reason: String)
  case malformedJSON(file: String, reason: String)
  case unsupportedComponent(kind: String, type: String, file: String)
  case missingField(component: String, field: String, file: String)
  case invalidValue(component: String, reason: String, file: String)
  case unknownMergeToken(merge: String, token: String, file: String)

  public var description: String {
    switch self {
    case .unreadable(let file, let reason):
      return "\(file): cannot read the tokenizer (\(reason))"
    case .malformedJSON(let file, let reason):
      return "\(file): not valid JSON (\(reason)); is this really a Hugging Face tokenizer.json?"
    case .unsupportedComponent(let kind, let type, let file):
      return "\(file): unsupported \(kind) type \"\(type)\"; Pivot reads byte-level BPE tokenizers (Qwen2, LLaMA-3, GPT-2 families)"
    case .missingField(let component, let field, let file):
      return "\(file): \(component) has no \"\(field)\" field"
    case .invalidValue(let component, let reason, let file):
      return "\(file): \(component): \(reason)"
    case .unknownMergeToken(let merge, let token, let file):
      return "\(file): merge \"\(merge)\" uses \"\(token)\", which is not in the vocabulary"
    }
  }
}

/// A read-only view of one JSON object that reports problems against the file it came from.
struct JSONNode {
  let object: [String: Any]
  let component: String
  let file: String

  init(_ value: Any?, component: String, file: String) throws {
    guard let object = value as? [String: Any] else {
      throw TokenizerError.invalidValue(component: component, reason: "expected a JSON object", file: file)
    }
    self.object = object
    self.component = component
    self.file = file
  }

  var type: String? { object["type"] as? String }

  /// Present and not null. Compares the dynamic type: `is NSNull` on a large array would bridge it to NSArray first.
  func has(_ key: String) -> Bool {
    guard let value = object[key] else { return false }
    return ObjectIdentifier(Swift.type(of: value)) != ObjectIdentifier(NSNull.self)
  }

  func string(_ key: String) throws -> String {
    guard let value = object[key] as? String else {
      throw TokenizerError.missingField(component: component, field: key, file: file)
    }
    return value
  }

  func optionalString(_ key: String) -> String? { object[key] as? String }

  func bool(_ key: String, default fallback: Bool) -> Bool {
    if let value = object[key] as? Bool { return value }
    if let value = object[key] as? NSNumber { return value.boolValue }
    return fallback
  }

  func int(_ key: String, default fallback: Int) -> Int {
    (object[key] as? NSNumber)?.intValue ?? fallback
  }

  func array(_ key: String) throws -> [Any] {
    guard let value = object[key] as? [Any] else {
      throw TokenizerError.missingField(component: component, field: key, file: file)
    }
    return value
  }

  func child(_ key: String, component name: String) throws -> JSONNode {
    guard has(key) else { throw TokenizerError.missingField(component: component, field: key, file: file) }
    return try JSONNode(object[key], component: name, file: file)
  }

  func fail(_ reason: String) -> TokenizerError {
    .invalidValue(component: component, reason: reason, file: file)
  }
}
