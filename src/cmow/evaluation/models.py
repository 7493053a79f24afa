"""The models ``cmow evaluate`` compares: CMOW folders, the teacher, static models of the teacher, random students."""

import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AutoModel, AutoTokenizer

from ..configuration_cmow import CMOWConfig
from ..distill.initialization import static_embeddings, token_counts
from ..distill.teacher import TeacherPooling, read_pooling
from ..encode import encode
from ..modeling_cmow import CMOWModel
from ..quantize import folder_size
from .tasks import Embedder

logger = logging.getLogger(__name__)

BASELINES = ("teacher", "static", "static-sif", "model2vec", "random")
MODEL2VEC_CACHE = Path.home() / ".cache" / "cmow" / "model2vec"


def cmow_embedder(model, tokenizer, name: str, output: str = "sentence_embedding") -> Embedder:
    """A CMOW model through ``cmow.encode`` (its ``output``: the sentence embedding or the pooled features)."""
    model.eval()
    return Embedder(
        name,
        lambda texts: encode(model, tokenizer, list(texts), output=output).numpy(),
        model.num_parameters(),
        "pooled features" if output == "pooled_features" else "",
    )


def folder_embedder(folder: str, output: str = "sentence_embedding") -> Embedder:
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    embedder = cmow_embedder(model, tokenizer, folder, output)
    embedder.disk_bytes = folder_size(folder) if Path(folder).is_dir() else None
    return embedder


def teacher_embedder(teacher: str, batch_size: int = 128, max_length: int = 256) -> Embedder:
    """The teacher with its own pooling (sentence-transformers folders declare it; mean pooling otherwise)."""
    model, tokenizer = AutoModel.from_pretrained(teacher).eval(), AutoTokenizer.from_pretrained(teacher)
    pooling = (read_pooling(teacher) if Path(teacher).is_dir() else None) or TeacherPooling()

    @torch.inference_mode()
    def run(texts: list[str]) -> np.ndarray:
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        output = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            output[rows] = pooling(model(**batch).last_hidden_state, batch["attention_mask"]).numpy()
        return output

    return Embedder("teacher", run, model.num_parameters(), f"{pooling.mode} pooling")


def static_embedder(table: torch.Tensor, tokenizer, name: str, note: str = "") -> Embedder:
    """A static model: the mean of its tokens' rows (no special tokens), like model2vec's ``StaticModel``."""

    def run(texts: list[str]) -> np.ndarray:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        offsets = torch.tensor([0] + [len(row) for row in ids[:-1]]).cumsum(0)
        flat = torch.tensor([token for row in ids for token in row], dtype=torch.long)
        return F.embedding_bag(flat, table, offsets, mode="mean").numpy()

    return Embedder(name, run, table.numel(), note)


def model2vec_embedder(teacher: str) -> Embedder | None:
    """model2vec's own distillation of the teacher (cached after the first run); ``None`` if it is not installed."""
    try:
        from model2vec import StaticModel
        from model2vec.distill import distill
    except ImportError:
        logger.warning("model2vec is not installed (pip install 'cmow[bench]'): skipping its row")
        return None
    folder = MODEL2VEC_CACHE / Path(teacher).name
    if not (folder / "model.safetensors").exists():
        logger.info("Distilling model2vec from %s (once; cached in %s)", teacher, folder)
        distill(teacher, pca_dims=256).save_pretrained(str(folder))
    model = StaticModel.from_pretrained(str(folder))
    return Embedder(
        "model2vec", lambda texts: model.encode(list(texts)), model.embedding.size, "its distill(), PCA 256"
    )


def baseline_embedders(names: list[str], teacher: str, corpus_texts=None) -> list[Embedder]:
    """The named baselines of ``teacher``; ``corpus_texts`` (an iterable of texts) supplies the SIF counts."""
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    embedders = []
    for name in names:
        if name == "teacher":
            embedders.append(teacher_embedder(teacher))
        elif name in ("static", "static-sif"):
            model = AutoModel.from_pretrained(teacher)
            vocab_size = model.config.vocab_size
            if name == "static":  # model2vec's recipe, rebuilt: PCA to 256 dims, Zipf weights, a = 1e-4
                table, _ = static_embeddings(model, tokenizer, vocab_size, 256, weighting="zipf", sif_coefficient=1e-4)
                note = "model2vec's recipe rebuilt: PCA 256, Zipf weights"
            else:  # the student's step 0: all PCA dims, SIF weights from the corpus's token counts
                counts = token_counts(tokenizer, corpus_texts, vocab_size)
                table, _ = static_embeddings(model, tokenizer, vocab_size, 400, weighting="sif", counts=counts)
                note = f"PCA {table.shape[1]}, SIF weights from corpus counts: the student's initialisation"
            embedders.append(static_embedder(table, tokenizer, name, note))
        elif name == "model2vec":
            embedder = model2vec_embedder(teacher)
            embedders += [embedder] if embedder else []
        elif name == "random":
            torch.manual_seed(0)
            model = CMOWModel(CMOWConfig.from_tokenizer(tokenizer))
            embedders.append(cmow_embedder(model, tokenizer, "random"))
        else:
            raise ValueError(f"Unknown baseline {name!r}; choose from {', '.join(BASELINES)}.")
    return embedders
