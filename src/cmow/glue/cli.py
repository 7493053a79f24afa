"""``cmow glue``: task-specific distillation on GLUE tasks, and the results table."""

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from ..configuration_moebert import ROUTINGS
from ..data import DATA_DIR_ENV
from ..hub_cards import public_name
from .data import TASKS, get_task
from .report import write_report
from .run import DEFAULT_COPIES, DEFAULT_NGRAMS, STUDENT_DEFAULTS, GlueRunConfig, run_task
from .selection import SELECTIONS
from .transfer import check_transfer_source

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GlueRunConfig(task="")
    parser.description = (
        "For each task: fine-tune a teacher (or reuse one), distil a CMOW student from its logits (on train and an "
        "optional teacher-labelled transfer set) or, with --student-type moe, a MoEBERT student converted from it, "
        "keep the best epoch on a held-out slice of train (or the last), evaluate on dev once and save model, "
        "tokenizer, metrics.json and card; also the majority baseline."
    )
    parser.add_argument(
        "tasks", nargs="*", metavar="TASK", help=f"'all' or any of {', '.join(TASKS)}; none: only --report"
    )
    parser.add_argument(
        "--output-dir", default=defaults.output_dir, help="runs go to OUTPUT_DIR/<TASK>/ (default: %(default)s)"
    )
    parser.add_argument(
        "--glue-dir",
        help=f"folder in the GLUE TSV layout (default: ${DATA_DIR_ENV}/glue if set, else nyu-mll/glue from the Hub)",
    )
    parser.add_argument("--max-train-samples", type=int, help="train on this many examples (default: all)")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on this many examples (default: all)")
    parser.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size, help=_help("eval batch size"))
    parser.add_argument("--seed", type=int, default=defaults.seed, help=_help("seed of data splits and training"))
    parser.add_argument(
        "--selection",
        choices=SELECTIONS,
        default=defaults.selection,
        help="keep the best epoch on a held-out slice of train, the last epoch, or the best on dev (flatters the dev "
        "score) (default: %(default)s)",
    )
    parser.add_argument(
        "--held-out-fraction",
        type=float,
        default=defaults.held_out_fraction,
        help=_help("size of the held-out slice of train for --selection held-out"),
    )
    parser.add_argument(
        "--detokenize-train",
        action="store_true",
        help="detokenize a tokenized train set whose dev set is raw text (CoLA's train file in some GLUE copies: "
        "split clitics and commas, no final period) to match it",
    )
    parser.add_argument(
        "--report", metavar="MD", help="write the results table of OUTPUT_DIR into this markdown file (default: none)"
    )
    parser.add_argument("--report-command", help="the command to cite next to the table (default: this one)")

    teacher = parser.add_argument_group("teacher")
    teacher.add_argument(
        "--teacher", help="a teacher already fine-tuned on the (single) task: no fine-tuning (default: none)"
    )
    teacher.add_argument("--teacher-base", help="model to fine-tune as teacher (default: all-MiniLM-L6-v2)")
    teacher.add_argument("--teacher-only", action="store_true", help="fine-tune (or reuse) the teacher and stop")
    teacher.add_argument("--teacher-seed", type=int, help="seed of the teacher's fine-tuning (default: --seed)")
    for name, kind, text in (
        ("teacher_epochs", float, "epochs of teacher fine-tuning"),
        ("teacher_lr", float, "teacher learning rate"),
        ("teacher_batch_size", int, "teacher batch size"),
        ("teacher_warmup_ratio", float, "fraction of teacher steps spent warming up the learning rate"),
        ("teacher_weight_decay", float, "teacher weight decay"),
        ("teacher_max_length", int, "teacher inputs are truncated to this many tokens (the student reads all)"),
    ):
        teacher.add_argument(_flag(name), type=kind, default=getattr(defaults, name), help=_help(text))

    student = parser.add_argument_group("student: loss alpha * CE(gold) + (1 - alpha) * T^2 KL(teacher)")
    student.add_argument(
        "--student-type",
        choices=tuple(STUDENT_DEFAULTS),
        default=defaults.student_type,
        help="cmow: a CMOW student; moe: a MoEBERT student converted from the teacher (see the MoEBERT flags) "
        "(default: %(default)s)",
    )
    student.add_argument("--student", help="CMOW checkpoint to start the student from (default: random init)")
    student.add_argument(
        "--student-seed",
        type=int,
        help="seed of the student's init and batch order; split, held-out slice and copies follow --seed "
        "(default: none: batches follow --seed, the init the random state the teacher step leaves)",
    )
    student.add_argument("--student-name", help="student folder is student-NAME (default: random, pretrained or moe)")
    student.add_argument(
        "--student-config",
        type=json.loads,
        action="append",
        default=[],
        help="JSON CMOWConfig overrides, also on top of --student (e.g. '{\"ngram_orders\": [2, 3]}'); may be given "
        "more than once, later keys win (default: none; a classification student without n-grams in this or its "
        f"checkpoint gets {json.dumps(DEFAULT_NGRAMS['classification'])}, '{{\"ngram_orders\": null}}' turns them "
        "off)",
    )
    for name, text in (("student_epochs", "epochs of student distillation"), ("student_lr", "student learning rate")):
        key = name.removeprefix("student_")
        by_type = ", ".join(f"{values[key]:g} for {kind}" for kind, values in STUDENT_DEFAULTS.items())
        student.add_argument(_flag(name), type=float, help=f"{text} (default: {by_type})")
    for name, kind, text in (
        ("student_batch_size", int, "student batch size"),
        ("alpha", float, "weight of the gold-label loss; the rest goes to the teacher's logits"),
        ("temperature", float, "softmax temperature T of the distillation loss"),
    ):
        student.add_argument(_flag(name), type=kind, default=getattr(defaults, name), help=_help(text))

    moe = parser.add_argument_group(
        "MoEBERT student (--student-type moe): the teacher's FFNs split into experts; loss distill_weight * sum_l "
        "MSE(student_h_l, teacher_h_l) + the loss above"
    )
    moe.add_argument("--moe-experts", type=int, default=defaults.moe_experts, help=_help("experts per FFN"))
    moe.add_argument(
        "--moe-expert-size", type=int, help="neurons per expert, shared ones included (default: half the teacher's)"
    )
    moe.add_argument(
        "--moe-shared-size",
        type=int,
        help="most important neurons, held by every expert (default: a quarter of the teacher's, more where the "
        "experts would not fit otherwise)",
    )
    moe.add_argument(
        "--moe-routing",
        choices=ROUTINGS,
        default=defaults.moe_routing,
        help="hash: a fixed random table sends each token id to one expert; gate: a learned gate picks one expert per "
        "token (default: %(default)s)",
    )
    for name, kind, text in (
        ("moe_distill_weight", float, "weight of the hidden-state MSE (MoEBERT's 5.0)"),
        ("moe_importance_batch_size", int, "examples per term of the importance score (1: MoEBERT's per-example)"),
    ):
        moe.add_argument(_flag(name), type=kind, default=getattr(defaults, name), help=_help(text))
    moe.add_argument(
        "--moe-importance-examples",
        type=int,
        default=defaults.moe_importance_examples,
        help=_help("train examples the teacher's FFN neurons are scored on (0: all)"),
    )

    transfer = parser.add_argument_group("transfer set: extra examples labelled by the teacher")
    transfer.add_argument(
        "--augment-copies",
        type=int,
        help="Tang et al.'s augmented copies per train example (default: "
        + ", ".join(f"{copies} for {kind}" for kind, copies in DEFAULT_COPIES.items())
        + " tasks; 0 for MoEBERT students)",
    )
    for name, kind, text in (
        ("augment_mask_p", float, "augmentation: probability that a word becomes the mask token"),
        ("augment_replace_p", float, "augmentation: probability of replacing a word by a word drawn from train"),
        ("augment_ngram_p", float, "augmentation: probability of keeping only a random n-gram of the text"),
        ("augment_max_ngram", int, "augmentation: longest n-gram kept"),
    ):
        transfer.add_argument(_flag(name), type=kind, default=getattr(defaults, name), help=_help(text))
    transfer.add_argument(
        "--transfer-texts",
        nargs="+",
        metavar="SOURCE",
        help="unlabeled texts, one source or several (glue:TASK, a text file, .gz/.jsonl/.parquet or a dataset); "
        "for a pair task another pair task's glue:TASK gives its pairs as written, other texts are paired two by two "
        "(default: none)",
    )
    transfer.add_argument(
        "--transfer-text-column",
        default=defaults.transfer_text_column,
        help=_help("column of a --transfer-texts dataset that holds the texts"),
    )
    transfer.add_argument(
        "--transfer-max-texts",
        type=int,
        help="read at most this many texts of each --transfer-texts source (pairs, for a pair task's glue:TASK; "
        "default: all)",
    )
    transfer.add_argument(
        "--label-shard-size",
        type=int,
        default=defaults.label_shard_size,
        help=_help("transfer examples per cached shard of teacher logits (the unit of resuming)"),
    )
    parser.set_defaults(func=run)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(text: str) -> str:
    return text + " (default: %(default)s)"


def public_command(argv: list[str]) -> str:
    """``cmow ARGV`` as recorded in ``metrics.json``: absolute and home paths become ``public_name``s, so the user's
    directory layout is not published; relative paths (the repository's, as in the docs) are kept."""

    def public(arg: str) -> str:
        flag, equals, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        return flag + equals + (public_name(value) if value.startswith(("/", "~")) else value)

    return "cmow " + shlex.join(public(arg) for arg in argv)


def run(args: argparse.Namespace) -> int:
    for source in args.transfer_texts or ():  # first: `--transfer-texts glue:MNLI RTE` leaves no task
        check_transfer_source(source)
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
