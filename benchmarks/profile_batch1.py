"""Where ``cmow.encode`` spends its time on single texts: the 872 SST-2 dev sentences one at a time, unprofiled,
then the steps of ``cmow.encode``'s batch-1 path timed one by one without a profiler (cProfile's per-call overhead
inflates the many small Python calls), then cProfile for the call tree.

``--compare-with FOLDER`` times another version's ``cmow.encode`` against this one, passes interleaved in this
process (on a shared machine, runs in separate processes differ more than the versions): FOLDER is the ``src/cmow``
of another checkout, e.g. ``git worktree add /tmp/cmow-old <commit>`` then ``--compare-with /tmp/cmow-old/src/cmow``.
It is imported as the package ``cmow_other`` with the same weights; both call this checkout's compiled kernel.

python benchmarks/profile_batch1.py --data-dir ../shared/data --threads 2 [--compare-with FOLDER]
"""

import argparse
import cProfile
import importlib.util
import os
import pstats
import sys
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


def compare_with(folder: str, model, tokenizer, texts: list[str], passes: int = 9) -> None:
    """Best and median microseconds per text of this ``cmow.encode`` and of the one in ``folder``, interleaved."""
    spec = importlib.util.spec_from_file_location("cmow_other", Path(folder, "__init__.py"))
    other = importlib.util.module_from_spec(spec)
    sys.modules["cmow_other"] = other  # its relative imports resolve under this name
    spec.loader.exec_module(other)
    other_model = other.CMOWModel(other.CMOWConfig(**model.config.to_dict())).eval()
    other_model.load_state_dict(model.state_dict())
    versions = {"this": (cmow.encode, model), folder: (other.encode, other_model)}
    # Wall time, and the CPU time of all the process's threads: less disturbed by other jobs on a shared machine.
    clocks = {"wall": time.perf_counter, "CPU": time.process_time}
    seconds = {(name, clock): [] for name in versions for clock in clocks}
    for _ in range(passes):
        for name, (encode, encoder) in versions.items():
            start = {clock: read() for clock, read in clocks.items()}
            for text in texts:
                encode(encoder, tokenizer, [text], batch_size=1)
            for clock, read in clocks.items():
                seconds[name, clock].append((read() - start[clock]) / len(texts) * 1e6)
    for clock in clocks:
        best = {name: min(seconds[name, clock]) for name in versions}
        print(
            f"{clock} time, us per text, best (median) of {passes} interleaved passes: "
            + ", ".join(
                f"{name} {best[name]:.0f} ({sorted(seconds[name, clock])[passes // 2]:.0f}, "
                f"{best[name] / best['this']:.2f}x this)"
                for name in versions
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-with", default=None, help="another checkout's src/cmow to time against this one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(default_teacher())
    model = CMOWModel(CMOWConfig()).eval()
    rows = (Path(data_dir(args.data_dir)) / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    texts = [row.split("\t")[0] for row in rows]
    for text in texts[:50]:  # warm-up
        cmow.encode(model, tokenizer, [text], batch_size=1)
    if args.compare_with:
        compare_with(args.compare_with, model, tokenizer, texts)
        return
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
