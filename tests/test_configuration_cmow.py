import pytest

from cmow import CMOWConfig, CMOWModel
from cmow.configuration_cmow import AUTO_MAP


def test_paper_configuration_has_the_papers_embedding_parameter_count():
    # Galke et al. 2022: vocab 30,522, d=20, CBOW 400, bidirectional Hybrid.
    config = CMOWConfig(vocab_size=30522, matrix_size=20, cbow_size=400, encoder="hybrid", bidirectional=True)
    assert config.num_embedding_parameters == 36_626_400
    assert CMOWModel(config).num_parameters() == 36_626_400


@pytest.mark.parametrize(
    ("encoder", "bidirectional", "hidden"),
    [("cbow", False, 5), ("cmow", False, 16), ("cmow", True, 32), ("hybrid", False, 21), ("hybrid", True, 37)],
)
def test_hidden_size_is_derived_from_the_encoder(encoder, bidirectional, hidden):
    config = CMOWConfig(vocab_size=99, matrix_size=4, cbow_size=5, encoder=encoder, bidirectional=bidirectional)
    assert config.hidden_size == hidden
    assert config.num_embedding_parameters == 99 * hidden


def test_ngrams_keep_the_width_and_add_their_table_to_the_parameter_count():
    config = CMOWConfig(vocab_size=99, matrix_size=4, cbow_size=5, ngram_orders=(3, 2), ngram_buckets=17)
    assert config.ngram_orders == [2, 3]
    assert config.hidden_size == 37  # as without n-grams
    assert config.num_embedding_parameters == 99 * 37 + 18 * 5  # 17 buckets and the padding row
    assert CMOWModel(config).num_parameters() == config.num_embedding_parameters


@pytest.mark.parametrize(("pair_encoding", "factor"), [("joint", 1), ("diffcat", 3), ("diffcat_prod", 4)])
def test_classifier_input_size_follows_the_pair_encoding(pair_encoding, factor):
    config = CMOWConfig(vocab_size=99, matrix_size=4, cbow_size=5, pair_encoding=pair_encoding)
    assert config.classifier_input_size == factor * config.hidden_size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder": "lstm"}, "'cmow', 'cbow', 'hybrid'"),
        ({"cbow_pooling": "max"}, "'mean', 'sum'"),
        ({"pair_encoding": "concat"}, "'joint', 'diffcat', 'diffcat_prod'"),
        ({"classifier": "rnn"}, "'linear', 'mlp'"),
        ({"encoder": "cbow", "bidirectional": True}, "needs a matrix encoder"),
        ({"matrix_size": 0}, "matrix_size"),
        ({"vocab_size": -3}, "vocab_size"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"pad_token_id": 99, "vocab_size": 99}, "pad_token_id"),
        ({"initializer_range": -0.1}, "initializer_range"),
        ({"problem_type": "ranking"}, "single_label_classification"),
        ({"ngram_orders": (1, 2)}, "integers >= 2"),
        ({"ngram_orders": (2, 2)}, "distinct"),
        ({"ngram_orders": (2,), "encoder": "cmow"}, "encoder 'cbow' or 'hybrid'"),
        ({"ngram_buckets": 0}, "ngram_buckets"),
    ],
)
def test_invalid_values_raise_and_name_the_allowed_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CMOWConfig(**kwargs)


def test_round_trip_keeps_every_field_and_the_complete_auto_map(tmp_path):
    config = CMOWConfig(vocab_size=99, matrix_size=4, cbow_size=5, encoder="cmow", pair_encoding="diffcat")
    config.save_pretrained(tmp_path)
    loaded = CMOWConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.auto_map == AUTO_MAP


def test_from_tokenizer_takes_the_vocabulary_and_special_ids(tokenizer):
    config = CMOWConfig.from_tokenizer(tokenizer, encoder="cmow", bidirectional=False)
    assert (config.vocab_size, config.pad_token_id, config.sep_token_id) == (
        len(tokenizer),
        tokenizer.pad_token_id,
        tokenizer.sep_token_id,
    )
    assert config.encoder == "cmow" and not config.bidirectional
