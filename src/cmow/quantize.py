"""``cmow quantize``: a copy of a checkpoint folder with its weights stored as int8 or float16, 4x or 2x smaller.

int8 stores each token table and the pooler as int8 rows with one float32 scale each (``CMOWConfig.weight_storage``);
float16 stores the whole model in half precision. Either loads with ``from_pretrained`` as before (products always
run in float32). Everything else in the folder (tokenizer, remote code, training record) is copied and the card
re-rendered.
"""

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from . import modeling_cmow
from .configuration_cmow import CMOWConfig
from .hub_cards import RECORD_FILE, write_model_card

logger = logging.getLogger(__name__)

STORAGES = ("int8", "float16")


def quantize_folder(source: str | os.PathLike, destination: str | os.PathLike, storage: str = "int8") -> Path:
    """Write ``source``'s model to ``destination`` with ``storage`` weights, and copy its other files.

    Raises:
        ValueError: for an unknown ``storage``, a non-CMOW model, or ``destination`` equal to ``source``.
        FileNotFoundError: if ``source`` has no cmow ``config.json``.
        FileExistsError: if ``destination`` already holds a model.
    """
    source, destination = Path(source), Path(destination)
    if storage not in STORAGES:
        raise ValueError(f"`storage` must be one of {', '.join(map(repr, STORAGES))}; got {storage!r}.")
    if not (source / "config.json").is_file():
        raise FileNotFoundError(
            f"{source} has no config.json: pass a folder written by a cmow model's save_pretrained."
        )
    model_type = json.loads((source / "config.json").read_text()).get("model_type")
    if model_type != CMOWConfig.model_type:
        raise ValueError(f"{source} holds a {model_type!r} model: cmow quantize stores CMOW checkpoints only.")
    if destination.exists() and destination.resolve() == source.resolve():
        raise ValueError("Write the quantised copy to another folder: the source keeps the full-precision weights.")
    if (destination / "config.json").exists():
        raise FileExistsError(f"{destination} already holds a model: choose another folder or delete it.")
    if destination.is_dir() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} is not empty: choose another folder or delete it.")
    config = CMOWConfig.from_pretrained(source)
    model_class = getattr(modeling_cmow, (config.architectures or ["CMOWModel"])[0])
    model = model_class.from_pretrained(source)
    # Written next to the destination and renamed when complete: an interrupted run leaves no half-written model.
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for path in source.iterdir():  # tokenizer, remote code, sentence-transformers files, training record
            if path.is_file() and path.suffix != ".safetensors" and path.name not in ("config.json", "README.md"):
                shutil.copy2(path, staging / path.name)
        if storage == "float16":
            model.half().save_pretrained(staging)
        else:
            model.save_pretrained(staging, weight_storage="int8")
        record_file = staging / RECORD_FILE
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        write_model_card(
            staging, model_name=destination.name, **{k: v for k, v in record.items() if k != "model_name"}
        )
        staging.chmod(0o755)  # mkdtemp makes it private
        if destination.is_dir():
            destination.rmdir()  # empty, checked above
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Wrote %s with %s weights", destination, storage)
    return destination


def folder_size(folder: str | os.PathLike) -> int:
    """Bytes of all files in ``folder`` (not its subfolders, e.g. training checkpoints)."""
    return sum(path.stat().st_size for path in Path(folder).iterdir() if path.is_file())


def _run(args: argparse.Namespace) -> int:
    destination = quantize_folder(args.source, args.destination, args.storage)
    print(f"Wrote {destination} ({folder_size(destination) / 1e6:.1f} MB with tokenizer, code and card)")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Copy a cmow checkpoint folder with its weights stored as int8 (token tables and pooler: int8 rows with "
        "float32 scales, about 4x smaller) or float16 (2x smaller). Loads with from_pretrained as before."
    )
    parser.add_argument("source", help="folder written by save_pretrained (e.g. by cmow distill)")
    parser.add_argument("destination", help="new folder for the smaller copy")
    parser.add_argument("--storage", choices=STORAGES, default="int8", help="weight storage (default: int8)")
    parser.set_defaults(func=_run)
