#!/usr/bin/env python3
"""Scores captions from `pivot caption`: does the caption name the reference's object?

    score_captions.py CAPTIONS.jsonl:LANG [CAPTIONS.jsonl:LANG ...]

English: the reference's last word (articles and punctuation dropped) must appear in the
caption. Chinese: the reference without its final punctuation and a leading quantifier (一个,
一只 …) must appear in the caption. Prints one table row per file (images, how many captions
name the object, distinct captions against distinct references: a model that gives every image
the same caption has 1) and a few examples per file. (Two-argument calls `EN.jsonl ZH.jsonl`
still work: the languages are then en and zh.)
"""
import json
import re
import sys

QUANTIFIERS = ("一个", "一只", "一对", "一把", "一辆", "一条", "一张", "一块", "一朵", "一颗", "一本", "一架", "一艘", "一棵", "一根", "一盏", "一件", "一双", "一副", "一台", "一头", "一匹", "一片", "一些")


def key_en(ref):
    words = re.findall(r"[a-z]+", ref.lower())
    return words[-1] if words else ""


def key_zh(ref):
    r = ref.strip().rstrip("。.！!")
    for q in QUANTIFIERS:
        if r.startswith(q):
            return r[len(q):]
    return r


def score(path, lang):
    key = key_en if lang == "en" else key_zh
    rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    right = [r for r in rows if key(r["reference"]) and key(r["reference"]) in r["caption"].lower()]
    return {"file": path, "lang": lang, "images": len(rows), "names_object": len(right),
            "distinct_captions": len({r["caption"] for r in rows}), "distinct_references": len({r["reference"] for r in rows}),
            "examples": [f"{r['reference']!r} → {r['caption']!r}" for r in rows[:4]]}


def main():
    args = sys.argv[1:]
    if len(args) == 2 and ":" not in args[0] + args[1]:
        args = [args[0] + ":en", args[1] + ":zh"]
    results = [score(*a.rsplit(":", 1)) for a in args]
    print("| captions | language | images | names the object | distinct captions / distinct references |")
    print("|---|---|---:|---:|---:|")
    for s in results:
        pct = 100 * s["names_object"] / max(s["images"], 1)
        print(f"| {s['file'].split('/')[-1]} | {s['lang']} | {s['images']} | {s['names_object']} ({pct:.1f}%) | "
              f"{s['distinct_captions']} / {s['distinct_references']} |")
    print("\nsample captions:")
    for s in results:
        for e in s["examples"]:
            print(f"  [{s['file'].split('/')[-1]}] {e}")
    print(json.dumps({"phase": "caption_score", "results": [{k: v for k, v in s.items() if k != "examples"} for s in results]},
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
