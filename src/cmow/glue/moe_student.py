"""MoEBERT students for ``cmow glue --student-type moe`` (Zuo et al., NAACL 2022).

Once the teacher is fine-tuned (or reused): score every FFN neuron of the teacher on train examples
(``cmow.moe.ffn_importance``), split each FFN into experts by those scores (``cmow.moe.moe_from_dense``), then train
the student by layer-wise distillation from the teacher, which runs on every batch (``LayerwiseDistillationTrainer``):

    loss = distill_weight * sum_l MSE(student_h_l, teacher_h_l) + alpha * CE + (1 - alpha) * T^2 * KL.

Student and teacher read the same tokens (the teacher's tokenizer, truncated to ``teacher_max_length``). Epoch
selection, dev evaluation, ``metrics.json`` and the card are the CMOW student's (``cmow.glue.results``).
"""

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..configuration_moebert import MoEBertConfig
from ..hub_cards import public_name
from ..moe import active_parameters, ffn_importance, moe_from_dense
from .data import GlueTask, tokenize
from .distill_trainer import LayerwiseDistillationTrainer
from .metrics import compute_metrics_fn
from .results import evaluate, parameter_counts, save, write_card
from .selection import selection_data, selection_record, student_training_args

if TYPE_CHECKING:
    from .run import GlueRunConfig

logger = logging.getLogger(__name__)

OBJECTIVE = (
    "distill_weight * sum over the embedding output and every layer of MSE(student hidden states, teacher hidden "
    "states) over non-padding tokens + alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || "
    "softmax(student / T)), the teacher run on every batch; regression: MSE to labels and teacher instead of CE "
    "and KL"
)


def moe_settings(cfg: "GlueRunConfig", teacher_config: PretrainedConfig) -> dict:
    """The student's experts as ``moe_from_dense`` takes them, defaults resolved on the teacher's FFN.

    ``cmow glue`` calls it before any training, so bad flags fail at once.

    Raises:
        ValueError: naming the flags, if the teacher is no BERT, the experts do not fit its FFN or a setting is out
            of range.
    """
    if teacher_config.model_type != "bert":
        raise ValueError(
            f"--student-type moe converts a BERT teacher (MoEBERT reuses BERT's modules); the teacher is a "
            f"{teacher_config.model_type!r} model."
        )
    if cfg.moe_importance_batch_size < 1:
        raise ValueError(f"--moe-importance-batch-size must be at least 1; got {cfg.moe_importance_batch_size}.")
    if cfg.moe_importance_examples < 0:
        raise ValueError(f"--moe-importance-examples must be >= 0 (0: all); got {cfg.moe_importance_examples}.")
    if cfg.moe_distill_weight < 0:
        raise ValueError(f"--moe-distill-weight must be >= 0; got {cfg.moe_distill_weight}.")
    intermediate = teacher_config.intermediate_size
    try:
        config = MoEBertConfig(
            intermediate_size=intermediate,
            num_experts=cfg.moe_experts,
            expert_size=cfg.moe_expert_size,
            shared_size=cfg.moe_shared_size,
            routing=cfg.moe_routing,
            hash_seed=cfg.seed,
        )
    except ValueError as error:
        flags = f"--moe-experts {cfg.moe_experts}"
        flags += f" --moe-expert-size {cfg.moe_expert_size}" if cfg.moe_expert_size is not None else ""
        flags += f" --moe-shared-size {cfg.moe_shared_size}" if cfg.moe_shared_size is not None else ""
        raise ValueError(
            f"The MoE student ({flags} --moe-routing {cfg.moe_routing}) does not fit a teacher whose FFNs have "
            f"{intermediate} neurons: {error}"
        ) from error
    return {
        "num_experts": config.num_experts,
        "expert_size": config.expert_size,
        "shared_size": config.shared_size,
        "routing": config.routing,
        "hash_seed": config.hash_seed,
    }


def teacher_importance(
    cfg: "GlueRunConfig", teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: datasets.Dataset
) -> tuple[list[torch.Tensor], dict]:
    """``ffn_importance`` of the teacher on the first ``moe_importance_examples`` train examples (all if 0).

    Returns:
        One score tensor per layer, and what ``metrics.json`` records of the scoring.
    """
    limit = cfg.moe_importance_examples or len(train)
    examples = train.select(range(min(limit, len(train))))
    batches = DataLoader(
        tokenize(examples, tokenizer, cfg.teacher_max_length),
        batch_size=cfg.moe_importance_batch_size,
        collate_fn=DataCollatorWithPadding(tokenizer),
    )
    start = time.perf_counter()
    importance = ffn_importance(teacher, batches)
    record = {
        "examples": len(examples),
        "batches": len(batches),
        "batch_size": cfg.moe_importance_batch_size,
        "seconds": time.perf_counter() - start,
    }
    return importance, record


def distill_moe_student(
    cfg: "GlueRunConfig",
    task: GlueTask,
    data: datasets.DatasetDict,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    teacher_record: dict,
    command: str | None = None,
) -> PreTrainedModel:
    """Convert the fine-tuned teacher into a MoEBERT student, train it by layer-wise distillation, evaluate, save.

    Args as ``cmow.glue.run.distill_student``'s: ``data`` holds ``train``, ``validation`` and, for held-out
    selection, ``held_out``; ``teacher_record`` is the teacher's ``metrics.json`` record.
    """
    settings = moe_settings(cfg, teacher.config)
    importance, importance_record = teacher_importance(cfg, teacher, tokenizer, data["train"])
    student = moe_from_dense(teacher, importance, **settings)
    student.config.teacher = public_name(teacher_record["model"])
    student.config.distillation = {
        "task": task.name,
        "teacher_fine_tuned_on": task.name,
        "init": "the teacher's FFNs split into experts by neuron importance",
        "importance_examples": importance_record["examples"],
        "importance_batch_size": importance_record["batch_size"],
        "distill_weight": cfg.moe_distill_weight,
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "epochs": cfg.student_epochs,
        "lr": cfg.student_lr,
        "batch_size": cfg.student_batch_size,
        "max_length": cfg.teacher_max_length,
        "selection": cfg.selection,
    }
    train = tokenize(data["train"], tokenizer, cfg.teacher_max_length)
    selection_set = selection_data(cfg.selection, data)
    args = student_training_args(cfg, folder)
    trainer = LayerwiseDistillationTrainer(
        model=student,
        args=args,
        train_dataset=train,
        eval_dataset=None if selection_set is None else tokenize(selection_set, tokenizer, cfg.teacher_max_length),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(task),
        teacher=teacher,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        distill_weight=cfg.moe_distill_weight,
    )
    logger.info("Distilling a MoEBERT student (%s) on %s (%d examples)", settings, task.name, len(train))
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    model = trainer.model
    dev = tokenize(data["validation"], tokenizer, cfg.teacher_max_length)
    record = {
        "task": task.name,
        "role": folder.name,
        "model": "moebert (converted from the teacher)",
        "teacher": public_name(teacher_record["model"]),
        "train_seconds": train_seconds,
        "train_examples": len(train),
        "gold_examples": len(train),
        **evaluate(model, tokenizer, task, dev, cfg.eval_batch_size),
        **parameter_counts(model),
        "active_parameters": active_parameters(model),
        "active_encoder_parameters": active_parameters(model.base_model),
        "moe": {**settings, "importance": importance_record},
        "selection": selection_record(trainer, cfg.selection, 0 if selection_set is None else len(selection_set)),
        "settings": student.config.distillation,
        "command": command,
    }
    save(model, tokenizer, folder, record)
    write_card(folder, task, record, teacher_record, OBJECTIVE)
    return model
