"""Teacher-derived initialisation: a tiny BERT teacher's per-token outputs land in the CBOW table as documented."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

from cmow import CMOWModel
from cmow.distill.initialization import (
    excluded_tokens,
    init_from_teacher,
    teacher_token_vectors,
    token_counts,
    token_weights,
)
from cmow.evaluation.models import static_embedder
from conftest import PAD, SEP, tiny_config

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]
WORDS = [f"w{i}" for i in range(99 - len(SPECIALS))]
HIDDEN = 6  # larger than the student's CBOW size (5), so PCA keeps 5 components


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizer:
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(SPECIALS + WORDS)})
    assert (tokenizer.pad_token_id, tokenizer.sep_token_id) == (PAD, SEP)
    return tokenizer


def tiny_teacher(cls=BertModel):
    torch.manual_seed(3)
    config = BertConfig(
        vocab_size=99, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=7
    )
    return cls(config).eval()


def test_each_token_is_run_alone_between_its_special_tokens_and_mean_pooled(tokenizer):
    teacher = tiny_teacher()
    vectors = teacher_token_vectors(teacher, tokenizer, 99, batch_size=10)
    for token in (7, 50, 98):
        with torch.no_grad():
            states = teacher(torch.tensor([[tokenizer.cls_token_id, token, tokenizer.sep_token_id]])).last_hidden_state
        torch.testing.assert_close(vectors[token], states[0].mean(dim=0))
    # An MLM teacher is run without its head: the same vectors from its encoder.
    masked_lm = tiny_teacher(BertForMaskedLM)
    masked_lm.bert.load_state_dict(teacher.state_dict(), strict=False)
    torch.testing.assert_close(teacher_token_vectors(masked_lm, tokenizer, 99), vectors)


def test_special_and_reserved_tokens_are_excluded(tokenizer):
    excluded = excluded_tokens(tokenizer, 101)  # two ids past the tokenizer's vocabulary
    assert excluded[:7].all() and not excluded[7:99].any() and excluded[99:].all()


def test_sif_weights_from_counts_and_zipf_weights_from_ranks():
    included = torch.tensor([False, True, True, True])
    counts = np.array([100, 9, 0, 29])
    weights = token_weights("sif", included, counts, sif_coefficient=0.5)
    probability = torch.tensor([10.0, 1.0, 30.0], dtype=torch.float64) / 41
    torch.testing.assert_close(weights[1:], (0.5 / (0.5 + probability)).float())
    assert weights[0] == 0
    zipf = token_weights("zipf", included, sif_coefficient=0.5)
    ranks = 1 / torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(zipf[1:], (0.5 / (0.5 + ranks / ranks.sum())).float())
    assert token_weights("none", included).tolist() == [0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="need token counts"):
        token_weights("sif", included)


def test_token_counts(tokenizer):
    counts = token_counts(tokenizer, ["w0 w1 w1", "w1 w3"], 99)
    first = len(SPECIALS)
    assert counts[first : first + 4].tolist() == [1, 3, 0, 1] and counts.sum() == 5


def test_the_table_holds_pca_rotated_weighted_teacher_vectors_and_the_pooler_rotates_back(tokenizer):
    teacher = tiny_teacher()
    counts = token_counts(tokenizer, [" ".join(WORDS[: 1 + i % 30]) for i in range(50)], 99)
    student = CMOWModel(tiny_config(embedding_size=HIDDEN))
    matrices = student.encoder.cmow_embeddings.weight.clone()
    init_from_teacher(student, teacher, tokenizer, weighting="sif", counts=counts, sif_coefficient=1e-2)

    # Expected, computed independently with numpy: mean-pooled outputs, centred, top-5 principal axes, SIF weights.
    vectors = teacher_token_vectors(teacher, tokenizer, 99).double().numpy()
    included = np.arange(99) >= len(SPECIALS)
    centred = vectors[included] - vectors[included].mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes[:5].T
    probability = (counts[included] + 1) / (counts[included] + 1).sum()
    expected = projected * (1e-2 / (1e-2 + probability))[:, None]
    table = student.encoder.cbow_embeddings.weight.detach().double().numpy()
    signs = np.sign((table[included] * expected).sum(axis=0))  # SVD axes are defined up to sign
    np.testing.assert_allclose(table[included] * signs, expected, atol=1e-5)
    assert not table[~included].any()
    # The pooler maps CBOW coordinates back to the teacher's space and ignores the matrix features at first.
    weight = student.pooler.dense.weight.detach().double().numpy()
    np.testing.assert_allclose(weight[:, :5] * signs, axes[:5].T, atol=1e-5)
    assert not weight[:, 5:].any() and not student.pooler.dense.bias.any()
    assert torch.equal(student.encoder.cmow_embeddings.weight, matrices)  # matrices untouched


def test_step_zero_student_embeds_like_the_static_model(tokenizer):
    teacher = tiny_teacher()
    student = CMOWModel(tiny_config(embedding_size=HIDDEN)).eval()
    init_from_teacher(student, teacher, tokenizer, weighting="zipf")
    texts = ["w1 w2 w3", "w4 w4 w9 w17 w30", "w5"]
    table = student.encoder.cbow_embeddings.weight.detach() @ student.pooler.dense.weight[:, :5].detach().T
    static = torch.from_numpy(static_embedder(table, tokenizer, "static").encode(texts))
    ids = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        embedding = student(ids["input_ids"], ids["attention_mask"]).pooler_output
    # [CLS]/[SEP] rows are zero, so the student's mean differs from the static mean only in scale.
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(embedding, static), torch.ones(3))


def test_a_student_without_cbow_cannot_take_a_static_initialisation(tokenizer):
    student = CMOWModel(tiny_config(encoder="cmow", embedding_size=HIDDEN))
    with pytest.raises(ValueError, match="fills the CBOW table"):
        init_from_teacher(student, tiny_teacher(), tokenizer, weighting="zipf")
