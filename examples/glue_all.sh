#!/usr/bin/env bash
# All nine GLUE tasks with the recipe of docs/glue.md: fine-tune the all-MiniLM-L6-v2 teacher per task (lr 1e-4;
# 3 epochs, 2 on the 9k-example QQP/MNLI/QNLI subsets, 1 on SST-2's 67k), distil a randomly initialised CMOW student
# (10 epochs, 3 on SST-2) and, if GENERAL_STUDENT names a general-distilled checkpoint folder, a second student from
# it; then write the results table into docs/glue.md. Finished teachers, their train-set logits and finished
# students are reused, so the script can be rerun after an interruption.
#
#   CMOW_DATA_DIR=../shared/data examples/glue_all.sh                 # local GLUE TSVs; unset: nyu-mll/glue (Hub)
#   GENERAL_STUDENT=runs/cmow-minilm-hybrid examples/glue_all.sh
#   TASKS="WNLI RTE MRPC STS-B CoLA SST-2" OUT=runs/glue6 REPORT=runs/glue6/report.md \
#     GENERAL_STUDENT=runs/cmow-minilm-hybrid examples/glue_all.sh        # the six tasks with complete data
#
# Extra arguments go to every `cmow glue` call. About 3 hours on one CPU core (docs/glue.md ran two tasks at a time).
set -euo pipefail
OUT=${OUT:-runs/glue}
REPORT=${REPORT:-docs/glue.md}

teacher_epochs() {
    case $1 in
        SST-2) echo 1 ;;
        QQP | MNLI | QNLI) echo 2 ;;
        *) echo 3 ;;
    esac
}

TASKS=${TASKS-"WNLI RTE MRPC STS-B CoLA QQP MNLI QNLI SST-2"}  # unset: all nine
if [[ -z ${TASKS// /} ]]; then
    echo "TASKS is empty: name the tasks to run (e.g. TASKS=\"STS-B MRPC\"), or unset it to run all nine" >&2
    exit 2
fi
for task in $TASKS; do
    student_epochs=10
    [[ $task == SST-2 ]] && student_epochs=3
    settings=(--output-dir "$OUT" --teacher-lr 1e-4 --teacher-epochs "$(teacher_epochs "$task")")
    settings+=(--student-epochs "$student_epochs")
    # The students of the tables this script made: no n-grams, no transfer set (cmow glue's defaults before issue 11)
    settings+=(--student-config '{"ngram_orders": null}' --augment-copies 0)
    [[ -f $OUT/$task/student-random/metrics.json ]] || cmow glue "$task" "${settings[@]}" "$@"
    if [[ -n ${GENERAL_STUDENT:-} && ! -f $OUT/$task/student-general/metrics.json ]]; then
        cmow glue "$task" "${settings[@]}" --student "$GENERAL_STUDENT" --student-name general "$@"
    fi
done
cmow glue --output-dir "$OUT" --report "$REPORT" --report-command "examples/glue_all.sh $*"
