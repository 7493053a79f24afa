"""Can a CMOW learn word order at all, when trained on it directly? A linear head on the sentence embedding
(``pooler_output``), trained from scratch with binary cross-entropy, no teacher; Adam, one thread.

    python benchmarks/word_order_learnability.py shift 0.01 hybrid --steps 600          # bigram shift, real text
    python benchmarks/word_order_learnability.py shift 0.01 hybrid --ngrams 2 --steps 600
    python benchmarks/word_order_learnability.py synthetic 0.1 cmow --length 5 --lr 3e-3  # sorted ids, one inversion

``shift``: sentences of 6 to 30 words from the first 20,000 training paragraphs of the default corpus (never the
held-out ones), half of them with two adjacent words swapped, 64 per step, up to 64 tokens; the accuracy is the
head's on the test split of ``cmow evaluate``'s word-order probe (held-out sentences). ``synthetic``: unidirectional
CMOW over a 200-token vocabulary; each text is ``length`` random ids in ascending order, half of them with one
adjacent pair swapped, 128 per step, 1,500 steps; accuracy on 2,000 fresh texts. Prints the loss every 100 steps
(``shift``) or 250 steps (``synthetic``) and one JSON line.
"""

import argparse
import json
import random
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from cmow import CMOWConfig, CMOWModel
from cmow.data import default_teacher
from cmow.distill.default_corpus import _SENTENCE_END, gutenberg_paragraphs
from cmow.evaluation.tasks import word_order_probe


def fit(optimizer, scores, batch, steps: int, batch_size: int, report_every: int, digits: int) -> None:
    """Binary cross-entropy of ``scores(inputs)`` against the labels of ``batch(batch_size)``, ``steps`` times;
    prints the loss every ``report_every`` steps."""
    for step in range(steps):
        inputs, labels = batch(batch_size)
        loss = F.binary_cross_entropy_with_logits(scores(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % report_every == 0:
            print(step, round(loss.item(), digits), flush=True)


def shift(args) -> float:
    rng = random.Random(0)
    tokenizer = AutoTokenizer.from_pretrained(default_teacher())
    sentences = [s.split() for p in gutenberg_paragraphs()[:20000] for s in _SENTENCE_END.split(p)]
    sentences = [words for words in sentences if 6 <= len(words) <= 30]
    extra = {"ngram_orders": tuple(args.ngrams)} if args.ngrams else {}
    config = CMOWConfig(
        vocab_size=tokenizer.vocab_size, initializer_range=args.init, encoder=args.encoder, embedding_size=384, **extra
    )
    model, head = CMOWModel(config), torch.nn.Linear(384, 1)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=args.lr)

    def batch(n):
        texts, labels = [], []
        for _ in range(n):
            words, label = list(rng.choice(sentences)), rng.random() < 0.5
            if label:
                i = rng.choice([i for i in range(len(words) - 1) if words[i].lower() != words[i + 1].lower()])
                words[i], words[i + 1] = words[i + 1], words[i]
            texts.append(" ".join(words))
            labels.append(float(label))
        return texts, torch.tensor(labels)

    def scores(texts):
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        embedding = model(input_ids=encoded.input_ids, attention_mask=encoded.attention_mask).pooler_output
        return head(embedding).squeeze(-1)

    _, _, test_texts, test_labels = word_order_probe()
    fit(optimizer, scores, batch, steps=args.steps, batch_size=64, report_every=100, digits=4)
    with torch.no_grad():
        predicted = torch.cat([scores(test_texts[i : i + 256]) for i in range(0, len(test_texts), 256)]) > 0
    return (predicted.float() == torch.tensor(test_labels).float()).float().mean().item()


def synthetic(args) -> float:
    vocab = 200
    config = CMOWConfig(
        vocab_size=vocab,
        initializer_range=args.init,
        encoder=args.encoder,
        bidirectional=False,
        pad_token_id=0,
        cls_token_id=1,
        sep_token_id=2,
    )
    model, head = CMOWModel(config), torch.nn.Linear(config.hidden_size, 1)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=args.lr)

    def batch(n):
        ids, labels = torch.randint(3, vocab, (n, args.length)).sort(dim=1).values, torch.randint(0, 2, (n,))
        for k in range(n):
            if labels[k]:
                i = torch.randint(0, args.length - 1, ()).item()
                ids[k, i], ids[k, i + 1] = ids[k, i + 1].clone(), ids[k, i].clone()
        return ids, labels.float()

    def scores(ids):
        return head(model(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output).squeeze(-1)

    fit(optimizer, scores, batch, steps=1500, batch_size=128, report_every=250, digits=3)
    with torch.no_grad():
        ids, labels = batch(2000)
        return ((scores(ids) > 0).float() == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("shift", "synthetic"))
    parser.add_argument("init", type=float, help="initializer_range: noise around the identity")
    parser.add_argument("encoder", choices=("cmow", "hybrid"))
    parser.add_argument("--ngrams", type=int, nargs="*", default=[], help="hashed n-gram orders (shift only)")
    parser.add_argument("--steps", type=int, default=600, help="training steps (shift)")
    parser.add_argument("--length", type=int, default=10, help="tokens per text (synthetic)")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    start = time.time()
    accuracy = shift(args) if args.task == "shift" else synthetic(args)
    print(json.dumps({**vars(args), "accuracy": round(accuracy, 4), "seconds": round(time.time() - start)}))


if __name__ == "__main__":
    main()
