"""A student vocabulary that differs from the teacher's, and the alignment of the two tokenizations.

Almost all of a CMOW model is its token tables, so a smaller vocabulary is the lever on its size (Zhao et al.,
"Extremely Small BERT Models from Mixed-Vocabulary Training", EACL 2021). ``train_student_tokenizer`` trains a
vocabulary of the same kind as the teacher's (WordPiece for BERT, BPE or Unigram for others) with the teacher's
normalisation, pre-tokenisation and special tokens, so a text is split the same way before the subword model sees it.

Sentence-level objectives need nothing else: teacher and student each tokenize the text their own way. The per-token
term compares positions, which ``align_token_states`` maps by character offsets: each student token gets the mean of
the teacher states whose characters overlap its own.
"""

import itertools
import logging
from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MIN_VOCAB_SIZE = 100


def train_student_tokenizer(
    teacher_tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], vocab_size: int, max_texts: int = 200_000
) -> PreTrainedTokenizerBase:
    """A tokenizer like the teacher's, with a vocabulary of ``vocab_size`` tokens trained on ``texts``.

    Args:
        teacher_tokenizer: A fast (``tokenizers``-backed) tokenizer; its pipeline and special tokens are kept.
        texts: Training texts (e.g. the distillation corpus); the first ``max_texts`` are used.
        vocab_size: Tokens in the new vocabulary, special tokens included.
        max_texts: How many texts to train on.

    Raises:
        ValueError: for a slow tokenizer or a vocabulary smaller than ``MIN_VOCAB_SIZE``.
    """
    if not getattr(teacher_tokenizer, "is_fast", False):
        raise ValueError(
            f"Training a student vocabulary needs a fast (tokenizers-backed) teacher tokenizer; "
            f"{type(teacher_tokenizer).__name__} is not one. Pass --student-tokenizer with a ready tokenizer instead."
        )
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"The student vocabulary must have at least {MIN_VOCAB_SIZE} tokens; got {vocab_size}.")
    tokenizer = teacher_tokenizer.train_new_from_iterator(itertools.islice(texts, max_texts), vocab_size=vocab_size)
    if len(tokenizer) != vocab_size:
        logger.warning("The trained vocabulary has %d tokens, not %d (too little text?)", len(tokenizer), vocab_size)
    logger.info("Trained a %d-token student vocabulary on up to %d texts", len(tokenizer), max_texts)
    return tokenizer


def same_vocabulary(first: PreTrainedTokenizerBase, second: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers map the same tokens to the same ids (then a student needs no alignment)."""
    return first is second or first.get_vocab() == second.get_vocab()


def align_token_states(
    states: torch.Tensor,
    teacher_offsets: torch.Tensor,
    teacher_mask: torch.Tensor,
    student_offsets: torch.Tensor,
    student_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's per-token states at the student's positions, by character offsets.

    A student token covering characters ``[s, e)`` gets the mean of the states of the teacher tokens ``[s', e')`` that
    overlap it (``s' < e`` and ``e' > s``). Tokens without characters (special tokens such as ``[CLS]``, ``[SEP]``) are
    matched by their rank among such tokens: the student's first special token gets the teacher's first, and so on.

    Args:
        states: ``(batch, teacher_seq, hidden)`` teacher states.
        teacher_offsets: ``(batch, teacher_seq, 2)`` character ``(start, end)`` of each teacher token.
        teacher_mask: ``(batch, teacher_seq)``, 1 at real tokens.
        student_offsets: ``(batch, student_seq, 2)``.
        student_mask: ``(batch, student_seq)``.

    Returns:
        ``(aligned (batch, student_seq, hidden), matched (batch, student_seq) bool)``; a student position with no
        teacher counterpart (padding, text the teacher's truncation cut off) is zero and not ``matched``.
    """
    t_start, t_end = teacher_offsets[..., 0][:, None, :], teacher_offsets[..., 1][:, None, :]  # (batch, 1, t_seq)
    s_start, s_end = student_offsets[..., 0][:, :, None], student_offsets[..., 1][:, :, None]  # (batch, s_seq, 1)
    t_real, s_real = teacher_mask.bool(), student_mask.bool()
    t_special = t_real & (teacher_offsets[..., 0] == teacher_offsets[..., 1])  # (batch, t_seq)
    s_special = s_real & (student_offsets[..., 0] == student_offsets[..., 1])  # (batch, s_seq)
    overlap = (s_start < t_end) & (s_end > t_start)  # (batch, s_seq, t_seq)
    overlap &= (s_real & ~s_special)[:, :, None] & (t_real & ~t_special)[:, None, :]
    t_rank = torch.where(t_special, t_special.cumsum(dim=1), 0)  # 1, 2, ... at special tokens; 0 elsewhere
    s_rank = torch.where(s_special, s_special.cumsum(dim=1), -1)
    weights = (overlap | (s_rank[:, :, None] == t_rank[:, None, :])).to(states.dtype)  # (batch, s_seq, t_seq)
    counts = weights.sum(dim=2)  # (batch, s_seq)
    aligned = weights @ states / counts.clamp_min(1)[..., None]  # (batch, s_seq, hidden)
    return aligned, counts > 0


def aligned_targets(targets: dict, teacher_batch: dict, student_batch: dict) -> dict:
    """``targets`` with the teacher's per-token states moved to the student's positions (``align_token_states``).

    Both batches must hold the tokenizers' ``offset_mapping``; ``token_mask`` marks the student positions that have a
    teacher counterpart, the ones the per-token term averages over.
    """
    aligned, matched = align_token_states(
        targets["token_states"],
        teacher_batch["offset_mapping"],
        teacher_batch["attention_mask"],
        student_batch["offset_mapping"],
        student_batch["attention_mask"],
    )
    return {**targets, "token_states": aligned, "token_mask": matched}
