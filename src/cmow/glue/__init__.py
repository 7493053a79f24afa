"""GLUE: data, metrics and task-specific training of CMOW (and MoEBERT) students."""

from .data import TASKS, GlueTask, get_task, load_glue
from .distill_trainer import (
    DistillationTrainer,
    LayerwiseDistillationTrainer,
    distillation_loss,
    hidden_state_loss,
    predict_logits,
)
from .metrics import glue_score, task_metrics
from .run import GlueRunConfig, run_task

__all__ = [
    "TASKS",
    "DistillationTrainer",
    "GlueRunConfig",
    "GlueTask",
    "LayerwiseDistillationTrainer",
    "distillation_loss",
    "get_task",
    "glue_score",
    "hidden_state_loss",
    "load_glue",
    "predict_logits",
    "run_task",
    "task_metrics",
]
