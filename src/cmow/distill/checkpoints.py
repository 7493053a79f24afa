"""Resumable checkpoints of a distillation run: written atomically, and tied to the run that wrote them.

``OUTPUT/checkpoints/step-N/`` holds accelerate's ``save_state`` files and ``run.json``, the settings of the run. A
checkpoint is written to ``checkpoints/tmp-step-N/``, ``run.json`` last, and renamed to ``step-N`` only when complete,
so a crash or a full disk during a save leaves a ``tmp-`` folder (removed by the next save), never a torn ``step-N``.
A ``step-N`` without ``run.json`` (a torn copy, or one written by cmow before checkpoints were atomic) is incomplete:
resuming skips it, and any checkpoint that cannot be loaded, for the newest complete one before it.

The rules for an output folder:

* A fresh run refuses a folder that holds checkpoints or a saved model of an earlier run: it would mix the two
  runs' checkpoints (``save_total_limit`` would delete the new run's, ``resume`` would pick the old run's) and
  replace the old model. ``overwrite_output_dir`` deletes the old checkpoints first (the old model files are
  replaced when the new run saves).
* ``resume`` continues the newest complete checkpoint, only with the settings it was written with: a differing
  setting (other than those in ``RESUMABLE_CHANGES``) is refused with the list of differences, so the saved config
  always records what was trained.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..modeling_cmow import CMOWPreTrainedModel
from .config import DistillationConfig

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"
PARTIAL_PREFIX = "tmp-"
# Settings a resumed run may change: they decide when the run stops, saves and logs, not what it trains.
RESUMABLE_CHANGES = ("stop_at_step", "save_steps", "save_total_limit", "logging_steps", "report_to")


def _step(folder: Path) -> int | None:
    name = folder.name.removeprefix("step-")
    return int(name) if folder.name.startswith("step-") and name.isdigit() else None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The ``step-N`` folders under ``output_dir/checkpoints``, complete or not, by increasing step."""
    root = Path(output_dir, CHECKPOINTS)
    folders = [folder for folder in root.iterdir() if _step(folder) is not None] if root.is_dir() else []
    return sorted(folders, key=_step)


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint folder was written to the end (its ``run.json`` is written last)."""
    return (folder / RUN_FILE).is_file()


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir/checkpoints``, if any."""
    complete = [folder for folder in checkpoint_folders(output_dir) if is_complete(folder)]
    return complete[-1] if complete else None


def prepare_output_dir(output_dir: Path, *, resume: bool, overwrite: bool, main_process: bool) -> None:
    """Apply the output-folder rules (see the module docstring) and check the folder is writable, before training.

    Every process checks; only the main one deletes.

    Raises:
        FileExistsError: for a fresh run into a folder holding an earlier run, without ``overwrite``.
        FileNotFoundError: for ``resume`` without a complete checkpoint.
        PermissionError: if the folder cannot be created or written to.
    """
    if resume and overwrite:
        raise ValueError("Pass either resume (continue the run in the folder) or overwrite_output_dir, not both.")
    root = output_dir / CHECKPOINTS
    if resume and latest_checkpoint(output_dir) is None:
        raise FileNotFoundError(f"Nothing to resume: no complete checkpoint under {root}.")
    earlier = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
    if not resume and (earlier or (output_dir / "config.json").is_file()):
        if not overwrite:
            found = f"checkpoints ({', '.join(earlier)})" if earlier else "a saved model (config.json)"
            raise FileExistsError(
                f"{output_dir} holds {found} of an earlier run. Pass --resume to continue that run, "
                "--overwrite-output-dir to start afresh (its checkpoints are deleted, its model replaced), "
                "or choose another --output-dir."
            )
        if main_process and root.is_dir():
            logger.warning("Deleting the checkpoints of an earlier run in %s: %s", root, ", ".join(earlier))
            shutil.rmtree(root)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise PermissionError(
            f"Cannot write to the output folder {output_dir} ({error}): choose a writable --output-dir."
        ) from error


def _sync_files(folder: Path) -> None:
    """Flush the files under ``folder`` to disk, so a renamed checkpoint is complete also after a power loss."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as file:
                os.fsync(file.fileno())


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int, run: dict) -> Path:
    """Save the training state as ``checkpoints/step-{step}``, atomically, and keep the newest ``keep`` of them."""
    root = output_dir / CHECKPOINTS
    partial, final = root / f"{PARTIAL_PREFIX}step-{step}", root / f"step-{step}"
    if accelerator.is_main_process:
        for leftover in root.glob(f"{PARTIAL_PREFIX}*"):  # from a save that crashed or ran out of disk
            shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its random states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / RUN_FILE).write_text(json.dumps(run, indent=2, sort_keys=True, default=str) + "\n")
        _sync_files(partial)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        complete = [folder for folder in checkpoint_folders(output_dir) if is_complete(folder)]
        for old in complete[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def run_settings(
    config: DistillationConfig,
    teacher: PreTrainedModel,
    teacher_name: str,
    student: CMOWPreTrainedModel,
    corpus: str | None,
    processes: int,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict:
    """What identifies a run, stored in each of its checkpoints as ``run.json``: a resumed run must match it."""
    teacher_config = teacher.config.to_dict()
    student_config = student.config.to_diff_dict()
    for key in ("_name_or_path", "transformers_version", "teacher", "distillation", "architectures"):
        teacher_config.pop(key, None)
        student_config.pop(key, None)
    teacher_json = json.dumps(teacher_config, sort_keys=True, default=str).encode()
    settings = {
        "teacher": teacher_name,
        "teacher_config": hashlib.blake2b(teacher_json, digest_size=8).hexdigest(),
        "corpus": corpus,
        "student": student_config,
        "distillation": config.to_dict(),
        "processes": processes,
    }
    if student_tokenizer is not None:  # a student vocabulary trained again on resume must come out the same
        vocabulary = json.dumps(student_tokenizer.get_vocab(), sort_keys=True).encode()
        settings["student_vocabulary"] = hashlib.blake2b(vocabulary, digest_size=8).hexdigest()
    return settings


def _flatten(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_run(checkpoint: Path, recorded: dict, run: dict) -> None:
    """Raise a ``ValueError`` naming every setting of ``run`` that differs from the checkpoint's ``recorded`` one."""
    current = _flatten(json.loads(json.dumps(run, default=str)))  # compared as stored: tuples become lists
    recorded = _flatten(recorded)
    changeable = {f"distillation.{name}" for name in RESUMABLE_CHANGES}
    differences = [
        f"{key}: {recorded.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(current) | set(recorded))
        if key not in changeable and recorded.get(key) != current.get(key)
    ]
    if differences:
        raise ValueError(
            f"Cannot resume from {checkpoint}: the run is being resumed with other settings than it was trained "
            f"with ({'; '.join(differences)}). Resume with the checkpoint's settings, or start a new run with "
            "--overwrite-output-dir or another --output-dir."
        )


def resume_latest(accelerator: Accelerator, output_dir: Path, run: dict) -> Path:
    """Load the newest complete checkpoint of this run, skipping incomplete ones and ones that fail to load.

    Raises:
        ValueError: if the newest complete checkpoint was written with other settings (see ``check_same_run``).
        FileNotFoundError: if no checkpoint can be loaded.
    """
    failure = None
    for folder in reversed(checkpoint_folders(output_dir)):
        if not is_complete(folder):
            logger.warning("Skipping the incomplete checkpoint %s (no %s: the save was interrupted)", folder, RUN_FILE)
            continue
        check_same_run(folder, json.loads((folder / RUN_FILE).read_text()), run)
        try:
            accelerator.load_state(str(folder))  # every object it restores is restored again by an older one
        except Exception as error:  # a file truncated or corrupted after the save: any loader's error
            logger.warning("Skipping the checkpoint %s, which cannot be loaded: %s", folder, error)
            failure = error
            continue
        return folder
    raise FileNotFoundError(
        f"Nothing to resume: no loadable checkpoint under {output_dir / CHECKPOINTS}."
    ) from failure
