"""The nine GLUE tasks, from the Hub (``nyu-mll/glue``) or a local folder of the original GLUE TSV files.

Both sources go through ``datasets`` and come out with the same columns: ``text_a``, ``text_b`` (pair tasks only)
and ``label`` (class id in the Hub's label order, or a float score for STS-B).
"""

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored and scored.

    Attributes:
        name: Folder name in the GLUE TSV layout (``SST-2``).
        hub_name: Config name of ``nyu-mll/glue`` (``sst2``).
        label_names: Class names in the Hub's order; empty for regression (STS-B).
        tsv_columns: Local TSV columns of ``(text_a, text_b, label)``, by name or by position for header-less files.
        hub_columns: ``nyu-mll/glue`` columns of ``(text_a, text_b)``.
        dev_file: Local dev file name.
        has_header: Whether the local TSV files start with a header row.
    """

    name: str
    hub_name: str
    label_names: tuple[str, ...]
    tsv_columns: tuple
    hub_columns: tuple[str, str | None]
    dev_file: str = "dev.tsv"
    has_header: bool = True

    @property
    def is_pair(self) -> bool:
        return self.hub_columns[1] is not None

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")
TASKS = {
    task.name: task
    for task in (
        GlueTask("CoLA", "cola", _BINARY, (3, None, 1), ("sentence", None), has_header=False),
        GlueTask("SST-2", "sst2", _BINARY, ("sentence", None, "label"), ("sentence", None)),
        GlueTask("MRPC", "mrpc", _BINARY, ("#1 String", "#2 String", "Quality"), ("sentence1", "sentence2")),
        GlueTask("STS-B", "stsb", (), (7, 8, 9), ("sentence1", "sentence2")),
        GlueTask("QQP", "qqp", _BINARY, ("question1", "question2", "is_duplicate"), ("question1", "question2")),
        GlueTask(
            "MNLI",
            "mnli",
            ("entailment", "neutral", "contradiction"),
            ("sentence1", "sentence2", "gold_label"),
            ("premise", "hypothesis"),
            dev_file="dev_matched.tsv",
        ),
        GlueTask("QNLI", "qnli", _ENTAILMENT, ("question", "sentence", "label"), ("question", "sentence")),
        GlueTask("RTE", "rte", _ENTAILMENT, ("sentence1", "sentence2", "label"), ("sentence1", "sentence2")),
        GlueTask("WNLI", "wnli", _BINARY, ("sentence1", "sentence2", "label"), ("sentence1", "sentence2")),
    )
}


def get_task(name: str) -> GlueTask:
    """Look a task up by its GLUE folder name or Hub config name, case-insensitively."""
    for task in TASKS.values():
        if name.lower() in (task.name.lower(), task.hub_name):
            return task
    raise ValueError(f"Unknown GLUE task {name!r}; choose one of {', '.join(TASKS)}.")


def _check_tsv_rows(path: Path, has_header: bool) -> None:
    """Raise a ``ValueError`` naming the first line whose number of fields differs from the first line's.

    GLUE TSVs hold one example per line and are not quoted, so a stray tab or a line break inside a text shows as a
    line with another number of fields (pandas would fail on some with a bare ``ParserError``, and read a longer
    first row as an index column without any error).
    """
    with path.open(encoding="utf-8-sig") as lines:
        rows = ((number, line.rstrip("\r\n")) for number, line in enumerate(lines, start=1))
        rows = [(number, line) for number, line in rows if line]
    if len(rows) <= has_header:
        raise ValueError(f"GLUE file {path} holds no examples: restore it from the GLUE download.")
    expected = rows[0][1].count("\t") + 1
    for number, line in rows:
        fields = line.count("\t") + 1
        if fields != expected:
            raise ValueError(
                f"{path}, line {number}: {fields} tab-separated fields where line {rows[0][0]} has {expected}. A GLUE "
                "TSV holds one example per line: fix the stray tab or line break, or restore the file."
            )


def _load_tsv_split(task: GlueTask, path: Path) -> datasets.Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file {path} is missing: is {path.parent.parent} a GLUE TSV folder?")
    _check_tsv_rows(path, task.has_header)
    header = "infer" if task.has_header else None
    # GLUE TSVs are not CSV-quoted: quotes are part of the text. Read the used columns as text (a sentence may be "1").
    raw = datasets.load_dataset(
        "csv",
        data_files=str(path),
        delimiter="\t",
        quoting=csv.QUOTE_NONE,
        header=header,
        keep_default_na=False,
        converters={column: str for column in task.tsv_columns if column is not None},
        encoding="utf-8-sig",
        split="train",
    )
    names = raw.column_names
    missing = [c for c in task.tsv_columns if isinstance(c, str) and c not in names]
    if missing or max((c for c in task.tsv_columns if isinstance(c, int)), default=-1) >= len(names):
        raise ValueError(
            f"{path} lacks the {task.name} columns {missing or task.tsv_columns} (its columns: {names}): is it the "
            f"{task.name} file of the GLUE download?"
        )
    text_a, text_b, label = (names[c] if isinstance(c, int) else c for c in task.tsv_columns)
    return _standardise(raw, task, text_a, text_b, label, f"{path}, line", 2 if task.has_header else 1)


def _standardise(
    raw: datasets.Dataset, task: GlueTask, text_a: str, text_b: str | None, label: str, rows: str, first_row: int
) -> datasets.Dataset:
    """The standard columns; an error about a label names its row as ``f"{rows} {index + first_row}"``."""

    def where(index: int) -> str:
        return f"{rows} {index + first_row}"

    def convert(row: dict, index: int) -> dict:
        value = row[label]
        if task.is_regression:
            try:
                target = float(value)
            except ValueError:
                raise ValueError(f"{where(index)}: the {task.name} score {value!r} is not a number.") from None
        elif isinstance(value, str):
            if value not in task.label_names:
                raise ValueError(
                    f"{where(index)}: unknown {task.name} label {value!r}; expected one of {task.label_names}."
                )
            target = task.label_names.index(value)
        else:  # the Hub's ClassLabel ids
            target = int(value)
        out = {"text_a": row[text_a], "label": target}
        if text_b is not None:
            out["text_b"] = row[text_b]
        return out

    features = {"text_a": datasets.Value("string")}
    if text_b is not None:
        features["text_b"] = datasets.Value("string")
    features["label"] = (
        datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names))
    )
    return raw.map(convert, with_indices=True, remove_columns=raw.column_names, features=datasets.Features(features))


# Tokens a Penn-Treebank-style tokenizer splits off: clitics ("wo n't", "john 's") and punctuation ("a , b").
_PTB_CLITIC = re.compile(r" (n't|'s|'ll|'ve|'re|'d|'m)(?=\s|$)")
_PTB_PUNCT = re.compile(r" ([,.;:?!)%])(?=\s|$)")
_PTB_OPEN = re.compile(r"(^|\s)([($]) ")
_PTB_QUOTED = re.compile(r"(\"|`) ([^\"`']*?) ?([,.;:?!]?) (\"|')(?=\s|$|[,.;:?!])")
_SENTENCE_END = ".?!"


def detokenize(text: str) -> str:
    """Undo Penn-Treebank-style tokenization and end a sentence without final punctuation with a period.

    ``"our friends wo n't buy this analysis , let alone the next one we propose"`` becomes ``"our friends won't buy
    this analysis, let alone the next one we propose."``: the form of GLUE's raw files (case is not restored).
    """
    text = " ".join(text.replace("``", '"').replace("''", '"').split())
    text = _PTB_OPEN.sub(r"\1\2", _PTB_PUNCT.sub(r"\1", _PTB_CLITIC.sub(r"\1", text)))
    text = _PTB_QUOTED.sub(lambda m: m[1].replace("`", "'") + "".join(m.groups()[1:]), text)  # ` go ' -> 'go'
    ended = text.rstrip(" \"')")[-1:] in _SENTENCE_END  # he said "go." / (he went.) end inside
    return text if ended or not text else text + "."


def _ptb_rate(texts: list[str]) -> float:
    """The share of ``texts`` with a split-off clitic or comma: near 0 for raw text, large for tokenized text."""
    return sum(bool(_PTB_CLITIC.search(t) or " , " in t) for t in texts) / max(len(texts), 1)


def restore_tokenized_train(data: datasets.DatasetDict, task: GlueTask) -> datasets.DatasetDict:
    """Detokenize ``train`` when it is a tokenized release but ``validation`` is raw text (see ``load_glue``)."""
    columns = [c for c in ("text_a", "text_b") if c in data["train"].column_names]
    train_rate = _ptb_rate([t for c in columns for t in data["train"][c]])
    dev_rate = _ptb_rate([t for c in columns for t in data["validation"][c]])
    if train_rate < 0.02 or dev_rate > train_rate / 10:  # not tokenized, or tokenized alike (SST-2)
        return data
    logger.warning(
        "%s: train is tokenized text (%.0f%% of texts split clitics or commas, %.0f%% of dev's): detokenizing it so "
        "that train and dev share one form.",
        task.name,
        100 * train_rate,
        100 * dev_rate,
    )
    data["train"] = data["train"].map(lambda row: {c: detokenize(row[c]) for c in columns})
    return data


def load_glue(
    task_name: str, data_dir: str | os.PathLike | None = None, detokenize_train: bool = False
) -> datasets.DatasetDict:
    """Load a GLUE task's ``train`` and ``validation`` splits.

    Args:
        task_name: ``"SST-2"``, ``"sst2"``, ``"MNLI"``, ...
        data_dir: A folder in the GLUE TSV layout (``<data_dir>/SST-2/train.tsv``); ``None`` loads ``nyu-mll/glue``
            from the Hub.
        detokenize_train: Detokenize a train set in tokenized form (split clitics and commas, no final punctuation:
            the CoLA train file of some GLUE copies) whose dev set is raw text (``restore_tokenized_train``), so
            that the model meets one form in training and evaluation. Other train sets are returned as stored.

    Returns:
        ``train`` and ``validation`` with columns ``text_a``, ``text_b`` (pair tasks) and ``label``.
    """
    task = get_task(task_name)
    data = _load_glue(task, data_dir)
    return restore_tokenized_train(data, task) if detokenize_train else data


def _load_glue(task: GlueTask, data_dir: str | os.PathLike | None) -> datasets.DatasetDict:
    if data_dir is None:
        hub = datasets.load_dataset(HUB_DATASET, task.hub_name)
        validation = "validation_matched" if task.hub_name == "mnli" else "validation"
        text_a, text_b = task.hub_columns
        return datasets.DatasetDict(
            {
                split: _standardise(hub[source], task, text_a, text_b, "label", f"{HUB_DATASET} {source} row", 0)
                for split, source in (("train", "train"), ("validation", validation))
            }
        )
    folder = Path(data_dir) / task.name
    return datasets.DatasetDict(
        {
            "train": _load_tsv_split(task, folder / "train.tsv"),
            "validation": _load_tsv_split(task, folder / task.dev_file),
        }
    )


def tokenize(
    data: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> datasets.Dataset:
    """Tokenize ``text_a`` (and ``text_b``) into the tokenizer's columns plus ``label``; truncate if ``max_length``."""
    pair = "text_b" in data.column_names

    def encode(batch: dict) -> dict:
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return tokenizer(*texts, truncation=max_length is not None, max_length=max_length)

    return data.map(encode, batched=True, remove_columns=[c for c in data.column_names if c != "label"])


# Text columns of the GLUE test TSVs (they have no labels and differ from the train files' layouts).
_TEST_TEXT_COLUMNS = (
    "sentence",
    "sentence1",
    "sentence2",
    "question",
    "question1",
    "question2",
    "#1 String",
    "#2 String",
)


def load_test_texts(task_name: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Every text of a task's test split(s), to keep out of transfer sets; empty if there is none.

    Args:
        task_name: A GLUE task.
        data_dir: A folder in the GLUE TSV layout (its ``test*.tsv`` files are read, if any); ``None`` reads the
            ``test`` split(s) of ``nyu-mll/glue``.
    """
    task = get_task(task_name)
    if data_dir is None:
        splits = ("test_matched", "test_mismatched") if task.hub_name == "mnli" else ("test",)
        columns = [c for c in task.hub_columns if c is not None]
        return [
            text
            for split in splits
            for row in datasets.load_dataset(HUB_DATASET, task.hub_name, split=split)
            for text in (row[c] for c in columns)
        ]
    texts = []
    for path in sorted((Path(data_dir) / task.name).glob("test*.tsv")):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts += [row[c] for c in _TEST_TEXT_COLUMNS if row.get(c)]
    return texts
