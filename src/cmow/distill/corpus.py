"""The corpus as a stream of text batches: plain text files (also ``.gz``) or any ``datasets`` dataset."""

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import datasets
from datasets.distributed import split_dataset_by_node

logger = logging.getLogger(__name__)

# File suffixes read with a ``datasets`` builder other than "text" (every other file is read as plain text).
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# A path with one of these suffixes that does not exist is a mistake, not a Hub id.
FILE_SUFFIXES = (".txt", ".gz", ".bz2", ".zst", *BUILDERS)

Corpus = datasets.Dataset | datasets.IterableDataset

# Content hash of a corpus file for the teacher cache's key: whole up to HASHED_WHOLE_BYTES, else sampled blocks.
HASHED_WHOLE_BYTES = 8 << 20
SAMPLE_BYTES = 256 << 10
SAMPLED_BLOCKS = 16


def _builder(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".zst")]
    return BUILDERS.get(suffixes[-1] if suffixes else "", "text")


def load_corpus(corpus: str | os.PathLike | list, name: str | None = None) -> datasets.IterableDataset:
    """Open a corpus as a stream, so it may be larger than memory.

    Args:
        corpus: A text file (one text per line; ``.gz`` works), a list of them, a ``.json``/``.jsonl``/``.csv``/
            ``.parquet`` file, a local dataset folder, or a Hub dataset id.
        name: Configuration name of a Hub dataset.

    Returns:
        An ``IterableDataset`` (its ``train`` split).

    Raises:
        FileNotFoundError: if a path that looks like a file does not exist.
    """
    sources = [str(source) for source in (corpus if isinstance(corpus, list | tuple) else [corpus])]
    paths = [Path(source).expanduser() for source in sources]
    for path in paths:
        if not path.exists() and (path.suffix in FILE_SUFFIXES or len(paths) > 1 or str(path).startswith((".", "/"))):
            raise FileNotFoundError(f"Corpus file {path} does not exist: pass an existing text file or a dataset id.")
    if all(path.is_file() for path in paths):
        builders = {_builder(path) for path in paths}
        if len(builders) > 1:
            raise ValueError(f"Corpus files mix formats ({', '.join(sorted(builders))}); pass files of one format.")
        files = [str(path) for path in paths]
        return datasets.load_dataset(builders.pop(), data_files=files, split="train", streaming=True)
    if len(paths) > 1:
        raise ValueError("Several corpora must all be files; pass one dataset folder or Hub id at a time.")
    folder_or_id = str(paths[0]) if paths[0].exists() else sources[0]  # the CLI passes a list of one
    return datasets.load_dataset(folder_or_id, name, split="train", streaming=True)


def _file_digest(path: Path) -> str:
    """Size, modification time and a hash of the contents: all of a small file, samples of a large one."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as file:
        if size <= HASHED_WHOLE_BYTES:
            digest.update(file.read())
        else:  # the first and last block and evenly spaced ones between them
            for index in range(SAMPLED_BLOCKS):
                file.seek(index * (size - SAMPLE_BYTES) // (SAMPLED_BLOCKS - 1))
                digest.update(file.read(SAMPLE_BYTES))
    return f"{size}:{path.stat().st_mtime_ns}:{digest.hexdigest()}"


def corpus_fingerprint(corpus: str | os.PathLike | list, name: str | None = None) -> str:
    """What the teacher cache's key knows of a corpus (see ``cmow.distill.cache``): its contents where it is local.

    Each local file (also each file under a dataset folder) counts with its size, its modification time and a hash of
    its contents: the whole file up to 8 MiB, else 16 blocks of 256 KiB spread over it (first and last included), so
    a corpus rewritten in place never reuses stale targets and fingerprinting a large corpus stays fast. A Hub dataset
    counts by its id and configuration ``name`` only: clear the cache when it changes on the Hub.
    """
    sources = corpus if isinstance(corpus, list | tuple) else [corpus]
    parts = []
    for source in map(str, sources):
        path = Path(source).expanduser()
        if path.is_file():
            parts.append(_file_digest(path))
        elif path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and not p.relative_to(path).as_posix().startswith(".")
            )
            parts.extend(f"{file.relative_to(path).as_posix()}={_file_digest(file)}" for file in files)
        else:
            parts.append(f"hub:{source}:{name}")
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


def first_text(dataset: Corpus, text_column: str) -> str:
    """The corpus's first non-empty text; raises a ``ValueError`` for a corpus without any or without the column."""
    for example in dataset:
        if text_column not in example:
            raise ValueError(
                f"The corpus has no column {text_column!r} (columns: {', '.join(example)}); set text_column."
            )
        text = example[text_column]
        if isinstance(text, str) and text.strip():
            return text
    raise ValueError("The corpus is empty: it holds no non-empty text.")


def texts_of(dataset: Corpus, text_column: str) -> Iterator[str]:
    """The corpus's non-empty texts in stored order (no shuffling), e.g. for counting tokens."""
    for example in dataset:
        text = example[text_column]
        if isinstance(text, str) and text.strip():
            yield text


def text_batches(
    dataset: Corpus,
    *,
    text_column: str,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer_size: int = 0,
    seed: int = 0,
    epoch: int = 0,
) -> Iterator[list[str]]:
    """This process's share of one epoch, as lists of ``batch_size`` non-empty texts (a shorter last one).

    The order is a function of ``seed`` and ``epoch`` only, so a resumed run can skip what it already consumed.
    """
    stream = dataset.to_iterable_dataset() if isinstance(dataset, datasets.Dataset) else dataset
    stream = stream.filter(
        lambda example: isinstance(example[text_column], str) and bool(example[text_column].strip())
    )
    if shuffle_buffer_size:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        stream.set_epoch(epoch)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    texts = []
    for example in stream:
        texts.append(example[text_column])
        if len(texts) == batch_size:
            yield texts
            texts = []
    if texts:
        yield texts
