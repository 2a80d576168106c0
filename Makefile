# sai-deploy: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.sai-installed
TORCH_PIN := torch==2.13.0
PYTEST_ARGS ?= --durations=15

.PHONY: help install test lint pytest gpu-test clean plugins cuda-check cuda-tools demo bench kernels gpu-check wheel

help:
	@echo "make test      install (venv), lint, CPU test suite"
	@echo "make demo      end-to-end demo on the shipped checkpoint -> demo_out/report.html (CPU, ~3 min)"
	@echo "make wheel     dist/sai_deploy-*.whl with the C++ CPU kernels and libsai_ort_ops.so built in (g++, npm)"
	@echo "make gpu-test  GPU/TensorRT tests (needs an NVIDIA GPU and TensorRT)"
	@echo "make plugins   build libsai_trt_plugins.so (TensorRT headers: TENSORRT_ROOT or TRT_INCLUDE_DIR)"
	@echo "make cuda-check check every kernel cubin for all target GPUs (arch, spills, occupancy, SASS loops -> build/cuda-check/kernels.json) and count the torch CUDA path's launches per forward (-> build/launch_counts.json); PTX and host code with CUDA 12 too"
	@echo "make kernels   Triton kernels -> cubins/PTX for sm_75..sm_120 + embedded C++ (build/kernels, no GPU)"
	@echo "make gpu-check the one prepared GPU run: parity, timings vs cuDNN, autotune (build/gpu-check)"

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
$(CPU_KERNELS): $(STAMP) models/csrc/sai_cpu_ops.cpp models/csrc/sai_cpu_kernels.h models/csrc/sai_cpu_blocks.h \
		models/csrc/sai_cpu_gemm.h $(wildcard models/csrc/common/*.h)
	$(PY) -m sai.models.build_cpu_kernels --force

# The onnxruntime custom-op library on the same kernels (sai.runtime.ort_ops registers it where it is
# built). ONNX Runtime headers: PyPI's wheel has none, see runtime/build_ort_ops.py; without them this
# step says so in one line and onnxruntime runs the function bodies. GEMM: PyPI's scipy-openblas32.
ORT_OPS := runtime/lib/libsai_ort_ops.so
OPENBLAS_PIN := scipy-openblas32==0.3.34.481.3
$(ORT_OPS): $(STAMP) models/csrc/ort/sai_ort_ops.cpp models/csrc/ort/sai_ort_ops.map models/csrc/sai_cpu_kernels.h \
		models/csrc/sai_cpu_blocks.h models/csrc/sai_cpu_gemm.h \
		$(wildcard models/csrc/common/*.h)
	$(PY) -c "import scipy_openblas32" 2>/dev/null || $(PIP) install -q "$(OPENBLAS_PIN)"
	$(PY) -m sai.runtime.build_ort_ops --force

install: $(STAMP) $(CPU_KERNELS) $(ORT_OPS)

# A platform wheel with both C++ libraries compiled in (build_backend/sai_build.py; the build environment
# gets torch and scipy-openblas32). `make install` above stays an editable install that compiles nothing in pip.
wheel: $(STAMP)
	$(PIP) wheel --no-deps -w dist .

lint: install
	$(VENV)/bin/ruff check .

pytest: install
	SAI_REQUIRE_CPU_KERNELS=1 $(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test: lint kernels cuda-check pytest

# The shipped demo model (models/zoo/sai_demo_r18, from `sai train-demo`) through convert, validate,
# bench --compare-dense and the HTML report with mask overlays (demo_out/report.html).
DEMO_OUT ?= demo_out
demo: install
	$(VENV)/bin/sai demo --out $(DEMO_OUT)

gpu-test: install plugins
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

# ---- Triton kernels (kernels/ = sai.kernels) -----------------------------------------------------
# Ahead-of-time cubins + PTX for every target arch (no GPU needed), the generated C++ that embeds
# them, compiled with g++ against the CUDA headers (compile only) with the driver-API launcher.
KERNELS_OUT ?= build/kernels
kernels: install
	env -u TRITON_INTERPRET $(PY) -m sai.kernels.aot --out $(KERNELS_OUT) --jobs 2 --cxx

# The one prepared GPU run (docs/design.md 6): on a GPU machine it writes $(OUT)/gpu-check.json in a few
# minutes; without a GPU it runs end to end under the Triton interpreter at tiny sizes. No install
# step: a lent GPU machine has no network, so the script runs from the checkout with the machine's
# python (torch + triton there); GPU_CHECK_ARGS e.g. --write-configs --budget-s 300.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --out $${OUT:-build/gpu-check} $(GPU_CHECK_ARGS)

# ---- TensorRT plugins (trt_plugins/, CMake inside) ---------------------------------------------
# CUDA tools from PyPI for cuda-check (the CUDA 13 toolkit comes with the machine): CUDA 12.9's
# ptxas assembles the kernels' PTX again and its headers build the host code; cuobjdump reads the
# architecture of each cubin.
CUDA_TOOLS_STAMP := $(VENV)/.sai-cuda-tools
CUDA_TOOLS := nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-cuobjdump==13.2.86
$(CUDA_TOOLS_STAMP): $(STAMP)
	$(PIP) install -q $(CUDA_TOOLS)
	touch $@

cuda-tools: $(CUDA_TOOLS_STAMP)

cuda-check: $(CUDA_TOOLS_STAMP) kernels
	$(PY) trt_plugins/tests/cuda_check.py --out build/cuda-check --kernels $(KERNELS_OUT) --jobs 2
	$(PY) -m sai.kernels.launch_count --out build/launch_counts.json

NVCC ?= $(or $(shell command -v nvcc 2>/dev/null),/usr/local/cuda/bin/nvcc)
PLUGIN_BUILD := build/trt_plugins
PLUGIN_LIB := runtime/lib/libsai_trt_plugins.so
TRT_CMAKE_ARGS := $(if $(TENSORRT_ROOT),-DTENSORRT_ROOT=$(TENSORRT_ROOT)) $(if $(TRT_INCLUDE_DIR),-DTRT_INCLUDE_DIR=$(TRT_INCLUDE_DIR))

# Builds the kernels' launchers always, the plugin library (the cubins of `make kernels` inside)
# when TensorRT headers are found (else CMake says loudly that it skipped it), and installs the
# library into the package: runtime/lib/ is where sai.runtime.plugins.find_plugin_library() looks.
plugins: kernels
	cmake -S trt_plugins -B $(PLUGIN_BUILD) -DCUDAToolkit_ROOT=$(dir $(NVCC)).. \
		-DSAI_KERNELS_DIR=$(abspath $(KERNELS_OUT)) $(TRT_CMAKE_ARGS)
	cmake --build $(PLUGIN_BUILD) -j2
	@if [ -f $(PLUGIN_BUILD)/libsai_trt_plugins.so ]; then \
		mkdir -p $(dir $(PLUGIN_LIB)) && cp $(PLUGIN_BUILD)/libsai_trt_plugins.so $(PLUGIN_LIB) && \
		cp $(PLUGIN_BUILD)/libsai_trt_plugins_autoload.so $(dir $(PLUGIN_LIB)) && \
		echo "plugins: installed $(PLUGIN_LIB) and $(dir $(PLUGIN_LIB))libsai_trt_plugins_autoload.so"; \
	else echo "plugins: *** no TensorRT headers: built the kernels' launchers only, no plugin library ***"; fi

# Sparse vs dense speed on this machine's CPU (ops, a block, sparse_resnet101, ONNX Runtime).
bench: install
	mkdir -p bench_out
	$(VENV)/bin/sai bench-ops -o bench_out/bench_ops.json

clean:
	rm -rf build .pytest_cache .ruff_cache bench_out
