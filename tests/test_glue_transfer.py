"""Transfer sets: Tang et al.'s augmentation, unlabeled text, keeping evaluation text out, and the teacher's labels."""

import gzip
import random
from collections import Counter

import datasets
import numpy as np
import pytest
from transformers import BertConfig, BertForSequenceClassification

from cmow.glue import transfer as transfer_module
from cmow.glue.augment import AugmentConfig, UnigramSampler, augmented_copies, perturb
from cmow.glue.data import load_glue, tokenize
from cmow.glue.distill_trainer import GOLD_MASK, TEACHER_LOGITS, predict_logits
from cmow.glue.run import GlueRunConfig, weights_digest
from cmow.glue.transfer import (
    build_transfer_set,
    check_transfer_source,
    join_transfer_set,
    label_shards,
    pair_texts,
    read_unlabeled,
    transfer_key,
    transfer_logits,
)

SENTENCES = [
    "a gripping and funny film",
    "the plot is thin but it moves",
    "awful acting throughout the whole thing",
    "fine",
    "one of the best films of the year",
]
PAIRS = [("the cat sat on the mat", "a cat was sitting on a mat"), ("he left early", "she stayed until the end")]

# --- augmentation --------------------------------------------------------------------------------------------------


def test_copies_are_deterministic_under_a_seed_and_change_with_it():
    examples = [(text,) for text in SENTENCES]
    first = augmented_copies(examples, copies=4, mask_token="[MASK]", seed=3)
    assert first == augmented_copies(examples, copies=4, mask_token="[MASK]", seed=3)
    assert first != augmented_copies(examples, copies=4, mask_token="[MASK]", seed=4)
    assert 0 < len(first) <= 4 * len(examples)
    assert all(copy not in examples for copy in first)  # a copy equal to its original is dropped


def test_each_rule_alone():
    sampler = UnigramSampler(SENTENCES)
    vocabulary = {word for text in SENTENCES for word in text.split()}
    text = "one of the best films of the year"
    rng = random.Random(0)
    assert perturb(text, rng, sampler, "[MASK]", AugmentConfig(1.0, 0.0, 0.0)) == " ".join(["[MASK]"] * 8)
    replaced = perturb(text, rng, sampler, "[MASK]", AugmentConfig(0.0, 1.0, 0.0)).split()
    assert len(replaced) == 8 and set(replaced) <= vocabulary
    for _ in range(20):
        kept = perturb(text, rng, sampler, "[MASK]", AugmentConfig(0.0, 0.0, 1.0, max_ngram=3))
        assert 1 <= len(kept.split()) <= 3 and f" {kept} " in f" {text} "  # a contiguous n-gram
    assert perturb(text, rng, sampler, "[MASK]", AugmentConfig(0.0, 0.0, 0.0)) == text


def test_replacements_follow_the_unigram_distribution():
    sampler = UnigramSampler(["a a a b"])
    draws = Counter(sampler.sample(random.Random(i)) for i in range(4000))
    assert draws["a"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_pairs_keep_their_structure_and_change_one_side_at_a_time():
    copies = augmented_copies(PAIRS, copies=6, mask_token="[MASK]", seed=0, config=AugmentConfig(0.5, 0.2, 0.0))
    assert copies and all(len(copy) == 2 for copy in copies)
    changed_sides = Counter()
    for copy in copies:
        original = next(pair for pair in PAIRS if copy[0] == pair[0] or copy[1] == pair[1])
        assert (copy[0] == original[0]) != (copy[1] == original[1])  # exactly one side changed
        changed_sides[0 if copy[1] == original[1] else 1] += 1
    assert set(changed_sides) == {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"mask_p": 1.5}, "mask_p"), ({"mask_p": 0.6, "replace_p": 0.6}, "at most 1")]
)
def test_bad_probabilities_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


def test_the_mask_token_in_a_copy_is_the_tokenizers_mask_id(tokenizer):
    (copy,) = augmented_copies([("a good film",)], 1, tokenizer.mask_token, config=AugmentConfig(1.0, 0.0, 0.0))
    assert tokenizer(copy[0])["input_ids"][1:-1] == [tokenizer.mask_token_id] * 3


# --- building a transfer set ---------------------------------------------------------------------------------------


def _train(pair: bool) -> datasets.Dataset:
    if pair:
        return datasets.Dataset.from_dict({"text_a": [a for a, _ in PAIRS], "text_b": [b for _, b in PAIRS]})
    return datasets.Dataset.from_dict({"text_a": SENTENCES})


def test_no_dev_or_test_text_enters_a_transfer_set():
    dev = ["An unseen  DEV sentence", "THE"]  # one-word copies of train sentences come up with "the" again and again
    unlabeled = ["an unseen dev sentence", "new in-domain text", "new in-domain text", SENTENCES[0]]
    augment = AugmentConfig(0.0, 0.0, 1.0, max_ngram=1)
    transfer, counts = build_transfer_set(_train(False), dev, copies=5, unlabeled=unlabeled, augment=augment)
    texts = [text.casefold() for text in transfer["text_a"]]
    assert "new in-domain text" in texts and texts.count("new in-domain text") == 1  # duplicates dropped
    assert "film" in texts  # a one-word copy
    assert not {"an unseen dev sentence", "the", SENTENCES[0]} & set(texts)  # dev (any case or spacing), train
    assert counts["dropped_evaluation"] >= 2 and counts["kept"] == len(transfer)
    assert (
        counts["augmented"] + counts["unlabeled"]
        == counts["kept"] + counts["dropped_evaluation"] + counts["dropped_duplicate"]
    )


def test_a_pair_with_a_dev_text_on_either_side_is_dropped():
    unlabeled = ["x one\tdev b", "dev b\tx two", "fresh a\tfresh b"]
    transfer, counts = build_transfer_set(_train(True), ["DEV B"], unlabeled=unlabeled)
    assert list(zip(transfer["text_a"], transfer["text_b"], strict=True)) == [("fresh a", "fresh b")]
    assert counts["dropped_evaluation"] == 2


def test_unlabeled_texts_become_pairs_for_pair_tasks():
    pairs = pair_texts(["q1\tq2", "a", "b", "c", "d", "e"], seed=0)
    assert pairs[0] == ("q1", "q2") and len(pairs) == 3  # "e" has no partner
    paired = [text for pair in pairs[1:] for text in pair]
    assert len(set(paired)) == 4 and set(paired) <= set("abcde")  # each text in one pair at most
    assert pairs == pair_texts(["q1\tq2", "a", "b", "c", "d", "e"], seed=0)


def test_read_unlabeled_from_files_and_glue_tasks(tmp_path, shared_data):
    (tmp_path / "texts.txt").write_text("first text\n\n  second text  \nthird\n")
    assert read_unlabeled(str(tmp_path / "texts.txt")) == ["first text", "second text", "third"]
    with gzip.open(tmp_path / "texts.txt.gz", "wt") as handle:
        handle.write("zipped one\nzipped two\n")
    assert read_unlabeled(str(tmp_path / "texts.txt.gz"), max_texts=1) == ["zipped one"]
    rte = read_unlabeled("glue:RTE", str(shared_data / "glue"), max_texts=4)
    assert len(rte) == 4 and all(rte)  # premise and hypothesis of the first two examples


def test_a_pair_task_keeps_another_pair_tasks_pairs_as_written(shared_data):
    glue = str(shared_data / "glue")
    rte = load_glue("RTE", glue)["train"]
    pairs = read_unlabeled("glue:RTE", glue, max_texts=3, pairs=True)
    written = zip(rte["text_a"][:3], rte["text_b"][:3], strict=True)
    assert pair_texts(pairs) == [(" ".join(a.split()), " ".join(b.split())) for a, b in written]
    # Without pairs=True (a single-sentence task reads them) each side is a text of its own.
    assert read_unlabeled("Glue:RTE", glue, max_texts=2) == [rte["text_a"][0].strip(), rte["text_b"][0].strip()]


def test_transfer_sources_are_checked_before_any_work(tmp_path):
    (tmp_path / "texts.txt").write_text("one\n")
    check_transfer_source(str(tmp_path / "texts.txt"))
    check_transfer_source("glue:mnli")
    check_transfer_source("someone/some-dataset")  # may be a Hub dataset: load_corpus decides
    with pytest.raises(ValueError, match="Unknown GLUE task"):
        check_transfer_source("glue:imdb")
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_transfer_source(str(tmp_path / "missing.txt.gz"))
    with pytest.raises(ValueError, match="write glue:RTE"):
        check_transfer_source("RTE")  # e.g. `--transfer-texts glue:MNLI RTE` took the task as a source
    with pytest.raises(ValueError, match="names a GLUE task"):
        check_transfer_source("all")
    with pytest.raises(ValueError, match="Unknown GLUE task"):
        check_transfer_source("GLUE:imdb")  # the prefix in any case
    with pytest.raises(FileNotFoundError, match="no such file"):
        GlueRunConfig(task="RTE", transfer_texts=["glue:MNLI", str(tmp_path / "missing.txt")])
    assert GlueRunConfig(task="RTE", transfer_texts="glue:MNLI").transfer_texts == ["glue:MNLI"]


def test_the_key_is_a_hash_of_the_content():
    a = datasets.Dataset.from_dict({"text_a": ["one", "two"]})
    same = datasets.Dataset.from_dict({"text_a": ["one", "two"]})
    changed = datasets.Dataset.from_dict({"text_a": ["one", "two!"]})
    assert transfer_key(a, "teacher", 128, 8) == transfer_key(same, "teacher", 128, 8)
    assert transfer_key(a, "teacher", 128, 8) != transfer_key(changed, "teacher", 128, 8)
    assert transfer_key(a, "teacher", 128, 8) != transfer_key(a, "other-teacher", 128, 8)
    assert transfer_key(a, "teacher", 128, 8) != transfer_key(a, "teacher", 64, 8)


# --- labelling -----------------------------------------------------------------------------------------------------


@pytest.fixture
def teacher(tokenizer):
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=17
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def counted_predictions(monkeypatch):
    """Counts the teacher runs of the labelling; ``fail_after`` makes the next runs raise, like a killed process."""
    calls = {"count": 0, "fail_after": None}
    real = transfer_module.predict_logits

    def predict(*args, **kwargs):
        if calls["fail_after"] is not None and calls["count"] >= calls["fail_after"]:
            raise KeyboardInterrupt("killed")
        calls["count"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer_module, "predict_logits", predict)
    return calls


def _label(teacher, tokenizer, data, tmp_path, shard_size=3):
    return transfer_logits(
        teacher, tokenizer, data, tmp_path, weights_digest(teacher), max_length=16, batch_size=2, shard_size=shard_size
    )


def test_labels_come_from_the_teacher_and_are_cached(teacher, tokenizer, tmp_path, counted_predictions):
    data = datasets.Dataset.from_dict({"text_a": SENTENCES + ["more text", "and more"]})
    logits, key = _label(teacher, tokenizer, data, tmp_path)
    expected = predict_logits(teacher, tokenizer, tokenize(data, tokenizer, 16), 64)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert counted_predictions["count"] == 3  # 7 texts in shards of 3
    assert len(list((tmp_path / f"transfer_logits-{key}").glob("shard-*.npy"))) == 3
    again, same_key = _label(teacher, tokenizer, data, tmp_path)
    assert counted_predictions["count"] == 3 and same_key == key
    np.testing.assert_array_equal(again, logits)


def test_a_changed_transfer_set_is_never_served_stale_logits(teacher, tokenizer, tmp_path):
    data = datasets.Dataset.from_dict({"text_a": ["a good film", "a bad film"]})
    changed = datasets.Dataset.from_dict({"text_a": ["a good film", "an awful, awful film"]})
    old, old_key = _label(teacher, tokenizer, data, tmp_path)
    new, new_key = _label(teacher, tokenizer, changed, tmp_path)
    assert new_key != old_key
    expected = predict_logits(teacher, tokenizer, tokenize(changed, tokenizer, 16), 64)
    np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(new[1], old[1])


def test_a_killed_labelling_resumes_at_the_first_missing_shard(teacher, tokenizer, tmp_path, counted_predictions):
    data = datasets.Dataset.from_dict({"text_a": [f"text number {i}" for i in range(10)]})
    counted_predictions["fail_after"] = 2
    with pytest.raises(KeyboardInterrupt):
        _label(teacher, tokenizer, data, tmp_path)
    (folder,) = tmp_path.glob("transfer_logits-*")
    assert sorted(path.name for path in folder.iterdir()) == ["shard-000000.npy", "shard-000001.npy"]  # no partial
    counted_predictions["fail_after"] = None
    logits, _ = _label(teacher, tokenizer, data, tmp_path)
    assert counted_predictions["count"] == 4  # 2 before the kill, the 2 missing after
    expected = predict_logits(teacher, tokenizer, tokenize(data, tokenizer, 16), 64)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_processes_label_interleaved_shards_that_every_process_then_reads(teacher, tokenizer, tmp_path):
    data = datasets.Dataset.from_dict({"text_a": [f"text number {i}" for i in range(10)]})
    key = transfer_key(data, weights_digest(teacher), 16, 3)
    folder = tmp_path / f"transfer_logits-{key}"
    settings = {"max_length": 16, "batch_size": 2, "shard_size": 3, "world_size": 2}
    assert label_shards(teacher, tokenizer, data, folder, rank=0, **settings) == 2  # shards 0 and 2
    assert label_shards(teacher, tokenizer, data, folder, rank=1, **settings) == 2  # shards 1 and 3
    logits, _ = _label(teacher, tokenizer, data, tmp_path)  # one process: reads all, labels nothing
    expected = predict_logits(teacher, tokenizer, tokenize(data, tokenizer, 16), 64)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("regression", [False, True])
def test_joined_train_set_masks_the_gold_labels_of_transfer_examples(tokenizer, regression):
    label = datasets.Value("float32") if regression else datasets.ClassLabel(names=["0", "1"])
    train = datasets.Dataset.from_dict(
        {"text_a": ["good", "bad"], "label": [1, 0]},
        features=datasets.Features(text_a=datasets.Value("string"), label=label),
    )
    train = tokenize(train, tokenizer).add_column(TEACHER_LOGITS, [[0.1, 0.2], [0.3, 0.4]])
    transfer = tokenize(datasets.Dataset.from_dict({"text_a": ["fine", "so so", "meh"]}), tokenizer)
    joined = join_transfer_set(train, transfer, np.arange(6, dtype=np.float32).reshape(3, 2))
    assert len(joined) == 5 and joined.features["label"] == label
    assert joined[GOLD_MASK] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert joined[TEACHER_LOGITS][2:] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert joined["input_ids"][2] == tokenizer("fine")["input_ids"]
    empty = tokenize(datasets.Dataset.from_dict({"text_a": []}), tokenizer)
    assert join_transfer_set(train, empty, np.zeros((0, 2), dtype=np.float32)) is train
