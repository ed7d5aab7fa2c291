"""Load a converted LLM folder with transformers, check greedy answers, write parity fixtures.

For each prompt (English, Chinese, mixed; each wrapped in the model's own chat template)
it records the input ids, the top-5 token ids and logits at every position, the logits of
the last position, and the greedy continuation (16 new tokens). Swift parity tests load
these from Tools/assets/reference/<name>.safetensors (+ <name>.json for people).

    python verify_llm.py ASSET_DIR NAME [--full-logits all|first] [--expect TEXT]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    ("en", "What is the capital of France?"),
    ("zh", "中国的首都是哪个城市？"),
    ("mixed", "Translate to English: 我喜欢喝绿茶。"),
]
FIXTURE_NEW_TOKENS = 16
ANSWER_NEW_TOKENS = 48
TOP_K_LAST = 100


def chat_ids(tokenizer, text):
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return rendered, ids


def greedy(model, ids, max_new_tokens, eos_ids):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_ids, pad_token_id=eos_ids[0])
    return out[0, len(ids):].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("asset_dir")
    parser.add_argument("name", help="fixture file stem, e.g. smollm2-135m-instruct")
    parser.add_argument("--reference-dir",
                        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
    parser.add_argument("--headline", type=int, default=0,
                        help="index of the prompt whose full answer is printed")
    parser.add_argument("--full-logits", choices=["all", "headline"], default="all",
                        help="store the full last-position logits for all prompts or only the headline "
                             "(large vocabularies would make the fixture too big)")
    parser.add_argument("--expect", help="substring the headline answer must contain")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.asset_dir)
    model = AutoModelForCausalLM.from_pretrained(args.asset_dir, dtype=torch.float32)
    model.eval()
    load_seconds = time.time() - start
    eos_ids = model.generation_config.eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]

    tensors = {}
    summary = {"model_dir": os.path.basename(os.path.normpath(args.asset_dir)),
               "torch_dtype_loaded": "float32", "weights_dtype": model.config.to_dict().get("dtype"),
               "eos_token_ids": eos_ids, "load_seconds": round(load_seconds, 2), "prompts": []}

    for index, (key, text) in enumerate(PROMPTS):
        rendered, ids = chat_ids(tokenizer, text)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
        last = logits[-1]
        top_last = np.argsort(-last, kind="stable")[:TOP_K_LAST]

        t0 = time.time()
        new_ids = greedy(model, ids, FIXTURE_NEW_TOKENS, eos_ids)
        fixture_seconds = time.time() - t0

        tensors[f"{key}.input_ids"] = np.array(ids, dtype=np.int32)
        tensors[f"{key}.top5_ids"] = top5.astype(np.int32)
        tensors[f"{key}.top5_logits"] = np.take_along_axis(logits, top5, axis=-1).astype(np.float32)
        tensors[f"{key}.last_top100_ids"] = top_last.astype(np.int32)
        tensors[f"{key}.last_top100_logits"] = last[top_last].astype(np.float32)
        if args.full_logits == "all" or index == args.headline:
            tensors[f"{key}.last_logits"] = last.astype(np.float32)
        tensors[f"{key}.greedy_ids"] = np.array(new_ids, dtype=np.int32)

        record = {"key": key, "prompt": text, "rendered": rendered, "input_ids": ids,
                  "greedy_ids_16": new_ids,
                  "greedy_text_16": tokenizer.decode(new_ids, skip_special_tokens=False),
                  "greedy_16_seconds": round(fixture_seconds, 2),
                  "last_logits_stats": {"max": float(last.max()), "min": float(last.min()),
                                        "mean": float(last.mean()), "std": float(last.std())}}
        if index == args.headline:
            t0 = time.time()
            answer_ids = greedy(model, ids, ANSWER_NEW_TOKENS, eos_ids)
            record["answer_ids"] = answer_ids
            record["answer_text"] = tokenizer.decode(answer_ids, skip_special_tokens=True)
            record["answer_seconds"] = round(time.time() - t0, 2)
            record["answer_tokens_per_second"] = round(len(answer_ids) / (time.time() - t0), 2)
        summary["prompts"].append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "rendered"}, ensure_ascii=False))

    os.makedirs(args.reference_dir, exist_ok=True)
    stem = os.path.join(args.reference_dir, args.name)
    save_file(tensors, stem + ".safetensors",
              metadata={"model": args.name, "prompts": json.dumps([p for _, p in PROMPTS], ensure_ascii=False)})
    with open(stem + ".json", "w", encoding="utf-8") as out:
        json.dump(summary, out, ensure_ascii=False, indent=2)
        out.write("\n")
    print(f"wrote {stem}.safetensors ({os.path.getsize(stem + '.safetensors')} bytes) and {stem}.json")

    headline = summary["prompts"][args.headline]
    if args.expect and args.expect not in headline["answer_text"]:
        sys.exit(f"headline answer {headline['answer_text']!r} does not contain {args.expect!r}")


if __name__ == "__main__":
    main()
