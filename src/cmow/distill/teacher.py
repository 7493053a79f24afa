"""The teacher side: which objective a teacher supports, its sentence pooling, and its targets for a batch."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..modeling_cmow import CMOWPreTrainedModel

logger = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class TeacherPooling:
    """How the teacher turns its token states into a sentence embedding.

    Attributes:
        mode: ``"mean"`` over non-pad tokens, ``"cls"`` (first token) or ``"max"``.
        normalize: L2-normalise the pooled vector (a sentence-transformers ``Normalize`` module).
    """

    mode: str = "mean"
    normalize: bool = False

    def __post_init__(self):
        if self.mode not in POOLING_MODES:
            raise ValueError(f"Teacher pooling must be one of {POOLING_MODES}; got {self.mode!r}.")

    def __call__(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``(batch, seq, hidden)`` states over the positions where ``mask`` is 1: ``(batch, hidden)``."""
        mask = mask[..., None].to(states.dtype)  # (batch, seq, 1)
        if self.mode == "mean":
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        elif self.mode == "cls":
            pooled = states[:, 0]
        else:
            pooled = states.masked_fill(mask == 0, torch.finfo(states.dtype).min).amax(dim=1)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def read_pooling(folder: str | Path) -> TeacherPooling | None:
    """The pooling a sentence-transformers folder declares (``modules.json``, ``1_Pooling/config.json``), if any."""
    modules_file = Path(folder) / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    pooling = next((m for m in modules if m["type"].endswith(".Pooling")), None)
    if pooling is None:
        return None
    settings = json.loads((Path(folder) / pooling["path"] / "config.json").read_text())
    flags = {
        "mean": settings.get("pooling_mode_mean_tokens"),
        "cls": settings.get("pooling_mode_cls_token"),
        "max": settings.get("pooling_mode_max_tokens"),
        "mean_sqrt_len": settings.get("pooling_mode_mean_sqrt_len_tokens"),
    }
    modes = [mode for mode, enabled in flags.items() if enabled]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(f"{folder}: unsupported sentence-transformers pooling {settings}; use mean, CLS or max.")
    normalize = any(m["type"].endswith(".Normalize") for m in modules)
    return TeacherPooling(mode=modes[0], normalize=normalize)


def has_mlm_head(teacher: PreTrainedModel) -> bool:
    return type(teacher).__name__.endswith("ForMaskedLM")


def resolve_objective(objective: str, teacher: PreTrainedModel) -> str:
    """``"mlm"`` or ``"hidden"``; ``"auto"`` picks ``"mlm"`` exactly when the teacher has a masked-LM head."""
    if objective == "auto":
        return "mlm" if has_mlm_head(teacher) else "hidden"
    if objective == "mlm" and not has_mlm_head(teacher):
        raise ValueError(
            f"The 'mlm' objective needs a teacher with a masked-LM head (a *ForMaskedLM model); "
            f"{type(teacher).__name__} has none. Load it with AutoModelForMaskedLM or use objective 'hidden'."
        )
    return objective


def check_compatibility(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    student: CMOWPreTrainedModel,
    objective: str,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Raise a ``ValueError`` saying what to change when teacher, tokenizers and student do not fit together."""
    teacher_vocab = teacher.config.vocab_size
    if len(tokenizer) > teacher_vocab:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary only {teacher_vocab}: "
            "use the teacher's own tokenizer."
        )
    student_vocab = student.config.vocab_size
    if student_tokenizer is None and student_vocab != teacher_vocab:
        raise ValueError(
            f"The student's vocab_size ({student_vocab}) differs from the teacher's ({teacher_vocab}): "
            f"build the student with CMOWConfig(vocab_size={teacher_vocab}, ...)."
        )
    if student_tokenizer is not None and student_vocab < len(student_tokenizer):
        raise ValueError(
            f"The student's tokenizer has {len(student_tokenizer)} tokens but its vocab_size is {student_vocab}: "
            f"build the student with CMOWConfig(vocab_size={len(student_tokenizer)}, ...)."
        )
    if student_tokenizer is not None and objective == "mlm":
        raise ValueError(
            "The 'mlm' objective compares predictions over one vocabulary: a student with its own tokenizer needs "
            "objective 'hidden' (load the teacher with AutoModel)."
        )
    for name, each in (("tokenizer", tokenizer), ("student's tokenizer", student_tokenizer)):
        if each is not None and each.pad_token_id is None:
            raise ValueError(f"The {name} has no pad token; set its pad_token before distilling.")
    own = student_tokenizer or tokenizer
    if student.config.pad_token_id != own.pad_token_id:
        raise ValueError(
            f"The student's pad_token_id ({student.config.pad_token_id}) differs from its tokenizer's "
            f"({own.pad_token_id}): set CMOWConfig(pad_token_id={own.pad_token_id})."
        )
    if objective == "mlm":
        if tokenizer.mask_token_id is None:
            raise ValueError("The 'mlm' objective needs a tokenizer with a mask token; use objective 'hidden'.")
        if not hasattr(student, "lm_head"):
            raise ValueError("The 'mlm' objective trains a CMOWForMaskedLM student; got " + type(student).__name__)
    elif not hasattr(teacher.config, "hidden_size"):
        raise ValueError(
            f"The 'hidden' objective needs a teacher config with `hidden_size`; {type(teacher).__name__}."
        )
    elif getattr(student.base_model, "pooler", None) is None or (
        student.config.embedding_size != teacher.config.hidden_size
    ):
        raise ValueError(
            "The 'hidden' objective trains the student's sentence embedding (its pooler) towards the teacher's: "
            f"build the student with CMOWConfig(embedding_size={teacher.config.hidden_size}, ...); got "
            f"embedding_size={student.config.embedding_size}."
        )


def check_sequence_length(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> None:
    """Raise a ``ValueError`` if texts of ``max_seq_length`` tokens exceed what the teacher's positions cover."""
    limits = {"the teacher's max_position_embeddings": getattr(teacher.config, "max_position_embeddings", None)}
    if tokenizer.model_max_length < 1_000_000:  # unset, it is a huge placeholder
        limits["the tokenizer's model_max_length"] = tokenizer.model_max_length
    for name, limit in limits.items():
        if limit is not None and max_seq_length > limit:
            raise ValueError(
                f"max_seq_length={max_seq_length} exceeds {name} ({limit}): the teacher cannot read texts that "
                f"long. Pass --max-seq-length {limit} or less."
            )


@torch.no_grad()
def teacher_targets(
    teacher: PreTrainedModel, batch: dict, objective: str, pooling: TeacherPooling, token_states: bool = True
) -> dict:
    """What the student learns from: MLM ``logits``, or a ``sentence`` embedding (and per-token ``token_states``)."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in batch}
    if objective == "mlm":
        return {"logits": teacher(**inputs).logits.float()}
    if not token_states:
        return {"sentence": _sentence_embeddings(teacher, inputs, pooling)}
    states = _last_hidden_states(teacher, inputs)  # (batch, seq, hidden)
    return {"sentence": pooling(states, batch["attention_mask"]), "token_states": states}


def _last_hidden_states(teacher: PreTrainedModel, inputs: dict) -> torch.Tensor:
    outputs = teacher(**inputs, output_hidden_states=True)
    states = getattr(outputs, "last_hidden_state", None)
    return (states if states is not None else outputs.hidden_states[-1]).float()


def _sentence_embeddings(teacher: PreTrainedModel, inputs: dict, pooling: TeacherPooling, chunk: int = 16):
    """The teacher's sentence embeddings, run in chunks of texts of similar length, each cut to the positions it uses.

    A batch mixes short sentences with long paragraphs; padding all of them to the longest text made the teacher's
    forward pass (the cost of a run without a cache) about twice as long. The result equals the padded batch's up to
    float rounding: padding is masked out of attention and pooling.
    """
    mask = inputs["attention_mask"]
    order = torch.argsort(mask.sum(dim=1))
    parts = []
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        columns = mask[rows].bool().any(dim=0)  # every position some text of the chunk uses (either padding side)
        part = {key: value[rows][:, columns] for key, value in inputs.items()}
        parts.append(pooling(_last_hidden_states(teacher, part), part["attention_mask"]))
    return torch.cat(parts)[torch.argsort(order)]
