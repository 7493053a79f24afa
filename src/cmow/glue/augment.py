"""Tang et al. (2019)'s data augmentation for task distillation: perturbed copies of train texts for the teacher.

Tang, Lu, Liu, Mou, Vechtomova and Lin, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"
(arXiv:1903.12136), section 3.3. Each word (whitespace-separated) of a text is, independently,

- replaced by the mask token with probability ``mask_p`` (Tang et al.: 0.1), else
- replaced by a word drawn from the train set's word unigram distribution with probability ``replace_p`` (0.1).
  Tang et al. draw a word with the same part-of-speech tag; no tagger is installed here, so every word is drawn from
  the unigrams of all words, their fallback for words without a tag.

Then, with probability ``ngram_p`` (0.25), only a random n-gram of the result is kept, ``n`` uniform in
``[1, max_ngram]`` (5). A pair (``text_a``, ``text_b``) is perturbed one side at a time: each copy perturbs one side,
chosen at random, and keeps the other. ``copies`` copies are drawn per example; a copy equal to its original or to
an earlier copy of the same example is dropped, as Tang et al. discard duplicates.

Everything is drawn from ``random.Random(f"{seed}:{index}")`` per example (seeded by a string, which Python hashes
with SHA-512, not with its salted ``hash``), so the copies are the same in every process and on every platform.
"""

import bisect
import itertools
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

Example = tuple[str, ...]  # (text,) or (text_a, text_b)


@dataclass(frozen=True)
class AugmentConfig:
    """Tang et al.'s probabilities (their values are the defaults).

    Attributes:
        mask_p: Probability that a word becomes the mask token.
        replace_p: Probability that a word (not masked) becomes a word drawn from the unigram distribution.
        ngram_p: Probability that only a random n-gram of the perturbed text is kept.
        max_ngram: Largest ``n`` of that n-gram.
    """

    mask_p: float = 0.1
    replace_p: float = 0.1
    ngram_p: float = 0.25
    max_ngram: int = 5

    def __post_init__(self):
        for name in ("mask_p", "replace_p", "ngram_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1]; got {getattr(self, name)!r}.")
        if self.mask_p + self.replace_p > 1.0:
            raise ValueError(f"`mask_p + replace_p` must be at most 1; got {self.mask_p} + {self.replace_p}.")
        if self.max_ngram < 1:
            raise ValueError(f"`max_ngram` must be >= 1; got {self.max_ngram!r}.")


class UnigramSampler:
    """Draws words with the frequency they have in ``texts`` (whitespace-separated words, case kept)."""

    def __init__(self, texts: Iterable[str]):
        counts = Counter(word for text in texts for word in text.split())
        if not counts:
            raise ValueError("No words to draw replacements from: the train texts are empty.")
        self.words = sorted(counts)  # sorted: the same order in every process, whatever the input order
        self.cumulative = list(itertools.accumulate(counts[word] for word in self.words))

    def sample(self, rng: random.Random) -> str:
        return self.words[bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])]


def perturb(text: str, rng: random.Random, sampler: UnigramSampler, mask_token: str, config: AugmentConfig) -> str:
    """One perturbed copy of ``text``: masking and unigram replacement per word, then n-gram sampling."""
    words = []
    for word in text.split():
        draw = rng.random()
        if draw < config.mask_p:
            words.append(mask_token)
        elif draw < config.mask_p + config.replace_p:
            words.append(sampler.sample(rng))
        else:
            words.append(word)
    if words and rng.random() < config.ngram_p:
        n = min(rng.randint(1, config.max_ngram), len(words))
        start = rng.randrange(len(words) - n + 1)
        words = words[start : start + n]
    return " ".join(words)


def augmented_copies(
    examples: list[Example],
    copies: int,
    mask_token: str,
    seed: int = 0,
    config: AugmentConfig | None = None,
) -> list[Example]:
    """Up to ``copies`` perturbed copies of each example (duplicates dropped), in example order.

    Args:
        examples: ``(text,)`` or ``(text_a, text_b)`` tuples; the unigram distribution is taken from all their texts.
        copies: Copies drawn per example.
        mask_token: What a masked word becomes: the tokenizer's mask token (``[MASK]``), or its unknown token.
        seed: Seeds the draws, with the example's index.
        config: Probabilities; Tang et al.'s by default.
    """
    config = config or AugmentConfig()
    if copies <= 0 or not examples:
        return []
    sampler = UnigramSampler(text for example in examples for text in example)
    out = []
    for index, example in enumerate(examples):
        rng = random.Random(f"{seed}:{index}")
        seen = {example}
        for _ in range(copies):
            side = rng.randrange(len(example))  # a pair is perturbed one side at a time
            copy = list(example)
            copy[side] = perturb(example[side], rng, sampler, mask_token, config)
            copy = tuple(copy)
            if copy not in seen and copy[side].strip():
                seen.add(copy)
                out.append(copy)
    return out
