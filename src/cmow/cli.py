"""The ``cmow`` command line: one sub-command per job, its options defined next to the code it runs.

Only the module of the command being run is imported (inside ``add_arguments``), so ``cmow --help`` loads none of
the training, data or evaluation stacks; what it still costs is ``import cmow`` (torch and transformers), which
registers the CMOW classes with the Auto classes.
"""

import argparse
import logging
import os
import sys

from . import __version__

# name: one-line help, in the order ``cmow --help`` lists them (the main job first).
COMMANDS = {
    "distill": "distil a teacher (any Hub id or folder) into a small CMOW encoder on a text corpus",
    "evaluate": "score frozen embeddings (STS-B, SST-2, MRPC, word order) against the teacher and static baselines",
    "glue": "fine-tune a teacher and distil a CMOW (or MoEBERT) student on GLUE tasks",
    "train-sst2": "train a random-init bidirectional Hybrid CMOW classifier on SST-2 with the Trainer",
    "quantize": "copy a checkpoint with int8 or float16 weights (4x or 2x smaller)",
    "export": "export a checkpoint to ONNX (sentence embedding or logits), checked in onnxruntime",
    "card": "(re)write the model card README.md of a checkpoint folder",
    "push": "upload a checkpoint folder (safetensors, remote code, tokenizer, card) to the Hub",
}

# Errors that a user can fix (a missing folder or package, a bad setting): shown as one line, not a traceback.
USER_ERRORS = (FileNotFoundError, ModuleNotFoundError, ValueError)


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Let the module that runs ``command`` define its options (imported here, for this command only)."""
    if command == "distill":
        from .distill.cli import add_arguments
    elif command == "evaluate":
        from .evaluation.cli import add_arguments
    elif command == "glue":
        from .glue.cli import add_arguments
    elif command == "train-sst2":
        from .train_sst2 import add_arguments
    elif command == "quantize":
        from .quantize import add_arguments
    elif command == "export":
        from .export import add_arguments
    elif command == "card":
        from .hub_cards import add_arguments
    else:
        from .hub import add_arguments
    add_arguments(parser)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``cmow``, with the options of ``command`` (the other commands are listed with their help)."""
    parser = argparse.ArgumentParser(
        prog="cmow",
        description="Distil pretrained language models into tiny, fast CMOW matrix-embedding models.",
        epilog="Run `cmow COMMAND --help` for a command's options. Outside an activated virtual environment, call the "
        "executable by its path (e.g. .venv/bin/cmow) or use `python -m cmow`.",
    )
    parser.add_argument("--version", action="version", version=f"cmow {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages, library warnings and progress bars"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        subparser = commands.add_parser(name, help=help_text)
        if name == command:
            add_arguments(name, subparser)
    return parser


def configure_logging(verbose: bool) -> None:
    """cmow's INFO logs (everything at DEBUG with ``verbose``); without ``verbose``, no library progress bars, and
    from the libraries only warnings (transformers: only errors).

    Quiet means: no "Loading weights" / "Writing model shards" / datasets "Map" bars and no transformers warnings such
    as the LOAD REPORT that lists a freshly initialised classifier head as missing weights (expected for a new head).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("cmow").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        return
    import huggingface_hub.utils
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    if "datasets" in sys.modules:  # imported with the command's module
        sys.modules["datasets"].disable_progress_bars()
    else:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    args.argv = list(argv)  # for jobs that record the command that ran them
    configure_logging(args.verbose)
    try:
        return args.func(args) or 0
    except USER_ERRORS as error:
        if args.verbose:
            raise
        print(f"cmow {args.command}: error: {error}\n(run with --verbose for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
