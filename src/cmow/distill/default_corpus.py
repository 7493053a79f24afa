"""The default distillation corpus: the shared Gutenberg books plus the GLUE train texts, evaluation text kept out.

* Gutenberg paragraphs, except a held-out 2% (chosen by a hash of the text, so the split is the same on every machine
  and in every process): the word-order probe of ``cmow evaluate`` is built from the held-out paragraphs.
* The texts of all nine GLUE train sets (both sides of pairs, labels dropped): news, captions, forum questions,
  reviews and Wikipedia, the domains the GLUE and STS-B evaluations use, which books alone do not cover.
* No text that is also in any GLUE dev set or among the held-out paragraphs or their sentences (compared after
  stripping whitespace), so no evaluation sentence is ever trained on.

The texts are deduplicated and shuffled once with a fixed seed, so each batch mixes both sources.
"""

import gzip
import hashlib
import logging
import os
import random
import re
from pathlib import Path

import datasets

from ..data import data_dir
from ..glue.data import TASKS, load_glue

logger = logging.getLogger(__name__)

GUTENBERG = "corpus/gutenberg_train_50MB.txt.gz"
HELD_OUT_PERCENT = 2
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
DESCRIPTION = f"gutenberg_train_50MB.txt.gz (minus {HELD_OUT_PERCENT}% held out) + GLUE train texts (9 tasks)"


def is_held_out(text: str) -> bool:
    """Whether a corpus paragraph belongs to the held-out slice (a fixed hash of its text, not Python's ``hash``)."""
    digest = hashlib.blake2b(text.strip().encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < HELD_OUT_PERCENT


def gutenberg_paragraphs(folder: str | os.PathLike | None = None, held_out: bool = False) -> list[str]:
    """The Gutenberg paragraphs of the shared data folder: the training part, or the held-out part."""
    path = data_dir(folder) / GUTENBERG
    if not path.is_file():
        raise FileNotFoundError(f"The Gutenberg corpus {path} is missing: is the data folder complete?")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        paragraphs = (line.strip() for line in lines)
        return [text for text in paragraphs if text and is_held_out(text) == held_out]


def held_out_sentences(folder: str | os.PathLike | None = None) -> list[str]:
    """The sentences of the held-out Gutenberg paragraphs (split after ``.``, ``!`` or ``?``), in corpus order."""
    return [
        sentence.strip()
        for paragraph in gutenberg_paragraphs(folder, held_out=True)
        for sentence in _SENTENCE_END.split(paragraph)
        if sentence.strip()
    ]


def glue_texts(glue_dir: str | os.PathLike, split: str) -> list[str]:
    """Every text (both sides of pairs) of one split of the nine GLUE tasks, stripped, in task order."""
    texts = []
    for name in TASKS:
        rows = load_glue(name, glue_dir)[split]
        for column in ("text_a", "text_b"):
            if column in rows.column_names:
                texts.extend(text.strip() for text in rows[column])
    return [text for text in texts if text]


def build_default_corpus(folder: str | os.PathLike | None = None, seed: int = 0) -> list[str]:
    """The default corpus's texts: Gutenberg training paragraphs + GLUE train texts, minus GLUE dev texts, shuffled."""
    glue_dir = Path(data_dir(folder)) / "glue"
    evaluation = set(glue_texts(glue_dir, "validation"))
    evaluation |= set(gutenberg_paragraphs(folder, held_out=True)) | set(held_out_sentences(folder))
    texts = gutenberg_paragraphs(folder) + glue_texts(glue_dir, "train")
    texts = [text for text in dict.fromkeys(texts) if text not in evaluation]
    random.Random(seed).shuffle(texts)
    return texts


def default_corpus(folder: str | os.PathLike | None = None) -> tuple[datasets.Dataset, str, str]:
    """The default corpus as a ``Dataset`` with a ``text`` column, its description and a digest of its contents."""
    texts = build_default_corpus(folder)
    digest = hashlib.blake2b(digest_size=16)
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    logger.info("Default corpus: %d texts (%s)", len(texts), DESCRIPTION)
    return datasets.Dataset.from_dict({"text": texts}), DESCRIPTION, digest.hexdigest()
