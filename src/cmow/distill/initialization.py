"""Teacher-derived initialisation: the student starts as a static embedding model built from the teacher.

The recipe is model2vec's, with corpus frequencies for the weights: every vocabulary token is run through the teacher
alone (``[CLS] t [SEP]``), its output states are mean-pooled, the vectors are centred and rotated by PCA, and each is
scaled by a SIF weight ``a / (a + p_t)`` with ``p_t`` the token's frequency in the distillation corpus (or, without
counts, Zipf's law over the vocabulary order). These vectors become the CBOW table, and the student's ``pooler`` is set
to the inverse rotation, so before any training the student's sentence embedding is the static model's: the centred,
weighted mean of its tokens' teacher vectors. The token matrices keep their identity-plus-noise initialisation (the
empty product), and the pooler's matrix columns start at zero, so the matrix part adds to the static model rather
than blurring it. A student with its own vocabulary (``cmow.distill.student_tokenizer``) is initialised the same way:
each of its tokens is run as the teacher's token of the same name, or else as its text, split by the teacher's
tokenizer.
"""

import itertools
import logging
import re
from collections.abc import Iterable

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..modeling_cmow import CMOWPreTrainedModel

logger = logging.getLogger(__name__)

WEIGHTINGS = ("sif", "zipf", "none")
_RESERVED_TOKEN = re.compile(r"^[\[<]unused\d+[\]>]$")  # BERT's [unused12], some vocabularies' <unused12>


def _single_token_template(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], int]:
    """The ids the tokenizer gives a one-token text (e.g. ``[CLS] t [SEP]``) and the position of ``t`` in them."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for position in range(len(with_special) - len(plain) + 1):
        if with_special[position : position + len(plain)] == plain:
            return with_special[:position] + [0] + with_special[position + len(plain) :], position
    raise ValueError("Could not find where the tokenizer puts a text between its special tokens.")


def _teacher_inputs(
    tokenizer: PreTrainedTokenizerBase, teacher_tokenizer: PreTrainedTokenizerBase | None, count: int
) -> list[list[int]]:
    """The teacher's input ids for each of the first ``count`` token ids of ``tokenizer``, with its special tokens.

    With the teacher's own tokenizer (``teacher_tokenizer`` ``None``) token ``t`` is the one-token text ``[CLS] t
    [SEP]``. A student token that is also in the teacher's vocabulary is run the same way; any other is run as its text
    (``##ing`` as ``ing``), which the teacher's tokenizer may split into several tokens.
    """
    template, position = _single_token_template(teacher_tokenizer or tokenizer)
    if teacher_tokenizer is None:
        return [template[:position] + [index] + template[position + 1 :] for index in range(count)]
    teacher_vocab = teacher_tokenizer.get_vocab()
    model = tokenizer.backend_tokenizer.model if tokenizer.is_fast else None
    prefix = getattr(model, "continuing_subword_prefix", None)  # WordPiece's "##"
    inputs = []
    for token in tokenizer.convert_ids_to_tokens(list(range(count))):
        if token in teacher_vocab:
            inputs.append(template[:position] + [teacher_vocab[token]] + template[position + 1 :])
            continue
        text = tokenizer.convert_tokens_to_string([token])
        text = text[len(prefix) :] if prefix and text.startswith(prefix) else text
        inputs.append(teacher_tokenizer(text, truncation=True, max_length=32)["input_ids"])
    return inputs


@torch.no_grad()
def teacher_token_vectors(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    batch_size: int = 1024,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> torch.Tensor:
    """``(vocab_size, hidden)``: each token run through the teacher alone (with its special tokens), mean-pooled.

    ``tokenizer`` is the student's; ``teacher_tokenizer`` the teacher's when it differs (see ``_teacher_inputs``).
    An MLM teacher is run without its head (its ``base_model``); rows past the tokenizer's vocabulary are zero.
    """
    encoder = teacher.base_model if hasattr(teacher, "base_model") else teacher
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    count = min(vocab_size, len(tokenizer))
    inputs = _teacher_inputs(tokenizer, teacher_tokenizer, count)
    pad = (teacher_tokenizer or tokenizer).pad_token_id or 0
    vectors = torch.zeros(vocab_size, teacher.config.hidden_size)
    order = sorted(range(count), key=lambda index: len(inputs[index]))  # similar lengths share a batch
    for start in range(0, count, batch_size):
        ids = order[start : start + batch_size]
        width = max(len(inputs[index]) for index in ids)
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for row, index in enumerate(ids):
            input_ids[row, : len(inputs[index])] = torch.tensor(inputs[index])
            mask[row, : len(inputs[index])] = 1
        outputs = encoder(input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        states = getattr(outputs, "last_hidden_state", None)
        states = states if states is not None else outputs.hidden_states[-1]  # (batch, width, hidden)
        mask = mask.to(device)[..., None].float()
        vectors[ids] = ((states.float() * mask).sum(dim=1) / mask.sum(dim=1)).cpu()
    encoder.train(was_training)
    return vectors


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], vocab_size: int) -> np.ndarray:
    """How often each token id occurs in ``texts`` (without special tokens): ``(vocab_size,)`` int64."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    chunk = []

    def add(batch: list[str]) -> None:
        ids = np.fromiter(
            (i for row in tokenizer(batch, add_special_tokens=False)["input_ids"] for i in row), dtype=np.int64
        )
        counts[:] += np.bincount(ids[ids < vocab_size], minlength=vocab_size)

    for text in texts:
        chunk.append(text)
        if len(chunk) == 4096:
            add(chunk)
            chunk = []
    if chunk:
        add(chunk)
    return counts


def excluded_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> torch.Tensor:
    """``(vocab_size,)`` bool: special tokens, reserved ``[unusedN]`` tokens and ids the tokenizer never produces."""
    excluded = torch.zeros(vocab_size, dtype=torch.bool)
    excluded[min(vocab_size, len(tokenizer)) :] = True
    excluded[[i for i in tokenizer.all_special_ids if i < vocab_size]] = True
    for token, index in tokenizer.get_vocab().items():
        if index < vocab_size and _RESERVED_TOKEN.match(token):
            excluded[index] = True
    return excluded


def token_weights(
    weighting: str, included: torch.Tensor, counts: np.ndarray | None = None, sif_coefficient: float = 1e-3
) -> torch.Tensor:
    """Per-token weights ``a / (a + p_t)`` (SIF) over the ``included`` ids; 0 elsewhere.

    ``"sif"`` takes ``p_t`` from ``counts`` (add-one smoothed), ``"zipf"`` from the rank of the token id among the
    included ids (model2vec's estimate, for vocabularies ordered by frequency), ``"none"`` weighs every token 1.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {', '.join(map(repr, WEIGHTINGS))}; got {weighting!r}.")
    weights = torch.zeros(len(included), dtype=torch.float64)
    if weighting == "none":
        weights[included] = 1.0
        return weights.float()
    if weighting == "sif":
        if counts is None:
            raise ValueError("SIF weights need token counts from the corpus; use weighting 'zipf' without them.")
        frequency = torch.as_tensor(counts, dtype=torch.float64)[included] + 1.0
    else:
        frequency = 1.0 / torch.arange(2, int(included.sum()) + 2, dtype=torch.float64)
    probability = frequency / frequency.sum()
    weights[included] = sif_coefficient / (sif_coefficient + probability)
    return weights.float()


def pca(vectors: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre ``(n, dim)`` vectors and rotate them onto their top principal axes.

    Returns:
        ``(projected (n, components), axes (components, dim), mean (dim,))`` with ``projected = (vectors - mean) @
        axes.T``.
    """
    mean = vectors.double().mean(dim=0)
    centred = vectors.double() - mean
    _, _, right = torch.linalg.svd(centred, full_matrices=False)  # rows: principal axes, by explained variance
    axes = right[:components]
    return (centred @ axes.T).float(), axes.float(), mean.float()


@torch.no_grad()
def static_embeddings(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    components: int,
    *,
    weighting: str = "sif",
    counts: np.ndarray | None = None,
    sif_coefficient: float = 1e-3,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A static embedding model of the teacher: ``(table (vocab_size, k), axes (k, hidden))``.

    Row ``t`` is the teacher vector of ``t`` (``teacher_token_vectors``), centred and rotated onto the top
    ``k = min(components, hidden, included tokens)`` principal axes of the included tokens, times its weight
    (``token_weights``); special and reserved tokens (``excluded_tokens``) get zero rows. ``tokenizer`` is the
    student's; pass the teacher's as ``teacher_tokenizer`` when it differs.
    """
    vectors = teacher_token_vectors(teacher, tokenizer, vocab_size, teacher_tokenizer=teacher_tokenizer)
    included = ~excluded_tokens(tokenizer, vocab_size)
    components = min(components, vectors.shape[1], int(included.sum()))
    projected, axes, _ = pca(vectors[included], components)
    weights = token_weights(weighting, included, counts, sif_coefficient)
    table = torch.zeros(vocab_size, components)
    table[included] = projected * weights[included, None]
    return table, axes


@torch.no_grad()
def init_from_teacher(
    student: CMOWPreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    weighting: str = "sif",
    counts: np.ndarray | None = None,
    sif_coefficient: float = 1e-3,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict:
    """Fill the student's CBOW table (and its pooler) so that its sentence embedding is the teacher's static model.

    The first ``k`` CBOW columns are ``static_embeddings`` with ``k = min(cbow_size, teacher hidden size)``, the
    rest zero; special and reserved tokens get zero rows, so ``[CLS]``/``[SEP]`` add nothing. When the student has a
    pooler to the teacher's size, its CBOW columns are set to the inverse rotation and everything else to zero.
    Matrix tables are left as they are.

    Args:
        student: A CMOW model with a CBOW part (``encoder`` "cbow" or "hybrid").
        teacher: The teacher (an encoder, a sentence-transformer or an MLM model).
        tokenizer: The student's tokenizer (by default the teacher's).
        teacher_tokenizer: The teacher's tokenizer when the student has its own vocabulary.
        weighting: ``"sif"`` (needs ``counts``), ``"zipf"`` or ``"none"``; see ``token_weights``.
        counts: Token counts of the distillation corpus (``token_counts``).
        sif_coefficient: ``a`` of the SIF weights.

    Returns:
        What was done: ``{"method", "weighting", "sif_coefficient", "pca_components"}``.
    """
    base = student.base_model
    config = base.config
    if not config.use_cbow:
        raise ValueError(
            "Teacher-derived initialisation fills the CBOW table: use encoder 'hybrid' or 'cbow', or init 'random'."
        )
    table, axes = static_embeddings(
        teacher,
        tokenizer,
        config.vocab_size,
        config.cbow_size,
        weighting=weighting,
        counts=counts,
        sif_coefficient=sif_coefficient,
        teacher_tokenizer=teacher_tokenizer,
    )
    components = table.shape[1]
    cbow = base.encoder.cbow_embeddings.weight
    cbow.zero_()
    cbow[:, :components] = table
    pooler = getattr(base, "pooler", None)
    if pooler is not None and pooler.dense.out_features == axes.shape[1]:
        pooler.dense.weight.zero_()
        pooler.dense.weight[:, :components] = axes.T
        pooler.dense.bias.zero_()
    elif pooler is not None:
        logger.warning("The student's pooler does not map to the teacher's size; it keeps its random initialisation.")
    logger.info("Initialised the CBOW table from the teacher: PCA to %d dims, %s weights", components, weighting)
    return {
        "method": "static",
        "weighting": weighting,
        "sif_coefficient": sif_coefficient if weighting != "none" else None,
        "pca_components": components,
    }


def initialize_student(
    student: CMOWPreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    *,
    weighting: str = "sif",
    sif_coefficient: float = 1e-3,
    count_texts: int = 200_000,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict:
    """``init_from_teacher`` with SIF weights from the token counts of the first ``count_texts`` of ``texts``.

    ``tokenizer`` is the student's; ``teacher_tokenizer`` the teacher's when the student has its own vocabulary.
    """
    counts = None
    if weighting == "sif":
        counts = token_counts(tokenizer, itertools.islice(texts, count_texts), student.config.vocab_size)
        logger.info("Counted %d corpus tokens for the SIF weights", int(counts.sum()))
    return init_from_teacher(
        student,
        teacher,
        tokenizer,
        weighting=weighting,
        counts=counts,
        sif_coefficient=sif_coefficient,
        teacher_tokenizer=teacher_tokenizer,
    )
