"""Publishing round trips against a real HTTP server speaking the Hub API (tests/hub_server.py), no mocks.

huggingface_hub reads ``HF_ENDPOINT`` at import time, so every Hub client runs in a subprocess pointed at the local
server, with its own ``HF_HOME`` and ``HF_HUB_DISABLE_XET=1`` (the server speaks the LFS protocol, not Xet). Loading
runs where ``import cmow`` fails, as for a user without the package: only the remote code in the repo can help.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import Trainer, TrainingArguments

from cmow import CMOWForSequenceClassification
from cmow.hub import files_to_upload
from cmow.hub_cards import write_model_card
from conftest import tiny_config
from hub_server import HubServer

USERS = {"hf_alice_secret": "alice", "hf_bob_secret": "bob"}
SENTENCES = ["a gripping , funny film", "dull and far too long", "i loved every minute", "a mess of a plot"] * 3
LABELS = [1, 0, 1, 0] * 3

# Prepended to the loading subprocess: a meta-path finder that refuses `cmow` (the editable install would find it).
BLOCK_CMOW = """
import sys
class _RefuseCmow:
    def find_spec(self, name, path=None, target=None):
        if name == "cmow" or name.startswith("cmow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, _RefuseCmow())
try:
    import cmow
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("cmow is importable: the test would not show that remote code works")
"""


@pytest.fixture(scope="module")
def hub():
    with HubServer(users=USERS) as server:
        yield server


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny classifier on the real MiniLM vocabulary, trained a few Trainer steps, with tokenizer and card."""
    folder = tmp_path_factory.mktemp("checkpoint")
    config = tiny_config(
        vocab_size=tokenizer.vocab_size,
        matrix_size=3,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        num_labels=2,
    )
    model = CMOWForSequenceClassification(config)
    rows = [{**tokenizer(text), "labels": label} for text, label in zip(SENTENCES, LABELS, strict=True)]
    args = TrainingArguments(
        output_dir=str(folder / "trainer"),
        max_steps=3,
        per_device_train_batch_size=3,
        learning_rate=0.05,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows, processing_class=tokenizer)
    trainer.train()
    predictions = trainer.predict(rows)
    accuracy = float((predictions.predictions.argmax(-1) == predictions.label_ids).mean())
    trainer.save_model(str(folder))
    write_model_card(
        folder,
        eval_results=[
            {
                "task_type": "text-classification",
                "dataset_type": "toy-reviews",
                "dataset_name": "toy reviews",
                "dataset_split": "train",
                "metric_type": "accuracy",
                "metric_value": accuracy,
            }
        ],
        training_args=args,
        license="apache-2.0",
    )
    return folder


def client_process(code: str, endpoint: str, tmp_path, token: str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python whose Hub is ``endpoint``, without any stored login."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TRANSFORMERS_OFFLINE="0",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def run_client(code: str, hub: HubServer, tmp_path, token: str | None = None) -> dict:
    """Run ``code`` in a fresh Python pointed at ``hub``; it prints one JSON line, returned as a dict."""
    result = client_process(code, hub.url, tmp_path, token)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def local_logits(folder) -> list:
    from transformers import AutoTokenizer

    model = CMOWForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**AutoTokenizer.from_pretrained(folder)(SENTENCES[:4], padding=True, return_tensors="pt")).logits


LOAD = """
import json
import torch
from huggingface_hub import ModelCard, hf_hub_download
from transformers import AutoModelForSequenceClassification, AutoTokenizer
repo, revision = {repo!r}, {revision!r}
model = AutoModelForSequenceClassification.from_pretrained(repo, revision=revision, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)
with torch.no_grad():
    logits = model(**tokenizer({sentences!r}, padding=True, return_tensors="pt")).logits
card = ModelCard.load(hf_hub_download(repo, "README.md", revision=revision))
print(json.dumps({{"logits": logits.tolist(), "class": type(model).__module__, "card": card.data.to_dict()}}))
"""


def test_push_then_load_without_the_package_gives_the_same_logits_and_card(hub, checkpoint, tmp_path):
    push = "import sys; from cmow.cli import main; main(sys.argv[1:]); print('{}')"
    run_client(
        push.replace("sys.argv[1:]", repr(["push", str(checkpoint), "alice/tiny-sst2", "--message", "first"])),
        hub,
        tmp_path,
        token="hf_alice_secret",
    )
    loaded = run_client(
        BLOCK_CMOW + LOAD.format(repo="alice/tiny-sst2", revision=None, sentences=SENTENCES[:4]), hub, tmp_path
    )
    assert loaded["class"].startswith("transformers_modules.")  # the repo's remote code, not the package
    torch.testing.assert_close(torch.tensor(loaded["logits"]), local_logits(checkpoint))
    local_card = ModelCard.load(checkpoint / "README.md")
    assert loaded["card"]["model-index"] == local_card.data.to_dict()["model-index"]

    repo = hub.state.repos["alice/tiny-sst2"]
    head = repo.commits[repo.branches["main"]]
    assert head["message"] == "first" and len(repo.commits) == 2  # the initial commit, then everything in one
    files = head["files"]
    assert set(files) == {".gitattributes", *(path.name for path in files_to_upload(checkpoint))}
    assert {"model.safetensors", "configuration_cmow.py", "modeling_cmow.py", "encode.py", "tokenizer.json"} <= set(
        files
    )
    assert {"modules.json", "sentence_bert_config.json"} <= set(files)  # SentenceTransformer(repo) works too
    assert files["model.safetensors"][1], "the weights went through LFS"
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert hub.state.blobs[files["README.md"][0]] == (checkpoint / "README.md").read_bytes()  # our card, not HF's
    assert ("PUT", f"/lfs/{files['model.safetensors'][0]}") in hub.state.log


PRIVATE = """
import json
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from cmow.hub import push_to_hub
commit = push_to_hub({folder!r}, "secret-model", private=True, revision="experiment", commit_message="try it")
repo = commit.repo_url.repo_id
def refused(**kwargs):
    try:
        hf_hub_download(repo, "config.json", revision="experiment", **kwargs)
    except RepositoryNotFoundError:
        return True
    return False
try:
    hf_hub_download(repo, "config.json", revision="no-such-branch")
    missing = False
except RevisionNotFoundError:
    missing = True
anonymous, bob = refused(token=False), refused(token="hf_bob_secret")
print(json.dumps({{"repo": repo, "anonymous_refused": anonymous, "bob_refused": bob, "missing_branch": missing}}))
"""


def test_private_repo_on_a_branch_with_a_commit_message(hub, checkpoint, tmp_path):
    pushed = run_client(PRIVATE.format(folder=str(checkpoint)), hub, tmp_path, token="hf_alice_secret")
    assert pushed == {
        "repo": "alice/secret-model",
        "anonymous_refused": True,
        "bob_refused": True,
        "missing_branch": True,
    }
    repo = hub.state.repos["alice/secret-model"]
    assert repo.private
    branch = repo.commits[repo.branches["experiment"]]
    assert branch["message"] == "try it" and "model.safetensors" in branch["files"]
    assert "model.safetensors" not in repo.commits[repo.branches["main"]]["files"]  # main untouched

    loaded = run_client(
        BLOCK_CMOW + LOAD.format(repo="alice/secret-model", revision="experiment", sentences=SENTENCES[:4]),
        hub,
        tmp_path,
        token="hf_alice_secret",
    )
    torch.testing.assert_close(torch.tensor(loaded["logits"]), local_logits(checkpoint))


def test_only_complete_safetensors_folders_are_pushed(checkpoint, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in checkpoint.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    assert (folder / "training_args.bin").is_file()  # the Trainer's pickle: left out
    assert "training_args.bin" not in {path.name for path in files_to_upload(folder)}
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        files_to_upload(folder)
    (folder / "pytorch_model.bin").rename(folder / "model.safetensors")
    (folder / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="cmow card"):
        files_to_upload(folder)
    (folder / "README.md").write_text("---\n---\n")
    (folder / "modeling_cmow.py").unlink()
    with pytest.raises(FileNotFoundError, match="modeling_cmow.py"):
        files_to_upload(folder)


PUSH_ERRORS = """
from cmow.hub import push_to_hub
for endpoint in ({endpoints!r}):
    try:
        push_to_hub({folder!r}, "alice/anything", endpoint=endpoint)
    except (PermissionError, ConnectionError) as error:
        print(type(error).__name__ + ": " + str(error))
"""


def test_push_without_a_token_or_to_an_unreachable_hub_says_what_to_do(hub, checkpoint, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code = PUSH_ERRORS.format(endpoints=(hub.url, closed), folder=str(checkpoint))
    result = client_process(code, hub.url, tmp_path)  # no HF_TOKEN, no stored login
    no_token, unreachable = result.stdout.splitlines()
    assert no_token.startswith("PermissionError:") and "401" in no_token and "hf auth login" in no_token
    assert unreachable.startswith(f"ConnectionError: Cannot reach the Hub at {closed}")
    assert "alice/anything" not in hub.state.repos
