"""The TensorRT plugin library, built against TensorRT headers and driven on the CPU.

With headers (``TENSORRT_ROOT`` or ``TRT_INCLUDE_DIR``, or a system install): CMake builds
libsai_trt_plugins.so and the C++ harness trt_plugins/tests/glue_harness.cpp warning-free at
-Wall -Wextra; ``nm -D`` must show exactly the two entry points, ``ldd`` no libnvinfer; the harness
(dlopen, getCreators, fields, shapes, formats, serialization, error paths) must pass. Without
headers these are skipped, and the CMake configure step must say loudly that it skipped the glue.

The test build compiles the CUDA kernels for one architecture only (sm_75) to save CI time;
`make cuda-check` compiles them for every architecture.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "trt_plugins"
BUILD = ROOT / "build" / "trt-glue-test"
SYSTEM_HEADER_DIRS = ["/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                      "/usr/local/TensorRT/include", "/opt/tensorrt/include", "/usr/local/tensorrt/include"]


def tensorrt_include_dir() -> Path | None:
    cands = []
    if os.environ.get("TRT_INCLUDE_DIR"):
        cands.append(Path(os.environ["TRT_INCLUDE_DIR"]))
    if os.environ.get("TENSORRT_ROOT"):
        cands += [Path(os.environ["TENSORRT_ROOT"]) / "include", Path(os.environ["TENSORRT_ROOT"])]
    cands += [Path(p) for p in SYSTEM_HEADER_DIRS]
    for c in cands:
        if (c / "NvInferRuntime.h").is_file():
            return c
    return None


def nvcc() -> str | None:
    for c in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if c and Path(c).is_file():
            return c
    return None


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def built():
    inc = tensorrt_include_dir()
    if inc is None:
        pytest.skip("no TensorRT headers: set TENSORRT_ROOT or TRT_INCLUDE_DIR to build and test the plugin glue")
    if shutil.which("cmake") is None or nvcc() is None:
        pytest.skip("cmake and nvcc are needed to build the plugin library")
    cfg = run(["cmake", "-S", SRC, "-B", BUILD, f"-DTRT_INCLUDE_DIR={inc}", f"-DCMAKE_CUDA_COMPILER={nvcc()}",
               "-DCMAKE_CUDA_ARCHITECTURES=75-real"])
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    assert "SKIPPED" not in cfg.stdout + cfg.stderr
    # rebuild the glue from scratch so that its warnings are seen every time
    run(["cmake", "--build", BUILD, "--target", "clean"])
    build = run(["cmake", "--build", BUILD, "-j2"])
    assert build.returncode == 0, build.stdout + build.stderr
    lib = BUILD / "libsai_trt_plugins.so"
    harness = BUILD / "sai_trt_glue_harness"
    assert lib.is_file() and harness.is_file()
    return {"lib": lib, "harness": harness, "log": build.stdout + build.stderr, "include": inc}


def test_builds_warning_free(built):
    warnings = [ln for ln in built["log"].splitlines() if re.search(r"warning", ln, re.IGNORECASE)]
    assert not warnings, "\n".join(warnings)


def test_exports_only_the_two_entry_points(built):
    nm = run(["nm", "-D", "--defined-only", built["lib"]])
    assert nm.returncode == 0, nm.stderr
    symbols = sorted(ln.split()[-1] for ln in nm.stdout.splitlines() if ln.strip())
    assert symbols == ["getCreators", "setLoggerFinder"]


def test_does_not_link_libnvinfer(built):
    ldd = run(["ldd", built["lib"]])
    assert ldd.returncode == 0, ldd.stderr
    assert "nvinfer" not in ldd.stdout
    readelf = run(["readelf", "-d", built["lib"]])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf.stdout)
    assert not [n for n in needed if "nvinfer" in n], needed


def test_glue_harness(built):
    r = run([built["harness"], built["lib"]], timeout=120)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    failures = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert r.returncode == 0 and not failures, r.stdout + r.stderr
    m = re.match(r"(\d+) passed, 0 failed", summary)
    assert m and int(m.group(1)) >= 100, summary


def test_cmake_skips_glue_loudly_without_headers(tmp_path):
    if shutil.which("cmake") is None or nvcc() is None:
        pytest.skip("cmake and nvcc are needed")
    if any((Path(p) / "NvInferRuntime.h").is_file() for p in SYSTEM_HEADER_DIRS):
        pytest.skip("TensorRT headers are installed system-wide here")
    env = {k: v for k, v in os.environ.items() if k not in ("TENSORRT_ROOT", "TRT_INCLUDE_DIR")}
    cfg = run(["cmake", "-S", SRC, "-B", tmp_path / "b", f"-DCMAKE_CUDA_COMPILER={nvcc()}",
               "-DCMAKE_CUDA_ARCHITECTURES=75-real"], env=env)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    out = cfg.stdout + cfg.stderr
    assert "TensorRT headers NOT FOUND" in out and "SKIPPED" in out
    assert "sai_trt_kernels" in (tmp_path / "b" / "Makefile").read_text()
