"""Publish a saved cmow checkpoint folder on the Hugging Face Hub: safetensors, remote code, tokenizer and our card.

We upload the folder ourselves (``HfApi.create_repo`` + ``create_commit``) rather than calling transformers'
``push_to_hub``, which would replace README.md with its generic card. Authentication is huggingface_hub's usual one:
``token=None`` uses ``$HF_TOKEN`` or the token stored by ``hf auth login``.
"""

import argparse
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from .configuration_cmow import AUTO_MAP, CMOWConfig
from .configuration_moebert import AUTO_MAP as MOEBERT_AUTO_MAP
from .configuration_moebert import MoEBertConfig

logger = logging.getLogger(__name__)

CODE_FILES = ("configuration_cmow.py", "modeling_cmow.py", "encode.py")
MOEBERT_CODE_FILES = ("configuration_moebert.py", "modeling_moebert.py")
# model_type -> (the remote code a folder must ship, the Auto classes its config must map to it)
REMOTE_CODE = {
    CMOWConfig.model_type: (CODE_FILES, AUTO_MAP),
    MoEBertConfig.model_type: (MOEBERT_CODE_FILES, MOEBERT_AUTO_MAP),
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
OTHER_FILES = ("config.json", "README.md", "cmow_training.json", "generation_config.json")
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# The HTTP library's base error (httpx's, httpx2's in huggingface_hub 2): unreachable hosts raise it, not
# HfHubHTTPError, which derives from it. Taken from HfHubHTTPError so either library version works.
HTTP_ERROR = HfHubHTTPError.__mro__[1]
LOGIN_HINT = (
    "log in with `hf auth login`, or set $HF_TOKEN to a token with write access (huggingface.co/settings/tokens)"
)


@contextlib.contextmanager
def _explained_hub_errors(api: HfApi, repo_id: str) -> Iterator[None]:
    """Turn an unreachable Hub and a refused token into errors that say what to do."""
    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise PermissionError(
                f"The Hub at {api.endpoint} refused the upload to {repo_id} (401 Unauthorized: no valid token): "
                f"{LOGIN_HINT}."
            ) from error
        if status == 403:
            raise PermissionError(
                f"The Hub at {api.endpoint} refused the upload to {repo_id} (403 Forbidden: this token cannot write "
                f"there): use a repo in your own namespace or an organisation you can write to, or {LOGIN_HINT}."
            ) from error
        raise
    except HTTP_ERROR as error:
        raise ConnectionError(
            f"Cannot reach the Hub at {api.endpoint} ({type(error).__name__}: {error}): check the network connection, "
            "or $HF_ENDPOINT if it is set."
        ) from error


def files_to_upload(folder: str | os.PathLike) -> list[Path]:
    """The files of a checkpoint folder that belong on the Hub, after checking the folder is complete.

    Raises:
        FileNotFoundError: if safetensors weights, config, remote code or README.md are missing.
        ValueError: if the folder holds neither a CMOW nor a MoEBERT model, or its config lacks part of the
            ``auto_map``.

    Pickled files (``training_args.bin``, ``pytorch_model.bin``) are never uploaded.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: pass a folder written by `model.save_pretrained`.")
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    weights += sorted(folder.glob("model-*-of-*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if not weights:
        hint = f" It holds pickled files ({', '.join(pickles)}); cmow publishes safetensors only." if pickles else ""
        raise FileNotFoundError(
            f"{folder} has no model.safetensors.{hint} Save the model with `model.save_pretrained(folder)`."
        )
    if pickles:
        logger.info("Not uploading pickled files %s: cmow publishes safetensors only.", ", ".join(pickles))
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") not in REMOTE_CODE:
        raise ValueError(
            f"{folder} holds a {config.get('model_type')!r} model: cmow publishes its CMOW and MoEBERT checkpoints "
            f"only (model_type {' or '.join(map(repr, REMOTE_CODE))})."
        )
    code_files, auto_classes = REMOTE_CODE[config["model_type"]]
    missing_code = [name for name in code_files if not (folder / name).is_file()]
    if missing_code:
        raise FileNotFoundError(
            f"{folder} lacks the remote code {', '.join(missing_code)}: save with a cmow model's `save_pretrained`."
        )
    auto_map = config.get("auto_map", {})
    missing_auto = sorted(set(auto_classes) - set(auto_map))
    if missing_auto:
        raise ValueError(f"config.json's auto_map lacks {', '.join(missing_auto)}: re-save the model with cmow.")
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no README.md: write the card first (`cmow card {folder}`).")
    names = [*code_files, *TOKENIZER_FILES, *OTHER_FILES, *SENTENCE_TRANSFORMERS_FILES]
    return weights + [folder / name for name in names if (folder / name).is_file()]


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload cmow model",
    token: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload a saved checkpoint folder to a Hub model repo in one commit, creating the repo (and branch) if needed.

    Args:
        folder: A folder written by ``save_pretrained`` (+ tokenizer) with a card from ``cmow.hub_cards``.
        repo_id: ``"user/name"`` (or ``"name"`` for the token's own namespace).
        private: Create the repo private (ignored when it exists already).
        revision: Branch to commit to; created from ``main`` if it does not exist.
        commit_message: Summary of the commit.
        token: Hub token; ``None`` uses ``$HF_TOKEN`` or the stored login.
        endpoint: Hub address; ``None`` uses ``$HF_ENDPOINT`` or huggingface.co.

    Returns:
        The commit, with ``commit_url`` and ``oid``.

    Raises:
        PermissionError: if the Hub refuses the token (or its absence), with how to log in.
        ConnectionError: if the Hub cannot be reached.
    """
    files = files_to_upload(folder)
    api = HfApi(endpoint=endpoint, token=token)
    with _explained_hub_errors(api, repo_id):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)) for path in files]
        logger.info("Uploading %s to %s: %s", folder, repo_id, ", ".join(p.name for p in files))
        commit = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision)
    logger.info("Pushed %s", commit.commit_url)
    return commit


def _run(args: argparse.Namespace) -> int:
    commit = push_to_hub(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
    )
    logger.info("Done: %s", commit.commit_url)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Upload a saved cmow checkpoint folder to a Hugging Face Hub model repo in one commit. Uses $HF_TOKEN or the "
        "token stored by `hf auth login`, and $HF_ENDPOINT if set."
    )
    parser.add_argument("folder", help="folder written by save_pretrained, with README.md (see `cmow card`)")
    parser.add_argument("repo_id", help="Hub repo, user/name")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing)")
    parser.add_argument("--message", default="Upload cmow model", help="commit message")
    parser.set_defaults(func=_run)
