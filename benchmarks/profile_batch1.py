"""Where ``cmow.encode`` spends its time on single texts: the 872 SST-2 dev sentences one at a time, unprofiled,
then the steps of ``cmow.encode``'s batch-1 path timed one by one without a profiler (cProfile's per-call overhead
inflates the many small Python calls), then cProfile for the call tree.

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
from cmow.encode import _token_ids, pad_batch


def steps_of_batch1(model, tokenizer, texts: list[str]) -> dict[str, float]:
    """Mean microseconds per text of each step of ``cmow.encode``'s batch-1 path (as in ``encode._encode_all``)."""
    clock, totals = (
        time.perf_counter,
        dict.fromkeys(("set-up", "tokenize", "checks", "id tensors", "encoder", "out"), 0.0),
    )
    with torch.no_grad():
        for text in texts:
            t0 = clock()
            base = model.base_model
            pad_token_id = base.config.pad_token_id or 0
            table = base.get_input_embeddings().weight
            device, dtype, vocab_size = table.device, table.dtype, table.shape[0]
            pooler, specials = base.pooler, tokenizer.num_special_tokens_to_add()
            t1 = clock()
            ids = _token_ids(tokenizer, [text])
            t2 = clock()
            assert len(ids[0]) > specials and max(map(max, ids)) < vocab_size
            t3 = clock()
            input_ids, mask = pad_batch(ids, pad_token_id)
            t4 = clock()
            _, features = base.encoder(input_ids.to(device), mask, token_states=False)  # mask: None for one text
            t5 = clock()
            (features.to(dtype) if pooler is None else pooler(features.to(dtype))).float().cpu()
            t6 = clock()
            for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                totals[key] += seconds
    return {key: seconds / len(texts) * 1e6 for key, seconds in totals.items()}


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
    steps = steps_of_batch1(model, tokenizer, texts)
    print("steps, us per text: " + ", ".join(f"{key} {value:.0f}" for key, value in steps.items()))
    profile = cProfile.Profile()
    profile.enable()
    for text in texts:
        cmow.encode(model, tokenizer, [text], batch_size=1)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
