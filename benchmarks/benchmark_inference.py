"""End-to-end CPU inference benchmark of CMOW against transformer and static-embedding peers.

From raw text to pooled embeddings (and to classification logits), on SST-2 sentences and Gutenberg paragraphs from
the shared data, at several batch sizes. Every system gets the same batches (texts sorted by token count, then cut
into batches), so the ratios are fair; slow systems are timed on a random sample of those batches. All systems run
in one process, interleaved, so the ratios hold even when the machine is busy.

    python benchmarks/benchmark_inference.py --data-dir ../shared/data            # more texts, 3 s per system
    python benchmarks/benchmark_inference.py --data-dir ../shared/data --quick    # ~6 min on a busy 2-core machine

On a machine other jobs share, ``--threads 1 --cpu-time`` rates each system per second of this process's CPU time
(steadier; close to an idle machine's single-thread rates), and ``--systems`` times only the named systems, e.g.
``--systems "CMOW, kernel off (torch path)" "model2vec (from MiniLM)"``.
"""

import argparse
import contextlib
import csv
import gzip
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
)

from cmow import CMOWConfig, CMOWForSequenceClassification, CMOWModel, encode
from cmow.data import data_dir, default_teacher
from cmow.encode import WORDPIECE_MODULE, _backend_ids, _token_ids, _unpadded, pad_batch
from cmow.modeling_cmow import KERNEL_MODULE, normalize_product

MODEL2VEC_CACHE = Path.home() / ".cache" / "cmow" / "model2vec-all-minilm-l6-v2"
OURS, LOOP, LOGITS = "CMOW Hybrid bidir (ours)", "CMOW sequential loop", "CMOW classifier logits"
KERNEL_OFF = "CMOW, kernel off (torch path)"
PLAIN = "CMOW plain forward (transformers way)"  # model(**tokenizer(batch, padding=True, ...)).pooler_output
# The hashed n-gram bag (CMOWConfig.ngram_orders) on top of ours, with the default 2**18 buckets.
NGRAM_SYSTEMS = {"CMOW + bigrams": (2,), "CMOW + bi/trigrams": (2, 3)}
MODEL2VEC = "model2vec (from MiniLM)"
MEMORY_BATCH = 64


# --- data ---


def sst2_sentences(folder: Path, limit: int | None) -> list[str]:
    with open(folder / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [row[0] for row in rows][:limit]


def corpus_paragraphs(folder: Path, limit: int) -> list[str]:
    paragraphs = []
    with gzip.open(folder / "corpus" / "gutenberg_train_50MB.txt.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            if 40 <= len(line.split()) <= 150:  # paragraphs (not headings) that fit a 512-token transformer
                paragraphs.append(line.strip())
            if len(paragraphs) == limit:
                break
    return paragraphs


def sorted_batches(tokenizer, texts: list[str], batch_size: int) -> list[list[str]]:
    """The same batches for every system: texts sorted by token count, then cut."""
    lengths = [len(ids) for ids in _token_ids(tokenizer, texts)]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    return [[texts[i] for i in order[start : start + batch_size]] for start in range(0, len(texts), batch_size)]


# --- systems: each maps a batch of raw texts to a tensor ---


@contextlib.contextmanager
def module_hidden(name: str):
    """Hide one of cmow's compiled extensions, as if cmow were installed without it (the kernel: the encoder runs its
    torch path; the tokenizer: the cmow path tokenizes with the backend)."""
    module = sys.modules.pop(name, None)
    try:
        yield
    finally:
        if module is not None:
            sys.modules[name] = module


def kernel_hidden():
    return module_hidden(KERNEL_MODULE)


def kernel_off(run):
    def run_without_kernel(texts):
        with kernel_hidden():
            return run(texts)

    return run_without_kernel


def mean_pooled(model, tokenizer, max_length: int = 512):
    def run(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    return run


def transformer_tokenize(tokenizer, max_length: int = 512):
    return lambda texts: tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def cmow_tokenize(tokenizer, pad_token_id: int):
    return lambda texts: pad_batch(_token_ids(tokenizer, texts), pad_token_id)


def backend_tokenize(tokenizer, pad_token_id: int):
    """The cmow path with the Rust backend alone (no compiled WordPiece tokenizer)."""
    unpadded = _unpadded(tokenizer, tokenizer.backend_tokenizer)
    return lambda texts: pad_batch(_backend_ids(unpadded, texts), pad_token_id)


def plain_forward(model, tokenizer):
    """What a transformers user writes first: the tokenizer call with padding, then the forward's pooler_output."""

    def run(texts):
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output

    return run


def cmow_logits(model, tokenizer):
    def run(texts):
        input_ids, mask = pad_batch(_token_ids(tokenizer, texts), model.config.pad_token_id)
        return model(input_ids, mask).logits

    return run


def loop_product(matrices: torch.Tensor) -> torch.Tensor:
    """The paper's implementation style: a Python loop over positions, one batched matmul each."""
    product = matrices[:, 0]
    for position in range(1, matrices.shape[1]):
        product = normalize_product(product @ matrices[:, position])
    return normalize_product(product)


def loop_cmow(model: CMOWModel, tokenizer):
    """Sequential-loop CMOW on the same weights and tokens: the baseline for the log-depth encoder."""
    encoder = model.encoder

    def pooled(input_ids, mask):
        mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask  # one text: pad_batch gives None
        features = []
        if encoder.cbow_embeddings is not None:
            vectors = encoder.cbow_embeddings(input_ids) * mask[..., None]
            features.append(vectors.sum(1) / mask.sum(1, keepdim=True))
        for table, reverse in ((encoder.cmow_embeddings, False), (encoder.cmow_bw_embeddings, True)):
            if table is not None:
                ids, table_mask = (input_ids.flip(1), mask.flip(1)) if reverse else (input_ids, mask)
                features.append(loop_product(table(ids, table_mask)).flatten(1))
        return torch.cat(features, dim=-1)

    def run(texts):
        return pooled(*pad_batch(_token_ids(tokenizer, texts), model.config.pad_token_id))

    run.pooled = pooled
    return run


def model2vec_model(teacher: str):
    """A model2vec StaticModel distilled (offline) from the teacher folder, cached; None if model2vec is missing."""
    try:
        from model2vec import StaticModel
    except ImportError:
        return None
    if not (MODEL2VEC_CACHE / "model.safetensors").exists():
        from model2vec.distill import distill

        print(f"Distilling model2vec from {teacher} (once, ~3 min; cached in {MODEL2VEC_CACHE}) ...", flush=True)
        distill(teacher, pca_dims=256).save_pretrained(str(MODEL2VEC_CACHE))
    return StaticModel.from_pretrained(str(MODEL2VEC_CACHE))


# --- measuring ---


def throughput(run, batches: list[list[str]], budget_s: float, min_rounds: int = 3, clock=time.perf_counter) -> float:
    """Texts per second: the best of several timed passes over all batches, in shuffled order.

    Fast systems get passes until the budget is spent (at least ``min_rounds``), so one-off costs and noise from
    other processes do not decide the rate; a slow system's single pass stops at the budget, on a random sample.
    ``clock`` is wall time, or ``time.process_time`` for seconds of this process's CPU time.
    """
    run(batches[len(batches) // 2][:2])  # warm-up
    best, spent, round_index = 0.0, 0.0, 0
    while round_index < min_rounds or spent < budget_s:
        order = random.Random(round_index).sample(range(len(batches)), len(batches))
        texts, start = 0, clock()
        for index in order:
            run(batches[index])
            texts += len(batches[index])
            if clock() - start > budget_s:
                break
        elapsed = clock() - start
        best, spent, round_index = max(best, texts / elapsed), spent + elapsed, round_index + 1
        if elapsed > budget_s:  # a slow system: one (partial) pass is all the budget allows
            break
    return best


def peak_extra_rss_mb(run, batch: list[str]) -> float:
    """Peak resident memory above the level before the call, sampled every millisecond while ``run(batch)`` runs."""
    process, peak, done = psutil.Process(), [0], threading.Event()
    before = process.memory_info().rss

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run(batch)
    done.set()
    sampler.join()
    return max(0, peak[0] - before) / 2**20


def size_on_disk_mb(save) -> float:
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()) / 2**20


def parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# --- the run ---


def build(names, teacher: str, tokenizer):
    """The systems called ``names`` (all when None), each a function from a batch of texts to a tensor, and the
    models behind them."""

    def wanted(name: str) -> bool:
        return names is None or name in names

    systems, models = {}, {}
    if wanted(OURS) or wanted(LOOP) or wanted(KERNEL_OFF) or wanted(PLAIN):
        models[OURS] = cmow = CMOWModel(CMOWConfig()).eval()
        systems[OURS] = lambda texts: encode(cmow, tokenizer, texts, batch_size=len(texts))
        systems[KERNEL_OFF] = kernel_off(systems[OURS])
        systems[LOOP] = loop_cmow(cmow, tokenizer)
        systems[PLAIN] = plain_forward(cmow, tokenizer)
    for name, orders in NGRAM_SYSTEMS.items():
        if wanted(name):
            with_ngrams = CMOWModel(CMOWConfig(ngram_orders=orders)).eval()
            systems[name] = lambda texts, model=with_ngrams: encode(model, tokenizer, texts, batch_size=len(texts))
    peers = {
        "BERT-base (random)": lambda: BertModel(BertConfig()).eval(),
        "DistilBERT (random)": lambda: DistilBertModel(DistilBertConfig()).eval(),
        "all-MiniLM-L6-v2": lambda: AutoModel.from_pretrained(teacher).eval(),
    }
    for name, load in peers.items():
        if wanted(name):
            models[name] = load()
            systems[name] = mean_pooled(models[name], tokenizer)
    if wanted(MODEL2VEC) and (static := model2vec_model(teacher)) is not None:
        models[MODEL2VEC] = static
        systems[MODEL2VEC] = lambda texts: static.encode(texts, batch_size=len(texts))
    if wanted(LOGITS):
        classifier = CMOWForSequenceClassification(CMOWConfig(num_labels=2)).eval()
        systems[LOGITS] = cmow_logits(classifier, tokenizer)
    return {name: run for name, run in systems.items() if wanted(name)}, models


def memory_in_fresh_process(name: str, folder: Path, threads: int) -> float:
    """``peak_extra_rss_mb`` of one system, measured in a new process: in this one, memory that other systems freed
    would be reused and hide the peak."""
    command = [sys.executable, __file__, "--data-dir", str(folder), "--threads", str(threads), "--memory-of", name]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--quick", action="store_true", help="fewer texts and a shorter time budget per system")
    parser.add_argument("--budget", type=float, default=None, help="seconds per system and setting")
    parser.add_argument(
        "--systems",
        nargs="+",
        default=None,
        help="time only these systems (ours is always included) and the tokenizers; skips memory, sizes and the "
        "encoder-only comparison",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="rates per second of this process's CPU time instead of wall time: steadier on a machine that other jobs "
        "share; with --threads 1 close to an idle machine's wall-time rates",
    )
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: one system's peak memory
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # the Rust tokenizer's pool starts on first use
    torch.manual_seed(0)
    folder = data_dir(args.data_dir)
    teacher = default_teacher()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    sst2 = sst2_sentences(folder, 872)
    longest = sorted_batches(tokenizer, sst2, MEMORY_BATCH)[-1]  # the 64 longest SST-2 dev sentences

    if args.memory_of is not None:
        systems, _ = build([args.memory_of], teacher, tokenizer)
        with torch.inference_mode():
            systems[args.memory_of](longest[:2])  # warm-up: one-off initialisation is not a per-batch cost
            print(peak_extra_rss_mb(systems[args.memory_of], longest))
        return

    budget = args.budget or (1.0 if args.quick else 3.0)
    datasets = {
        "SST-2 dev sentences": sst2[: 512 if args.quick else 872],
        "Gutenberg paragraphs": corpus_paragraphs(folder, 256 if args.quick else 1024),
    }
    systems, models = build(args.systems and [OURS, *args.systems], teacher, tokenizer)
    clock = time.process_time if args.cpu_time else time.perf_counter
    tokenize_only = {
        "transformers tokenizer call": transformer_tokenize(tokenizer),
        "fast tokenizer (cmow path)": cmow_tokenize(tokenizer, 0),
        "fast tokenizer (HF backend alone)": backend_tokenize(tokenizer, 0),
    }

    results = {}
    with torch.inference_mode():
        for dataset, texts in datasets.items():
            tokens_per_text = sum(len(ids) for ids in _token_ids(tokenizer, texts)) / len(texts)
            for batch_size in args.batch_sizes:
                batches = sorted_batches(tokenizer, texts, batch_size)
                for name, run in {**systems, **tokenize_only}.items():
                    rate = throughput(run, batches, budget, clock=clock)
                    results[dataset, batch_size, name] = rate
                    print(f"{dataset:22s} batch {batch_size:4d}  {name:28s} {rate:10.1f} texts/s", flush=True)
                results[dataset, "tokens"] = tokens_per_text

        if args.systems is not None:
            report(args, datasets, results, {}, {}, {})
            return

        # Encoder only at 128 tokens: the compiled kernel, the torch log-depth reduction and the loop.
        cmow = models[OURS]
        ids = torch.randint(1000, 30000, (256, 128))
        mask = torch.ones_like(ids, dtype=torch.bool)

        def torch_log_depth():
            with kernel_hidden():
                cmow(ids, mask, output_token_states=False)

        encoder_only = {
            "kernel": lambda: cmow(ids, mask, output_token_states=False),
            "log-depth": torch_log_depth,
            "loop": lambda: systems[LOOP].pooled(ids, mask),
        }
        encoder_rate = {}
        for name, run in encoder_only.items():
            run()
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < budget:
                run()
                calls += 1
            encoder_rate[name] = calls * 256 / (time.perf_counter() - start)

    memory = {name: memory_in_fresh_process(name, folder, args.threads) for name in systems}
    sizes = {
        OURS: (parameters(cmow), size_on_disk_mb(cmow.save_pretrained)),
        "CMOW fp16": (parameters(cmow), size_on_disk_mb(lambda f: CMOWModel(cmow.config).half().save_pretrained(f))),
        **{
            name: (parameters(model), size_on_disk_mb(model.save_pretrained))
            for name, model in models.items()
            if name not in (OURS, MODEL2VEC)
        },
    }
    if MODEL2VEC in models:
        static = models[MODEL2VEC]
        sizes[MODEL2VEC] = (static.embedding.size, size_on_disk_mb(static.save_pretrained))
    report(args, datasets, results, memory, sizes, encoder_rate)


def report(args, datasets, results, memory, sizes, encoder_rate) -> None:
    ours = OURS
    tokenizer_rate = "fast tokenizer (cmow path)"
    kernel = sys.modules.get(KERNEL_MODULE)
    built = f"built, {kernel.isa} code" if kernel is not None else "NOT built: both CMOW rows run the torch path"
    print(f"\nCompiled kernel (cmow._kernel): {built}.")
    wordpiece = "built" if WORDPIECE_MODULE in sys.modules else "NOT built: the cmow path tokenizes with the backend"
    print(f"Compiled tokenizer ({WORDPIECE_MODULE}): {wordpiece}.")
    per = "CPU second of this process" if args.cpu_time else "second"
    print(f"\n## Throughput (texts per {per}; tokens/s = texts/s x mean tokens), {args.threads} threads\n")
    for dataset in datasets:
        tokens = results[dataset, "tokens"]
        print(f"### {dataset} ({len(datasets[dataset])} texts, {tokens:.1f} tokens/text)\n")
        sizes_header = " | ".join(f"batch {size}" for size in args.batch_sizes)
        print(f"| system | {sizes_header} | tokens/s at {args.batch_sizes[-1]} | x ours at {args.batch_sizes[-1]} |")
        print("|---" * (len(args.batch_sizes) + 3) + "|")
        names = sorted({key[2] for key in results if len(key) == 3 and key[0] == dataset}, key=lambda n: n != ours)
        last = args.batch_sizes[-1]
        for name in names:
            rates = " | ".join(f"{results[dataset, size, name]:,.0f}" for size in args.batch_sizes)
            ratio = results[dataset, last, ours] / results[dataset, last, name]
            print(f"| {name} | {rates} | {results[dataset, last, name] * tokens:,.0f} | {ratio:.2f} |")
        share = results[dataset, last, ours] / results[dataset, last, tokenizer_rate]
        print(
            f"\nShare of CMOW end-to-end time in the tokenizer at batch {last}: {share:.0%} (encoder {1 - share:.0%})"
        )
        if (dataset, last, KERNEL_OFF) in results:
            speedups = ", ".join(
                f"{results[dataset, size, ours] / results[dataset, size, KERNEL_OFF]:.2f}x at batch {size}"
                for size in args.batch_sizes
            )
            print(f"\nKernel on / off (end to end): {speedups}")
        print()
    if sizes:
        print("## Memory and size\n")
        print("| system | parameters | size on disk (MB) | peak extra RSS, 64 longest SST-2 texts (MB) |")
        print("|---|---|---|---|")
        for name, (count, megabytes) in sizes.items():
            peak = f"{memory[name]:.0f}" if name in memory else "-"
            print(f"| {name} | {count / 1e6:.1f}M | {megabytes:.1f} | {peak} |")
    if encoder_rate:
        print(
            f"\nEncoder only, 256 texts x 128 tokens: compiled kernel {encoder_rate['kernel']:,.0f} texts/s, torch "
            f"log-depth {encoder_rate['log-depth']:,.0f} texts/s, sequential loop {encoder_rate['loop']:,.0f} "
            f"texts/s (kernel {encoder_rate['kernel'] / encoder_rate['log-depth']:.1f}x torch log-depth; log-depth "
            f"{encoder_rate['log-depth'] / encoder_rate['loop']:.1f}x loop)."
        )
    sst, last = "SST-2 dev sentences", args.batch_sizes[-1]
    ours_rate = results[sst, last, ours]
    floors = {"encoder share (<= 40%)": 1 - ours_rate / results[sst, last, tokenizer_rate]}
    peers = {"DistilBERT (random)": "x DistilBERT (>= 400)", "all-MiniLM-L6-v2": "x MiniLM teacher (>= 30)"}
    for name, floor in peers.items():
        if (sst, last, name) in results:
            floors[floor] = ours_rate / results[sst, last, name]
    if (sst, last, PLAIN) in results and (sst, last, "DistilBERT (random)") in results:
        distilbert = results[sst, last, "DistilBERT (random)"]
        floors["plain forward x DistilBERT (>= 100)"] = results[sst, last, PLAIN] / distilbert
    if encoder_rate:
        floors["log-depth x loop at 128 tokens (>= 3)"] = encoder_rate["log-depth"] / encoder_rate["loop"]
    if (sst, last, MODEL2VEC) in results:
        floors["x model2vec (>= 0.6)"] = ours_rate / results[sst, last, MODEL2VEC]
    if (sst, 1, MODEL2VEC) in results:
        floors["x model2vec at batch 1 (>= 0.5)"] = results[sst, 1, ours] / results[sst, 1, MODEL2VEC]
    print(f"\nFloors (SST-2, batch {last}): " + "; ".join(f"{key}: {value:.2f}" for key, value in floors.items()))
    if not all(math.isfinite(value) for value in floors.values()):
        raise SystemExit("A rate was not finite.")


if __name__ == "__main__":
    main()
