#!/usr/bin/env bash
# Gather issue 11's recipe runs (made in runs/glue6, glue7, glue8 by the commands their metrics.json record) into one
# folder for `cmow glue --report`. teacher: the recipe's teacher per task. student-recipe: general start and cmow
# glue's defaults (classification: bigrams; STS-B: 10 copies, no bigrams), MRPC from the STS-B student, QQP/MNLI/QNLI
# with 5 augmented copies and 3 epochs.
# student-general-ng2: general start + bigrams, no copies. student-general: general start, no n-grams, no copies.
# student-random-ng2: random init + bigrams. (The last two only where they learnt from the same teacher.)
#
# This is how docs/glue.md's issue-11 table was put together from runs made in three folders; the table itself:
#   examples/glue_issue11_table.sh && cmow glue --output-dir runs/glue11 --report runs/glue11/report.md
# To make such a table in one folder and one go, run examples/glue_taskdistill.sh instead.
set -euo pipefail
mkdir -p "$(dirname "$0")/../runs/glue11"
cd "$(dirname "$0")/../runs/glue11"  # the runs of runs/glue6, glue7 and glue8 are ../glue6 etc. from here
rm -rf CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE WNLI
link() { mkdir -p "$1"; ln -s "../../$2" "$1/$3"; }
declare -A dir=([CoLA]=glue7 [SST-2]=glue6 [MRPC]=glue6 [STS-B]=glue7 [QQP]=glue7 [MNLI]=glue7 [QNLI]=glue7 [RTE]=glue8 [WNLI]=glue8)
for t in "${!dir[@]}"; do
  d=${dir[$t]}/$t
  [[ -f ../$d/teacher/metrics.json ]] || continue
  link $t $d/majority majority; link $t $d/teacher teacher
  [[ -f ../$d/student-general-ng2/metrics.json ]] && link $t $d/student-general-ng2 student-general-ng2
  case $t in
    MRPC) recipe=student-from-stsb-ng2 ;;
    STS-B) recipe=student-general-aug10 ;;
    QQP | MNLI | QNLI) recipe=student-general-ng2-aug5-e3 ;;
    *) recipe=student-general-ng2 ;;
  esac
  [[ -f ../$d/$recipe/metrics.json ]] && link $t $d/$recipe student-recipe
  case $t in CoLA | SST-2 | MRPC | STS-B) link $t $d/student-general student-general ;; esac
  [[ -f ../$d/student-random-ng2/metrics.json ]] && link $t $d/student-random-ng2 student-random-ng2
  true
done
