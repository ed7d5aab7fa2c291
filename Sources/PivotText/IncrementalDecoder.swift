/// Decodes a stream of generated ids into text pieces. A token may end inside a multi-byte character
/// (Qwen splits many Chinese characters over two tokens); such bytes are held back until the character
/// completes, so every piece returned is whole UTF-8. The text is decoded with one token of context
/// so decoders that strip a leading space (SentencePiece style) still give the right spacing.
public struct IncrementalDecoder: Sendable {
  public let tokenizer: Tokenizer
  public let skipSpecialTokens: Bool
  private var ids: [Int32] = []
  private var contextStart = 0  // first id decoded as context
  private var unreadStart = 0  // ids from here on have not been emitted

  init(tokenizer: Tokenizer, skipSpecialTokens: Bool) {
    self.tokenizer = tokenizer
    self.skipSpecialTokens = skipSpecialTokens
  }

  /// Adds one id; returns the newly completed text (empty while a character is incomplete).
  public mutating func push(_ id: Int32) -> String {
    ids.append(id)
    guard let text = unreadText(), text.unicodeScalars.last != "\u{FFFD}" else { return "" }
    contextStart = unreadStart
    unreadStart = ids.count
    return text
  }

  /// Whatever is still held back (a trailing incomplete character decodes as U+FFFD).
  public mutating func finish() -> String {
    guard unreadStart < ids.count else { return "" }
    let text = unreadText() ?? ""
    contextStart = ids.count
    unreadStart = ids.count
    return text
  }

  /// Text of the unread ids: the decode of context + unread minus the decode of the context alone.
  private func unreadText() -> String? {
    let context = tokenizer.decode(Array(ids[contextStart..<unreadStart]), skipSpecialTokens: skipSpecialTokens)
    let full = tokenizer.decode(Array(ids[contextStart...]), skipSpecialTokens: skipSpecialTokens)
    let contextLength = context.unicodeScalars.count
    let scalars = Array(full.unicodeScalars)
    guard scalars.count >= contextLength else { return nil }
    var view = String.UnicodeScalarView()
    view.append(contentsOf: scalars[contextLength...])
    return String(view)
  }
}
