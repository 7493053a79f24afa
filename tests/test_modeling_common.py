"""The standard transformers model expectations, run over every CMOW head (in the spirit of transformers'
``ModelTesterMixin``): the usual forward arguments, tuples, saving, resizing the vocabulary, gradients."""

import pytest
import torch

from cmow import CMOWForMaskedLM, CMOWForSequenceClassification, CMOWModel
from conftest import BATCH, PAD, SEP, SEQ, VOCAB, random_ids, tiny_config

HEADS = {
    "model": lambda: CMOWModel(tiny_config()),
    "model-with-pooler": lambda: CMOWModel(tiny_config(embedding_size=13)),
    "cmow-only": lambda: CMOWModel(tiny_config(encoder="cmow", bidirectional=False)),
    "hashed-ngrams": lambda: CMOWModel(tiny_config(ngram_orders=(2, 3), ngram_buckets=17)),
    "classifier": lambda: CMOWForSequenceClassification(tiny_config(num_labels=3)),
    "classifier-diffcat": lambda: CMOWForSequenceClassification(
        tiny_config(num_labels=3, pair_encoding="diffcat", cls_token_id=2)
    ),
    "masked-lm": lambda: CMOWForMaskedLM(tiny_config()),
}


@pytest.fixture(params=list(HEADS))
def model(request):
    return HEADS[request.param]().eval()


def tokenizer_batch() -> dict:
    """What ``tokenizer(texts_a, texts_b, padding=True, return_tensors="pt")`` gives, with a padded last row."""
    input_ids = random_ids()
    input_ids[:, 3] = SEP
    input_ids[:, -1] = SEP
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = 1
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, 6:], input_ids[-1, 6:], token_type_ids[-1, 6:] = 0, PAD, 0
    input_ids[-1, 5] = SEP
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def main_output(model, output) -> torch.Tensor:
    return output.pooler_output if isinstance(model, CMOWModel) else output.logits


def test_forward_takes_what_the_tokenizer_returns(model):
    output = model(**tokenizer_batch())
    assert main_output(model, output).shape[0] == BATCH
    assert output.hidden_states is None


def test_return_dict_false_gives_the_outputs_tuple(model):
    inputs = tokenizer_batch()
    as_dict = model(**inputs)
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for got, expected in zip(as_tuple, as_dict.to_tuple(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_output_hidden_states_gives_the_per_token_states(model):
    inputs = tokenizer_batch()
    output = model(**inputs, output_hidden_states=True)
    (states,) = output.hidden_states
    assert states.shape == (BATCH, SEQ, model.config.hidden_size)
    base = model.base_model
    expected = base(inputs["input_ids"], inputs["attention_mask"], output_token_states=True).last_hidden_state
    torch.testing.assert_close(states, expected, rtol=0, atol=0)
    # The outputs themselves do not change when hidden states are asked for.
    torch.testing.assert_close(main_output(model, output), main_output(model, model(**inputs)), rtol=1e-5, atol=1e-6)
    # config.output_hidden_states is the default, as in transformers.
    model.config.output_hidden_states = True
    assert model(**inputs).hidden_states[0].shape == states.shape
    assert model(**inputs, output_hidden_states=False).hidden_states is None


def test_attentions_and_input_embeddings_raise_clear_errors(model):
    inputs = tokenizer_batch()
    model(**inputs, output_attentions=False)
    with pytest.raises(ValueError, match="no attention"):
        model(**inputs, output_attentions=True)
    with pytest.raises(ValueError, match="not `inputs_embeds`"):
        model(inputs_embeds=torch.randn(BATCH, SEQ, model.config.hidden_size))


def test_gradient_checkpointing_raises_a_clear_error(model):
    assert not model.supports_gradient_checkpointing
    with pytest.raises(ValueError, match="nothing to checkpoint"):
        model.gradient_checkpointing_enable()


def test_save_and_reload_give_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    inputs = tokenizer_batch()
    torch.testing.assert_close(
        main_output(model, model(**inputs)), main_output(model, reloaded(**inputs)), rtol=0, atol=0
    )


def test_every_parameter_gets_a_gradient(model):
    inputs = tokenizer_batch()
    model.train()
    if isinstance(model, CMOWModel):
        model(**inputs).pooler_output.square().sum().backward()
    else:
        labels = inputs["input_ids"] if isinstance(model, CMOWForMaskedLM) else torch.tensor([0, 2, 1])
        model(**inputs, labels=labels).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_resize_token_embeddings_adds_identity_matrices_and_zero_vectors(model, tmp_path):
    inputs = tokenizer_batch()
    before = main_output(model, model(**inputs))
    pooler = None if model.base_model.pooler is None else model.base_model.pooler.dense.weight.clone()
    table = model.resize_token_embeddings(VOCAB + 5)
    assert model.config.vocab_size == VOCAB + 5 and table.num_embeddings == VOCAB + 5
    encoder = model.base_model.encoder
    for matrices in (encoder.cmow_embeddings, encoder.cmow_bw_embeddings):
        if matrices is not None:
            d = model.config.matrix_size
            assert torch.equal(matrices.weight[VOCAB:], torch.eye(d).flatten().expand(5, -1))
    if encoder.cbow_embeddings is not None:
        assert torch.equal(encoder.cbow_embeddings.weight[VOCAB:], torch.zeros(5, model.config.cbow_size))
    if pooler is not None:
        assert torch.equal(model.base_model.pooler.dense.weight, pooler)
    after = main_output(model, model(**inputs))
    if isinstance(model, CMOWForMaskedLM):
        assert after.shape[-1] == VOCAB + 5
        after = after[..., :VOCAB]
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # A new token is an identity matrix: in a CMOW-only model it leaves the text's encoding unchanged.
    if model.config.encoder == "cmow":
        with_new = inputs["input_ids"].clone()
        with_new[0, 1] = VOCAB + 2
        without = torch.cat([inputs["input_ids"][:1, :1], inputs["input_ids"][:1, 2:]], dim=1)
        torch.testing.assert_close(model(with_new[:1]).pooler_output, model(without).pooler_output)
    model.save_pretrained(tmp_path)
    assert type(model).from_pretrained(tmp_path).config.vocab_size == VOCAB + 5
    model.resize_token_embeddings(VOCAB - 9, pad_to_multiple_of=8)
    assert model.config.vocab_size == 96 and model.get_input_embeddings().weight.shape[0] == 96
