"""The ``cmow`` command line: one sub-command per job, each defined next to the code it runs."""

import argparse
import logging
import sys

from . import __version__, export, hub, hub_cards, train_sst2
from .distill import cli as distill_cli
from .evaluation import cli as evaluation_cli
from .glue import cli as glue_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmow",
        description="Distil pretrained language models into tiny, fast CMOW matrix-embedding models.",
    )
    parser.add_argument("--version", action="version", version=f"cmow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_sst2.add_parser(commands)
    glue_cli.add_parser(commands)
    hub_cards.add_parser(commands)
    hub.add_parser(commands)
    distill_cli.add_parser(commands)
    evaluation_cli.add_parser(commands)
    export.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # for jobs that record the command that ran them
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
