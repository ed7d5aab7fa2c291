#!/usr/bin/env python3
"""Reference fixtures for PivotModels: each component and the composed model on tiny random
configs (the `tiny` scale of shared/bench), run by `transformers` in float32.

    ~/.venvs/pivot-ref/bin/python Tools/make_model_fixtures.py

Writes Tests/PivotModelsTests/Fixtures/<name>.safetensors (weights with HF names, inputs,
outputs, gradients) and <name>.json (configs, losses, generated ids).
"""
import json
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file
from transformers import (Blip2QFormerConfig, Blip2QFormerModel, CLIPVisionConfig, CLIPVisionModel, Dinov2Config,
                          Dinov2Model, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "PivotModelsTests", "Fixtures")
BENCH = os.path.join(ROOT, "..", "shared", "bench", "configs", "tiny")
# The bench's tiny configs, copied so the fixtures do not depend on shared/ being present.
TINY = {
    "vision": {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "projection_dim": 512,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_channels": 3, "image_size": 32, "patch_size": 8,
               "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "attention_dropout": 0.0, "initializer_range": 0.02,
               "initializer_factor": 1.0},
    "qformer": {"model_type": "blip_2_qformer", "vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 128, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 512, "initializer_range": 0.02,
                "layer_norm_eps": 1e-12, "cross_attention_frequency": 1, "encoder_hidden_size": 64,
                "use_qformer_text_input": False},
    "llm": {"model_type": "qwen2", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 4096,
            "initializer_range": 0.02, "rms_norm_eps": 1e-06, "tie_word_embeddings": True, "rope_theta": 10000.0,
            "attention_dropout": 0.0},
    "num_query_tokens": 8, "batch_size": 2, "text_len": 16,
}


def save(name, tensors, meta):
    save_file({k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous() for k, v in tensors.items()},
              os.path.join(FIX, f"{name}.safetensors"))
    with open(os.path.join(FIX, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)


def perturb_norms(model):
    """Random-init norms are 1/0: move them so their gradients and effects are visible."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n.lower() or "layer_scale" in n:
                p.add_(torch.rand_like(p) * 0.4 - 0.2)


def weights(model, prefix=""):
    return {prefix + n: p.detach().clone() for n, p in model.named_parameters()}


def grads(model, prefix=""):
    return {"grad." + prefix + n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def clip_fixture():
    torch.manual_seed(10)
    cfg = CLIPVisionConfig(**{k: v for k, v in TINY["vision"].items() if k != "model_type"})
    cfg._attn_implementation = "eager"
    m = CLIPVisionModel(cfg).float()
    perturb_norms(m)
    pixels = torch.randn(2, 3, 32, 32)
    out = m(pixel_values=pixels, output_hidden_states=True)
    feats = m.post_layernorm(out.last_hidden_state)
    seed = torch.randn_like(feats)
    (feats * seed).sum().backward()
    t = {**weights(m), **grads(m), "pixels": pixels, "last_hidden_state": out.last_hidden_state, "features": feats,
         "hidden_minus2": out.hidden_states[-2], "seed": seed}
    save("clip_tiny", t, {"config": TINY["vision"]})


def dinov2_fixture():
    torch.manual_seed(11)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=28,
                       patch_size=7, layerscale_value=0.5, layer_norm_eps=1e-6, hidden_act="gelu")
    cfg._attn_implementation = "eager"
    m = Dinov2Model(cfg).float()
    perturb_norms(m)
    pixels = torch.randn(2, 3, 21, 21)  # a 3×3 grid: positions interpolated from the stored 4×4
    out = m(pixel_values=pixels).last_hidden_state
    seed = torch.randn_like(out)
    (out * seed).sum().backward()
    d = cfg.to_dict()
    meta = {k: d[k] for k in ["hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "image_size", "patch_size",
                              "layerscale_value", "layer_norm_eps", "hidden_act", "qkv_bias", "initializer_range"]}
    meta["model_type"] = "dinov2"
    save("dinov2_tiny", {**weights(m), **grads(m), "pixels": pixels, "last_hidden_state": out, "seed": seed}, {"config": meta})


def qformer_fixture():
    torch.manual_seed(12)
    cfg = Blip2QFormerConfig(**{k: v for k, v in TINY["qformer"].items() if k != "model_type"})
    cfg.cross_attention_frequency = 2  # layer 0 cross-attends, layer 1 does not
    cfg._attn_implementation = "eager"
    m = Blip2QFormerModel(cfg).float()
    perturb_norms(m)
    queries = torch.randn(2, 8, 64, requires_grad=True)
    image = torch.randn(2, 17, 64, requires_grad=True)
    out = m(query_embeds=queries, encoder_hidden_states=image).last_hidden_state
    seed = torch.randn_like(out)
    (out * seed).sum().backward()
    meta = dict(TINY["qformer"], cross_attention_frequency=2)
    save("qformer_tiny", {**weights(m), **grads(m), "queries": queries, "image": image, "out": out, "seed": seed,
                          "grad.queries": queries.grad, "grad.image": image.grad}, {"config": meta})


def decoder_fixture(name, cls, cfg_dict, steps=5):
    torch.manual_seed(13)
    cfg_cls = Qwen2Config if cls is Qwen2ForCausalLM else LlamaConfig
    cfg = cfg_cls(**{k: v for k, v in cfg_dict.items() if k != "model_type"})
    cfg._attn_implementation = "eager"
    m = cls(cfg).float()
    perturb_norms(m)
    init = weights(m)
    g = torch.Generator().manual_seed(14)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, 10:] = -100
    out = m(input_ids=ids, labels=labels)
    out.loss.backward()
    gr = grads(m)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = m(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Greedy generation from the initial weights, as transformers' generate does it.
    m.load_state_dict({k: v for k, v in init.items()}, strict=False)
    if cfg.tie_word_embeddings:
        m.tie_weights()
    prompt = torch.randint(0, cfg.vocab_size, (1, 6), generator=g)
    with torch.no_grad():
        gen = m.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                         eos_token_id=None)[0, 6:].tolist()
    meta = {"config": cfg_dict, "loss": out.loss.item(), "adamw_losses": losses, "lr": 3e-3, "weight_decay": 0.01,
            "prompt": prompt[0].tolist(), "greedy": gen}
    save(name, {**init, **gr, "input_ids": ids, "labels": labels, "logits": out.logits}, meta)


def build_composed():
    """The bench's composition (torch_ref.py: build): frozen CLIP → post-LN on every token →
    Q-Former over learned queries → Linear → [soft ; text] → Qwen2, labels −100 on the soft part.
    Returns the module, its initial weights, the batch and the loss function."""
    cfgs = TINY
    vcfg = CLIPVisionConfig(**{k: v for k, v in cfgs["vision"].items() if k != "model_type"})
    qcfg = Blip2QFormerConfig(**{k: v for k, v in cfgs["qformer"].items() if k != "model_type"})
    lcfg = Qwen2Config(**{k: v for k, v in cfgs["llm"].items() if k != "model_type"})
    for c in (vcfg, qcfg, lcfg):
        c._attn_implementation = "eager"
    torch.manual_seed(0)
    vision = CLIPVisionModel(vcfg).float().eval()
    torch.manual_seed(1)
    qformer = Blip2QFormerModel(qcfg).float()
    nq = cfgs["num_query_tokens"]
    torch.manual_seed(2)
    query_tokens = nn.Parameter(torch.zeros(1, nq, qcfg.hidden_size).normal_(0.0, qcfg.initializer_range))
    proj = nn.Linear(qcfg.hidden_size, lcfg.hidden_size)
    torch.manual_seed(3)
    llm = Qwen2ForCausalLM(lcfg).float()
    for mod in (vision, qformer, llm):
        perturb_norms(mod)
    m = nn.Module()
    m.vision_tower, m.qformer, m.language_projection, m.language_model = vision, qformer, proj, llm
    m.query_tokens = query_tokens
    init = {n: p.detach().clone() for n, p in m.named_parameters()}
    g = torch.Generator().manual_seed(1234)
    B, T = cfgs["batch_size"], cfgs["text_len"]
    pixels = torch.randn(B, 3, 32, 32, generator=g)
    ids = torch.randint(0, lcfg.vocab_size, (B, T), generator=g)

    def loss_of():  # through m's attributes, so modules PEFT wraps in place are the ones called
        with torch.no_grad():
            img = vision.post_layernorm(vision(pixel_values=pixels).last_hidden_state)
        q = m.qformer(query_embeds=m.query_tokens.expand(B, -1, -1), encoder_hidden_states=img).last_hidden_state
        soft = m.language_projection(q)
        emb = torch.cat([soft, m.language_model.get_input_embeddings()(ids)], 1)
        labels = torch.cat([torch.full((B, nq), -100), ids], 1)
        return m.language_model(inputs_embeds=emb, labels=labels).loss

    return m, init, pixels, ids, loss_of


def adamw_losses(m, loss_of, steps=10):
    """The losses of `steps` AdamW steps (lr 1e-3, decay 0.01) on m's trainable parameters."""
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        l = loss_of()
        l.backward()
        opt.step()
        losses.append(l.item())
    return losses


def composed_fixture():
    cfgs = TINY
    m, init, pixels, ids, loss_of = build_composed()
    vision, qformer, proj, llm, query_tokens = m.vision_tower, m.qformer, m.language_projection, m.language_model, m.query_tokens
    nq = cfgs["num_query_tokens"]
    meta = {"config": cfgs}
    tensors = {**init, "pixels": pixels, "input_ids": ids}
    for stage, trainable in [("stage1", ("qformer.", "query_tokens", "language_projection.")),
                             ("stage2", ("qformer.", "query_tokens", "language_projection.", "language_model."))]:
        m.load_state_dict(init, strict=False)
        llm.tie_weights()
        for n, p in m.named_parameters():
            p.requires_grad_(n.startswith(trainable))
            p.grad = None
        loss = loss_of()
        loss.backward()
        tensors.update({f"{stage}.grad.{n}": p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        meta[f"{stage}_loss"] = loss.item()
        meta[f"{stage}_adamw_losses"] = adamw_losses(m, loss_of)
        meta[f"{stage}_trainable"] = list(trainable)
    # Greedy generation with an image, from the initial weights.
    m.load_state_dict(init, strict=False)
    llm.tie_weights()
    with torch.no_grad():
        img = vision.post_layernorm(vision(pixel_values=pixels[:1]).last_hidden_state)
        soft = proj(qformer(query_embeds=query_tokens, encoder_hidden_states=img).last_hidden_state)
        prompt = ids[:1, :5]
        emb = torch.cat([soft, llm.get_input_embeddings()(prompt)], 1)
        gen = llm.generate(inputs_embeds=emb, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                           eos_token_id=None)[0].tolist()
    meta["image_prompt"] = prompt[0].tolist()
    meta["image_greedy"] = gen[-10:]
    save("composed_tiny", tensors, meta)


def composed_lora_fixture():
    """Stage 2 with PEFT LoRA (r 4, alpha 8) on every LLM projection and on the bridge's
    projection; the Q-Former and queries train in full, the adapted weights are frozen. lora_B is
    drawn nonzero so the adapters change the loss from the first step."""
    from peft import LoraConfig, inject_adapter_in_model
    m, init, pixels, ids, loss_of = build_composed()
    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                        target_modules=r"(language_model\..*_proj)|language_projection")
    m = inject_adapter_in_model(config, m)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    for n, p in m.named_parameters():
        adapter = "lora_" in n
        bridge = n.startswith(("qformer.", "query_tokens")) or (n.startswith("language_projection.") and "base_layer" not in n)
        p.requires_grad_(adapter or bridge)
    tensors = {n.replace(".default", ""): p.detach().clone() for n, p in m.named_parameters() if "lora_" in n}
    loss = loss_of()
    loss.backward()
    tensors.update({"grad." + n.replace(".default", "").replace(".base_layer", ""): p.grad.clone()
                    for n, p in m.named_parameters() if p.grad is not None})
    meta = {"loss": loss.item(), "r": 4, "lora_alpha": 8, "trainable": sorted(n.replace(".default", "") for n, p in m.named_parameters() if p.requires_grad)}
    meta["adamw_losses"] = adamw_losses(m, loss_of)
    save("composed_tiny_lora", tensors, meta)


if __name__ == "__main__":
    import sys
    os.makedirs(FIX, exist_ok=True)
    if sys.argv[1:] == ["composed_lora"]:  # only the LoRA fixture (needs peft)
        composed_lora_fixture()
        sys.exit(0)
    clip_fixture()
    dinov2_fixture()
    qformer_fixture()
    decoder_fixture("qwen2_tiny", Qwen2ForCausalLM, TINY["llm"])
    llama = dict(TINY["llm"], model_type="llama", tie_word_embeddings=False, attention_bias=False, num_key_value_heads=1)
    decoder_fixture("llama_tiny", LlamaForCausalLM, llama)
    composed_fixture()
    composed_lora_fixture()
    print("model fixtures written")
