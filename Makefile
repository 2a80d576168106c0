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

# The C++ CPU kernels of the sai ops (a PyTorch extension; sai.models falls back to the PyTorch
# reference without them, tests require them).
CPU_KERNELS := models/_lib/libsai_cpu_ops.so
$(CPU_KERNELS): $(STAMP) models/csrc/sai_cpu_ops.cpp $(wildcard trt_plugins/common/*.h)
	$(PY) -m sai.models.build_cpu_kernels --force

install: $(STAMP) $(CPU_KERNELS)

lint: install
	$(VENV)/bin/ruff check .

pytest: install
	SAI_REQUIRE_CPU_KERNELS=1 $(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test: lint pytest

gpu-test: install
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
