"""A/B benchmark of cmow's compiled WordPiece tokenizer (``cmow._wordpiece``) against the ``tokenizers`` backend.

On the SST-2 dev sentences with the all-MiniLM-L6-v2 tokenizer: tokens per second of the tokenizers alone, and texts
per second of ``cmow.encode`` end to end (a default ``CMOWModel(CMOWConfig())``, random weights) with the compiled
tokenizer on and off, at batch 1 and 256. The variants run interleaved in one process, and each rate is the best of
``--repeats`` rounds, so the ratios hold on a machine that other jobs share.

    python benchmarks/benchmark_tokenizer.py --data-dir ../shared/data
"""

import argparse
import gzip
import itertools
import os
import time
from collections.abc import Callable

import torch
from transformers import AutoTokenizer

from benchmark_inference import module_hidden, sst2_sentences  # the script folder is on sys.path
from cmow import CMOWConfig, CMOWModel, encode
from cmow.data import data_dir, default_teacher
from cmow.encode import WORDPIECE_MODULE, _backend_ids, _token_ids, _unpadded, compiled_wordpiece


def corpus_paragraphs(folder, count: int = 3000) -> list[str]:
    """Every 50th line of the Gutenberg corpus: paragraphs from all over it."""
    with gzip.open(folder / "corpus" / "gutenberg_train_50MB.txt.gz", "rt", encoding="utf-8") as lines:
        return list(itertools.islice(lines, 0, 50 * count, 50))


def best_seconds(variants: dict[str, Callable[[], object]], repeats: int, round_seconds: float) -> dict[str, float]:
    """Each variant's best mean time per call over ``repeats`` rounds of at least ``round_seconds``; every round
    runs all variants, one after another, so a busy spell slows them all alike."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, run in variants.items():
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < round_seconds or calls == 0:
                run()
                calls += 1
            best[name] = min(best[name], elapsed / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="the shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2, help="torch, tokenizers and compiled-tokenizer threads")
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each variant's best round counts")
    parser.add_argument("--round-seconds", type=float, default=0.3, help="each variant's time in each round")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # the Rust tokenizer's pool starts on first use
    folder = data_dir(args.data_dir)
    texts = sst2_sentences(folder, None)
    tokenizer = AutoTokenizer.from_pretrained(default_teacher())
    backend = tokenizer.backend_tokenizer
    native = compiled_wordpiece(tokenizer, backend)
    if native is None:
        raise SystemExit(f"{WORDPIECE_MODULE} is not built or does not apply: build it (setup.py build_ext).")
    unpadded = _unpadded(tokenizer, backend)  # padding and truncation off: the backend's own cost
    reference = _backend_ids(unpadded, texts)
    assert _token_ids(tokenizer, texts) == reference, "the compiled tokenizer must give the backend's ids"
    tokens = sum(map(len, reference))
    declined = sum(row is None for row in native.encode(texts, 1))
    print(f"{len(texts)} SST-2 dev sentences, {tokens / len(texts):.1f} tokens each, {declined} left to the backend")
    paragraphs = corpus_paragraphs(folder)
    left = sum(row is None for row in native.encode(paragraphs, 1))
    print(f"{len(paragraphs)} Gutenberg paragraphs: {left} ({left / len(paragraphs):.0%}) left to the backend")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{args.threads} threads, best of {args.repeats} interleaved rounds; load average at the start {load}\n")

    print("| tokenizer | batch | tokens/s | us per text | x backend |")
    print("|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        batches = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]

        def backend_alone(batches=batches):
            for batch in batches:
                [encoding.ids for encoding in unpadded.encode_batch_fast(batch, add_special_tokens=True)]

        variants = {
            "backend.encode_batch_fast": backend_alone,
            "compiled WordPiece.encode": lambda batches=batches: [native.encode(b, args.threads) for b in batches],
            "_token_ids (compiled + backend for declined)": lambda batches=batches: [
                _token_ids(tokenizer, b) for b in batches
            ],
            "_token_ids, backend only (no compiled tokenizer)": lambda batches=batches: [
                _backend_ids(_unpadded(tokenizer, backend), b) for b in batches
            ],
        }
        seconds = best_seconds(variants, args.repeats, args.round_seconds)
        base = seconds["backend.encode_batch_fast"]
        for name, time_taken in seconds.items():
            rate, per_text = tokens / time_taken, time_taken / len(texts) * 1e6
            print(f"| {name} | {batch_size} | {rate:,.0f} | {per_text:.2f} | {base / time_taken:.1f} |")

    threads = {f"{n} thread{'s' * (n > 1)}": n for n in sorted({1, args.threads})}
    one_call = {name: lambda n=n: native.encode(texts, n) for name, n in threads.items()}
    seconds = best_seconds(one_call, args.repeats, args.round_seconds)
    per_text = ", ".join(f"{name} {time_taken / len(texts) * 1e6:.2f} us" for name, time_taken in seconds.items())
    print(f"\nCompiled tokenizer, all {len(texts)} texts in one call (as in encode's chunks): {per_text} per text\n")

    model = CMOWModel(CMOWConfig()).eval()
    with module_hidden(WORDPIECE_MODULE):
        without = encode(model, tokenizer, texts)
    assert torch.equal(encode(model, tokenizer, texts), without), "the same embeddings with the compiled tokenizer"
    print("| cmow.encode | batch | texts/s compiled on | texts/s off | on / off |")
    print("|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        calls = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]

        def run_all(batches=calls, size=batch_size):
            for batch in batches:
                encode(model, tokenizer, batch, batch_size=size)

        def run_all_off():
            with module_hidden(WORDPIECE_MODULE):
                run_all()

        seconds = best_seconds({"on": run_all, "off": run_all_off}, args.repeats, args.round_seconds)
        on, off = len(texts) / seconds["on"], len(texts) / seconds["off"]
        print(f"| end to end | {batch_size} | {on:,.0f} | {off:,.0f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()
