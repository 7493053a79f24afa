#!/usr/bin/env bash
# Issue 11's table: per task one teacher and four students, all selected on a held-out 10% of train (dev scored once),
# then the report (majority baseline, the paper's CMOW student, teacher, students, retention, times, commands):
#
#   student-random    random init, train set only
#   student-general   from GENERAL_STUDENT (a general-distilled checkpoint), train set only; skipped if unset
#   student-transfer  random init, train + a transfer set: COPIES augmented copies per train example (Tang et al.)
#                     and, if TRANSFER_TEXTS is set, unlabeled in-domain text (see docs/glue.md)
#   student-ngrams    as student-transfer, plus hashed n-grams (NGRAM_ORDERS, e.g. [2] or [2,3])
#
#   CMOW_DATA_DIR=../shared/data examples/glue_taskdistill.sh
#   TASKS="MRPC RTE" COPIES=10 NGRAM_ORDERS="[2,3]" GENERAL_STUDENT=runs/cmow-minilm-hybrid examples/glue_taskdistill.sh
#
# The teacher recipe per task is teacher_args below (tune it with examples/glue_tune_teacher.sh, or point TEACHER_DIR
# at a folder of tuned teachers, TEACHER_DIR/<TASK>/teacher). Finished teachers, their logits (train and transfer
# sets) and finished students are reused, so the script can be rerun after an interruption. Extra arguments go to
# every `cmow glue` call.
set -euo pipefail
OUT=${OUT:-runs/glue-taskdistill}
REPORT=${REPORT:-docs/glue.md}
TASKS=${TASKS:-"WNLI RTE MRPC STS-B CoLA QQP MNLI QNLI SST-2"}
COPIES=${COPIES:-10}
NGRAM_ORDERS=${NGRAM_ORDERS:-[2]}

teacher_args() {  # the recipe of docs/glue.md's first table; replace with tuned values per task
    case $1 in
        SST-2) echo --teacher-lr 1e-4 --teacher-epochs 1 ;;
        QQP | MNLI | QNLI) echo --teacher-lr 1e-4 --teacher-epochs 2 ;;
        *) echo --teacher-lr 1e-4 --teacher-epochs 3 ;;
    esac
}

student_epochs() {  # fewer passes over the larger train + transfer sets
    case $1 in
        SST-2) echo 3 ;;
        *) echo 10 ;;
    esac
}

run_student() {  # run_student TASK NAME ARGS...: once
    local task=$1 name=$2
    shift 2
    [[ -f $OUT/$task/student-$name/metrics.json ]] || cmow glue "$task" "${common[@]}" --student-name "$name" "$@"
}

for task in $TASKS; do
    # shellcheck disable=SC2207
    common=(--output-dir "$OUT" $(teacher_args "$task"))
    if [[ -n ${TEACHER_DIR:-} && ! -f $OUT/$task/teacher/metrics.json ]]; then
        common+=(--teacher "$TEACHER_DIR/$task/teacher")
    fi
    common+=("$@")
    epochs=$(student_epochs "$task")
    transfer=(--augment-copies "$COPIES")
    [[ -n ${TRANSFER_TEXTS:-} ]] && transfer+=(--transfer-texts "$TRANSFER_TEXTS")
    run_student "$task" random --student-epochs "$epochs"
    if [[ -n ${GENERAL_STUDENT:-} ]]; then
        run_student "$task" general --student-epochs "$epochs" --student "$GENERAL_STUDENT"
    fi
    run_student "$task" transfer --student-epochs "$epochs" "${transfer[@]}"
    run_student "$task" ngrams --student-epochs "$epochs" "${transfer[@]}" \
        --student-config "{\"ngram_orders\": $NGRAM_ORDERS}"
done
cmow glue --output-dir "$OUT" --report "$REPORT" --report-command "examples/glue_taskdistill.sh $*"
