#!/usr/bin/env bash
# Estimate the wall-clock time of examples/glue_all.sh on this machine from the tasks already run in OUT (default
# runs/glue): teacher fine-tuning scales with the train tokens (at 128) x epochs, student training with the optimizer
# steps. Needs CMOW_DATA_DIR (local GLUE TSVs) and finished `cmow glue TASK` runs in OUT.
#
#   CMOW_DATA_DIR=../shared/data examples/glue_estimate.sh [OUT] [TEACHER_EPOCHS] [STUDENT_EPOCHS] [STUDENT_BATCH]
set -euo pipefail
OUT=${1:-runs/glue} TEACHER_EPOCHS=${2:-3} STUDENT_EPOCHS=${3:-3} STUDENT_BATCH=${4:-64}
python - "$OUT" "$TEACHER_EPOCHS" "$STUDENT_EPOCHS" "$STUDENT_BATCH" <<'PY'
import math, os, sys
from pathlib import Path

from transformers import AutoTokenizer

from cmow.data import default_teacher
from cmow.glue import TASKS, load_glue
from cmow.glue.report import collect_results

out, teacher_epochs, student_epochs, batch = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(default_teacher())
rows, tokens = {}, {}
for name in TASKS:
    train = load_glue(name, Path(os.environ["CMOW_DATA_DIR"]) / "glue")["train"]
    texts = [list(train[c]) for c in ("text_a", "text_b") if c in train.column_names]
    rows[name] = len(train)
    tokens[name] = sum(map(len, tokenizer(*texts, truncation=True, max_length=128)["input_ids"]))
results = collect_results(out)
teacher_rates, student_rates = [], []
for name, record in results.get("teacher", {}).items():
    if "train_seconds" in record:
        teacher_rates.append(tokens[name] * record["settings"]["epochs"] / record["train_seconds"])
for role, records in results.items():
    for name, record in records.items():
        if role != "teacher":
            s = record["settings"]
            student_rates.append(math.ceil(rows[name] / s["batch_size"]) * s["epochs"] / record["train_seconds"])
teacher_rate, student_rate = sum(teacher_rates) / len(teacher_rates), sum(student_rates) / len(student_rates)
print(f"measured: teacher {teacher_rate:.0f} train tokens/s, student {student_rate:.2f} steps/s")
total_teacher = sum(tokens.values()) * teacher_epochs / teacher_rate
total_student = sum(math.ceil(n / batch) * student_epochs for n in rows.values()) / student_rate
for name in TASKS:
    t = tokens[name] * teacher_epochs / teacher_rate
    s = math.ceil(rows[name] / batch) * student_epochs / student_rate
    print(f"{name:6s} rows {rows[name]:6d} tokens {tokens[name]:7d}  teacher {t / 60:6.1f} min  student {s / 60:5.1f} min")
logits = sum(tokens.values()) / (3 * teacher_rate)  # a forward pass costs about a third of a training step
print(f"all nine: teacher {total_teacher / 3600:.1f} h ({teacher_epochs:g} epochs), "
      f"teacher logits ~{logits / 3600:.1f} h, student {total_student / 3600:.1f} h ({student_epochs:g} epochs, "
      f"batch {batch}); total ~{(total_teacher + logits + total_student) / 3600:.1f} h")
PY
