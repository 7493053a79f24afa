"""``cmow glue``: task-specific distillation on GLUE tasks, and the results table."""

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from ..data import DATA_DIR_ENV
from .data import TASKS, get_task
from .report import write_report
from .run import GlueRunConfig, run_task

logger = logging.getLogger(__name__)


def add_parser(commands) -> None:
    defaults = GlueRunConfig(task="")
    parser = commands.add_parser(
        "glue",
        help="fine-tune a teacher and distil a CMOW student on GLUE tasks",
        description="For each task: fine-tune a teacher (or reuse one), distil a CMOW student from its logits, keep "
        "the best epoch by the task's metric, evaluate on dev and save model, tokenizer and metrics.json.",
    )
    parser.add_argument(
        "tasks", nargs="*", metavar="TASK", help=f"'all' or any of {', '.join(TASKS)}; none: only --report"
    )
    parser.add_argument("--output-dir", default=defaults.output_dir, help="runs go to OUTPUT_DIR/<TASK>/")
    parser.add_argument(
        "--glue-dir",
        help=f"folder in the GLUE TSV layout (default: ${DATA_DIR_ENV}/glue if set, else nyu-mll/glue from the Hub)",
    )
    parser.add_argument("--teacher", help="a teacher already fine-tuned on the (single) task: skip fine-tuning")
    parser.add_argument("--teacher-base", help="model to fine-tune as teacher (default: all-MiniLM-L6-v2)")
    parser.add_argument("--student", help="CMOW checkpoint to start the student from (default: random init)")
    parser.add_argument("--student-name", help="student folder is student-NAME (default: random or pretrained)")
    parser.add_argument("--student-config", type=json.loads, default={}, help="JSON CMOWConfig overrides")
    for name in ("teacher_epochs", "teacher_lr", "student_epochs", "student_lr", "alpha", "temperature"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    for name in ("teacher_batch_size", "student_batch_size", "teacher_max_length", "eval_batch_size", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--max-train-samples", type=int, help="train on this many examples (quick runs)")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on this many examples (quick runs)")
    parser.add_argument("--report", metavar="MD", help="write the results table of OUTPUT_DIR into this markdown file")
    parser.add_argument("--report-command", help="the command to cite next to the table (default: this one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.tasks and not args.report:
        raise ValueError("Name GLUE tasks to run (or 'all'), or pass --report to only write the results table.")
    names = list(TASKS) if [t.lower() for t in args.tasks] == ["all"] else [get_task(t).name for t in args.tasks]
    if args.teacher and len(names) > 1:
        raise ValueError("--teacher is fine-tuned on one task: run one task at a time with it.")
    glue_dir = args.glue_dir
    if glue_dir is None and os.environ.get(DATA_DIR_ENV):
        glue_dir = str(Path(os.environ[DATA_DIR_ENV]) / "glue")
    fields = set(GlueRunConfig.__dataclass_fields__) - {"task", "glue_dir"}
    settings = {name: getattr(args, name) for name in fields}
    for name in names:
        records = run_task(GlueRunConfig(task=name, glue_dir=glue_dir, **settings))
        for role, record in records.items():
            logger.info("%s %s: %s", name, role, record["metrics"])
    if args.report:
        write_report(args.output_dir, args.report, args.report_command or "cmow " + shlex.join(sys.argv[1:]))
        logger.info("Wrote the results table to %s", args.report)
    return 0
