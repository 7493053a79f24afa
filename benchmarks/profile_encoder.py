"""Where the CMOW encoder spends its time: torch.profiler over pre-tokenized SST-2 dev batches (length-sorted, 256).

Prints microseconds per sentence for tokenizing and for the encoder, the encoder on each code path of the compiled
kernel (portable, AVX2, AVX-512: those the CPU runs, passes interleaved), then the profiler's table of ops by self
time. With the compiled kernel the encoder is one call that the profiler does not see inside; ``--no-kernel``
profiles the torch path. ``--huge-pages`` (Linux) also times the encoder with its tables copied into memory on 2 MB
pages against the same tables on the usual 4 KB pages, passes interleaved: rows of random tokens in tables of ~50 MB
are mostly TLB misses on 4 KB pages.

    python benchmarks/profile_encoder.py --data-dir ../shared/data --threads 2 [--batch-size 1] [--no-kernel]
        [--huge-pages]
"""

import argparse
import ctypes
import mmap
import os
import sys
import time
import timeit

import torch
from torch.profiler import profile
from transformers import AutoTokenizer

from benchmark_inference import sorted_batches, sst2_sentences
from cmow import CMOWConfig, CMOWModel
from cmow.data import data_dir, default_teacher
from cmow.encode import _token_ids, pad_batch
from cmow.modeling_cmow import KERNEL_MODULE


def on_huge_pages(table: torch.Tensor) -> torch.Tensor:
    """A copy of ``table`` in anonymous memory that Linux backs with 2 MB pages (asked for before the first write).
    The memory is never unmapped: this is for a benchmark."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    huge, size = 2 << 20, table.numel() * table.element_size() + (2 << 20)
    protection, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    address = libc.mmap(None, ctypes.c_size_t(size), protection, flags, -1, ctypes.c_long(0))
    if address in (None, ctypes.c_void_p(-1).value) or libc.madvise(
        ctypes.c_void_p(address), ctypes.c_size_t(size), mmap.MADV_HUGEPAGE
    ):
        raise OSError(ctypes.get_errno(), "mmap or madvise(MADV_HUGEPAGE) failed")
    start = address + (-address) % huge
    buffer = (ctypes.c_byte * (table.numel() * table.element_size())).from_address(start)
    copy = torch.frombuffer(buffer, dtype=table.dtype).view(table.shape)
    copy.copy_(table)
    return copy


def compare_huge_pages(model: CMOWModel, inputs: list, texts: list[str]) -> None:
    """Encoder time per sentence with the tables on 4 KB and on 2 MB pages, 7 passes each, interleaved."""
    huge = CMOWModel(model.config).eval()
    huge.load_state_dict(model.state_dict())
    for module in (huge.encoder.cmow_embeddings, huge.encoder.cmow_bw_embeddings, huge.encoder.cbow_embeddings):
        if module is not None:
            module.weight.data = on_huge_pages(module.weight.data)
    models = {"4 KB pages": model, "2 MB pages": huge}
    seconds = {name: [] for name in models}
    for _ in range(7):
        for name, encoder in models.items():
            start = time.perf_counter()
            for input_ids, mask in inputs:
                encoder(input_ids, mask, output_token_states=False)
            seconds[name].append(time.perf_counter() - start)
    with open("/proc/self/smaps_rollup") as memory:
        anon_huge = next(line.split()[1] for line in memory if line.startswith("AnonHugePages"))
    print(
        f"encoder, tables on 4 KB vs 2 MB pages (AnonHugePages {int(anon_huge) // 1024} MB), us per sentence (best of "
        "7 interleaved passes): "
        + ", ".join(f"{name} {min(passes) / len(texts) * 1e6:.1f}" for name, passes in seconds.items())
        + f" ({min(seconds['4 KB pages']) / min(seconds['2 MB pages']):.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-kernel", action="store_true", help="hide the compiled kernel: profile the torch path")
    parser.add_argument("--huge-pages", action="store_true", help="also time the tables on 2 MB pages (Linux)")
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
        if args.huge_pages:
            compare_huge_pages(model, inputs, texts)
        with profile() as profiler:
            for _ in range(5):
                run_encoder()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
