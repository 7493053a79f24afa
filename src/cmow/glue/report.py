"""The GLUE results tables: every ``metrics.json`` under a run folder, one row per model, one column per task.

Rows: the majority-class baseline, the paper's CMOW student (Galke et al.), the teacher and every student. Beside
the scores: the GLUE score, the students' retention of the teacher's score, how epochs were selected, parameters and
inference throughput; then retention per task, training times and the commands each run recorded.
"""

import json
import platform
import statistics
from pathlib import Path

from .data import TASKS
from .metrics import glue_score

START, END = "<!-- glue-results:start -->", "<!-- glue-results:end -->"

PAPER_ROLE = "paper CMOW (Galke et al.)"
# Galke et al., supplementary Table III: bidirectional Hybrid CMOW + MLP head, general distillation from BERT-base,
# GLUE dev. MRPC is the mean of accuracy and F1, STS-B of Pearson and Spearman; the other tasks are not given there.
PAPER_SCORES = {"CoLA": 0.167, "SST-2": 0.829, "MRPC": 0.797, "STS-B": 0.769, "RTE": 0.610, "WNLI": 0.563}
# Runs from before the selection option kept the best epoch on dev.
LEGACY_SELECTION = "dev"


def collect_results(output_dir: str | Path) -> dict[str, dict[str, dict]]:
    """``{role: {task: record}}`` from ``output_dir/<TASK>/<role>/metrics.json`` (majority, teacher, student-...)."""
    results: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(output_dir).glob("*/*/metrics.json")):
        record = json.loads(path.read_text())
        results.setdefault(path.parent.name, {})[record["task"]] = record
    return results


def _paper_records() -> dict[str, dict]:
    return {task: {"metrics": {"score": score}} for task, score in PAPER_SCORES.items()}


def _roles(results: dict) -> list[str]:
    first = {"majority": 0, PAPER_ROLE: 1, "teacher": 2}
    return sorted(results, key=lambda role: (first.get(role, 3), role))


def _cell(record: dict | None) -> str:
    if record is None:
        return "—"
    metrics = record["metrics"]
    if len(metrics) == 3:  # two metrics and their mean
        first, second = (value for key, value in metrics.items() if key != "score")
        return f"{100 * first:.1f}/{100 * second:.1f}"
    return f"{100 * metrics['score']:.1f}"


def _scores(records: dict[str, dict], tasks) -> dict[str, float]:
    return {task: records[task]["metrics"]["score"] for task in tasks}


def _retention(records: dict[str, dict], teacher: dict[str, dict]) -> str:
    """The GLUE score over the tasks both have, as a percentage of the teacher's."""
    common = [task for task in records if task in teacher]
    if not common:
        return "—"
    return f"{100 * glue_score(_scores(records, common)) / glue_score(_scores(teacher, common)):.0f}%"


def _selection(records: dict[str, dict]) -> str:
    methods = {record.get("selection", {}).get("method", LEGACY_SELECTION) for record in records.values()}
    return ", ".join(sorted(methods))


def results_table(results: dict[str, dict[str, dict]]) -> str:
    """A markdown table: GLUE dev scores x100 (MRPC/QQP acc/F1, STS-B Pearson/Spearman, CoLA MCC), GLUE score,
    retention of the teacher's GLUE score (over the tasks both ran), epoch selection, parameters (whole model on the
    largest task head, and encoder) and median inference throughput."""
    header = ["model", *TASKS, "GLUE", "% of teacher", "selection", "params (encoder)", "examples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    results = results | {PAPER_ROLE: _paper_records()}
    teacher = results.get("teacher", {})
    for role in _roles(results):
        records = results[role]
        glue_cell = f"{100 * glue_score(_scores(records, records)):.1f}"
        if len(records) < len(TASKS):
            glue_cell += f" ({len(records)}/{len(TASKS)} tasks)"
        student = role.startswith("student")
        measured = [r for r in records.values() if "parameters" in r]
        size = speed = selection = "—"
        if measured:
            params = max(r["parameters"] for r in measured) / 1e6
            encoder = max(r["encoder_parameters"] for r in measured) / 1e6
            size = f"{params:.1f}M ({encoder:.1f}M)"
            speed = f"{statistics.median(r['throughput_examples_per_s'] for r in measured):.0f}"
            selection = _selection(records)
        row = [role, *(_cell(records.get(task)) for task in TASKS), glue_cell]
        row += [_retention(records, teacher) if student else "—", selection, size, speed]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def retention_table(results: dict[str, dict[str, dict]]) -> str:
    """A markdown table of each student's task score as a percentage of the teacher's, per task."""
    teacher = results.get("teacher", {})
    students = [role for role in _roles(results) if role.startswith("student")]
    lines = ["| model | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    for role in students:
        cells = []
        for task in TASKS:
            record, reference = results[role].get(task), teacher.get(task)
            usable = record is not None and reference is not None and reference["metrics"]["score"] > 0
            cells.append(f"{100 * record['metrics']['score'] / reference['metrics']['score']:.0f}%" if usable else "—")
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _seconds(record: dict | None) -> str:
    if record is None or record.get("train_seconds") is None:
        return "—"
    label = (record.get("transfer") or {}).get("label_seconds")
    return f"{record['train_seconds']:.0f}" + ("" if label is None else f" (+{label:.0f} labelling)")


def timing_table(results: dict[str, dict[str, dict]]) -> str:
    """A markdown table of training wall-clock seconds per task and model (and the teacher's transfer labelling)."""
    roles = [role for role in _roles(results) if role != "majority"]
    lines = ["| task | " + " | ".join(f"{role} train s" for role in roles) + " |", "|---|" + "---|" * len(roles)]
    for task in TASKS:
        cells = [_seconds(results[role].get(task)) for role in roles]
        if any(cell != "—" for cell in cells):
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def commands_list(results: dict[str, dict[str, dict]]) -> str:
    """Each model's recorded commands, with the tasks each one ran (the majority baseline comes with any run)."""
    lines = []
    for role in _roles(results):
        if role == "majority":
            continue
        by_command: dict[str, list[str]] = {}
        for task, record in results[role].items():
            if record.get("command"):
                by_command.setdefault(record["command"], []).append(task)
        if by_command:
            cited = "; ".join(f"`{command}` ({', '.join(tasks)})" for command, tasks in by_command.items())
            lines.append(f"- {role}: {cited}")
    return "\n".join(lines) + "\n" if lines else ""


def write_report(output_dir: str | Path, path: str | Path, command: str) -> str:
    """Write the results, retention and timing tables with the commands that made them into ``path``.

    If ``path`` exists and holds the markers ``<!-- glue-results:start -->`` / ``<!-- glue-results:end -->``, only
    the text between them is replaced; otherwise the file is (over)written.
    """
    results = collect_results(output_dir)
    if not results:
        raise FileNotFoundError(f"No GLUE results under {output_dir}: run `cmow glue TASK` first.")
    section = (
        f"Command: `{command}`\n\nHardware: {platform.machine()} CPU, {platform.system()}; GLUE dev sets; "
        "QNLI/QQP/MNLI trained on 9k-example subsets of their train sets (and QQP/MNLI evaluated on 1k-example dev "
        "subsets). Selection: the epoch kept was the best on a held-out slice of train (`held-out`), the last "
        "(`last`) or the best on dev (`dev`, which flatters); dev is otherwise scored once. The majority row answers "
        f"the most frequent train class; the {PAPER_ROLE} row is the paper's (BERT-base teacher).\n\n"
        + results_table(results)
        + "\nStudent score as % of the teacher's, per task:\n\n"
        + retention_table(results)
        + "\nTraining time (wall-clock seconds):\n\n"
        + timing_table(results)
    )
    commands = commands_list(results)
    if commands:
        section += "\nCommands recorded by the runs:\n\n" + commands
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + START + "\n" + section + END + rest.split(END, 1)[1]
    else:
        text = START + "\n" + section + END + "\n"
    path.write_text(text)
    return section
