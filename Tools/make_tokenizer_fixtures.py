"""Writes the tokenizer golden fixtures for PivotText's tests (needs the pivot-ref venv: tokenizers, transformers).

usage: make_tokenizer_fixtures.py QWEN_DIR SMOLLM2_DIR FIXTURES_DIR
  QWEN_DIR and SMOLLM2_DIR come from build_qwen_tokenizer.py and build_smollm2_tokenizer.py.

Fixtures (each well under 5 MB):
  qwen2/tokenizer.json.gz, tokenizer_config.json  the real Qwen2/2.5 file, gzip'd (4.8 MB raw)
  smollm2/tokenizer.json, tokenizer_config.json   the real SmolLM2 file (GPT-2 style)
  llama3/tokenizer.json, tokenizer_config.json    trained here with LLaMA-3's exact pipeline configuration
  llama2/tokenizer.json                           SentencePiece-style BPE (Prepend/Replace, byte fallback) plus
                                                  added tokens using lstrip/rstrip/single_word/normalized
  metaspace/tokenizer.json                        the same model with Mistral's Metaspace pre-tokenizer and decoder
  prefixspace/tokenizer.json                      the LLaMA-3-style vocabulary behind GPT-2/RoBERTa's ByteLevel(add_prefix_space)
  parity-<name>.json                              [{text, ids, decoded, decoded_skip_special}] from `tokenizers`
  chat-<name>.json                                apply_chat_template text and ids for a few conversations
"""
import glob
import gzip
import json
import os
import random
import shutil
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import AddedToken

LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def llama3_specials():
    names = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    names += ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
    assert len(names) == 256
    return names


def training_corpus(qwen):
    """Chinese words from the Qwen vocabulary plus English prose and code from installed packages."""
    lines = []
    vocab = qwen.get_vocab()
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        text = qwen.decode([vocab[token]])
        if "\ufffd" not in text and any("\u4e00" <= c <= "\u9fff" for c in text):
            lines.append(text)
    chinese = ["".join(lines[i:i + 20]) for i in range(0, len(lines), 20)]
    english = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "*.py")))[:60]:
        english.extend(open(path, encoding="utf-8", errors="replace").read().splitlines())
    return chinese + english


def build_llama3(qwen, out_dir):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_corpus(qwen), trainer)
    specials = llama3_specials()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": False,
              "chat_template": LLAMA3_CHAT_TEMPLATE, "model_max_length": 8192}
    json.dump(config, open(os.path.join(out_dir, "tokenizer_config.json"), "w"), ensure_ascii=False, indent=2)
    return Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))


def build_llama2(qwen, out_dir):
    """LLaMA-2-style: normaliser Prepend + Replace, no pre-tokenizer, byte fallback, a decoder chain."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False, limit_alphabet=400)
    corpus = [line for line in training_corpus(qwen) if line.strip()][:20000]
    tok.train_from_iterator(corpus, trainer)
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    doc["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in doc["model"]["merges"]]
    next_id = len(vocab)
    extra = [("<mask>", dict(lstrip=True, rstrip=False, single_word=False, normalized=False)),
             ("[SEP]", dict(lstrip=False, rstrip=True, single_word=False, normalized=False)),
             ("cat", dict(lstrip=False, rstrip=False, single_word=True, normalized=False)),
             ("▁dog", dict(lstrip=False, rstrip=False, single_word=False, normalized=True))]
    for content, flags in extra:
        doc["added_tokens"].append(dict(id=next_id, content=content, special=content != "cat", **flags))
        next_id += 1
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    return Tokenizer.from_file(path)


def build_metaspace(llama2_path, out_dir):
    """Mistral / newer LLaMA-2 style: the same model, but Metaspace(prepend_scheme="first") does what
    Prepend + Replace did, and a Metaspace decoder (with byte fallback) undoes it."""
    doc = json.load(open(llama2_path, encoding="utf-8"))
    doc["normalizer"] = None
    doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    doc["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    doc["added_tokens"] = [t for t in doc["added_tokens"] if not t["normalized"]]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    return Tokenizer.from_file(path)


def build_prefix_space(llama3_path, out_dir):
    """GPT-2/RoBERTa-style ByteLevel with add_prefix_space=true and its own regex, over the LLaMA-3-style vocabulary."""
    doc = json.load(open(llama3_path, encoding="utf-8"))
    doc["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    doc["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    doc["model"]["ignore_merges"] = False
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    return Tokenizer.from_file(path)


def test_strings():
    english = [
        "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "I'm sure you'll see they've done it; he's 'right', isn't he? We'd go.", "IT'S ALL CAPS, DON'T SHOUT",
        "A photo of a red circle on a white background.", "What colour is the square?", "e.g. i.e. etc. Mr. Smith",
        "naïve café résumé coöperate", "Straße Ärger Öl über", "hyphen-ated words and under_scores",
        "  leading spaces", "trailing spaces   ", "tabs\tand\ttabs", "multiple\n\nnewlines\n\n\n", "\r\nwindows\r\nlines",
        "a", "", " ", "  ", "\n", "\t", "x y", "The year 2024 has 366 days.", "3.14159265358979", "1,234,567.89",
        "1234567890123", "Phone: +1 (555) 010-9999", "#hashtag @mention https://example.com/path?q=1&r=2",
        "user@example.org", "C:\\Program Files\\Pivot", "/usr/local/bin/pivot --help",
    ]
    simplified = [
        "你好，世界！", "一只橘色的猫坐在窗台上，看着外面的雨。", "我们在北京大学学习人工智能。",
        "这张图片里有一个红色的圆形和一个蓝色的正方形。", "请用中文回答：图中有几个三角形？", "中华人民共和国成立于一九四九年。",
        "他说：“今天天气很好。”", "机器学习、深度学习和自然语言处理", "《红楼梦》是中国古典小说之一。",
        "价格是￥１２８元，折扣后９９元。", "第一章 总则", "老师，您好！", "我爱你。", "是的", "好",
    ]
    traditional = [
        "這張圖片裡有一個紅色的圓形。", "臺灣的繁體中文與簡體中文不同。", "學習機器學習需要耐心。",
        "請問這個東西多少錢？", "龍鳳呈祥，萬事如意。", "電腦軟體與網際網路",
    ]
    poetry = [
        "床前明月光，疑是地上霜。举头望明月，低头思故乡。", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
        "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。", "大江东去，浪淘尽，千古风流人物。",
        "明月幾時有？把酒問青天。不知天上宮闕，今夕是何年。", "關關雎鳩，在河之洲。窈窕淑女，君子好逑。",
        "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？", "天行健，君子以自强不息。",
    ]
    mixed = [
        "我用Python写了一个tokenizer。", "GPT-4和Qwen2.5都是大语言模型(LLM)。", "Pivot在CPU上训练VLM模型",
        "今天是2024年5月20日，温度25°C。", "iPhone 15 Pro Max的价格是9999元", "使用 pip install torch 安装",
        "Q-Former把图像特征变成32个soft tokens。", "Hello你好World世界", "AI人工智能 ML机器学习 NLP自然语言处理",
        "红色red 绿色green 蓝色blue", "第3章：Transformer架构", "OK，没问题！Thanks~",
    ]
    code = [
        "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) { sum += x[i]; }",
        "let x: [Int32] = [1, 2, 3]\nprint(x.map { $0 * 2 })", "if x == None:\n\tprint('none')  # 空值",
        "SELECT * FROM users WHERE id = 42;", "<div class=\"main\">内容</div>", '{"key": "值", "n": [1, 2.5, -3e10]}',
        "    indented    code    ", "x+=1;y-=2;z*=3;w/=4", "fn main() { println!(\"你好\"); }",
        "#include <stdio.h>\nint main(void) {\n  return 0;\n}\n", "a\\nb\\tc", "`backticks` and ```fences```",
    ]
    emoji = [
        "🙂", "I love 🍕 and 🍣!", "👨‍👩‍👧‍👦 family", "🇨🇳🇺🇸 flags", "❤️🔥✨", "猫咪🐱很可爱😻", "👍🏽 thumbs",
        "⭐️⭐️⭐️⭐️⭐️ 五星好评", "😀😃😄😁😆😅😂🤣",
    ]
    spaces = [
        "a  b", "a   b    c", "     ", "\n\n\n", " \n \n ", "end \n", "word\n\n  next", "\t\t\tx", "x\t\t\t",
        "line1\nline2\r\nline3\rline4", " \t \n", "多个  空格", "　全角空格　", "a\u00a0b\u2003c\u3000d", "\u2028\u2029",
        "  \n  x", "x  \n\n  y  ", "\n \n", "trailing\n",
    ]
    specials = [
        "<|im_start|>user\n你好<|im_end|>\n", "<|endoftext|>", "text<|endoftext|>more text", "<|im_start|><|im_end|>",
        "<|begin_of_text|>Hello<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nhi",
        "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>描述这张图片", "<|im_start|", "|im_end|>", "<<|im_end|>>",
        "<image>\nWhat is in the image?", "<tool_call>{}</tool_call>", "<mask> masked  <mask>word [SEP]  next",
        "a cat and a concatenation; cat. cats _cat", "the dog ▁dog  dog", "<s>not special</s>", "<unk>",
    ]
    odd = [
        "\ufffd", "abc\ufffddef", "\x00null\x00", "\x07\x1b[31mred\x1b[0m", "\u200b\u200c\u200d zero width",
        "e\u0301 composed?", "\u212b angstrom", "\uf900 compat ideograph", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
        "\ufeffBOM", "\U00020000\U0002a6d6 ext-B", "가 jamo", "한국어 텍스트", "日本語のテキスト、カタカナ",
        "Ελληνικά κείμενο", "Русский текст", "العربية", "हिन्दी", "ｶﾀｶﾅ", "①②③ ⅰⅱⅲ ½ ²", "١٢٣ ٤٥٦",
        "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D", "''''", "\"quoted\"", "........", "!!!???",
        "\\u4e2d", "&lt;tag&gt;", "ﬁ ligature", "x\u0308\u0301", "\U0001d400\U0001d401 math bold",
    ]
    base = english + simplified + traditional + poetry + mixed + code + emoji + spaces + specials + odd
    rng = random.Random(20240521)
    combined = []
    while len(base) + len(combined) < 330:
        k = rng.randint(2, 4)
        parts = rng.sample(base, k)
        sep = rng.choice(["", " ", "\n", "  ", "，", "\t"])
        combined.append(sep.join(parts))
    return base + combined


def parity(tok, strings):
    rows = []
    for s in strings:
        enc = tok.encode(s)
        rows.append({"text": s, "ids": enc.ids, "tokens": enc.tokens,
                     "decoded": tok.decode(enc.ids, skip_special_tokens=False),
                     "decoded_skip_special": tok.decode(enc.ids, skip_special_tokens=True)})
    return rows


CONVERSATIONS = [
    [{"role": "user", "content": "What is in the image?"}, {"role": "assistant", "content": "A red circle."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "这张图片里有什么？"}, {"role": "assistant", "content": "一个红色的圆形。"},
     {"role": "user", "content": "What colour is it?"}, {"role": "assistant", "content": "It is red.\n\nVery red."}],
    [{"role": "user", "content": "床前明月光"}, {"role": "assistant", "content": "疑是地上霜。"},
     {"role": "user", "content": "  spaces around  "}],
    [{"role": "user", "content": "Count: 1 2 3"}, {"role": "assistant", "content": "\nfour, five 😀"}],
]


def chat_fixture(folder, image_token):
    from transformers import PreTrainedTokenizerFast
    config = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"),
                                 bos_token=config.get("bos_token"), eos_token=config.get("eos_token"))
    hf.chat_template = config["chat_template"]
    rows = []
    for i, conv in enumerate(CONVERSATIONS):
        for gen in (False, True):
            text = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            ids = hf(text, add_special_tokens=False)["input_ids"]
            rows.append({"messages": conv, "add_generation_prompt": gen, "text": text, "ids": ids})
    # LLaVA-style: the user turn holds `<image>`, rendered as N copies of the image placeholder token.
    conv = [{"role": "user", "content": "<image>\n描述这张图片。"}, {"role": "assistant", "content": "一只猫。"}]
    expanded = [{"role": m["role"], "content": m["content"].replace("<image>", image_token * 4)} for m in conv]
    text = hf.apply_chat_template(expanded, tokenize=False)
    rows.append({"messages": conv, "add_generation_prompt": False, "image_token_count": 4,
                 "image_token": image_token, "text": text, "ids": hf(text, add_special_tokens=False)["input_ids"]})
    return rows


def main():
    qwen_dir, smol_dir, fixtures = sys.argv[1:4]
    os.makedirs(fixtures, exist_ok=True)
    qwen = Tokenizer.from_file(os.path.join(qwen_dir, "tokenizer.json"))
    smol = Tokenizer.from_file(os.path.join(smol_dir, "tokenizer.json"))
    os.makedirs(os.path.join(fixtures, "qwen2"), exist_ok=True)
    with open(os.path.join(qwen_dir, "tokenizer.json"), "rb") as src:
        with gzip.GzipFile(os.path.join(fixtures, "qwen2", "tokenizer.json.gz"), "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    shutil.copy(os.path.join(qwen_dir, "tokenizer_config.json"), os.path.join(fixtures, "qwen2"))
    os.makedirs(os.path.join(fixtures, "smollm2"), exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(smol_dir, name), os.path.join(fixtures, "smollm2"))
    llama3 = build_llama3(qwen, os.path.join(fixtures, "llama3"))
    llama2 = build_llama2(qwen, os.path.join(fixtures, "llama2"))
    prefix_space = build_prefix_space(os.path.join(fixtures, "llama3", "tokenizer.json"), os.path.join(fixtures, "prefixspace"))
    metaspace = build_metaspace(os.path.join(fixtures, "llama2", "tokenizer.json"), os.path.join(fixtures, "metaspace"))
    strings = test_strings()
    for name, tok in (("qwen2", qwen), ("smollm2", smol), ("llama3", llama3), ("llama2", llama2), ("metaspace", metaspace), ("prefixspace", prefix_space)):
        with open(os.path.join(fixtures, f"parity-{name}.json"), "w", encoding="utf-8") as f:
            json.dump(parity(tok, strings), f, ensure_ascii=True, indent=0)  # escaped: keeps U+FEFF and controls intact
    for name, image_token in (("qwen2", "<|image_pad|>"), ("smollm2", "<|im_start|>"), ("llama3", "<|reserved_special_token_0|>")):
        folder = qwen_dir if name == "qwen2" else os.path.join(fixtures, name) if name == "llama3" else smol_dir
        with open(os.path.join(fixtures, f"chat-{name}.json"), "w", encoding="utf-8") as f:
            json.dump(chat_fixture(folder, image_token), f, ensure_ascii=True, indent=0)
    print(f"{len(strings)} strings x 6 tokenizers written to {fixtures}")


if __name__ == "__main__":
    main()
