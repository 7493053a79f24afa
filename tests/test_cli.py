import argparse
import logging
import subprocess
import sys

import huggingface_hub.utils
import pytest
import transformers

from cmow.cli import COMMANDS, build_parser, configure_logging, main


def command_parser(command: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def test_help_lists_distill_first_and_imports_no_training_stack():
    # `python -m cmow` also checks that the command line runs where the venv's cmow is not on PATH.
    command = [sys.executable, "-X", "importtime", "-m", "cmow", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"datasets", "sklearn", "cmow.distill", "cmow.glue", "cmow.evaluation"}
    listed = [line.split()[0] for line in result.stdout.splitlines() if line[:4] == "    " and line[4:5].strip()]
    assert listed[: len(COMMANDS)] == list(COMMANDS) and listed[0] == "distill"


@pytest.mark.parametrize("command", ["glue", "train-sst2", "export"])
def test_every_option_has_help_and_shows_its_default(command):
    for action in command_parser(command)._actions:
        if action.dest == "help" or not action.option_strings:
            continue
        assert action.help, f"{command} {action.option_strings} has no help"
        if not isinstance(action, argparse._StoreTrueAction):
            assert "default" in action.help, f"{command} {action.option_strings} does not say its default"


def test_every_command_parses_its_own_options():
    for command in COMMANDS:
        assert command_parser(command).description, command


def test_user_errors_are_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CMOW_DATA_DIR", raising=False)
    assert main(["distill", "--output-dir", str(tmp_path / "student"), "--max-steps", "1"]) == 2
    error = capsys.readouterr().err
    assert "cmow distill: error: No data folder: pass --data-dir or set CMOW_DATA_DIR" in error
    assert "Traceback" not in error
    with pytest.raises(FileNotFoundError):
        main(["--verbose", "distill", "--data-dir", str(tmp_path / "missing"), "--max-steps", "1"])


def test_quiet_by_default_verbose_on_request():
    try:
        configure_logging(verbose=False)
        assert transformers.logging.get_verbosity() == transformers.logging.ERROR  # no LOAD REPORT tables
        assert not transformers.logging.is_progress_bar_enabled()  # no "Loading weights" bars
        assert logging.getLogger("cmow").getEffectiveLevel() <= logging.INFO
    finally:
        transformers.logging.set_verbosity_warning()
        transformers.logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
