"""``cmow train-sst2``: train a randomly initialised bidirectional Hybrid CMOW classifier on SST-2 with the Trainer.

This is the stock transformers path (tokenizer, ``DataCollatorWithPadding``, a ``Trainer``) end to end on real data;
the ``Trainer`` is ``CMOWTrainer``, which only adds sparse token-table gradients (several times faster steps). It
prints dev accuracy and end-to-end classification throughput.
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from .configuration_cmow import CMOWConfig
from .data import data_dir, default_teacher
from .glue.data import load_glue
from .modeling_cmow import CMOWForSequenceClassification
from .training import CMOWTrainer

logger = logging.getLogger(__name__)


def measure_throughput(model, tokenizer, texts: list[str], batch_size: int = 256) -> float:
    """Sentences per second from raw text to logits, in length-sorted batches."""
    texts = sorted(texts, key=len)
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(texts), batch_size):
            batch = tokenizer(texts[begin : begin + batch_size], padding=True, return_tensors="pt")
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return len(texts) / (time.perf_counter() - start)


def train_sst2(
    output_dir: str,
    data: str | None = None,
    tokenizer_name: str | None = None,
    epochs: float = 1.0,
    learning_rate: float = 2e-3,
    batch_size: int = 64,
    max_train_samples: int | None = None,
    seed: int = 42,
) -> dict:
    """Train on SST-2 train, evaluate on SST-2 dev, save model and tokenizer to ``output_dir``.

    Returns:
        ``{"dev_accuracy", "sentences_per_second", "train_seconds", "parameters"}``.
    """
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or default_teacher())
    sst2 = load_glue("SST-2", data_dir(data) / "glue")
    if max_train_samples is not None:
        sst2["train"] = sst2["train"].shuffle(seed=seed).select(range(min(max_train_samples, len(sst2["train"]))))
    encoded = sst2.map(lambda batch: tokenizer(batch["text_a"]), batched=True, remove_columns=["text_a"])

    config = CMOWConfig.from_tokenizer(
        tokenizer,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        classifier_dropout=0.1,
    )
    torch.manual_seed(seed)
    model = CMOWForSequenceClassification(config)

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        warmup_steps=0.05,
        lr_scheduler_type="linear",
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=256,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = CMOWTrainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    dev_accuracy = trainer.evaluate(encoded["validation"])["eval_accuracy"]
    trainer.save_model(output_dir)
    results = {
        "dev_accuracy": dev_accuracy,
        "sentences_per_second": measure_throughput(model, tokenizer, sst2["validation"]["text_a"]),
        "train_seconds": train_seconds,
        "train_samples": len(encoded["train"]),
        "parameters": model.num_parameters(),
        "torch_threads": torch.get_num_threads(),
    }
    Path(output_dir, "sst2_results.json").write_text(json.dumps(results, indent=2))
    return results


def run(args: argparse.Namespace) -> int:
    results = train_sst2(
        output_dir=args.output_dir,
        data=args.data_dir,
        tokenizer_name=args.tokenizer,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_train_samples=args.max_train_samples,
        seed=args.seed,
    )
    logger.info("Saved the model to %s", args.output_dir)
    print(
        f"SST-2 dev accuracy: {results['dev_accuracy']:.4f}  |  "
        f"throughput (raw text -> logits, batch 256, {results['torch_threads']} threads): "
        f"{results['sentences_per_second']:,.0f} sentences/s  |  "
        f"parameters: {results['parameters']:,}  |  trained {results['train_seconds']:.0f} s"
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument(
        "--output-dir", default="outputs/cmow-sst2", help="where the model is saved (default: %(default)s)"
    )
    parser.add_argument("--data-dir", help="shared data folder holding glue/SST-2 (default: $CMOW_DATA_DIR)")
    parser.add_argument("--tokenizer", help="tokenizer id or folder (default: the all-MiniLM-L6-v2 teacher's)")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs over SST-2 train (default: %(default)s)")
    parser.add_argument(
        "--learning-rate", type=float, default=2e-3, help="peak learning rate, linear decay (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: %(default)s)")
    parser.add_argument("--max-train-samples", type=int, help="train on a random subset of this size (default: all)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    parser.set_defaults(func=run)
