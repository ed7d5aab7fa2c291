import Foundation

/// `pivot bench --phase tokenize`: characters per second encoding a mixed Chinese/English corpus on one
/// thread, beside Hugging Face `tokenizers` (Rust, RAYON_NUM_THREADS=1) on the same file in the same run.
public struct TokenizeBenchReport: Sendable {
  public var characters: Int
  public var bytes: Int
  public var tokens: Int
  public var seconds: Double
  public var charactersPerSecond: Double
  /// Filled when a Python with `tokenizers` was found.
  public var referenceCharactersPerSecond: Double?
  public var referenceTokens: Int?
  /// Whether both produced exactly the same id sequence (compared by checksum).
  public var idsMatchReference: Bool?
  public var referenceNote: String?

  /// The figures as a flat dictionary for the bench table and JSON output.
  public var figures: [String: Double] {
    var out: [String: Double] = [
      "characters": Double(characters), "bytes": Double(bytes), "tokens": Double(tokens), "seconds": seconds,
      "chars_per_s": charactersPerSecond,
    ]
    if let referenceCharactersPerSecond {
      out["hf_chars_per_s"] = referenceCharactersPerSecond
      out["ratio_to_hf"] = charactersPerSecond / referenceCharactersPerSecond
    }
    if let referenceTokens { out["hf_tokens"] = Double(referenceTokens) }
    if let idsMatchReference { out["ids_match_hf"] = idsMatchReference ? 1 : 0 }
    return out
  }
}

/// Runs the benchmark. `corpus` nil generates `megabytes` MB of mixed text; `referencePython` is a Python
/// with `tokenizers` installed (default: `$PIVOT_REF_PYTHON`, else /root/.venvs/pivot-ref/bin/python).
public func runTokenizeBench(
  tokenizer tokenizerURL: URL, corpus: URL?, megabytes: Int = 10, referencePython: String? = nil
) throws -> TokenizeBenchReport {
  let tokenizer = try Tokenizer(contentsOf: tokenizerURL)
  let corpusURL: URL
  if let corpus {
    corpusURL = corpus
  } else {
    corpusURL = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-tokenize-bench-\(megabytes)mb.txt")
    try generateMixedCorpus(megabytes: megabytes).write(to: corpusURL, atomically: true, encoding: .utf8)
  }
  let text = try String(contentsOf: corpusURL, encoding: .utf8)
  let lines = text.split(separator: "\n").map(String.init)
  let characters = lines.reduce(0) { $0 + $1.unicodeScalars.count }
  let bytes = lines.reduce(0) { $0 + $1.utf8.count }
  let start = DispatchTime.now().uptimeNanoseconds
  var encoded: [[Int32]] = []
  encoded.reserveCapacity(lines.count)
  for line in lines { encoded.append(tokenizer.encode(line, addSpecialTokens: false)) }
  let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
  let tokens = encoded.reduce(0) { $0 + $1.count }
  // Order-sensitive checksum of every id, computed the same way on the reference side.
  var checksum: UInt64 = 0
  for ids in encoded { for id in ids { checksum = (checksum &* 1_000_003 &+ UInt64(id)) & 0xFFFF_FFFF_FFFF } }
  var report = TokenizeBenchReport(
    characters: characters, bytes: bytes, tokens: tokens, seconds: seconds, charactersPerSecond: Double(characters) / seconds)

  let python = referencePython ?? ProcessInfo.processInfo.environment["PIVOT_REF_PYTHON"] ?? "/root/.venvs/pivot-ref/bin/python"
  guard FileManager.default.isExecutableFile(atPath: python) else {
    report.referenceNote = "no reference Python at \(python)"
    return report
  }
  var tokenizerFile = try Tokenizer.resolveFile(tokenizerURL)
  if tokenizerFile.pathExtension == "gz" {  // `tokenizers` reads only plain JSON
    let plain = FileManager.default.temporaryDirectory.appendingPathComponent("pivot-bench-tokenizer-\(getpid()).json")
    try gunzip(tokenizerFile).write(to: plain)
    tokenizerFile = plain
  }
  defer { if tokenizerFile.path.contains("pivot-bench-tokenizer-") { try? FileManager.default.removeItem(at: tokenizerFile) } }
  let script = """
    import sys, time
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(sys.argv[1])
    lines = [l for l in open(sys.argv[2], encoding="utf-8").read().split("\\n") if l]
    t = time.perf_counter()
    encodings = tok.encode_batch(lines, add_special_tokens=False)
    dt = time.perf_counter() - t
    n, checksum = 0, 0
    for e in encodings:
        for i in e.ids:
            checksum = (checksum * 1000003 + i) & 0xFFFFFFFFFFFF
        n += len(e.ids)
    print(sum(len(l) for l in lines) / dt, n, checksum)
    """
  let process = Process()
  process.executableURL = URL(fileURLWithPath: python)
  process.arguments = ["-c", script, tokenizerFile.path, corpusURL.path]
  var environment = ProcessInfo.processInfo.environment
  environment["RAYON_NUM_THREADS"] = "1"
  environment["TOKENIZERS_PARALLELISM"] = "false"
  process.environment = environment
  let pipe = Pipe()
  process.standardOutput = pipe
  process.standardError = FileHandle.nullDevice
  try process.run()
  let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
  process.waitUntilExit()
  let fields = output.split(whereSeparator: \.isWhitespace)
  if process.terminationStatus == 0, fields.count == 3, let rate = Double(fields[0]), let count = Int(fields[1]),
    let referenceChecksum = UInt64(fields[2])
  {
    report.referenceCharactersPerSecond = rate
    report.referenceTokens = count
    report.idsMatchReference = referenceChecksum == checksum && count == tokens
  } else {
    report.referenceNote = "reference run failed (is `tokenizers` installed for \(python)?)"
  }
  return report
}

/// Deterministic bilingual text: Chinese clauses of common characters and English sentences, in
/// paragraphs of a few hundred characters, with numbers and punctuation. Random clauses defeat the word
/// cache, so the figure reflects pre-tokenisation and merging, not memoisation.
public func generateMixedCorpus(megabytes: Int, seed: UInt64 = 20_240_521) -> String {
  let hanzi = Array(
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞")
  let english = """
    the model learns to describe images in both languages while the vision encoder stays frozen and only the \
    query transformer trains on pairs of pictures and captions so that alignment carries over from English to \
    Chinese through the shared language model which already understands both a red circle sits beside a blue \
    square on white paper what colour is the triangle please answer briefly training runs on ordinary CPUs \
    with batches of sixteen samples and a learning rate of three times ten to the minus four
    """.split(separator: " ").map(String.init)
  var state = seed
  func next(_ bound: Int) -> Int {
    state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    return Int((state >> 33) % UInt64(bound))
  }
  var out = ""
  let target = megabytes << 20
  out.reserveCapacity(target + 1024)
  while out.utf8.count < target {
    var paragraph = ""
    for _ in 0..<(4 + next(6)) {
      switch next(10) {
      case 0..<5:
        for _ in 0..<(1 + next(3)) {
          for _ in 0..<(4 + next(12)) { paragraph.append(hanzi[next(hanzi.count)]) }
          paragraph.append(next(3) == 0 ? "。" : "，")
        }
      case 5..<9:
        var words: [String] = []
        for _ in 0..<(5 + next(12)) { words.append(english[next(english.count)]) }
        if next(4) == 0 { words.insert(String(next(100_000)), at: next(words.count)) }
        let sentence = words.joined(separator: " ")
        paragraph += sentence.prefix(1).uppercased() + sentence.dropFirst() + ". "
      default:
        paragraph += "共\(next(1000))个样本（\(next(100)).\(next(10))%）用Python和Swift处理。"
      }
    }
    out += paragraph
    out += "\n"
  }
  return out
}
