"""ONNX export: a graph that computes a CMOW model's sentence embedding (or logits) for any batch size and length.

The model's own forward does not trace into a general graph: the layout of its log-depth reduction depends on the
length (``tree_order``) and its input checks read token values. The exported graph computes the same product with a
trace-friendly formulation: ``levels`` rounds that each multiply neighbouring pairs, ``(M1 M2)(M3 M4)...``, padding
an odd count with the identity, and rescale as the model does. No shape in it is fixed at export time; after
``levels`` rounds one matrix is left for any text of up to ``2**levels`` tokens, and a longer text fails in the
runtime's final Reshape rather than giving a wrong product. Rounds left over for short texts multiply a single
matrix by the identity, which costs little.

Exported: ``CMOWModel`` (output ``sentence_embedding``, the ``pooler_output``) and ``CMOWForSequenceClassification``
with ``pair_encoding="joint"`` (output ``logits``), without hashed n-grams (their hash needs integer XOR, which the
exporter lacks). Inputs: ``input_ids`` and ``attention_mask``, both
``(batch, seq)`` int64. ``export_onnx`` checks the file in onnxruntime against the model before returning.
"""

import argparse
import logging
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .modeling_cmow import CMOWForSequenceClassification, CMOWModel, CMOWPreTrainedModel, normalize_product

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2**16
CHECK_LENGTHS = (1, 7, 64, 1000)


def pairwise_product(matrices: torch.Tensor, levels: int) -> torch.Tensor:
    """Normalised ordered product of ``(batch, n, d, d)`` matrices, ``n <= 2**levels``, in ``levels`` rounds.

    Returns:
        ``(batch, d, d)``.
    """
    d = matrices.shape[-1]
    eye = torch.eye(d, dtype=matrices.dtype, device=matrices.device)
    for _ in range(levels):
        identity = matrices[:, :1] * 0 + eye  # (batch, 1, d, d), shaped by the data so that tracing keeps it dynamic
        left = matrices[:, 0::2]  # (batch, ceil(n / 2), d, d)
        right = torch.cat([matrices, identity], dim=1)[:, 1::2]  # the odd last matrix is paired with the identity
        matrices = normalize_product(left @ right)
    return matrices.reshape(matrices.shape[0], d, d)  # fails at run time when more than one matrix is left


class ExportableCMOW(nn.Module):
    """The computation of ``model`` from token ids to its output, written for tracing (see the module docstring)."""

    def __init__(self, model: CMOWPreTrainedModel, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__()
        if isinstance(model, CMOWForSequenceClassification) and model.config.pair_encoding != "joint":
            raise ValueError(
                f"pair_encoding={model.config.pair_encoding!r} splits each input into its two texts by data-dependent "
                "rules, which ONNX export does not support. Export the encoder's sentence embedding instead "
                "(`export_onnx(model.cmow, path)`) or a classifier with pair_encoding='joint'."
            )
        if not isinstance(model, CMOWModel | CMOWForSequenceClassification):
            raise ValueError(
                f"{type(model).__name__} cannot be exported (it needs per-token states); export its encoder's "
                "sentence embedding instead: `export_onnx(model.cmow, path)`."
            )
        if model.config.ngram_orders:
            raise ValueError(
                f"A model with hashed n-grams (ngram_orders={list(model.config.ngram_orders)}) cannot be exported: "
                "their hash uses integer XOR, which the ONNX exporter does not support. Export a model without "
                "n-grams, or serve this one with torch."
            )
        self.model = model
        self.levels = max(1, math.ceil(math.log2(max_length)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = self.model.base_model
        config, tables = base.config, base.encoder
        mask = attention_mask.bool()
        features = []
        if tables.cbow_embeddings is not None:
            sums = (tables.cbow_embeddings(input_ids).float() * mask[..., None]).sum(dim=1)  # (batch, cbow)
            if config.cbow_pooling == "mean":
                sums = sums / mask.sum(dim=1, keepdim=True).clamp_min(1)
            features.append(sums)
        d = config.matrix_size
        eye = torch.eye(d)
        for table, reverse in ((tables.cmow_embeddings, False), (tables.cmow_bw_embeddings, True)):
            if table is None:
                continue
            # view, not unflatten: the tracer records view's sizes from input_ids, unflatten's as constants.
            matrices = F.embedding(input_ids, table.weight).float().view(*input_ids.shape, d, d)  # (batch, seq, d, d)
            matrices = torch.where(mask[..., None, None], matrices, eye)  # padding is the identity
            product = pairwise_product(matrices.flip(1) if reverse else matrices, self.levels)
            features.append((product - eye).flatten(1))  # as the model: the product minus the identity
        pooled = torch.cat(features, dim=-1)  # (batch, hidden)
        if isinstance(self.model, CMOWForSequenceClassification):
            return self.model.classifier(pooled)
        return pooled if base.pooler is None else base.pooler(pooled)


def export_onnx(
    model: CMOWPreTrainedModel,
    path: str | os.PathLike,
    max_length: int = DEFAULT_MAX_LENGTH,
    opset: int = 17,
    check: bool = True,
) -> Path:
    """Export ``model`` to an ONNX file that takes ``input_ids`` and ``attention_mask`` of any batch size and length.

    Args:
        model: ``CMOWModel`` (output ``sentence_embedding``) or a ``pair_encoding="joint"`` classifier (``logits``).
        path: The ``.onnx`` file to write.
        max_length: Longest text the graph accepts; longer ones fail in onnxruntime. Each doubling adds one round.
        opset: ONNX opset version.
        check: Run the file in onnxruntime (when installed) at lengths 1, 7, 64 and 1000 and on padded rows, and
            raise if it differs from the model (see ``check_onnx``).

    Returns:
        ``path``.

    Raises:
        ValueError: if the model cannot be exported (MLM heads, ``diffcat`` classifiers) or the check fails.
    """
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise ValueError(
            f"Export a float32 model on the CPU (this one: {model.dtype} on {model.device}): model.float().cpu()."
        )
    path = Path(path)
    module = ExportableCMOW(model, max_length).eval()  # puts the model in eval mode
    output_name = "logits" if isinstance(model, CMOWForSequenceClassification) else "sentence_embedding"
    input_ids = torch.full((2, 3), model.config.pad_token_id or 0, dtype=torch.long)  # example only: shapes stay free
    attention_mask = torch.ones_like(input_ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter traces shapes as graph values, which the dynamo exporter cannot do for this graph
        # (it specialises the length); torch marks it deprecated. Tracing reads only constants (d) as Python numbers.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (input_ids, attention_mask),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input_ids", "attention_mask"],
            output_names=[output_name],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                output_name: {0: "batch"},
            },
        )
    if check:
        check_onnx(model, path)
    return path


def check_onnx(model: CMOWPreTrainedModel, path: str | os.PathLike, atol: float = 1e-4, rtol: float = 1e-5) -> float:
    """Run the ONNX file in onnxruntime at lengths 1 to 1000 and on padded rows, and compare it with ``model``.

    The two agree to about 1e-6 for trained or freshly initialised models; products of 1,000 random matrices far from
    the identity are ill-conditioned, and there torch and onnxruntime (both that far from the exact product) differ by
    up to about 3e-5. A wrong graph differs by far more (a fixed-length graph: 0.07 at twice its length).

    Returns:
        The largest absolute difference.

    Raises:
        ValueError: if some output differs by more than ``atol + rtol * |expected|``.
    """
    try:
        import onnxruntime
    except ImportError:
        logger.warning("onnxruntime is not installed (pip install cmow[onnx]): %s was not checked", path)
        return float("nan")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst, close = 0.0, True
    for length in CHECK_LENGTHS:
        input_ids = torch.randint(model.config.vocab_size, (2, length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, (length + 1) // 2 :] = 0  # the second row is padded
        with torch.inference_mode():
            output = model(input_ids, attention_mask)
        expected = output.logits if isinstance(model, CMOWForSequenceClassification) else output.pooler_output
        (got,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        got = torch.from_numpy(got)
        worst = max(worst, (got - expected).abs().max().item())
        close = close and torch.allclose(got, expected, rtol=rtol, atol=atol)
    if not close:
        raise ValueError(f"The exported graph {path} differs from the model by up to {worst:.2e}: do not use it.")
    logger.info("Checked %s in onnxruntime at lengths %s: max |difference| %.1e", path, CHECK_LENGTHS, worst)
    return worst


def run_export(args: argparse.Namespace) -> int:
    from transformers import AutoModel, AutoModelForSequenceClassification

    model_class = AutoModelForSequenceClassification if args.logits else AutoModel
    model = model_class.from_pretrained(args.model)
    path = export_onnx(model, args.output, max_length=args.max_length, opset=args.opset, check=not args.no_check)
    print(
        f"Wrote {path} (inputs input_ids, attention_mask; output {'logits' if args.logits else 'sentence_embedding'})"
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export a CMOW checkpoint to an ONNX graph that takes input_ids and attention_mask of any batch size and "
        "length and returns the sentence embedding (what model.encode returns) or, with --logits, the classifier's "
        "logits. The file is checked against the model in onnxruntime (pip install cmow[onnx])."
    )
    parser.add_argument("format", choices=["onnx"], help="the export format")
    parser.add_argument("model", help="checkpoint folder or Hub id")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--logits", action="store_true", help="export the sequence classifier's logits (joint pairs)")
    parser.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help="longest text in tokens the graph accepts; longer fail at run time (default: %(default)s)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: %(default)s)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison with the model")
    parser.set_defaults(func=run_export)
