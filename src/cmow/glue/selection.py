"""Which epoch of a training run is kept, and on what data that is decided.

- ``held-out`` (default): a slice of the (shuffled) train set, ``held_out_fraction`` of it, is set aside before
  training; after every epoch the model is scored on it and the best epoch by the task's score is kept. Neither the
  teacher nor the student trains on the slice, and no transfer set holds its texts. Dev is evaluated once, at the end.
- ``last``: the last epoch is kept; nothing is evaluated during training.
- ``dev``: the best epoch on dev is kept, so the reported dev score is that of a selected epoch and flatters the
  model. Only on request (``--selection dev``), for comparison with runs made that way.
"""

import logging
from pathlib import Path

import datasets
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)

SELECTIONS = ("held-out", "last", "dev")


def split_held_out(
    train: datasets.Dataset, selection: str, fraction: float
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """``(train, held_out)``: the last ``fraction`` of ``train`` (at least one example) for ``held-out``, else None.

    ``train`` should already be shuffled; the slice is its tail, so the same seed gives the same slice.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {', '.join(map(repr, SELECTIONS))}; got {selection!r}.")
    if selection != "held-out":
        return train, None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`held_out_fraction` must be in (0, 1); got {fraction!r}.")
    held = max(1, round(fraction * len(train)))
    if held >= len(train):
        raise ValueError(f"A held-out slice of {held} leaves no train example: use more train examples.")
    return train.select(range(len(train) - held)), train.select(range(len(train) - held, len(train)))


def selection_data(selection: str, data: datasets.DatasetDict) -> datasets.Dataset | None:
    """The set epochs are selected on: the held-out slice, dev, or none (``last``)."""
    return {"held-out": data.get("held_out"), "dev": data["validation"], "last": None}[selection]


def training_args(
    output_dir: Path,
    *,
    selection: str,
    epochs: float,
    lr: float,
    batch_size: int,
    eval_batch_size: int,
    warmup_ratio: float,
    weight_decay: float,
    seed: int,
) -> TrainingArguments:
    """``TrainingArguments`` that evaluate and keep the best epoch (``held-out``, ``dev``) or only the last."""
    select = selection != "last"
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        warmup_steps=warmup_ratio,  # a float < 1 is a fraction of the training steps
        weight_decay=weight_decay,
        eval_strategy="epoch" if select else "no",
        save_strategy="epoch" if select else "no",
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=select,
        metric_for_best_model="score",
        greater_is_better=True,
        train_sampling_strategy="group_by_length",
        logging_steps=50,
        report_to="none",
        seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def student_training_args(cfg, folder: Path) -> TrainingArguments:
    """A student's ``training_args`` from a ``GlueRunConfig``: its schedule, 10% warm-up, checkpoints in ``folder``."""
    return training_args(
        folder / "checkpoints",
        selection=cfg.selection,
        epochs=cfg.student_epochs,
        lr=cfg.student_lr,
        batch_size=cfg.student_batch_size,
        eval_batch_size=cfg.eval_batch_size,
        warmup_ratio=0.1,
        weight_decay=0.0,
        seed=cfg.seed if cfg.student_seed is None else cfg.student_seed,
    )


def selection_record(trainer: Trainer, selection: str, eval_examples: int) -> dict:
    """What ``metrics.json`` records of the selection: method, examples, per-epoch scores and the epoch kept."""
    scores = [
        {"epoch": round(entry["epoch"], 2), "score": entry["eval_score"]}
        for entry in trainer.state.log_history
        if "eval_score" in entry
    ]
    record = {"method": selection, "eval_examples": eval_examples, "epoch_scores": scores}
    if scores:
        best = max(scores, key=lambda entry: entry["score"])  # the first best, as the Trainer keeps it
        record |= {"best_epoch": best["epoch"], "best_score": best["score"]}
    else:
        record["best_epoch"] = round(trainer.state.epoch or 0.0, 2)
    return record
