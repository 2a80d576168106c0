# sai-deploy: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.sai-installed
TORCH_PIN := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: help install test lint pytest gpu-test clean

help:
	@echo "make test      install (venv), lint, CPU test suite"
	@echo "make demo      end-to-end demo (arrives with a later issue)"
	@echo "make gpu-test  GPU/TensorRT tests (needs an NVIDIA GPU and TensorRT)"

# The virtual environment with the package and its dev tools. torch is pinned to the CPU build
# that lies on these machines' disk; an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

pytest: install
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test: lint pytest

gpu-test: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
