"""An on-disk cache of the teacher's targets, so later epochs and reruns do not run the teacher.

Targets are stored per process and micro-batch (``rank{r}/batch{epoch_index}.safetensors``) in float16, under a
folder named by a hash of everything they depend on: the teacher's weights and config, the tokenizer, the corpus, the
batching and the pooling. Every epoch sees the corpus in the same order, so batch ``i`` is the same texts every time.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def fingerprint(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, corpus: str, settings: dict) -> str:
    """A hash of the teacher's weights and config, the tokenizer's vocabulary, the corpus id and the settings."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(teacher.config.to_json_string().encode())
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update(json.dumps({"corpus": corpus, **settings}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class TeacherCache:
    """Teacher targets on disk, one file per process and micro-batch index."""

    def __init__(self, folder: str | os.PathLike, key: str, rank: int):
        self.folder = Path(folder) / key / f"rank{rank}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, index: int) -> Path:
        return self.folder / f"batch{index:09d}.safetensors"

    def load(self, index: int, device: torch.device) -> dict | None:
        """The stored targets of micro-batch ``index`` in float32, or ``None``."""
        path = self._path(index)
        if not path.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return {name: tensor.to(device=device, dtype=torch.float32) for name, tensor in load_file(path).items()}

    def save(self, index: int, targets: dict) -> None:
        """Store ``targets`` atomically (write, then rename), so a killed run leaves no half-written file."""
        path = self._path(index)
        partial = path.with_suffix(".partial")
        save_file(
            {name: tensor.detach().to("cpu", torch.float16).contiguous() for name, tensor in targets.items()}, partial
        )
        partial.replace(path)
