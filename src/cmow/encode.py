"""Sentence embeddings from a CMOW model: ``encode(model, tokenizer, texts)`` (also ``model.encode(texts)``), and the
files that make sentence-transformers compute the same vector.

The fast path tokenizes with the Rust ``tokenizers`` backend in one parallel call per chunk of texts, without padding
or truncation, sorts the texts by token count and builds each batch's padded id tensor itself, so padding stays
minimal and the tokenizer's per-call overhead is paid once per chunk rather than once per batch. For a BERT-style
WordPiece tokenizer, the compiled ``cmow._wordpiece`` tokenizes the ASCII texts (punctuation such as curly quotes
allowed) instead, with the same ids (``compiled_wordpiece``).

This file is shipped as remote code next to saved checkpoints (``modeling_cmow.py`` imports it, so ``model.encode``
works without this package): it imports only numpy, torch and transformers.
"""

import json
import os
import sys
import unicodedata
import weakref
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

CHUNK_BATCHES = 32  # batches tokenized per backend call: large enough to amortise the call, small enough for memory


# The compiled tokenizer is looked up among the imported modules, never imported here: this file must load as remote
# code with only numpy, torch and transformers installed. `import cmow` imports it when it was built (see setup.py).
WORDPIECE_MODULE = "cmow._wordpiece"
# tokenizer -> (its backend, the backend's state, the compiled module, a private unpadded copy, the compiled tokenizer)
_PREPARED = weakref.WeakKeyDictionary()
_MODEL_SETTINGS = ("unk_token", "continuing_subword_prefix", "max_input_chars_per_word")


def _backend_state(backend) -> tuple:
    """What can change on a loaded backend and change its ids: its added tokens (also one already in the vocabulary:
    the size stays, the ids change), its normalizer, pre-tokenizer and post-processor, and its model's settings. Not
    the model's vocabulary (serialising it costs milliseconds); padding and truncation do not matter (see
    ``_prepared``). A few microseconds."""
    model = backend.model
    return (
        tuple(backend.get_added_tokens_decoder()),
        *map(_part_state, (backend.normalizer, backend.pre_tokenizer, backend.post_processor)),
        type(model).__name__,
        *(getattr(model, name, None) for name in _MODEL_SETTINGS),
    )


def _part_state(part) -> bytes | str | None:
    """A backend part's serialised settings; "custom" for a Python part, which cannot be serialised: such a backend
    cannot be copied either, so its texts go to the live tokenizer, and which custom part it is does not matter."""
    if part is None:
        return None
    try:
        return part.__getstate__()
    except Exception:  # tokenizers raises a plain Exception for a custom part
        return "custom"


def _prepared(tokenizer: PreTrainedTokenizerBase, backend) -> tuple:
    """``(copy, compiled)`` for ``tokenizer``'s Rust ``backend``: a private copy of it that neither pads nor truncates
    (``None`` if it cannot be copied: custom Python parts cannot be serialised), and the compiled tokenizer that gives
    the same ids (``None`` where it does not apply, see ``compiled_wordpiece``).

    Made once per tokenizer (~20 ms) and remade when the backend object or its state (``_backend_state``) changes. A
    private copy rather than the live backend: transformers switches the live one's padding and truncation on and
    off with every call (switching them off and back on for each of ours cost more than the Rust call, and another
    thread's call could truncate ours midway).
    """
    module = sys.modules.get(WORDPIECE_MODULE)
    state = _backend_state(backend)
    cached = _PREPARED.get(tokenizer)
    if cached is None or cached[0] is not backend or cached[1] != state or cached[2] is not module:
        try:
            copy = type(backend).from_str(backend.to_str())
            copy.no_padding()
            copy.no_truncation()
        except Exception:  # tokenizers raises a plain Exception for a custom pre-tokenizer, normalizer, ...
            copy = None  # remembered too: the failed attempt costs milliseconds
        compiled = None if module is None or copy is None else _wordpiece_from(module, copy)
        cached = _PREPARED[tokenizer] = (backend, state, module, copy, compiled)
    return cached[3], cached[4]


def _unpadded(tokenizer: PreTrainedTokenizerBase, backend):
    """A private copy of ``backend`` that neither pads nor truncates, or ``None`` (see ``_prepared``)."""
    return _prepared(tokenizer, backend)[0]


def compiled_wordpiece(tokenizer: PreTrainedTokenizerBase, backend):
    """The compiled tokenizer that gives ``backend``'s ids (special tokens added, no truncation or padding) for the
    texts it accepts, or ``None`` where it does not apply.

    It applies when ``cmow._wordpiece`` is loaded and the backend is a BERT pipeline: ``BertNormalizer``,
    ``BertPreTokenizer``, ``WordPiece`` and a ``TemplateProcessing`` or ``BertProcessing`` post-processor. It is
    built once per tokenizer and rebuilt when the backend changes (``_prepared``). Its ``encode(texts, threads)``
    declines (``None``) every text with a character that is neither ASCII nor punctuation the backend isolates
    unchanged (accents, CJK, emoji) or that is the first character of an added token (the backend matches those
    before its normalizer), so the caller tokenizes those with the backend (tests/test_wordpiece.py checks both agree).
    """
    return _prepared(tokenizer, backend)[1]


def _wordpiece_from(module, backend):
    """A ``module.WordPiece`` for ``backend``'s pipeline, or ``None`` when it is not one the compiled code equals.

    On ASCII text, BertNormalizer's ``strip_accents`` and ``handle_chinese_chars`` change nothing; ``clean_text`` and
    ``lowercase`` are passed on.
    """
    spec = json.loads(backend.to_str())
    normalizer, model = spec["normalizer"] or {}, spec["model"]
    pipeline = (normalizer.get("type"), (spec["pre_tokenizer"] or {}).get("type"), model["type"])
    specials = _special_ids(spec["post_processor"] or {})
    if pipeline != ("BertNormalizer", "BertPreTokenizer", "WordPiece") or specials is None:
        return None
    if model["unk_token"] not in model["vocab"]:  # the backend fails on an unknown word: leave the error to it
        return None
    # Added tokens are matched in the raw text (or, if `normalized`, in the normalised text) before the pre-tokenizer:
    # texts with a character that is or normalises to the first character of one are declined.
    firsts = set()
    for token in spec.get("added_tokens") or []:
        forms = [token["content"]] + (
            [backend.normalizer.normalize_str(token["content"])] if token["normalized"] else []
        )
        if not all(forms):
            return None
        firsts.update(form[0] for form in forms)
    ascii_characters = map(chr, range(128))
    declined = "".join(c for c in ascii_characters if c in firsts or backend.normalizer.normalize_str(c)[:1] in firsts)
    # Non-ASCII punctuation (curly quotes, dashes, ...) that the normalizer leaves as it is and the pre-tokenizer
    # isolates is a word of its own in any text of such characters and ASCII: the compiled code takes those texts too.
    punctuation = "".join(
        c
        for c in map(chr, range(128, 0x10000))
        if unicodedata.category(c).startswith("P")
        and c not in firsts
        and backend.normalizer.normalize_str(c) == c
        and [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(f"a{c}b")] == ["a", c, "b"]
    )
    return module.WordPiece(
        model["vocab"],
        model["vocab"][model["unk_token"]],
        model["continuing_subword_prefix"],
        model["max_input_chars_per_word"],
        normalizer["lowercase"],
        normalizer["clean_text"],
        *specials,
        declined,
        punctuation,
    )


def _special_ids(post_processor: dict) -> tuple[list[int], list[int]] | None:
    """The ids a single sequence's post-processing puts before and after its tokens, or ``None`` if unsupported."""
    if post_processor.get("type") == "BertProcessing":
        return [post_processor["cls"][1]], [post_processor["sep"][1]]
    if post_processor.get("type") != "TemplateProcessing":
        return None
    pieces = post_processor["single"]
    sequences = [piece["Sequence"].get("id") for piece in pieces if "Sequence" in piece]
    if sequences != ["A"] or not all("Sequence" in piece or "SpecialToken" in piece for piece in pieces):
        return None  # exactly one sequence, $A (a template may also name $B for single texts: not taken)
    ids = [
        post_processor["special_tokens"][piece["SpecialToken"]["id"]]["ids"] if "SpecialToken" in piece else None
        for piece in pieces
    ]
    middle = ids.index(None)
    return sum(ids[:middle], []), sum(ids[middle + 1 :], [])


def _token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids with special tokens and no truncation; the compiled tokenizer for the texts it accepts, the Rust
    backend for the others, when the tokenizer has one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    backend, native = (None, None) if backend is None else _prepared(tokenizer, backend)
    if backend is None:
        return tokenizer(texts, add_special_tokens=True)["input_ids"]
    if native is None:
        return _backend_ids(backend, texts)
    ids = native.encode(texts, torch.get_num_threads())
    declined = [index for index, row in enumerate(ids) if row is None]
    if declined:
        for index, row in zip(declined, _backend_ids(backend, [texts[index] for index in declined]), strict=True):
            ids[index] = row
    return ids


def _backend_ids(backend, texts: list[str]) -> list[list[int]]:
    """Token ids from a Rust backend that neither pads nor truncates (``_unpadded``), with special tokens."""
    encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets: faster
    return [encoding.ids for encoding in encode_batch(texts, add_special_tokens=True)]


def pad_batch(ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Right-padded ``(batch, longest)`` id and boolean mask tensors from lists of token ids; the mask is ``None``
    for one text (nothing is padded: the encoder reads every position)."""
    if len(ids) == 1:  # batch 1: numpy converts a list of ints 3x faster than torch.tensor
        return torch.from_numpy(np.array(ids, dtype=np.int64)), None
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    mask = np.arange(lengths.max()) < lengths[:, None]  # (batch, longest)
    input_ids = np.full(mask.shape, pad_token_id, dtype=np.int64)
    input_ids[mask] = np.fromiter((token for row in ids for token in row), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


OUTPUTS = ("sentence_embedding", "pooled_features")


def encode(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 256,
    output: str = "sentence_embedding",
    normalize: bool = False,
) -> torch.Tensor:
    """CMOW sentence embeddings of ``texts``, in input order.

    Texts are tokenized in large chunks, never truncated, and encoded in batches sorted by token count, so padding
    stays small. The model runs in eval mode (its mode is restored afterwards), so the result does not depend on
    dropout. ``model.encode(texts)`` is the same with the tokenizer saved next to the model.

    Args:
        model: A CMOW model (``CMOWModel`` or any head; its encoder is used).
        tokenizer: The tokenizer the model was trained with.
        texts: The texts (a list or any iterable); none may be empty or consist only of characters the tokenizer
            drops (e.g. ``"\\u200b"``), which would encode like an empty text.
        batch_size: Texts per batch.
        output: ``"sentence_embedding"`` (the model's ``pooler_output``: for a distilled student the projection
            trained to the teacher's embedding space) or ``"pooled_features"`` (the raw ``[cbow; cmow_fw; cmow_bw]``
            features the classification heads read).
        normalize: L2-normalise each embedding.

    Returns:
        ``(len(texts), size)`` float tensor: ``config.sentence_embedding_size`` or ``config.hidden_size`` columns.
    """
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings; wrap a single text in a list.")
    try:
        texts = list(texts)  # a generator or any other iterable of texts
    except TypeError as error:
        raise TypeError(f"`texts` must be a list of strings; got {type(texts).__name__}.") from error
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Text {index} is empty or not a string: {text!r}. Every text needs some content.")
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {', '.join(map(repr, OUTPUTS))}; got {output!r}.")
    base = model.base_model
    config = base.config
    pad_token_id = config.pad_token_id  # read once: a config attribute lookup costs about a microsecond
    was_training = base.training
    if was_training:  # eval() and train() walk every module: skipped when there is nothing to switch
        base.eval()
    try:
        # no_grad rather than inference_mode: the embeddings are normal tensors that callers may train on.
        with torch.no_grad():
            embeddings = _encode_all(base, tokenizer, texts, batch_size, pad_token_id or 0, output)
    finally:
        if was_training:
            base.train()
    if embeddings is None:  # no texts
        embeddings = torch.empty(0, config.sentence_embedding_size if output == OUTPUTS[0] else config.hidden_size)
    return torch.nn.functional.normalize(embeddings, dim=-1) if normalize else embeddings


def _encode_all(base, tokenizer, texts, batch_size, pad_token_id, output) -> torch.Tensor | None:
    """The ``output`` of ``base`` for ``texts`` (``None`` for no texts), chunk by chunk, in length-sorted batches.

    The hot path of inference calls the encoder and the pooler itself rather than ``forward``: the same computation
    without what forward pays per call (an output object, the dtype looked up, the ids' range checked by two tensor
    reductions), which at batch 1 costs more than the compiled kernel. The ids are checked here, once per chunk.
    """
    embeddings = None
    table = base.get_input_embeddings().weight  # its device, dtype and rows: cheaper than the model's properties
    device, dtype, vocab_size = table.device, table.dtype, table.shape[0]
    on_cpu = device.type == "cpu"
    pooler = base.pooler if output == "sentence_embedding" else None
    chunk_size = batch_size * CHUNK_BATCHES
    specials = tokenizer.num_special_tokens_to_add()
    for chunk_start in range(0, len(texts), chunk_size):
        ids = _token_ids(tokenizer, texts[chunk_start : chunk_start + chunk_size])
        empty = next((i for i, row in enumerate(ids) if len(row) <= specials), None)
        if empty is not None:
            index = chunk_start + empty
            raise ValueError(
                f"Text {index} ({texts[index]!r}) has no tokens besides the special ones: the tokenizer drops all its "
                "characters, so it would encode like an empty text. Remove it or give it some content."
            )
        largest = max(map(max, ids))
        if largest >= vocab_size:
            raise ValueError(
                f"The tokenizer gives token id {largest}, outside this model's vocabulary (vocab_size={vocab_size}): "
                "pass the tokenizer the model was trained with."
            )
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, mask = pad_batch([ids[i] for i in rows], pad_token_id)
            if not on_cpu:  # .to() costs a few microseconds even when it has nothing to do
                input_ids, mask = input_ids.to(device), None if mask is None else mask.to(device)
            _, features = base.encoder(input_ids, mask, token_states=False)  # (rows, hidden), float32
            if pooler is not None or dtype != torch.float32:  # in the model's dtype, as forward returns it
                features = (features.to(dtype) if pooler is None else pooler(features.to(dtype))).float()
            vectors = features if on_cpu else features.cpu()
            if len(rows) == len(texts) and rows == sorted(rows):  # one batch, in input order (one text): as it is
                return vectors
            if embeddings is None:
                embeddings = torch.empty(len(texts), vectors.shape[1])
            embeddings[[chunk_start + i for i in rows]] = vectors
    return embeddings


# sentence-transformers: one Transformer module whose output is the model's pooler_output, on untruncated texts.
SENTENCE_TRANSFORMERS_FILES = {
    "modules.json": [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
    ],
    "sentence_bert_config.json": {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "pooler_output"}},
        "module_output_name": "sentence_embedding",
        "processing_kwargs": {"text": {"truncation": False}},
    },
    "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "similarity_fn_name": "cosine"},
}


def write_sentence_transformers_config(folder: str | os.PathLike) -> None:
    """Write the files with which ``SentenceTransformer(folder)`` (sentence-transformers >= 6.2) returns exactly
    ``encode``'s vectors: the model's ``pooler_output`` on untruncated texts, rather than mean pooling of token states.
    """
    for name, content in SENTENCE_TRANSFORMERS_FILES.items():
        Path(folder, name).write_text(json.dumps(content, indent=2) + "\n")


class SentenceEmbeddingMixin:
    """``model.encode(texts)`` with the tokenizer saved next to the model, and ``save_pretrained`` that also writes
    the sentence-transformers files. Mixed into ``CMOWPreTrainedModel``."""

    def encode(
        self,
        texts: list[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 256,
        output: str = "sentence_embedding",
        normalize: bool = False,
    ) -> torch.Tensor:
        """Sentence embeddings of ``texts``: ``encode(model, tokenizer, texts, ...)``, see there.

        Args:
            texts: The texts; none may be empty.
            tokenizer: Defaults to the tokenizer saved with the model, loaded once from where the model was loaded.
            batch_size: Texts per batch.
            output: ``"sentence_embedding"`` (``pooler_output``) or ``"pooled_features"``.
            normalize: L2-normalise each embedding.

        Returns:
            ``(len(texts), size)`` float tensor.
        """
        return encode(self, tokenizer or self._saved_tokenizer(), texts, batch_size, output, normalize)

    def _saved_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer saved next to the model (``config.name_or_path``), loaded once."""
        if getattr(self, "_cmow_tokenizer", None) is None:
            source = self.config.name_or_path
            if not source:
                raise ValueError(
                    "This model was not loaded with from_pretrained, so there is no saved tokenizer to find: pass "
                    "one, model.encode(texts, tokenizer=tokenizer)."
                )
            try:
                # Passing the config skips AutoConfig, which would ask to run remote code without this package.
                self._cmow_tokenizer = AutoTokenizer.from_pretrained(source, config=self.config)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"No tokenizer was saved with the model in {source}: pass one, model.encode(texts, tokenizer=...)."
                ) from error
        return self._cmow_tokenizer

    def save_pretrained(self, save_directory: str | os.PathLike, *args, is_main_process: bool = True, **kwargs):
        """``PreTrainedModel.save_pretrained``, plus the sentence-transformers files."""
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            write_sentence_transformers_config(save_directory)
