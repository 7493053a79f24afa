"""How much a word swap moves a CMOW student's sentence embedding, against the teacher's, and why.

    python benchmarks/word_order_sensitivity.py runs/cmow-minilm-hybrid

Prints, per pair of texts (a swap of two content words, and of two adjacent words): the cosine of the two sentence
embeddings for the student (``model.encode``) and for the teacher (mean-pooled last hidden states); the change of the
student's CBOW and matrix features relative to their norm; and the norms of the pooler's CBOW and matrix blocks.
"""

import argparse

import torch
from torch.nn import functional as F
from transformers import AutoModel, AutoTokenizer

import cmow
from cmow.data import default_teacher

PAIRS = (
    ("The dog bit the man.", "The man bit the dog."),
    ("He went to the store yesterday.", "He went the to store yesterday."),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", help="a distilled CMOW folder")
    parser.add_argument("--teacher", default=None, help="its teacher (default: all-MiniLM-L6-v2)")
    args = parser.parse_args()
    student = AutoModel.from_pretrained(args.student).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    teacher_path = args.teacher or default_teacher()
    teacher = AutoModel.from_pretrained(teacher_path).eval()
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    cbow = student.config.cbow_size
    for first, second in PAIRS:
        embeddings = student.encode([first, second])
        features = cmow.encode(student, tokenizer, [first, second], output="pooled_features")
        batch = teacher_tokenizer([first, second], padding=True, return_tensors="pt")
        with torch.no_grad():
            states = teacher(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None]
        teacher_embeddings = (states * mask).sum(dim=1) / mask.sum(dim=1)
        change = (features[0] - features[1]).abs()
        print(
            f"{first!r} vs {second!r}: cosine student {F.cosine_similarity(*embeddings, dim=0):.4f}, "
            f"teacher {F.cosine_similarity(*teacher_embeddings, dim=0):.4f}; student feature change relative to "
            f"norm: CBOW {change[:cbow].norm() / features[0, :cbow].norm():.1e}, "
            f"matrices {change[cbow:].norm() / features[0, cbow:].norm():.3f}"
        )
    if student.pooler is not None:
        weight = student.pooler.dense.weight
        print(f"pooler block norms: CBOW {weight[:, :cbow].norm():.2f}, matrices {weight[:, cbow:].norm():.2f}")


if __name__ == "__main__":
    main()
