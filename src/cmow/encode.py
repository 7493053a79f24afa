"""Sentence embeddings from a CMOW model: ``encode(model, tokenizer, texts)``.

The fast path tokenizes with the Rust ``tokenizers`` backend in one parallel call per chunk of texts, without padding
or truncation, sorts the texts by token count and builds each batch's padded id tensor itself, so padding stays
minimal and the tokenizer's per-call overhead is paid once per chunk rather than once per batch.
"""

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .modeling_cmow import CMOWPreTrainedModel

CHUNK_BATCHES = 32  # batches tokenized per backend call: large enough to amortise the call, small enough for memory


@contextlib.contextmanager
def _unpadded(backend) -> Iterator:
    """The backend tokenizer with padding and truncation off, restored afterwards (transformers mutates them too)."""
    padding, truncation = backend.padding, backend.truncation
    backend.no_padding()
    backend.no_truncation()
    try:
        yield backend
    finally:
        if padding is not None:
            backend.enable_padding(**padding)
        if truncation is not None:
            backend.enable_truncation(**truncation)


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids with special tokens and no truncation; the Rust backend when the tokenizer has one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, add_special_tokens=True)["input_ids"]
    with _unpadded(backend):
        encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets: faster
        return [encoding.ids for encoding in encode_batch(texts, add_special_tokens=True)]


def pad_batch(ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(batch, longest)`` id and boolean mask tensors from lists of token ids."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    mask = np.arange(lengths.max()) < lengths[:, None]  # (batch, longest)
    input_ids = np.full(mask.shape, pad_token_id, dtype=np.int64)
    input_ids[mask] = np.fromiter((token for row in ids for token in row), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def encode(
    model: CMOWPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Pooled CMOW embeddings of ``texts``, in input order.

    Texts are tokenized in large chunks and encoded in batches sorted by token count, so padding stays small.

    Args:
        model: A CMOW model (``CMOWModel`` or any head; its encoder is used).
        tokenizer: The tokenizer the model was trained with.
        texts: The texts; none may be empty.
        batch_size: Texts per batch.

    Returns:
        ``(len(texts), hidden_size)`` float tensor.
    """
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings; wrap a single text in a list.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Text {index} is empty or not a string: {text!r}. Every text needs some content.")
    base = model.base_model
    pad_token_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    output = torch.empty(len(texts), base.config.hidden_size)
    chunk_size = batch_size * CHUNK_BATCHES
    with torch.inference_mode():
        for chunk_start in range(0, len(texts), chunk_size):
            ids = _token_ids(tokenizer, texts[chunk_start : chunk_start + chunk_size])
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, mask = pad_batch([ids[i] for i in rows], pad_token_id)
                pooled = base(input_ids.to(base.device), mask.to(base.device), output_token_states=False).pooler_output
                output[[chunk_start + i for i in rows]] = pooled.float().cpu()
    return output
