#!/usr/bin/env bash
# Tune the teacher's recipe on one GLUE task without looking at dev: fine-tune one teacher per setting (--teacher-only)
# and rank them by their best score on the held-out 10% of train (selection.best_score in metrics.json). Dev scores
# are printed beside, for the record only; pick by held-out.
#
#   CMOW_DATA_DIR=../shared/data examples/glue_tune_teacher.sh RTE
#   LRS="2e-5 5e-5 1e-4" EPOCHS="3 5 10" SEEDS="42 43" WARMUPS="0.1" DECAYS="0.0 0.01" examples/glue_tune_teacher.sh RTE
#
# Each setting goes to $OUT/<setting>/<TASK>/teacher; pass the chosen one to cmow glue with --teacher (or copy it to
# TEACHER_DIR/<TASK>/teacher for examples/glue_taskdistill.sh). Extra arguments (e.g. --teacher-base PATH) go to every
# call. Finished settings are skipped, so the grid can be extended and rerun.
set -euo pipefail
TASK=${1:?name a GLUE task, e.g. RTE}
shift
OUT=${OUT:-runs/glue-teachers}
NAME=$(python -c "from cmow.glue import get_task; print(get_task('$TASK').name)")  # the task's folder name
for lr in ${LRS:-5e-5 1e-4}; do
    for epochs in ${EPOCHS:-3 5}; do
        for seed in ${SEEDS:-42}; do
            for warmup in ${WARMUPS:-0.1}; do
                for decay in ${DECAYS:-0.0}; do
                    dir=$OUT/lr$lr-ep$epochs-seed$seed-wu$warmup-wd$decay
                    [[ -f $dir/$NAME/teacher/metrics.json ]] && continue
                    cmow glue "$TASK" --teacher-only --output-dir "$dir" --teacher-lr "$lr" --teacher-epochs "$epochs" \
                        --teacher-seed "$seed" --teacher-warmup-ratio "$warmup" --teacher-weight-decay "$decay" "$@"
                done
            done
        done
    done
done
python - "$OUT" "$NAME" <<'PY'
import json, sys
from pathlib import Path

out, task = Path(sys.argv[1]), sys.argv[2]
rows = []
for path in out.glob(f"*/{task}/teacher/metrics.json"):
    record = json.loads(path.read_text())
    rows.append((record["selection"].get("best_score", float("nan")), record["metrics"]["score"], path.parts[-4]))
print("| setting | held-out (selects) | dev |\n|---|---|---|")
for held_out, dev, setting in sorted(rows, reverse=True):
    print(f"| {setting} | {100 * held_out:.1f} | {100 * dev:.1f} |")
PY
