"""The stock transformers path on real data: real tokenizer, DataCollatorWithPadding, Trainer."""

import torch
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

from cmow import CMOWConfig, CMOWForSequenceClassification
from cmow.glue.data import load_glue
from cmow.train_sst2 import train_sst2


def small_config(tokenizer, **overrides) -> CMOWConfig:
    settings = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        matrix_size=5,
        cbow_size=7,
        classifier_hidden_size=13,
        num_labels=2,
    )
    settings.update(overrides)
    return CMOWConfig(**settings)


def trainer_for(model, tokenizer, dataset, tmp_path, steps: int) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=steps,
        learning_rate=5e-3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
    )


def test_a_few_trainer_steps_lower_the_loss_on_real_sst2(shared_data, tokenizer, tmp_path):
    sst2 = load_glue("SST-2", shared_data / "glue")["train"].select(range(96))
    dataset = sst2.map(lambda batch: tokenizer(batch["text_a"]), batched=True, remove_columns=["text_a"])
    model = CMOWForSequenceClassification(small_config(tokenizer))
    trainer = trainer_for(model, tokenizer, dataset, tmp_path, steps=30)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.05, (before, after)


def test_sentence_pairs_train_through_the_stock_glue_path(shared_data, tokenizer, tmp_path):
    # A saved checkpoint, re-opened for a pair task the way run_glue.py does it: only num_labels and pair_encoding.
    CMOWForSequenceClassification(small_config(tokenizer)).save_pretrained(tmp_path / "base")
    model = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=3, pair_encoding="diffcat", ignore_mismatched_sizes=True
    )
    mnli = load_glue("MNLI", shared_data / "glue")["train"].select(range(48))
    dataset = mnli.map(
        lambda batch: tokenizer(batch["text_a"], batch["text_b"]),
        batched=True,
        remove_columns=["text_a", "text_b"],
    )
    assert "token_type_ids" in dataset.column_names
    trainer = trainer_for(model, tokenizer, dataset, tmp_path, steps=6)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert torch.isfinite(torch.tensor(after)) and after < before, (before, after)


def test_train_sst2_command_trains_saves_and_reports(shared_data, teacher_path, tmp_path):
    results = train_sst2(
        output_dir=str(tmp_path / "sst2"),
        data=str(shared_data),
        tokenizer_name=teacher_path,
        max_train_samples=64,
        batch_size=32,
    )
    assert 0.0 <= results["dev_accuracy"] <= 1.0 and results["sentences_per_second"] > 0
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sst2")
    assert isinstance(reloaded, CMOWForSequenceClassification)
    assert (tmp_path / "sst2" / "model.safetensors").is_file() and (tmp_path / "sst2" / "tokenizer.json").is_file()
