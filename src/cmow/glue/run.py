"""One GLUE task end to end: fine-tune a teacher, distil a CMOW student from it (or a MoEBERT student converted from
it, ``cmow.glue.moe_student``), evaluate, save.

Layout of ``output_dir/<TASK>/``: ``teacher/`` and ``student-<name>/``, each a ``save_pretrained`` folder (model,
tokenizer) with ``metrics.json``, and ``majority/metrics.json`` (the majority-class baseline). A ``teacher/`` that
already holds ``metrics.json`` is reused, so a run over all nine tasks can be resumed and several students share one
teacher; its logits on the train set and on transfer sets are kept beside it. Models, sources and commands are named in
``metrics.json``, configs and cards by ``public_name``, never by a local path; ``run_config.json``, which is not
published, keeps the paths to rerun.
"""

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import PartialState
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from ..configuration_cmow import CMOWConfig
from ..hub_cards import DEFAULT_TEACHER_ID, DEFAULT_TEACHER_NAME, public_name
from ..modeling_cmow import CMOWForSequenceClassification
from .augment import AugmentConfig
from .data import GlueTask, get_task, load_glue, load_test_texts, tokenize
from .distill_trainer import TEACHER_LOGITS, DistillationTrainer, predict_logits
from .metrics import compute_metrics_fn, majority_baseline
from .moe_student import distill_moe_student, moe_settings
from .results import METRICS_FILE, evaluate, parameter_counts, save, write_card
from .selection import selection_data, selection_record, split_held_out, student_training_args, training_args
from .transfer import build_transfer_set, check_transfer_source, join_transfer_set, read_unlabeled, transfer_logits

logger = logging.getLogger(__name__)

OBJECTIVE = (
    "alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)); "
    "regression: alpha * MSE(student, labels) + (1 - alpha) * MSE(student, teacher); "
    "on transfer-set examples (teacher-labelled only) the gold term is masked out"
)

# Student epochs and learning rate by student type: CMOW trains from scratch or a general student, MoEBERT fine-tunes
# a converted teacher (learning rate as MoEBERT's example script).
STUDENT_DEFAULTS = {"cmow": {"epochs": 10.0, "lr": 2e-3}, "moe": {"epochs": 5.0, "lr": 5e-5}}
# Chosen by measurement per task type (docs/glue.md, "Bigrams, intermediate tasks and defaults"). Classification:
# hashed bigrams (CoLA +5.9 over three seeds, SST-2 +0.7, MRPC +0.8) and no augmented copies (MRPC +0.5, RTE -4.3,
# CoLA with bigrams -3.0, at 10x the cost). Regression (STS-B): 10 copies per train example (+4.2) and no bigrams
# (+0.2 alone, -2.3 on top of the copies).
DEFAULT_NGRAMS = {"classification": {"ngram_orders": [2]}, "regression": {}}
DEFAULT_COPIES = {"classification": 0, "regression": 10}


def task_type(task: GlueTask) -> str:
    """``"regression"`` (STS-B) or ``"classification"``: the key of the per-type defaults."""
    return "regression" if task.num_labels == 1 else "classification"


@dataclass
class GlueRunConfig:
    """Settings of one task's run (``cmow glue`` flags); docs/glue.md gives the recipes used there.

    Attributes:
        task: GLUE task name (``"MRPC"``, ``"sst2"``, ...).
        output_dir: Where ``<TASK>/teacher`` and ``<TASK>/student-<student_name>`` are written.
        glue_dir: Folder in the GLUE TSV layout; ``None`` loads ``nyu-mll/glue`` from the Hub.
        teacher: A teacher already fine-tuned on this task (skips fine-tuning).
        teacher_base: The model to fine-tune as teacher when ``teacher`` is not given.
        student_type: ``"cmow"``: a CMOW student distilled from the teacher's precomputed logits. ``"moe"``: a
            MoEBERT student converted from the teacher and trained by layer-wise distillation
            (``cmow.glue.moe_student``); it takes no ``student``, ``student_config`` or transfer set.
        student: A CMOW checkpoint (e.g. from general distillation) to start the student from; random init if None.
        student_name: Names the student's folder, ``student-<student_name>``; default ``random``, ``pretrained``
            (with ``student``) or ``moe``.
        student_config: ``CMOWConfig`` overrides: for a random student, or added to a ``student`` checkpoint's config
            (e.g. ``{"ngram_orders": [2]}`` adds a zero-initialised n-gram table to a general-distilled student).
            Without ``ngram_orders`` here or in the checkpoint, ``DEFAULT_NGRAMS`` of the task type apply;
            ``{"ngram_orders": null}`` (or ``[]``) gives a student without n-grams.
        teacher_only: Fine-tune (or reuse) the teacher and stop: for tuning the teacher's recipe.
        teacher_epochs, teacher_lr, teacher_batch_size, teacher_warmup_ratio, teacher_weight_decay: The teacher's
            fine-tuning recipe.
        teacher_seed: Seed of the teacher's fine-tuning; ``seed`` if None (the data split always follows ``seed``).
        student_seed: Seed of the student's initialisation and batch order. The data split, the held-out slice and
            the augmented copies follow ``seed``, so students of several ``student_seed`` share their teacher and
            transfer set (a seed study). If None, torch is not reseeded before the student is built (its batch order
            follows ``seed``, its initialisation the random state the teacher step left), as before this option, so
            earlier runs' commands give their students again; ``student_seed=seed`` is another student.
        teacher_max_length: Teacher inputs are truncated to this many tokens; a CMOW student reads whole texts, a
            MoEBERT student the teacher's tokens.
        student_epochs, student_lr, student_batch_size: The student's recipe; epochs and learning rate default to
            ``STUDENT_DEFAULTS`` of the student type.
        alpha: Weight of the gold-label loss in the distillation loss (the rest goes to the teacher).
        temperature: Softmax temperature of the distillation loss.
        selection: Which epoch is kept, for teacher and student: ``"held-out"`` (best on a slice of train),
            ``"last"`` or ``"dev"`` (best on dev, flatters; see ``cmow.glue.selection``).
        held_out_fraction: Size of the held-out slice of train, for ``selection="held-out"``.
        detokenize_train: Detokenize a tokenized train set whose dev set is raw text (``cmow.glue.data.load_glue``;
            CoLA's train file in some GLUE copies); also ``glue:TASK`` transfer texts.
        augment_copies: Tang et al.'s augmented copies per train example in the transfer set (0: none); None:
            ``DEFAULT_COPIES`` of the task type (``task_type``; a CMOW student; a MoEBERT student takes none).
        augment_mask_p, augment_replace_p, augment_ngram_p, augment_max_ngram: Their probabilities
            (``cmow.glue.augment.AugmentConfig``).
        transfer_texts: Unlabeled in-domain texts for the transfer set, one source or several: ``glue:TASK``, a
            text file or a dataset (``cmow.glue.transfer.read_unlabeled``). For a pair task another pair task's
            ``glue:TASK`` gives its pairs as written; other texts are paired two by two.
        transfer_text_column: Column of a dataset ``transfer_texts`` that holds the texts.
        transfer_max_texts: Read at most this many texts from each source of ``transfer_texts``.
        label_shard_size: Transfer examples per cached shard of teacher logits (the unit of resuming).
        max_train_samples: Train on the first this many examples (for quick runs); all if None.
        max_eval_samples: Evaluate on the first this many examples; all if None.
        moe_experts, moe_expert_size, moe_shared_size, moe_routing: The MoEBERT student's experts per layer, neurons
            per expert, neurons shared by all experts and routing (``MoEBertConfig``'s ``num_experts``,
            ``expert_size``, ``shared_size``, ``routing``; sizes default to its defaults on the teacher's FFN).
        moe_distill_weight: Weight of the hidden-state term of layer-wise distillation (MoEBERT's 5.0).
        moe_importance_examples: Train examples the teacher's FFN neurons are scored on; all if 0.
        moe_importance_batch_size: Examples per term of the importance score (1: MoEBERT's per-example scores).
    """

    task: str
    output_dir: str = "runs/glue"
    glue_dir: str | None = None
    teacher: str | None = None
    teacher_base: str | None = None
    student_type: str = "cmow"
    student: str | None = None
    student_name: str | None = None
    student_config: dict = field(default_factory=dict)
    teacher_only: bool = False
    teacher_epochs: float = 3.0
    teacher_lr: float = 5e-5
    teacher_batch_size: int = 32
    teacher_warmup_ratio: float = 0.1
    teacher_weight_decay: float = 0.0
    teacher_seed: int | None = None
    student_seed: int | None = None
    teacher_max_length: int = 128
    student_epochs: float | None = None
    student_lr: float | None = None
    student_batch_size: int = 32
    alpha: float = 0.5
    temperature: float = 1.0
    selection: str = "held-out"
    held_out_fraction: float = 0.1
    detokenize_train: bool = False
    augment_copies: int | None = None
    augment_mask_p: float = 0.1
    augment_replace_p: float = 0.1
    augment_ngram_p: float = 0.25
    augment_max_ngram: int = 5
    transfer_texts: str | list[str] | None = None
    transfer_text_column: str = "text"
    transfer_max_texts: int | None = None
    label_shard_size: int = 4096
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_batch_size: int = 64
    seed: int = 42
    moe_experts: int = 4
    moe_expert_size: int | None = None
    moe_shared_size: int | None = None
    moe_routing: str = "hash"
    moe_distill_weight: float = 5.0
    moe_importance_examples: int = 2048
    moe_importance_batch_size: int = 1

    def __post_init__(self):
        if self.student_type not in STUDENT_DEFAULTS:
            raise ValueError(
                f"`student_type` must be one of {', '.join(map(repr, STUDENT_DEFAULTS))}; got {self.student_type!r}."
            )
        defaults = STUDENT_DEFAULTS[self.student_type]
        self.student_epochs = defaults["epochs"] if self.student_epochs is None else self.student_epochs
        self.student_lr = defaults["lr"] if self.student_lr is None else self.student_lr
        if isinstance(self.transfer_texts, str):
            self.transfer_texts = [self.transfer_texts]
        self.transfer_texts = list(self.transfer_texts) if self.transfer_texts else None
        for source in self.transfer_texts or ():
            check_transfer_source(source)
        if self.augment_copies is None and self.task:  # the CLI's defaults come from a config without a task
            self.augment_copies = DEFAULT_COPIES[task_type(get_task(self.task))] if self.student_type == "cmow" else 0
        # Flags of the other student type would be ignored silently: refuse them.
        if self.student_type == "moe":
            cmow_only = {
                "--student": self.student,
                "--student-config": self.student_config,
                "--augment-copies": self.augment_copies,
                "--transfer-texts": self.transfer_texts,
            }
            given = [flag for flag, value in cmow_only.items() if value]
        else:
            moe = [f for f in fields(self) if f.name.startswith("moe_")]
            given = ["--" + f.name.replace("_", "-") for f in moe if getattr(self, f.name) != f.default]
        if given:
            raise ValueError(
                f"--student-type {self.student_type} does not use {', '.join(given)}: drop them, or choose the "
                "student type they belong to."
            )


def _texts(data: datasets.Dataset) -> list[str]:
    """Every text of ``data``: ``text_a``, then ``text_b`` if any."""
    return [text for column in ("text_a", "text_b") if column in data.column_names for text in data[column]]


def _slice(data: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return data if limit is None else data.select(range(min(limit, len(data))))


def teacher_settings(cfg: GlueRunConfig) -> dict:
    """The teacher recipe ``cfg`` asks for, as a teacher's ``metrics.json`` records it under ``settings``."""
    return {
        "epochs": cfg.teacher_epochs,
        "lr": cfg.teacher_lr,
        "batch_size": cfg.teacher_batch_size,
        "warmup_ratio": cfg.teacher_warmup_ratio,
        "weight_decay": cfg.teacher_weight_decay,
        "seed": cfg.seed if cfg.teacher_seed is None else cfg.teacher_seed,
        "max_length": cfg.teacher_max_length,
        "detokenize_train": cfg.detokenize_train,
    }


def unused_teacher_settings(cfg: GlueRunConfig, stored: dict) -> dict[str, tuple]:
    """Teacher flags of ``cfg`` that the teacher it reuses from ``--output-dir`` (whose ``metrics.json`` record is
    ``stored``) was not fine-tuned with: they only apply to a new teacher.

    Only recipe flags set away from their defaults count (a run that leaves them alone just reuses the teacher), and
    only settings the record has. ``--teacher-max-length`` is not one (it also truncates a reused teacher's inputs),
    nor ``--seed`` (it moves the data split too). Nothing counts when the run names a teacher with ``--teacher``, or
    when the stored teacher was copied from one: recipe flags never applied to those. Returns
    ``{flag: (trained with, asked for)}``.
    """
    if cfg.teacher or stored.get("role") != "teacher" or "copied_from" in stored:
        return {}
    defaults = teacher_settings(GlueRunConfig(task=""))
    asked = teacher_settings(cfg) | {"seed": cfg.teacher_seed}  # --teacher-seed itself; None if not given
    recorded = stored.get("settings") or {}
    unused = {
        "--teacher-" + name.replace("_", "-"): (recorded[name], asked[name])
        for name in _RECIPE
        if name in recorded and asked[name] not in (None, defaults[name], recorded[name])
    }
    if cfg.teacher_base and "model" in stored and _base_name(cfg.teacher_base) != _base_name(stored["model"]):
        unused["--teacher-base"] = (stored["model"], public_name(cfg.teacher_base))
    return unused


_RECIPE = ("epochs", "lr", "batch_size", "warmup_ratio", "weight_decay", "seed")  # --teacher-NAME, as recorded


def _base_name(base: str) -> str:
    """A teacher base as records name it (``public_name``; the default teacher by its package or its Hub id alike;
    records of older cmow versions hold the path itself)."""
    name = public_name(base)
    return DEFAULT_TEACHER_NAME if name == DEFAULT_TEACHER_ID else name


def finetune_teacher(
    cfg: GlueRunConfig, task: GlueTask, data: datasets.DatasetDict, folder: Path, command: str | None = None
):
    """Fine-tune ``cfg.teacher_base`` (default: all-MiniLM-L6-v2) on the task with the ``Trainer``; save it."""
    from ..data import default_teacher

    base = cfg.teacher_base or default_teacher()
    tokenizer = AutoTokenizer.from_pretrained(base)
    # A base that already has a classifier head for another label set (e.g. an MNLI model for RTE) gets a fresh head
    # of the task's size, as with the stock run_glue's --ignore_mismatched_sizes; a head of the right size is kept.
    model = AutoModelForSequenceClassification.from_pretrained(base, ignore_mismatched_sizes=True, **task_head(task))
    train = tokenize(data["train"], tokenizer, cfg.teacher_max_length)
    dev = tokenize(data["validation"], tokenizer, cfg.teacher_max_length)
    selection_set = selection_data(cfg.selection, data)
    settings = teacher_settings(cfg)
    data_settings = ("max_length", "detokenize_train")
    schedule = {name: value for name, value in settings.items() if name not in data_settings}  # the recorded recipe
    args = training_args(
        folder / "checkpoints", selection=cfg.selection, eval_batch_size=cfg.eval_batch_size, **schedule
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=None if selection_set is None else tokenize(selection_set, tokenizer, cfg.teacher_max_length),
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
        **evaluate(trainer.model, tokenizer, task, dev, cfg.eval_batch_size),
        **parameter_counts(trainer.model),
        "selection": selection_record(trainer, cfg.selection, 0 if selection_set is None else len(selection_set)),
        "settings": settings,
        "command": command,
    }
    save(trainer.model, tokenizer, folder, record)
    return trainer.model, tokenizer


def task_head(task: GlueTask) -> dict:
    """Config overrides for the task's classifier head. ``problem_type`` is set, not left to be inferred, because a
    checkpoint of another task keeps its own: an STS-B model (regression) would compute MSE against MRPC's labels."""
    return {
        "num_labels": task.num_labels,
        "id2label": dict(enumerate(task.label_names or ("score",))),
        "problem_type": "regression" if task_type(task) == "regression" else "single_label_classification",
    }


def build_student(cfg: GlueRunConfig, task: GlueTask, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A CMOW classifier for the task: from ``cfg.student`` or a random bidirectional Hybrid CMOW with MLP head.

    ``cfg.student_config`` overrides the config either way (a checkpoint's token tables are kept where they fit).
    """
    head = {**task_head(task), "pair_encoding": "diffcat" if task.is_pair else "joint"}
    if cfg.student:
        # cls_token_id as from_tokenizer sets it: diffcat encodes both sides as [CLS] x [SEP], also for older students.
        overrides = {"cls_token_id": tokenizer.cls_token_id, **cfg.student_config}
        checkpoint = AutoConfig.from_pretrained(cfg.student)
        if _default_ngrams(overrides, checkpoint.encoder) and not checkpoint.ngram_orders:
            overrides |= DEFAULT_NGRAMS[task_type(task)]  # a zero-initialised table: it starts as the checkpoint
        return AutoModelForSequenceClassification.from_pretrained(
            cfg.student, ignore_mismatched_sizes=True, **head, **overrides
        )
    settings = {"encoder": "hybrid", "bidirectional": True, "classifier": "mlp", **cfg.student_config}
    if _default_ngrams(settings, "hybrid"):
        settings |= DEFAULT_NGRAMS[task_type(task)]
    return CMOWForSequenceClassification(CMOWConfig.from_tokenizer(tokenizer, **settings, **head))


def _default_ngrams(overrides: dict, encoder: str) -> bool:
    """Whether ``DEFAULT_NGRAMS`` join a student's config: the user set no orders, and it has a CBOW bag to add to."""
    return "ngram_orders" not in overrides and overrides.get("encoder", encoder) != "cmow"


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


def teacher_transfer_set(
    cfg: GlueRunConfig,
    data: datasets.DatasetDict,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    teacher_dir: Path,
    exclude: list[str],
) -> tuple[datasets.Dataset, np.ndarray, dict]:
    """The transfer set of ``cfg`` (``cmow.glue.transfer``) and the teacher's logits on it, cached in ``teacher_dir``.

    Args:
        exclude: Texts that must never enter it (dev, test and held-out texts).

    Returns:
        The transfer set (``text_a``/``text_b``), its teacher logits and what ``metrics.json`` records of it.
    """
    unlabeled = []
    if cfg.transfer_texts:
        pairs = get_task(cfg.task).is_pair
        for source in cfg.transfer_texts:
            unlabeled += read_unlabeled(
                source,
                cfg.glue_dir,
                cfg.transfer_text_column,
                cfg.transfer_max_texts,
                pairs=pairs,
                detokenize_train=cfg.detokenize_train,
            )
    augment = AugmentConfig(cfg.augment_mask_p, cfg.augment_replace_p, cfg.augment_ngram_p, cfg.augment_max_ngram)
    transfer, counts = build_transfer_set(
        data["train"],
        exclude,
        copies=cfg.augment_copies,
        mask_token=tokenizer.mask_token or tokenizer.unk_token,
        unlabeled=unlabeled,
        seed=cfg.seed,
        augment=augment,
    )
    logger.info("Transfer set: %s; e.g. %s", counts, transfer[:3])
    start = time.perf_counter()
    teacher.to(PartialState().device)
    logits, key = transfer_logits(
        teacher,
        tokenizer,
        transfer,
        teacher_dir,
        weights_digest(teacher),
        max_length=cfg.teacher_max_length,
        batch_size=cfg.eval_batch_size,
        shard_size=cfg.label_shard_size,
    )
    info = {
        "copies": cfg.augment_copies,
        "augment": asdict(augment),
        "texts": [public_name(source) for source in cfg.transfer_texts] if cfg.transfer_texts else None,
        "max_texts": cfg.transfer_max_texts,
        **counts,
        "key": key,
        "label_seconds": time.perf_counter() - start,
    }
    return transfer, logits, info


def student_tokenizer_of(cfg: GlueRunConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer saved with ``cfg.student`` (a general student may have its own vocabulary), else the teacher's."""
    if cfg.student and (Path(cfg.student) / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cfg.student)
    return tokenizer


def distill_student(
    cfg: GlueRunConfig,
    task: GlueTask,
    data: datasets.DatasetDict,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    teacher_record: dict,
    exclude: list[str] = (),
    command: str | None = None,
) -> PreTrainedModel:
    """Distil a CMOW student from the fine-tuned teacher's precomputed logits on train (+ a transfer set); save it.

    ``data`` holds ``train``, ``validation`` and, for held-out selection, ``held_out``. ``teacher_record`` is the
    teacher's ``metrics.json`` record (its base model and dev throughput). ``exclude``: texts no transfer set holds.
    """
    teacher_dir = folder.parent / "teacher"
    logits = teacher_train_logits(cfg, data["train"], teacher, tokenizer, teacher_dir)
    # The teacher reads its tokens, the student its own: a general student may have a vocabulary of its own.
    student_tokenizer = student_tokenizer_of(cfg, tokenizer)
    train = tokenize(data["train"], student_tokenizer).add_column(TEACHER_LOGITS, logits.tolist())
    gold_examples, transfer_info = len(train), None
    if cfg.augment_copies > 0 or cfg.transfer_texts:
        transfer, transfer_teacher_logits, transfer_info = teacher_transfer_set(
            cfg, data, teacher, tokenizer, teacher_dir, list(exclude)
        )
        train = join_transfer_set(train, tokenize(transfer, student_tokenizer), transfer_teacher_logits)
    dev = tokenize(data["validation"], student_tokenizer)
    selection_set = selection_data(cfg.selection, data)
    if cfg.student_seed is not None:
        torch.manual_seed(cfg.student_seed)
    student = build_student(cfg, task, student_tokenizer)
    student.config.teacher = public_name(teacher_record["model"])  # a path in records of older cmow versions
    student.config.distillation = {
        "task": task.name,
        "teacher_fine_tuned_on": task.name,
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "epochs": cfg.student_epochs,
        "lr": cfg.student_lr,
        "batch_size": cfg.student_batch_size,
        "student_seed": cfg.student_seed,  # None: not reseeded (see GlueRunConfig.student_seed)
        "init": public_name(cfg.student) if cfg.student else "random",
        "selection": cfg.selection,
        "transfer_copies": cfg.augment_copies,
        "transfer_texts": [public_name(source) for source in cfg.transfer_texts] if cfg.transfer_texts else None,
        "detokenize_train": cfg.detokenize_train,
    }
    args = student_training_args(cfg, folder)
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=train,
        eval_dataset=None if selection_set is None else tokenize(selection_set, student_tokenizer),
        processing_class=student_tokenizer,
        data_collator=DataCollatorWithPadding(student_tokenizer),
        compute_metrics=compute_metrics_fn(task),
        alpha=cfg.alpha,
        temperature=cfg.temperature,
    )
    logger.info("Distilling a CMOW student on %s (%d examples, %d labelled)", task.name, len(train), gold_examples)
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
        "gold_examples": gold_examples,
        **evaluate(trainer.model, student_tokenizer, task, dev, cfg.eval_batch_size),
        **parameter_counts(trainer.model),
        "selection": selection_record(trainer, cfg.selection, 0 if selection_set is None else len(selection_set)),
        "transfer": transfer_info,
        "student_config": cfg.student_config,
        "settings": student.config.distillation,
        "command": command,
    }
    save(trainer.model, student_tokenizer, folder, record)
    write_card(folder, task, record, teacher_record, OBJECTIVE)
    return trainer.model


def _write_majority(task: GlueTask, data: datasets.DatasetDict, folder: Path, command: str | None) -> None:
    """The majority-class baseline: the train set's most frequent class on dev (``metrics.majority_baseline``)."""
    record = {
        "task": task.name,
        "role": folder.name,
        "model": "majority class of train",
        "train_examples": len(data["train"]),
        "metrics": majority_baseline(task, data["train"]["label"], data["validation"]["label"]),
        "command": command,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _teacher_config(cfg: GlueRunConfig, teacher_dir: Path) -> PretrainedConfig:
    """The config of the teacher ``run_task`` will use (given, reused, or to fine-tune), read before any training."""
    from ..data import default_teacher

    if cfg.teacher or (teacher_dir / METRICS_FILE).is_file():
        return AutoConfig.from_pretrained(cfg.teacher or teacher_dir)
    return AutoConfig.from_pretrained(cfg.teacher_base or default_teacher())


def _reuse_teacher(cfg: GlueRunConfig, task: GlueTask, data: datasets.DatasetDict, teacher_dir: Path, command):
    """Load the fine-tuned teacher ``cfg.teacher`` or ``teacher_dir``; a new ``teacher_dir`` gets it and a record."""
    source = Path(cfg.teacher or teacher_dir)
    logger.info("Using the fine-tuned teacher %s", source)
    stored = json.loads((source / METRICS_FILE).read_text()) if (source / METRICS_FILE).is_file() else None
    tokenizer = AutoTokenizer.from_pretrained(source)
    teacher = AutoModelForSequenceClassification.from_pretrained(source)
    if teacher.config.num_labels != task.num_labels:
        raise ValueError(
            f"Teacher {source} has {teacher.config.num_labels} labels but {task.name} needs {task.num_labels}: "
            "pass a teacher fine-tuned on this task, or --teacher-base to fine-tune one."
        )
    detokenized = (stored or {}).get("settings", {}).get("detokenize_train", False)
    if detokenized != cfg.detokenize_train:
        form = {True: "detokenized", False: "as stored"}
        logger.warning(
            "The teacher %s was fine-tuned on the train text %s; this run reads it %s (--detokenize-train).",
            source,
            form[detokenized],
            form[cfg.detokenize_train],
        )
    if stored is not None and (unused := unused_teacher_settings(cfg, stored)):
        logger.warning(
            "Reusing the fine-tuned teacher %s, trained with %s; %s only apply to a new teacher. To fine-tune one "
            "with them, use another --output-dir or delete %s.",
            source,
            ", ".join(f"{flag} {trained}" for flag, (trained, _) in unused.items()),
            ", ".join(f"{flag} {asked}" for flag, (_, asked) in unused.items()),
            source,
        )
    if not (teacher_dir / METRICS_FILE).is_file():
        # A teacher from another run keeps what its record says of its training (recipe, time, selection).
        record = {"model": public_name(source), "command": command}
        if stored is not None:
            record = stored | {"copied_from": public_name(source)}
        dev = tokenize(data["validation"], tokenizer, cfg.teacher_max_length)
        record |= {"task": task.name, "role": "teacher"}
        record |= evaluate(teacher, tokenizer, task, dev, cfg.eval_batch_size) | parameter_counts(teacher)
        save(teacher, tokenizer, teacher_dir, record)
    return teacher, tokenizer


def run_task(cfg: GlueRunConfig, command: str | None = None) -> dict[str, dict]:
    """Run one task: majority baseline, teacher (fine-tuned or reused), then the student.

    Args:
        cfg: The run's settings.
        command: The command line that started the run, recorded in each ``metrics.json`` written.

    Returns:
        The ``metrics.json`` records written or used, by folder name (``majority``, ``teacher``, ``student-...``).
    """
    task = get_task(cfg.task)
    task_dir = Path(cfg.output_dir) / task.name
    teacher_dir = task_dir / "teacher"
    moe = cfg.student_type == "moe"
    student_name = cfg.student_name or ("moe" if moe else "pretrained" if cfg.student else "random")
    student_dir = task_dir / f"student-{student_name}"
    if moe and not cfg.teacher_only:
        moe_settings(cfg, _teacher_config(cfg, teacher_dir))  # bad MoE flags fail here, before any training
    if cfg.student and not cfg.teacher_only and (kind := AutoConfig.from_pretrained(cfg.student).model_type) != "cmow":
        raise ValueError(
            f"--student {cfg.student} is a {kind!r} model; it must be a CMOW checkpoint (e.g. from `cmow distill`)."
        )
    raw = load_glue(task.name, cfg.glue_dir, cfg.detokenize_train)
    train = _slice(raw["train"].shuffle(seed=cfg.seed), cfg.max_train_samples)
    train, held_out = split_held_out(train, cfg.selection, cfg.held_out_fraction)
    data = datasets.DatasetDict(train=train, validation=_slice(raw["validation"], cfg.max_eval_samples))
    if held_out is not None:
        data["held_out"] = held_out
    main_process = PartialState().is_main_process
    if main_process:
        _write_majority(task, data, task_dir / "majority", command)
    torch.manual_seed(cfg.seed)
    if cfg.teacher or (teacher_dir / METRICS_FILE).is_file():
        teacher, tokenizer = _reuse_teacher(cfg, task, data, teacher_dir, command)
    else:
        teacher, tokenizer = finetune_teacher(cfg, task, data, teacher_dir, command)
    PartialState().wait_for_everyone()  # the main process has saved the teacher and its record
    folders = [task_dir / "majority", teacher_dir]
    if not cfg.teacher_only:
        # Nothing of the evaluation enters a transfer set: all of dev (not only the evaluated slice), test, held-out.
        exclude = _texts(raw["validation"]) + (_texts(held_out) if held_out is not None else [])
        exclude += load_test_texts(task.name, cfg.glue_dir) if cfg.augment_copies or cfg.transfer_texts else []
        teacher_record = json.loads((teacher_dir / METRICS_FILE).read_text())
        if moe:
            distill_moe_student(cfg, task, data, teacher, tokenizer, student_dir, teacher_record, command)
        else:
            distill_student(cfg, task, data, teacher, tokenizer, student_dir, teacher_record, exclude, command)
        folders.append(student_dir)
    if main_process:
        (task_dir / "run_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return {folder.name: json.loads((folder / METRICS_FILE).read_text()) for folder in folders}
