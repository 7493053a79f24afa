#!/usr/bin/env bash
# Issue 11's recipe and table: per task one teacher and up to three CMOW students, all selected on a held-out 10% of
# train (dev scored once), then the report (majority baseline, the paper's CMOW student, teacher, students,
# retention, times, commands). The recipe is what docs/glue.md measured ("Bigrams, intermediate tasks and defaults"):
#
#   teacher           all-MiniLM-L6-v2, lr 1e-4: 10 epochs on CoLA and STS-B, 3 on MRPC, 2 on the QQP/MNLI/QNLI 9k
#                     subsets, 1 on SST-2; RTE and WNLI start from the MNLI teacher (lr 5e-5, 3 epochs)
#   student-random    random init, cmow glue's defaults (classification: hashed bigrams; STS-B: 10 augmented
#                     copies per example, no n-grams); on the QQP/MNLI/QNLI 9k subsets also 5 augmented copies
#                     per example and 3 epochs (docs/glue.md, "Copies for the pair tasks")
#   student-general   from GENERAL_STUDENT (a general-distilled checkpoint), the same defaults; skipped if unset
#   student-recipe    MRPC only: from the STS-B student-general (an intermediate task); on the other tasks the
#                     recipe is student-general (RTE from the MNLI student measured worse); skipped without
#                     GENERAL_STUDENT
#
#   CMOW_DATA_DIR=../shared/data GENERAL_STUDENT=runs/cmow-minilm-hybrid examples/glue_taskdistill.sh
#   TASKS="STS-B MRPC" GENERAL_STUDENT=runs/cmow-minilm-hybrid examples/glue_taskdistill.sh
#
# Tasks run in the order given; a task another one needs (MNLI's teacher for RTE and WNLI, STS-B's student-general
# for MRPC) is run first when it is missing. Finished teachers, their logits (train and transfer sets) and finished students are reused, so
# the script can be rerun after an interruption. Extra arguments go to every `cmow glue` call. Point TEACHER_DIR at a
# folder of tuned teachers (TEACHER_DIR/<TASK>/teacher, e.g. from examples/glue_tune_teacher.sh) to use those.
# CMOW students only: `--student-type moe` is refused before anything runs.
set -euo pipefail
OUT=${OUT:-runs/glue-taskdistill}
REPORT=${REPORT:-docs/glue.md}
TASKS=${TASKS-"MNLI STS-B WNLI RTE MRPC CoLA QQP QNLI SST-2"}  # unset: all nine
if [[ -z ${TASKS// /} ]]; then
    echo "TASKS is empty: name the tasks to run (e.g. TASKS=\"STS-B MRPC\"), or unset it to run all nine" >&2
    exit 2
fi

teacher_args() {  # sets the array targs (an array, so that a path in OUT with spaces stays one argument)
    case $1 in
        SST-2) targs=(--teacher-lr 1e-4 --teacher-epochs 1) ;;
        QQP | MNLI | QNLI) targs=(--teacher-lr 1e-4 --teacher-epochs 2) ;;
        CoLA | STS-B) targs=(--teacher-lr 1e-4 --teacher-epochs 10) ;;
        RTE | WNLI) targs=(--teacher-base "$OUT/MNLI/teacher" --teacher-lr 5e-5 --teacher-epochs 3) ;;
        *) targs=(--teacher-lr 1e-4 --teacher-epochs 3) ;;
    esac
}

intermediate() {  # the task whose student-general starts this task's student-recipe, if any
    case $1 in
        MRPC) echo STS-B ;;
    esac
}

student_args() {  # sets the array sargs
    case $1 in
        SST-2) sargs=(--student-epochs 3) ;;
        QQP | MNLI | QNLI) sargs=(--student-epochs 3 --augment-copies 5) ;;
        *) sargs=(--student-epochs 10) ;;
    esac
}

run_student() {  # run_student TASK NAME ARGS...: once
    local task=$1 name=$2
    shift 2
    [[ -f $OUT/$task/student-$name/metrics.json ]] && return
    teacher_args "$task"
    student_args "$task"
    # ${a[@]+"${a[@]}"}: an empty array under set -u on older bash
    cmow glue "$task" --output-dir "$OUT" "${targs[@]}" "${sargs[@]}" \
        --student-name "$name" ${teacher[@]+"${teacher[@]}"} "$@" ${extra[@]+"${extra[@]}"}
}

run_task() {
    local task=$1 before
    before=$(intermediate "$task")
    if [[ -n $before && -n ${GENERAL_STUDENT:-} ]]; then
        [[ -f $OUT/$before/student-general/metrics.json ]] || run_task "$before"
    elif [[ $task == RTE || $task == WNLI ]]; then
        [[ -f $OUT/MNLI/teacher/metrics.json ]] || run_task MNLI  # their teacher starts from MNLI's
    fi
    teacher=()
    if [[ -n ${TEACHER_DIR:-} && ! -f $OUT/$task/teacher/metrics.json ]]; then
        teacher=(--teacher "$TEACHER_DIR/$task/teacher")
    fi
    run_student "$task" random
    if [[ -n ${GENERAL_STUDENT:-} ]]; then
        run_student "$task" general --student "$GENERAL_STUDENT"
        [[ -z $before ]] || run_student "$task" recipe --student "$OUT/$before/student-general"
    fi
}

student_type=cmow previous=
for arg in "$@"; do  # the recipe's copies, n-grams and starts are CMOW flags, which a MoEBERT student refuses
    name=${arg%%=*}  # argparse also takes --student-type=X and any prefix from --student-t; the last one wins
    if [[ ${#previous} -ge 11 && --student-type == "$previous"* ]]; then
        student_type=$arg
    elif [[ $arg == *=* && ${#name} -ge 11 && --student-type == "$name"* ]]; then
        student_type=${arg#*=}
    fi
    previous=$arg
done
if [[ $student_type != cmow ]]; then
    echo "examples/glue_taskdistill.sh distils CMOW students; for MoEBERT students run" \
        "\`cmow glue TASK --student-type moe\` (docs/glue.md, MoEBERT students)" >&2
    exit 2
fi
extra=("$@")
for task in $TASKS; do
    run_task "$task"
done
cmow glue --output-dir "$OUT" --report "$REPORT" --report-command "examples/glue_taskdistill.sh $*"
