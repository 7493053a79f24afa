"""The GLUE example scripts' argument checks, run by bash with a stand-in `cmow` that records its calls."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the example scripts are bash")


def run_script(name: str, tmp_path: Path, *args: str, tasks: str = "WNLI") -> tuple[subprocess.CompletedProcess, list]:
    """Run ``examples/NAME ARGS`` with a `cmow` on PATH that appends its arguments to a file; returns its calls."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "cmow"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{calls}"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    env |= {"REPORT": str(tmp_path / "report.md"), "TASKS": tasks}
    result = subprocess.run(["bash", str(EXAMPLES / name), *args], env=env, capture_output=True, text=True)
    return result, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize(
    "args", [["--student-type", "moe"], ["--student-type=moe"], ["--student-t", "moe"], ["--student-typ=moe"]]
)
def test_taskdistill_refuses_a_moe_student_before_anything_runs(tmp_path, args):
    result, calls = run_script("glue_taskdistill.sh", tmp_path, *args)
    assert result.returncode == 2 and calls == []
    assert "distils CMOW students" in result.stderr and "--student-type moe" in result.stderr


def test_taskdistill_passes_its_recipe_and_extra_arguments(tmp_path):
    # argparse takes the last --student-type, so this is a CMOW run.
    result, calls = run_script("glue_taskdistill.sh", tmp_path, "--student-type", "moe", "--student-type", "cmow")
    assert result.returncode == 0, result.stderr
    mnli, wnli, report = calls  # MNLI first: WNLI's teacher starts from MNLI's, missing here; then the report
    assert mnli.startswith("glue MNLI --output-dir") and "--augment-copies 5" in mnli
    assert wnli.startswith("glue WNLI --output-dir") and "--student-name random" in wnli
    assert f"--teacher-base {tmp_path}/out/MNLI/teacher" in wnli
    assert all(call.endswith("--student-type moe --student-type cmow") for call in (mnli, wnli))
    assert report.startswith("glue --output-dir") and "--report" in report


@pytest.mark.parametrize("script", ["glue_taskdistill.sh", "glue_all.sh"])
@pytest.mark.parametrize("tasks", ["", " "])
def test_an_empty_task_list_is_refused(tmp_path, script, tasks):
    result, calls = run_script(script, tmp_path, tasks=tasks)
    assert result.returncode == 2 and calls == []
    assert "TASKS is empty" in result.stderr
