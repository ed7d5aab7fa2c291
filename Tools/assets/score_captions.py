#!/usr/bin/env python3
"""Scores captions from `pivot caption`: does the caption name the reference's object?

English: the reference's last word (articles and punctuation dropped) must appear in the
caption. Chinese: the reference without its final '。' and a leading quantifier (一个, 一只 …)
must appear in the caption. Prints a table and a few examples per language.
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


def score(path, key):
    rows = [json.loads(l) for l in open(path, encoding="utf-8")]
    hits = [(r, key(r["reference"])) for r in rows]
    right = sum(1 for r, k in hits if k and k in r["caption"].lower())
    return rows, right, hits


print("| language | images | caption names the object |")
print("|---|---:|---:|")
examples = []
for path, lang, key in ((sys.argv[1], "en", key_en), (sys.argv[2], "zh", key_zh)):
    rows, right, hits = score(path, key)
    print(f"| {lang} | {len(rows)} | {right} ({100 * right / max(len(rows), 1):.1f}%) |")
    examples += [f"  [{lang}] {r['reference']!r} → {r['caption']!r}" for r, _ in hits[:5]]
print("\nsample captions:")
print("\n".join(examples))
