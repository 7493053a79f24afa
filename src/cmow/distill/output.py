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


def describe_objective(objective: str, config: DistillationConfig) -> str:
    """The objective in words with its active terms and weights, for the model card."""
    if objective == "mlm":
        return (
            f"masked-LM distillation: {config.alpha_ce:g} x T^2 KL(teacher || student) at T = {config.temperature:g} "
            f"+ {config.alpha_mlm:g} x MLM cross-entropy"
        )
    distance = {"cosine": "1 - cos", "mse": "MSE", "mse+cosine": "MSE + 1 - cos"}[config.hidden_loss]
    terms = {
        "alpha_sentence": f"{distance} to the teacher's sentence embedding",
        "alpha_contrastive": f"in-batch InfoNCE with the teacher as keys (tau = {config.contrastive_temperature:g})",
        "alpha_relational": "in-batch cosine-similarity matrix MSE",
        "alpha_order": "direction of the teacher's change under a word swap",
        "alpha_swap": "word-swap detection",
        "alpha_token": f"per-token {distance} to the teacher's last hidden states",
    }
    active = [f"{getattr(config, name):g} x {text}" for name, text in terms.items() if getattr(config, name)]
    return "hidden-state distillation: " + " + ".join(active)


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
        objective=describe_objective(objective, config),
        training_args=config,
        datasets=[corpus] if corpus else None,
    )
    logger.info("Saved the distilled student to %s", output_dir)
    if push_to_hub:
        commit = upload(output_dir, push_to_hub)
        logger.info("Uploaded %s to %s", output_dir, commit.commit_url)
    return output_dir
