"""Catch an ``accelerate launch`` that silently started fewer processes than it was asked for.

Without GPUs, ``accelerate launch --num_processes 2`` (also with ``--cpu``, unless MPI is set up) starts a single
process and says nothing; the run then takes twice as long as planned. The requested count is not passed on to the
process, so it is read from the launcher's command line (Linux) and from ``WORLD_SIZE``.
"""

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CPU_LAUNCH = (
    "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N --num_machines 1 "
    "--mixed_precision no --dynamo_backend no -m cmow.cli distill ..."
)


def requested_processes(launcher_command: list[str] | None = None) -> int | None:
    """``--num_processes`` of the ``accelerate launch`` command that started this process, or ``None``.

    Args:
        launcher_command: The launcher's arguments; by default the parent process's command line.
    """
    if launcher_command is None:
        try:
            launcher_command = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
        except (OSError, UnicodeDecodeError):
            return None
    if not any("accelerate" in part for part in launcher_command) or not any("launch" in p for p in launcher_command):
        return None
    for index, part in enumerate(launcher_command):
        if part in ("--num_processes", "--num-processes") and index + 1 < len(launcher_command):
            value = launcher_command[index + 1]
        elif part.startswith(("--num_processes=", "--num-processes=")):
            value = part.split("=", 1)[1]
        else:
            continue
        return int(value) if value.isdigit() else None
    return None


def warn_if_fewer_processes(num_processes: int, device: str, launcher_command: list[str] | None = None) -> bool:
    """Warn (and return True) when the launch asked for more processes than the run has."""
    asked = max(requested_processes(launcher_command) or 1, int(os.environ.get("WORLD_SIZE", "1")))
    if asked <= num_processes:
        return False
    logger.warning(
        "accelerate launch was asked for %d processes, but this run has %d (on %s): without GPUs, "
        "`accelerate launch --num_processes N` (also with --cpu, unless MPI is set up) starts one process. "
        "For N processes on the CPU: %s",
        asked,
        num_processes,
        device,
        CPU_LAUNCH,
    )
    return True
