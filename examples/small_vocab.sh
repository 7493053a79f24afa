#!/usr/bin/env bash
# The size/quality tables of docs/small_models.md: students of the real all-MiniLM-L6-v2 teacher, one per ROWS entry
# SIZE[:CBOW:MATRIX] (a vocabulary of SIZE tokens, 30522 = the teacher's own tokenizer, the others trained on the
# default corpus by --student-vocab-size; optionally a narrower student, --cbow-size CBOW --matrix-size MATRIX instead
# of the default 400 and 20), every one distilled with the same corpus, steps and settings; each saved as float32,
# then copied with float16 and int8 weights (cmow quantize); then one cmow evaluate run over all of them and the
# static model of the teacher (STS-B, SST-2, MRPC, word order, size on disk, sentences/s) and, with GLUE=1, one GLUE task (STS-B) per student (its int8
# copy) via cmow glue --student.
#
# Steps of 64 texts; the teacher's targets go to CACHE and are shared by every row (they depend on the teacher's
# tokenization only). STEPS=400 is the quick version.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMOW_DATA_DIR="${CMOW_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1
OUT="${OUT:-runs/small}"
STEPS="${STEPS:-1600}"
ROWS="${ROWS:-30522 16000 8000 5000 4000 16000:256:6 8000:256:6}"
CACHE="${CACHE:-runs/cache}"

models=()
folders=()
for row in $ROWS; do
  IFS=: read -r size cbow matrix <<< "$row"
  folder="$OUT/vocab-$STEPS-$size" student=()
  [[ $size != 30522 ]] && student=(--student-vocab-size "$size")
  if [[ -n $cbow ]]; then
    folder="$folder-c$cbow-m$matrix" student+=(--cbow-size "$cbow" --matrix-size "$matrix")
  fi
  if [[ ! -f $folder/config.json ]]; then
    .venv/bin/cmow distill --output-dir "$folder" --max-steps "$STEPS" --batch-size 64 --warmup-steps 40 \
      --alpha-token 0 --save-steps 0 --cache-dir "$CACHE" --report-to none "${student[@]}"
  fi
  folders+=("$folder")
  for storage in float16 int8; do
    [[ -f $folder-$storage/config.json ]] || .venv/bin/cmow quantize "$folder" "$folder-$storage" --storage "$storage"
  done
  models+=("$folder" "$folder-float16" "$folder-int8")
done
# static: the model2vec recipe rebuilt from the same teacher (its full vocabulary), the simple baseline to beat
.venv/bin/cmow evaluate "${models[@]}" static --json "$OUT/evaluation-$STEPS.json" | tee "$OUT/evaluation-$STEPS.md"

if [[ ${GLUE:-0} == 1 ]]; then  # the STS-B teacher of runs/glue6 is reused when it is there
  for folder in "${folders[@]}"; do
    .venv/bin/cmow glue STS-B --output-dir "${GLUE_OUT:-runs/glue6}" --teacher-lr 1e-4 --teacher-epochs 3 \
      --student-epochs 10 --student "$folder-int8" --student-name "$(basename "$folder")-int8"
  done
fi
