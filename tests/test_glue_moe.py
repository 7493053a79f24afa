"""MoEBERT students on GLUE: layer-wise distillation loss and trainer, and a tiny `cmow glue --student-type moe`."""

import datasets
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding, TrainingArguments

from cmow import moe_from_dense
from cmow.glue.distill_trainer import LayerwiseDistillationTrainer, distillation_loss, hidden_state_loss
from conftest import BATCH, SEQ, WORDS

HIDDEN, HEADS, INTERMEDIATE, LAYERS, LABELS = 12, 3, 14, 2, 3
EXPERTS, EXPERT_SIZE, SHARED = 3, 6, 2  # 2 shared + 3 experts x 4 unique = all 14 neurons

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
    """A two-layer BERT on the 99-token vocabulary, without dropout so student and teacher are deterministic."""
    config = BertConfig(
        vocab_size=99,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        max_position_embeddings=17,
        num_labels=LABELS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.3,
    )
    return BertForSequenceClassification(config).eval()


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
