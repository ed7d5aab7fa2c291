#!/usr/bin/env python3
"""Proves `pivot export` output loads in transformers.

    ~/.venvs/pivot-ref/bin/python Tools/check_export.py [EXPORT_DIR]

Loads vision/ (CLIPVisionModel or Dinov2Model), qformer/ (Blip2QFormerModel, plus
projector.safetensors with query_tokens and language_projection) and llm/ (Qwen2ForCausalLM or
LlamaForCausalLM) with from_pretrained, runs the Pivot composition on a fixed image and prompt,
and writes export_tiny_reference.safetensors beside the default fixture for the Swift test.
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Blip2QFormerModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "PivotModelsTests", "Fixtures")
d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(FIX, "export_tiny")

vision = AutoModel.from_pretrained(os.path.join(d, "vision")).float().eval()
qformer = Blip2QFormerModel.from_pretrained(os.path.join(d, "qformer")).float().eval()
llm = AutoModelForCausalLM.from_pretrained(os.path.join(d, "llm")).float().eval()
proj = load_file(os.path.join(d, "qformer", "projector.safetensors"))
print("loaded:", type(vision).__name__, type(qformer).__name__, type(llm).__name__)

g = torch.Generator().manual_seed(7)
size = vision.config.image_size
pixels = torch.randn(1, 3, size, size, generator=g)
ids = torch.randint(0, llm.config.vocab_size, (1, 6), generator=g)
with torch.no_grad():
    img = vision(pixel_values=pixels).last_hidden_state
    if hasattr(vision, "post_layernorm"):
        img = vision.post_layernorm(img)
    q = qformer(query_embeds=proj["query_tokens"], encoder_hidden_states=img).last_hidden_state
    soft = torch.nn.functional.linear(q, proj["language_projection.weight"], proj["language_projection.bias"])
    emb = torch.cat([soft, llm.get_input_embeddings()(ids)], 1)
    logits = llm(inputs_embeds=emb).logits[0]
if len(sys.argv) == 1:
    save_file({"pixels": pixels, "input_ids": ids[0], "logits": logits.contiguous()}, os.path.join(FIX, "export_tiny_reference.safetensors"))
print("logits", tuple(logits.shape), "ok")
