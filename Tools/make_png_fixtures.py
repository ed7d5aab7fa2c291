#!/usr/bin/env python3
"""Makes the PNG fixtures of PivotData's tests, with Pillow's decoding as the reference.

  Tests/PivotDataTests/Fixtures/png/
    <kind>.png        a 7 x 5 image of every PNG kind: RGB, RGBA, palette with and without tRNS
                      (8- and 4-bit), grey at 1, 2, 8 and 16 bits, grey with tRNS, grey + alpha
                      (8 and 16 bits), RGB with tRNS, 16-bit RGB and RGBA, and Adam7-interlaced
                      variants; written by the small encoder below (every filter type appears),
                      plus two that Pillow itself writes
    <kind>.rgba       what Pillow decodes: Image.open(...).convert("RGBA").tobytes(), (H, W, 4)
    bomb.png          a valid header claiming 100000 x 100000 with almost no data
    parity_rgb.png    a 61 x 37 RGB PNG, and parity_rgb.20.f32 what CLIPImageProcessorPil
                      (shortest edge 20, crop 20 x 20) makes of it: float32 (3, 20, 20), little-endian
    manifest.json     the kinds, their sizes and whether they carry transparency

One deliberate difference: Pillow opens 16-bit grey as mode I;16 and its convert("RGBA") clips
the 16-bit values to 255 (all but the darkest pixels white). Pivot keeps the high byte, as
Pillow itself does for 16-bit RGB, RGBA and grey + alpha, so gray16's reference is the high
byte of Pillow's I;16 array (checked against the raw samples here).

Run with the reference venv:
  ~/.venvs/pivot-ref/bin/python Tools/make_png_fixtures.py
"""
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "Tests", "PivotDataTests", "Fixtures", "png")
WIDTH, HEIGHT = 7, 5

# Adam7: (x start, y start, x step, y step) of each pass.
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def pack_row(samples, bit_depth):
    """One row of samples (ints) → bytes at `bit_depth` bits per sample, big-endian."""
    if bit_depth == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    if bit_depth == 8:
        return bytes(samples)
    per_byte = 8 // bit_depth
    out = bytearray()
    for start in range(0, len(samples), per_byte):
        byte = 0
        group = samples[start:start + per_byte]
        for index, sample in enumerate(group):
            byte |= sample << (8 - bit_depth * (index + 1))
        out.append(byte)
    return bytes(out)


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def filter_rows(rows, bytes_per_pixel, first_type):
    """Filters each row with type (first_type + row) % 5, so every filter is exercised."""
    out = bytearray()
    previous = bytes(len(rows[0])) if rows else b""
    for index, row in enumerate(rows):
        kind = (first_type + index) % 5
        filtered = bytearray()
        for i, x in enumerate(row):
            a = row[i - bytes_per_pixel] if i >= bytes_per_pixel else 0
            b = previous[i]
            c = previous[i - bytes_per_pixel] if i >= bytes_per_pixel else 0
            predictor = [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]
            filtered.append((x - predictor) & 0xFF)
        out.append(kind)
        out += filtered
        previous = row
    return bytes(out)


def write_png(path, samples, bit_depth, color_type, interlace=False, extra=b""):
    """samples: (H, W, channels) integer array in the file's sample values."""
    height, width = samples.shape[0], samples.shape[1]
    channels = CHANNELS[color_type]
    bytes_per_pixel = max(1, channels * bit_depth // 8)
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = b""
    for number, (x0, y0, dx, dy) in enumerate(passes):
        sub = samples[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue  # empty passes carry no filter bytes
        rows = [pack_row([int(v) for v in sub[y].reshape(-1)], bit_depth) for y in range(sub.shape[0])]
        raw += filter_rows(rows, bytes_per_pixel, number)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 1 if interlace else 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra
    compressed = zlib.compress(raw, 9)
    # Two IDAT chunks, so the decoder has to join them.
    half = len(compressed) // 2
    data += chunk(b"IDAT", compressed[:half]) + chunk(b"IDAT", compressed[half:]) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def kinds(rng):
    h, w = HEIGHT, WIDTH
    rgb8 = rng.integers(0, 256, (h, w, 3))
    alpha8 = rng.integers(0, 256, (h, w, 1))
    alpha8[0, 0] = 0
    alpha8[0, 1] = 255
    alpha8[1, 0] = 128
    grey8 = rng.integers(0, 256, (h, w, 1))
    palette = rng.integers(0, 256, (16, 3))
    indices = rng.integers(0, 16, (h, w, 1))
    plte = chunk(b"PLTE", bytes(int(v) for v in palette.reshape(-1)))
    trns_palette = chunk(b"tRNS", bytes([0, 64, 128, 200, 255, 10]))  # entries 6.. stay opaque
    rgb16 = rng.integers(0, 65536, (h, w, 3))
    alpha16 = rng.integers(0, 65536, (h, w, 1))
    grey16 = rng.integers(0, 65536, (h, w, 1))
    key_grey = int(grey8[2, 3, 0])
    key_rgb = [int(v) for v in rgb8[1, 2]]
    return {
        # name: (samples, bit depth, colour type, interlaced, extra chunks)
        "rgb8": (rgb8, 8, 2, False, b""),
        "rgba8": (np.concatenate([rgb8, alpha8], 2), 8, 6, False, b""),
        "palette8": (indices, 8, 3, False, plte),
        "palette8_trns": (indices, 8, 3, False, plte + trns_palette),
        "palette4_trns": (indices, 4, 3, False, plte + trns_palette),
        "gray1": (rng.integers(0, 2, (h, w, 1)), 1, 0, False, b""),
        "gray2": (rng.integers(0, 4, (h, w, 1)), 2, 0, False, b""),
        "gray8": (grey8, 8, 0, False, b""),
        "gray8_trns": (grey8, 8, 0, False, chunk(b"tRNS", struct.pack(">H", key_grey))),
        "gray_alpha8": (np.concatenate([grey8, alpha8], 2), 8, 4, False, b""),
        "rgb8_trns": (rgb8, 8, 2, False, chunk(b"tRNS", struct.pack(">HHH", *key_rgb))),
        "rgb16": (rgb16, 16, 2, False, b""),
        "rgba16": (np.concatenate([rgb16, alpha16], 2), 16, 6, False, b""),
        "gray16": (grey16, 16, 0, False, b""),
        "gray_alpha16": (np.concatenate([grey16, alpha16], 2), 16, 4, False, b""),
        "rgb8_interlaced": (rgb8, 8, 2, True, b""),
        "rgba8_interlaced": (np.concatenate([rgb8, alpha8], 2), 8, 6, True, b""),
        "palette4_trns_interlaced": (indices, 4, 3, True, plte + trns_palette),
        "rgb16_interlaced": (rgb16, 16, 2, True, b""),
    }


def pillow_rgba(path, name, samples):
    image = Image.open(path)
    if image.mode == "I;16":
        # See the note at the top: the high byte, not Pillow's clipping.
        high = (np.array(image).astype(np.uint32) >> 8).astype(np.uint8)
        assert np.array_equal(high, (samples[:, :, 0] >> 8).astype(np.uint8)), name
        rgba = np.stack([high, high, high, np.full_like(high, 255)], 2)
        return rgba.tobytes(), image.mode
    rgba = image.convert("RGBA").tobytes()
    if name in ("rgb16", "rgba16", "rgb16_interlaced", "gray_alpha16"):
        # Pillow keeps the high byte of each 16-bit sample: what libpng's strip_16 does too.
        high = (samples >> 8).astype(np.uint8)
        array = np.frombuffer(rgba, np.uint8).reshape(HEIGHT, WIDTH, 4)
        if name == "gray_alpha16":
            assert np.array_equal(array[:, :, 0], high[:, :, 0]) and np.array_equal(array[:, :, 3], high[:, :, 1])
        else:
            assert np.array_equal(array[:, :, :high.shape[2]], high), name
    return rgba, image.mode


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    manifest = {"pillow": Image.__version__, "width": WIDTH, "height": HEIGHT, "kinds": []}
    for name, (samples, bit_depth, color_type, interlace, extra) in kinds(rng).items():
        path = os.path.join(OUT, name + ".png")
        write_png(path, samples, bit_depth, color_type, interlace, extra)
        rgba, mode = pillow_rgba(path, name, samples)
        with open(os.path.join(OUT, name + ".rgba"), "wb") as f:
            f.write(rgba)
        has_alpha = color_type in (4, 6) or b"tRNS" in extra
        manifest["kinds"].append({"name": name, "mode": mode, "bitDepth": bit_depth, "colorType": color_type,
                                  "interlaced": interlace, "hasAlpha": has_alpha})

    # Two that Pillow writes itself (its own filter choice and zlib settings).
    smooth = np.clip(rng.normal(128, 60, (HEIGHT, WIDTH, 4)), 0, 255).astype(np.uint8)
    for name, mode in [("pillow_rgb", "RGB"), ("pillow_rgba", "RGBA")]:
        path = os.path.join(OUT, name + ".png")
        Image.fromarray(smooth[:, :, :len(mode)], mode).save(path, optimize=True)
        with open(os.path.join(OUT, name + ".rgba"), "wb") as f:
            f.write(Image.open(path).convert("RGBA").tobytes())
        manifest["kinds"].append({"name": name, "mode": mode, "bitDepth": 8, "colorType": 6 if mode == "RGBA" else 2,
                                  "interlaced": False, "hasAlpha": mode == "RGBA"})

    # A decompression bomb's header: 100000 x 100000 RGBA claimed, one empty row of data.
    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 6, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(401)))
            + chunk(b"IEND", b""))
    with open(os.path.join(OUT, "bomb.png"), "wb") as f:
        f.write(bomb)

    # Full-path parity: Pillow bicubic resize + centre crop + CLIP normalisation.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    y, x = np.mgrid[0:37, 0:61]
    base = np.stack([x * 4, y * 6, (x + y) * 2], 2) + rng.integers(0, 40, (37, 61, 3))
    parity = np.clip(base, 0, 255).astype(np.uint8)
    path = os.path.join(OUT, "parity_rgb.png")
    Image.fromarray(parity, "RGB").save(path)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 20}, crop_size={"height": 20, "width": 20})
    pixels = processor(images=Image.open(path), return_tensors="np")["pixel_values"][0].astype("<f4")
    assert pixels.shape == (3, 20, 20)
    pixels.tofile(os.path.join(OUT, "parity_rgb.20.f32"))

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest['kinds'])} kinds, bomb.png and parity_rgb to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
