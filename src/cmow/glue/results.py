"""What a GLUE run leaves in a model's folder: dev scores and throughput, model and tokenizer, ``metrics.json`` and
the model card. Shared by every kind of student (``cmow.glue.run``, ``cmow.glue.moe_student``) and the teacher."""

import json
import logging
import shutil
import time
from pathlib import Path

import datasets
import torch
from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hub_cards import write_model_card
from .data import HUB_DATASET, GlueTask
from .distill_trainer import predict_logits
from .metrics import task_metrics

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def parameter_counts(model: PreTrainedModel) -> dict[str, int]:
    """Parameters of the whole model and of its encoder (``base_model``), as ``metrics.json`` records them."""
    return {"parameters": model.num_parameters(), "encoder_parameters": model.base_model.num_parameters()}


def evaluate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: GlueTask, data: datasets.Dataset, batch_size: int
) -> dict:
    """Final scores and inference throughput (examples/s) on a tokenized dev set."""
    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, data, batch_size)
    seconds = time.perf_counter() - start
    return {
        "metrics": task_metrics(task, logits, data["label"]),
        "throughput_examples_per_s": len(data) / seconds,
        "throughput_threads": torch.get_num_threads(),
        "batch_size": batch_size,
    }


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, record: dict) -> None:
    """``save_pretrained`` model and tokenizer with ``metrics.json`` (main process only); drop the checkpoints."""
    if not PartialState().is_main_process:
        return
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    logger.info("Saved %s: %s", folder, record["metrics"])


def write_card(folder: Path, task: GlueTask, record: dict, teacher_record: dict, objective: str) -> None:
    """The student's model card, from what the run recorded (``cmow.hub_cards``)."""
    eval_results = [
        {
            "task_type": "text-classification",
            "dataset_type": HUB_DATASET,
            "dataset_name": f"GLUE {task.name}",
            "dataset_config": task.hub_name,
            "dataset_split": "validation",
            "metric_type": name,
            "metric_value": value,
        }
        for name, value in record["metrics"].items()
        if name != "score"
    ]
    speed = {
        "student": record["throughput_examples_per_s"],
        "teacher": teacher_record["throughput_examples_per_s"],
        "unit": f"examples/s on the {task.name} dev set",
        "hardware": f"CPU, {record['throughput_threads']} threads",
        "batch_size": record["batch_size"],
    }
    write_model_card(
        folder,
        eval_results=eval_results,
        datasets=[HUB_DATASET],
        objective=objective,
        training_args=record["settings"],
        speed=speed,
    )
