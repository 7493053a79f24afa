#!/usr/bin/env bash
# All nine GLUE tasks: fine-tune the all-MiniLM-L6-v2 teacher per task, distil a randomly initialised CMOW student
# (and, if GENERAL_STUDENT names a general-distilled checkpoint folder, a second student from it), then write the
# results table into docs/glue.md. Reruns reuse finished teachers (OUT/<TASK>/teacher/metrics.json).
#
#   CMOW_DATA_DIR=../shared/data examples/glue_all.sh                 # local GLUE TSVs; unset: nyu-mll/glue (Hub)
#   GENERAL_STUDENT=runs/distill/final examples/glue_all.sh --student-epochs 5
#
# Extra arguments go to every `cmow glue` call. On a 2-core CPU this takes many hours (see docs/glue.md).
set -euo pipefail
OUT=${OUT:-runs/glue}
REPORT=${REPORT:-docs/glue.md}

cmow glue all --output-dir "$OUT" "$@"
if [[ -n "${GENERAL_STUDENT:-}" ]]; then
    cmow glue all --output-dir "$OUT" --student "$GENERAL_STUDENT" --student-name general "$@"
fi
cmow glue --output-dir "$OUT" --report "$REPORT" --report-command "examples/glue_all.sh $*"
