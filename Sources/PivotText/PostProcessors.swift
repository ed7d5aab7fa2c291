import Foundation

/// A tokenizer.json `post_processor`: adds special tokens (BOS...) around an encoded sequence.
protocol PostProcessor: Sendable {
  func process(_ ids: [Int32]) -> [Int32]
}

enum PostProcessorFactory {
  static func make(_ value: Any?, file: String) throws -> (any PostProcessor)? {
    guard let value, !(value is NSNull) else { return nil }
    let node = try JSONNode(value, component: "post_processor", file: file)
    guard let type = node.type else { throw TokenizerError.missingField(component: "post_processor", field: "type", file: file) }
    switch type {
    case "ByteLevel": return nil  // only adjusts offsets, which Pivot does not report
    case "TemplateProcessing": return try TemplateProcessor(node: node)
    case "Sequence":
      let parts = try node.array("processors").compactMap { try make($0, file: file) }
      return parts.isEmpty ? nil : SequenceProcessor(parts: parts)
    default:
      throw TokenizerError.unsupportedComponent(kind: "post_processor", type: type, file: file)
    }
  }
}

/// `single: [SpecialToken, Sequence A, ...]`; the pair template is not used by Pivot.
struct TemplateProcessor: PostProcessor {
  enum Piece: Sendable {
    case special([Int32])
    case sequence
  }
  let single: [Piece]

  init(node: JSONNode) throws {
    var specials: [String: [Int32]] = [:]
    if let table = node.object["special_tokens"] as? [String: Any] {
      for (name, value) in table {
        let entry = try JSONNode(value, component: "TemplateProcessing special token \(name)", file: node.file)
        specials[name] = try entry.array("ids").map { value in
          guard let id = (value as? NSNumber)?.int32Value else { throw entry.fail("ids must be integers") }
          return id
        }
      }
    }
    single = try node.array("single").map { item in
      guard let object = item as? [String: Any] else { throw node.fail("template items must be objects") }
      if let special = object["SpecialToken"] as? [String: Any], let name = special["id"] as? String {
        guard let ids = specials[name] else { throw node.fail("template names \"\(name)\", which special_tokens lacks") }
        return .special(ids)
      }
      if object["Sequence"] != nil { return .sequence }
      throw node.fail("template item is neither SpecialToken nor Sequence")
    }
  }

  func process(_ ids: [Int32]) -> [Int32] {
    var out: [Int32] = []
    out.reserveCapacity(ids.count + single.count)
    for piece in single {
      switch piece {
      case .special(let specialIDs): out.append(contentsOf: specialIDs)
      case .sequence: out.append(contentsOf: ids)
      }
    }
    return out
  }
}

struct SequenceProcessor: PostProcessor {
  let parts: [any PostProcessor]
  func process(_ ids: [Int32]) -> [Int32] { parts.reduce(ids) { $1.process($0) } }
}
