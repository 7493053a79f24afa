"""Where the CMOW encoder spends its time: torch.profiler over pre-tokenized SST-2 dev batches (length-sorted, 256).

Prints microseconds per sentence for tokenizing and for the encoder, the encoder on each code path of the compiled
kernel (portable, AVX2, AVX-512: those the CPU runs, passes interleaved), then the profiler's table of ops by self
time. With the compiled kernel the encoder is one call that the profiler does not see inside; ``--no-kernel``
profiles the torch path.

    python benchmarks/profile_encoder.py --data-dir ../shared/data --threads 2 [--no-kernel]
"""

import argparse
import os
import sys
import timeit

import torch
from torch.profiler import profile
from transformers import AutoTokenizer

from benchmark_inference import sorted_batches, sst2_sentences
from cmow import CMOWConfig, CMOWModel
from cmow.data import data_dir, default_teacher
from cmow.encode import _token_ids, pad_batch
from cmow.modeling_cmow import KERNEL_MODULE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-kernel", action="store_true", help="hide the compiled kernel: profile the torch path")
    args = parser.parse_args()
    if args.no_kernel:
        sys.modules.pop(KERNEL_MODULE, None)
    print(f"Encoder: {'compiled kernel' if KERNEL_MODULE in sys.modules else 'torch path'}")
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(default_teacher())
    texts = sst2_sentences(data_dir(args.data_dir), 872)
    batches = sorted_batches(tokenizer, texts, args.batch_size)
    model = CMOWModel(CMOWConfig()).eval()

    def tokenize():
        return [pad_batch(_token_ids(tokenizer, batch), 0) for batch in batches]

    inputs = tokenize()

    def run_encoder():
        for input_ids, mask in inputs:
            model(input_ids, mask, output_token_states=False)

    with torch.inference_mode():
        for name, run in (("tokenize", tokenize), ("encoder", run_encoder)):
            seconds = min(timeit.repeat(run, number=1, repeat=7))
            print(f"{name}: {seconds / len(texts) * 1e6:.1f} us per sentence (best of 7 passes)")
        kernel = sys.modules.get(KERNEL_MODULE)
        if kernel is not None and len(kernel.isas) > 1:  # the kernel's code for each ISA, passes interleaved
            best, seconds = kernel.isa, {isa: [] for isa in kernel.isas}
            try:
                for _ in range(7):
                    for isa, passes in seconds.items():
                        kernel.set_isa(isa)
                        passes.append(timeit.timeit(run_encoder, number=1))
            finally:
                kernel.set_isa(best)
            print(
                "encoder by the kernel's code, us per sentence (best of 7 interleaved passes): "
                + ", ".join(
                    f"{isa} {min(passes) / len(texts) * 1e6:.1f} ({min(passes) / min(seconds[best]):.2f}x {best})"
                    for isa, passes in seconds.items()
                )
            )
        with profile() as profiler:
            for _ in range(5):
                run_encoder()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
