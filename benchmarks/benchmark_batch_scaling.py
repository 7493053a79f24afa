"""Encoder-only throughput of the pooled CMOW product against batch size, with and without row chunking.

A pairwise (log-depth) reduction over a whole batch at once works on ``batch x length`` matrices per level: at
large batches that working set leaves the CPU caches and every level streams it from memory, so texts/s drop as the
batch grows. ``CMOWEncoder`` reduces ``PRODUCT_CHUNK_MATRICES`` matrices at a time instead; this script measures
both on random token ids (the rate does not depend on the weights).

    python benchmarks/benchmark_batch_scaling.py --threads 2
"""

import argparse
import time

import torch

import cmow.modeling_cmow as modeling
from cmow import CMOWConfig, CMOWModel

UNCHUNKED = 10**12


def texts_per_second(model: CMOWModel, batch: int, length: int, budget: float) -> float:
    """Best of three timed rounds of repeated calls on one ``(batch, length)`` batch."""
    ids = torch.randint(1000, 30000, (batch, length))
    mask = torch.ones_like(ids, dtype=torch.bool)
    model(ids, mask, output_token_states=False)  # warm-up
    best = 0.0
    for _ in range(3):
        start, texts = time.perf_counter(), 0
        while time.perf_counter() - start < budget / 3:
            model(ids, mask, output_token_states=False)
            texts += batch
        best = max(best, texts / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length", type=int, default=128, help="tokens per text")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CMOWModel(CMOWConfig()).eval()
    chunked = modeling.PRODUCT_CHUNK_MATRICES
    rates = {}
    with torch.inference_mode():
        for name, chunk in ((f"chunks of {chunked} matrices (default)", chunked), ("whole batch at once", UNCHUNKED)):
            modeling.PRODUCT_CHUNK_MATRICES = chunk
            rates[name] = [texts_per_second(model, batch, args.length, args.budget) for batch in args.batch_sizes]
        modeling.PRODUCT_CHUNK_MATRICES = chunked
    print(f"\nEncoder only, {args.length} tokens per text, {args.threads} threads, texts/s:\n")
    print("| reduction | " + " | ".join(f"batch {batch}" for batch in args.batch_sizes) + " |")
    print("|---" * (len(args.batch_sizes) + 1) + "|")
    for name, row in rates.items():
        print(f"| {name} | " + " | ".join(f"{rate:,.0f}" for rate in row) + " |")


if __name__ == "__main__":
    main()
