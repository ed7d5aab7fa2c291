#!/usr/bin/env python3
"""shared/bench/torch_ref.py with every phase run under torch.autocast("cpu", dtype=torch.bfloat16),
the PyTorch counterpart of Pivot's `--matmul bf16` (`Tools/bench --matmul bf16` runs both).

    python Tools/torch_ref_autocast.py --scale qwen0.5b --phase stage1

Autocast gives linears, matmuls and attention bfloat16 operands (oneDNN, AMX where the CPU has
it); weights, optimizer and the loss stay float32. The calibration probe stays float32 so its
figures still tell the machine's state. Each JSON line gains "autocast": "bf16".
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.normpath(os.path.join(ROOT, "..", "shared", "bench")))
import torch_ref  # noqa: E402


def main():
    import torch

    def under_autocast(fn):
        def run(*a, **k):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(*a, **k)
        return run

    probe = torch_ref.calib_gflops

    def float32_probe(*a, **k):
        with torch.autocast("cpu", enabled=False):
            return probe(*a, **k)

    torch_ref.calib_gflops = float32_probe
    for name in ("phase_train", "phase_prefill", "phase_decode"):
        setattr(torch_ref, name, under_autocast(getattr(torch_ref, name)))
    real_print = print

    def tagged_print(*a, **k):
        if len(a) == 1 and isinstance(a[0], str) and a[0].startswith("{"):
            d = json.loads(a[0])
            d["autocast"] = "bf16"
            a = (json.dumps(d),)
        real_print(*a, **k)

    torch_ref.print = tagged_print
    torch_ref.main()


if __name__ == "__main__":
    main()
