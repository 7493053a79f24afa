"""The GLUE results table: every ``metrics.json`` under a run folder, one row per model, one column per task."""

import json
import platform
import statistics
from pathlib import Path

from .data import TASKS
from .metrics import glue_score

START, END = "<!-- glue-results:start -->", "<!-- glue-results:end -->"


def collect_results(output_dir: str | Path) -> dict[str, dict[str, dict]]:
    """``{role: {task: record}}`` from ``output_dir/<TASK>/<role>/metrics.json`` (roles: teacher, student-...)."""
    results: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(output_dir).glob("*/*/metrics.json")):
        record = json.loads(path.read_text())
        results.setdefault(path.parent.name, {})[record["task"]] = record
    return results


def _roles(results: dict) -> list[str]:
    return sorted(results, key=lambda role: (role != "teacher", role))


def _cell(record: dict | None) -> str:
    if record is None:
        return "—"
    metrics = record["metrics"]
    if len(metrics) == 3:  # two metrics and their mean
        first, second = (value for key, value in metrics.items() if key != "score")
        return f"{100 * first:.1f}/{100 * second:.1f}"
    return f"{100 * metrics['score']:.1f}"


def results_table(results: dict[str, dict[str, dict]]) -> str:
    """A markdown table: GLUE dev scores x100 (MRPC/QQP acc/F1, STS-B Pearson/Spearman, CoLA MCC), GLUE score,
    parameters (whole model on the largest task head, and encoder) and median inference throughput."""
    header = ["model", *TASKS, "GLUE", "params (encoder)", "examples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    teacher = results.get("teacher", {})
    for role in _roles(results):
        records = results[role]
        glue = glue_score({task: r["metrics"]["score"] for task, r in records.items()})
        glue_cell = f"{100 * glue:.1f}"
        if len(records) < len(TASKS):
            glue_cell += f" ({len(records)}/{len(TASKS)} tasks)"
        common = [task for task in records if task in teacher]
        if role != "teacher" and common:
            ratio = glue_score({t: records[t]["metrics"]["score"] for t in common}) / glue_score(
                {t: teacher[t]["metrics"]["score"] for t in common}
            )
            glue_cell += f", {100 * ratio:.0f}% of teacher"
        params = max(r["parameters"] for r in records.values()) / 1e6
        encoder = max(r["encoder_parameters"] for r in records.values()) / 1e6
        speed = statistics.median(r["throughput_examples_per_s"] for r in records.values())
        row = [role, *(_cell(records.get(task)) for task in TASKS), glue_cell]
        row += [f"{params:.1f}M ({encoder:.1f}M)", f"{speed:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def timing_table(results: dict[str, dict[str, dict]]) -> str:
    """A markdown table of training wall-clock seconds per task and model."""
    roles = _roles(results)
    lines = ["| task | " + " | ".join(f"{role} train s" for role in roles) + " |", "|---|" + "---|" * len(roles)]
    for task in TASKS:
        cells = [results[role].get(task, {}).get("train_seconds") for role in roles]
        if any(cell is not None for cell in cells):
            lines.append(f"| {task} | " + " | ".join("—" if c is None else f"{c:.0f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(output_dir: str | Path, path: str | Path, command: str) -> str:
    """Write the results and timing tables with the command that made them into ``path``.

    If ``path`` exists and holds the markers ``<!-- glue-results:start -->`` / ``<!-- glue-results:end -->``, only
    the text between them is replaced; otherwise the file is (over)written.
    """
    results = collect_results(output_dir)
    if not results:
        raise FileNotFoundError(f"No GLUE results under {output_dir}: run `cmow glue TASK` first.")
    section = (
        f"Command: `{command}`\n\nHardware: {platform.machine()} CPU, {platform.system()}; GLUE dev sets; "
        "QNLI/QQP/MNLI trained on 9k-example subsets of their train sets (and QQP/MNLI evaluated on 1k-example dev "
        "subsets).\n\n" + results_table(results) + "\nTraining time (wall-clock seconds):\n\n" + timing_table(results)
    )
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + START + "\n" + section + END + rest.split(END, 1)[1]
    else:
        text = START + "\n" + section + END + "\n"
    path.write_text(text)
    return section
