"""Frozen-embedding evaluation of students against the teacher and static baselines (``cmow evaluate``).

Every model is used as a frozen text -> vector function; nothing is fine-tuned:

* **STS-B** dev: Spearman correlation of the cosine similarity of the two sentences' embeddings with the gold score.
* **SST-2** dev: accuracy of a logistic regression trained on the embeddings of (a sample of) SST-2 train.
* **MRPC** dev: accuracy and F1 of a logistic regression on ``[a; b; |a - b|]`` trained on MRPC train.
* **Word order**: accuracy of a logistic regression that tells held-out corpus sentences from the same kind of
  sentences with two adjacent words swapped (SentEval's bigram shift). A bag of words scores 50%. The sentences come
  from the Gutenberg paragraphs the default distillation corpus holds out (``cmow.distill.default_corpus``).

Logistic regressions standardise the features first, so a model's scale does not decide the result, and choose their
L2 regularisation from ``C`` in {0.01, 0.1, 1, 10} by 3-fold cross-validation on the training data (as SentEval
does; never on dev): with 1,152 pair features and 3,668 MRPC pairs an unregularised fit overfits. Throughput is raw
text to embeddings on SST-2 dev, best of three passes, on the threads torch uses.
"""

import inspect
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data import data_dir
from ..glue.data import load_glue

logger = logging.getLogger(__name__)

WORD_ORDER_SENTENCES = 10_000


@dataclass
class Embedder:
    """A frozen model as a function from texts to a ``(n, dim)`` float array, with its size.

    ``disk_bytes``: the size of everything needed to run it (weights, tokenizer, config, code) where known.
    """

    name: str
    encode: Callable[[list[str]], np.ndarray]
    parameters: int
    note: str = ""
    results: dict = field(default_factory=dict)
    disk_bytes: int | None = None


def word_order_probe(folder: str | os.PathLike | None = None, count: int = WORD_ORDER_SENTENCES, seed: int = 0):
    """Bigram-shift probe data from the held-out Gutenberg paragraphs.

    Sentences of 6 to 30 words; half of them (chosen at random) get two adjacent, different words swapped (label 1).
    Returns ``(train_texts, train_labels, test_texts, test_labels)``, 80/20.
    """
    from ..distill.default_corpus import held_out_sentences

    sentences = [sentence.split() for sentence in held_out_sentences(folder)]
    sentences = [words for words in sentences if 6 <= len(words) <= 30]
    rng = random.Random(seed)
    rng.shuffle(sentences)
    texts, labels = [], []
    for words in sentences[:count]:
        label = rng.random() < 0.5
        if label:
            positions = [i for i in range(len(words) - 1) if words[i].lower() != words[i + 1].lower()]
            i = rng.choice(positions)
            words = words[:i] + [words[i + 1], words[i]] + words[i + 2 :]
        texts.append(" ".join(words))
        labels.append(int(label))
    split = int(0.8 * len(texts))
    return texts[:split], labels[:split], texts[split:], labels[split:]


REGULARISATION = (0.01, 0.1, 1.0, 10.0)
# scikit-learn 1.8+ warns unless told the fitted attributes to keep and the (pure L2) mixing; older versions have
# neither parameter.
_NEW_ATTRIBUTES = (
    {"use_legacy_attributes": False, "l1_ratios": (0.0,)}
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters
    else {}
)


def _classifier(seed: int):
    """Standardised features, logistic regression with ``C`` chosen by 3-fold cross-validation on the train data."""
    return make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=list(REGULARISATION), cv=3, scoring="accuracy", max_iter=1000, random_state=seed, **_NEW_ATTRIBUTES
        ),
    )


def evaluate_embedder(
    embedder: Embedder, glue_dir: Path, probe: tuple, sst2_train_size: int | None = 20_000, seed: int = 0
) -> dict:
    """STS-B, SST-2, MRPC and word-order scores and throughput of one frozen model; also stored on it."""
    encode, results = embedder.encode, embedder.results
    stsb = load_glue("STS-B", glue_dir)["validation"]
    a, b = torch.from_numpy(encode(stsb["text_a"])), torch.from_numpy(encode(stsb["text_b"]))
    cosine = torch.nn.functional.cosine_similarity(a, b).numpy()
    results["stsb_spearman"] = float(spearmanr(cosine, stsb["label"]).statistic)

    sst2 = load_glue("SST-2", glue_dir)
    train = sst2["train"]
    if sst2_train_size and sst2_train_size < len(train):
        train = train.shuffle(seed=seed).select(range(sst2_train_size))
    classifier = _classifier(seed).fit(encode(train["text_a"]), train["label"])
    dev = sst2["validation"]
    results["sst2_accuracy"] = float(np.mean(classifier.predict(encode(dev["text_a"])) == np.array(dev["label"])))

    mrpc = load_glue("MRPC", glue_dir)

    def pair_features(rows) -> np.ndarray:
        a, b = encode(rows["text_a"]), encode(rows["text_b"])
        return np.concatenate([a, b, np.abs(a - b)], axis=1)

    classifier = _classifier(seed).fit(pair_features(mrpc["train"]), mrpc["train"]["label"])
    predicted, gold = classifier.predict(pair_features(mrpc["validation"])), np.array(mrpc["validation"]["label"])
    results["mrpc_accuracy"] = float(np.mean(predicted == gold))
    results["mrpc_f1"] = float(f1_score(gold, predicted))

    train_texts, train_labels, test_texts, test_labels = probe
    classifier = _classifier(seed).fit(encode(train_texts), train_labels)
    results["word_order_accuracy"] = float(np.mean(classifier.predict(encode(test_texts)) == np.array(test_labels)))

    texts = list(dev["text_a"])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - start)
    results["sentences_per_second"] = len(texts) / best
    return results


def evaluate(
    embedders: list[Embedder],
    folder: str | os.PathLike | None = None,
    sst2_train_size: int | None = 20_000,
    seed: int = 0,
) -> list[Embedder]:
    """Evaluate every embedder on the same data; returns them with ``results`` filled."""
    root = data_dir(folder)
    probe = word_order_probe(root, seed=seed)
    for embedder in embedders:
        logger.info("Evaluating %s", embedder.name)
        evaluate_embedder(embedder, root / "glue", probe, sst2_train_size, seed)
    return embedders


def markdown_table(embedders: list[Embedder]) -> str:
    """One row per model: size (on disk where known, else of fp32 weights), STS-B, SST-2, MRPC, word order, speed."""
    lines = [
        "| model | parameters | size | STS-B Spearman | SST-2 acc. | MRPC acc. / F1 | word order acc. | sentences/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for embedder in embedders:
        r = embedder.results
        name = embedder.name + (f" ({embedder.note})" if embedder.note else "")
        size = f"{4 * embedder.parameters / 1e6:.0f} MB fp32"
        if embedder.disk_bytes is not None:
            size = f"{embedder.disk_bytes / 1e6:.1f} MB on disk"
        lines.append(
            f"| {name} | {embedder.parameters / 1e6:.1f}M | {size} | "
            f"{r['stsb_spearman']:.3f} | {100 * r['sst2_accuracy']:.1f} | "
            f"{100 * r['mrpc_accuracy']:.1f} / {100 * r['mrpc_f1']:.1f} | {100 * r['word_order_accuracy']:.1f} | "
            f"{r['sentences_per_second']:,.0f} |"
        )
    return "\n".join(lines)
