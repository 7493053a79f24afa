import sys

import pytest
import torch

from cmow import CMOWModel, encode
from cmow.encode import pad_batch
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


def test_pad_batch_right_pads_with_the_pad_id():
    input_ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_token_id=1)
    assert input_ids.tolist() == [[5, 6, 7], [8, 1, 1], [9, 10, 1]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]


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
