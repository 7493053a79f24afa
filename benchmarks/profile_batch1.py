"""Where ``cmow.encode`` spends its time on single texts: the 872 SST-2 dev sentences one at a time, then cProfile.

python benchmarks/profile_batch1.py --data-dir ../shared/data --threads 2
"""

import argparse
import cProfile
import os
import pstats
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

import cmow
from cmow import CMOWConfig, CMOWModel
from cmow.data import data_dir, default_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(default_teacher())
    model = CMOWModel(CMOWConfig()).eval()
    rows = (Path(data_dir(args.data_dir)) / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    texts = [row.split("\t")[0] for row in rows]
    for text in texts[:50]:  # warm-up
        cmow.encode(model, tokenizer, [text], batch_size=1)
    start = time.perf_counter()
    for text in texts:
        cmow.encode(model, tokenizer, [text], batch_size=1)
    print(f"{(time.perf_counter() - start) / len(texts) * 1e6:.0f} us per text, unprofiled")
    profile = cProfile.Profile()
    profile.enable()
    for text in texts:
        cmow.encode(model, tokenizer, [text], batch_size=1)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
