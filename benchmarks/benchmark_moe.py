"""End-to-end CPU throughput of a fine-tuned BERT teacher and its MoEBERT student, and where the time goes.

Both folders come from ``cmow glue TASK --student-type moe`` (``OUTPUT_DIR/TASK/teacher`` and ``student-moe``). Each
model goes from raw dev texts (pairs for pair tasks; a pair counts as one example) to logits with its own tokenizer
(truncated to ``--max-length``, padded to the longest text of the batch), batches in dev order. Both run in one
process, interleaved round by round, and the median round is reported, so a busy machine slows both alike.

A second pass times the parts with forward hooks: tokenizer, embeddings, attention, the FFN (teacher:
``intermediate`` + ``output``; student: the mixture-of-experts block, routing and token grouping included) and the
rest (masks, pooler, head, Python). Hooks cost a few microseconds each, so that pass is not the throughput pass.

    python benchmarks/benchmark_moe.py runs/glue-moe/MRPC/teacher runs/glue-moe/MRPC/student-moe \\
        --glue-dir ../shared/data/glue --threads 1
"""

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import cmow  # noqa: F401  registers MoEBERT with the Auto classes
from cmow.glue.data import load_glue
from cmow.moe import active_parameters

PARTS = ("tokenizer", "embeddings", "attention", "FFN / experts", "other")


def batches_of(data, batch_size: int) -> list[tuple[list[str], ...]]:
    """Dev texts (and second texts of pairs) in dev order, cut into batches."""
    columns = [data[name] for name in ("text_a", "text_b") if name in data.column_names]
    starts = range(0, len(data), batch_size)
    return [tuple(column[start : start + batch_size] for column in columns) for start in starts]


@torch.inference_mode()
def run(model, tokenizer, batches, max_length: int) -> float:
    """Seconds to turn every batch of texts into logits."""
    start = time.perf_counter()
    for texts in batches:
        inputs = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        model(**inputs)
    return time.perf_counter() - start


def timed_modules(model) -> dict[str, list[torch.nn.Module]]:
    """The modules of each part: BERT's (teacher) or MoEBERT's (student) names."""
    layers = model.base_model.encoder.layer
    ffn = (
        [layer.ffn for layer in layers]
        if hasattr(layers[0], "ffn")
        else [module for layer in layers for module in (layer.intermediate, layer.output)]
    )
    return {
        "embeddings": [model.base_model.embeddings],
        "attention": [layer.attention for layer in layers],
        "FFN / experts": ffn,
    }


@torch.inference_mode()
def breakdown(model, tokenizer, batches, max_length: int) -> dict[str, float]:
    """Seconds spent in each part over all batches, measured with forward hooks."""
    seconds, starts = defaultdict(float), {}
    part_of = {module: part for part, modules in timed_modules(model).items() for module in modules}

    def started(module, _inputs):
        starts[module] = time.perf_counter()

    def finished(module, _inputs, _output):
        seconds[part_of[module]] += time.perf_counter() - starts[module]

    handles = [module.register_forward_pre_hook(started) for module in part_of]
    handles += [module.register_forward_hook(finished) for module in part_of]
    try:
        total = 0.0
        for texts in batches:
            start = time.perf_counter()
            inputs = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            seconds["tokenizer"] += time.perf_counter() - start
            model(**inputs)
            total += time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    seconds["other"] = total - sum(seconds[part] for part in PARTS if part != "other")
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="fine-tuned BERT teacher folder (OUTPUT_DIR/TASK/teacher)")
    parser.add_argument("student", help="MoEBERT student folder (OUTPUT_DIR/TASK/student-moe)")
    parser.add_argument("--task", help="GLUE task of the dev texts (default: the student's metrics.json task)")
    parser.add_argument("--glue-dir", help="folder in the GLUE TSV layout (default: $CMOW_DATA_DIR/glue)")
    parser.add_argument("--threads", type=int, default=1, help="torch and tokenizer threads (default: 1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256], help="(default: 1 256)")
    parser.add_argument("--max-length", type=int, default=128, help="truncation, as cmow glue's (default: 128)")
    parser.add_argument("--max-texts", type=int, help="time the first this many dev examples (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts (default: 3)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.disable_progress_bar()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # the fast tokenizer's pool starts on first use
    task = args.task or json.loads((Path(args.student) / "metrics.json").read_text())["task"]
    glue_dir = args.glue_dir or str(Path(os.environ["CMOW_DATA_DIR"]) / "glue")
    dev = load_glue(task, glue_dir)["validation"]
    dev = dev.select(range(min(args.max_texts or len(dev), len(dev))))
    models = {}
    for role, folder in (("teacher", args.teacher), ("student", args.student)):
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        models[role] = (model, AutoTokenizer.from_pretrained(folder))
        print(
            f"{role}: {type(model).__name__}, {model.num_parameters():,} parameters, "
            f"{active_parameters(model):,} active per token"
        )
    print(f"\n{task} dev, {len(dev)} examples, {args.threads} thread(s), truncated to {args.max_length} tokens\n")

    speed, parts = {}, {}
    for batch_size in args.batch_sizes:
        batches = batches_of(dev, batch_size)
        for model, tokenizer in models.values():  # warm-up: first calls allocate and build caches
            run(model, tokenizer, batches[:2], args.max_length)
        rounds = defaultdict(list)
        for _ in range(args.rounds):
            for role, (model, tokenizer) in models.items():
                rounds[role].append(run(model, tokenizer, batches, args.max_length))
        for role, (model, tokenizer) in models.items():
            speed[role, batch_size] = len(dev) / statistics.median(rounds[role])
            parts[role, batch_size] = breakdown(model, tokenizer, batches, args.max_length)

    print("| model | batch | examples/s | vs teacher |")
    print("|---|---|---|---|")
    for batch_size in args.batch_sizes:
        for role in models:
            ratio = speed[role, batch_size] / speed["teacher", batch_size]
            print(f"| {role} | {batch_size} | {speed[role, batch_size]:.1f} | {ratio:.2f}x |")
    print("\nWhere the time goes (forward hooks; microseconds per example, share of the time):\n")
    print("| model | batch | " + " | ".join(PARTS) + " |")
    print("|---|---|" + "---|" * len(PARTS))
    for batch_size in args.batch_sizes:
        for role in models:
            seconds = parts[role, batch_size]
            total = sum(seconds.values())
            cells = [f"{1e6 * seconds[part] / len(dev):.0f} ({100 * seconds[part] / total:.0f}%)" for part in PARTS]
            print(f"| {role} | {batch_size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
