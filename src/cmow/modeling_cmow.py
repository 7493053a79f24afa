"""CMOW (Continual Multiplication of Words) encoders and heads.

A text is the ordered product of its tokens' d x d matrices (CMOW), optionally concatenated with the sum or mean of
its tokens' vectors (CBOW); the bidirectional variant adds a second matrix table multiplied in reverse order.
Optionally hashed token n-grams (``config.ngram_orders``) add their vectors to the CBOW bag.

Numerics: a product of many matrices overflows or vanishes. Every partial product is rescaled to the Frobenius norm
of the identity, ``sqrt(d)``. Rescaling commutes with multiplication, so whatever the order of the reduction the
result is exactly ``P * sqrt(d) / ||P||_F`` for the true product ``P``: the direction of the product, with no
intermediate ever larger than ``max ||E||^2``. Products always run in float32, also under autocast or in a bf16/fp16
model, and are cast back to the model's dtype at the end.

Speed: no Python loop runs over positions. The pooled product is a pairwise (log-depth) reduction; per-token prefix
products are a Hillis-Steele parallel scan, also log-depth. For inference on the CPU, the pooled features come from
the compiled kernel ``cmow._kernel`` when the cmow package was installed with it and has been imported (see
``compiled_pooled_features``); it reduces the products as a tree too, hashes n-grams into the same buckets as
``ngram_bucket_ids`` in the pass that sums the token vectors, and agrees with the torch path to 1e-5.

This file is shipped as remote code next to saved checkpoints: it imports only torch, transformers, its config and
``encode.py`` (``model.encode``).
"""

import math
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
)
from transformers.utils import logging

from .configuration_cmow import CMOWConfig
from .encode import SentenceEmbeddingMixin

logger = logging.get_logger(__name__)


@dataclass
class CMOWModelOutput(BaseModelOutputWithPooling):
    """``BaseModelOutputWithPooling`` plus the pooled features the sentence embedding is computed from.

    Attributes:
        last_hidden_state: ``(batch, seq, hidden_size)`` per-token prefix (and suffix) representations, or ``None``
            unless asked for (``output_hidden_states=True``, ``config.output_hidden_states`` or
            ``output_token_states=True``): they cost a log-depth scan over all positions, about 10x the pooled
            product. With ``last_hidden_state`` ``None``, ``output[0]`` (the first field set, what pipelines read) is
            ``pooler_output``.
        pooler_output: ``(batch, sentence_embedding_size)`` the sentence embedding: the ``pooler`` projection of the
            pooled features when the model has one (``config.embedding_size``), else the pooled features.
        pooled_features: ``(batch, hidden_size)`` ``[cbow; cmow_fw; cmow_bw]`` of the whole text, what the
            classification heads read.
        hidden_states: ``(last_hidden_state,)`` when ``output_hidden_states``: CMOW has one "layer".
    """

    pooled_features: torch.FloatTensor | None = None


_NORM_EPS = 1e-20
PRODUCT_CHUNK_MATRICES = 8192  # token matrices reduced at once (13 MB at d=20): stays in the last-level cache
_LEVELS_PER_RESCALE = 2  # products of 4 rescaled matrices stay below max(||E||, sqrt d)^4: far from fp32 overflow


def normalize_product(matrices: torch.Tensor) -> torch.Tensor:
    """Rescale each ``(d, d)`` matrix to the Frobenius norm of the identity, ``sqrt(d)``."""
    d = matrices.shape[-1]
    norm = torch.linalg.vector_norm(matrices.flatten(-2), dim=-1).clamp_min(_NORM_EPS)  # (...)
    return matrices * (math.sqrt(d) / norm)[..., None, None]


def _normalize_fresh(matrices: torch.Tensor) -> torch.Tensor:
    """``normalize_product`` of a tensor nobody else holds: in place when autograd does not need it (inference)."""
    if torch.is_grad_enabled() and matrices.requires_grad:
        return normalize_product(matrices)
    norm = torch.linalg.vector_norm(matrices.flatten(-2), dim=-1).clamp_min_(_NORM_EPS)  # (...)
    return matrices.mul_(norm.reciprocal_().mul_(math.sqrt(matrices.shape[-1]))[..., None, None])


def tree_order(length: int) -> list[int]:
    """Storage order of ``length`` positions in which every level of the tree reduction pairs the two halves.

    With positions stored in this order, level by level the left factors of all pairs are the first ``n // 2``
    entries, the right factors the next ``n // 2``, and an odd last position is stored last; the pair products come
    out in the same order again for the next level. So each level is one ``bmm`` of two contiguous blocks, with no
    copies. For powers of two this is the bit-reversal permutation.
    """
    if length == 1:
        return [0]
    half = tree_order(length // 2)
    return [2 * p for p in half] + [2 * p + 1 for p in half] + ([length - 1] if length % 2 else [])


def tree_reduce(matrices: torch.Tensor) -> torch.Tensor:
    """Normalised product of ``(n, batch, d, d)`` matrices stored in ``tree_order(n)``, in ``ceil(log2 n)`` levels.

    Each level multiplies the first half by the second half in one ``bmm``. An odd last entry (the rightmost factor
    of that level) is set aside and multiplied in at the end, so no level copies its input.
    """
    n, batch, d, _ = matrices.shape
    leftovers = []
    level = 0
    while n > 1:
        half = n // 2
        if n % 2:
            leftovers.append(matrices[-1])  # (batch, d, d): the rightmost factor of this level
        left = matrices[:half].reshape(half * batch, d, d)
        right = matrices[half : 2 * half].reshape(half * batch, d, d)
        matrices = torch.bmm(left, right).view(half, batch, d, d)
        n, level = half, level + 1
        if level % _LEVELS_PER_RESCALE == 0 and n > 1:
            matrices = _normalize_fresh(matrices)
    product = matrices[0]  # (batch, d, d)
    for leftover in reversed(leftovers):
        product = _normalize_fresh(torch.bmm(product, leftover))
    return normalize_product(product)


def tree_product(matrices: torch.Tensor) -> torch.Tensor:
    """Normalised ordered product ``M_1 M_2 ... M_n`` by pairwise reduction in ``ceil(log2 n)`` steps.

    Args:
        matrices: ``(batch, n, d, d)`` with ``n >= 1``.

    Returns:
        ``(batch, d, d)``.
    """
    order = torch.tensor(tree_order(matrices.shape[1]), device=matrices.device)
    return tree_reduce(matrices.transpose(0, 1)[order])  # (n, batch, d, d) in tree order


# The compiled kernel is looked up among the imported modules, never imported here: this file must load as remote code
# with only torch and transformers installed. `import cmow` imports it when it was built (see setup.py).
KERNEL_MODULE = "cmow._kernel"
KERNEL_API = 2  # the version of the kernel's ``pooled`` arguments this file calls (``api`` in _kernel.cpp)
_KERNEL_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def compiled_pooled_features(
    encoder: "CMOWEncoder", input_ids: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Pooled ``[cbow; cmow_fw - I; cmow_bw - I]`` features by the compiled kernel, or ``None`` where it cannot run.

    It applies when ``cmow._kernel`` is loaded, autograd is off (``torch.no_grad`` or ``torch.inference_mode``), the
    inputs are on the CPU, ``matrix_size <= 32`` and the tables (the n-gram table too) are all float32, all float16
    or all bfloat16; otherwise the caller runs the torch path (``CMOWEncoder.forward``), which this must equal (to
    1e-5; tests/test_kernel.py). One call per batch does the lookups, the masking, the products with their
    rescaling, the CBOW bag with the hashed n-grams (the kernel hashes them as ``ngram_bucket_ids`` does) and the
    identity offset. A ``mask`` of ``None`` encodes every position.

    Returns:
        ``(batch, hidden_size)`` float32, before dropout.
    """
    kernel = sys.modules.get(KERNEL_MODULE)
    # An older kernel (of an older installed cmow, with newer remote code) lacks the n-gram arguments: torch runs.
    if kernel is None or torch.is_grad_enabled() or not input_ids.is_cpu or getattr(kernel, "api", 1) < KERNEL_API:
        return None
    # `weights` stays referenced until the kernel returns: it reads them by pointer, without the GIL, and another
    # thread may replace the module's parameters (model.half(), load_state_dict(assign=True)) meanwhile.
    weights, tables = _kernel_tables(encoder, kernel)
    if tables is None:
        return None
    hidden, vocab, d, forward, backward, code, cbow, cbow_size, ngrams, buckets, orders = tables
    if input_ids.dtype != torch.int64 or not input_ids.is_contiguous():  # a conversion costs more than the check
        input_ids = input_ids.to(torch.int64).contiguous()
    mask = None if mask is None else mask.to(torch.bool).contiguous()
    batch, seq = input_ids.shape
    out = torch.empty(batch, hidden)  # (batch, hidden)
    kernel.pooled(
        out.data_ptr(),
        hidden,
        input_ids.data_ptr(),
        0 if mask is None else mask.data_ptr(),
        batch,
        seq,
        vocab,
        d,
        forward,
        backward,
        code,
        cbow,
        cbow_size,
        code,
        encoder.cbow_mean,
        ngrams,
        code,
        buckets,
        orders,
        torch.get_num_threads(),
    )
    del weights
    return out


def _registered_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight``, from the parameter registry where it is there (a parametrized weight is not)."""
    weight = module._parameters.get("weight")
    return weight if weight is not None else module.weight


def _kernel_tables(encoder: "CMOWEncoder", kernel) -> tuple:
    """``(weights, arguments)``: the four tables (``None`` where absent) and the kernel's arguments that describe
    them, or ``None`` as arguments where the kernel cannot run on them.

    Arguments: ``(hidden, vocab, d, forward, backward, dtype code, cbow, cbow_size, ngrams, ngram_buckets,
    ngram_orders)``, pointers 0 for absent tables. Checking the tables costs ~8 us, as much as the kernel's work on a
    short text, so the result is kept on the encoder for as long as its weights have the same data pointers, shapes,
    strides, dtypes and devices (the allocator may give a converted table its old address) and the n-gram table the
    same orders and bucket count. The weights are read from the modules' registries: ``nn.Module`` attribute lookups
    cost ~0.5 us each; a parametrized weight is not in the registry and is looked up.
    """
    modules = encoder._modules
    weights = tuple(
        None if (module := modules.get(name)) is None else _registered_weight(module)
        for name in ("cmow_embeddings", "cmow_bw_embeddings", "cbow_embeddings", "ngram_embeddings")
    )
    ngram = modules.get("ngram_embeddings")
    # (buckets, orders) of the n-gram hash: module attributes, not weights, so the key holds them too
    hashing = (0, ()) if ngram is None else (ngram.padding_idx, tuple(ngram.orders))
    key = (hashing, *(None if w is None else (w.data_ptr(), w.shape, w.stride(), w.dtype, w.device) for w in weights))
    cached = encoder.__dict__.get("_kernel_tables_cache")
    if cached is not None and cached[0] == key:
        return weights, cached[1]
    fw, bw, cbow, ngrams = weights
    present = [table for table in weights if table is not None]
    token_tables = [table for table in (fw, bw, cbow) if table is not None]
    d = modules["cmow_embeddings"].matrix_size if fw is not None else 1
    cbow_size = cbow.shape[1] if cbow is not None else 0
    tables = None
    if (
        present[0].dtype in _KERNEL_DTYPES
        and d <= kernel.max_matrix_size
        and all(t.dtype == present[0].dtype and t.is_cpu and t.is_contiguous() for t in present)
        # the kernel reads n-gram rows [0, buckets) of cbow_size; a table that lacks them fails on the torch path
        and (ngrams is None or (ngrams.dim() == 2 and ngrams.shape[0] > hashing[0] and ngrams.shape[1] == cbow_size))
    ):
        assert fw is None or fw.shape[1] == d * d == (bw if bw is not None else fw).shape[1], "tables: (vocab, d*d)"
        tables = (
            cbow_size + (len(token_tables) - (cbow is not None)) * d * d,
            min(table.shape[0] for table in token_tables),  # ids are checked against the rows the kernel may read
            d,
            0 if fw is None else fw.data_ptr(),
            0 if bw is None else bw.data_ptr(),
            _KERNEL_DTYPES[present[0].dtype],
            0 if cbow is None else cbow.data_ptr(),
            cbow_size,
            0 if ngrams is None else ngrams.data_ptr(),
            *hashing,
        )
    encoder._kernel_tables_cache = (key, tables)
    return weights, tables


def prefix_products(matrices: torch.Tensor) -> torch.Tensor:
    """Normalised prefix products ``M_1 ... M_i`` for every ``i`` by a Hillis-Steele scan in ``ceil(log2 n)`` steps.

    After the step with offset ``k`` position ``i`` holds the product of positions ``(i - 2k, i]``.

    Args:
        matrices: ``(batch, n, d, d)``.

    Returns:
        ``(batch, n, d, d)``.
    """
    n = matrices.shape[1]
    offset = 1
    while offset < n:
        combined = normalize_product(matrices[:, :-offset] @ matrices[:, offset:])  # (batch, n - offset, d, d)
        matrices = torch.cat([matrices[:, :offset], combined], dim=1)
        offset *= 2
    return normalize_product(matrices)


class MatrixEmbedding(nn.Embedding):
    """A table of ``d x d`` token matrices stored flattened; padding is the identity."""

    def __init__(self, config: CMOWConfig):
        super().__init__(config.vocab_size, config.matrix_features, padding_idx=config.pad_token_id)
        self.matrix_size = config.matrix_size

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token matrices in float32, identity where ``mask`` is False: ``(batch, seq, d, d)``."""
        d = self.matrix_size
        matrices = super().forward(input_ids).float().view(*input_ids.shape, d, d)
        if not bool(mask.all()):
            # Writes only the padded positions (few, in length-sorted batches); the lookup's output is ours to change.
            matrices[~mask] = torch.eye(d, dtype=matrices.dtype, device=matrices.device)
        return matrices


def matrices_of_no_texts(table: MatrixEmbedding) -> torch.Tensor:
    """The pooled product features of a batch of zero texts: ``(0, d * d)``."""
    return torch.zeros(0, table.matrix_size**2, device=table.weight.device)


# The n-gram hash is exact int64 arithmetic on values below 2**31 (every product stays below 2**62), so it is the
# same on every platform, device and process, unlike Python's salted ``hash``. The compiled kernel computes it too
# (``ngram_rows`` in _kernel.cpp, with these constants): a change here must be made there (tests/test_kernel.py).
NGRAM_HASH_MODULUS = 2**31 - 1  # a Mersenne prime
NGRAM_HASH_MULTIPLIER = 1540483477  # MurmurHash2's m, below the modulus
NGRAM_HASH_MIX = 668265263  # xxHash32's fourth prime, below the modulus


def ngram_bucket_ids(
    input_ids: torch.Tensor, mask: torch.Tensor, orders: tuple[int, ...], buckets: int
) -> torch.Tensor:
    """Hash buckets of the n-grams of each order that end at each position.

    With ``P = 2**31 - 1``, ``A = NGRAM_HASH_MULTIPLIER`` and ``B = NGRAM_HASH_MIX``, the n-gram ``t_1 ... t_n``
    is hashed newest token first (so one pass serves every order): ``h = 0``; for ``t = t_n, ..., t_1``
    ``h = ((h xor (t + 1)) * A) mod P`` (multiply-xor); then ``h = h xor n``, ``h = (h xor (h >> 16)) * B mod P``,
    ``h = h xor (h >> 13)``, and the bucket is ``h mod buckets``. An n-gram counts only if all its positions are in
    ``mask``, so n-grams never cross padding or a masked-out side of a pair; positions without one get ``buckets``,
    the table's padding row.

    Args:
        input_ids: ``(batch, seq)`` token ids.
        mask: ``(batch, seq)`` bool, True where a token is read.
        orders: The orders ``n``, increasing.
        buckets: Number of hash buckets.

    Returns:
        ``(batch, len(orders), seq)`` int64 bucket ids in ``[0, buckets]``.
    """
    seq, longest = input_ids.shape[1], max(orders)
    ids = F.pad(input_ids.long(), (longest - 1, 0))  # (batch, longest - 1 + seq): room for the oldest tokens
    present = F.pad(mask.to(torch.uint8), (longest - 1, 0)).bool()
    hashes, valid, out = torch.zeros_like(input_ids, dtype=torch.long), mask, []
    for back in range(longest):  # the token ``back`` positions before the n-gram's end
        start = longest - 1 - back
        hashes = (hashes ^ (ids[:, start : start + seq] + 1)) * NGRAM_HASH_MULTIPLIER % NGRAM_HASH_MODULUS
        valid = valid & present[:, start : start + seq]
        if back + 1 in orders:
            final = hashes ^ (back + 1)
            final = (final ^ (final >> 16)) * NGRAM_HASH_MIX % NGRAM_HASH_MODULUS
            out.append(((final ^ (final >> 13)) % buckets).masked_fill(~valid, buckets))
    return torch.stack(out, dim=1)


class NgramEmbedding(nn.Embedding):
    """Vectors of hashed token n-grams (``config.ngram_orders``): ``ngram_buckets`` rows plus a zero padding row.

    Positions without an n-gram of some order look up the padding row, which is weighted 0 in sums (its gradient is
    zero, so it stays zero).
    """

    def __init__(self, config: CMOWConfig):
        super().__init__(config.ngram_buckets + 1, config.cbow_size, padding_idx=config.ngram_buckets)
        self.orders = tuple(config.ngram_orders)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, token_states: bool) -> torch.Tensor:
        """Sum of the vectors of the n-grams in each text, ``(batch, cbow)``; with ``token_states`` the sum of those
        ending at each position, ``(batch, seq, cbow)``."""
        ids = ngram_bucket_ids(input_ids, mask, self.orders, self.padding_idx)  # (batch, orders, seq)
        weights = (ids != self.padding_idx).to(self.weight.dtype)
        if not token_states:
            # Weights rather than padding_idx: the same sum, and about twice as fast on CPU.
            return F.embedding_bag(
                ids.flatten(1), self.weight, mode="sum", per_sample_weights=weights.flatten(1), sparse=self.sparse
            )
        vectors = F.embedding(ids, self.weight, padding_idx=self.padding_idx, sparse=self.sparse)
        return (vectors * weights[..., None]).sum(dim=1)  # (batch, seq, cbow)


class CMOWEncoder(nn.Module):
    """Token tables and the products and sums over them.

    Per-token outputs are ``[cbow prefix; forward prefix product; backward suffix product]`` at each position; the
    pooled output is the same over the whole text. The backward table is multiplied in reverse order, so position
    ``i`` holds ``E'_n ... E'_i`` and the pooled output ``E'_n ... E'_1``. Hashed n-grams (if any) join the CBOW part:
    the pooled output sums all of a text's n-grams with its token vectors, position ``i`` those that end by ``i``.

    Matrix features are the rescaled product minus the identity (the product of an empty text), flattened: like the
    CBOW part they are zero for an empty text. A constant offset changes nothing a linear layer learns, but without
    it every text shares a large identity component that swamps cosine similarities of the embeddings.
    """

    def __init__(self, config: CMOWConfig):
        super().__init__()
        self.config = config
        self.cbow_embeddings = (
            nn.Embedding(config.vocab_size, config.cbow_size, padding_idx=config.pad_token_id)
            if config.use_cbow
            else None
        )
        self.ngram_embeddings = NgramEmbedding(config) if config.ngram_orders else None
        self.cmow_embeddings = MatrixEmbedding(config) if config.use_cmow else None
        self.cmow_bw_embeddings = MatrixEmbedding(config) if config.use_cmow and config.bidirectional else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.cbow_mean = config.use_cbow and config.cbow_pooling == "mean"  # read once: config lookups are slow

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None, token_states: bool) -> tuple:
        """Encode ``input_ids`` where ``mask`` is True (everywhere if ``mask`` is ``None``).

        Returns:
            ``(token_states, pooled)``: ``(batch, seq, hidden)`` or ``None``, and ``(batch, hidden)``, in float32.
        """
        if not token_states and (pooled := compiled_pooled_features(self, input_ids, mask)) is not None:
            return None, self.dropout(pooled) if self.training else pooled  # no module call for an identity
        if mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        batch, seq = input_ids.shape
        tokens, pooled = [], []
        # Products stay in float32 also under autocast: bf16 has too few mantissa bits for long products.
        with torch.autocast(device_type=input_ids.device.type, enabled=False):
            if self.cbow_embeddings is not None and token_states:
                vectors = self.cbow_embeddings(input_ids).float() * mask[..., None]  # (batch, seq, cbow)
                if self.ngram_embeddings is not None:
                    vectors = vectors + self.ngram_embeddings(input_ids, mask, token_states=True).float()
                sums = vectors.cumsum(dim=1)
                if self.cbow_mean:
                    sums = sums / mask.cumsum(dim=1).clamp_min(1)[..., None]
                tokens.append(sums)
                pooled.append(sums[:, -1])
            elif self.cbow_embeddings is not None:
                # Fused lookup and sum: the (batch, seq, cbow) vectors are never materialised.
                table = self.cbow_embeddings
                weights = mask.to(table.weight.dtype)
                sums = F.embedding_bag(
                    input_ids, table.weight, mode="sum", per_sample_weights=weights, sparse=table.sparse
                )
                if self.ngram_embeddings is not None:
                    sums = sums + self.ngram_embeddings(input_ids, mask, token_states=False)  # (batch, cbow)
                if self.cbow_mean:
                    sums = sums.float() / mask.sum(dim=1).clamp_min(1)[:, None]
                pooled.append(sums.float())  # (batch, cbow)
            for table, reverse in ((self.cmow_embeddings, False), (self.cmow_bw_embeddings, True)):
                if table is None:
                    continue
                if token_states:
                    ids, table_mask = (input_ids.flip(1), mask.flip(1)) if reverse else (input_ids, mask)
                    prefixes = prefix_products(table(ids, table_mask))  # (batch, seq, d, d)
                    pooled.append(prefixes[:, -1].flatten(1))
                    prefixes = prefixes.flip(1) if reverse else prefixes
                    tokens.append(prefixes.flatten(2))
                else:
                    # Look the matrices up directly in the reduction's layout and order: no copies later. Chunks of
                    # rows keep each reduction's working set in cache, so large batches stay as fast per text.
                    order = torch.tensor(tree_order(seq), device=input_ids.device)
                    order = seq - 1 - order if reverse else order
                    ids, table_mask = input_ids[:, order].t(), mask[:, order].t()  # (seq, batch)
                    rows = max(1, PRODUCT_CHUNK_MATRICES // seq)
                    products = [
                        tree_reduce(table(ids[:, start : start + rows], table_mask[:, start : start + rows]))
                        for start in range(0, batch, rows)
                    ]  # (rows, d, d) each
                    # (batch, d * d); a batch of no texts gives no rows, as the per-token path does
                    pooled.append(torch.cat(products).flatten(1) if products else matrices_of_no_texts(table))
        token_output = torch.cat(tokens, dim=-1) if token_states else None
        pooled = torch.cat(pooled, dim=-1)
        if self.cmow_embeddings is not None:
            offset = self._identity_offset(pooled.device)  # (hidden,)
            pooled = pooled - offset
            token_output = None if token_output is None else token_output - offset
        return None if token_output is None else self.dropout(token_output), self.dropout(pooled)

    def _identity_offset(self, device: torch.device) -> torch.Tensor:
        """``[0 (cbow); I (cmow_fw); I (cmow_bw)]`` flattened: subtracted so an empty text encodes to zero."""
        config = self.config
        eye = torch.eye(config.matrix_size, device=device).flatten()
        parts = [torch.zeros(config.cbow_size, device=device)] if config.use_cbow else []
        parts += [eye] * (2 if config.bidirectional else 1)
        return torch.cat(parts)


class CMOWPooler(nn.Module):
    """Pooled features to the sentence embedding: one linear layer (trained to the teacher's embedding space)."""

    def __init__(self, config: CMOWConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense(pooled)


def _resize_rows(table: nn.Embedding, rows: int, new_row: torch.Tensor) -> None:
    """Give ``table`` ``rows`` rows: the old rows that fit, then copies of ``new_row``."""
    old = table.weight.data
    weight = new_row.to(old).expand(rows, -1).clone()
    keep = min(rows, len(old))
    weight[:keep] = old[:keep]
    table.weight = nn.Parameter(weight, requires_grad=table.weight.requires_grad)
    table.num_embeddings = rows


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of each row: ``(q (rows, cols) int8, scale (rows, 1) float32)``.

    ``q * scale`` restores ``weight`` with an error of at most ``scale / 2`` per entry, where ``scale`` is the row's
    largest magnitude over 127 (1 for an all-zero row).
    """
    weight = weight.float()
    scale = weight.abs().amax(dim=1, keepdim=True) / 127  # (rows, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / scale).clamp(-127, 127).to(torch.int8), scale


class CMOWPreTrainedModel(SentenceEmbeddingMixin, PreTrainedModel):
    """Base of the CMOW models: weight initialisation, input checks, the standard transformers methods, and
    ``model.encode`` (from ``SentenceEmbeddingMixin``)."""

    config: CMOWConfig
    config_class = CMOWConfig
    base_model_prefix = "cmow"
    main_input_name = "input_ids"
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = False
    _no_split_modules = []

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Token matrices: identity + N(0, initializer_range); padding rows: identity matrix, zero vector.

        N-gram vectors start at zero, so adding n-grams to a trained model starts from the same function.
        """
        if isinstance(module, NgramEmbedding):
            init.zeros_(module.weight)
        elif isinstance(module, MatrixEmbedding):
            if getattr(module.weight, "_is_hf_initialized", False):
                return
            d = module.matrix_size
            eye = torch.eye(d, dtype=module.weight.dtype, device=module.weight.device).flatten()
            noise = torch.randn_like(module.weight) * self.config.initializer_range
            if module.padding_idx is not None:
                noise[module.padding_idx] = 0.0
            init.copy_(module.weight, noise + eye)
        else:
            super()._init_weights(module)

    def _stored_rows(self) -> list[tuple[str, nn.Module, torch.Tensor | float]]:
        """What ``config.weight_storage`` applies to: ``(name, module, offset)`` for each token table and the pooler.

        Rows are stored relative to ``offset``: the identity for token matrices (whose entries are near it, so int8
        steps then resolve the part that was learnt), zero for the rest.
        """
        rows = []
        for name, module in self.named_modules():
            if isinstance(module, MatrixEmbedding):
                eye = torch.eye(module.matrix_size, device=module.weight.device).flatten()
                rows.append((name, module, eye))
            elif isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and name.endswith("pooler.dense")):
                rows.append((name, module, 0.0))
        return rows

    def post_init(self):
        super().post_init()
        if self.config.weight_storage == "int8":  # the checkpoint holds a scale per row; from_pretrained applies it
            for _, module, _ in self._stored_rows():
                scale = torch.ones(module.weight.shape[0], 1, device=module.weight.device)
                module.register_buffer("weight_scale", scale)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``; int8 weights (``config.weight_storage``) come back as float32."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading_info) on request
        model._dequantize_stored_rows()
        return loaded

    @torch.no_grad()
    def _dequantize_stored_rows(self) -> None:
        """Turn int8 rows loaded into float weights (transformers casts them on load) and their scales into weights."""
        if self.config.weight_storage != "int8":
            return
        for _, module, offset in self._stored_rows():
            scale = module._buffers.pop("weight_scale", None)  # (rows, 1)
            if scale is not None:
                module.weight.copy_(module.weight.float() * scale.float() + offset)
        self.config.weight_storage = "float"

    def save_pretrained(self, save_directory, *args, weight_storage: str | None = None, state_dict=None, **kwargs):
        """``PreTrainedModel.save_pretrained``, storing the weights as ``weight_storage`` (default: the config's).

        ``weight_storage="int8"`` writes each token table and the pooler as int8 rows with float32 scales
        (``quantize_rows``) and records it in the saved config; the model itself is unchanged.
        """
        storage = weight_storage or self.config.weight_storage
        if storage not in ("float", "int8"):
            raise ValueError(f"`weight_storage` must be 'float' or 'int8'; got {storage!r}.")
        if storage == "int8":
            state_dict = dict(self.state_dict() if state_dict is None else state_dict)
            for name, _, offset in self._stored_rows():
                if f"{name}.weight" in state_dict:
                    weight = state_dict[f"{name}.weight"].detach()
                    state_dict[f"{name}.weight"], state_dict[f"{name}.weight_scale"] = quantize_rows(weight - offset)
        previous, self.config.weight_storage = self.config.weight_storage, storage
        try:
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        finally:
            self.config.weight_storage = previous

    def _check_standard_arguments(self, inputs_embeds: torch.Tensor | None, output_attentions: bool | None) -> None:
        """Clear errors for the standard transformers arguments that have no meaning for CMOW."""
        if inputs_embeds is not None:
            raise ValueError(
                "CMOW models take `input_ids`, not `inputs_embeds`: a token is a matrix looked up by its id, and "
                "there is no embedding layer to bypass. Pass the token ids."
            )
        if output_attentions or (output_attentions is None and self.config.output_attentions):
            raise ValueError("CMOW has no attention, so it has no attentions to output: pass output_attentions=False.")

    def _wants_hidden_states(self, output_hidden_states: bool | None) -> bool:
        return self.config.output_hidden_states if output_hidden_states is None else bool(output_hidden_states)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """CMOW has no layers whose activations could be recomputed in the backward pass: always raises."""
        raise ValueError(
            "CMOW has nothing to checkpoint: it has no layers whose activations could be recomputed, only token "
            "tables and one product per text. Train without gradient checkpointing (gradient_checkpointing=False)."
        )

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize every token table (and the MLM decoder) to ``new_num_tokens`` rows, e.g. after adding tokens.

        New token matrices are the identity and new token vectors zero (like padding, so a new token leaves a text's
        product and CBOW sum unchanged until it is trained; a CBOW mean counts it); the pooler and the classifier are
        untouched; new MLM decoder rows get the standard initialisation. ``mean_resizing`` is accepted and ignored:
        the identity is CMOW's neutral token. Shrinking drops the last rows.

        Returns:
            The resized input table (``get_input_embeddings()``).
        """
        if new_num_tokens is None and pad_to_multiple_of is None:
            return self.get_input_embeddings()
        rows = self.config.vocab_size if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            rows = math.ceil(rows / pad_to_multiple_of) * pad_to_multiple_of
        for name in ("pad_token_id", "sep_token_id", "cls_token_id"):
            token_id = getattr(self.config, name, None)
            if token_id is not None and token_id >= rows:
                raise ValueError(f"Cannot resize to {rows} tokens: `{name}` {token_id} would be dropped.")
        encoder = self.base_model.encoder
        if encoder.cbow_embeddings is not None:
            _resize_rows(encoder.cbow_embeddings, rows, torch.zeros(self.config.cbow_size))
        for table in (encoder.cmow_embeddings, encoder.cmow_bw_embeddings):
            if table is not None:
                _resize_rows(table, rows, torch.eye(self.config.matrix_size).flatten())
        decoder = self.get_output_embeddings()
        if decoder is not None:
            old_weight, old_bias = decoder.weight.data, decoder.bias.data
            decoder.weight = nn.Parameter(
                old_weight.new_empty(rows, old_weight.shape[1]).normal_(std=self.config.initializer_range)
            )
            decoder.bias = nn.Parameter(old_bias.new_zeros(rows))
            keep = min(rows, len(old_weight))
            decoder.weight.data[:keep], decoder.bias.data[:keep] = old_weight[:keep], old_bias[:keep]
            decoder.out_features = rows
        self.config.vocab_size = rows
        return self.get_input_embeddings()

    def _check_inputs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Validate ``input_ids`` and return a boolean mask of the positions to encode."""
        if input_ids is None:
            raise ValueError("CMOW models need `input_ids` (there are no input embeddings to pass instead).")
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must have shape (batch, seq); got {tuple(input_ids.shape)}.")
        if input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(
                f"`input_ids` must hold integer token ids (torch.long); got {input_ids.dtype}. Tokenize with "
                "`tokenizer(texts, return_tensors='pt')` or convert with `.long()`."
            )
        if input_ids.shape[1] == 0:
            raise ValueError("`input_ids` is empty: every text needs at least one token.")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(
                f"`input_ids` holds token ids outside [0, {self.config.vocab_size}): the tokenizer does not match "
                f"this model's vocabulary (vocab_size={self.config.vocab_size})."
            )
        if attention_mask is None:
            pad = self.config.pad_token_id
            return input_ids != pad if pad is not None else torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` shape {tuple(attention_mask.shape)} differs from `input_ids` "
                f"shape {tuple(input_ids.shape)}."
            )
        return attention_mask.bool()


class CMOWModel(CMOWPreTrainedModel):
    """The bare CMOW encoder: per-token prefix representations, pooled features and the sentence embedding."""

    def __init__(self, config: CMOWConfig):
        super().__init__(config)
        self.encoder = CMOWEncoder(config)
        self.pooler = CMOWPooler(config) if config.embedding_size else None
        self.post_init()

    def pooled_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, hidden_size)`` pooled ``[cbow; cmow_fw; cmow_bw]`` features, without the pooler."""
        mask = self._check_inputs(input_ids, attention_mask)
        return self.encoder(input_ids, mask, token_states=False)[1].to(self.dtype)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.cmow_embeddings or self.encoder.cbow_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_token_states: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> CMOWModelOutput | tuple:
        r"""Encode a batch of token ids.

        By default only the pooled product is computed, the fast path: ``last_hidden_state`` is ``None`` unless
        per-token states are asked for.

        Args:
            input_ids: ``(batch, seq)`` token ids.
            attention_mask: ``(batch, seq)``, 1 for tokens and 0 for padding; derived from ``pad_token_id`` if absent.
            token_type_ids: Accepted for tokenizer compatibility and ignored: the encoder reads the whole input.
            output_token_states: Compute the per-token states (``last_hidden_state``) without ``hidden_states``.
            output_hidden_states: Compute the per-token states, returned as ``last_hidden_state`` and as
                ``hidden_states=(last_hidden_state,)``; ``None`` follows ``config.output_hidden_states``.
            output_attentions: Must be false: CMOW has no attention.
            inputs_embeds: Not supported (a clear error): CMOW looks its token matrices up by id.
            return_dict: Return a tuple (of the fields that are set) when ``False``.

        Returns:
            ``CMOWModelOutput``: ``pooler_output`` (the sentence embedding, ``(batch, sentence_embedding_size)``),
            ``pooled_features`` ``(batch, hidden_size)`` and, when asked for, ``last_hidden_state``
            ``(batch, seq, hidden_size)`` and ``hidden_states``.
        """
        self._check_standard_arguments(inputs_embeds, output_attentions)
        output_hidden_states = self._wants_hidden_states(output_hidden_states)
        mask = self._check_inputs(input_ids, attention_mask)
        token_states, pooled = self.encoder(
            input_ids, mask, token_states=bool(output_token_states or output_hidden_states)
        )
        token_states = None if token_states is None else token_states.to(self.dtype)
        pooled = pooled.to(self.dtype)
        output = CMOWModelOutput(
            last_hidden_state=token_states,
            pooler_output=pooled if self.pooler is None else self.pooler(pooled),
            hidden_states=(token_states,) if output_hidden_states else None,
            pooled_features=pooled,
        )
        return output if return_dict is not False else output.to_tuple()


def pair_sides(
    input_ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor | None, sep_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the first and second text of ``tokenizer(a, b)``: by ``token_type_ids``, else by separators.

    Without token types the first text ends at the first separator and the second starts at the next non-separator,
    so RoBERTa's ``<s> a </s></s> b </s>`` gives ``<s> a </s>`` and ``b </s>``, like BERT's ``[CLS] a [SEP] b [SEP]``.
    """
    if token_type_ids is not None and bool((token_type_ids[mask] != 0).any()):
        second = mask & (token_type_ids != 0)
        return mask & ~second, second
    if sep_token_id is None:
        raise ValueError("Pair encoding needs `token_type_ids` or a `sep_token_id` in the config to split the pair.")
    is_sep = (input_ids == sep_token_id) & mask
    after_first_sep = (is_sep.long().cumsum(dim=1) - is_sep.long()) > 0
    started = (after_first_sep & ~is_sep).long().cumsum(dim=1) > 0
    return mask & ~after_first_sep, mask & started


class CMOWClassificationHead(nn.Module):
    """``linear``: dropout, Linear. ``mlp`` (the paper's): dropout, Linear(in, hidden), ReLU, LayerNorm, Linear."""

    def __init__(self, config: CMOWConfig):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        in_size, hidden = config.classifier_input_size, config.classifier_hidden_size
        if config.classifier == "linear":
            layers = [nn.Dropout(dropout), nn.Linear(in_size, config.num_labels)]
        else:
            layers = [
                nn.Dropout(dropout),
                nn.Linear(in_size, hidden),
                nn.ReLU(),
                nn.LayerNorm(hidden),
                nn.Linear(hidden, config.num_labels),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def sequence_classification_loss(config: CMOWConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's losses: MSE for regression, cross-entropy for single-label, BCE-with-logits for multi-label."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class CMOWForSequenceClassification(CMOWPreTrainedModel):
    """CMOW encoder with a classification/regression head on the pooled output.

    Sentence pairs come in as ``tokenizer(a, b)``, as for BERT. With ``config.pair_encoding == "joint"`` the whole
    input is one text. With ``"diffcat"`` / ``"diffcat_prod"`` (the paper's two-sequence encoding) each side is
    encoded alone, by masking the other side out (masked positions are the identity, so this equals encoding it
    alone), and the head classifies ``[a; b; |a - b|]`` (``; a * b``). Both sides read like single texts: the second
    side gets the leading ``[CLS]`` (``config.cls_token_id``) too, ``[CLS] a [SEP]`` and ``[CLS] b [SEP]``, so
    ``|a - b|`` compares like with like. A single text is a pair with an empty second text: ``[a; 0; |a|]``.
    """

    def __init__(self, config: CMOWConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cmow = CMOWModel(config)
        self.classifier = CMOWClassificationHead(config)
        self.post_init()

    def pooled_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Classifier input: the pooled text, or the pair encoding of its two sides."""
        mask = self._check_inputs(input_ids, attention_mask)
        if self.config.pair_encoding == "joint":
            return self.cmow.pooled_features(input_ids, mask)
        first, second = pair_sides(input_ids, mask, token_type_ids, self.config.sep_token_id)  # (batch, seq) each
        has_pair = second.any(dim=1)  # (batch,)
        if not bool(has_pair.all()):
            logger.warning_once(
                f"pair_encoding={self.config.pair_encoding!r} got single texts: each is classified as a pair with an "
                "empty second text (which encodes to zero). Pass `tokenizer(text_a, text_b)` for pairs."
            )
        cls_token_id = getattr(self.config, "cls_token_id", None)
        if cls_token_id is not None:
            # The second side gets the first side's leading [CLS], so both read like single texts: [CLS] x [SEP].
            leading_cls = torch.zeros_like(mask)
            leading_cls[:, 0] = (input_ids[:, 0] == cls_token_id) & first[:, 0] & has_pair
            second = second | leading_cls
        both = self.cmow.pooled_features(input_ids.repeat(2, 1), torch.cat([first, second]))
        a, b = both.chunk(2)  # (batch, hidden) each
        features = [a, b, (a - b).abs()]
        if self.config.pair_encoding == "diffcat_prod":
            features.append(a * b)
        return torch.cat(features, dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""Classify texts or text pairs.

        Args:
            input_ids: ``(batch, seq)`` token ids, from ``tokenizer(texts)`` or ``tokenizer(texts_a, texts_b)``.
            attention_mask: ``(batch, seq)``, 1 for tokens and 0 for padding.
            token_type_ids: ``(batch, seq)``, 1 on the second text of a pair.
            labels: ``(batch,)`` class ids, ``(batch,)`` floats for regression or ``(batch, num_labels)`` for
                multi-label; the loss is returned only when given.
            output_hidden_states: Also return ``hidden_states``: the encoder's per-token states of the whole input
                read as one text, ``((batch, seq, hidden_size),)``.
            output_attentions: Must be false: CMOW has no attention.
            inputs_embeds: Not supported (a clear error): CMOW looks its token matrices up by id.
            return_dict: Return a tuple when ``False``.
        """
        self._check_standard_arguments(inputs_embeds, output_attentions)
        logits = self.classifier(self.pooled_features(input_ids, attention_mask, token_type_ids))
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        hidden_states = None
        if self._wants_hidden_states(output_hidden_states):
            hidden_states = self.cmow(input_ids, attention_mask, output_hidden_states=True).hidden_states
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)
        return output if return_dict is not False else output.to_tuple()


class CMOWLMHead(nn.Module):
    """Per-token representation to vocabulary logits: Linear, GELU, LayerNorm, Linear."""

    def __init__(self, config: CMOWConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, token_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(token_states))))


class CMOWForMaskedLM(CMOWPreTrainedModel):
    """CMOW encoder with a masked-language-model head on the per-token outputs (used by general distillation)."""

    def __init__(self, config: CMOWConfig):
        super().__init__(config)
        self.cmow = CMOWModel(config)
        self.lm_head = CMOWLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput | tuple:
        r"""Predict every position's token.

        Args:
            input_ids: ``(batch, seq)`` token ids with some replaced by the mask token.
            attention_mask: ``(batch, seq)``, 1 for tokens and 0 for padding.
            token_type_ids: Ignored.
            labels: ``(batch, seq)`` original ids at masked positions and -100 elsewhere.
            output_hidden_states: Also return ``hidden_states=(per-token states,)``.
            output_attentions: Must be false: CMOW has no attention.
            inputs_embeds: Not supported (a clear error): CMOW looks its token matrices up by id.
            return_dict: Return a tuple when ``False``.
        """
        self._check_standard_arguments(inputs_embeds, output_attentions)
        outputs = self.cmow(input_ids, attention_mask, output_token_states=True)  # the head reads every position
        logits = self.lm_head(outputs.last_hidden_state)  # (batch, seq, vocab)
        loss = None
        if labels is not None:
            # Mean over labelled positions; a batch with none gives 0, not NaN.
            token_losses = F.cross_entropy(
                logits.view(-1, self.config.vocab_size).float(), labels.view(-1), ignore_index=-100, reduction="sum"
            )
            loss = token_losses / (labels != -100).sum().clamp_min(1)
        hidden_states = (outputs.last_hidden_state,) if self._wants_hidden_states(output_hidden_states) else None
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden_states)
        return output if return_dict is not False else output.to_tuple()


# save_pretrained ships this file and its config file as remote code for every Auto class (see config.auto_map).
CMOWModel.register_for_auto_class("AutoModel")
CMOWForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
CMOWForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
CMOWConfig.register_for_auto_class()

__all__ = [
    "CMOWForMaskedLM",
    "CMOWModelOutput",
    "CMOWForSequenceClassification",
    "CMOWModel",
    "CMOWPreTrainedModel",
    "ngram_bucket_ids",
    "normalize_product",
    "prefix_products",
    "quantize_rows",
    "tree_product",
]
