#!/usr/bin/env python3
"""PyTorch + PEFT beside `pivot bench --phase stage2 --lora-rank R`: shared/bench/torch_ref.py's
composition, shapes and repetitions, with PEFT LoRA (r, alpha, every attention and MLP projection
of the LLM) instead of the full LLM training. Prints one JSON line with torch_ref.py's fields.

    ~/.venvs/pivot-ref/bin/python Tools/torch_ref_lora.py --scale qwen0.5b --r 16 --alpha 32
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "bench"))
import torch_ref as ref  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="qwen0.5b")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    import statistics

    import torch
    from peft import LoraConfig, inject_adapter_in_model
    torch.set_num_threads(args.threads)

    t_build = time.perf_counter()
    m = ref.build(args.scale)
    pv = m.cfgs["pivot"]
    B, T, nq = pv["batch_size"], pv["text_len"], pv["num_query_tokens"]
    pixel_values, ids = ref.make_inputs(m, B, T)
    labels = torch.cat([torch.full((B, nq), -100, dtype=torch.long), ids], dim=1)
    for p in m.llm.parameters():
        p.requires_grad_(False)
    m.llm = inject_adapter_in_model(LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS), m.llm)
    adapters = [p for n, p in m.llm.named_parameters() if "lora_" in n]
    for p in adapters:
        p.requires_grad_(True)
    t_build = time.perf_counter() - t_build
    trainable = [m.query_tokens] + list(m.qformer.parameters()) + list(m.proj.parameters()) + adapters
    m.qformer.train(); m.proj.train(); m.llm.train(); m.vision.eval()
    opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    rss_after_build = ref.cur_rss_mib()

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        img = ref.image_embeds(m, pixel_values)
        soft = ref.soft_tokens(m, img)
        x = torch.cat([soft, m.llm.get_input_embeddings()(ids)], dim=1)
        loss = m.llm(inputs_embeds=x, labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, float(loss.detach())

    warmup, reps = ref.DEFAULT_REPS[args.scale]["stage2"]
    warmup = args.warmup if args.warmup is not None else warmup
    reps = args.reps if args.reps is not None else reps
    losses, times = [], []
    ref.CALIB["calib_gflops_before"] = ref.calib_gflops()  # the machine's speed, as torch_ref.py records it
    for i in range(warmup):
        _, l = step(); losses.append(l)
    for i in range(reps):
        t, l = step(); losses.append(l); times.append(t)
        print("  rep %d: %.3fs loss %.4f" % (i, t, l), file=sys.stderr)
    ref.CALIB["calib_gflops_after"] = ref.calib_gflops()
    med = statistics.median(times)
    ref.emit({
        "phase": "stage2", "scale": args.scale, "metric": "train_step", "impl": "pytorch+peft",
        "lora_rank": args.r, "lora_alpha": args.alpha, "lora_targets": TARGETS,
        "B": B, "T": T, "num_query_tokens": nq, "seq_len": nq + T,
        "seconds_median": med, "seconds_min": min(times), "seconds_max": max(times), "reps": len(times),
        "text_tokens_per_s": B * T / med, "trainable_params": sum(p.numel() for p in trainable),
        "losses": [round(x, 5) for x in losses], "build_s": t_build,
        "rss_after_build_mib": rss_after_build, "peak_rss_mib": ref.peak_rss_mib(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    })


if __name__ == "__main__":
    main()
