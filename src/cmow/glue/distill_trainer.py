"""Task-specific distillation with the stock ``Trainer``.

The student learns from gold labels and from a fine-tuned teacher's logits. For classification

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

and for regression (STS-B)

    loss = alpha * MSE(student, labels) + (1 - alpha) * MSE(student, teacher).

Teacher logits come either from a ``teacher_logits`` column of the train set (computed once per dataset with
``predict_logits``; ``DataCollatorWithPadding`` stacks it like ``labels``) or from a teacher model run on each batch.

With a transfer set (texts only the teacher labelled, ``cmow.glue.transfer``) a ``gold_mask`` column is 1 for
labelled examples and 0 for transfer examples, and the loss is a mean over the batch of per-example terms

    loss = 1/B * sum_i [ alpha * m_i * CE_i + (1 - alpha) * T^2 * KL_i ]

so the gold-label term sees only real labels, the teacher term every example, and each labelled example weighs what
it weighs without a transfer set (the gold term is not rescaled by how many labelled examples a batch holds; a batch
of transfer examples only has no gold term). With every ``m_i = 1`` this is the loss above.

Layer-wise distillation (MoEBERT, Zuo et al. 2022) adds the hidden states of a student with the teacher's shape:

    loss = distill_weight * sum_l MSE(student_h_l, teacher_h_l) + the loss above (teacher run on each batch),

summing over every hidden state, the embedding output included (``output_hidden_states``), each MSE a mean over the
non-padding positions and the hidden units.
"""

import logging

import numpy as np
import torch
from torch.nn import functional as F
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from ..training import CMOWTrainer

logger = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"
GOLD_MASK = "gold_mask"


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
    gold_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The task distillation loss (see the module docstring); regression when the logits have one column.

    Args:
        student_logits: ``(batch, num_labels)``.
        teacher_logits: ``(batch, num_labels)``.
        labels: ``(batch,)`` class ids, or float scores for regression; any value where ``gold_mask`` is 0.
        alpha: Weight of the gold-label loss; ``1`` ignores the teacher, ``0`` ignores the labels.
        temperature: Softmax temperature ``T`` of the KL term (classification only).
        gold_mask: ``(batch,)`` 1 where ``labels`` are real, 0 for transfer examples; all real if None.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; got {alpha!r}.")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0; got {temperature!r}.")
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if student_logits.shape[-1] == 1:
        scores = student_logits.squeeze(-1)
        gold = F.mse_loss(scores, labels.float(), reduction="none")  # (batch,)
        soft = F.mse_loss(scores, teacher_logits.squeeze(-1))
    else:
        gold = F.cross_entropy(student_logits, labels.long(), reduction="none")  # (batch,)
        soft = temperature**2 * F.kl_div(
            F.log_softmax(student_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
    if gold_mask is not None:
        gold = torch.where(gold_mask.bool(), gold, 0.0)  # the placeholder labels of transfer examples count nothing
    return alpha * gold.mean() + (1 - alpha) * soft


class DistillationTrainer(CMOWTrainer):
    """A ``CMOWTrainer`` (sparse token-table gradients) whose training loss is ``distillation_loss`` against a teacher.

    The train set either has a ``teacher_logits`` column (kept despite ``remove_unused_columns`` and never passed to
    the student, like the optional ``gold_mask`` column of a train set with transfer examples) or ``teacher`` is
    given and run under ``no_grad`` on each batch; that teacher then reads the student's batch, so it must accept the
    same inputs and lengths. Batches without teacher logits (evaluation) use the model's own loss.

    Args:
        teacher: A fine-tuned teacher, only needed when the train set has no ``teacher_logits``.
        alpha: Weight of the gold-label loss.
        temperature: Softmax temperature of the KL term.
        *args, **kwargs: As for ``CMOWTrainer``.
    """

    def __init__(
        self, *args, teacher: PreTrainedModel | None = None, alpha: float = 0.5, temperature: float = 1.0, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.alpha = alpha
        self.temperature = temperature
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval()

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for column in (TEACHER_LOGITS, GOLD_MASK):
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_logits = inputs.pop(TEACHER_LOGITS, None)
        gold_mask = inputs.pop(GOLD_MASK, None)
        if teacher_logits is None and self.teacher is not None and model.training:
            with torch.no_grad():
                teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        if teacher_logits is None or "labels" not in inputs:
            if gold_mask is not None and not bool(gold_mask.all()):
                raise ValueError("Transfer examples (gold_mask 0) need teacher logits: add a teacher_logits column.")
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.alpha, self.temperature, gold_mask)
        return (loss, outputs) if return_outputs else loss


def hidden_state_loss(
    student_states: tuple[torch.Tensor, ...],
    teacher_states: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sum over layers of the mean squared error between student and teacher hidden states at non-pad positions.

    Args:
        student_states: ``(batch, seq, hidden)`` per layer, the embedding output first (``output.hidden_states``).
        teacher_states: The teacher's, of the same number and shapes.
        attention_mask: ``(batch, seq)``, 1 for tokens and 0 for padding; every position counts if None.

    Returns:
        A scalar: ``sum_l mean over non-pad positions p and units u of (student_l[p, u] - teacher_l[p, u])^2``.
    """
    if len(student_states) != len(teacher_states) or student_states[0].shape != teacher_states[0].shape:
        raise ValueError(
            f"Layer-wise distillation needs a student of the teacher's depth and width: got {len(student_states)} "
            f"hidden states of {tuple(student_states[0].shape)} and {len(teacher_states)} of "
            f"{tuple(teacher_states[0].shape)}."
        )
    total = student_states[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_states, teacher_states, strict=True):
        squared = (student.float() - teacher.float()).square().mean(dim=-1)  # (batch, seq)
        if attention_mask is None:
            total = total + squared.mean()
        else:
            mask = attention_mask.to(squared.dtype)
            total = total + (squared * mask).sum() / mask.sum()
    return total


class LayerwiseDistillationTrainer(DistillationTrainer):
    """A ``DistillationTrainer`` that also matches every hidden state of the teacher (see the module docstring).

    The teacher runs on each training batch, in eval mode and under ``no_grad``; it is never given to the optimizer.
    It reads the student's batch, so both must share tokenizer, depth and hidden size (a MoEBERT student converted
    from it, ``cmow.moe.moe_from_dense``). Evaluation batches use the model's own loss.

    Args:
        teacher: The fine-tuned teacher.
        distill_weight: Weight of the hidden-state term.
        *args, **kwargs: As for ``DistillationTrainer`` (``alpha``, ``temperature``...).
    """

    def __init__(self, *args, teacher: PreTrainedModel, distill_weight: float = 5.0, **kwargs):
        if distill_weight < 0:
            raise ValueError(f"`distill_weight` must be >= 0; got {distill_weight!r}.")
        super().__init__(*args, teacher=teacher, **kwargs)
        self.distill_weight = distill_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        with torch.no_grad():
            teacher_outputs = self.teacher(**inputs, output_hidden_states=True)
        outputs = model(**inputs, output_hidden_states=True)
        loss = distillation_loss(outputs.logits, teacher_outputs.logits, labels, self.alpha, self.temperature)
        hidden = hidden_state_loss(outputs.hidden_states, teacher_outputs.hidden_states, inputs.get("attention_mask"))
        loss = loss + self.distill_weight * hidden
        return (loss, outputs) if return_outputs else loss


@torch.inference_mode()
def predict_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits of ``model`` on a tokenized dataset (columns the tokenizer produced), in dataset order.

    Returns:
        ``(len(dataset), num_labels)`` float32.
    """
    model.eval()
    collator = DataCollatorWithPadding(tokenizer)
    keys = [k for k in tokenizer.model_input_names if k in dataset.column_names]
    # Sort by length so each batch pads little; scatter the results back to dataset order.
    columns = {k: list(dataset[k]) for k in keys}
    order = np.argsort([-len(ids) for ids in columns["input_ids"]], kind="stable")
    logits = np.zeros((len(dataset), model.config.num_labels), dtype=np.float32)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collator([{k: columns[k][i] for k in keys} for i in rows])
        logits[rows] = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
    return logits
