import Foundation

/// A JSON reader for tokenizer files: Foundation's JSONSerialization takes over a second on a
/// 7 MB Qwen2 tokenizer.json, most of the time to the first token of `pivot chat`; this one
/// reads it in a small fraction of that. It produces what JSONSerialization produces (dictionaries
/// `[String: Any]`, arrays `[Any]`, `String`, `NSNumber`, `NSNull`), so callers cast as before.
enum FastJSON {
  struct SyntaxError: Error, CustomStringConvertible {
    let offset: Int
    let reason: String
    var description: String { "\(reason) at byte \(offset)" }
  }

  static func parse(_ data: Data) throws -> Any {
    try data.withUnsafeBytes { raw in
      var reader = Reader(bytes: raw.bindMemory(to: UInt8.self))
      reader.skipSpace()
      let value = try reader.value(depth: 0)
      reader.skipSpace()
      guard reader.at == reader.bytes.count else { throw reader.fail("trailing characters after the top-level value") }
      return value
    }
  }

  private struct Reader {
    let bytes: UnsafeBufferPointer<UInt8>
    var at = 0
    /// Deeper nesting than any tokenizer file has; bounds the recursion on hostile input.
    static let maxDepth = 512

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    func fail(_ reason: String) -> SyntaxError { SyntaxError(offset: at, reason: reason) }

    mutating func skipSpace() {
      while at < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[at]) { at += 1 }
    }

    mutating func expect(_ literal: StaticString) throws {
      let n = literal.utf8CodeUnitCount
      guard at + n <= bytes.count, memcmp(bytes.baseAddress! + at, literal.utf8Start, n) == 0 else {
        throw fail("expected \(literal)")
      }
      at += n
    }

    mutating func value(depth: Int) throws -> Any {
      guard depth < Self.maxDepth else { throw fail("nesting deeper than \(Self.maxDepth)") }
      guard at < bytes.count else { throw fail("unexpected end of input") }
      switch bytes[at] {
      case UInt8(ascii: "{"): return try object(depth: depth)
      case UInt8(ascii: "["): return try array(depth: depth)
      case UInt8(ascii: "\""): return try string()
      case UInt8(ascii: "t"): try expect("true"); return NSNumber(value: true)
      case UInt8(ascii: "f"): try expect("false"); return NSNumber(value: false)
      case UInt8(ascii: "n"): try expect("null"); return NSNull()
      default: return try number()
      }
    }

    mutating func object(depth: Int) throws -> [String: Any] {
      at += 1
      var out: [String: Any] = [:]
      skipSpace()
      if at < bytes.count, bytes[at] == UInt8(ascii: "}") { at += 1; return out }
      while true {
        skipSpace()
        guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
        let key = try string()
        skipSpace()
        guard at < bytes.count, bytes[at] == UInt8(ascii: ":") else { throw fail("expected ':' after key \"\(key)\"") }
        at += 1
        skipSpace()
        out[key] = try value(depth: depth + 1)
        skipSpace()
        guard at < bytes.count else { throw fail("unterminated object") }
        if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
        if bytes[at] == UInt8(ascii: "}") { at += 1; return out }
        throw fail("expected ',' or '}' in an object")
      }
    }

    mutating func array(depth: Int) throws -> [Any] {
      at += 1
      var out: [Any] = []
      skipSpace()
      if at < bytes.count, bytes[at] == UInt8(ascii: "]") { at += 1; return out }
      while true {
        skipSpace()
        out.append(try value(depth: depth + 1))
        skipSpace()
        guard at < bytes.count else { throw fail("unterminated array") }
        if bytes[at] == UInt8(ascii: ",") { at += 1; continue }
        if bytes[at] == UInt8(ascii: "]") { at += 1; return out }
        throw fail("expected ',' or ']' in an array")
      }
    }

    mutating func string() throws -> String {
      at += 1
      let start = at
      // Fast path: no escapes, the bytes are the string.
      while at < bytes.count, bytes[at] != UInt8(ascii: "\""), bytes[at] != UInt8(ascii: "\\") {
        guard bytes[at] >= 0x20 else { throw fail("control character in a string") }
        at += 1
      }
      guard at < bytes.count else { throw fail("unterminated string") }
      if bytes[at] == UInt8(ascii: "\"") {
        defer { at += 1 }
        return try utf8(UnsafeBufferPointer(rebasing: bytes[start..<at]))
      }
      var out = Array(bytes[start..<at])
      while true {
        guard at < bytes.count else { throw fail("unterminated string") }
        let c = bytes[at]
        if c == UInt8(ascii: "\"") { at += 1; break }
        if c != UInt8(ascii: "\\") {
          guard c >= 0x20 else { throw fail("control character in a string") }
          out.append(c)
          at += 1
          continue
        }
        guard at + 1 < bytes.count else { throw fail("unterminated escape") }
        let e = bytes[at + 1]
        at += 2
        switch e {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
          var scalar = try hex4()
          if (0xD800..<0xDC00).contains(scalar) {  // a high surrogate needs its low half
            guard at + 1 < bytes.count, bytes[at] == UInt8(ascii: "\\"), bytes[at + 1] == UInt8(ascii: "u") else {
              throw fail("unpaired surrogate \\u\(String(scalar, radix: 16))")
            }
            at += 2
            let low = try hex4()
            guard (0xDC00..<0xE000).contains(low) else { throw fail("unpaired surrogate \\u\(String(scalar, radix: 16))") }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
          } else if (0xDC00..<0xE000).contains(scalar) {
            throw fail("unpaired surrogate \\u\(String(scalar, radix: 16))")
          }
          out.append(contentsOf: String(Character(Unicode.Scalar(scalar)!)).utf8)
        default: throw fail("unknown escape \\\(Character(Unicode.Scalar(e)))")
        }
      }
      return try out.withUnsafeBufferPointer { try utf8($0) }
    }

    mutating func hex4() throws -> UInt32 {
      guard at + 4 <= bytes.count else { throw fail("short \\u escape") }
      var v: UInt32 = 0
      for _ in 0..<4 {
        let c = bytes[at]
        let d: UInt8
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
        default: throw fail("bad hex digit in a \\u escape")
        }
        v = v << 4 | UInt32(d)
        at += 1
      }
      return v
    }

    func utf8(_ b: UnsafeBufferPointer<UInt8>) throws -> String {
      guard let s = String(validating: b, as: UTF8.self) else { throw fail("invalid UTF-8 in a string") }
      return s
    }

    mutating func number() throws -> NSNumber {
      let start = at
      var isInteger = true
      if at < bytes.count, bytes[at] == UInt8(ascii: "-") { at += 1 }
      while at < bytes.count {
        let c = bytes[at]
        if c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") { at += 1; continue }
        if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") {
          isInteger = false
          at += 1
          continue
        }
        break
      }
      guard at > start else { throw fail("unexpected character '\(Character(Unicode.Scalar(bytes[at])))'") }
      let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<at]), as: UTF8.self)
      if isInteger, let i = Int(text) { return NSNumber(value: i) }
      guard let d = Double(text) else { throw SyntaxError(offset: start, reason: "malformed number '\(text)'") }
      return NSNumber(value: d)
    }
  }
}
