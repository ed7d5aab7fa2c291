#!/usr/bin/env python3
"""Reference fixtures for the bridges between the vision tower and the LLM, made by `transformers`
in float32 so the Swift tests need no Python:

    ~/.venvs/pivot-ref/bin/python Tools/make_bridge_fixtures.py

Writes into Tests/PivotModelsTests/Fixtures/:

- bert_tiny/ (config.json + model.safetensors): a tiny random `BertModel` (hidden 16, 2 layers,
  4 heads, intermediate 32), the checkpoint a Q-Former starts from as in LAVIS's `init_Qformer`.
- mlp_projector_tiny.safetensors + .json: LLaVA-1.5's `mlp2x_gelu` projector
  (`LlavaMultiModalProjector`) on 2-D average-pooled patch tokens, with gradients.
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (BertConfig, BertModel, Blip2QFormerConfig, Blip2QFormerModel, CLIPVisionConfig, LlamaConfig,
                          LlavaConfig)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "PivotModelsTests", "Fixtures")


def perturb_norms(model):
    """Random-init norms are 1/0: move them so a wrong mapping cannot pass by coincidence."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n:
                p.add_(torch.rand_like(p) * 0.4 - 0.2)


def bert_fixture():
    torch.manual_seed(20)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                     max_position_embeddings=16, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
    m = BertModel(cfg).float()
    perturb_norms(m)
    out = os.path.join(FIX, "bert_tiny")
    m.save_pretrained(out, safe_serialization=True)
    print(f"bert_tiny: {len(m.state_dict())} tensors -> {out}")
    check_mapping_against_blip2(cfg, m.state_dict())


# BERT → Blip2QFormerModel names, as LAVIS's init_Qformer leaves them (the *_query branch copied from
# BERT's text branch); QFormerInit.swift's table is the same. Checked here against transformers' own
# module so a name that Blip2QFormerModel does not have cannot hide in both places.
RENAMES = [("embeddings.LayerNorm.", "layernorm."), (".attention.self.", ".attention.attention."),
           (".intermediate.", ".intermediate_query."), (".output.dense.", ".output_query.dense."),
           (".output.LayerNorm.", ".output_query.LayerNorm.")]


def check_mapping_against_blip2(bert_cfg, bert_state):
    mapped = {}
    for k, v in bert_state.items():
        if k.startswith(("embeddings.word_", "embeddings.position_", "embeddings.token_type_", "pooler.")):
            continue
        name = k
        for old, new in RENAMES:
            if ".attention.output." in name and old.startswith(".output."):
                continue  # attention.output.* keeps its name
            name = name.replace(old, new)
        mapped[name] = v
    q = Blip2QFormerModel(Blip2QFormerConfig(hidden_size=bert_cfg.hidden_size, num_hidden_layers=bert_cfg.num_hidden_layers,
                                             num_attention_heads=bert_cfg.num_attention_heads,
                                             intermediate_size=bert_cfg.intermediate_size, cross_attention_frequency=2,
                                             encoder_hidden_size=24))
    result = q.load_state_dict(mapped, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    left = [k for k in result.missing_keys if ".crossattention." not in k]
    assert not left, f"Blip2QFormerModel parameters not covered by the BERT mapping: {left}"


def mlp_projector_fixture():
    torch.manual_seed(21)
    B, G, P, VH, TH = 2, 4, 2, 8, 12  # batch, grid side, pooled side, vision width, text width
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=VH, intermediate_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=16, patch_size=4),
                      text_config=LlamaConfig(hidden_size=TH, intermediate_size=24, num_hidden_layers=1,
                                              num_attention_heads=2, vocab_size=32),
                      projector_hidden_act="gelu", multimodal_projector_bias=True, vision_feature_layer=-2)
    proj = LlavaMultiModalProjector(cfg).float()
    assert isinstance(cfg.vision_feature_layer, int)  # one feature layer: linear_1 is (TH, VH)

    features = torch.randn(B, 1 + G * G, VH, requires_grad=True)  # CLS row first, then the grid row-major
    patches = features[:, 1:]  # (B, G*G, VH)
    grid = patches.reshape(B, G, G, VH).permute(0, 3, 1, 2)  # (B, VH, G, G)
    pooled = F.avg_pool2d(grid, kernel_size=G // P, stride=G // P)  # (B, VH, P, P)
    pooled = pooled.permute(0, 2, 3, 1).reshape(B, P * P, VH)  # (B, P*P, VH), row-major
    pooled.retain_grad()
    output = proj(pooled)  # (B, P*P, TH)
    seed = torch.randn_like(output)
    (output * seed).sum().backward()
    with torch.no_grad():
        output_unpooled = proj(patches)  # (B, G*G, TH)

    t = {f"multi_modal_projector.{n}": p.detach().clone() for n, p in proj.named_parameters()}
    t.update({f"grad.multi_modal_projector.{n}": p.grad.clone() for n, p in proj.named_parameters()})
    t.update({"features": features, "pooled": pooled, "output": output, "output_unpooled": output_unpooled, "seed": seed,
              "grad.features": features.grad, "grad.pooled": pooled.grad})
    assert torch.all(features.grad[:, 0] == 0)
    save_file({k: v.detach().float().contiguous() for k, v in t.items()}, os.path.join(FIX, "mlp_projector_tiny.safetensors"))
    meta = {"config": {"vision_hidden_size": VH, "text_hidden_size": TH, "projector_hidden_act": cfg.projector_hidden_act,
                       "multimodal_projector_bias": cfg.multimodal_projector_bias, "batch_size": B, "grid": [G, G],
                       "pooled_grid": [P, P], "pool_kernel": G // P, "pool_stride": G // P, "cls_rows": 1},
            "layout": "features (B, 1+G*G, VH): row 0 CLS, then patch (r, c) at 1 + r*G + c; pooled (B, P*P, VH): "
                      "avg_pool2d over the G×G grid, cell (r, c) at r*P + c; output = projector(pooled); "
                      "output_unpooled = projector(features[:, 1:]); loss = sum(output * seed)",
            "torch": torch.__version__.split("+")[0], "transformers": __import__("transformers").__version__}
    with open(os.path.join(FIX, "mlp_projector_tiny.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"mlp_projector_tiny: {', '.join(f'{k} {tuple(v.shape)}' for k, v in t.items())}")


if __name__ == "__main__":
    bert_fixture()
    mlp_projector_fixture()
