import math

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from cmow import CMOWConfig, CMOWForMaskedLM, CMOWForSequenceClassification, CMOWModel
from cmow.modeling_cmow import ngram_bucket_ids, normalize_product, prefix_products, tree_product
from conftest import BATCH, CBOW, PAD, SEP, SEQ, VOCAB, D, random_ids, run_without_cmow, tiny_config

ENCODERS = [("cbow", False), ("cmow", False), ("cmow", True), ("hybrid", False), ("hybrid", True)]


def naive_products(matrices: torch.Tensor) -> torch.Tensor:
    """Left-to-right prefix products, one position at a time, rescaled like the model's: (batch, n, d, d)."""
    running = normalize_product(matrices[:, 0])
    prefixes = [running]
    for position in range(1, matrices.shape[1]):
        running = normalize_product(running @ matrices[:, position])
        prefixes.append(running)
    return torch.stack(prefixes, dim=1)


def pair_batch(batch: int = BATCH, seq: int = SEQ, split: int = 4) -> dict:
    """A ``tokenizer(a, b)``-shaped batch: [a ... SEP] then [b ... SEP] with token_type_ids 0/1."""
    input_ids = random_ids(batch, seq)
    input_ids[:, split - 1] = SEP
    input_ids[:, -1] = SEP
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, split:] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": torch.ones_like(input_ids)}


# --- the products ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13, 64])
def test_tree_reduction_and_scan_equal_the_naive_product(length):
    matrices = torch.randn(BATCH, length, D, D, dtype=torch.float64)
    naive = naive_products(matrices)
    torch.testing.assert_close(tree_product(matrices), naive[:, -1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(prefix_products(matrices), naive, rtol=1e-10, atol=1e-10)


def test_rescaling_keeps_the_direction_of_the_true_product():
    matrices = torch.eye(D, dtype=torch.float64) + 0.3 * torch.randn(1, 9, D, D, dtype=torch.float64)
    product = matrices[0, 0]
    for position in range(1, 9):
        product = product @ matrices[0, position]
    expected = product * math.sqrt(D) / torch.linalg.matrix_norm(product)
    torch.testing.assert_close(tree_product(matrices)[0], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("encoder,bidirectional", ENCODERS)
def test_model_outputs_are_the_products_and_sums_of_the_token_tables(encoder, bidirectional):
    config = tiny_config(encoder=encoder, bidirectional=bidirectional, cbow_pooling="sum")
    model = CMOWModel(config).eval()
    input_ids = random_ids()
    output = model(input_ids, output_hidden_states=True)
    tables = model.encoder
    expected_tokens = []
    if config.use_cbow:
        expected_tokens.append(tables.cbow_embeddings(input_ids).cumsum(dim=1))
    # Matrix features are the rescaled products minus the identity (an empty text encodes to zero).
    eye = torch.eye(D).flatten()
    if config.use_cmow:
        forward = tables.cmow_embeddings.weight[input_ids].view(BATCH, SEQ, D, D)
        expected_tokens.append(naive_products(forward).flatten(2) - eye)
    if bidirectional:
        backward = tables.cmow_bw_embeddings.weight[input_ids].view(BATCH, SEQ, D, D)
        # Position i holds E'_n ... E'_i: the prefix products of the reversed text, read backwards.
        expected_tokens.append(naive_products(backward.flip(1)).flip(1).flatten(2) - eye)
    expected = torch.cat(expected_tokens, dim=-1)
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    pooled = [expected_tokens[0][:, -1]] if config.use_cbow else []
    pooled += [tokens[:, -1] for tokens in expected_tokens[int(config.use_cbow) :]]
    if bidirectional:
        pooled[-1] = expected_tokens[-1][:, 0]
    torch.testing.assert_close(output.pooler_output, torch.cat(pooled, dim=-1), rtol=1e-5, atol=1e-5)
    # The default, pooled-only path gives the same sentence representation.
    pooled_only = model(input_ids)
    assert pooled_only.last_hidden_state is None and pooled_only.hidden_states is None
    torch.testing.assert_close(pooled_only.pooler_output, output.pooler_output, rtol=1e-5, atol=1e-5)


# --- shapes, heads and losses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder,bidirectional", ENCODERS)
def test_base_model_shapes(encoder, bidirectional):
    config = tiny_config(encoder=encoder, bidirectional=bidirectional)
    output = CMOWModel(config)(random_ids(), output_hidden_states=True)
    assert output.last_hidden_state.shape == (BATCH, SEQ, config.hidden_size)
    assert output.pooler_output.shape == (BATCH, config.hidden_size)


@pytest.mark.parametrize("pair_encoding", ["joint", "diffcat", "diffcat_prod"])
@pytest.mark.parametrize("classifier", ["linear", "mlp"])
def test_sequence_classification_shapes_and_loss_only_with_labels(pair_encoding, classifier):
    model = CMOWForSequenceClassification(
        tiny_config(num_labels=5, pair_encoding=pair_encoding, classifier=classifier)
    )
    inputs = pair_batch()
    output = model(**inputs)
    assert output.logits.shape == (BATCH, 5)
    assert output.loss is None
    output = model(**inputs, labels=torch.tensor([0, 4, 2]))
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)


@pytest.mark.parametrize(
    ("num_labels", "labels", "problem_type", "loss_fn"),
    [
        (1, torch.tensor([0.5, 2.0, 4.5]), "regression", torch.nn.functional.mse_loss),
        (3, torch.tensor([0, 2, 1]), "single_label_classification", torch.nn.functional.cross_entropy),
        (
            3,
            torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]),
            "multi_label_classification",
            torch.nn.functional.binary_cross_entropy_with_logits,
        ),
    ],
)
def test_losses_follow_berts_problem_types(num_labels, labels, problem_type, loss_fn):
    model = CMOWForSequenceClassification(tiny_config(num_labels=num_labels))
    output = model(random_ids(), labels=labels)
    assert model.config.problem_type == problem_type
    logits = output.logits.squeeze(-1) if num_labels == 1 else output.logits
    torch.testing.assert_close(output.loss, loss_fn(logits, labels))


def test_masked_lm_shapes_and_loss_ignores_unlabelled_positions():
    model = CMOWForMaskedLM(tiny_config())
    input_ids = random_ids()
    output = model(input_ids)
    assert output.logits.shape == (BATCH, SEQ, VOCAB) and output.loss is None
    labels = torch.full_like(input_ids, -100)
    labels[:, 2] = input_ids[:, 2]
    loss = model(input_ids, labels=labels).loss
    expected = torch.nn.functional.cross_entropy(output.logits[:, 2], input_ids[:, 2])
    torch.testing.assert_close(loss, expected)


def test_masked_lm_loss_is_zero_not_nan_without_labelled_positions():
    input_ids = random_ids()
    loss = CMOWForMaskedLM(tiny_config())(input_ids, labels=torch.full_like(input_ids, -100)).loss
    assert loss.item() == 0.0


def test_return_dict_false_gives_tuples():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2))
    logits = model(random_ids(), return_dict=False)[0]
    assert logits.shape == (BATCH, 2)


# --- padding and pairs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder,bidirectional", ENCODERS)
@pytest.mark.parametrize("cbow_pooling", ["mean", "sum"])
def test_padding_never_changes_any_output(encoder, bidirectional, cbow_pooling):
    model = CMOWModel(tiny_config(encoder=encoder, bidirectional=bidirectional, cbow_pooling=cbow_pooling)).eval()
    lengths = [SEQ, 2, 5]
    input_ids = random_ids()
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
        input_ids[row, length:] = PAD
    batch = model(input_ids, attention_mask, output_hidden_states=True)
    for row, length in enumerate(lengths):
        alone = model(input_ids[row : row + 1, :length], output_hidden_states=True)
        torch.testing.assert_close(batch.pooler_output[row], alone.pooler_output[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(
            batch.last_hidden_state[row, :length], alone.last_hidden_state[0], rtol=0, atol=1e-5
        )
    # Without an attention mask, padding is found from pad_token_id.
    torch.testing.assert_close(model(input_ids).pooler_output, batch.pooler_output, rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder,bidirectional", ENCODERS)
def test_a_fully_masked_text_encodes_to_zero(encoder, bidirectional):
    model = CMOWModel(tiny_config(encoder=encoder, bidirectional=bidirectional)).eval()
    input_ids = random_ids()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1] = 0
    for token_states in (True, False):
        pooled = model(input_ids, attention_mask, output_token_states=token_states).pooler_output
        assert torch.equal(pooled[1], torch.zeros(model.config.hidden_size))
        assert pooled[0].abs().sum() > 0


def test_pair_encoding_equals_encoding_each_side_alone():
    config = tiny_config(num_labels=3, pair_encoding="diffcat_prod")
    model = CMOWForSequenceClassification(config).eval()
    inputs = pair_batch(split=4)
    features = model.pooled_features(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    a = model.cmow(inputs["input_ids"][:, :4]).pooler_output
    b = model.cmow(inputs["input_ids"][:, 4:]).pooler_output
    expected = torch.cat([a, b, (a - b).abs(), a * b], dim=-1)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
    # Tokenizers without token_type_ids (RoBERTa-style) are split after the first separator.
    no_types = model.pooled_features(inputs["input_ids"], inputs["attention_mask"], None)
    torch.testing.assert_close(no_types, expected, rtol=0, atol=1e-5)


CLS = 2


def test_diffcat_encodes_both_sides_like_single_texts_with_the_leading_cls():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2, pair_encoding="diffcat", cls_token_id=CLS)).eval()
    inputs = pair_batch(split=4)  # [CLS] a a [SEP] b b [SEP]
    inputs["input_ids"][:, 0] = CLS
    features = model.pooled_features(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    a = model.cmow(inputs["input_ids"][:, :4]).pooler_output
    b = model.cmow(torch.cat([inputs["input_ids"][:, :1], inputs["input_ids"][:, 4:]], dim=1)).pooler_output
    torch.testing.assert_close(features, torch.cat([a, b, (a - b).abs()], dim=-1), rtol=0, atol=1e-5)
    # RoBERTa-style <s> a </s></s> b </s> without token types: the second side is <s> b </s> too.
    roberta = torch.cat([inputs["input_ids"][:, :4], torch.full((BATCH, 1), SEP), inputs["input_ids"][:, 4:]], dim=1)
    no_types = model.pooled_features(roberta, None, None)
    torch.testing.assert_close(no_types, features, rtol=0, atol=1e-5)


def test_diffcat_classifies_a_single_text_as_a_pair_with_an_empty_second_text():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2, pair_encoding="diffcat", cls_token_id=CLS)).eval()
    input_ids = random_ids()
    input_ids[:, 0], input_ids[:, -1] = CLS, SEP  # tokenizer(text): [CLS] a [SEP]
    features = model.pooled_features(input_ids, None, torch.zeros_like(input_ids))
    a = model.cmow(input_ids).pooler_output
    torch.testing.assert_close(features, torch.cat([a, torch.zeros_like(a), a.abs()], dim=-1), rtol=0, atol=1e-6)


def test_pair_encoding_of_a_padded_batch_equals_each_pair_alone():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2, pair_encoding="diffcat")).eval()
    inputs = pair_batch(seq=9, split=4)
    inputs["attention_mask"][1, 7:] = 0
    inputs["input_ids"][1, 7:] = PAD
    inputs["token_type_ids"][1, 7:] = 0
    logits = model(**inputs).logits
    alone = model(**{key: value[1:2, :7] for key, value in inputs.items()}).logits
    torch.testing.assert_close(logits[1:2], alone, rtol=0, atol=1e-5)


# --- hashed n-grams ------------------------------------------------------------------------------------------------


def ngram_config(**overrides):
    return tiny_config(**{"ngram_orders": (2, 3), "ngram_buckets": 17, **overrides})


def with_random_ngrams(model):
    """N-gram vectors start at zero; give them values so that a wrong n-gram shows in the outputs."""
    for module in model.modules():
        if module.__class__.__name__ == "NgramEmbedding":
            with torch.no_grad():
                module.weight[:-1].normal_()
    return model


def hashed(tokens: list[int], buckets: int) -> int:
    """The documented hash in plain Python integers."""
    value = 0
    for token in reversed(tokens):
        value = (value ^ (token + 1)) * 1540483477 % (2**31 - 1)
    value ^= len(tokens)
    value = (value ^ (value >> 16)) * 668265263 % (2**31 - 1)
    return (value ^ (value >> 13)) % buckets


def test_ngram_hash_has_known_values():
    ids, mask = torch.tensor([[5, 7, 9]]), torch.ones(1, 3, dtype=torch.bool)
    # Hand-computed with the formula in the docstring; position 0 has no bigram (the padding bucket, 1000).
    assert ngram_bucket_ids(ids, mask, (2, 3), 1000).tolist() == [[[1000, 938, 802], [1000, 1000, 471]]]
    assert hashed([5, 7], 1000) == 938 and hashed([5, 7, 9], 1000) == 471
    assert ngram_bucket_ids(ids, mask, (2,), 2**18)[0, 0, 1] == 93210
    # The documented formula, for every n-gram of a random batch.
    ids, mask = random_ids(seq=9), torch.ones(BATCH, 9, dtype=torch.bool)
    buckets = ngram_bucket_ids(ids, mask, (2, 4), 2**20)
    for row in range(BATCH):
        assert buckets[row, 0, 1:].tolist() == [hashed(ids[row, i - 1 : i + 1].tolist(), 2**20) for i in range(1, 9)]
        assert buckets[row, 1, 3:].tolist() == [hashed(ids[row, i - 3 : i + 1].tolist(), 2**20) for i in range(3, 9)]
    # A hole in the mask breaks the n-grams across it.
    mask[0, 4] = False
    assert ngram_bucket_ids(ids, mask, (2,), 2**20)[0, 0, 4:6].tolist() == [2**20, 2**20]


def hash_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask with holes, for comparing the hash across processes."""
    generator = torch.Generator().manual_seed(7)
    return torch.randint(30522, (4, 10), generator=generator), torch.rand(4, 10, generator=generator) < 0.9


@pytest.mark.parametrize("cbow_pooling", ["mean", "sum"])
def test_ngrams_are_summed_into_the_cbow_bag(cbow_pooling):
    config = ngram_config(encoder="cbow", bidirectional=False, cbow_pooling=cbow_pooling)
    model = with_random_ngrams(CMOWModel(config)).eval()
    input_ids = random_ids()
    table, vectors = model.encoder.ngram_embeddings.weight, model.encoder.cbow_embeddings.weight
    expected_tokens = []
    for row in input_ids.tolist():
        running, states = torch.zeros(CBOW), []
        for i in range(SEQ):
            running = running + vectors[row[i]]
            for n in (2, 3):
                if i >= n - 1:
                    running = running + table[hashed(row[i - n + 1 : i + 1], 17)]
            states.append(running / (i + 1) if cbow_pooling == "mean" else running)
        expected_tokens.append(torch.stack(states))
    expected_tokens = torch.stack(expected_tokens)  # (batch, seq, cbow)
    output = model(input_ids, output_hidden_states=True)
    torch.testing.assert_close(output.last_hidden_state, expected_tokens, rtol=1e-5, atol=1e-5)
    pooled = model(input_ids).pooler_output
    torch.testing.assert_close(pooled, expected_tokens[:, -1], rtol=1e-5, atol=1e-5)
    assert config.hidden_size == CBOW  # n-grams add to the bag, not to the width


@pytest.mark.parametrize("cbow_pooling", ["mean", "sum"])
def test_ngrams_never_cross_padding_on_either_side(cbow_pooling):
    model = with_random_ngrams(CMOWModel(ngram_config(cbow_pooling=cbow_pooling))).eval()
    lengths = [SEQ, 2, 1]
    texts = random_ids()
    right, left = torch.full((BATCH, SEQ + 2), PAD), torch.full((BATCH, SEQ + 2), PAD)
    for row, length in enumerate(lengths):
        right[row, :length] = texts[row, :length]
        left[row, SEQ + 2 - length :] = texts[row, :length]
    for token_states in (True, False):
        by_right = model(right, right != PAD, output_token_states=token_states).pooler_output
        by_left = model(left, left != PAD, output_token_states=token_states).pooler_output
        for row, length in enumerate(lengths):
            alone = model(texts[row : row + 1, :length], output_token_states=token_states).pooler_output[0]
            torch.testing.assert_close(by_right[row], alone, rtol=0, atol=1e-5)
            torch.testing.assert_close(by_left[row], alone, rtol=0, atol=1e-5)
    states = model(right, right != PAD, output_hidden_states=True).last_hidden_state
    alone = model(texts[1:2, :2], output_hidden_states=True).last_hidden_state
    torch.testing.assert_close(states[1, :2], alone[0], rtol=0, atol=1e-5)


def test_ngrams_stay_within_each_side_of_a_pair():
    model = with_random_ngrams(CMOWForSequenceClassification(ngram_config(num_labels=3, pair_encoding="diffcat")))
    model.eval()
    inputs = pair_batch(split=4)
    features = model.pooled_features(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    a = model.cmow(inputs["input_ids"][:, :4]).pooler_output
    b = model.cmow(inputs["input_ids"][:, 4:]).pooler_output
    torch.testing.assert_close(features, torch.cat([a, b, (a - b).abs()], dim=-1), rtol=0, atol=1e-5)


def test_ngram_vectors_start_at_zero_so_adding_ngrams_to_a_checkpoint_keeps_its_outputs(tmp_path):
    model = CMOWForSequenceClassification(tiny_config(num_labels=2)).eval()
    model.save_pretrained(tmp_path)
    with_ngrams = CMOWForSequenceClassification.from_pretrained(tmp_path, ngram_orders=[2], ngram_buckets=17).eval()
    assert torch.equal(with_ngrams.cmow.encoder.ngram_embeddings.weight, torch.zeros(18, CBOW))
    input_ids = random_ids()
    torch.testing.assert_close(with_ngrams(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)


def test_ngram_table_survives_save_and_load(tmp_path):
    model = with_random_ngrams(CMOWForSequenceClassification(ngram_config(num_labels=2))).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.ngram_orders == [2, 3] and loaded.config.ngram_buckets == 17
    input_ids = random_ids()
    torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)


# --- numerics -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 1000, 16384])
def test_long_inputs_stay_finite_in_fp32(length):
    # d=20 as in the paper, and noise large enough that an unscaled product overflows within a few hundred tokens.
    config = CMOWConfig(vocab_size=VOCAB, matrix_size=20, cbow_size=CBOW, initializer_range=0.5, sep_token_id=SEP)
    model = CMOWModel(config).eval()
    input_ids = random_ids(batch=1, seq=length)
    with torch.inference_mode():
        output = model(input_ids, output_hidden_states=True)
    assert torch.isfinite(output.last_hidden_state).all()
    assert torch.isfinite(output.pooler_output).all()
    products = output.pooler_output[0, CBOW:].view(2, 20, 20) + torch.eye(20)
    torch.testing.assert_close(torch.linalg.matrix_norm(products), torch.full((2,), math.sqrt(20)))


def test_unscaled_products_would_overflow_so_the_long_input_test_can_fail():
    config = CMOWConfig(vocab_size=VOCAB, matrix_size=20, cbow_size=CBOW, initializer_range=0.5)
    matrices = CMOWModel(config).encoder.cmow_embeddings.weight[random_ids(1, 1000)[0]].view(-1, 20, 20)
    product = matrices[0]
    for matrix in matrices[1:]:
        product = product @ matrix
    assert not torch.isfinite(product).all()


def test_products_run_in_fp32_under_bf16_autocast():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2, matrix_size=20, initializer_range=0.2)).eval()
    input_ids = random_ids(seq=2048)
    reference = model.cmow(input_ids, output_hidden_states=True).last_hidden_state
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = model.cmow(input_ids, output_hidden_states=True).last_hidden_state
        logits = model(input_ids).logits
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_finite_outputs_close_to_fp32(dtype):
    model = CMOWModel(tiny_config(matrix_size=20)).eval()
    input_ids = random_ids(seq=4096)
    reference = model(input_ids).pooler_output
    half = model.to(dtype)(input_ids).pooler_output
    assert half.dtype == dtype and torch.isfinite(half).all()
    # Only the stored weights are rounded; the product itself runs in fp32.
    torch.testing.assert_close(half.float(), reference, rtol=0.05, atol=0.05)


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [VOCAB, VOCAB + 7, -1])
def test_token_ids_outside_the_vocabulary_raise_a_clear_error(bad_id):
    input_ids = random_ids()
    input_ids[1, 3] = bad_id
    with pytest.raises(ValueError, match="tokenizer does not match"):
        CMOWModel(tiny_config())(input_ids)


def test_empty_and_malformed_inputs_raise_clear_errors():
    model = CMOWForSequenceClassification(tiny_config(num_labels=2, pair_encoding="diffcat"))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        model(random_ids()[0])
    with pytest.raises(ValueError, match="attention_mask"):
        model(random_ids(), attention_mask=torch.ones(BATCH, SEQ + 1))
    with pytest.raises(TypeError, match="integer token ids"):
        model(random_ids().float())


@pytest.mark.parametrize(("encoder", "bidirectional"), ENCODERS)
def test_a_batch_of_no_texts_gives_empty_outputs(encoder, bidirectional):
    model = CMOWModel(tiny_config(encoder=encoder, bidirectional=bidirectional, embedding_size=6))
    no_texts = torch.zeros(0, SEQ, dtype=torch.long)
    for token_states in (True, False):
        assert model(no_texts, output_token_states=token_states).pooler_output.shape == (0, 6)
    assert CMOWForSequenceClassification(tiny_config(num_labels=2))(no_texts).logits.shape == (0, 2)


# --- initialisation, saving, loading --------------------------------------------------------------------------------


def test_token_matrices_start_as_identity_plus_noise_and_padding_is_exact_identity():
    config = tiny_config(matrix_size=20, initializer_range=0.01, vocab_size=999)
    table = CMOWModel(config).encoder.cmow_embeddings.weight.view(-1, 20, 20)
    noise = table - torch.eye(20)
    assert torch.equal(table[PAD], torch.eye(20))
    assert abs(noise[1:].std().item() - 0.01) < 1e-3 and abs(noise[1:].mean().item()) < 1e-3


def test_the_pooler_maps_pooled_features_to_the_sentence_embedding_and_heads_read_the_features():
    model = CMOWModel(tiny_config(embedding_size=13)).eval()
    input_ids = random_ids()
    output = model(input_ids)
    assert output.pooled_features.shape == (BATCH, model.config.hidden_size)
    assert output.pooler_output.shape == (BATCH, 13) == (BATCH, model.config.sentence_embedding_size)
    torch.testing.assert_close(output.pooler_output, model.pooler.dense(output.pooled_features), rtol=0, atol=0)
    pooled_only = model(input_ids, output_token_states=False).pooled_features
    torch.testing.assert_close(model.pooled_features(input_ids), pooled_only, rtol=0, atol=0)
    no_pooler = CMOWModel(tiny_config()).eval()
    assert no_pooler.pooler is None and no_pooler.config.sentence_embedding_size == no_pooler.config.hidden_size
    assert torch.equal(no_pooler(input_ids).pooler_output, no_pooler(input_ids).pooled_features)
    classifier = CMOWForSequenceClassification(tiny_config(embedding_size=13, classifier="linear")).eval()
    features = classifier.cmow.pooled_features(input_ids)
    torch.testing.assert_close(classifier(input_ids).logits, classifier.classifier(features), rtol=0, atol=0)


def test_the_pooler_survives_save_and_load(tmp_path):
    model = CMOWModel(tiny_config(embedding_size=13)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.embedding_size == 13
    input_ids = random_ids()
    torch.testing.assert_close(loaded(input_ids).pooler_output, model(input_ids).pooler_output, rtol=0, atol=0)


def test_save_and_load_give_identical_outputs_with_safetensors_and_code(tmp_path):
    model = CMOWForSequenceClassification(tiny_config(num_labels=3, pair_encoding="diffcat")).eval()
    model.save_pretrained(tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_cmow.py", "configuration_cmow.py"} <= files
    assert not any(name.endswith(".bin") for name in files)
    inputs = pair_batch()
    loaded = CMOWForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_a_folder_without_config_json_is_refused_not_loaded_with_default_sizes(tmp_path):
    CMOWModel(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(OSError, match="has no config.json"):
        CMOWModel.from_pretrained(tmp_path)


def test_auto_classes_load_every_head_from_one_checkpoint(tmp_path):
    model = CMOWForSequenceClassification(tiny_config(num_labels=2)).eval()
    model.save_pretrained(tmp_path)
    input_ids = random_ids()
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, CMOWModel)
    torch.testing.assert_close(base(input_ids).pooler_output, model.cmow(input_ids).pooler_output, rtol=0, atol=0)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(classifier(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)
    masked_lm = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert isinstance(masked_lm, CMOWForMaskedLM)
    torch.testing.assert_close(masked_lm.cmow(input_ids).pooler_output, model.cmow(input_ids).pooler_output)
    # A new head (other labels, pair encoding) is initialised; the loaded token tables are kept.
    reloaded = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=4, pair_encoding="diffcat", ignore_mismatched_sizes=True
    )
    assert reloaded.config.pair_encoding == "diffcat" and reloaded.config.num_labels == 4
    assert torch.equal(reloaded.cmow.encoder.cmow_embeddings.weight, model.cmow.encoder.cmow_embeddings.weight)


REMOTE_CODE_CHECK = """
import importlib.util
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

folder, inputs_file, expected_file = sys.argv[1:]
inputs, expected = torch.load(inputs_file), torch.load(expected_file)
classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
masked_lm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
assert "transformers_modules" in type(classifier).__module__, type(classifier).__module__
with torch.inference_mode():
    assert torch.equal(classifier(**inputs).logits, expected["logits"])
    assert torch.equal(base(inputs["input_ids"]).pooler_output, expected["pooled"])
    assert masked_lm(inputs["input_ids"]).logits.shape[-1] == 99
# The n-gram hash of the shipped code, in this process (another PYTHONHASHSEED), equals the package's.
ngram_bucket_ids = sys.modules[type(base).__module__].ngram_bucket_ids
for order, buckets in expected["ngram_buckets"].items():
    assert torch.equal(ngram_bucket_ids(*expected["hash_inputs"], (order,), 2**20), buckets), order

# The sentence embedding: model.encode (shipped encode.py), the plain forward, pipelines, sentence-transformers.
texts, embeddings = expected["texts"], expected["embeddings"]
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
assert torch.equal(base.encode(texts), embeddings)
torch.testing.assert_close(base(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output, embeddings)
extractor = pipeline("feature-extraction", model=folder, trust_remote_code=True)
torch.testing.assert_close(torch.tensor([extractor(text)[0] for text in texts]), embeddings)
if importlib.util.find_spec("sentence_transformers"):
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    torch.testing.assert_close(st_model.encode(texts, convert_to_tensor=True), embeddings)
print("remote code OK")
"""


def test_remote_code_loads_every_auto_class_embeds_and_hashes_ngrams_alike_without_cmow(
    tiny_tokenizer, tmp_path, torch_path
):
    # With a pooler (embedding_size), as distilled students have, and hashed n-grams: both must travel with the code.
    # The remote process has no compiled kernel; with the torch path here too, the outputs must be identical.
    config = ngram_config(num_labels=3, pair_encoding="diffcat", embedding_size=13)
    model = with_random_ngrams(CMOWForSequenceClassification(config)).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    tiny_tokenizer.save_pretrained(tmp_path / "checkpoint")
    inputs = pair_batch()
    texts = ["w1 w2 w3", "w7", "w5 w5 w9 w11 w2"]
    with torch.inference_mode():
        expected = {
            "logits": model(**inputs).logits,
            "pooled": model.cmow(inputs["input_ids"]).pooler_output,
            "texts": texts,
            "embeddings": model.encode(texts, tokenizer=tiny_tokenizer),
        }
    assert expected["embeddings"].shape == (3, 13)
    # Hashes of n-grams up to order 4, compared with the remote code's in another process.
    expected["hash_inputs"] = hash_inputs()
    expected["ngram_buckets"] = {n: ngram_bucket_ids(*expected["hash_inputs"], (n,), 2**20) for n in (2, 3, 4)}
    assert len(expected["ngram_buckets"][2].unique()) > 20  # not a constant
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.save(expected, tmp_path / "expected.pt")
    files = [str(tmp_path / name) for name in ("checkpoint", "inputs.pt", "expected.pt")]
    result = run_without_cmow(REMOTE_CODE_CHECK, *files, cwd=tmp_path, env={"PYTHONHASHSEED": "12345"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code OK" in result.stdout
