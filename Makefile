# avsac-lit: every target installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install the package (editable) with the dev extra

demo: install ## Main job: generate SynthAVS-MS3, train AVSAC on the CPU, test it with true, shuffled and silent audio
	$(PY) -m avsac_lit.train +experiment=synthetic_ms3

# One worker process per CPU; a test module's tests stay in one worker, which builds its fixtures.
PYTEST_PARALLEL := -n logical --dist loadscope

test: install ## Run the default test suite (no slow or multiprocess tests), one worker per CPU
	$(PY) -m pytest -m "not slow and not multiprocess" $(PYTEST_PARALLEL)

test-full: install ## Run every test, slow ones included
	$(PY) -m pytest $(PYTEST_PARALLEL)

slurm-check: install ## Start a two-node SLURM cluster on this machine (root), run the slurm tests against it, stop it
	bash .ci/slurm/cluster start
	eval "$$(bash .ci/slurm/cluster env)" && $(PY) -m pytest -m slurm -p no:cacheprovider; \
	status=$$?; bash .ci/slurm/cluster stop; exit $$status

multiprocess-check: install ## Two torchrun agents (as two machines) train one run through an elastic restart
	$(PY) -m pytest -m multiprocess -p no:cacheprovider

gpu-check: install ## On a CUDA machine: parity, paper-scale steps in 3 precisions, compile, DDP -> logs/gpu_check/<time>/ (without CUDA: says so, exit 0)
	$(PY) -m avsac_lit.gpu_check

wheel-check: install ## Build the wheel, install it in a fresh venv (dependencies from .venv), run train, eval and predict from elsewhere
	bash .ci/wheel_check

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## ruff autofix and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove caches and build files (keeps .venv and data)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install demo test test-full slurm-check multiprocess-check gpu-check wheel-check lint format clean
