# Two commands for a new user: `make demo` (post-train the tiny Qwen2-VL on the toy domain, CPU) and `make test`.
# Each creates .venv and installs what it needs with the tested versions of constraints.txt; torch is installed
# first (the CPU wheel) so pip never pulls CUDA.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo gallery bench-peer test test-all test-faults lint format typecheck contracts check install install-test clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt $(VENV)/.installed
	$(BIN)/pip install -q -c constraints.txt -e '.[test,dev]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## post-train the tiny Qwen2-VL on the built-in toy domain (CPU), export it, write summary.json
demo: install
	$(BIN)/python train.py experiment=toy/demo

## one run folder (train, synth or evaluate) as one offline HTML page: make gallery RUN=logs/train/runs/<date>
gallery: install
	@test -n "$(RUN)" || { echo "usage: make gallery RUN=<run folder> [OUT=<file.html>]"; exit 2; }
	$(BIN)/python -m mllm_da.dashboards.gallery $(RUN) $(if $(OUT),--out $(OUT))

## our train.py against LLaMA-Factory on the same tiny Qwen2-VL and data (CPU; installs LLaMA-Factory into its own
## venv, benchmarks/.venv-llamafactory; benchmarks/README.md)
bench-peer: install
	$(BIN)/python benchmarks/peer_llamafactory.py

## the default test suite (slow tests excluded)
test: install-test
	$(BIN)/python -m pytest -q

## every test, slow ones included
test-all: install-test
	$(BIN)/python -m pytest -q -m ''

## the whole fault-injection suite (full Hypothesis profile, slow crash tests too); tally in docs/reliability.md
test-faults: install-test
	MLLM_DA_FAULT_PROFILE=full MLLM_DA_FAULT_REPORT=faults-report.json $(BIN)/python -m pytest -q -m '' tests/faults; \
	status=$$?; $(BIN)/python -m tests.faults.report faults-report.json docs/reliability.md; exit $$status

## lint and format check (ruff), types (mypy), import layers (import-linter): what CI runs before the tests
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install-test
	$(BIN)/mypy

contracts: install-test
	$(BIN)/lint-imports

check: lint typecheck contracts test

clean-venv:
	rm -rf $(VENV)
