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

import json
import os
import re
import shutil
import subprocess
import sys
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
    # SAI_KERNELS_DIR: a `make kernels` output elsewhere than build/kernels (CMake's variable of that name)
    kdir = [f"-DSAI_KERNELS_DIR={os.environ['SAI_KERNELS_DIR']}"] if os.environ.get("SAI_KERNELS_DIR") else []
    cfg = run(["cmake", "-S", SRC, "-B", BUILD, f"-DTRT_INCLUDE_DIR={inc}", f"-DCMAKE_CUDA_COMPILER={nvcc()}",
               "-DCMAKE_CUDA_ARCHITECTURES=75-real", *kdir])
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    assert "SKIPPED" not in cfg.stdout + cfg.stderr
    # rebuild the glue from scratch so that its warnings are seen every time
    run(["cmake", "--build", BUILD, "--target", "clean"])
    build = run(["cmake", "--build", BUILD, "-j2", "--target", "all", "sai_fake_nvinfer", "sai_fake_nvinfer_lean",
                 "sai_trt_plugins_fullcaps"])
    assert build.returncode == 0, build.stdout + build.stderr
    lib = BUILD / "libsai_trt_plugins.so"
    harness = BUILD / "sai_trt_glue_harness"
    autoload = BUILD / "libsai_trt_plugins_autoload.so"
    assert lib.is_file() and harness.is_file() and autoload.is_file()
    major = re.search(r"#define (?:TRT_MAJOR_ENTERPRISE|NV_TENSORRT_MAJOR) (\d+)", (inc / "NvInferVersion.h").read_text()).group(1)
    fakes = {name: BUILD / f"fake-{name}" / f"lib{name}.so.{major}" for name in ("nvinfer", "nvinfer_lean")}
    assert all(f.is_file() for f in fakes.values())
    fullcaps = BUILD / "libsai_trt_plugins_fullcaps.so"
    assert fullcaps.is_file()
    return {"lib": lib, "harness": harness, "autoload": autoload, "log": build.stdout + build.stderr, "include": inc,
            "major": major, "fakes": fakes, "fullcaps": fullcaps}


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


def test_links_neither_the_cuda_driver_nor_cudart(built):
    # the kernels' launcher resolves the driver from libcuda.so.1 at the first launch: the library
    # loads, registers and answers queries where no driver is installed
    readelf = run(["readelf", "-d", built["lib"]])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf.stdout)
    assert not [n for n in needed if n.startswith(("libcuda", "libcudart"))], needed
    # and it carries the embedded Triton cubins (the .incbin section) with their manifest
    data = built["lib"].read_bytes()
    from sai.runtime.environment import kernels_manifest

    manifest = kernels_manifest(data)
    assert manifest is not None and "sparse_conv_fp16_k3_relu" in manifest["specs"]
    assert manifest["specs"]["sparse_conv_fp16_k3_relu"]["archs"] == [75, 80, 86, 89, 90, 100, 120]


def test_autoload_companion_needs_libnvinfer_and_exports_nothing(built):
    readelf = run(["readelf", "-d", built["autoload"]])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", readelf.stdout)
    assert f"libnvinfer.so.{built['major']}" in needed, needed
    assert "RPATH" not in readelf.stdout and "RUNPATH" not in readelf.stdout, "no path to the link-time stub"
    nm = run(["nm", "-D", "--defined-only", built["autoload"]])
    assert [ln for ln in nm.stdout.splitlines() if ln.strip()] == []


def harness(built, lib, *args) -> str:
    r = run([built["harness"], lib, *args], timeout=120)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    failures = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert r.returncode == 0 and not failures, r.stdout + r.stderr
    m = re.match(r"(\d+) passed, 0 failed", summary)
    assert m and int(m.group(1)) >= 100, summary
    return r.stdout


def test_glue_harness(built):
    out = harness(built, built["lib"])
    # the Triton kernels take every layout TensorRT defines for FP32/FP16/BF16 and an FP32 mask
    assert "SparseSampleConv: supportsFormatCombination accepts exactly the 27 expected combinations (got 27)" in out
    assert "Interpolate: supportsFormatCombination accepts exactly the 27 expected combinations (got 27)" in out


def test_glue_harness_every_format_with_full_kernel_caps(built):
    # the glue with stand-in kernels that take every layout, BF16 and an FP32 mask: FP32 kLINEAR/kHWC,
    # FP16 kLINEAR/kHWC8/kHWC16, BF16 kLINEAR/kHWC8, each configured with the strides it implies
    out = harness(built, built["fullcaps"], "--kernels", "full")
    for op in ("SparseSampleConv", "Interpolate"):
        assert f"{op}: supportsFormatCombination accepts exactly the 27 expected combinations (got 27)" in out
        assert len(re.findall(rf"^ok   {op}: configure/workspace/onShapeChange with", out, re.M)) == 27
    assert "X FP16/kHWC8, M FP32/kLINEAR" in out and "X BF16/kHWC8" in out and "X FP32/kHWC," in out


def test_cmake_skips_glue_loudly_without_headers(tmp_path):
    if shutil.which("cmake") is None or nvcc() is None:
        pytest.skip("cmake and nvcc are needed")
    if any((Path(p) / "NvInferRuntime.h").is_file() for p in SYSTEM_HEADER_DIRS):
        pytest.skip("TensorRT headers are installed system-wide here")
    env = {k: v for k, v in os.environ.items() if k not in ("TENSORRT_ROOT", "TRT_INCLUDE_DIR")}
    # configuring only checks that the AOT kernels' C++ exists (building compiles it): a stand-in, so the test
    # needs no `make kernels` before it
    kdir = tmp_path / "kernels"
    kdir.mkdir()
    (kdir / "sai_kernels_embedded.cpp").write_text("// stand-in for python -m sai.kernels.aot's output\n")
    cfg = run(["cmake", "-S", SRC, "-B", tmp_path / "b", f"-DCMAKE_CUDA_COMPILER={nvcc()}",
               "-DCMAKE_CUDA_ARCHITECTURES=75-real", f"-DSAI_KERNELS_DIR={kdir}"], env=env)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    out = cfg.stdout + cfg.stderr
    assert "TensorRT headers NOT FOUND" in out and "SKIPPED" in out
    assert "sai_trt_kernels" in (tmp_path / "b" / "Makefile").read_text()


# ---- registration in every host, against a fake libnvinfer (trt_plugins/tests/fake_nvinfer.cpp) --
# Each scenario runs in a fresh process: the fake plays the libnvinfer of the host, loaded the way
# that host loads it; the plugin library is loaded the way that host loads plugins. The expectation
# is always the same: each creator registered exactly once in the host's registry, no registration
# refused as a duplicate, none attempted while the registry is locked (re-entrant from loadLibrary).
SCENARIO = r"""
import ctypes, json, os, sys
lib, autoload, fake, lean, how = sys.argv[1:6]
LOCAL, GLOBAL = os.RTLD_NOW | os.RTLD_LOCAL, os.RTLD_NOW | os.RTLD_GLOBAL

def runtime(path, mode=LOCAL):
    f = ctypes.CDLL(path, mode=mode)
    f.fakeLoadLibrary.restype = ctypes.c_void_p
    return f

def counts(f):
    return {"SparseSampleConv": f.fakeRegistrations(b"SparseSampleConv"), "Interpolate": f.fakeRegistrations(b"Interpolate"),
            "rejected": f.fakeRejected(), "reentrant": f.fakeReentrant()}

out = {}
if how == "sai":                      # python: import tensorrt (RTLD_LOCAL), registry.load_library(lib)
    f = runtime(fake)
    out["handle"] = bool(f.fakeLoadLibrary(lib.encode()))
elif how == "trtexec":                # executable linked to libnvinfer (global scope), --dynamicPlugins=lib
    f = runtime(fake, GLOBAL)
    out["handle"] = bool(f.fakeLoadLibrary(lib.encode()))
elif how == "trtexec_static":         # --staticPlugins=lib: trtexec (linked to libnvinfer) dlopens it
    f = runtime(fake, GLOBAL)
    ctypes.CDLL(lib, mode=LOCAL)
elif how == "polygraphy":             # tensorrt imported, then --plugins: ctypes.CDLL(lib)
    f = runtime(fake)
    ctypes.CDLL(lib)
elif how == "polygraphy_then_load_library":   # the same process later calls load_library(lib) as well
    f = runtime(fake)
    ctypes.CDLL(lib)
    out["handle"] = bool(f.fakeLoadLibrary(lib.encode()))
elif how == "polygraphy_before_tensorrt":     # --plugins autoload library before `import tensorrt`
    ctypes.CDLL(autoload)
    f = runtime(fake)
elif how == "triton_plugins":         # the TensorRT backend (linked to libnvinfer) dlopens plugins=lib
    f = runtime(fake)
    ctypes.CDLL(lib, mode=LOCAL)
elif how == "ld_preload":             # LD_PRELOAD=... tritonserver; the backend loads libnvinfer later
    f = runtime(fake)
elif how == "version_compatible":     # plugins= lib, then a VC engine's lean runtime loads it too
    f = runtime(fake)
    ctypes.CDLL(lib, mode=LOCAL)
    g = runtime(lean)
    out["handle"] = bool(g.fakeLoadLibrary(lib.encode()))
    out["lean"] = counts(g)
out["full"] = counts(f)
print(json.dumps(out))
"""

ONCE = {"SparseSampleConv": 1, "Interpolate": 1, "rejected": 0, "reentrant": 0}


def scenario(built, how, preload=None):
    env = dict(os.environ, SAI_TRT_PLUGINS_DEBUG="1")
    env.pop("SAI_TRT_PLUGINS_NO_AUTOREGISTER", None)
    env["LD_LIBRARY_PATH"] = str(built["fakes"]["nvinfer"].parent)  # where the loader finds libnvinfer.so.N
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    r = run([sys.executable, "-c", SCENARIO, built["lib"], built["autoload"], built["fakes"]["nvinfer"],
             built["fakes"]["nvinfer_lean"], how], env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.mark.parametrize("how", ["sai", "trtexec"])
def test_load_library_hosts_register_once(built, how):
    out, log = scenario(built, how)
    assert out["handle"], log
    assert out["full"] == ONCE, log
    assert "loaded by TensorRT's loadLibrary" in log


@pytest.mark.parametrize("how", ["polygraphy", "triton_plugins", "polygraphy_then_load_library", "trtexec_static"])
def test_dlopen_hosts_register_on_load_once(built, how):
    out, log = scenario(built, how)
    assert out["full"] == ONCE, log
    assert "registered SparseSampleConv on load" in log
    if how == "polygraphy_then_load_library":
        assert out["handle"] and "returning none" in log, log


def test_autoload_before_tensorrt_registers_once(built):
    out, log = scenario(built, "polygraphy_before_tensorrt")
    assert out["full"] == ONCE, log


def test_ld_preload_autoload_registers_once(built):
    out, log = scenario(built, "ld_preload", preload=built["autoload"])
    assert out["full"] == ONCE, log


def test_ld_preload_main_library_alone_finds_no_tensorrt(built):
    # documents why the autoload companion exists: preloaded before libnvinfer, the main library
    # (no libnvinfer dependency by design) has no registry to register into
    out, log = scenario(built, "ld_preload", preload=built["lib"])
    assert out["full"]["SparseSampleConv"] == 0 and "no TensorRT" in log


def test_version_compatible_lean_runtime_gets_the_creators(built):
    out, log = scenario(built, "version_compatible")
    assert out["full"] == ONCE, log
    assert out["handle"] and out["lean"] == ONCE, log


def test_no_registration_into_another_tensorrt_major(built):
    other = (int(built["major"]) + 1) * 10000 + 100
    env = dict(os.environ, SAI_TRT_PLUGINS_DEBUG="1", FAKE_NVINFER_VERSION=str(other))
    r = run([sys.executable, "-c", SCENARIO, built["lib"], built["autoload"], built["fakes"]["nvinfer"],
             built["fakes"]["nvinfer_lean"], "polygraphy"], env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["full"]["SparseSampleConv"] == 0
    assert f"version {other}" in r.stderr


def test_no_autoregister_switch(built):
    env = dict(os.environ, SAI_TRT_PLUGINS_DEBUG="1", SAI_TRT_PLUGINS_NO_AUTOREGISTER="1")
    r = run([sys.executable, "-c", SCENARIO, built["lib"], built["autoload"], built["fakes"]["nvinfer"],
             built["fakes"]["nvinfer_lean"], "polygraphy"], env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["full"]["SparseSampleConv"] == 0


# ---- sai doctor: what the installed library carries ---------------------------------------------
def test_doctor_reports_the_library_kernels_and_tensorrt_major(built):
    from sai.runtime.environment import plugin_library_report

    report = plugin_library_report(built["lib"])
    assert f"for TensorRT {built['major']}" in report and "autoload library beside it" in report
    # the embedded Triton kernels of make kernels (build/kernels or SAI_KERNELS_DIR: every arch): one build per
    # cubin name on disk, its tactic variants (``__t2``) counted once
    kdir = Path(os.environ.get("SAI_KERNELS_DIR") or ROOT / "build" / "kernels")
    builds = {re.sub(r"__t\d+$", "", p.stem) for p in kdir.glob("sm_*/*.cubin")}
    assert builds, f"no cubins under {kdir}"
    assert f"Triton 3.6.0 kernels: {len(builds)} builds for sm_75, sm_80, sm_86, sm_89, sm_90, sm_100, sm_120" in report
    assert "tactics 1, 2" in report


def test_doctor_reads_fatbin_archs(tmp_path):
    if nvcc() is None:
        pytest.skip("nvcc is needed")
    from sai.runtime.environment import _elf_sections, fatbin_archs

    (tmp_path / "k.cu").write_text("__global__ void k(float* x) { x[threadIdx.x] += 1.f; }\n"
                                   "void launch(float* x) { k<<<1, 32>>>(x); }\n")
    so = tmp_path / "k.so"
    r = run([nvcc(), "-shared", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_75,code=sm_75", "-gencode",
             "arch=compute_90,code=sm_90", "-gencode", "arch=compute_120,code=compute_120", tmp_path / "k.cu", "-o", so])
    assert r.returncode == 0, r.stderr
    data = so.read_bytes()
    assert fatbin_archs(data, _elf_sections(data)) == ([75, 90], [120])
