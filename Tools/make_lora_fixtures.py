#!/usr/bin/env python3
"""LoRA fixtures from PEFT + transformers, and PEFT's verdict on what Pivot writes.

    ~/.venvs/pivot-ref/bin/python Tools/make_lora_fixtures.py      (needs .build/release/pivot)

For a tiny random Qwen2 (q/k/v biases) and LLaMA, in float32:
  1. base/ (config.json + model.safetensors) and peft_adapter/ (PEFT's save_pretrained: r 4,
     alpha 8, every attention and MLP projection, lora_B drawn nonzero so it matters);
     reference.safetensors: input ids, labels, the logits, the loss, every lora_A/lora_B gradient,
     the merged model's logits (merge_and_unload), and the losses of 10 AdamW steps on the adapters.
  2. `pivot export --model base --adapter peft_adapter --out pivot_export`: Pivot reads PEFT's
     folder and writes its own adapter/ and the merged folder; PEFT loads pivot_export/adapter onto
     base/ and transformers loads pivot_export as a plain checkpoint; their logits go into
     reference.safetensors too (peft_on_pivot_adapter, transformers_on_pivot_merged).
The Swift tests (Tests/PivotTrainTests/LoRATests.swift) compare Pivot against all of them.
"""
import json
import os
import shutil
import subprocess

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "PivotTrainTests", "Fixtures", "lora")
PIVOT = os.environ.get("PIVOT", os.path.join(ROOT, ".build", "release", "pivot"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False)
LR, WD, STEPS = 1e-2, 0.01, 10


def make(name, model):
    out = os.path.join(FIX, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model.eval()
    model.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    peft.save_pretrained(os.path.join(out, "peft_adapter"))
    os.remove(os.path.join(out, "peft_adapter", "README.md"))  # PEFT's model-card template

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, COMMON["vocab_size"], (2, 10), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt that does not count
    ref = {"ids": ids.to(torch.int32), "labels": labels.to(torch.int32)}
    out_ = peft(input_ids=ids, labels=labels)
    ref["logits"] = out_.logits.detach().contiguous()
    ref["loss"] = out_.loss.detach().reshape(1)
    out_.loss.backward()
    for n, p in peft.named_parameters():
        if p.grad is not None:
            ref["grad." + n.replace(".default", "")] = p.grad.detach().contiguous()
    peft.zero_grad()

    # Ten AdamW steps on the adapters, the same batch each time (PyTorch's decoupled decay).
    state = {n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = peft(input_ids=ids, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
    ref["adamw_losses"] = torch.tensor(losses, dtype=torch.float64).float()
    with torch.no_grad():  # back to the saved adapter for the merge
        for n, p in peft.named_parameters():
            if n in state:
                p.copy_(state[n])
    merged = peft.merge_and_unload()
    with torch.no_grad():
        ref["merged_logits"] = merged(input_ids=ids).logits.contiguous()

    # What Pivot writes, read back by PEFT and transformers.
    export = os.path.join(out, "pivot_export")
    rel = os.path.relpath(out, ROOT)  # the adapter records its base as given: keep it relative to the checkout
    subprocess.run([PIVOT, "export", "--model", os.path.join(rel, "base"), "--adapter", os.path.join(rel, "peft_adapter"),
                    "--out", os.path.join(rel, "pivot_export")], check=True, cwd=ROOT)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "base"), torch_dtype=torch.float32)
    on_pivot = PeftModel.from_pretrained(base, os.path.join(export, "adapter"))
    on_pivot.eval()
    with torch.no_grad():
        ref["peft_on_pivot_adapter"] = on_pivot(input_ids=ids).logits.contiguous()
        plain = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32)
        ref["transformers_on_pivot_merged"] = plain(input_ids=ids).logits.contiguous()
    save_file(ref, os.path.join(out, "reference.safetensors"))
    json.dump({"r": 4, "lora_alpha": 8, "targets": TARGETS, "lr": LR, "weight_decay": WD, "steps": STEPS,
               "adamw_losses": losses, "loss": ref["loss"].item()}, open(os.path.join(out, "reference.json"), "w"), indent=1)
    print(name, "loss", ref["loss"].item(), "adamw", losses[0], "→", losses[-1],
          "pivot adapter Δ", (ref["peft_on_pivot_adapter"] - ref["logits"]).abs().max().item(),
          "pivot merged Δ", (ref["transformers_on_pivot_merged"] - ref["logits"]).abs().max().item())


torch.manual_seed(0)
make("qwen2", Qwen2ForCausalLM(Qwen2Config(**COMMON)))
torch.manual_seed(0)
make("llama", LlamaForCausalLM(LlamaConfig(**COMMON, attention_bias=False, mlp_bias=False)))
