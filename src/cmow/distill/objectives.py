"""The student side of the objectives: the trained module (student + training-only projections) and the losses."""

import torch
from torch import nn
from torch.nn import functional as F

from ..modeling_cmow import CMOWPreTrainedModel
from .config import DistillationConfig


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float):
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, summed over the vocabulary, averaged over ``mask`` positions."""
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="none").sum(dim=-1)  # (batch, seq)
    mask = mask.to(kl.dtype)
    return temperature**2 * (kl * mask).sum() / mask.sum().clamp_min(1)


def hidden_distance(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-vector distance ``D``: ``1 - cos``, mean squared error, or their sum; shape ``prediction.shape[:-1]``."""
    prediction, target = prediction.float(), target.float()
    distance = torch.zeros(prediction.shape[:-1], device=prediction.device)
    if "mse" in kind:
        distance = distance + (prediction - target).pow(2).mean(dim=-1)
    if "cosine" in kind:
        distance = distance + 1 - F.cosine_similarity(prediction, target, dim=-1)
    return distance


def contrastive_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the teacher's embeddings as keys: text ``i``'s positive is its own teacher embedding.

    ``mean_i -log softmax_j(cos(s_i, t_j) / temperature)[i]`` over the batch.
    """
    logits = F.normalize(student.float(), dim=-1) @ F.normalize(teacher.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the in-batch cosine-similarity matrices, over the off-diagonal pairs."""
    student, teacher = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    difference = (student @ student.T - teacher @ teacher.T).pow(2)  # (batch, batch)
    pairs = len(difference) * (len(difference) - 1)
    return (difference.sum() - difference.diagonal().sum()) / max(pairs, 1)


def order_loss(student: torch.Tensor, teacher: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """``mean_k 1 - cos(s_o - s_c, e_o - e_c)`` over the word-swapped copies ``c`` of texts ``o`` in the batch.

    The copies are the last ``len(originals)`` rows; ``originals[k]`` is the row copy ``k`` was made from. Matching the
    direction (not the size) of the teacher's change lets the student make the change as large as it likes.
    """
    copies = torch.arange(len(student) - len(originals), len(student), device=student.device)
    change, teacher_change = student[originals] - student[copies], teacher[originals] - teacher[copies]
    return hidden_distance(change, teacher_change, "cosine").mean()


def swap_detection_loss(logits: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of telling word-swapped copies (label 1) from their originals (label 0).

    ``logits`` holds one score per row of the batch; the copies are the last ``len(originals)`` rows and
    ``originals[k]`` is the row copy ``k`` was made from. Texts without a copy do not count, so both classes are
    equally frequent.
    """
    copies = torch.arange(len(logits) - len(originals), len(logits), device=logits.device)
    scores = torch.cat([logits[originals], logits[copies]]).float()
    labels = torch.cat([torch.zeros(len(originals)), torch.ones(len(originals))]).to(scores.device)
    return F.binary_cross_entropy_with_logits(scores, labels)


class DistillationModule(nn.Module):
    """The student plus, for the hidden-state objective, a training-only projection of its per-token outputs.

    ``forward(batch, targets)`` returns ``{"loss": ..., <term>: ...}``; only this module is trained and wrapped for
    data parallelism, the teacher stays outside.
    """

    def __init__(
        self, student: CMOWPreTrainedModel, objective: str, config: DistillationConfig, teacher_hidden_size: int
    ):
        super().__init__()
        self.student = student
        self.objective = objective
        self.config = config
        if objective == "hidden" and config.alpha_token:
            self.token_projection = nn.Linear(student.config.hidden_size, teacher_hidden_size)
        if objective == "hidden" and config.alpha_swap:
            self.swap_head = nn.Linear(student.config.sentence_embedding_size, 1)

    def forward(self, batch: dict, targets: dict) -> dict:
        config = self.config
        mask = batch["attention_mask"]
        if self.objective == "mlm":
            logits = self.student(batch["input_ids"], mask).logits  # (batch, seq, vocab)
            labels = batch["labels"]
            # A batch of short texts may have no masked token: average over the masked ones, zero if there are none.
            cross_entropy = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")
            terms = {
                "kd": kd_loss(logits, targets["logits"], mask, config.temperature),
                "mlm": cross_entropy / (labels != -100).sum().clamp_min(1),
            }
            loss = config.alpha_ce * terms["kd"] + config.alpha_mlm * terms["mlm"]
            return {"loss": loss, **terms}
        # The sentence embedding is the student's own pooler output: what users get from ``encode``.
        outputs = self.student(batch["input_ids"], mask, output_token_states=bool(config.alpha_token))
        embedding, teacher_embedding = outputs.pooler_output, targets["sentence"]
        terms = {}
        if config.alpha_token:
            token_distance = hidden_distance(
                self.token_projection(outputs.last_hidden_state), targets["token_states"], config.hidden_loss
            )  # (batch, seq)
            # The positions with a teacher state: all real tokens, or those aligned across tokenizers.
            weights = targets.get("token_mask", mask).to(token_distance.dtype)
            terms["token"] = (token_distance * weights).sum() / weights.sum().clamp_min(1)
        if config.alpha_sentence:
            terms["sentence"] = hidden_distance(embedding, teacher_embedding, config.hidden_loss).mean()
        if config.alpha_contrastive:
            terms["contrastive"] = contrastive_loss(embedding, teacher_embedding, config.contrastive_temperature)
        if config.alpha_relational:
            terms["relational"] = relational_loss(embedding, teacher_embedding)
        originals = batch.get("copy_of")  # absent when the batch has no word-swapped copies
        if config.alpha_order and originals is not None:
            terms["order"] = order_loss(embedding, teacher_embedding, originals)
        if config.alpha_swap and originals is not None:
            terms["swap"] = swap_detection_loss(self.swap_head(embedding).squeeze(-1), originals)
        loss = sum(getattr(config, f"alpha_{name}") * value for name, value in terms.items())
        return {"loss": loss, **terms}
