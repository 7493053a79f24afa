"""MoEBERT students on GLUE: layer-wise distillation loss and trainer, and a tiny `cmow glue --student-type moe`."""

import json
import shutil

import datasets
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainingArguments,
)

from cmow import MoEBertForSequenceClassification, cli, moe_from_dense
from cmow.glue.distill_trainer import LayerwiseDistillationTrainer, distillation_loss, hidden_state_loss
from cmow.hub import files_to_upload
from cmow.modeling_moebert import hash_routes
from conftest import BATCH, SEQ, WORDS, run_without_cmow
from hub_server import validate_metadata
from test_moe import EXPERT_SIZE, EXPERTS, HEADS, HIDDEN, INTERMEDIATE, LABELS, LAYERS, SHARED, dense_teacher

# --- hidden-state loss -----------------------------------------------------------------------------------------------


def padded_mask() -> torch.Tensor:
    mask = torch.ones(BATCH, SEQ)
    mask[-1, 4:] = 0  # the last row is padded after four tokens
    return mask


def test_hidden_state_loss_is_zero_for_identical_states():
    states = tuple(torch.randn(BATCH, SEQ, 5) for _ in range(LAYERS + 1))
    assert hidden_state_loss(states, states, padded_mask()).item() == 0.0
    assert hidden_state_loss(states, states).item() == 0.0


def test_hidden_state_loss_sums_the_mse_of_each_layer_over_non_pad_positions():
    teacher = tuple(torch.randn(BATCH, SEQ, 5) for _ in range(3))
    mask = padded_mask()
    pads = (1 - mask).unsqueeze(-1)  # (batch, seq, 1)
    # Layer l is off by c_l at every token and by 100 at the padding, which must not count.
    offsets = (0.5, 1.0, 2.0)
    student = tuple(t + c + 100.0 * pads for t, c in zip(teacher, offsets, strict=True))
    assert hidden_state_loss(student, teacher, mask).item() == pytest.approx(0.25 + 1.0 + 4.0, rel=1e-6)
    # Per-unit offsets 1, 2, ..., 5: the MSE is their mean square, 11.
    units = torch.arange(1.0, 6.0)
    assert hidden_state_loss((teacher[0] + units,), (teacher[0],), mask).item() == pytest.approx(11.0, rel=1e-6)
    # Without a mask every position counts: (3 * 7 - 3) positions off by 1, 3 by 101.
    expected = (18 * 1.0 + 3 * 101.0**2) / 21
    assert hidden_state_loss((teacher[0] + 1 + 100 * pads,), (teacher[0],)).item() == pytest.approx(expected)


def test_hidden_state_loss_rejects_a_student_of_another_shape():
    with pytest.raises(ValueError, match="depth and width"):
        hidden_state_loss((torch.zeros(1, 2, 3),) * 2, (torch.zeros(1, 2, 3),) * 3)
    with pytest.raises(ValueError, match="depth and width"):
        hidden_state_loss((torch.zeros(1, 2, 3),), (torch.zeros(1, 2, 4),))


# --- layer-wise distillation trainer ---------------------------------------------------------------------------------


def tiny_teacher() -> BertForSequenceClassification:
    """test_moe's two-layer BERT, without dropout so student and teacher are deterministic."""
    return dense_teacher(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def layerwise_trainer(tiny_tokenizer, tmp_path, student, teacher, distill_weight=5.0):
    texts = [" ".join(WORDS[i : i + 1 + i % 5]) for i in range(0, 40, 4)]  # 10 texts of 1 to 5 words
    data = datasets.Dataset.from_dict({"text": texts, "label": [i % LABELS for i in range(len(texts))]})
    data = data.map(lambda batch: tiny_tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=BATCH, report_to="none", use_cpu=True)
    return LayerwiseDistillationTrainer(
        model=student,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tiny_tokenizer),
        teacher=teacher,
        alpha=0.25,
        temperature=2.0,
        distill_weight=distill_weight,
    )


def importance() -> list[torch.Tensor]:
    return [torch.randn(INTERMEDIATE, generator=torch.Generator().manual_seed(layer)) for layer in range(LAYERS)]


def test_layerwise_loss_is_the_kd_loss_plus_the_weighted_hidden_state_mse(tiny_tokenizer, tmp_path):
    teacher = tiny_teacher()
    student = moe_from_dense(teacher, importance(), EXPERTS, EXPERT_SIZE, SHARED).train()
    trainer = layerwise_trainer(tiny_tokenizer, tmp_path, student, teacher, distill_weight=3.0)
    batch = next(iter(trainer.get_train_dataloader()))
    assert bool((batch["attention_mask"] == 0).any())  # the batch holds padding
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        expected_teacher = teacher(**inputs, output_hidden_states=True)
        expected_student = student(**inputs, output_hidden_states=True)
    kd = distillation_loss(expected_student.logits, expected_teacher.logits, batch["labels"], 0.25, 2.0)
    hidden = hidden_state_loss(expected_student.hidden_states, expected_teacher.hidden_states, batch["attention_mask"])
    assert hidden.item() > 1e-3  # experts of 6 of the 14 neurons change every layer's output
    loss = trainer.compute_loss(student, dict(batch))
    assert loss.item() == pytest.approx(kd.item() + 3.0 * hidden.item(), rel=1e-5)
    # The teacher is frozen: the loss reaches the student only.
    loss.backward()
    assert all(parameter.grad is None for parameter in teacher.parameters())
    assert student.bert.encoder.layer[0].ffn.fc1_weight.grad.abs().sum() > 0


def test_a_student_equal_to_its_teacher_has_no_hidden_state_term(tiny_tokenizer, tmp_path):
    teacher = tiny_teacher()
    # Every expert holds the whole FFN, so the student computes the teacher's function.
    student = moe_from_dense(teacher, importance(), EXPERTS, INTERMEDIATE, INTERMEDIATE).train()
    trainer = layerwise_trainer(tiny_tokenizer, tmp_path, student, teacher, distill_weight=5.0)
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"]
    with torch.no_grad():
        logits = teacher(**{key: value for key, value in batch.items() if key != "labels"}).logits
        loss = trainer.compute_loss(student, dict(batch))
    assert loss.item() == pytest.approx(distillation_loss(logits, logits, labels, 0.25, 2.0).item(), abs=1e-5)


def test_evaluation_batches_use_the_students_own_loss(tiny_tokenizer, tmp_path):
    teacher = tiny_teacher()
    student = moe_from_dense(teacher, importance(), EXPERTS, EXPERT_SIZE, SHARED).eval()
    trainer = layerwise_trainer(tiny_tokenizer, tmp_path, student, teacher)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(student(**batch).loss.item())


def test_layerwise_trainer_rejects_a_negative_weight(tiny_tokenizer, tmp_path):
    teacher = tiny_teacher()
    student = moe_from_dense(teacher, importance(), EXPERTS, EXPERT_SIZE, SHARED)
    with pytest.raises(ValueError, match="distill_weight"):
        layerwise_trainer(tiny_tokenizer, tmp_path, student, teacher, distill_weight=-1.0)


# --- cmow glue --student-type moe, end to end ------------------------------------------------------------------------

TEACHER_FFN, MOE_EXPERTS = 17, 3  # experts of 8 neurons (half of 17), sharing 4 (3 x 4 unique + 4 <= 17)


@pytest.fixture(scope="module")
def moe_run(shared_data, tokenizer, tmp_path_factory):
    """Fine-tune a tiny two-layer BERT teacher on a slice of MRPC, then convert and distil a MoEBERT student."""
    root = tmp_path_factory.mktemp("moe-glue")
    base = root / "tiny-bert"
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=TEACHER_FFN,
    )
    BertForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    common = ["glue", "MRPC", "--output-dir", str(root / "runs"), "--glue-dir", str(shared_data / "glue")]
    common += ["--max-train-samples", "37", "--max-eval-samples", "29", "--teacher-base", str(base)]
    moe = ["--student-type", "moe", "--moe-experts", str(MOE_EXPERTS)]
    moe += ["--moe-importance-examples", "10", "--moe-importance-batch-size", "4"]
    assert cli.main([*common, "--teacher-epochs", "1", *moe, "--student-epochs", "2"]) == 0
    return root, common, moe


def test_moe_student_records_its_experts_importance_and_sizes(moe_run):
    root, _, _ = moe_run
    folder = root / "runs" / "MRPC" / "student-moe"
    record = json.loads((folder / "metrics.json").read_text())
    assert record["train_examples"] == 33 and set(record["metrics"]) == {"accuracy", "f1", "score"}
    assert record["command"].startswith("cmow glue MRPC") and "--student-type moe" in record["command"]
    assert [entry["epoch"] for entry in record["selection"]["epoch_scores"]] == [1, 2]  # held-out after each epoch
    importance = record["moe"].pop("importance")
    assert importance["examples"] == 10 and importance["batches"] == 3 and importance["batch_size"] == 4
    assert record["moe"] == {"num_experts": 3, "expert_size": 8, "shared_size": 4, "routing": "hash", "hash_seed": 42}
    # One expert of each of the two layers is active: fc1 weight and bias, fc2 weight of 8 neurons on 12 units.
    unused = LAYERS * (MOE_EXPERTS - 1) * (8 * HIDDEN + 8 + HIDDEN * 8)
    assert record["active_parameters"] == record["parameters"] - unused < record["parameters"]
    assert record["active_encoder_parameters"] == record["encoder_parameters"] - unused
    settings = record["settings"]
    assert (settings["distill_weight"], settings["lr"], settings["epochs"], settings["alpha"]) == (5.0, 5e-5, 2, 0.5)

    student = AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(student) is MoEBertForSequenceClassification
    config = student.config
    assert (config.num_experts, config.expert_size, config.shared_size, config.routing) == (3, 8, 4, "hash")
    assert (config.intermediate_size, config.hidden_size, config.num_hidden_layers) == (TEACHER_FFN, HIDDEN, LAYERS)
    assert config.teacher == "tiny-bert (local folder)" and config.distillation["importance_examples"] == 10
    assert torch.equal(student.bert.router.expert_of_token, hash_routes(config.vocab_size, 3, 42))
    assert not (folder / "checkpoints").exists()


def test_moe_student_experts_are_the_teachers_neurons(moe_run):
    """With a learning rate of 0 the saved student is the conversion: each expert holds rows of the teacher's FFN."""
    root, common, moe = moe_run
    assert cli.main([*common, *moe, "--student-lr", "0", "--student-epochs", "1", "--student-name", "frozen"]) == 0
    teacher = AutoModelForSequenceClassification.from_pretrained(root / "runs" / "MRPC" / "teacher")
    student = AutoModelForSequenceClassification.from_pretrained(root / "runs" / "MRPC" / "student-frozen")
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    for dense, layer in zip(teacher.bert.encoder.layer, student.bert.encoder.layer, strict=True):
        rows = dense.intermediate.dense.weight  # (17, 12): one row per neuron
        ffn = layer.ffn
        neurons = [[int((rows == row).all(dim=1).nonzero()) for row in expert] for expert in ffn.fc1_weight]
        shared = neurons[0][:4]
        assert all(expert[:4] == shared for expert in neurons)  # the four most important, in every expert
        unique = [set(expert[4:]) for expert in neurons]
        assert set.union(*unique).isdisjoint(shared) and sum(map(len, unique)) == len(set.union(*unique)) == 12
        for expert, (w2, indices) in enumerate(zip(ffn.fc2_weight, neurons, strict=True)):
            assert torch.equal(w2, dense.output.dense.weight[:, indices]), expert


TEXTS = (["He said the deal was done .", "short"], ["It was done , he said .", "x"])  # two pairs
REMOTE_CODE_CHECK = f"""
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEXTS = {TEXTS!r}
folder, expected_file = sys.argv[1:]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
assert "transformers_modules" in type(model).__module__, type(model).__module__
tokenizer = AutoTokenizer.from_pretrained(folder)
inputs = tokenizer(*TEXTS, padding=True, return_tensors="pt")
with torch.inference_mode():
    torch.testing.assert_close(model(**inputs).logits, torch.load(expected_file))
print("remote code OK")
"""


def test_moe_student_loads_without_cmow_with_equal_logits(moe_run):
    root, _, _ = moe_run
    folder = root / "runs" / "MRPC" / "student-moe"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        torch.save(model(**tokenizer(*TEXTS, padding=True, return_tensors="pt")).logits, root / "expected.pt")
    result = run_without_cmow(REMOTE_CODE_CHECK, str(folder), str(root / "expected.pt"), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code OK" in result.stdout


def test_moe_student_card_holds_the_recorded_results_and_no_local_path(moe_run, tmp_path):
    root, _, _ = moe_run
    folder = root / "runs" / "MRPC" / "student-moe"
    record = json.loads((folder / "metrics.json").read_text())
    card = (folder / "README.md").read_text()
    assert validate_metadata(card) == []
    assert ModelCard.load(folder / "README.md").data.eval_results[0].dataset_name == "GLUE MRPC"
    assert "MoEBERT" in card and "| Experts | 3 per layer, 8 neurons each (4 shared by all)" in card
    assert f"| Active parameters per token | {record['active_parameters']:,} " in card
    assert f"| {record['metrics']['accuracy']:.4f} |" in card and f"| {record['metrics']['f1']:.4f} |" in card
    assert f"{record['throughput_examples_per_s']:.0f} vs" in card  # the measured speed, beside the teacher's
    for name in ("config.json", "README.md", "cmow_training.json", "metrics.json"):
        assert str(root) not in (folder / name).read_text(), name
    # cmow push takes the folder: MoEBERT's remote code, weights, tokenizer, card; never the Trainer's pickles.
    names = {path.name for path in files_to_upload(folder)}
    assert {"model.safetensors", "config.json", "configuration_moebert.py", "modeling_moebert.py"} <= names
    assert {"README.md", "tokenizer.json", "tokenizer_config.json", "cmow_training.json"} <= names
    assert not any(name.endswith(".bin") or name == "metrics.json" for name in names)
    # cmow card re-renders it from the record, adding a license.
    copy = tmp_path / "student-moe"
    shutil.copytree(folder, copy)
    assert cli.main(["card", str(copy), "--license", "apache-2.0"]) == 0
    again = ModelCard.load(copy / "README.md")
    assert again.data.license == "apache-2.0" and f"| {record['metrics']['f1']:.4f} |" in again.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--student-type", "moe", "--moe-expert-size", "6", "--moe-shared-size", "9"], "at most expert_size=6"),
        (["--student-type", "moe", "--moe-experts", "4", "--moe-shared-size", "0"], "raise `shared_size` to at least"),
        (["--student-type", "moe", "--moe-distill-weight", "-1"], "--moe-distill-weight must be >= 0"),
        (["--student-type", "moe", "--augment-copies", "2"], "--student-type moe does not use --augment-copies"),
        (["--moe-experts", "2"], "--student-type cmow does not use --moe-experts"),
    ],
)
def test_bad_moe_flags_fail_before_any_training(shared_data, tokenizer, tmp_path, capsys, flags, message):
    base = tmp_path / "tiny-bert"
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=17
    )
    BertForSequenceClassification(config).save_pretrained(base)
    out = tmp_path / "runs"
    command = ["glue", "MRPC", "--output-dir", str(out), "--glue-dir", str(shared_data / "glue")]
    assert cli.main([*command, "--teacher-base", str(base), "--max-train-samples", "37", *flags]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not out.exists()  # no teacher fine-tuned, nothing written
