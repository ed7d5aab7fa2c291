"""Minimal safetensors writer for numpy arrays, with bfloat16 support.

numpy has no bfloat16, and torch is not a conversion dependency, so bf16 tensors
are produced here by rounding float32 to the nearest even bfloat16 bit pattern.
"""
import json
import struct

import numpy as np


def float32_to_bf16_bits(array):
    """Round float32 to bfloat16 (round-to-nearest-even); returns uint16 bit patterns."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounding_bias = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding_bias) >> 16).astype(np.uint16)
    # NaN must stay NaN (the rounding could carry it into infinity).
    nan = np.isnan(array)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_bits_to_float32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def save_safetensors(tensors, path, dtype="F32", metadata=None):
    """Write {name: float array} to `path` as F32 or BF16, names in sorted order."""
    assert dtype in ("F32", "BF16")
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if dtype == "BF16":
            raw = float32_to_bf16_bits(array.astype(np.float32)).tobytes()
        else:
            raw = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    # Pad the header with spaces so the data starts 8-byte aligned.
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header_bytes)))
        out.write(header_bytes)
        for raw in blobs:
            out.write(raw)
