"""Sentence embeddings from a CMOW model: ``encode(model, tokenizer, texts)``."""

import torch
from transformers import PreTrainedTokenizerBase

from .modeling_cmow import CMOWPreTrainedModel


def encode(
    model: CMOWPreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Pooled CMOW embeddings of ``texts``, in input order.

    Texts are tokenized and encoded in batches sorted by length, so padding stays small.

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
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Text {index} is empty or not a string: {text!r}. Every text needs some content.")
    base = model.base_model
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    output = torch.empty(len(texts), base.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in chunk], padding=True, return_tensors="pt").to(base.device)
            pooled = base(batch["input_ids"], batch["attention_mask"], output_token_states=False).pooler_output
            output[chunk] = pooled.float().cpu()
    return output
