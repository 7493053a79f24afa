"""``cmow evaluate`` and the default corpus: what the evaluation reads never enters the training corpus."""

import numpy as np
import pytest

from cmow.distill.default_corpus import (
    build_default_corpus,
    glue_texts,
    gutenberg_paragraphs,
    held_out_sentences,
    is_held_out,
)
from cmow.evaluation import Embedder, markdown_table, word_order_probe


def test_held_out_split_is_a_fixed_hash_of_the_text():
    texts = [f"paragraph number {i}." for i in range(5000)]
    held = [text for text in texts if is_held_out(text)]
    assert 60 < len(held) < 140  # 2% of 5000, give or take
    assert is_held_out(held[0]) and is_held_out("  " + held[0] + "\n")  # whitespace does not change the split


@pytest.fixture(scope="module")
def default_texts(shared_data) -> list[str]:
    return build_default_corpus(shared_data)


def test_no_evaluation_text_enters_the_default_corpus(shared_data, default_texts):
    corpus = set(default_texts)
    assert len(corpus) == len(default_texts) > 250_000  # deduplicated: Gutenberg + GLUE train texts
    dev = set(glue_texts(shared_data / "glue", "validation"))
    assert len(dev) > 10_000 and not corpus & dev
    held_out = set(gutenberg_paragraphs(shared_data, held_out=True)) | set(held_out_sentences(shared_data))
    assert len(held_out) > 5000 and not corpus & held_out
    train_texts, _, test_texts, _ = word_order_probe(shared_data, count=2000)
    assert not any(text in corpus for text in train_texts + test_texts)
    assert set(glue_texts(shared_data / "glue", "train")) - dev - held_out <= corpus


def test_word_order_probe_is_balanced_and_swaps_two_adjacent_words(shared_data):
    train_texts, train_labels, test_texts, test_labels = word_order_probe(shared_data, count=1000, seed=1)
    assert (len(train_texts), len(test_texts)) == (800, 200)
    assert 0.4 < np.mean(train_labels + test_labels) < 0.6
    assert word_order_probe(shared_data, count=1000, seed=1)[0] == train_texts  # deterministic
    for text in train_texts + test_texts:
        assert 6 <= len(text.split()) <= 30


def test_markdown_table_has_one_row_per_model():
    results = dict(
        stsb_spearman=0.81234, sst2_accuracy=0.775, mrpc_accuracy=0.7, mrpc_f1=0.8, word_order_accuracy=0.61,
        sentences_per_second=12345.6,
    )  # fmt: skip
    table = markdown_table(
        [Embedder("student", None, 2_000_000, "note", results), Embedder("small", None, 5, "", results, 5_432_100)]
    )
    assert (
        table.splitlines()[2] == "| student (note) | 2.0M | 8 MB fp32 | 0.812 | 77.5 | 70.0 / 80.0 | 61.0 | 12,346 |"
    )
    assert table.splitlines()[3].startswith("| small | 0.0M | 5.4 MB on disk | 0.812 |")
