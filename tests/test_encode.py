import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from cmow import CMOWModel, encode
from cmow.encode import _token_ids, pad_batch
from conftest import tiny_config

TEXTS = [
    "a charming and often affecting journey.",
    "bleak",
    "the film is strictly routine, and the acting is no better than the script, which is saying little.",
    "it 's a cool event for the whole family .",
    "unflinchingly bleak and desperate",
]


@pytest.fixture
def model(tokenizer):
    config = tiny_config(vocab_size=tokenizer.vocab_size, sep_token_id=tokenizer.sep_token_id, initializer_range=0.3)
    return CMOWModel(config).eval()


def test_encode_equals_the_models_forward_on_a_tokenizer_padded_batch(model, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).pooler_output
    for batch_size in (1, 2, 256):
        torch.testing.assert_close(encode(model, tokenizer, TEXTS, batch_size=batch_size), expected)


def test_encode_keeps_input_order_across_chunks(model, tokenizer, monkeypatch):
    monkeypatch.setattr(sys.modules["cmow.encode"], "CHUNK_BATCHES", 1)
    texts = TEXTS * 3
    singles = torch.cat([encode(model, tokenizer, [text]) for text in texts])
    torch.testing.assert_close(encode(model, tokenizer, texts, batch_size=2), singles)


def test_encode_does_not_truncate_and_restores_the_tokenizer_state(model, tokenizer):
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=8)
    backend.enable_padding(length=16)
    long_text = " ".join(["word"] * 50)
    try:
        ids = tokenizer.backend_tokenizer.encode(long_text).ids
        assert len(ids) == 16
        encoded = encode(model, tokenizer, [long_text])
        assert backend.truncation["max_length"] == 8 and backend.padding["length"] == 16
    finally:
        backend.no_truncation()
        backend.no_padding()
    full = tokenizer([long_text], return_tensors="pt")
    assert full["input_ids"].shape[1] == 52
    with torch.no_grad():
        torch.testing.assert_close(encoded, model(full["input_ids"]).pooler_output)


def test_token_ids_follow_tokens_added_after_the_first_call(teacher_path):
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)  # its own: the session's tokenizer stays as it is
    backend = tokenizer.backend_tokenizer
    texts = ["a zorblatt of a film", " ".join(["word"] * 200), "[FILM] of zorblatt"]
    expected = tokenizer(texts)["input_ids"]  # this call switches the backend's padding and truncation off
    backend.enable_truncation(max_length=8)  # so that _token_ids uses an unpadded copy of the backend
    assert _token_ids(tokenizer, texts) == expected
    tokenizer.add_tokens(["zorblatt"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["[FILM]"]})
    expected = tokenizer(texts)["input_ids"]
    backend.enable_truncation(max_length=8)
    ids = _token_ids(tokenizer, texts)
    assert ids == expected and len(ids[1]) == 202 and backend.truncation["max_length"] == 8
    assert tokenizer.convert_tokens_to_ids("zorblatt") in ids[0]
    assert tokenizer.convert_tokens_to_ids("[FILM]") in ids[2]


def test_token_ids_of_a_backend_that_cannot_be_copied(teacher_path):
    from tokenizers import pre_tokenizers

    class Whitespace:  # a custom Python pre-tokenizer: the backend can no longer be serialised
        def pre_tokenize(self, text):
            text.split(lambda _, piece: piece.split(" ", "removed"))

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(Whitespace())
    texts = ["a charming journey", " ".join(["word"] * 200)]
    expected = tokenizer(texts)["input_ids"]
    tokenizer.backend_tokenizer.enable_truncation(max_length=8)
    assert _token_ids(tokenizer, texts) == expected and len(expected[1]) == 202


def test_pad_batch_right_pads_with_the_pad_id():
    input_ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_token_id=1)
    assert input_ids.tolist() == [[5, 6, 7], [8, 1, 1], [9, 10, 1]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    input_ids, mask = pad_batch([[5, 6, 7]], pad_token_id=1)  # one text: nothing padded, no mask
    assert input_ids.tolist() == [[5, 6, 7]] and input_ids.dtype == torch.int64 and mask is None


def test_bad_inputs_raise_clear_errors(model, tokenizer):
    with pytest.raises(TypeError, match="list of strings"):
        encode(model, tokenizer, "one text")
    with pytest.raises(ValueError, match="Text 1 is empty"):
        encode(model, tokenizer, ["fine", "  "])
    with pytest.raises(ValueError, match="batch_size"):
        encode(model, tokenizer, ["fine"], batch_size=0)
    with pytest.raises(TypeError, match="list of strings; got int"):
        encode(model, tokenizer, 3)
    for invisible in ("\u200b", "\x00", "\u200b\x00 "):
        with pytest.raises(ValueError, match=r"Text 2 .* no tokens besides the special ones"):
            encode(model, tokenizer, ["fine", "also fine", invisible])


def test_encode_takes_any_iterable_of_texts(model, tokenizer):
    torch.testing.assert_close(encode(model, tokenizer, (text for text in TEXTS)), encode(model, tokenizer, TEXTS))


def test_encode_runs_in_eval_mode_and_restores_the_mode(tokenizer):
    config = tiny_config(vocab_size=tokenizer.vocab_size, sep_token_id=tokenizer.sep_token_id, hidden_dropout_prob=0.5)
    model = CMOWModel(config).train()  # as freshly built or just trained: dropout active
    first, second = encode(model, tokenizer, TEXTS), encode(model, tokenizer, TEXTS)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert model.training and model.encoder.dropout.training
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(batch["input_ids"], batch["attention_mask"]).pooler_output
    torch.testing.assert_close(first, expected)


def test_encode_returns_a_normal_tensor_that_autograd_can_use(model, tokenizer):
    embeddings = encode(model, tokenizer, TEXTS, batch_size=2)
    assert not embeddings.is_inference()
    weights = torch.randn(embeddings.shape[1], 2, requires_grad=True)
    (embeddings @ weights).sum().backward()  # an inference tensor could not be saved for backward
    assert weights.grad is not None


def test_encode_refuses_a_tokenizer_with_ids_beyond_the_vocabulary(tokenizer):
    small = CMOWModel(tiny_config(vocab_size=50)).eval()
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        encode(small, tokenizer, TEXTS)


# --- every user path gives the same vector ---------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tokenizer, tmp_path) -> Path:
    """A saved model with a pooler (so pooler_output differs from the pooled features) and its tokenizer."""
    config = tiny_config(
        vocab_size=len(tokenizer),
        sep_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id,
        embedding_size=13,
    )
    CMOWModel(config).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    return tmp_path / "checkpoint"


def test_model_encode_finds_the_saved_tokenizer_and_equals_cmow_encode(checkpoint, tokenizer):
    model = AutoModel.from_pretrained(checkpoint).eval()
    expected = encode(model, tokenizer, TEXTS)
    assert expected.shape == (len(TEXTS), 13)
    torch.testing.assert_close(model.encode(TEXTS), expected, rtol=0, atol=0)
    torch.testing.assert_close(model.encode(TEXTS, tokenizer=tokenizer, normalize=True), F.normalize(expected))
    # The plain transformers way gives the same vector, without computing per-token states.
    with torch.inference_mode():
        output = model(**tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert output.last_hidden_state is None
    torch.testing.assert_close(output.pooler_output, expected, rtol=1e-5, atol=1e-6)
    # A classifier saved from the same encoder embeds texts the same way.
    classifier = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    torch.testing.assert_close(classifier.encode(TEXTS), expected, rtol=0, atol=0)


def test_model_encode_without_a_saved_tokenizer_says_to_pass_one(checkpoint, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="tokenizer=tokenizer"):
        CMOWModel(tiny_config()).encode(TEXTS)
    model = AutoModel.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(ValueError, match="No tokenizer was saved"):
        AutoModel.from_pretrained(tmp_path / "no-tokenizer").encode(TEXTS)


def test_feature_extraction_pipeline_returns_the_sentence_embedding(checkpoint):
    model = AutoModel.from_pretrained(checkpoint).eval()
    extractor = pipeline("feature-extraction", model=checkpoint)
    features = torch.tensor([extractor(text)[0] for text in TEXTS])
    torch.testing.assert_close(features, model.encode(TEXTS), rtol=1e-5, atol=1e-6)


def test_sentence_transformers_loads_a_checkpoint_and_equals_model_encode(checkpoint):
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="pip install cmow[st]")
    assert {"modules.json", "sentence_bert_config.json"} <= {path.name for path in checkpoint.iterdir()}
    model = AutoModel.from_pretrained(checkpoint).eval()
    texts = [*TEXTS, " ".join(["word"] * 700)]  # longer than the tokenizer's 512: neither truncates
    st_model = sentence_transformers.SentenceTransformer(str(checkpoint), device="cpu")
    assert st_model.get_embedding_dimension() == 13
    embeddings = st_model.encode(texts, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(embeddings, model.encode(texts), rtol=1e-5, atol=1e-6)
