#!/usr/bin/env bash
# The one script a session runs on a lent GPU machine, from the repository root, after
# bench/stage_gpu_data.sh staged bench/data/ here (carry it: it is git-ignored):
#
#   bash bench/run_gpu.sh [TIME_BUDGET_S]      # default 360 (BENCH_BUDGET_S)
#
# 1. the GPU tests (pytest -m gpu on the listed files), tee'd to $OUT/gpu_tests.txt;
# 2. bench/bench_gpu.py on SciFact with a random-init BERT-base, stopped at the budget
#    (skipped variants are recorded) and writing $OUT/bench_gpu.{json,md} after every
#    variant, so a killed run still leaves its results; worker logs in
#    $OUT/bench_gpu_logs.tgz.
# The tests get at most GPU_TEST_TIMEOUT_S (default 180) s, so tests + budget + start-up
# stay inside one 600 s device command. The bench runs even if the tests fail.
# BENCH_ARGS adds arguments to bench_gpu.py (e.g. "--quick --device cpu" for a dry run).
set -u
cd "$(dirname "$0")/.."

OUT="${OUT:-bench/out}"
budget="${1:-${BENCH_BUDGET_S:-360}}"
py="${PYTHON:-python3}"
data=bench/data
work="${BENCH_WORK:-$(mktemp -d)}"
export PYTHONPATH="lib${PYTHONPATH:+:$PYTHONPATH}"
# Tokenizers stay parallel (their default): tokenising runs ahead of the GPU on every
# core, as in the workflow's encoding jobs.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
if [ -f "$data/commit.txt" ]; then
  BENCH_GIT_COMMIT="$(cat "$data/commit.txt")"
  export BENCH_GIT_COMMIT
fi
if [ ! -f "$data/scifact/corpus.jsonl" ] || [ ! -d "$data/tokenizer" ]; then
  echo "run_gpu.sh: $data/ is not staged (run bench/stage_gpu_data.sh, carry bench/data)" >&2
fi

{
  echo "== $(date -u +%FT%TZ) commit ${BENCH_GIT_COMMIT:-unknown}"
  nvidia-smi 2>&1 || true
  "$py" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
  "$py" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|sentence-transformers|tokenizers|numpy|pandas|pyarrow|pytest|faiss[-a-z0-9]*) ' || true
} >"$OUT/environment.txt"

tests=()
for f in tests/test_gpu.py; do
  [ -f "$f" ] && tests+=("$f")
done
echo "== GPU tests: ${tests[*]:-none}"
if [ "${#tests[@]}" -gt 0 ]; then
  # A file that cannot be collected there (a module-level import of a package the
  # machine lacks) must not stop the others from running.
  timeout "${GPU_TEST_TIMEOUT_S:-180}" "$py" -m pytest -m gpu -q -p no:cacheprovider \
    --continue-on-collection-errors "${tests[@]}" 2>&1 |
    tee "$OUT/gpu_tests.txt"
  echo "pytest exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_tests.txt"
fi

echo "== bench_gpu.py (budget ${budget} s)"
rm -rf "$work"
"$py" bench/bench_gpu.py \
  --corpus "$data/scifact/corpus.jsonl" \
  --tokenizer "$data/tokenizer" \
  --out "$OUT" \
  --work "$work" \
  --time-budget-s "$budget" \
  ${BENCH_ARGS:-}
status=$?
if [ -d "$work/logs" ]; then
  tar -czf "$OUT/bench_gpu_logs.tgz" -C "$work" logs setup.json 2>/dev/null || true
fi
exit "$status"
