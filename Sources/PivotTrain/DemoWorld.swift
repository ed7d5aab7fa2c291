import Foundation
import PivotData
import PivotTensor

/// The generated world the main demo trains on (DESIGN.md, "The demo world"): coloured shapes
/// in JPEG shards, English captions, English question–answer conversations with their Chinese
/// translations, a bilingual text corpus, and held-out images with questions in both languages.
public enum DemoWorld {
  public struct Colour: Sendable { public let en, zh: String; public let rgb: (UInt8, UInt8, UInt8) }
  public struct Shape: Sendable { public let en, zh: String }

  public static let colours: [Colour] = [
    Colour(en: "red", zh: "红色", rgb: (215, 35, 35)), Colour(en: "green", zh: "绿色", rgb: (35, 160, 55)),
    Colour(en: "blue", zh: "蓝色", rgb: (35, 75, 215)), Colour(en: "yellow", zh: "黄色", rgb: (235, 205, 30)),
    Colour(en: "purple", zh: "紫色", rgb: (135, 55, 175)), Colour(en: "orange", zh: "橙色", rgb: (245, 135, 25)),
  ]
  public static let shapes: [Shape] = [
    Shape(en: "circle", zh: "圆形"), Shape(en: "square", zh: "正方形"), Shape(en: "triangle", zh: "三角形"), Shape(en: "cross", zh: "十字形"),
  ]

  public struct Size: Sendable { public let en, zh: String; public let radius: ClosedRange<Float> }
  /// Half-sizes as fractions of the image side.
  public static let sizes: [Size] = [Size(en: "small", zh: "小", radius: 0.19...0.22), Size(en: "big", zh: "大", radius: 0.32...0.35)]

  public static let captionTemplates = ["A {z} {c} {s}.", "A {z} {c} {s} on a grey background.", "There is a {z} {c} {s} in the picture.", "The image shows a {z} {c} {s}."]
  public static let colourQuestionsEN = ["What colour is the shape?", "What is the colour of the shape in the image?", "Which colour does the shape have?"]
  public static let shapeQuestionsEN = ["What shape is in the image?", "What kind of shape is this?", "Which shape do you see?"]
  public static let sizeQuestionsEN = ["Is the shape big or small?", "How big is the shape?", "What size is the shape?"]
  public static let sizeQuestionsZH = ["这个形状是大还是小？", "图中的形状有多大？", "形状的大小是怎样的？"]
  public static let colourQuestionsZH = ["图中的形状是什么颜色？", "这个形状是什么颜色的？", "图片里的形状是哪种颜色？"]
  public static let shapeQuestionsZH = ["图片里是什么形状？", "这是什么形状？", "你看到的是哪种形状？"]

  public static func answer(colour c: Colour, zh: Bool) -> String { zh ? "是\(c.zh)的。" : "It is \(c.en)." }
  public static func answer(shape s: Shape, zh: Bool) -> String { zh ? "是一个\(s.zh)。" : "It is a \(s.en)." }
  public static func answer(size z: Size, zh: Bool) -> String { zh ? "它是\(z.zh)的。" : "It is \(z.en)." }

  /// One picture: a shape of one colour at a random place and size on a light, noisy background.
  public static func render(colour: Colour, shape: Shape, scale: Size, size: Int, rng: inout PivotRNG) -> RGBImage {
    var pixels = [UInt8](repeating: 0, count: size * size * 3)
    let bg = 200 + Int(rng.next() % 50)
    for i in 0..<(size * size) {
      let n = Int(rng.next() % 9) - 4
      for c in 0..<3 { pixels[i * 3 + c] = UInt8(clamping: bg + n) }
    }
    // Centred, with a little variation in size, background and noise: the toy vision tower
    // learns from a few thousand images in minutes, so the demo measures language transfer,
    // not translation-invariant recognition.
    let s = Float(size)
    let r = s * (scale.radius.lowerBound + (scale.radius.upperBound - scale.radius.lowerBound) * rng.uniform())  // half-size
    let cx = s / 2, cy = s / 2
    for y in 0..<size {
      for x in 0..<size {
        let dx = Float(x) + 0.5 - cx, dy = Float(y) + 0.5 - cy
        let inside: Bool
        switch shape.en {
        case "circle": inside = dx * dx + dy * dy <= r * r
        case "square": inside = abs(dx) <= r * 0.85 && abs(dy) <= r * 0.85
        case "triangle": inside = dy <= r * 0.8 && dy >= -r && abs(dx) <= (dy + r) * 0.6
        default: inside = (abs(dx) <= r * 0.3 && abs(dy) <= r) || (abs(dy) <= r * 0.3 && abs(dx) <= r)
        }
        if inside {
          let i = (y * size + x) * 3
          pixels[i] = colour.rgb.0
          pixels[i + 1] = colour.rgb.1
          pixels[i + 2] = colour.rgb.2
        }
      }
    }
    return RGBImage(width: size, height: size, pixels: pixels)
  }

  static func fill(_ template: String, _ c: Colour, _ s: Shape, _ z: Size) -> String {
    template.replacingOccurrences(of: "{c}", with: c.en).replacingOccurrences(of: "{s}", with: s.en).replacingOccurrences(of: "{z}", with: z.en)
  }

  static func conversation(_ turns: [(String, String)], image: Bool) -> [[String: String]] {
    var out: [[String: String]] = []
    for (i, (q, a)) in turns.enumerated() {
      out.append(["from": "human", "value": i == 0 && image ? "<image>\n\(q)" : q])
      out.append(["from": "gpt", "value": a])
    }
    return out
  }

  static func json(_ object: Any) -> [UInt8] {
    Array(try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
  }

  public struct Counts: Sendable {
    public var trainImages = 3000
    public var heldoutImages = 240
    public var corpusLines = 9000
    public var imageSize = 48
    public init() {}
  }

  /// Writes the world under `dir`; returns a summary of what was written.
  @discardableResult
  public static func generate(into dir: String, counts: Counts = Counts(), seed: UInt64 = 0, progress: (String, Int, Int) -> Void = { _, _, _ in }) throws -> [String: Int] {
    let fm = FileManager.default
    try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var rng = PivotRNG(seed: seed)
    func path(_ p: String) -> String { (dir as NSString).appendingPathComponent(p) }
    let captions = try ShardWriter(pattern: path("captions/captions-%06d.tar.zst"), maxSamples: 1000)
    let convEN = try ShardWriter(pattern: path("conversations-en/conv-en-%06d.tar.zst"), maxSamples: 1000)
    let convZH = try ShardWriter(pattern: path("conversations-zh/conv-zh-%06d.tar.zst"), maxSamples: 1000)
    let heldCaptions = try ShardWriter(pattern: path("heldout/captions-%06d.tar.zst"), maxSamples: 10_000)
    let heldConv = try ShardWriter(pattern: path("heldout/conversations-%06d.tar.zst"), maxSamples: 10_000)
    let heldQA = try ShardWriter(pattern: path("heldout/questions-%06d.tar.zst"), maxSamples: 10_000)
    let total = counts.trainImages + counts.heldoutImages
    for i in 0..<total {
      let c = colours[Int(rng.next() % UInt64(colours.count))], s = shapes[Int(rng.next() % UInt64(shapes.count))]
      let z = sizes[Int(rng.next() % UInt64(sizes.count))]
      let jpeg = try JPEG.encode(render(colour: c, shape: s, scale: z, size: counts.imageSize, rng: &rng), quality: 92)
      let key = String(format: "%06d", i)
      let caption = fill(captionTemplates[Int(rng.next() % UInt64(captionTemplates.count))], c, s, z)
      let ce = colourQuestionsEN[Int(rng.next() % 3)], se = sizeQuestionsEN[Int(rng.next() % 3)]
      let cz = colourQuestionsZH[Int(rng.next() % 3)], sz = sizeQuestionsZH[Int(rng.next() % 3)]
      // Question order varies so neither answer is always first.
      let colourFirst = rng.next() % 2 == 0
      let en = colourFirst ? [(ce, answer(colour: c, zh: false)), (se, answer(size: z, zh: false))] : [(se, answer(size: z, zh: false)), (ce, answer(colour: c, zh: false))]
      let zh = colourFirst ? [(cz, answer(colour: c, zh: true)), (sz, answer(size: z, zh: true))] : [(sz, answer(size: z, zh: true)), (cz, answer(colour: c, zh: true))]
      let img = SampleField(name: "jpg", data: jpeg)
      if i < counts.trainImages {
        try captions.write(ShardSample(key: key, url: "", fields: [img, SampleField(name: "txt", data: Array(caption.utf8))]))
        try convEN.write(ShardSample(key: key, url: "", fields: [img, SampleField(name: "json", data: json(["conversations": conversation(en, image: true)]))]))
        try convZH.write(ShardSample(key: key, url: "", fields: [img, SampleField(name: "json", data: json(["conversations": conversation(zh, image: true)]))]))
      } else {
        try heldCaptions.write(ShardSample(key: key, url: "", fields: [img, SampleField(name: "txt", data: Array(caption.utf8))]))
        try heldConv.write(ShardSample(key: key, url: "", fields: [img, SampleField(name: "json", data: json(["conversations": conversation(colourFirst ? en : zh, image: true)]))]))
        let questions: [[String: String]] = [
          ["lang": "en", "kind": "colour", "question": ce, "answer": c.en],
          ["lang": "en", "kind": "size", "question": se, "answer": z.en],
          ["lang": "zh", "kind": "colour", "question": cz, "answer": c.zh],
          ["lang": "zh", "kind": "size", "question": sz, "answer": z.zh + "的"],
        ]
        try heldQA.write(ShardSample(key: key, url: "", fields: [img, SampleField(name: "json", data: json(["questions": questions, "colour": c.en, "shape": s.en, "size": z.en]))]))
      }
      if i % 100 == 0 || i == total - 1 { progress("images", i + 1, total) }
    }
    for w in [captions, convEN, convZH, heldCaptions, heldConv, heldQA] { try w.finish() }
    // Bilingual text for stage 0 and the tokenizer: facts, translations and text-only chats.
    var lines: [String] = []
    for _ in 0..<counts.corpusLines {
      let c = colours[Int(rng.next() % UInt64(colours.count))], s = shapes[Int(rng.next() % UInt64(shapes.count))]
      let z = sizes[Int(rng.next() % UInt64(sizes.count))]
      let template = captionTemplates[Int(rng.next() % 4)]
      switch rng.next() % 12 {
      case 0: lines.append("The \(s.en) is \(c.en). 这个\(s.zh)是\(c.zh)的。")
      case 1: lines.append("\(c.en) is \(c.zh) in Chinese. \(s.en) is \(s.zh) in Chinese. \(z.en) is \(z.zh) in Chinese.")
      case 2: lines.append(fill(template, c, s, z) + " 这是一个\(z.zh)的\(c.zh)\(s.zh)。")
      case 3: lines.append("<|im_start|>user\nA \(z.en) \(c.en) \(s.en). \(colourQuestionsEN[Int(rng.next() % 3)])<|im_end|>\n<|im_start|>assistant\n\(answer(colour: c, zh: false))<|im_end|>")
      case 4: lines.append("<|im_start|>user\n一个\(z.zh)的\(c.zh)\(s.zh)。\(colourQuestionsZH[Int(rng.next() % 3)])<|im_end|>\n<|im_start|>assistant\n\(answer(colour: c, zh: true))<|im_end|>")
      case 5: lines.append("<|im_start|>user\nA \(z.en) \(c.en) \(s.en). \(sizeQuestionsEN[Int(rng.next() % 3)])<|im_end|>\n<|im_start|>assistant\n\(answer(size: z, zh: false))<|im_end|>")
      case 6: lines.append("<|im_start|>user\n一个\(z.zh)的\(c.zh)\(s.zh)。\(sizeQuestionsZH[Int(rng.next() % 3)])<|im_end|>\n<|im_start|>assistant\n\(answer(size: z, zh: true))<|im_end|>")
      case 7: lines.append("<|im_start|>user\nA \(c.en) \(s.en). \(shapeQuestionsEN[Int(rng.next() % 3)])<|im_end|>\n<|im_start|>assistant\n\(answer(shape: s, zh: false))<|im_end|>")
      case 8: lines.append("<|im_start|>user\n一个\(c.zh)的\(s.zh)。\(shapeQuestionsZH[Int(rng.next() % 3)])<|im_end|>\n<|im_start|>assistant\n\(answer(shape: s, zh: true))<|im_end|>")
      // A described picture → a caption: the frozen LLM learns to caption what its prompt shows,
      // which is what stage 1's soft tokens then stand in for.
      case 9: lines.append("<|im_start|>user\nA \(z.en) \(c.en) \(s.en).\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n\(fill(template, c, s, z))<|im_end|>")
      case 10: lines.append("<|im_start|>user\n一个\(z.zh)的\(c.zh)\(s.zh)。\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n\(fill(template, c, s, z))<|im_end|>")
      default: lines.append("A \(z.en) \(c.en) \(s.en) and a \(colours[Int(rng.next() % 6)].en) \(shapes[Int(rng.next() % 4)].en). 一个\(z.zh)的\(c.zh)\(s.zh)。")
      }
    }
    try (lines.joined(separator: "\n") + "\n").write(toFile: path("corpus.txt"), atomically: true, encoding: .utf8)
    let text = try ShardWriter(pattern: path("text/text-%06d.tar.zst"), maxSamples: 100_000)
    let heldText = try ShardWriter(pattern: path("heldout/text-%06d.tar.zst"), maxSamples: 100_000)
    for (i, line) in lines.enumerated() {
      let sample = ShardSample(key: String(format: "%06d", i), url: "", fields: [SampleField(name: "txt", data: Array(line.utf8))])
      if i % 20 == 19 { try heldText.write(sample) } else { try text.write(sample) }
    }
    try text.finish()
    try heldText.finish()
    return ["train_images": counts.trainImages, "heldout_images": counts.heldoutImages, "corpus_lines": lines.count]
  }
}
