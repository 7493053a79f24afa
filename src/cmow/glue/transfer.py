"""Transfer sets: texts the fine-tuned teacher labels for the student, beside the labelled train set.

A transfer set holds Tang et al.'s perturbed copies of the train set (``cmow.glue.augment``) and/or unlabeled
in-domain text (``read_unlabeled``). For a pair task, unlabeled text becomes pairs: another pair task's train set
(``glue:RTE`` for MNLI) gives its pairs as written, and a line with a tab is a pair as it stands; other texts
(a single-sentence task's train set, a corpus) are shuffled and paired two by two (``pair_texts``). Such pairs are
mostly unrelated; the teacher labels them, which is what the student needs.

Nothing of the evaluation enters a transfer set: an example is dropped if any of its texts equals, up to case and
whitespace, a text of the task's dev set, its test set, or the slice of train held out for model selection. An
example equal to a train example or to an earlier transfer example is dropped too (the teacher would label it twice).

Labelling is the expensive part. ``transfer_logits`` runs the teacher batched and keeps its logits next to it, in
``transfer_logits-<key>/shard-<i>.npy``, where the key is a SHA-256 of every text of the transfer set, the teacher's
weights digest, its input length and the shard size: a changed transfer set or teacher gets a new folder and is never
served stale logits. Each shard (``shard_size`` examples) is written atomically (to a temporary file, then renamed),
so a killed labelling resumes at the first missing shard. Under ``accelerate launch`` process ``r`` of ``w`` labels
the shards ``i`` with ``i % w == r``, then all processes wait for each other and read every shard.
"""

import hashlib
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np
from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..distill.corpus import load_corpus, texts_of
from .augment import AugmentConfig, Example, augmented_copies
from .data import get_task, load_glue
from .distill_trainer import GOLD_MASK, TEACHER_LOGITS, predict_logits

logger = logging.getLogger(__name__)

GLUE_SOURCE = "glue:"
_FILE_SUFFIXES = {".txt", ".gz", ".json", ".jsonl", ".csv", ".tsv", ".parquet"}


def normalize(text: str) -> str:
    """The form in which texts are compared: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def is_glue_source(source: str) -> bool:
    """Whether ``source`` names a GLUE task's train set: ``glue:TASK`` (the prefix in any case)."""
    return source[: len(GLUE_SOURCE)].lower() == GLUE_SOURCE


def _names_a_task(name: str) -> bool:
    """Whether ``name`` is what ``cmow glue`` reads as a task: ``all`` or a GLUE task (``get_task``)."""
    try:
        return name.lower() == "all" or bool(get_task(name))
    except ValueError:
        return False


def check_transfer_source(source: str) -> None:
    """Refuse a ``read_unlabeled`` source that cannot be read, before any training: an unknown ``glue:`` task, a
    missing local file. A name that is not a local path may be a Hub dataset id and is left to ``load_corpus``."""
    if is_glue_source(source):
        get_task(source[len(GLUE_SOURCE) :])
        return
    path = Path(source).expanduser()
    if not path.exists() and _names_a_task(source):
        raise ValueError(
            f"--transfer-texts {source} names a GLUE task, not a source: write glue:{source} for its train texts (or "
            "give the tasks to run before --transfer-texts, which takes every word after it)."
        )
    looks_local = source.startswith(("/", ".", "~")) or path.suffix in _FILE_SUFFIXES or source.count("/") > 1
    if looks_local and not path.exists():
        raise FileNotFoundError(
            f"--transfer-texts {source}: no such file or folder; pass glue:TASK, an existing text file or a dataset."
        )


def read_unlabeled(
    source: str,
    glue_dir: str | None = None,
    text_column: str = "text",
    max_texts: int | None = None,
    pairs: bool = False,
    detokenize_train: bool = False,
) -> list[str]:
    """Unlabeled texts from ``source``, in stored order, at most ``max_texts``.

    Args:
        source: ``glue:TASK`` (that task's train texts), a text file (one text per line; ``.gz`` works), a
            ``.json``/``.jsonl``/``.csv``/``.parquet`` file, a dataset folder or a Hub dataset id.
        glue_dir: Where ``glue:TASK`` is read from (as ``load_glue``).
        text_column: Column of a dataset source that holds the texts.
        max_texts: Keep the first this many texts; all if None.
        pairs: The texts are for a pair task: a pair task's ``glue:TASK`` gives its pairs as written, each as
            ``text_a<TAB>text_b`` (``pair_texts`` keeps them). Otherwise both sides of a pair are texts of their own.
        detokenize_train: Detokenize a tokenized ``glue:TASK`` train set (``load_glue``).
    """
    if is_glue_source(source):
        train = load_glue(source[len(GLUE_SOURCE) :], glue_dir, detokenize_train)["train"]
        columns = [c for c in ("text_a", "text_b") if c in train.column_names]
        rows = zip(*(train[c] for c in columns), strict=True)
        if pairs and len(columns) == 2:
            # A tab inside a text would move the split; GLUE's TSVs have none, but a Hub copy might.
            texts = ("\t".join(" ".join(text.split()) for text in row) for row in rows if all(t.strip() for t in row))
        else:
            texts = (text for row in rows for text in row)
    else:
        texts = texts_of(load_corpus(source), text_column)
    return [text.strip() for text in itertools.islice((t for t in texts if t.strip()), max_texts)]


def pair_texts(texts: list[str], seed: int = 0) -> list[Example]:
    """Pairs for a pair task: a text with a tab is ``text_a<TAB>text_b``; the others are shuffled and paired."""
    pairs = [tuple(text.split("\t", 1)) for text in texts if "\t" in text]
    singles = [text for text in texts if "\t" not in text]
    random.Random(f"{seed}:pairs").shuffle(singles)
    return pairs + list(zip(singles[0::2], singles[1::2], strict=False))


def build_transfer_set(
    train: datasets.Dataset,
    exclude: Iterable[str],
    copies: int = 0,
    mask_token: str = "[MASK]",
    unlabeled: list[str] | None = None,
    seed: int = 0,
    augment: AugmentConfig | None = None,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """The transfer set of a train set: augmented copies, then unlabeled examples, minus evaluation texts.

    Args:
        train: The labelled train set (``text_a``, and ``text_b`` for pairs).
        exclude: Texts that must never enter (dev, test and held-out texts).
        copies: Augmented copies per train example (``augment.augmented_copies``).
        mask_token: What a masked word becomes.
        unlabeled: Unlabeled texts; for a pair task they are paired by ``pair_texts``.
        seed: Seeds the augmentation and the pairing.
        augment: Tang et al.'s probabilities.

    Returns:
        The transfer set (``text_a``, ``text_b`` for pairs; no labels) and counts: ``augmented``, ``unlabeled``,
        ``kept``, ``dropped_evaluation`` (a text of ``exclude``) and ``dropped_duplicate``.
    """
    columns = [c for c in ("text_a", "text_b") if c in train.column_names]
    examples = list(zip(*(train[c] for c in columns), strict=True))
    copied = augmented_copies(examples, copies, mask_token, seed, augment)
    unlabeled = unlabeled or []
    extra = pair_texts(unlabeled, seed) if len(columns) == 2 else [(text.replace("\t", " "),) for text in unlabeled]
    banned = {normalize(text) for text in exclude}
    known = {tuple(map(normalize, example)) for example in examples}
    kept, dropped_evaluation = [], 0
    for example in itertools.chain(copied, extra):
        key = tuple(map(normalize, example))
        if any(text in banned for text in key):
            dropped_evaluation += 1
        elif key not in known and all(key):
            known.add(key)
            kept.append(example)
    counts = {
        "augmented": len(copied),
        "unlabeled": len(extra),
        "kept": len(kept),
        "dropped_evaluation": dropped_evaluation,
        "dropped_duplicate": len(copied) + len(extra) - len(kept) - dropped_evaluation,
    }
    data = datasets.Dataset.from_dict({c: [example[i] for example in kept] for i, c in enumerate(columns)})
    return data, counts


def transfer_key(transfer: datasets.Dataset, teacher_digest: str, max_length: int, shard_size: int) -> str:
    """A SHA-256 of every text of ``transfer`` (in order), the teacher's weights digest, its length and shard size."""
    digest = hashlib.sha256()
    columns = [transfer[c] for c in transfer.column_names]
    for row in zip(*columns, strict=True):
        digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    digest.update(json.dumps([transfer.column_names, teacher_digest, max_length, shard_size]).encode())
    return digest.hexdigest()[:24]


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:06d}.npy"


def label_shards(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    transfer: datasets.Dataset,
    folder: Path,
    *,
    max_length: int,
    batch_size: int,
    shard_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Label this process's missing shards of ``transfer`` into ``folder``; return how many it labelled."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(len(transfer) / shard_size)
    labelled = 0
    for index in range(rank, shards, world_size):
        path = _shard_path(folder, index)
        if path.is_file():
            continue
        start = time.perf_counter()
        rows = transfer[index * shard_size : (index + 1) * shard_size]  # {column: texts}
        # The tokenizer directly, not ``datasets.map``: that would hash the whole tokenizer for every shard.
        encoded = tokenizer(*rows.values(), truncation=True, max_length=max_length)
        logits = predict_logits(teacher, tokenizer, datasets.Dataset.from_dict(dict(encoded)), batch_size)
        partial = path.with_suffix(f".rank{rank}.partial")
        with open(partial, "wb") as handle:
            np.save(handle, logits)
        os.replace(partial, path)  # atomic: a killed run leaves no half-written shard
        labelled += 1
        seconds = time.perf_counter() - start
        logger.info("Labelled transfer shard %d/%d (%d texts, %.1f s)", index + 1, shards, len(logits), seconds)
    return labelled


def transfer_logits(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    transfer: datasets.Dataset,
    cache_dir: Path,
    teacher_digest: str,
    *,
    max_length: int,
    batch_size: int = 64,
    shard_size: int = 4096,
) -> tuple[np.ndarray, str]:
    """The teacher's logits on ``transfer``, labelled (or resumed) in shards under ``cache_dir`` (see the module).

    Returns:
        ``(len(transfer), num_labels)`` float32 logits and the cache key.
    """
    key = transfer_key(transfer, teacher_digest, max_length, shard_size)
    folder = cache_dir / f"transfer_logits-{key}"
    state = PartialState()
    label_shards(
        teacher,
        tokenizer,
        transfer,
        folder,
        max_length=max_length,
        batch_size=batch_size,
        shard_size=shard_size,
        rank=state.process_index,
        world_size=state.num_processes,
    )
    state.wait_for_everyone()
    shards = math.ceil(len(transfer) / shard_size)
    missing = [index for index in range(shards) if not _shard_path(folder, index).is_file()]
    if missing:
        raise RuntimeError(
            f"Transfer shards {missing[:5]} of {folder} are missing after labelling: did a process fail? Rerun to "
            "resume the labelling."
        )
    if not shards:
        return np.zeros((0, teacher.config.num_labels), dtype=np.float32), key
    return np.concatenate([np.load(_shard_path(folder, index)) for index in range(shards)]), key


def join_transfer_set(train: datasets.Dataset, transfer: datasets.Dataset, logits: np.ndarray) -> datasets.Dataset:
    """The student's train set: ``train`` (tokenized, with ``teacher_logits``) followed by ``transfer`` (tokenized).

    Transfer examples get the teacher's ``logits``, a placeholder label (0) and ``gold_mask`` 0; train examples get
    ``gold_mask`` 1, so the gold-label loss counts only them (``distill_trainer.distillation_loss``). An empty
    transfer set (everything dropped) leaves ``train`` as it is.
    """
    if len(transfer) == 0:
        logger.warning("The transfer set is empty (every candidate was dropped): training on the train set only.")
        return train
    transfer = transfer.add_column(TEACHER_LOGITS, logits.tolist())
    transfer = transfer.add_column("label", [0] * len(transfer)).cast_column("label", train.features["label"])
    train = train.add_column(GOLD_MASK, [1.0] * len(train))
    transfer = transfer.add_column(GOLD_MASK, [0.0] * len(transfer))
    return datasets.concatenate_datasets([train, transfer.cast(train.features)])
