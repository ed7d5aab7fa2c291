"""Build the bilingual (English / simplified Chinese) image-caption set from Tux Paint stamps.

Input: the unpacked Debian package tuxpaint-stamps-default (GPL-2): every stamp
`<name>.png` has a `<name>.txt` whose first line is the English description, followed by
`<lang>.utf8=<translation>` lines. A record is kept when the stamp has a PNG, an English
line and a `zh_CN.utf8=` line.

Output (under OUT_DIR, default Assets/tuxpaint):
  images/<id>.jpg          the RGBA stamp composited onto white or a light colour chosen from
                           the id's hash, short side resized to 256, JPEG quality 90
  png/<id>.png             the stamp itself with its transparency (RGBA), short side 256: what
                           augmentation composites onto random backgrounds
  captions.jsonl           one record per stamp: id, image (relative to OUT_DIR), en, zh,
                           category, source
  captions-train.jsonl     the ~90% whose id hashes to a non-zero value mod 10
  captions-heldout.jsonl   the ~10% whose id hashes to 0 mod 10

Everything is deterministic: the same package gives byte-identical output.

    python tuxpaint_captions.py STAMPS_DIR [OUT_DIR]
"""
import argparse
import hashlib
import json
import os
import time

from PIL import Image

SHORT_SIDE = 256
JPEG_QUALITY = 90
HELDOUT_MODULUS = 10


def id_hash(stamp_id):
    return int.from_bytes(hashlib.sha256(stamp_id.encode()).digest()[:8], "big")


def is_heldout(stamp_id):
    return id_hash(stamp_id) % HELDOUT_MODULUS == 0


def background_for(stamp_id):
    """Half the stamps on white, half on a light colour, both fixed by the id."""
    digest = hashlib.sha256(b"background:" + stamp_id.encode()).digest()
    if digest[0] % 2 == 0:
        return (255, 255, 255)
    return tuple(200 + b % 56 for b in digest[1:4])


def read_description(txt_path):
    with open(txt_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    english = lines[0].strip() if lines else ""
    chinese = ""
    for line in lines[1:]:
        if line.startswith("zh_CN.utf8="):
            chinese = line[len("zh_CN.utf8="):].strip()
    return english, chinese


def render(png_path, stamp_id, jpeg_path, rgba_path):
    stamp = Image.open(png_path).convert("RGBA")
    scale = SHORT_SIDE / min(stamp.size)
    stamp_size = (max(1, round(stamp.size[0] * scale)), max(1, round(stamp.size[1] * scale)))
    stamp.resize(stamp_size, Image.LANCZOS).save(rgba_path, optimize=True)
    canvas = Image.new("RGBA", stamp.size, background_for(stamp_id) + (255,))
    image = Image.alpha_composite(canvas, stamp).convert("RGB")
    width, height = image.size
    scale = SHORT_SIDE / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, Image.LANCZOS)
    image.save(jpeg_path, quality=JPEG_QUALITY)
    return size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stamps_dir", help=".../usr/share/tuxpaint/stamps")
    parser.add_argument("out_dir", nargs="?", default="Assets/tuxpaint")
    args = parser.parse_args()
    start = time.time()
    images_dir = os.path.join(args.out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(os.path.join(args.out_dir, "png"), exist_ok=True)

    records = []
    skipped = {"no_png": 0, "no_english": 0, "no_zh_CN": 0}
    for root, dirs, files in os.walk(args.stamps_dir):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".txt"):
                continue
            stem = name[:-4]
            txt_path = os.path.join(root, name)
            png_path = os.path.join(root, stem + ".png")
            english, chinese = read_description(txt_path)
            if not os.path.exists(png_path):
                skipped["no_png"] += 1
                continue
            if not english:
                skipped["no_english"] += 1
                continue
            if not chinese:
                skipped["no_zh_CN"] += 1
                continue
            relative = os.path.relpath(png_path, args.stamps_dir)
            stamp_id = os.path.splitext(relative)[0].replace(os.sep, "-").replace(" ", "_")
            image_rel = f"images/{stamp_id}.jpg"
            render(png_path, stamp_id, os.path.join(args.out_dir, image_rel), os.path.join(args.out_dir, f"png/{stamp_id}.png"))
            records.append({"id": stamp_id, "image": image_rel, "png": f"png/{stamp_id}.png", "en": english, "zh": chinese,
                            "category": relative.split(os.sep)[0],
                            "source": f"tuxpaint-stamps-default/stamps/{relative}"})

    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate stamp ids"

    def write(path, rows):
        with open(path, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")

    write(os.path.join(args.out_dir, "captions.jsonl"), records)
    write(os.path.join(args.out_dir, "captions-train.jsonl"),
          [r for r in records if not is_heldout(r["id"])])
    write(os.path.join(args.out_dir, "captions-heldout.jsonl"),
          [r for r in records if is_heldout(r["id"])])
    heldout = sum(is_heldout(i) for i in ids)
    print(f"{len(records)} captioned stamps ({len(records) - heldout} train, {heldout} held out); "
          f"skipped {skipped}; {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
