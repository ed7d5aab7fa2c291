#!/usr/bin/env python3
"""shared/bench/torch_ref.py with the LLM's random weights replaced by an HF folder's, so that
Pivot and PyTorch are timed on the same real checkpoint (`Tools/bench --llm-weights DIR`).

    python Tools/torch_ref_real_weights.py --llm-weights Assets/qwen2.5-0.5b-instruct --scale qwen0.5b --phase decode

Every other argument goes to torch_ref.py unchanged; each JSON line gains "llm_weights".
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.normpath(os.path.join(ROOT, "..", "shared", "bench")))
import torch_ref  # noqa: E402


def main():
    argv = sys.argv[1:]
    if "--llm-weights" not in argv:
        sys.exit("--llm-weights DIR is required")
    i = argv.index("--llm-weights")
    folder = argv[i + 1]
    del argv[i:i + 2]
    build = torch_ref.build

    def build_with_weights(scale, seed=0):
        import torch
        from safetensors.torch import load_file
        m = build(scale, seed)
        state = {k: v.to(torch.float32) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
        missing, unexpected = m.llm.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
        if missing or unexpected:
            sys.exit("%s: missing %s, unexpected %s" % (folder, missing, unexpected))
        m.llm.tie_weights()
        return m

    torch_ref.build = build_with_weights
    # Tag every JSON line torch_ref prints with the weights used.
    real_print = print

    def tagged_print(*a, **k):
        if len(a) == 1 and isinstance(a[0], str) and a[0].startswith("{"):
            d = json.loads(a[0])
            d["llm_weights"] = folder
            a = (json.dumps(d),)
        real_print(*a, **k)

    torch_ref.print = tagged_print
    sys.argv = [sys.argv[0]] + argv
    torch_ref.main()


if __name__ == "__main__":
    main()
