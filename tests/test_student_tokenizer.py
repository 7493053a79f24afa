"""Student vocabularies: training one like the teacher's, aligning two tokenizations, distilling across them."""

import json
import logging

import datasets
import pytest
import torch
from transformers import AutoTokenizer, BertModel, BertTokenizer

from cmow import CMOWModel
from cmow.cli import main
from cmow.distill import DistillationConfig, distill_from_model
from cmow.distill.initialization import teacher_token_vectors
from cmow.distill.student_tokenizer import align_token_states, train_student_tokenizer
from conftest import PAD, SEP, SPECIALS, WORDS, tiny_config
from test_distill import corpus_texts, logged_losses, run_config, save_teacher_folder, tiny_teacher

# A student vocabulary that splits the teacher's words differently: w1 ... w9 stay whole, longer words become
# "w1" + "##0" ... (the teacher's tiny_tokenizer has every word w0 ... w93 as one token).
STUDENT_VOCAB = SPECIALS + [f"w{i}" for i in range(10)] + [f"##{i}" for i in range(10)]


@pytest.fixture(scope="module")
def student_tokenizer() -> BertTokenizer:
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(STUDENT_VOCAB)})
    assert tokenizer.tokenize("w1 w23") == ["w1", "w2", "##3"] and tokenizer.pad_token_id == PAD
    return tokenizer


def test_a_trained_vocabulary_keeps_the_teachers_pipeline_and_special_tokens(tokenizer):
    texts = [f"The {word} Sat on the mat number {i}, unbelievably." for i, word in enumerate(["cat", "dog"] * 300)]
    student = train_student_tokenizer(tokenizer, texts, vocab_size=150)
    assert len(student) == 150 and student.is_fast
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        assert getattr(student, name) == getattr(tokenizer, name)
    assert student.tokenize("THE CAT") == ["the", "cat"]  # the teacher's lower-casing, learnt words
    encoded = student("the dog")["input_ids"]
    assert encoded[0] == student.cls_token_id and encoded[-1] == student.sep_token_id


def test_vocabularies_that_cannot_be_trained_are_refused(tokenizer):
    with pytest.raises(ValueError, match="at least 100"):
        train_student_tokenizer(tokenizer, ["a b c"], vocab_size=50)
    with pytest.raises(ValueError, match="student_vocab_size"):
        DistillationConfig(student_vocab_size=99)
    with pytest.raises(ValueError, match="not both"):
        DistillationConfig(student_vocab_size=500, student_tokenizer="some/tokenizer")
    with pytest.raises(ValueError, match="objective 'hidden'"):
        DistillationConfig(student_vocab_size=500, objective="mlm")


def offsets(*spans) -> torch.Tensor:
    return torch.tensor([spans], dtype=torch.long)  # (1, seq, 2)


def test_student_tokens_get_the_mean_of_the_teacher_states_over_their_characters():
    # "unbelievable dog": teacher [CLS] un ##believ ##able dog [SEP] [PAD]; student [CLS] unbe ##lievable dog [SEP].
    teacher_offsets = offsets((0, 0), (0, 2), (2, 8), (8, 12), (13, 16), (0, 0), (0, 0))
    teacher_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    states = torch.arange(7, dtype=torch.float)[None, :, None] * torch.tensor([1.0, 10.0])  # (1, 7, 2): row i = i
    student_offsets = offsets((0, 0), (0, 4), (4, 12), (13, 16), (0, 0))
    student_mask = torch.ones(1, 5, dtype=torch.long)
    aligned, matched = align_token_states(states, teacher_offsets, teacher_mask, student_offsets, student_mask)
    expected_rows = [0.0, (1 + 2) / 2, (2 + 3) / 2, 4.0, 5.0]  # [CLS]; un+##believ; ##believ+##able; dog; [SEP]
    torch.testing.assert_close(aligned[0], torch.tensor(expected_rows)[:, None] * torch.tensor([1.0, 10.0]))
    assert matched.all()


def test_student_positions_without_a_teacher_counterpart_are_zero_and_unmatched():
    # The teacher's truncation kept "dog" only; the student also has "cat" and a padding position.
    teacher_offsets, teacher_mask = offsets((0, 0), (0, 3), (0, 0)), torch.ones(1, 3, dtype=torch.long)
    states = torch.tensor([[[1.0], [2.0], [3.0]]])
    student_offsets = offsets((0, 0), (0, 3), (4, 7), (0, 0), (0, 0))
    student_mask = torch.tensor([[1, 1, 1, 1, 0]])
    aligned, matched = align_token_states(states, teacher_offsets, teacher_mask, student_offsets, student_mask)
    assert matched.tolist() == [[True, True, False, True, False]]
    assert aligned[0, :, 0].tolist() == [1.0, 2.0, 0.0, 3.0, 0.0]


def test_real_tokenizations_align_completely(tokenizer):
    student = train_student_tokenizer(tokenizer, [f"unbelievable things happened {i} times" for i in range(400)], 120)
    texts = ["Unbelievably, the dog bit the man.", "Short one"]
    teacher_batch = tokenizer(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    student_batch = student(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    pieces = student.convert_ids_to_tokens(student_batch["input_ids"][0])
    assert pieces != tokenizer.convert_ids_to_tokens(teacher_batch["input_ids"][0]) and "man" not in pieces
    states = torch.randn(*teacher_batch["input_ids"].shape, 4)
    aligned, matched = align_token_states(
        states,
        teacher_batch["offset_mapping"],
        teacher_batch["attention_mask"],
        student_batch["offset_mapping"],
        student_batch["attention_mask"],
    )
    assert torch.equal(matched, student_batch["attention_mask"].bool())
    torch.testing.assert_close(aligned[:, 0], states[:, 0])  # [CLS] to [CLS]


def test_student_tokens_are_initialised_from_the_teachers_token_or_its_text(tiny_tokenizer, student_tokenizer):
    teacher = tiny_teacher(BertModel)
    vectors = teacher_token_vectors(teacher, student_tokenizer, len(STUDENT_VOCAB), teacher_tokenizer=tiny_tokenizer)
    own = teacher_token_vectors(teacher, tiny_tokenizer, len(tiny_tokenizer))
    w3 = tiny_tokenizer.convert_tokens_to_ids("w3")
    torch.testing.assert_close(vectors[STUDENT_VOCAB.index("w3")], own[w3])  # also a teacher token: the same vector
    # "##7" is not: it is run as the text "7", which the teacher's tokenizer knows only as [UNK].
    with torch.no_grad():
        ids = torch.tensor([tiny_tokenizer("7")["input_ids"]])
        expected = teacher(ids).last_hidden_state[0].mean(dim=0)
    assert tiny_tokenizer.convert_ids_to_tokens(ids[0].tolist()) == ["[CLS]", "[UNK]", "[SEP]"]
    torch.testing.assert_close(vectors[STUDENT_VOCAB.index("##7")], expected)


@pytest.mark.parametrize("alpha_token", [0.0, 1.0], ids=["sentence", "per-token"])
def test_a_student_with_its_own_vocabulary_distils_and_saves_its_tokenizer(
    tiny_tokenizer, student_tokenizer, tmp_path, caplog, alpha_token
):
    caplog.set_level(logging.DEBUG, logger="cmow.distill.trainer")
    student = CMOWModel(tiny_config(vocab_size=len(STUDENT_VOCAB), embedding_size=12))
    texts = [" ".join(WORDS[i] for i in range(j, j + 5)) for j in range(0, 80, 3)]  # many two-digit words
    dataset = datasets.Dataset.from_dict({"text": texts})
    config = run_config(alpha_token=alpha_token, max_steps=40)
    distill_from_model(
        tiny_teacher(BertModel),
        tiny_tokenizer,
        student,
        dataset,
        tmp_path,
        config,
        student_tokenizer=student_tokenizer,
    )
    losses = logged_losses(caplog)
    assert losses[-1] < 0.8 * losses[0], losses
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == student_tokenizer.get_vocab()
    reloaded = CMOWModel.from_pretrained(tmp_path)
    assert reloaded.config.vocab_size == len(STUDENT_VOCAB) and reloaded.encode(["w12 w3"]).shape == (1, 12)


def test_mismatched_student_vocabularies_fail_before_training(tiny_tokenizer, student_tokenizer, tmp_path):
    dataset = datasets.Dataset.from_dict({"text": corpus_texts()})
    too_small = CMOWModel(tiny_config(vocab_size=SEP + 10, embedding_size=12))
    with pytest.raises(ValueError, match="vocab_size=25"):
        distill_from_model(
            tiny_teacher(BertModel), tiny_tokenizer, too_small, dataset, tmp_path, run_config(),
            student_tokenizer=student_tokenizer,
        )  # fmt: skip
    from cmow import CMOWForMaskedLM

    masked_lm = CMOWForMaskedLM(tiny_config(vocab_size=len(STUDENT_VOCAB)))
    with pytest.raises(ValueError, match="objective 'hidden'"):
        distill_from_model(
            tiny_teacher(), tiny_tokenizer, masked_lm, dataset, tmp_path, run_config(),
            student_tokenizer=student_tokenizer,
        )  # fmt: skip


def test_cli_trains_a_student_vocabulary_on_the_corpus(tiny_tokenizer, tmp_path):
    teacher = save_teacher_folder(tiny_tokenizer, tmp_path / "teacher", BertModel)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_texts(200)) + "\n")
    output = tmp_path / "student"
    code = main([
        "distill", "--teacher", str(teacher), "--corpus", str(corpus), "--output-dir", str(output),
        "--student-vocab-size", "100", "--matrix-size", "3", "--cbow-size", "5", "--batch-size", "3",
        "--max-seq-length", "7", "--max-steps", "3", "--report-to", "none",
    ])  # fmt: skip
    assert code == 0
    saved = json.loads((output / "config.json").read_text())
    student_tokenizer = AutoTokenizer.from_pretrained(output)
    assert saved["vocab_size"] == len(student_tokenizer) and saved["distillation"]["student_vocab_size"] == 100
    assert student_tokenizer.get_vocab() != tiny_tokenizer.get_vocab()
    assert "a student vocabulary trained on the distillation corpus" in (output / "README.md").read_text()


def test_cli_takes_a_ready_student_tokenizer_and_records_it_without_its_path(
    tiny_tokenizer, student_tokenizer, tmp_path
):
    teacher = save_teacher_folder(tiny_tokenizer, tmp_path / "teacher", BertModel)
    student_tokenizer.save_pretrained(tmp_path / "my-tokenizer")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_texts(30)) + "\n")
    output = tmp_path / "student"
    code = main([
        "distill", "--teacher", str(teacher), "--corpus", str(corpus), "--output-dir", str(output),
        "--student-tokenizer", str(tmp_path / "my-tokenizer"), "--matrix-size", "3", "--cbow-size", "5",
        "--batch-size", "3", "--max-seq-length", "7", "--max-steps", "2", "--report-to", "none",
    ])  # fmt: skip
    assert code == 0
    saved = json.loads((output / "config.json").read_text())
    assert saved["vocab_size"] == len(STUDENT_VOCAB)
    assert saved["distillation"]["student_tokenizer"] == "my-tokenizer (local folder)"
    assert AutoTokenizer.from_pretrained(output).get_vocab() == student_tokenizer.get_vocab()
    assert str(tmp_path) not in (output / "README.md").read_text() + (output / "config.json").read_text()
