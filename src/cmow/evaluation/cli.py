"""``cmow evaluate``: one table of frozen-embedding scores for students, the teacher and static baselines."""

import argparse
import json
import os

import torch

EPILOG = """examples:
  cmow evaluate outputs/cmow-distilled teacher static static-sif random
  cmow evaluate outputs/cmow-distilled --output pooled_features      # the raw [cbow; fw; bw] features instead
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .models import BASELINES

    parser.description = (
        "Evaluate frozen sentence embeddings: STS-B dev Spearman of cosine similarities; SST-2 dev and MRPC dev "
        "accuracy of logistic regressions trained on frozen train embeddings; a word-order (bigram shift) probe on "
        "held-out corpus sentences; size and sentences/s. Prints a markdown table."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help=f"CMOW folders or Hub ids, and/or baselines: {', '.join(BASELINES)}"
    )
    parser.add_argument("--teacher", help="teacher of the baselines (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument(
        "--output",
        choices=("sentence_embedding", "pooled_features"),
        default="sentence_embedding",
        help="what a CMOW model contributes (default: sentence_embedding, what cmow.encode returns)",
    )
    parser.add_argument("--sst2-train-size", type=int, default=20_000, help="SST-2 train sample (default: 20000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of samples and probes (default: 0)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to this JSON file")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..data import default_teacher
    from ..distill.default_corpus import build_default_corpus
    from .models import BASELINES, baseline_embedders, folder_embedder
    from .tasks import evaluate, markdown_table

    teacher = args.teacher or default_teacher()
    embedders = []
    for name in args.models:
        if name in BASELINES:
            corpus = build_default_corpus(args.data_dir) if name == "static-sif" else None
            embedders += baseline_embedders([name], teacher, corpus)
        else:
            embedders.append(folder_embedder(name, args.output))
    evaluate(embedders, args.data_dir, args.sst2_train_size, args.seed)
    print(
        f"\nFrozen embeddings; SST-2: logistic regression on {args.sst2_train_size or 'all'} train sentences; "
        f"sentences/s: SST-2 dev, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs\n"
    )
    print(markdown_table(embedders))
    if args.json:
        with open(args.json, "w") as handle:
            rows = [
                {"model": e.name, "parameters": e.parameters, "disk_bytes": e.disk_bytes, **e.results}
                for e in embedders
            ]
            json.dump(rows, handle, indent=1)
    return 0
