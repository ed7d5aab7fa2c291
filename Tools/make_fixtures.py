#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures the engine tests compare against.

Run with the reference venv (Tools/setup-reference makes it):
    ~/.venvs/pivot-ref/bin/python Tools/make_fixtures.py
Outputs small safetensors files under Tests/*/Fixtures; they are committed so the Swift
tests need no Python. Every reference is computed in float64 from float32-representable
inputs, then stored as float32.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSOR_FIX = os.path.join(ROOT, "Tests", "PivotTensorTests", "Fixtures")
NN_FIX = os.path.join(ROOT, "Tests", "PivotNNTests", "Fixtures")
torch.manual_seed(0)


def f32(*shape, lo=-1.0, hi=1.0):
    return (torch.rand(tuple(shape)) * (hi - lo) + lo).double()


# ---------------------------------------------------------------- per-op references
ops = {}


def op(name, fn, inputs, ints=None):
    """Runs fn in float64, seeds backward with a random tensor, stores everything."""
    xs = [x.clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    seed = f32(*out.shape)
    out.backward(seed)
    for i, x in enumerate(xs):
        ops[f"{name}.in.{i}"] = x.detach().float()
        ops[f"{name}.grad.{i}"] = (x.grad if x.grad is not None else torch.zeros_like(x)).float()
    ops[f"{name}.seed"] = seed.float()
    ops[f"{name}.out"] = out.detach().float().reshape(out.shape)
    for k, v in (ints or {}).items():
        ops[f"{name}.{k}"] = v


def rms_norm(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_ref(x, positions, theta):  # x (B, T, NH, HS)
    hs = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.int64).double() / hs))
    freqs = positions.double()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
    return x * cos + rotate_half(x) * sin


def attention_ref(q, k, v, causal, key_mask=None):  # (B, T, NH, HS), (B, S, NKV, HS)
    nh, nkv = q.shape[2], k.shape[2]
    k = k.repeat_interleave(nh // nkv, dim=2)
    v = v.repeat_interleave(nh // nkv, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    t, s = scores.shape[-2], scores.shape[-1]
    if causal:
        mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
        scores = scores.masked_fill(~mask, float("-inf"))
    if key_mask is not None:
        scores = scores.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def make_ops():
    op("matmul", lambda a, b: a @ b, [f32(3, 4), f32(4, 5)])
    op("matmul_ta", lambda a, b: a.transpose(-1, -2) @ b, [f32(4, 3), f32(4, 5)])
    op("matmul_tb", lambda a, b: a @ b.transpose(-1, -2), [f32(3, 4), f32(5, 4)])
    op("matmul_tab", lambda a, b: a.transpose(-1, -2) @ b.transpose(-1, -2), [f32(2, 4, 3), f32(2, 5, 4)])
    op("bmm", lambda a, b: a @ b, [f32(2, 3, 4), f32(2, 4, 5)])
    op("matmul_shared", lambda a, b: a @ b, [f32(2, 3, 4), f32(4, 5)])
    op("linear", lambda x, w, b: F.linear(x, w, b), [f32(2, 3, 4), f32(5, 4), f32(5)])
    op("linear_nobias", lambda x, w: F.linear(x, w), [f32(6, 4), f32(3, 4)])
    op("add", lambda a, b: a + b, [f32(2, 3, 4), f32(3, 1)])
    op("sub", lambda a, b: a - b, [f32(2, 3, 4), f32(4)])
    op("mul", lambda a, b: a * b, [f32(2, 1, 4), f32(3, 1)])
    op("div", lambda a, b: a / b, [f32(2, 3, 4), f32(2, 3, 4, lo=0.5, hi=2.0)])
    op("scale", lambda x: x * 0.37, [f32(3, 5)])
    op("sum_axis", lambda x: x.sum(1), [f32(2, 3, 4)])
    op("mean_axis", lambda x: x.mean(-1, keepdim=True), [f32(2, 3, 4)])
    op("sum_all", lambda x: x.sum(), [f32(3, 4)])
    op("exp", torch.exp, [f32(3, 4)])
    op("log", torch.log, [f32(3, 4, lo=0.2, hi=3.0)])
    op("sqrt", torch.sqrt, [f32(3, 4, lo=0.2, hi=3.0)])
    op("softmax", lambda x: x.softmax(-1), [f32(3, 7, lo=-3, hi=3)])
    op("log_softmax", lambda x: x.log_softmax(-1), [f32(3, 7, lo=-3, hi=3)])
    op("layer_norm", lambda x, w, b: F.layer_norm(x, (8,), w, b, 1e-5), [f32(2, 3, 8), f32(8), f32(8)])
    op("rms_norm", rms_norm, [f32(2, 3, 8), f32(8)])
    op("gelu", lambda x: F.gelu(x), [f32(4, 5, lo=-3, hi=3)])
    op("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), [f32(4, 5, lo=-3, hi=3)])
    op("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x), [f32(4, 5, lo=-3, hi=3)])
    op("silu", F.silu, [f32(4, 5, lo=-3, hi=3)])
    ids = torch.tensor([[1, 5, 1], [0, 6, 3]])
    op("embedding", lambda w: F.embedding(ids, w), [f32(7, 4)], {"ids": ids})
    pos = torch.tensor([0, 1, 2, 5, 9])
    op("rope", lambda x: rope_ref(x, pos, 10000.0), [f32(2, 5, 4, 8)], {"positions": pos})
    op("attention_causal", lambda q, k, v: attention_ref(q, k, v, True), [f32(2, 5, 4, 8), f32(2, 5, 2, 8), f32(2, 5, 2, 8)])
    op("attention_cached", lambda q, k, v: attention_ref(q, k, v, True), [f32(1, 2, 4, 8), f32(1, 6, 4, 8), f32(1, 6, 4, 8)])
    km = torch.tensor([[1, 1, 1, 0, 0, 1], [1, 0, 1, 1, 1, 1]])
    op("attention_masked", lambda q, k, v: attention_ref(q, k, v, False, km), [f32(2, 3, 2, 4), f32(2, 6, 1, 4), f32(2, 6, 1, 4)], {"key_mask": km.float()})
    targets = torch.tensor([3, -100, 0, 10, -100, 7])
    op("cross_entropy", lambda x: F.cross_entropy(x, targets, ignore_index=-100), [f32(6, 11, lo=-2, hi=2)], {"targets": targets})
    op("permute", lambda x: x.permute(2, 0, 1), [f32(2, 3, 4)])
    op("transpose", lambda x: x.transpose(1, 2), [f32(2, 3, 4)])
    op("concat", lambda a, b: torch.cat([a, b], 1), [f32(2, 3, 4), f32(2, 2, 4)])
    op("slice", lambda x: x[:, 1:3], [f32(2, 4, 3)])
    op("reshape", lambda x: x.reshape(4, 6), [f32(2, 3, 4)])
    op("patch_embed", lambda img, w, b: F.conv2d(img, w, b, stride=4).flatten(2).transpose(1, 2), [f32(2, 3, 8, 8), f32(5, 3, 4, 4), f32(5)])
    rows = torch.tensor([4, 0, 2])
    op("gather_rows", lambda x: x.reshape(-1, 3)[rows], [f32(2, 3, 3)], {"rows": rows})
    srows = torch.tensor([1, 4])

    def scatter(x, s):
        y = x.reshape(-1, 3).clone()
        y[srows] = s
        return y.reshape(x.shape)

    op("scatter_rows", scatter, [f32(2, 3, 3), f32(2, 3)], {"rows": srows})
    save_file({k: v.contiguous() for k, v in ops.items()}, os.path.join(TENSOR_FIX, "ops.safetensors"))


# ---------------------------------------------------------------- tiny decoder parity
def tiny_llama(frozen_patterns=()):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                      attention_bias=False, hidden_act="silu")
    cfg._attn_implementation = "eager"
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).double()
    # Norm weights away from 1 so their gradients matter.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.rand_like(p) * 0.5)
    init = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 32, (2, 7), generator=g)
    labels = ids.clone()
    labels[0, :2] = -100
    labels[1, 4] = -100
    import fnmatch
    for n, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(n, pat) for pat in frozen_patterns):
            p.requires_grad_(False)
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {f"grad.{n}": p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for step in range(10):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(loss.item())
    final = {f"final.{n}": p.detach().float().clone() for n, p in model.named_parameters()}
    tensors = {**init, **grads, **final, "input_ids": ids, "labels": labels, "logits": out.logits.detach().float()}
    meta = {"loss": out.loss.item(), "adamw_losses": losses, "lr": 1e-2, "weight_decay": 0.01, "clip": 1.0,
            "frozen": list(frozen_patterns), "config": cfg.to_dict()}
    return tensors, meta


def make_decoder():
    for tag, frozen in [("tiny_llama", ()), ("tiny_llama_frozen", ("model.embed_tokens.*", "model.layers.0.self_attn.*", "model.layers.0.input_layernorm.*"))]:
        tensors, meta = tiny_llama(frozen)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(NN_FIX, f"{tag}.safetensors"))
        with open(os.path.join(NN_FIX, f"{tag}.json"), "w") as f:
            json.dump({k: v for k, v in meta.items() if k != "config"}, f, indent=1)


# ---------------------------------------------------------------- safetensors interop
def make_safetensors():
    torch.manual_seed(3)
    a = torch.randn(3, 5)
    b = torch.randn(7)
    c = torch.randn(2, 2, 2)
    ref = {"a": a, "b": b, "nested.c": c, "empty": torch.zeros(0, 4)}
    save_file(ref, os.path.join(NN_FIX, "py_f32.safetensors"), metadata={"format": "pt", "note": "written by safetensors"})
    save_file({k: v.to(torch.float16) for k, v in ref.items()}, os.path.join(NN_FIX, "py_f16.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in ref.items()}, os.path.join(NN_FIX, "py_bf16.safetensors"))
    # Expected float32 values after each conversion, for the Swift side to compare.
    exp = {}
    for k, v in ref.items():
        exp[f"f32.{k}"] = v
        exp[f"f16.{k}"] = v.to(torch.float16).float()
        exp[f"bf16.{k}"] = v.to(torch.bfloat16).float()
    save_file(exp, os.path.join(NN_FIX, "py_expected.safetensors"))
    # A sharded checkpoint with its index, as transformers writes it.
    shard_dir = os.path.join(NN_FIX, "py_sharded")
    os.makedirs(shard_dir, exist_ok=True)
    save_file({"a": a, "b": b}, os.path.join(shard_dir, "model-00001-of-00002.safetensors"))
    save_file({"nested.c": c}, os.path.join(shard_dir, "model-00002-of-00002.safetensors"))
    index = {"metadata": {"total_size": 4 * (a.numel() + b.numel() + c.numel())},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                            "nested.c": "model-00002-of-00002.safetensors"}}
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    os.makedirs(TENSOR_FIX, exist_ok=True)
    os.makedirs(NN_FIX, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    make_ops()
    torch.set_default_dtype(torch.float32)
    make_safetensors()
    make_decoder()
    print("fixtures written", file=sys.stderr)
