"""The real demo's splits and evaluation sets from the tuxpaint stamps (Assets/tuxpaint).

Objects, not stamps, are split: stamps whose English captions agree once lower-cased and
stripped of punctuation ("A frog." twice) are one object, so a held-out object is never seen in
training under another stamp. 10% of the objects (the first in the order of a hash of the caption) are held out.

Writes under OUT (default Assets/tuxpaint/real-demo):
  train-captions.jsonl   stage 1: every stamp of the training objects, its RGBA PNG and English
                         caption only (Pivot's augmentation makes the views: crops, flips,
                         random backgrounds behind the transparency)
  train-conv.json        stage 2: per training stamp, one English and one Chinese conversation
                         ("Describe the image." / "What is this?" and 描述这张图片。/ 这是什么？)
  eval-fit.jsonl         64 training objects as trained (the stamp, plain background): can the
                         model fit its training captions?
  eval-views.jsonl       the same 64 objects in new views (a random crop, flip and background
                         rendered here with PIL, never trained on): does it recognise them?
  eval-objects.jsonl     every held-out object (one stamp, plain background): does it generalise?
  eval-conv.json         the held-out views as conversations in both languages (stage 2's eval loss)
Evaluation records carry `caption` (English, for the loss) and `captions` {en, zh} for ranking.

    python real_demo_data.py [TUXPAINT_DIR] [OUT]
"""
import hashlib
import json
import os
import random
import re
import sys

from PIL import Image

EVAL_OBJECTS = 64
HELDOUT_FRACTION = 0.1
PROMPTS = {"en": ["Describe the image.", "What is this?"], "zh": ["描述这张图片。", "这是什么？"]}


def object_key(english):
    return re.sub(r"[^a-z ]", "", english.lower()).strip()


def digest(text):
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def background(rng, size):
    """A plain colour, a two-colour linear gradient, or smoothed colour noise."""
    w, h = size
    kind = rng.choice(["plain", "gradient", "noise"])
    a = tuple(rng.randrange(256) for _ in range(3))
    if kind == "plain":
        return Image.new("RGB", size, a)
    if kind == "gradient":
        b = tuple(rng.randrange(256) for _ in range(3))
        ramp = Image.linear_gradient("L")  # 256×256, dark at the top
        if rng.random() < 0.5:
            ramp = ramp.rotate(90)
        ramp = ramp.resize(size)
        return Image.composite(Image.new("RGB", size, b), Image.new("RGB", size, a), ramp)
    small = Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(8 * 8 * 3)))
    return small.resize(size, Image.BICUBIC)


def new_view(png_path, seed):
    """A random resized crop (area 0.5–0.9, ratio 3/4–4/3), a flip half the time, a random background."""
    rng = random.Random(seed)
    stamp = Image.open(png_path).convert("RGBA")
    w, h = stamp.size
    for _ in range(10):
        area = w * h * rng.uniform(0.5, 0.9)
        ratio = pow(2.718281828, rng.uniform(-0.2877, 0.2877))
        cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            stamp = stamp.crop((x, y, x + cw, y + ch))
            break
    if rng.random() < 0.5:
        stamp = stamp.transpose(Image.FLIP_LEFT_RIGHT)
    canvas = background(rng, stamp.size).convert("RGBA")
    return Image.alpha_composite(canvas, stamp).convert("RGB")


def main():
    tux = sys.argv[1] if len(sys.argv) > 1 else "Assets/tuxpaint"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(tux, "real-demo")
    os.makedirs(os.path.join(out, "views"), exist_ok=True)
    records = [json.loads(line) for line in open(os.path.join(tux, "captions.jsonl"), encoding="utf-8")]
    objects = {}
    for r in records:
        objects.setdefault(object_key(r["en"]), []).append(r)
    heldout = sorted(sorted(objects, key=lambda k: digest("object:" + k))[:round(HELDOUT_FRACTION * len(objects))])
    training = sorted(k for k in objects if k not in set(heldout))
    rel = lambda p: os.path.relpath(os.path.join(tux, p), out)

    def write_jsonl(name, rows):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    train_stamps = [r for k in training for r in objects[k]]
    write_jsonl("train-captions.jsonl", [{"image": rel(r["png"]), "caption": r["en"]} for r in train_stamps])
    conversations = []
    for r in train_stamps:
        for lang in ("en", "zh"):
            prompt = PROMPTS[lang][digest(lang + r["id"]) % 2]
            conversations.append({"id": f"{r['id']}-{lang}", "image": rel(r["png"]), "conversations": [
                {"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": r[lang]}]})
    json.dump(conversations, open(os.path.join(out, "train-conv.json"), "w", encoding="utf-8"), ensure_ascii=False)

    # The evaluated training objects: a fixed hash order, one stamp each.
    chosen = sorted(training, key=lambda k: digest("eval:" + k))[:EVAL_OBJECTS]
    fit, views, conv = [], [], []
    for k in chosen:
        r = objects[k][0]
        captions = {"en": r["en"], "zh": r["zh"]}
        fit.append({"image": rel(r["png"]), "caption": r["en"], "captions": captions})
        view = os.path.join("views", r["id"] + ".jpg")
        new_view(os.path.join(tux, r["png"]), digest("view:" + r["id"])).save(os.path.join(out, view), quality=90)
        views.append({"image": view, "caption": r["en"], "captions": captions})
        for lang in ("en", "zh"):
            conv.append({"id": f"{r['id']}-{lang}", "image": view, "conversations": [
                {"from": "human", "value": "<image>\n" + PROMPTS[lang][0]}, {"from": "gpt", "value": r[lang]}]})
    write_jsonl("eval-fit.jsonl", fit)
    write_jsonl("eval-views.jsonl", views)
    json.dump(conv, open(os.path.join(out, "eval-conv.json"), "w", encoding="utf-8"), ensure_ascii=False)
    write_jsonl("eval-objects.jsonl", [{"image": rel(objects[k][0]["png"]), "caption": objects[k][0]["en"],
                                        "captions": {"en": objects[k][0]["en"], "zh": objects[k][0]["zh"]}} for k in heldout])
    print(f"{len(objects)} objects ({len(training)} training, {len(heldout)} held out); {len(train_stamps)} training stamps; "
          f"{len(fit)} evaluated training objects; written to {out}")


if __name__ == "__main__":
    main()
