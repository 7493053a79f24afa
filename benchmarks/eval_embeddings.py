"""Frozen sentence embeddings on STS-B dev (Spearman of cosine similarity) and SST-2 dev (logistic regression).

Evaluates distilled student folders, the teacher (its own pooling) and a randomly initialised student, and prints a
markdown table with parameter counts and encoding throughput:

    python benchmarks/eval_embeddings.py cmow-minilm teacher random --sst2-train-size 20000
"""

import argparse
import os
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

import cmow
from cmow.data import data_dir, default_teacher
from cmow.distill.teacher import TeacherPooling, read_pooling
from cmow.glue.data import load_glue


def teacher_encoder(folder: str, batch_size: int):
    """A function texts -> (n, hidden) embeddings with the teacher's own pooling, and its parameter count."""
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    pooling = read_pooling(folder) or TeacherPooling()

    @torch.inference_mode()
    def encode(texts: list[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        output = torch.empty(len(texts), model.config.hidden_size)
        for start in range(0, len(texts), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in chunk], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            output[chunk] = pooling(model(**batch).last_hidden_state, batch["attention_mask"])
        return output

    return encode, model.num_parameters()


def cmow_encoder(model, tokenizer, batch_size: int):
    model.eval()
    return (lambda texts: cmow.encode(model, tokenizer, texts, batch_size=batch_size)), model.num_parameters()


def evaluate(encode, glue_dir: str, sst2_train_size: int | None, seed: int) -> dict:
    stsb = load_glue("STS-B", glue_dir)["validation"]
    a, b = encode(stsb["text_a"]), encode(stsb["text_b"])
    spearman = spearmanr(torch.nn.functional.cosine_similarity(a, b).numpy(), stsb["label"]).statistic
    sst2 = load_glue("SST-2", glue_dir)
    train = sst2["train"]
    if sst2_train_size and sst2_train_size < len(train):
        train = train.shuffle(seed=seed).select(range(sst2_train_size))
    classifier = LogisticRegression(max_iter=2000).fit(encode(train["text_a"]).numpy(), train["label"])
    dev_texts = sst2["validation"]["text_a"]
    start = time.perf_counter()
    dev_features = encode(dev_texts).numpy()
    throughput = len(dev_texts) / (time.perf_counter() - start)
    accuracy = float(np.mean(classifier.predict(dev_features) == np.array(sst2["validation"]["label"])))
    return {"stsb_spearman": spearman, "sst2_accuracy": accuracy, "sentences_per_second": throughput}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="student folders, 'teacher' and/or 'random'")
    parser.add_argument("--teacher", default=None, help="teacher folder or Hub id (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: $CMOW_DATA_DIR)")
    parser.add_argument("--sst2-train-size", type=int, default=None, help="subsample SST-2 train (default: all 67k)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    glue_dir = str(data_dir(args.data_dir) / "glue")
    teacher = args.teacher or default_teacher()
    rows = []
    for name in args.models:
        if name == "teacher":
            encode, parameters = teacher_encoder(teacher, args.batch_size)
        elif name == "random":
            tokenizer = AutoTokenizer.from_pretrained(teacher)
            torch.manual_seed(args.seed)
            config = cmow.CMOWConfig.from_tokenizer(tokenizer)
            encode, parameters = cmow_encoder(cmow.CMOWModel(config), tokenizer, args.batch_size)
        else:
            model, tokenizer = AutoModel.from_pretrained(name), AutoTokenizer.from_pretrained(name)
            encode, parameters = cmow_encoder(model, tokenizer, args.batch_size)
        results = evaluate(encode, glue_dir, args.sst2_train_size, args.seed)
        rows.append((name, parameters, results))
    train_size = args.sst2_train_size or "all 67,349"
    print(f"\nSTS-B dev and SST-2 dev (logistic regression on {train_size} frozen SST-2 train embeddings); ")
    print(
        f"throughput: SST-2 dev sentences/s, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs\n"
    )
    print("| model | parameters | STS-B Spearman | SST-2 accuracy | sentences/s |")
    print("|---|---:|---:|---:|---:|")
    for name, parameters, r in rows:
        print(
            f"| {name} | {parameters / 1e6:.1f}M | {r['stsb_spearman']:.3f} | {100 * r['sst2_accuracy']:.1f} | "
            f"{r['sentences_per_second']:,.0f} |"
        )


if __name__ == "__main__":
    main()
