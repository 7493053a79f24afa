"""GLUE: distillation loss and trainer, metrics, the local TSV loader and a tiny end-to-end ``cmow glue`` run."""

import json
import math

import datasets
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainingArguments,
)

from cmow import CMOWConfig, CMOWForSequenceClassification, CMOWModel, cli
from cmow.distill.student_tokenizer import train_student_tokenizer
from cmow.glue.data import TASKS, detokenize, get_task, load_glue
from cmow.glue.distill_trainer import GOLD_MASK, TEACHER_LOGITS, DistillationTrainer, distillation_loss
from cmow.glue.metrics import glue_score, majority_baseline, task_metrics
from cmow.glue.report import END, PAPER_ROLE, START, results_table, retention_table, write_report
from cmow.glue.run import (
    DEFAULT_COPIES,
    DEFAULT_NGRAMS,
    GlueRunConfig,
    build_student,
    unused_teacher_settings,
    weights_digest,
)
from cmow.glue.selection import split_held_out
from cmow.hub_cards import DEFAULT_TEACHER_ID, DEFAULT_TEACHER_NAME
from conftest import BATCH, tiny_config

# --- distillation loss ---------------------------------------------------------------------------------------------


def test_kd_loss_is_kl_of_known_distributions():
    # Teacher softmax [0.75, 0.25], student uniform: KL = 0.75 ln(0.75 / 0.5) + 0.25 ln(0.25 / 0.5).
    student, teacher, labels = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distillation_loss(student, teacher, labels, alpha=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_temperature_softens_and_scales_by_t_squared():
    student, teacher, labels = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    # At T = 2 the teacher's logits halve: softmax is [sqrt 3, 1] / (sqrt 3 + 1); the KL term is multiplied by 4.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    loss = distillation_loss(student, teacher, labels, alpha=0.0, temperature=2.0)
    assert loss.item() == pytest.approx(4 * kl, rel=1e-6)


def test_kd_loss_alpha_mixes_cross_entropy_and_kl():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(BATCH, 5, generator=generator), torch.randn(BATCH, 5, generator=generator)
    labels = torch.tensor([4, 0, 2])
    ce = F.cross_entropy(student, labels)
    assert distillation_loss(student, teacher, labels, alpha=1.0, temperature=3.0).item() == pytest.approx(ce.item())
    kl = distillation_loss(student, teacher, labels, alpha=0.0, temperature=3.0)
    mixed = distillation_loss(student, teacher, labels, alpha=0.3, temperature=3.0)
    assert mixed.item() == pytest.approx(0.3 * ce.item() + 0.7 * kl.item(), rel=1e-6)
    assert distillation_loss(teacher, teacher, labels, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_regression_weights_mse_to_gold_and_teacher():
    student, teacher, labels = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.0]]), torch.tensor([0.0, 5.0])
    # gold MSE = (1 + 4) / 2 = 2.5, teacher MSE = (1 + 1) / 2 = 1.
    assert distillation_loss(student, teacher, labels, alpha=0.3).item() == pytest.approx(0.3 * 2.5 + 0.7 * 1.0)


@pytest.mark.parametrize("regression", [False, True])
def test_kd_loss_masks_the_gold_term_of_transfer_examples_only(regression):
    generator = torch.Generator().manual_seed(3)
    width = 1 if regression else 3
    student, teacher = torch.randn(4, width, generator=generator), torch.randn(4, width, generator=generator)
    labels = torch.tensor([0.5, 2.0, 1.0, 4.0]) if regression else torch.tensor([2, 0, 1, 1])
    every = torch.ones(4)
    plain = distillation_loss(student, teacher, labels, alpha=0.3, temperature=2.0)
    assert distillation_loss(student, teacher, labels, 0.3, 2.0, every).item() == pytest.approx(plain.item())
    # Per example: alpha * m_i * gold_i + (1 - alpha) * soft_i, averaged over the whole batch.
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    gold_only = distillation_loss(student, teacher, labels, alpha=1.0, temperature=2.0, gold_mask=every)
    per_example = torch.stack(
        [distillation_loss(student[i : i + 1], teacher[i : i + 1], labels[i : i + 1], 1.0, 2.0) for i in range(4)]
    )
    assert per_example.mean().item() == pytest.approx(gold_only.item(), rel=1e-6)
    soft = distillation_loss(student, teacher, labels, alpha=0.0, temperature=2.0)
    expected = 0.3 * (per_example * mask).sum() / 4 + 0.7 * soft
    masked = distillation_loss(student, teacher, labels, 0.3, 2.0, mask)
    assert masked.item() == pytest.approx(expected.item(), rel=1e-6)
    # A placeholder label of a transfer example changes nothing.
    other_labels = labels.clone()
    other_labels[1] = 3.0 if regression else 2
    assert distillation_loss(student, teacher, other_labels, 0.3, 2.0, mask).item() == pytest.approx(masked.item())


@pytest.mark.parametrize("kwargs", [{"alpha": 1.5}, {"temperature": 0.0}])
def test_kd_loss_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="alpha|temperature"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), **kwargs)


# --- distillation trainer ------------------------------------------------------------------------------------------


def _tiny_distillation_trainer(tokenizer, tmp_path, with_column: bool, teacher=None, gold_mask=None):
    texts = ["a good film", "bad", "the plot is thin but it moves", "fine", "awful acting throughout"]
    data = datasets.Dataset.from_dict({"text": texts, "label": [1, 0, 0, 1, 0]})
    data = data.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    if with_column:
        logits = torch.randn(len(texts), 2, generator=torch.Generator().manual_seed(2))
        data = data.add_column(TEACHER_LOGITS, logits.tolist())
    if gold_mask is not None:
        data = data.add_column(GOLD_MASK, gold_mask)
    student = CMOWForSequenceClassification(tiny_config(vocab_size=len(tokenizer), num_labels=2, sep_token_id=102))
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=BATCH, report_to="none", use_cpu=True)
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        teacher=teacher,
        alpha=0.25,
        temperature=2.0,
    )
    return trainer, student


def test_trainer_keeps_teacher_logits_and_hides_them_from_the_student(tokenizer, tmp_path):
    trainer, student = _tiny_distillation_trainer(tokenizer, tmp_path, with_column=True)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch[TEACHER_LOGITS].shape == (BATCH, 2)
    teacher_logits = batch[TEACHER_LOGITS].clone()
    loss = trainer.compute_loss(student, dict(batch))  # the student's forward has no teacher_logits argument
    inputs = {k: v for k, v in batch.items() if k not in (TEACHER_LOGITS, "labels")}
    expected = distillation_loss(student(**inputs).logits, teacher_logits, batch["labels"], 0.25, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_trainer_passes_the_gold_mask_to_the_loss(tokenizer, tmp_path):
    mask = [1.0, 0.0, 1.0, 0.0, 0.0]
    trainer, student = _tiny_distillation_trainer(tokenizer, tmp_path, with_column=True, gold_mask=mask)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch[GOLD_MASK].shape == (BATCH,)
    inputs = {k: v for k, v in batch.items() if k not in (TEACHER_LOGITS, "labels", GOLD_MASK)}
    expected = distillation_loss(
        student(**inputs).logits, batch[TEACHER_LOGITS], batch["labels"], 0.25, 2.0, batch[GOLD_MASK]
    )
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_trainer_runs_an_online_teacher_without_the_column(tokenizer, tmp_path):
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=17
    )
    teacher = BertForSequenceClassification(config).eval()
    trainer, student = _tiny_distillation_trainer(tokenizer, tmp_path, with_column=False, teacher=teacher)
    batch = next(iter(trainer.get_train_dataloader()))
    assert TEACHER_LOGITS not in batch
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        expected = distillation_loss(student(**inputs).logits, teacher(**inputs).logits, batch["labels"], 0.25, 2.0)
        loss = trainer.compute_loss(student, dict(batch))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# --- metrics -------------------------------------------------------------------------------------------------------


def test_cola_matthews_correlation_by_hand():
    # TP = 1, TN = 2, FP = 0, FN = 1: MCC = (1 * 2 - 0 * 1) / sqrt(1 * 2 * 2 * 3).
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    metrics = task_metrics("CoLA", logits, np.array([1, 1, 0, 0]))
    assert metrics["matthews_correlation"] == pytest.approx(2 / math.sqrt(12))
    assert metrics["score"] == metrics["matthews_correlation"]


def test_mrpc_accuracy_f1_and_their_mean():
    # predictions 1, 0, 0, 0 against 1, 1, 0, 0: accuracy 3/4, precision 1, recall 1/2, F1 2/3.
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    metrics = task_metrics("mrpc", logits, np.array([1, 1, 0, 0]))
    assert metrics == pytest.approx({"accuracy": 0.75, "f1": 2 / 3, "score": (0.75 + 2 / 3) / 2})


def test_stsb_pearson_spearman():
    predictions, labels = np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([2.0, 4.0, 6.0, 9.0])
    metrics = task_metrics("STS-B", predictions, labels)
    assert metrics["spearman"] == pytest.approx(1.0)  # monotonic but not linear
    assert metrics["pearson"] == pytest.approx(np.corrcoef(predictions[:, 0], labels)[0, 1])
    assert metrics["pearson"] < 1.0


def test_accuracy_tasks_and_glue_score():
    logits = np.array([[0.2, 0.5, 0.3], [0.9, 0.0, 0.1], [0.0, 0.1, 0.8]])
    assert task_metrics("MNLI", logits, np.array([1, 0, 0])) == pytest.approx({"accuracy": 2 / 3, "score": 2 / 3})
    assert glue_score({"CoLA": 0.5, "MRPC": 0.8, "RTE": 0.2}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Not GLUE task names"):
        glue_score({"SQuAD": 0.5})
    with pytest.raises(ValueError, match="No task scores"):
        glue_score({})


def test_majority_baseline_answers_the_most_frequent_train_class_on_dev():
    # Train: class 1 three times of five. Dev 1, 1, 0, 0: accuracy 1/2, precision 1/2, recall 1, F1 2/3.
    metrics = majority_baseline("MRPC", np.array([1, 0, 1, 1, 0]), np.array([1, 1, 0, 0]))
    assert metrics == pytest.approx({"accuracy": 0.5, "f1": 2 / 3, "score": (0.5 + 2 / 3) / 2})
    assert majority_baseline("CoLA", np.array([1, 1, 0]), np.array([1, 0, 1]))["score"] == 0.0  # MCC of a constant
    assert majority_baseline("STS-B", np.array([1.0, 4.0]), np.array([2.0, 3.0])) == {
        "pearson": 0.0,
        "spearman": 0.0,
        "score": 0.0,
    }


# --- selection -----------------------------------------------------------------------------------------------------


def test_held_out_slice_is_the_tail_of_the_shuffled_train_set():
    data = datasets.Dataset.from_dict({"text_a": [str(i) for i in range(37)]})
    train, held_out = split_held_out(data, "held-out", 0.1)
    assert (len(train), len(held_out)) == (33, 4)
    assert held_out["text_a"] == ["33", "34", "35", "36"] and not set(train["text_a"]) & set(held_out["text_a"])
    for selection in ("last", "dev"):
        assert split_held_out(data, selection, 0.1) == (data, None)
    with pytest.raises(ValueError, match="'held-out', 'last', 'dev'"):
        split_held_out(data, "test", 0.1)
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_held_out(data, "held-out", 1.0)


# --- report --------------------------------------------------------------------------------------------------------


def _record(task: str, score: float, **extra) -> dict:
    record = {"task": task, "metrics": {"score": score}, "parameters": 2e6, "encoder_parameters": 1e6}
    return record | {"throughput_examples_per_s": 100.0} | extra


def test_report_rows_baselines_retention_and_selection():
    results = {
        "teacher": {"RTE": _record("RTE", 0.6), "CoLA": _record("CoLA", 0.4)},
        "student-random": {
            "RTE": _record("RTE", 0.54, selection={"method": "held-out"}),
            "CoLA": _record("CoLA", 0.1, selection={"method": "held-out"}),
        },
        "student-old": {"RTE": _record("RTE", 0.57)},  # from before the selection option: picked on dev
        "majority": {"RTE": {"task": "RTE", "metrics": {"score": 0.527}}},
    }
    table = results_table(results)
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| majority",
        f"| {PAPER_ROLE}",
        "| teacher",
        "| student-old",
        "| student-random",
    ]
    paper = rows[1].split(" | ")
    assert paper[1:10] == ["16.7", "82.9", "79.7", "76.9", "—", "—", "—", "61.0", "56.3"]
    assert paper[10] == "62.3 (6/9 tasks)"  # the mean of the six scores the paper gives, 62.25
    assert "| 52.7 |" in rows[0] and rows[0].endswith("| — | — | — | — |")
    random_row = rows[4].split(" | ")
    assert random_row[11:13] == ["64%", "held-out"]  # (54 + 10) / (60 + 40)
    assert rows[3].split(" | ")[11:13] == ["95%", "dev"]
    retention = retention_table(results)
    assert "| student-random | 25% | — | — | — | — | — | — | 90% | — |" in retention


# --- local TSV loader ----------------------------------------------------------------------------------------------

# Rows (train, dev) from the shared data README.
ROWS = {
    "CoLA": (8551, 1043),
    "SST-2": (67349, 872),
    "MRPC": (3668, 408),
    "STS-B": (5749, 1500),
    "QQP": (8999, 1000),
    "MNLI": (8999, 1000),
    "QNLI": (8999, 5463),
    "RTE": (2490, 277),
    "WNLI": (635, 71),
}


@pytest.mark.parametrize("name", list(TASKS))
def test_local_tsv_loader(name, shared_data):
    task = TASKS[name]
    data = load_glue(name, shared_data / "glue")
    assert (len(data["train"]), len(data["validation"])) == ROWS[name]
    expected_columns = ["text_a", "text_b", "label"] if task.is_pair else ["text_a", "label"]
    for split in data.values():
        assert split.column_names == expected_columns
        labels = np.array(split["label"])
        if task.is_regression:
            assert split.features["label"].dtype == "float32"
            assert labels.min() == 0.0 and labels.max() == 5.0
        else:
            assert split.features["label"].names == list(task.label_names)
            assert set(labels.tolist()) == set(range(task.num_labels))  # every class occurs
        assert all(text.strip() for text in split["text_a"][:200])


@pytest.mark.parametrize(
    ("tokenized", "raw"),
    [
        (
            "our friends wo n't buy this analysis , let alone the next one",
            "our friends won't buy this analysis, let alone the next one.",
        ),
        ("john 's mother ca n't say ( really ) that i 'm here", "john's mother can't say (really) that i'm here."),
        ("who did you see ?", "who did you see?"),
        ("he said `` go ''", 'he said "go".'),
        ("he said `` go . ''", 'he said "go."'),
        ("the meaning of ` chanson ' , we saw", "the meaning of 'chanson', we saw."),
        ("mary left ( with john . )", "mary left (with john.)"),
        ('He said "go."', 'He said "go."'),
        ("Already raw, with John's own period.", "Already raw, with John's own period."),
    ],
)
def test_detokenize(tokenized, raw):
    assert detokenize(tokenized) == raw
    assert detokenize(raw) == raw


def test_a_tokenized_train_set_is_detokenized_on_request_to_the_form_of_its_raw_dev_set(shared_data):
    """The shared CoLA train file is tokenized ("wo n't", " , ", no final period) where dev is raw text."""
    stored = load_glue("CoLA", shared_data / "glue")
    restored = load_glue("CoLA", shared_data / "glue", detokenize_train=True)
    assert restored["validation"]["text_a"] == stored["validation"]["text_a"]  # evaluation text is never changed
    assert restored["train"]["label"] == stored["train"]["label"]
    assert any(" n't" in text for text in stored["train"]["text_a"])
    assert not any(" n't" in text or " , " in text for text in restored["train"]["text_a"])
    assert all(text.endswith((".", "?", "!")) for text in restored["train"]["text_a"])
    # Tasks whose train and dev share a form stay as stored: SST-2 (both tokenized), RTE (both raw).
    for name in ("SST-2", "RTE"):
        assert (
            load_glue(name, shared_data / "glue")["train"][:50]
            == load_glue(name, shared_data / "glue", detokenize_train=True)["train"][:50]
        )


BAD_ROWS = {
    "a stray tab": ("sentence\tlabel\ngood\t1\tx\nbad\t0\n", r"line 2: 3 tab-separated fields where line 1 has 2"),
    "a later stray tab": ("sentence\tlabel\ngood\t1\nbad\t0\tx\ty\n", r"line 3: 4 tab-separated fields"),
    "a missing label": ("sentence\tlabel\ngood\t1\nbad\t\n", r"line 3: unknown SST-2 label ''"),
    "no label column": ("sentence\tscore\ngood\t1\n", r"lacks the SST-2 columns \['label'\]"),
    "an empty file": ("", "holds no examples"),
    "only a header": ("sentence\tlabel\n", "holds no examples"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_malformed_glue_files_name_the_file_and_line(case, tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\na fine film\t1\n")
    content, message = BAD_ROWS[case]
    (tmp_path / "SST-2" / "dev.tsv").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_glue("SST-2", tmp_path)
    assert str(tmp_path / "SST-2" / "dev.tsv") in str(error.value)


def test_a_non_numeric_sts_b_score_names_the_line(tmp_path):
    (tmp_path / "STS-B").mkdir()
    row = "\t".join(["x"] * 7)
    for name, score in (("train.tsv", "4.5"), ("dev.tsv", "high")):
        header = "\t".join(f"c{i}" for i in range(10))
        (tmp_path / "STS-B" / name).write_text(f"{header}\n{row}\ta\tb\t3.0\n{row}\tc\td\t{score}\n")
    with pytest.raises(ValueError, match=r"dev.tsv, line 3: the STS-B score 'high' is not a number"):
        load_glue("STS-B", tmp_path)


# --- end to end ----------------------------------------------------------------------------------------------------


def _tiny_teacher_base(tokenizer, folder):
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=17
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_teacher_base_with_another_label_set_gets_a_fresh_head(shared_data, tokenizer, tmp_path):
    """A 3-label classifier (an MNLI-like base) fine-tuned on 2-label MRPC: a new head, not a size-mismatch crash."""
    base = tmp_path / "three-labels"
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=17
    )
    BertForSequenceClassification(BertConfig(**config.to_dict(), num_labels=3)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "runs"
    args = ["glue", "MRPC", "--teacher-base", str(base), "--teacher-only", "--teacher-epochs", "1"]
    args += ["--output-dir", str(out), "--glue-dir", str(shared_data / "glue"), "--max-train-samples", "20"]
    assert cli.main([*args, "--max-eval-samples", "10"]) == 0
    teacher = AutoModelForSequenceClassification.from_pretrained(out / "MRPC" / "teacher")
    assert teacher.config.num_labels == 2 and teacher.classifier.out_features == 2


def test_students_get_bigrams_and_regression_tasks_copies_by_default(tiny_tokenizer, tmp_path):
    """The defaults chosen by measurement (docs/glue.md): a classification student with a CBOW bag gets bigrams unless
    its config or checkpoint says otherwise, and no copies; regression (STS-B) 10 augmented copies, no bigrams."""
    small = {"matrix_size": 3, "cbow_size": 5, "ngram_buckets": 31}
    mrpc, stsb = get_task("MRPC"), get_task("STS-B")

    def student(**settings):
        return build_student(GlueRunConfig(task="MRPC", **settings), mrpc, tiny_tokenizer).config

    assert student(student_config=small).ngram_orders == DEFAULT_NGRAMS["classification"]["ngram_orders"] == [2]
    stsb_student = build_student(GlueRunConfig(task="STS-B", student_config=small), stsb, tiny_tokenizer)
    assert stsb_student.config.ngram_orders == [] and not DEFAULT_NGRAMS["regression"]  # copies, not bigrams
    assert student(student_config={**small, "ngram_orders": None}).ngram_orders == []
    assert student(student_config={**small, "ngram_orders": [2, 3]}).ngram_orders == [2, 3]
    assert student(student_config={**small, "encoder": "cmow"}).ngram_orders == []  # no bag to add them to
    plain, trigrams = tmp_path / "plain", tmp_path / "trigrams"
    CMOWModel(CMOWConfig.from_tokenizer(tiny_tokenizer, matrix_size=3, cbow_size=5)).save_pretrained(plain)
    config = CMOWConfig.from_tokenizer(tiny_tokenizer, matrix_size=3, cbow_size=5, ngram_orders=[3], ngram_buckets=7)
    CMOWModel(config).save_pretrained(trigrams)
    assert student(student=str(plain)).ngram_orders == [2]
    kept = student(student=str(trigrams))  # a checkpoint's own n-grams (and trained table) are kept
    assert (kept.ngram_orders, kept.ngram_buckets) == ([3], 7)

    assert GlueRunConfig(task="STS-B").augment_copies == DEFAULT_COPIES["regression"] == 10
    assert GlueRunConfig(task="MRPC").augment_copies == DEFAULT_COPIES["classification"] == 0
    assert GlueRunConfig(task="STS-B", augment_copies=0).augment_copies == 0
    assert GlueRunConfig(task="STS-B", student_type="moe").augment_copies == 0
    assert stsb.num_labels == 1 and mrpc.num_labels == 2


def test_models_of_a_regression_task_start_a_classification_task(shared_data, tokenizer, tmp_path, capsys):
    """STS-B checkpoints (teacher and student) as the start of MRPC: their ``problem_type`` "regression" must not
    survive, or the loss is an MSE of 2 logits against 0/1 labels (a crash)."""
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=17
    )
    teacher_base, student_base = tmp_path / "stsb-teacher", tmp_path / "stsb-student"
    config.num_labels, config.problem_type = 1, "regression"
    BertForSequenceClassification(config).save_pretrained(teacher_base)
    tokenizer.save_pretrained(teacher_base)
    student_config = CMOWConfig.from_tokenizer(
        tokenizer, matrix_size=4, cbow_size=7, num_labels=1, problem_type="regression", pair_encoding="diffcat"
    )
    CMOWForSequenceClassification(student_config).save_pretrained(student_base)
    out = tmp_path / "runs"
    args = ["glue", "MRPC", "--teacher-base", str(teacher_base), "--teacher-epochs", "1", "--student-epochs", "1"]
    args += ["--student", str(student_base), "--student-name", "from-stsb", "--output-dir", str(out)]
    args += ["--glue-dir", str(shared_data / "glue"), "--max-train-samples", "20", "--max-eval-samples", "10"]
    assert cli.main([*args, "--student", str(teacher_base)]) == 2  # a BERT as the student: refused before training
    assert "'bert' model; it must be a CMOW checkpoint" in capsys.readouterr().err
    assert not (out / "MRPC" / "teacher").exists()
    assert cli.main(args) == 0
    for folder in ("teacher", "student-from-stsb"):
        model = AutoModelForSequenceClassification.from_pretrained(out / "MRPC" / folder)
        assert (model.config.num_labels, model.config.problem_type) == (2, "single_label_classification"), folder


def test_unused_teacher_settings_names_only_flags_a_reused_teacher_ignores(tmp_path):
    stored = {
        "role": "teacher",
        "model": "tiny-bert (local folder)",
        "settings": {"epochs": 1.0, "lr": 1e-4, "seed": 7},
    }
    assert unused_teacher_settings(GlueRunConfig(task="MRPC"), stored) == {}  # defaults: plain reuse, no warning
    (tmp_path / "tiny-bert").mkdir()
    base = str(tmp_path / "tiny-bert")  # the same folder the record names
    same = GlueRunConfig(task="MRPC", teacher_lr=1e-4, teacher_epochs=1, teacher_base=base)
    assert unused_teacher_settings(same, stored) == {}
    asked = GlueRunConfig(task="MRPC", teacher_epochs=10, teacher_lr=1e-4, teacher_batch_size=16, teacher_seed=1)
    assert unused_teacher_settings(asked, stored) == {
        "--teacher-epochs": (1.0, 10),
        "--teacher-seed": (7, 1),
    }  # batch size: not in this record, so nothing to compare
    # --seed moves the data split and --teacher-max-length also truncates a reused teacher: not "unused" flags.
    assert unused_teacher_settings(GlueRunConfig(task="MRPC", seed=3, teacher_max_length=64), stored) == {}
    other = GlueRunConfig(task="MRPC", teacher_base="bert-base-uncased")
    assert unused_teacher_settings(other, stored) == {
        "--teacher-base": ("tiny-bert (local folder)", "bert-base-uncased")
    }
    # Records of older cmow versions name the base by its path; the default teacher by its package or Hub id.
    assert unused_teacher_settings(same, stored | {"model": base}) == {}
    default = stored | {"model": DEFAULT_TEACHER_NAME}
    assert unused_teacher_settings(GlueRunConfig(task="MRPC", teacher_base=DEFAULT_TEACHER_ID), default) == {}
    # Recipe flags never applied to a teacher given by --teacher, or copied from one, or to a record without settings.
    assert unused_teacher_settings(GlueRunConfig(task="MRPC", teacher=base, teacher_epochs=10), stored) == {}
    assert unused_teacher_settings(asked, stored | {"copied_from": "tuned (local folder)"}) == {}
    assert unused_teacher_settings(asked, {"role": "teacher", "model": "x"}) == {}
    assert unused_teacher_settings(asked, stored | {"role": "student"}) == {}  # a CMOW student given as --teacher


def test_cmow_glue_end_to_end(shared_data, tokenizer, tmp_path, caplog):
    """Fine-tune a tiny BERT teacher, distil a tiny CMOW student on a slice of MRPC, then reuse the teacher."""
    base = _tiny_teacher_base(tokenizer, tmp_path / "tiny-bert")
    out, report = tmp_path / "runs", tmp_path / "glue.md"
    report.write_text(f"# Results\n\n{START}\nold table\n{END}\n\nMore text.\n")
    common = ["--output-dir", str(out), "--glue-dir", str(shared_data / "glue"), "--max-train-samples", "37"]
    common += ["--max-eval-samples", "29", "--student-epochs", "2", "--report", str(report)]
    common += ["--student-config", '{"matrix_size": 4, "cbow_size": 7, "classifier_hidden_size": 9}']
    assert cli.main(["glue", "MRPC", "--teacher-base", str(base), "--teacher-epochs", "1", *common]) == 0

    teacher_record = json.loads((out / "MRPC" / "teacher" / "metrics.json").read_text())
    record = json.loads((out / "MRPC" / "student-random" / "metrics.json").read_text())
    assert teacher_record["train_examples"] == record["train_examples"] == 33  # 4 of 37 held out for selection
    for r in (teacher_record, record):
        assert set(r["metrics"]) == {"accuracy", "f1", "score"}
        assert r["throughput_examples_per_s"] > 0 and r["parameters"] > r["encoder_parameters"] > 0
        assert r["selection"]["method"] == "held-out" and r["selection"]["eval_examples"] == 4
        epochs = [entry["epoch"] for entry in r["selection"]["epoch_scores"]]
        assert epochs == list(range(1, int(r["settings"]["epochs"]) + 1))  # scored on held-out after every epoch
        assert r["command"].startswith("cmow glue MRPC")
    assert record["transfer"] is None and record["gold_examples"] == 33
    majority = json.loads((out / "MRPC" / "majority" / "metrics.json").read_text())
    assert set(majority["metrics"]) == {"accuracy", "f1", "score"}
    student = AutoModelForSequenceClassification.from_pretrained(out / "MRPC" / "student-random")
    assert student.config.pair_encoding == "diffcat" and student.config.distillation["task"] == "MRPC"
    assert (out / "MRPC" / "student-random" / "README.md").is_file()
    assert student.config.teacher == "tiny-bert (local folder)"
    for name in ("config.json", "README.md", "cmow_training.json", "metrics.json"):
        assert str(tmp_path) not in (out / "MRPC" / "student-random" / name).read_text(), name
    assert "--teacher-base 'tiny-bert (local folder)'" in record["command"]  # the run's command, minus local paths
    assert not (out / "MRPC" / "student-random" / "checkpoints").exists()

    # Second student from the first one's checkpoint: the fine-tuned teacher is reused, not trained again.
    # Its train-set logits, computed once, are reused too.
    mtime = (out / "MRPC" / "teacher" / "model.safetensors").stat().st_mtime
    (logits_file,) = (out / "MRPC" / "teacher").glob("train_logits-*.npy")
    logits_mtime = logits_file.stat().st_mtime
    student_args = ["--student", str(out / "MRPC" / "student-random"), "--student-name", "warm"]
    student_args += ["--teacher-base", str(base), "--teacher-epochs", "1"]  # the teacher's own recipe: no warning
    assert cli.main(["glue", "mrpc", *student_args, *common]) == 0
    assert (out / "MRPC" / "teacher" / "model.safetensors").stat().st_mtime == mtime
    assert list((out / "MRPC" / "teacher").glob("train_logits-*.npy")) == [logits_file]
    assert logits_file.stat().st_mtime == logits_mtime
    assert (out / "MRPC" / "student-warm" / "metrics.json").is_file()
    warm = json.loads((out / "MRPC" / "student-warm" / "metrics.json").read_text())
    assert warm["model"] == "student-random (local folder)" and str(tmp_path) not in json.dumps(warm)
    # A general student with a vocabulary of its own, stored as int8: the student reads its own tokens.
    small = tmp_path / "small-vocab"
    student_tokenizer = train_student_tokenizer(tokenizer, [f"the cat {i} sat on the mat" for i in range(300)], 110)
    CMOWModel(CMOWConfig.from_tokenizer(student_tokenizer, matrix_size=4, cbow_size=7)).save_pretrained(
        small, weight_storage="int8"
    )
    student_tokenizer.save_pretrained(small)
    # A teacher flag the reused teacher was not trained with is named in a warning, not silently dropped.
    assert not [r for r in caplog.records if "only apply to a new teacher" in r.getMessage()]
    small_args = ["--student", str(small), "--student-name", "small", "--teacher-epochs", "2"]
    assert cli.main(["glue", "mrpc", *small_args, *common]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if "only apply to a new teacher" in r.getMessage()]
    assert "trained with --teacher-epochs 1.0; --teacher-epochs 2.0 only apply" in warning
    small_student = AutoModelForSequenceClassification.from_pretrained(out / "MRPC" / "student-small")
    assert small_student.config.vocab_size == 110 and small_student.config.weight_storage == "float"
    saved_tokenizer = AutoTokenizer.from_pretrained(out / "MRPC" / "student-small")
    assert saved_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    # A different teacher never reads those logits.
    teacher = AutoModelForSequenceClassification.from_pretrained(out / "MRPC" / "teacher")
    digest = weights_digest(teacher)
    assert digest in logits_file.name
    with torch.no_grad():
        next(teacher.parameters()).add_(1.0)
    assert weights_digest(teacher) != digest

    text = report.read_text()
    assert text.startswith("# Results") and text.endswith("More text.\n") and "old table" not in text
    assert "| student-warm |" in text and "(1/9 tasks)" in text
    assert "| majority |" in text and f"| {PAPER_ROLE} |" in text and "held-out" in text
    assert "- student-warm: `cmow glue mrpc --student" in text


def test_cmow_glue_with_a_transfer_set_and_ngrams(shared_data, tokenizer, tmp_path):
    """RTE slice: augmented copies and unlabeled pairs labelled by the teacher, a student with hashed n-grams."""
    base = _tiny_teacher_base(tokenizer, tmp_path / "tiny-bert")
    dev_sentence = load_glue("RTE", shared_data / "glue")["validation"]["text_b"][5]
    texts = tmp_path / "in_domain.txt"
    lines = ["a premise\ta hypothesis", f"another premise\t{dev_sentence.upper()}", "one text", "and another"]
    texts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "runs"
    tiny = '{"matrix_size": 4, "cbow_size": 7, "classifier_hidden_size": 9, "ngram_orders": [2], "ngram_buckets": 101}'
    common = ["glue", "RTE", "--output-dir", str(out), "--glue-dir", str(shared_data / "glue")]
    common += ["--teacher-base", str(base), "--teacher-epochs", "1", "--max-train-samples", "30"]
    common += ["--max-eval-samples", "20", "--student-epochs", "1", "--student-config", tiny]
    common += ["--student-config", '{"ngram_orders": [2, 3]}']  # merged with the first, later keys win
    # Two sources: the file and WNLI's first four train pairs, as written (--transfer-max-texts counts per source).
    common += ["--augment-copies", "2", "--transfer-texts", str(texts), "glue:WNLI", "--transfer-max-texts", "4"]
    common += ["--label-shard-size", "16"]
    assert cli.main([*common, "--selection", "last", "--student-name", "transfer-ngrams"]) == 0

    record = json.loads((out / "RTE" / "student-transfer-ngrams" / "metrics.json").read_text())
    transfer = record["transfer"]
    assert record["gold_examples"] == 30 and record["selection"] == {
        "method": "last",
        "eval_examples": 0,
        "epoch_scores": [],
        "best_epoch": 1.0,
    }
    # Two pairs as written (one with a dev sentence, in capitals: dropped), one of the two single texts, four of WNLI.
    assert transfer["unlabeled"] == 3 + 4 and transfer["dropped_evaluation"] >= 1
    assert transfer["texts"] == ["in_domain.txt (local file)", "glue:WNLI"]
    assert 30 < transfer["augmented"] <= 60 and record["train_examples"] == 30 + transfer["kept"]
    shards = sorted((out / "RTE" / "teacher").glob(f"transfer_logits-{transfer['key']}/shard-*.npy"))
    assert len(shards) == math.ceil(transfer["kept"] / 16)
    model = AutoModelForSequenceClassification.from_pretrained(out / "RTE" / "student-transfer-ngrams")
    assert model.config.ngram_orders == [2, 3] and model.cmow.encoder.ngram_embeddings.weight.abs().sum() > 0

    # Another student on the same transfer set (dev selection: the train set is the same) reuses the teacher's labels;
    # a student seed of its own changes its init and batches, not the split, the copies or the teacher's labels.
    mtimes = [shard.stat().st_mtime for shard in shards]
    assert cli.main([*common, "--selection", "dev", "--student-name", "dev-selected", "--student-seed", "7"]) == 0
    again = json.loads((out / "RTE" / "student-dev-selected" / "metrics.json").read_text())
    assert again["transfer"]["key"] == transfer["key"] and [shard.stat().st_mtime for shard in shards] == mtimes
    assert again["selection"]["method"] == "dev" and len(again["selection"]["epoch_scores"]) == 1
    assert (record["settings"]["student_seed"], again["settings"]["student_seed"]) == (None, 7)
    other = AutoModelForSequenceClassification.from_pretrained(out / "RTE" / "student-dev-selected")
    assert not torch.equal(other.cmow.encoder.ngram_embeddings.weight, model.cmow.encoder.ngram_embeddings.weight)


def test_cmow_glue_catches_a_task_read_as_a_transfer_source(tmp_path, capsys):
    """`--transfer-texts` takes every word after it: a task named after it is a source, and no task is left."""
    assert cli.main(["glue", "--output-dir", str(tmp_path), "--transfer-texts", "glue:MNLI", "RTE"]) == 2
    assert "write glue:RTE" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_write_report_without_results_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="cmow glue TASK"):
        write_report(tmp_path, tmp_path / "glue.md", "cmow glue all")
