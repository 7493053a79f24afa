"""MoEBERT students: the config, the mixture-of-experts FFN, hash routing, conversion from a dense BERT, saving."""

import math

import pytest
import torch
from datasets import Dataset
from torch.nn import functional as F
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from cmow import MoEBertConfig, MoEBertForSequenceClassification, MoEBertModel, ffn_importance, moe_from_dense
from cmow.modeling_moebert import MoEFeedForward, hash_routes
from cmow.moe import active_parameters, expert_neurons
from conftest import BATCH, PAD, SEQ, VOCAB, random_ids, run_without_cmow

HIDDEN, HEADS, INTERMEDIATE, LAYERS, LABELS = 12, 3, 14, 2, 3
EXPERTS, EXPERT_SIZE, SHARED = 3, 6, 2  # 2 shared + 3 experts x 4 unique = all 14 neurons


def bert_settings(**overrides) -> dict:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        max_position_embeddings=17,
        num_labels=LABELS,
        initializer_range=0.3,  # large enough that every FFN neuron visibly changes the logits
    )
    return settings | overrides


def tiny_moe_config(**overrides) -> MoEBertConfig:
    settings = dict(num_experts=EXPERTS, expert_size=EXPERT_SIZE, shared_size=SHARED)
    return MoEBertConfig(**bert_settings(**settings | overrides))


def dense_teacher(**overrides) -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(**bert_settings(**overrides))).eval()


def labelled_batch(generator_seed: int = 0) -> dict:
    """A tokenizer-shaped batch with a padded last row, and class labels."""
    input_ids = random_ids(generator_seed=generator_seed)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, 5:], input_ids[-1, 5:] = 0, PAD
    labels = torch.tensor([0, 2, 1])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def inputs_of(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


# --- config ----------------------------------------------------------------------------------------------------------


def test_config_defaults_fit_the_ffn_and_survive_saving(tmp_path):
    base = MoEBertConfig()  # BERT-base sizes: 4 experts of half the FFN, sharing what makes them fit
    assert (base.num_experts, base.expert_size, base.shared_size, base.routing) == (4, 1536, 1024, "hash")
    assert base.shared_size + base.num_experts * base.unique_size == base.intermediate_size
    config = MoEBertConfig(**bert_settings(num_experts=3, expert_size=6))
    assert config.shared_size == 3  # a quarter of 14 rounds down to 3, and 3 + 3 * 3 <= 14
    config.save_pretrained(tmp_path)
    loaded = MoEBertConfig.from_pretrained(tmp_path)
    for name in ("num_experts", "expert_size", "shared_size", "routing", "hash_seed", "intermediate_size"):
        assert getattr(loaded, name) == getattr(config, name), name
    assert loaded.auto_map["AutoModelForSequenceClassification"] == "modeling_moebert.MoEBertForSequenceClassification"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"routing": "top2"}, "'hash', 'gate'"),
        ({"num_experts": 0}, "num_experts"),
        ({"expert_size": 15}, "intermediate_size=14"),
        ({"shared_size": 7}, "expert_size=6"),
        ({"shared_size": -1}, "shared_size"),
        ({"shared_size": 1}, "at least 2"),  # 1 + 3 x 5 = 16 neurons > 14
        ({"hash_seed": "seven"}, "hash_seed"),
    ],
)
def test_config_rejects_invalid_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_moe_config(**overrides)


# --- the mixture-of-experts FFN -------------------------------------------------------------------------------------


def naive_moe(ffn: MoEFeedForward, hidden_states: torch.Tensor, routes: torch.Tensor | None) -> torch.Tensor:
    """The FFN block one token at a time: ``LayerNorm(x + scale * expert(x))`` with the expert chosen per token."""
    tokens = hidden_states.reshape(-1, HIDDEN)
    routes = routes.reshape(-1).tolist() if routes is not None else [None] * len(tokens)
    outputs = []
    for x, route in zip(tokens, routes, strict=True):
        scale = 1.0
        if ffn.gate is not None:
            probabilities = F.softmax(ffn.gate.weight @ x, dim=-1)
            route = int(probabilities.argmax())
            scale = probabilities[route]
        neurons = F.gelu(ffn.fc1_weight[route] @ x + ffn.fc1_bias[route])
        expert = ffn.fc2_weight[route] @ neurons + ffn.fc2_bias
        outputs.append(ffn.LayerNorm(x + scale * expert))
    return torch.stack(outputs).view_as(hidden_states)


@pytest.mark.parametrize("routing", ["hash", "gate"])
def test_each_token_goes_through_one_expert(routing):
    model = MoEBertModel(tiny_moe_config(routing=routing)).eval()
    ffn = model.encoder.layer[0].ffn
    hidden_states = torch.randn(BATCH, SEQ, HIDDEN)
    routes = torch.randint(0, EXPERTS, (BATCH, SEQ)) if routing == "hash" else None
    torch.testing.assert_close(ffn(hidden_states, routes), naive_moe(ffn, hidden_states, routes))
    if routing == "gate":  # the gate is not constant: several experts are in use
        assert len(ffn.gate(hidden_states).argmax(-1).unique()) > 1


def test_gate_gets_gradients_through_the_probability_scale():
    model = MoEBertForSequenceClassification(tiny_moe_config(routing="gate"))
    model(**labelled_batch()).loss.backward()
    for layer in model.bert.encoder.layer:
        assert layer.ffn.gate.weight.grad is not None and layer.ffn.gate.weight.grad.abs().sum() > 0


def test_standard_outputs_tuples_and_attentions():
    model = MoEBertForSequenceClassification(tiny_moe_config(attn_implementation="eager")).eval()
    batch = inputs_of(labelled_batch())
    output = model(**batch, output_attentions=True, output_hidden_states=True)
    assert output.logits.shape == (BATCH, LABELS) and output.loss is None
    assert len(output.hidden_states) == LAYERS + 1 and output.hidden_states[-1].shape == (BATCH, SEQ, HIDDEN)
    assert [attentions.shape for attentions in output.attentions] == [(BATCH, HEADS, SEQ, SEQ)] * LAYERS
    assert output.attentions[0][-1, :, :, 5:].abs().max() == 0  # the padded positions get no attention
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.logits)


# --- hash routing ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_experts", [3, 4])
def test_hash_table_is_balanced_deterministic_and_seeded(num_experts):
    config = tiny_moe_config(num_experts=num_experts, expert_size=3, shared_size=0)
    torch.manual_seed(1)
    first = MoEBertModel(config).router.expert_of_token
    torch.manual_seed(2)  # the table depends on hash_seed only, not on the global generator
    second = MoEBertModel(config).router.expert_of_token
    assert first.shape == (VOCAB,) and first.dtype == torch.long
    assert torch.equal(first, second)
    assert torch.equal(first, hash_routes(VOCAB, num_experts, seed=0))
    counts = torch.bincount(first, minlength=num_experts)
    assert len(counts) == num_experts and counts.max() - counts.min() <= 1
    other_seed = MoEBertModel(tiny_moe_config(num_experts=num_experts, expert_size=3, shared_size=0, hash_seed=1))
    assert not torch.equal(other_seed.router.expert_of_token, first)


def test_every_layer_routes_each_token_by_its_id():
    model = MoEBertForSequenceClassification(tiny_moe_config()).eval()
    seen = []
    for layer in model.bert.encoder.layer:
        layer.ffn.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    batch = labelled_batch()
    model(**inputs_of(batch))
    assert len(seen) == LAYERS
    for routes in seen:
        assert torch.equal(routes, model.bert.router.expert_of_token[batch["input_ids"]])


def test_hash_table_is_saved_with_the_weights(tmp_path):
    model = MoEBertForSequenceClassification(tiny_moe_config())
    table = torch.arange(VOCAB) % 2  # not the seed's table: loading must read it back, not rebuild it
    model.bert.router.expert_of_token.copy_(table)
    model.save_pretrained(tmp_path)
    assert torch.equal(MoEBertForSequenceClassification.from_pretrained(tmp_path).bert.router.expert_of_token, table)


def test_hash_routing_needs_input_ids():
    model = MoEBertModel(tiny_moe_config())
    with pytest.raises(ValueError, match="routing='gate'"):
        model(inputs_embeds=torch.randn(BATCH, SEQ, HIDDEN))
    gated = MoEBertModel(tiny_moe_config(routing="gate"))
    assert gated(inputs_embeds=torch.randn(BATCH, SEQ, HIDDEN)).last_hidden_state.shape == (BATCH, SEQ, HIDDEN)


# --- importance and conversion --------------------------------------------------------------------------------------


def neuron_scales_importance(model, batches) -> torch.Tensor:
    """The Taylor score by another route: the loss's derivative with respect to a scale on each neuron's weights.

    Scaling row j of W1 by ``s_j`` and column j of W2 by ``t_j`` gives ``dL/ds_j = sum_k W1[j, k] dL/dW1[j, k]`` and
    ``dL/dt_j = sum_i W2[i, j] dL/dW2[i, j]`` at ``s = t = 1``.
    """
    layer = model.bert.encoder.layer[0]
    w1, w2 = layer.intermediate.dense.weight, layer.output.dense.weight
    total = torch.zeros(INTERMEDIATE)
    for batch in batches:
        s, t = torch.ones(INTERMEDIATE, requires_grad=True), torch.ones(INTERMEDIATE, requires_grad=True)
        scaled = {
            "bert.encoder.layer.0.intermediate.dense.weight": s[:, None] * w1,
            "bert.encoder.layer.0.output.dense.weight": w2 * t[None, :],
        }
        loss = torch.func.functional_call(model, scaled, kwargs=batch).loss
        ds, dt = torch.autograd.grad(loss, (s, t))
        total += (ds + dt).abs()
    return total


def test_importance_is_the_first_order_taylor_score_of_each_neuron():
    model = dense_teacher(num_hidden_layers=1)
    batches = [labelled_batch(0), labelled_batch(1)]
    expected = neuron_scales_importance(model, batches)
    # What ffn_importance must leave alone: gradients, frozen weights, train mode.
    w1 = model.bert.encoder.layer[0].intermediate.dense.weight
    w1.requires_grad_(False)
    marker = torch.full_like(model.classifier.weight, 7.0)
    model.classifier.weight.grad = marker.clone()
    model.train()
    (scores,) = ffn_importance(model, iter(batches))
    torch.testing.assert_close(scores, expected)
    assert scores.shape == (INTERMEDIATE,) and (scores > 0).all()
    assert model.training and not w1.requires_grad and w1.grad is None
    assert torch.equal(model.classifier.weight.grad, marker)


def test_importance_needs_labelled_batches():
    model = dense_teacher()
    with pytest.raises(ValueError, match="empty"):
        ffn_importance(model, [])
    with pytest.raises(ValueError, match="labels"):
        ffn_importance(model, [inputs_of(labelled_batch())])


def ranked_importance() -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the 14 neurons and the neurons from most to least important."""
    ranking = torch.tensor([9, 2, 13, 0, 7, 4, 11, 1, 5, 12, 3, 8, 10, 6])
    importance = torch.empty(INTERMEDIATE)
    importance[ranking] = torch.arange(INTERMEDIATE, 0, -1, dtype=torch.float)
    return importance, ranking


@pytest.mark.parametrize(
    ("expert_size", "by_rank"),
    [
        # Shared ranks 0, 1; expert i adds ranks 2 + i, 5 + i, 8 + i, 11 + i.
        (6, [[0, 1, 2, 5, 8, 11], [0, 1, 3, 6, 9, 12], [0, 1, 4, 7, 10, 13]]),
        # The same slices, cut to 5 neurons.
        (5, [[0, 1, 2, 5, 8], [0, 1, 3, 6, 9], [0, 1, 4, 7, 10]]),
    ],
)
def test_experts_hold_the_shared_top_neurons_and_a_slice_of_the_rest(expert_size, by_rank):
    importance, ranking = ranked_importance()
    neurons = expert_neurons(importance, EXPERTS, expert_size, SHARED)
    assert torch.equal(neurons, ranking[torch.tensor(by_rank)])


def test_conversion_copies_the_dense_weights_of_each_experts_neurons():
    teacher = dense_teacher()
    importance = [ranked_importance()[0], torch.randn(INTERMEDIATE)]
    student = moe_from_dense(teacher, importance, EXPERTS, EXPERT_SIZE, SHARED)
    assert isinstance(student, MoEBertForSequenceClassification) and not student.training
    assert student.config.num_labels == LABELS and student.config.hidden_size == HIDDEN
    dense_weights = teacher.state_dict()
    for name, value in student.state_dict().items():  # embeddings, attention, pooler, classifier: copied exactly
        if ".ffn." not in name and "router" not in name:
            assert torch.equal(value, dense_weights[name]), name
    for scores, dense, moe in zip(importance, teacher.bert.encoder.layer, student.bert.encoder.layer, strict=True):
        neurons = expert_neurons(scores, EXPERTS, EXPERT_SIZE, SHARED)
        w1, b1 = dense.intermediate.dense.weight, dense.intermediate.dense.bias
        w2 = dense.output.dense.weight
        for expert in range(EXPERTS):
            for position, neuron in enumerate(neurons[expert].tolist()):
                assert torch.equal(moe.ffn.fc1_weight[expert, position], w1[neuron])
                assert torch.equal(moe.ffn.fc1_bias[expert, position], b1[neuron])
                assert torch.equal(moe.ffn.fc2_weight[expert, :, position], w2[:, neuron])
        assert torch.equal(moe.ffn.fc2_bias, dense.output.dense.bias)
        assert torch.equal(moe.ffn.LayerNorm.weight, dense.output.LayerNorm.weight)


def test_experts_holding_every_neuron_compute_the_dense_model():
    teacher = dense_teacher()
    batch = inputs_of(labelled_batch())
    importance = [torch.randn(INTERMEDIATE) for _ in range(LAYERS)]
    student = moe_from_dense(teacher, importance, EXPERTS, INTERMEDIATE, INTERMEDIATE)
    with torch.inference_mode():
        expected, got = teacher(**batch, output_hidden_states=True), student(**batch, output_hidden_states=True)
    torch.testing.assert_close(got.logits, expected.logits)
    real = batch["attention_mask"].bool()  # padding positions skip the experts, so only real ones must agree
    assert not real.all()
    for got_states, expected_states in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(got_states[real], expected_states[real])


def test_gated_experts_holding_every_neuron_scale_the_dense_ffn_by_the_gate_probability():
    teacher = dense_teacher()
    importance = [torch.randn(INTERMEDIATE) for _ in range(LAYERS)]
    student = moe_from_dense(teacher, importance, EXPERTS, INTERMEDIATE, INTERMEDIATE, routing="gate")
    dense, moe = teacher.bert.encoder.layer[0], student.bert.encoder.layer[0]
    x = torch.randn(BATCH, SEQ, HIDDEN)
    with torch.inference_mode():
        probability = moe.ffn.gate(x).softmax(-1).amax(-1, keepdim=True)  # (batch, seq, 1)
        ffn = dense.output.dense(dense.intermediate(x))
        expected = dense.output.LayerNorm(x + probability * ffn)
        torch.testing.assert_close(moe.ffn(x), expected)


def test_conversion_rejects_what_it_cannot_convert():
    teacher = dense_teacher()
    with pytest.raises(ValueError, match="one tensor per layer"):
        moe_from_dense(teacher, [torch.randn(INTERMEDIATE)], EXPERTS, EXPERT_SIZE, SHARED)
    with pytest.raises(ValueError, match="BertForSequenceClassification"):
        moe_from_dense(teacher.bert, [torch.randn(INTERMEDIATE)] * LAYERS, EXPERTS, EXPERT_SIZE, SHARED)


@pytest.mark.parametrize("routing", ["hash", "gate"])
def test_active_parameters_count_one_expert_per_layer(routing):
    model = MoEBertForSequenceClassification(tiny_moe_config(routing=routing))
    one_expert = EXPERT_SIZE * HIDDEN + EXPERT_SIZE + HIDDEN * EXPERT_SIZE  # fc1 weight and bias, fc2 weight: 150
    unused = LAYERS * (EXPERTS - 1) * one_expert
    assert active_parameters(model) == model.num_parameters() - unused
    assert active_parameters(model.bert) == model.bert.num_parameters() - unused
    single = MoEBertForSequenceClassification(tiny_moe_config(num_experts=1, expert_size=EXPERT_SIZE, shared_size=0))
    assert active_parameters(single) == single.num_parameters()
    assert active_parameters(dense_teacher()) == dense_teacher().num_parameters()


# --- saving, remote code, training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("routing", ["hash", "gate"])
def test_save_and_load_give_the_same_model(tmp_path, routing):
    model = MoEBertForSequenceClassification(tiny_moe_config(routing=routing, hash_seed=5)).eval()
    model.save_pretrained(tmp_path)
    assert {"configuration_moebert.py", "modeling_moebert.py"} <= {path.name for path in tmp_path.iterdir()}
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is MoEBertForSequenceClassification
    batch = inputs_of(labelled_batch())
    with torch.inference_mode():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    if routing == "hash":
        assert torch.equal(loaded.bert.router.expert_of_token, hash_routes(VOCAB, EXPERTS, seed=5))


REMOTE_CODE_CHECK = """
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

folder, inputs_file, expected_file = sys.argv[1:]
inputs, expected = torch.load(inputs_file), torch.load(expected_file)
classifier = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert "transformers_modules" in type(classifier).__module__, type(classifier).__module__
with torch.inference_mode():
    torch.testing.assert_close(classifier(**inputs).logits, expected["logits"])
    torch.testing.assert_close(base(**inputs).pooler_output, expected["pooled"])
assert torch.equal(classifier.bert.router.expert_of_token, expected["table"])
# The shipped code builds the same table from the seed in this process.
hash_routes = sys.modules[type(classifier).__module__].hash_routes
assert torch.equal(hash_routes(99, 3, 5), expected["table"])
print("remote code OK")
"""


def test_remote_code_loads_without_cmow(tmp_path):
    model = moe_from_dense(dense_teacher(), [torch.randn(INTERMEDIATE)] * LAYERS, EXPERTS, 5, SHARED, hash_seed=5)
    model.save_pretrained(tmp_path / "checkpoint")
    inputs = inputs_of(labelled_batch())
    with torch.inference_mode():
        expected = {
            "logits": model(**inputs).logits,
            "pooled": model.bert(**inputs).pooler_output,
            "table": model.bert.router.expert_of_token,
        }
    torch.save(inputs, tmp_path / "inputs.pt")
    torch.save(expected, tmp_path / "expected.pt")
    files = [str(tmp_path / name) for name in ("checkpoint", "inputs.pt", "expected.pt")]
    result = run_without_cmow(REMOTE_CODE_CHECK, *files, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code OK" in result.stdout


@pytest.mark.parametrize("routing", ["hash", "gate"])
def test_trainer_trains_a_converted_student(tmp_path, routing):
    teacher = dense_teacher()
    importance = ffn_importance(teacher, [labelled_batch(0)])
    student = moe_from_dense(teacher, importance, EXPERTS, EXPERT_SIZE, SHARED, routing=routing)
    ids = random_ids(batch=12, seq=6, generator_seed=3)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % LABELS).tolist()})
    before = student.bert.encoder.layer[0].ffn.fc1_weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        learning_rate=0.01,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    result = Trainer(model=student, args=args, train_dataset=data).train()
    assert math.isfinite(result.training_loss)
    assert not torch.equal(student.bert.encoder.layer[0].ffn.fc1_weight, before)
