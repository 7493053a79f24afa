"""One GLUE task end to end: fine-tune a teacher, distil a CMOW student into it, evaluate, save.

Layout of ``output_dir/<TASK>/``: ``teacher/`` and ``student-<name>/``, each a ``save_pretrained`` folder (model,
tokenizer) with ``metrics.json``. A ``teacher/`` that already holds ``metrics.json`` is reused, so a run over all nine
tasks can be resumed and several students share one teacher. Models are named in ``metrics.json``, configs and cards by
``public_name``, never by a local path; ``run_config.json``, which is not published, keeps the paths to rerun.
"""

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from ..configuration_cmow import CMOWConfig
from ..hub_cards import public_name, write_model_card
from ..modeling_cmow import CMOWForSequenceClassification
from .data import HUB_DATASET, GlueTask, get_task, load_glue
from .distill_trainer import TEACHER_LOGITS, DistillationTrainer, predict_logits
from .metrics import compute_metrics_fn, task_metrics

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
OBJECTIVE = (
    "alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)); "
    "regression: alpha * MSE(student, labels) + (1 - alpha) * MSE(student, teacher)"
)


@dataclass
class GlueRunConfig:
    """Settings of one task's run; defaults are the recipe used for ``docs/glue.md``.

    Attributes:
        task: GLUE task name (``"MRPC"``, ``"sst2"``, ...).
        output_dir: Where ``<TASK>/teacher`` and ``<TASK>/student-<student_name>`` are written.
        glue_dir: Folder in the GLUE TSV layout; ``None`` loads ``nyu-mll/glue`` from the Hub.
        teacher: A teacher already fine-tuned on this task (skips fine-tuning).
        teacher_base: The model to fine-tune as teacher when ``teacher`` is not given.
        student: A CMOW checkpoint (e.g. from general distillation) to start the student from; random init if None.
        student_name: Names the student's folder, ``student-<student_name>``.
        student_config: ``CMOWConfig`` overrides for a randomly initialised student.
        teacher_max_length: Teacher inputs are truncated to this many tokens; the student reads whole texts.
        alpha: Weight of the gold-label loss in the distillation loss (the rest goes to the teacher).
        temperature: Softmax temperature of the distillation loss.
        max_train_samples: Train on the first this many examples (for quick runs); all if None.
        max_eval_samples: Evaluate on the first this many examples; all if None.
    """

    task: str
    output_dir: str = "runs/glue"
    glue_dir: str | None = None
    teacher: str | None = None
    teacher_base: str | None = None
    student: str | None = None
    student_name: str | None = None
    student_config: dict = field(default_factory=dict)
    teacher_epochs: float = 3.0
    teacher_lr: float = 5e-5
    teacher_batch_size: int = 32
    teacher_max_length: int = 128
    student_epochs: float = 10.0
    student_lr: float = 2e-3
    student_batch_size: int = 32
    alpha: float = 0.5
    temperature: float = 1.0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_batch_size: int = 64
    seed: int = 42


def tokenize(
    data: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> datasets.Dataset:
    """Tokenize ``text_a`` (and ``text_b``) into the tokenizer's columns plus ``label``; truncate if ``max_length``."""
    pair = "text_b" in data.column_names

    def encode(batch: dict) -> dict:
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return tokenizer(*texts, truncation=max_length is not None, max_length=max_length)

    return data.map(encode, batched=True, remove_columns=[c for c in data.column_names if c != "label"])


def _training_args(cfg: GlueRunConfig, output_dir: Path, epochs: float, lr: float, batch_size: int):
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        warmup_steps=0.1,  # a float < 1 is a fraction of the training steps
        weight_decay=0.0,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
        train_sampling_strategy="group_by_length",
        logging_steps=50,
        report_to="none",
        seed=cfg.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def _num_parameters(model: PreTrainedModel) -> dict[str, int]:
    return {"parameters": model.num_parameters(), "encoder_parameters": model.base_model.num_parameters()}


def _evaluate(model, tokenizer, task: GlueTask, data: datasets.Dataset, batch_size: int) -> dict:
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


def _save(model, tokenizer, folder: Path, record: dict) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    logger.info("Saved %s: %s", folder, record["metrics"])


def _slice(data: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return data if limit is None else data.select(range(min(limit, len(data))))


def finetune_teacher(cfg: GlueRunConfig, task: GlueTask, raw: datasets.DatasetDict, folder: Path):
    """Fine-tune ``cfg.teacher_base`` (default: all-MiniLM-L6-v2) on the task with the ``Trainer``; save it."""
    from ..data import default_teacher

    base = cfg.teacher_base or default_teacher()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=task.num_labels, id2label=dict(enumerate(task.label_names or ("score",)))
    )
    train = tokenize(raw["train"], tokenizer, cfg.teacher_max_length)
    dev = tokenize(raw["validation"], tokenizer, cfg.teacher_max_length)
    args = _training_args(cfg, folder / "checkpoints", cfg.teacher_epochs, cfg.teacher_lr, cfg.teacher_batch_size)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(task),
    )
    logger.info("Fine-tuning teacher %s on %s (%d examples)", base, task.name, len(train))
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    record = {
        "task": task.name,
        "role": "teacher",
        "model": public_name(base),
        "train_seconds": train_seconds,
        "train_examples": len(train),
        **_evaluate(trainer.model, tokenizer, task, dev, cfg.eval_batch_size),
        **_num_parameters(trainer.model),
        "settings": {"epochs": cfg.teacher_epochs, "lr": cfg.teacher_lr, "batch_size": cfg.teacher_batch_size},
    }
    _save(trainer.model, tokenizer, folder, record)
    return trainer.model, tokenizer


def build_student(cfg: GlueRunConfig, task: GlueTask, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A CMOW classifier for the task: from ``cfg.student`` or a random bidirectional Hybrid CMOW with MLP head."""
    head = {
        "num_labels": task.num_labels,
        "pair_encoding": "diffcat" if task.is_pair else "joint",
        "id2label": dict(enumerate(task.label_names or ("score",))),
    }
    if cfg.student:
        return AutoModelForSequenceClassification.from_pretrained(cfg.student, ignore_mismatched_sizes=True, **head)
    settings = {"encoder": "hybrid", "bidirectional": True, "classifier": "mlp", **cfg.student_config}
    return CMOWForSequenceClassification(CMOWConfig.from_tokenizer(tokenizer, **settings, **head))


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of all of ``model``'s parameter values (about 0.1 s for a MiniLM)."""
    digest = hashlib.sha256()
    for name, parameter in model.state_dict().items():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def teacher_train_logits(
    cfg: GlueRunConfig,
    train: datasets.Dataset,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    teacher_dir: Path,
) -> np.ndarray:
    """The teacher's logits on the train set, computed once and kept in ``teacher_dir`` for later students.

    The teacher reads at most ``teacher_max_length`` tokens. The file is keyed by the train set's ``datasets``
    fingerprint (its files, shuffle and selection), the teacher's weights and the length, so a different train set
    or teacher never reuses it.
    """
    key = f"{train._fingerprint}-{weights_digest(teacher)}-{cfg.teacher_max_length}"
    cache = teacher_dir / f"train_logits-{key}.npy"
    if cache.is_file():
        logits = np.load(cache)
        if logits.shape == (len(train), teacher.config.num_labels):
            logger.info("Teacher logits from %s", cache)
            return logits
    logits = predict_logits(
        teacher, tokenizer, tokenize(train, tokenizer, cfg.teacher_max_length), cfg.eval_batch_size
    )
    teacher_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, logits)
    return logits


def distill_student(
    cfg: GlueRunConfig,
    task: GlueTask,
    raw: datasets.DatasetDict,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    teacher_record: dict,
) -> PreTrainedModel:
    """Distil a CMOW student from the fine-tuned teacher's precomputed logits; keep the best epoch; save it.

    ``teacher_record`` is the teacher's ``metrics.json`` record (its base model and dev throughput).
    """
    logits = teacher_train_logits(cfg, raw["train"], teacher, tokenizer, folder.parent / "teacher")
    train = tokenize(raw["train"], tokenizer).add_column(TEACHER_LOGITS, logits.tolist())
    dev = tokenize(raw["validation"], tokenizer)
    student = build_student(cfg, task, tokenizer)
    student.config.teacher = public_name(teacher_record["model"])  # a path in records of older cmow versions
    student.config.distillation = {
        "task": task.name,
        "teacher_fine_tuned_on": task.name,
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "epochs": cfg.student_epochs,
        "lr": cfg.student_lr,
        "batch_size": cfg.student_batch_size,
        "init": public_name(cfg.student) if cfg.student else "random",
    }
    args = _training_args(cfg, folder / "checkpoints", cfg.student_epochs, cfg.student_lr, cfg.student_batch_size)
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(task),
        alpha=cfg.alpha,
        temperature=cfg.temperature,
    )
    logger.info("Distilling a CMOW student on %s (%d examples)", task.name, len(train))
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    record = {
        "task": task.name,
        "role": folder.name,
        "model": public_name(cfg.student) if cfg.student else "cmow (random init)",
        "teacher": public_name(teacher_record["model"]),
        "train_seconds": train_seconds,
        "train_examples": len(train),
        **_evaluate(trainer.model, tokenizer, task, dev, cfg.eval_batch_size),
        **_num_parameters(trainer.model),
        "settings": student.config.distillation,
    }
    _save(trainer.model, tokenizer, folder, record)
    _write_card(folder, task, record, teacher_record)
    return trainer.model


def _write_card(folder: Path, task: GlueTask, record: dict, teacher_record: dict) -> None:
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
        objective=OBJECTIVE,
        training_args=record["settings"],
        speed=speed,
    )


def run_task(cfg: GlueRunConfig) -> dict[str, dict]:
    """Run one task: teacher (fine-tuned or reused), then the student. Returns both ``metrics.json`` records."""
    task = get_task(cfg.task)
    task_dir = Path(cfg.output_dir) / task.name
    teacher_dir = task_dir / "teacher"
    student_dir = task_dir / f"student-{cfg.student_name or ('pretrained' if cfg.student else 'random')}"
    raw = load_glue(task.name, cfg.glue_dir)
    raw = datasets.DatasetDict(
        train=_slice(raw["train"].shuffle(seed=cfg.seed), cfg.max_train_samples),
        validation=_slice(raw["validation"], cfg.max_eval_samples),
    )
    torch.manual_seed(cfg.seed)
    if cfg.teacher or (teacher_dir / METRICS_FILE).is_file():
        source = cfg.teacher or teacher_dir
        logger.info("Using the fine-tuned teacher %s", source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        teacher = AutoModelForSequenceClassification.from_pretrained(source)
        if teacher.config.num_labels != task.num_labels:
            raise ValueError(
                f"Teacher {source} has {teacher.config.num_labels} labels but {task.name} needs {task.num_labels}: "
                "pass a teacher fine-tuned on this task, or --teacher-base to fine-tune one."
            )
        if not (teacher_dir / METRICS_FILE).is_file():
            dev = tokenize(raw["validation"], tokenizer, cfg.teacher_max_length)
            record = {"task": task.name, "role": "teacher", "model": public_name(source)}
            record |= _evaluate(teacher, tokenizer, task, dev, cfg.eval_batch_size) | _num_parameters(teacher)
            _save(teacher, tokenizer, teacher_dir, record)
    else:
        teacher, tokenizer = finetune_teacher(cfg, task, raw, teacher_dir)
    teacher_record = json.loads((teacher_dir / METRICS_FILE).read_text())
    distill_student(cfg, task, raw, teacher, tokenizer, student_dir, teacher_record)
    (task_dir / "run_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return {folder.name: json.loads((folder / METRICS_FILE).read_text()) for folder in (teacher_dir, student_dir)}
