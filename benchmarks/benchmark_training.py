"""Training step time of a CMOW classifier: the stock ``Trainer`` (dense gradients, AdamW) against ``CMOWTrainer``.

Both train the paper-sized bidirectional Hybrid CMOW + MLP classifier on the same SST-2 sentences with the same
arguments; only the token tables' gradients (dense vs sparse) and the optimizer (AdamW vs LazyAdamW) differ.

    python benchmarks/benchmark_training.py --data-dir ../shared/data --threads 1
"""

import argparse
import time

import torch
from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from cmow import CMOWConfig, CMOWForSequenceClassification
from cmow.data import data_dir, default_teacher
from cmow.glue.data import load_glue
from cmow.training import CMOWTrainer


class StepTimer(TrainerCallback):
    """Wall-clock time of the steps after the first ``skip`` (warm-up)."""

    def __init__(self, skip: int):
        self.skip, self.start, self.steps = skip, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.skip:
            self.start = time.perf_counter()
        elif state.global_step > self.skip:
            self.steps += 1

    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.start) / self.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(default_teacher())
    sentences = load_glue("SST-2", data_dir(args.data_dir) / "glue")["train"].select(
        range(args.steps * args.batch_size)
    )
    data = sentences.map(lambda batch: tokenizer(batch["text_a"]), batched=True, remove_columns=["text_a"])
    seconds = {}
    for name, trainer_class in (("Trainer (dense, AdamW)", Trainer), ("CMOWTrainer (sparse, LazyAdamW)", CMOWTrainer)):
        torch.manual_seed(0)
        model = CMOWForSequenceClassification(CMOWConfig.from_tokenizer(tokenizer, classifier="mlp", num_labels=2))
        timer = StepTimer(skip=5)
        training_args = TrainingArguments(
            output_dir="/tmp/cmow-benchmark-training",
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-3,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer_class(
            model=model,
            args=training_args,
            train_dataset=data,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[timer],
        ).train()
        seconds[name] = timer.seconds_per_step()
    print(f"\n{args.threads} thread(s), batch {args.batch_size} SST-2 sentences, {args.steps} steps:\n")
    print("| trainer | ms per step | speed-up |\n|---|---|---|")
    dense = seconds["Trainer (dense, AdamW)"]
    for name, value in seconds.items():
        print(f"| {name} | {value * 1000:.0f} | {dense / value:.1f}x |")


if __name__ == "__main__":
    main()
