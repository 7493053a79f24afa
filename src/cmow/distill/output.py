"""Saving a distilled student: weights, the two remote-code files, tokenizer, config, model card; optional upload."""

import logging
import os
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..hub import push_to_hub as upload
from ..hub_cards import public_name, write_model_card
from ..modeling_cmow import CMOWPreTrainedModel
from .config import DistillationConfig

logger = logging.getLogger(__name__)


def save_student(
    student: CMOWPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    *,
    teacher: str,
    objective: str,
    config: DistillationConfig,
    steps: int,
    corpus: str | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Save ``student`` and ``tokenizer`` with ``config.teacher`` / ``config.distillation`` set, and a model card.

    ``config.distillation`` records every setting, the resolved objective, the corpus and the steps trained; the card
    shows the settings that differ from the defaults. Teacher and corpus are recorded by name (``public_name``),
    never as local paths, since the config and the card are published with the model.

    Returns:
        ``output_dir``.
    """
    output_dir = Path(output_dir)
    teacher, corpus = public_name(teacher), public_name(corpus) if corpus else None
    student.config.teacher = teacher
    student.config.distillation = {**config.to_dict(), "objective": objective, "corpus": corpus, "steps": steps}
    student.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_model_card(
        output_dir,
        teacher=teacher,
        objective=objective,
        training_args=config,
        datasets=[corpus] if corpus else None,
    )
    logger.info("Saved the distilled student to %s", output_dir)
    if push_to_hub:
        commit = upload(output_dir, push_to_hub)
        logger.info("Uploaded %s to %s", output_dir, commit.commit_url)
    return output_dir
