"""Checks `pivot tokenizer train` against Hugging Face `tokenizers` and writes the trainer fixtures.

usage: make_trainer_fixture.py PIVOT_BINARY QWEN_DIR FIXTURES_DIR

Writes trainer/corpus.txt (about 150 KB of mixed Chinese/English), trains trainer/tokenizer.json with
Pivot's trainer, loads that file in `tokenizers`, and writes parity-trained.json: ids and decoded text
from `tokenizers` for the parity strings, which the Swift tests compare with Pivot's own encoding.
"""
import json
import os
import random
import subprocess
import sys

from tokenizers import Tokenizer

from make_tokenizer_fixtures import parity, test_strings, training_corpus


def main():
    pivot, qwen_dir, fixtures = sys.argv[1:4]
    folder = os.path.join(fixtures, "trainer")
    os.makedirs(folder, exist_ok=True)
    qwen = Tokenizer.from_file(os.path.join(qwen_dir, "tokenizer.json"))
    lines = training_corpus(qwen)
    rng = random.Random(7)
    rng.shuffle(lines)
    corpus, size = [], 0
    for line in test_strings() + lines:
        corpus.append(line)
        size += len(line.encode("utf-8")) + 1
        if size > 150_000:
            break
    corpus_path = os.path.join(folder, "corpus.txt")
    with open(corpus_path, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus) + "\n")
    out = os.path.join(folder, "tokenizer.json")
    subprocess.run([pivot, "tokenizer", "train", "--corpus", corpus_path, "--vocab", "2000", "--out", out], check=True)
    trained = Tokenizer.from_file(out)
    rows = parity(trained, test_strings())
    with open(os.path.join(fixtures, "parity-trained.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=True, indent=0)
    print(f"trained vocabulary {trained.get_vocab_size()}; {len(rows)} parity rows written")


if __name__ == "__main__":
    main()
