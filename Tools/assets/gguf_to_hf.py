"""Convert a llama.cpp GGUF file (LLaMA or Qwen2 architecture) into a Hugging Face folder.

Writes config.json, generation_config.json, model.safetensors, tokenizer.json and
tokenizer_config.json, so the folder loads with transformers' AutoModelForCausalLM and
with Pivot's loader. Quantised tensors are dequantised with the `gguf` package.

    python gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bf16|f32] [--tokenizer-only]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_write import save_safetensors  # noqa: E402

# Qwen2's pre-tokenizer regex, as in the official Qwen2/2.5 tokenizer.json.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def hf_name(gguf_name):
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    blk, layer, part, kind = gguf_name.split(".")
    assert blk == "blk", gguf_name
    return f"model.layers.{layer}.{LAYER_NAMES[part]}.{kind}"


def unpermute_rotary(weight, n_heads):
    """Undo llama.cpp's per-head row interleaving of q/k (its convert script's `permute`).

    llama.cpp stores each head's rows as pairs (x0, x_half, x1, x_half+1, ...) for its
    interleaved RoPE; HF LLaMA uses the rotate-half layout, so put the halves back.
    """
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def tensor_to_float32(tensor):
    if tensor.tensor_type == GGMLQuantizationType.F32:
        array = np.array(tensor.data, dtype=np.float32)
    else:  # F16, BF16, Q4_1, Q4_K, Q5_0, Q6_K, Q8_0, ...
        array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    # GGUF lists dimensions innermost first; numpy/PyTorch order is the reverse.
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return array.reshape(shape)


def round_float(x, digits=7):
    """GGUF stores hyper-parameters as float32; give config.json the intended decimal."""
    return float(f"{float(x):.{digits}g}")


def build_config(reader, has_output):
    arch = field(reader, "general.architecture")
    p = lambda key, default=None: field(reader, f"{arch}.{key}", default)  # noqa: E731
    hidden = int(p("embedding_length"))
    heads = int(p("attention.head_count"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab_size = int(p("vocab_size", len(tokens)))
    common = {
        "attention_dropout": 0.0,
        "bos_token_id": int(field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(reader, "tokenizer.ggml.eos_token_id")),
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": int(p("feed_forward_length")),
        "max_position_embeddings": int(p("context_length")),
        "num_attention_heads": heads,
        "num_hidden_layers": int(p("block_count")),
        "num_key_value_heads": int(p("attention.head_count_kv", heads)),
        "rms_norm_eps": round_float(p("attention.layer_norm_rms_epsilon")),
        "rope_theta": round_float(p("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "tie_word_embeddings": not has_output,
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    pad = field(reader, "tokenizer.ggml.padding_token_id")
    if pad is not None:
        common["pad_token_id"] = int(pad)
    if arch == "llama":
        head_dim = int(p("rope.dimension_count", hidden // heads))
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "attention_bias": False, "mlp_bias": False, "head_dim": head_dim,
                "initializer_range": 0.02, "pretraining_tp": 1, **common}
    if arch == "qwen2":
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "initializer_range": 0.02, "use_sliding_window": False,
                "sliding_window": common["max_position_embeddings"],
                "max_window_layers": common["num_hidden_layers"], **common}
    raise SystemExit(f"unsupported architecture {arch!r}")


def build_tokenizer(reader):
    """tokenizer.json (HF `tokenizers` format) from the GGUF's byte-level BPE vocabulary."""
    assert field(reader, "tokenizer.ggml.model") == "gpt2", "only byte-level BPE is handled"
    pre = field(reader, "tokenizer.ggml.pre")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")

    vocab = {}
    added = []
    for token_id, (token, kind) in enumerate(zip(tokens, types)):
        if kind == TOKEN_UNUSED:
            # [PAD151665] ... are embedding rows with no text: left out, as in the
            # official tokenizer.json.
            continue
        # Special tokens go into the BPE vocabulary too: `tokenizers` takes an added
        # token's id from the model vocabulary and would otherwise renumber it.
        vocab[token] = token_id
        if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED):
            # Control tokens are special (skipped when decoding with skip_special_tokens);
            # user-defined ones such as Qwen's <tool_call> are ordinary added tokens.
            added.append({"id": token_id, "content": token, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": kind == TOKEN_CONTROL})

    if pre == "qwen2":
        normalizer = {"type": "NFC"}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]}
        byte_level = {"type": "ByteLevel", "add_prefix_space": False,
                      "trim_offsets": False, "use_regex": False}
    elif pre == "smollm":
        normalizer = None
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}]}
        byte_level = {"type": "ByteLevel", "add_prefix_space": False,
                      "trim_offsets": True, "use_regex": True}
    else:
        raise SystemExit(f"unknown pre-tokenizer {pre!r}")

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": list(merges)},
    }


def build_tokenizer_config(reader):
    tokens = field(reader, "tokenizer.ggml.tokens")

    def token(key):
        token_id = field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if token_id is None else tokens[int(token_id)]

    pre = field(reader, "tokenizer.ggml.pre")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(field(reader, f"{field(reader, 'general.architecture')}.context_length")),
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    if pre == "qwen2":
        # The official Qwen2.5 config has no BOS token: prompts start with <|im_start|>.
        config["bos_token"] = None
        config["errors"] = "replace"
        config["split_special_tokens"] = False
    return config


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as out:
        json.dump(obj, out, ensure_ascii=False, indent=2)
        out.write("\n")


def convert(gguf_path, out_dir, dtype="bf16", tokenizer_only=False):
    start = time.time()
    reader = GGUFReader(gguf_path)
    os.makedirs(out_dir, exist_ok=True)
    write_json(build_tokenizer(reader), os.path.join(out_dir, "tokenizer.json"))
    write_json(build_tokenizer_config(reader), os.path.join(out_dir, "tokenizer_config.json"))
    if tokenizer_only:
        print(f"tokenizer written to {out_dir} in {time.time() - start:.1f} s")
        return

    names = {t.name for t in reader.tensors}
    config = build_config(reader, has_output="output.weight" in names)
    config["torch_dtype"] = "bfloat16" if dtype == "bf16" else "float32"
    write_json(config, os.path.join(out_dir, "config.json"))
    eos = [config["eos_token_id"]]
    if config.get("pad_token_id") not in (None, config["eos_token_id"]):
        eos.append(config["pad_token_id"])  # Qwen stops on <|im_end|> or <|endoftext|>
    write_json({"bos_token_id": config["bos_token_id"], "eos_token_id": eos,
                "pad_token_id": config.get("pad_token_id"), "do_sample": False},
               os.path.join(out_dir, "generation_config.json"))

    is_llama = config["model_type"] == "llama"
    tensors = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":
            continue  # derived from rope_theta; HF recomputes it
        name = hf_name(tensor.name)
        array = tensor_to_float32(tensor)
        if is_llama and tensor.name.endswith("attn_q.weight"):
            array = unpermute_rotary(array, config["num_attention_heads"])
        elif is_llama and tensor.name.endswith("attn_k.weight"):
            array = unpermute_rotary(array, config["num_key_value_heads"])
        tensors[name] = array
    n_params = sum(a.size for a in tensors.values())
    save_safetensors(tensors, os.path.join(out_dir, "model.safetensors"),
                     dtype="BF16" if dtype == "bf16" else "F32",
                     metadata={"format": "pt",
                               "source": os.path.basename(gguf_path),
                               "note": "dequantised from GGUF by Pivot's Tools/assets/gguf_to_hf.py"})
    print(f"{out_dir}: {len(tensors)} tensors, {n_params / 1e6:.1f} M parameters, "
          f"{dtype}, {time.time() - start:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--tokenizer-only", action="store_true")
    args = parser.parse_args()
    convert(args.gguf, args.out_dir, args.dtype, args.tokenizer_only)


if __name__ == "__main__":
    main()
