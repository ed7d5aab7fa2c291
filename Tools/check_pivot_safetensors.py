#!/usr/bin/env python3
"""Proves that safetensors files written by Pivot load in Python safetensors + PyTorch.

    ~/.venvs/pivot-ref/bin/python Tools/check_pivot_safetensors.py

Reads the committed Tests/PivotNNTests/Fixtures/pivot_written_*.safetensors (a Swift test
keeps them byte-identical to what Pivot's writer produces) and compares each tensor with
the values the test wrote, converted by PyTorch to the file's dtype.
"""
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Tests", "PivotNNTests", "Fixtures")
expected = {
    "a": torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5 - 1,
    "layer.0.weight": torch.tensor([0.1, -2.75, 3.14159, 1e-3, 65504, -0.0], dtype=torch.float32).reshape(3, 2),
    "scalar": torch.tensor(42, dtype=torch.float32),
}
failures = 0
for dtype, tdtype in [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
    path = os.path.join(FIX, f"pivot_written_{dtype}.safetensors")
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta == {"format": "pt", "writer": "pivot"}, meta
    for name, ref in expected.items():
        got = tensors[name]
        want = ref.to(tdtype)
        ok = got.dtype == tdtype and got.shape == want.shape and torch.equal(got, want)
        print(f"{dtype:5s} {name:15s} {str(tuple(got.shape)):8s} {'ok' if ok else 'MISMATCH'}")
        failures += not ok
print(f"{9 - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
