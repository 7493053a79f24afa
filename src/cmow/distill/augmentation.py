"""Word-order augmentation: teacher-labelled copies of texts with two adjacent words swapped.

A bag of vectors cannot tell a text from its copy with two words swapped; the teacher can, a little. Adding such copies
to a batch (the teacher embeds them like any text) gives the student targets that only its matrix part can meet, and,
under the contrastive term, each copy is the hardest negative of its original.
"""

import hashlib
import random


def _rng(seed: int, index: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def swap_adjacent_words(text: str, rng: random.Random) -> str | None:
    """``text`` with one random pair of adjacent, different words swapped; ``None`` if there is no such pair."""
    words = text.split()
    positions = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
    if not positions:
        return None
    i = rng.choice(positions)
    return " ".join(words[:i] + [words[i + 1], words[i]] + words[i + 2 :])


def add_word_order_copies(texts: list[str], rate: float, seed: int, index: int) -> tuple[list[str], list[int]]:
    """``texts`` followed by a swapped copy of each text chosen with probability ``rate``.

    Deterministic in ``(seed, index)`` (``index`` is the micro-batch's position in the epoch), so a resumed or cached
    run sees the same copies.

    Returns:
        ``(texts + copies, originals)``: ``originals[k]`` is the index of the text that copy ``k`` was made from.
    """
    if rate <= 0:
        return texts, []
    rng = _rng(seed, index)
    copies = [swap_adjacent_words(text, rng) if rng.random() < rate else None for text in texts]
    originals = [i for i, copy in enumerate(copies) if copy is not None]
    return texts + [copies[i] for i in originals], originals
