#!/usr/bin/env python3
"""WebP fixtures: lossless and lossy, with and without alpha, at 13 × 9, each with Pillow's
decoded RGBA (Pillow's libwebp is the reference decoder); an animated file; a header claiming
16383 × 16383 (over the pixel limit) with no image data.

    ~/.venvs/pivot-ref/bin/python Tools/make_webp_fixtures.py
"""
import json
import os
import struct

import numpy as np
from PIL import Image, features

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Tests", "PivotDataTests", "Fixtures", "webp")
WIDTH, HEIGHT = 13, 9


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    smooth = np.stack([x * 18, y * 26, (x + y) * 9, 255 - x * 15], 2) + rng.integers(0, 30, (HEIGHT, WIDTH, 4))
    smooth = np.clip(smooth, 0, 255).astype(np.uint8)
    smooth[0, 0, 3] = 0  # a fully transparent corner
    kinds = []
    for name, mode, lossless in [("lossless_rgb", "RGB", True), ("lossless_rgba", "RGBA", True),
                                 ("lossy_rgb", "RGB", False), ("lossy_rgba", "RGBA", False)]:
        path = os.path.join(OUT, name + ".webp")
        Image.fromarray(smooth[:, :, :len(mode)], mode).save(path, lossless=lossless, quality=80, method=4, exact=True)
        decoded = Image.open(path)
        with open(os.path.join(OUT, name + ".rgba"), "wb") as f:
            f.write(decoded.convert("RGBA").tobytes())
        kinds.append({"name": name, "lossless": lossless, "hasAlpha": mode == "RGBA", "pillowMode": decoded.mode})
    frames = [Image.fromarray(smooth[:, :, :3], "RGB"), Image.fromarray(255 - smooth[:, :, :3], "RGB")]
    frames[0].save(os.path.join(OUT, "animated.webp"), save_all=True, append_images=frames[1:], duration=100, lossless=True)
    # VP8L: signature 0x2F, then 14-bit width-1, 14-bit height-1, alpha bit, 3-bit version.
    bits = (16383 - 1) | ((16383 - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + bytes(8)
    bomb = b"RIFF" + struct.pack("<I", 4 + 8 + len(vp8l)) + b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    with open(os.path.join(OUT, "bomb.webp"), "wb") as f:
        f.write(bomb)
    manifest = {"pillow": Image.__version__, "libwebp": features.version("webp"), "width": WIDTH, "height": HEIGHT, "kinds": kinds}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("wrote", len(kinds), "kinds, animated.webp and bomb.webp to", os.path.normpath(OUT), "with libwebp", manifest["libwebp"])


if __name__ == "__main__":
    main()
