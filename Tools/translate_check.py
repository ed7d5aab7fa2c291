#!/usr/bin/env python3
"""`pivot translate` against transformers on HSK sentence pairs (English → Chinese).

    PY=~/.venvs/pivot-ref/bin/python
    $PY Tools/translate_check.py pairs --corpus Assets/corpus/hsk-mixed.txt --n 200 --out /tmp/hsk
        # /tmp/hsk/en.tsv (id<TAB>English) and /tmp/hsk/zh.tsv (id<TAB>reference Chinese)
    .build/release/pivot translate --model Assets/qwen2.5-0.5b-instruct --in /tmp/hsk/en.tsv --out /tmp/hsk/pivot.tsv
    $PY Tools/translate_check.py reference --model Assets/qwen2.5-0.5b-instruct --in /tmp/hsk/en.tsv --out /tmp/hsk/hf.tsv
    $PY Tools/translate_check.py score --ref /tmp/hsk/zh.tsv /tmp/hsk/pivot.tsv /tmp/hsk/hf.tsv

`reference` renders the same prompt with the tokenizer's chat template and decodes greedily, one
sentence at a time, as `pivot translate` does (its default --prompt and --max-new-tokens).
`score` prints chrF (character 6-grams, beta 2, spaces removed: sacrebleu's chrF defaults) per
file and how many outputs are identical between the first two hypothesis files.
"""
import argparse
import os
import sys

PROMPT = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"


def read_tsv(path):
    rows = []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line:
            key, _, text = line.partition("\t")
            rows.append((key, text))
    return rows


def pairs(args):
    blocks = open(args.corpus, encoding="utf-8").read().split("\n\n")
    os.makedirs(args.out, exist_ok=True)
    n = 0
    with open(os.path.join(args.out, "en.tsv"), "w") as en, open(os.path.join(args.out, "zh.tsv"), "w") as zh:
        for block in blocks:
            lines = block.strip().split("\n")
            if len(lines) < 2 or not any(c.isalpha() and c.isascii() for c in lines[1]):
                continue
            key = "hsk%04d" % n
            en.write("%s\t%s\n" % (key, lines[1].strip()))
            zh.write("%s\t%s\n" % (key, lines[0].strip()))
            n += 1
            if n == args.n:
                break
    print("wrote %d pairs to %s" % (n, args.out))


def reference(args):
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    start = time.time()
    with open(args.out, "w") as out:
        for key, text in read_tsv(args.input):
            messages = [{"role": "user", "content": PROMPT.format(language="Simplified Chinese", text=text)}]
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
            answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
            out.write("%s\t%s\n" % (key, answer.replace("\t", " ").replace("\n", " ")))
    print("%.1f s, %.2f sentences/s" % (time.time() - start, len(read_tsv(args.input)) / (time.time() - start)), file=sys.stderr)


def chrf(hyps, refs, order=6, beta=2.0):
    """Corpus chrF: n-gram precision and recall averaged over n = 1..order, whitespace removed."""
    from collections import Counter
    totals = [[0, 0, 0] for _ in range(order)]  # matches, hyp n-grams, ref n-grams
    for h, r in zip(hyps, refs):
        h, r = "".join(h.split()), "".join(r.split())
        for n in range(1, order + 1):
            hc = Counter(h[i:i + n] for i in range(len(h) - n + 1))
            rc = Counter(r[i:i + n] for i in range(len(r) - n + 1))
            totals[n - 1][0] += sum((hc & rc).values())
            totals[n - 1][1] += sum(hc.values())
            totals[n - 1][2] += sum(rc.values())
    p = sum(m / h if h else 0 for m, h, _ in totals) / order
    r = sum(m / rr if rr else 0 for m, _, rr in totals) / order
    return 100 * (1 + beta ** 2) * p * r / (beta ** 2 * p + r) if p + r else 0.0


def score(args):
    ref = dict(read_tsv(args.ref))
    outputs = []
    for path in args.hyps:
        hyp = dict(read_tsv(path))
        keys = [k for k in ref if k in hyp]
        outputs.append(hyp)
        print("%s: %d sentences, chrF %.1f" % (path, len(keys), chrf([hyp[k] for k in keys], [ref[k] for k in keys])))
    if len(outputs) >= 2:
        a, b = outputs[0], outputs[1]
        keys = [k for k in a if k in b]
        same = sum(a[k].strip() == b[k].strip() for k in keys)
        print("identical outputs: %d of %d (%s vs %s)" % (same, len(keys), args.hyps[0], args.hyps[1]))
        for k in [k for k in keys if a[k].strip() != b[k].strip()][:5]:
            print("  %s: %r vs %r" % (k, a[k], b[k]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs"); p.add_argument("--corpus", required=True); p.add_argument("--n", type=int, default=500); p.add_argument("--out", required=True)
    r = sub.add_parser("reference"); r.add_argument("--model", required=True); r.add_argument("--in", dest="input", required=True)
    r.add_argument("--out", required=True); r.add_argument("--max-new-tokens", type=int, default=256); r.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("score"); s.add_argument("--ref", required=True); s.add_argument("hyps", nargs="+")
    args = ap.parse_args()
    {"pairs": pairs, "reference": reference, "score": score}[args.cmd](args)


if __name__ == "__main__":
    main()
