"""Teacher sentence targets per batch of 64 default-corpus texts: length-sorted chunks vs one padded batch.

    python benchmarks/benchmark_teacher_labelling.py --data-dir ../shared/data --threads 1

The chunked path is what ``cmow distill`` runs without per-token targets (``alpha_token = 0``, the default); the
padded path is the one it runs with them (the per-token targets need the whole padded batch).
"""

import argparse
import os
import time

import torch
from transformers import AutoModel, AutoTokenizer

from cmow.data import default_teacher
from cmow.distill.default_corpus import default_corpus
from cmow.distill.teacher import TeacherPooling, teacher_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    if args.data_dir:
        os.environ["CMOW_DATA_DIR"] = args.data_dir
    torch.set_num_threads(args.threads)
    teacher = AutoModel.from_pretrained(default_teacher()).eval()
    tokenizer = AutoTokenizer.from_pretrained(default_teacher())
    texts = default_corpus()[0]["text"][: 64 * args.batches]
    batches = [
        dict(tokenizer(texts[i : i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"))
        for i in range(0, len(texts), 64)
    ]
    pooling = TeacherPooling("mean", normalize=True)
    with torch.inference_mode():
        for padded in (False, True, False, True):  # twice each, interleaved
            start = time.perf_counter()
            for batch in batches:
                teacher_targets(teacher, batch, "hidden", pooling, token_states=padded)
            seconds = (time.perf_counter() - start) / len(batches)
            print(f"{'padded batch' if padded else 'length-sorted chunks'}: {seconds:.2f} s per batch of 64")


if __name__ == "__main__":
    main()
