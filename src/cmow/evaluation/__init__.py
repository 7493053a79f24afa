"""Frozen-embedding evaluation (``cmow evaluate``): STS-B, SST-2, MRPC and a word-order probe, against baselines."""

from .models import BASELINES, baseline_embedders, cmow_embedder, folder_embedder
from .tasks import Embedder, evaluate, markdown_table, word_order_probe

__all__ = [
    "BASELINES",
    "Embedder",
    "baseline_embedders",
    "cmow_embedder",
    "evaluate",
    "folder_embedder",
    "markdown_table",
    "word_order_probe",
]
