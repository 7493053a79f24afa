"""``cmow glue``: task-specific distillation on GLUE tasks, and the results table."""

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from ..data import DATA_DIR_ENV
from ..hub_cards import public_name
from .data import TASKS, get_task
from .report import write_report
from .run import GlueRunConfig, run_task
from .selection import SELECTIONS

logger = logging.getLogger(__name__)


def add_parser(commands) -> None:
    defaults = GlueRunConfig(task="")
    parser = commands.add_parser(
        "glue",
        help="fine-tune a teacher and distil a CMOW student on GLUE tasks",
        description="For each task: fine-tune a teacher (or reuse one), distil a CMOW student from its logits (on "
        "train and an optional teacher-labelled transfer set), keep the best epoch on a held-out slice of train (or "
        "the last), evaluate on dev once and save model, tokenizer and metrics.json; also the majority baseline.",
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
    parser.add_argument(
        "--student-config",
        type=json.loads,
        action="append",
        default=[],
        help="JSON CMOWConfig overrides, also on top of --student (e.g. '{\"ngram_orders\": [2, 3]}'); may be given "
        "more than once, later keys win",
    )
    parser.add_argument("--teacher-only", action="store_true", help="fine-tune (or reuse) the teacher and stop")
    parser.add_argument("--teacher-seed", type=int, help="seed of the teacher's fine-tuning (default: --seed)")
    floats = ("teacher_epochs", "teacher_lr", "teacher_warmup_ratio", "teacher_weight_decay", "student_epochs")
    floats += ("student_lr", "alpha", "temperature", "held_out_fraction")
    floats += ("augment_mask_p", "augment_replace_p", "augment_ngram_p")
    for name in floats:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    ints = ("teacher_batch_size", "student_batch_size", "teacher_max_length", "eval_batch_size", "seed")
    ints += ("augment_max_ngram", "label_shard_size")
    for name in ints:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument(
        "--selection",
        choices=SELECTIONS,
        default=defaults.selection,
        help="keep the best epoch on a held-out slice of train (default), the last epoch, or the best on dev "
        "(flatters the dev score)",
    )
    parser.add_argument(
        "--augment-copies",
        type=int,
        default=defaults.augment_copies,
        help="transfer set: Tang et al.'s augmented copies per train example, labelled by the teacher (default 0)",
    )
    parser.add_argument(
        "--transfer-texts",
        help="transfer set: unlabeled texts (glue:TASK, a text file, .gz/.jsonl/.parquet or a dataset); paired for "
        "pair tasks",
    )
    parser.add_argument("--transfer-text-column", default=defaults.transfer_text_column)
    parser.add_argument("--transfer-max-texts", type=int, help="read at most this many --transfer-texts")
    parser.add_argument("--max-train-samples", type=int, help="train on this many examples (quick runs)")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on this many examples (quick runs)")
    parser.add_argument("--report", metavar="MD", help="write the results table of OUTPUT_DIR into this markdown file")
    parser.add_argument("--report-command", help="the command to cite next to the table (default: this one)")
    parser.set_defaults(func=run)


def public_command(argv: list[str]) -> str:
    """``cmow ARGV`` as recorded in ``metrics.json``: absolute and home paths become ``public_name``s, so the user's
    directory layout is not published; relative paths (the repository's, as in the docs) are kept."""

    def public(arg: str) -> str:
        flag, equals, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        return flag + equals + (public_name(value) if value.startswith(("/", "~")) else value)

    return "cmow " + shlex.join(public(arg) for arg in argv)


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
    settings["student_config"] = {key: value for overrides in args.student_config for key, value in overrides.items()}
    command = public_command(getattr(args, "argv", sys.argv[1:]))
    for name in names:
        records = run_task(GlueRunConfig(task=name, glue_dir=glue_dir, **settings), command=command)
        for role, record in records.items():
            logger.info("%s %s: %s", name, role, record["metrics"])
    if args.report:
        write_report(args.output_dir, args.report, args.report_command or command)
        logger.info("Wrote the results table to %s", args.report)
    return 0
