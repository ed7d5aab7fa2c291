/// GPT-2's reversible map between bytes and printable characters: byte-level BPE vocabularies spell
/// every byte as one of these 256 characters (a space is "Ġ", a newline "Ċ").
enum ByteLevelAlphabet {
  /// Unicode scalar value that spells each byte.
  static let scalarForByte: [UInt32] = {
    var printable = Array(33...126) + Array(161...172) + Array(174...255)
    var scalars = printable.map { UInt32($0) }
    var extra: UInt32 = 0
    for byte in 0..<256 where !printable.contains(byte) {
      printable.append(byte)
      scalars.append(256 + extra)
      extra += 1
    }
    var table = [UInt32](repeating: 0, count: 256)
    for (byte, scalar) in zip(printable, scalars) { table[byte] = scalar }
    return table
  }()

  /// Inverse table indexed by scalar value (all are below 0x144); -1 where the scalar spells no byte.
  static let byteForScalar: [Int16] = {
    var table = [Int16](repeating: -1, count: 0x144)
    for (byte, scalar) in scalarForByte.enumerated() { table[Int(scalar)] = Int16(byte) }
    return table
  }()

  /// UTF-8 of the character that spells each byte, used to look a raw byte string up in the vocabulary.
  static let utf8ForByte: [[UInt8]] = scalarForByte.map { Array(String(Unicode.Scalar($0)!).utf8) }

  /// The raw bytes a byte-level token spells, or nil if some character is outside the alphabet.
  static func bytes(ofToken token: String) -> [UInt8]? {
    var out: [UInt8] = []
    out.reserveCapacity(token.utf8.count)
    for scalar in token.unicodeScalars {
      let value = Int(scalar.value)
      guard value < byteForScalar.count, byteForScalar[value] >= 0 else { return nil }
      out.append(UInt8(byteForScalar[value]))
    }
    return out
  }

  static func spell(_ bytes: some Sequence<UInt8>) -> String {
    var text = String.UnicodeScalarView()
    for byte in bytes { text.append(Unicode.Scalar(scalarForByte[Int(byte)])!) }
    return String(text)
  }
}
