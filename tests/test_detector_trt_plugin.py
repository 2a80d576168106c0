"""The sai::RoiAlignV0 TensorRT plugin glue (trt_plugins/roiAlignV0), built against TensorRT headers and driven
through the plugin interfaces on the CPU by trt_plugins/tests/roi_align_v0_harness.cpp.

The harness links the glue with a stand-in launcher that records the call and runs the CPU reference
(roiAlignV0Math.h) on host memory: its creator / field / shape / format / serialization checks must pass, and
an enqueue through the plugin on RoIs of every kind (under one cell, points, lines, at and past the borders,
large, INT64 batch indices) must equal the float64 RoIAlign written from the official v0.6 kernel
(tests/test_detector.py: ref_roi_align) and ``sai.models.detector.roi_align_v06``. Skipped without TensorRT
headers (TENSORRT_ROOT / TRT_INCLUDE_DIR), like tests/test_trt_glue.py; the CPU reference alone
(trt_plugins/tests/roi_align_v0_cpu.cpp) is built and checked wherever g++ is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_detector import ref_roi_align
from test_trt_glue import tensorrt_include_dir

from sai.models.detector import roi_align_v06

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "trt_plugins"


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    inc = tensorrt_include_dir()
    if inc is None:
        pytest.skip("no TensorRT headers: set TENSORRT_ROOT or TRT_INCLUDE_DIR to build and test the plugin glue")
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    from sai.kernels import aot

    exe = tmp_path_factory.mktemp("roi") / "roi_align_v0_harness"
    srcs = [PLUGINS / "tests" / "roi_align_v0_harness.cpp", PLUGINS / "roiAlignV0" / "roiAlignV0Plugin.cpp",
            PLUGINS / "common" / "saiPluginCommon.cpp"]
    # shared headers by bare name: trt_plugins/common and the neutral models/csrc/common
    cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
           "-isystem", str(inc), "-isystem", str(aot.cuda_include_dir()), f"-I{PLUGINS / 'common'}",
           f"-I{ROOT / 'models' / 'csrc' / 'common'}", f"-I{PLUGINS / 'roiAlignV0'}", *map(str, srcs),
           "-o", str(exe), "-ldl"]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


@pytest.fixture(scope="module")
def cpu_reference(tmp_path_factory):
    """roiAlignV0Math.h's CPU reference alone (g++, no TensorRT or CUDA header): tested wherever g++ is."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    exe = tmp_path_factory.mktemp("roi_cpu") / "roi_align_v0_cpu"
    cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{PLUGINS / 'roiAlignV0'}",
           str(PLUGINS / "tests" / "roi_align_v0_cpu.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


def _rois(rng):
    xy = rng.uniform(-10, 60, (48, 2))
    wh = np.concatenate([rng.uniform(0, 3.9, (24, 2)), rng.uniform(4, 40, (24, 2))])  # under / over a P2 cell
    rois = np.concatenate([xy, xy + wh], 1)
    rois[:6] = [[0, 0, 0, 0], [47, 35, 47, 35], [-3, -3, -2, -2], [10, 10, 10.5, 30], [44, 0, 80, 50],
                [-20, -20, 100, 100]]  # points, the far corner, outside, a line, past the border, everything
    return rois.astype(np.float32)


def _run(harness, tmp_path, x, rois, b, scale, out=7, n=2):
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    N, C, H, W = x.shape
    with open(src, "wb") as f:
        f.write(np.array([N, C, H, W, len(rois), out, n], np.int32).tobytes())
        f.write(np.float32(scale).tobytes())
        f.write(np.ascontiguousarray(x, np.float32).tobytes())
        f.write(np.ascontiguousarray(rois, np.float32).tobytes())
        f.write(np.ascontiguousarray(b, np.int64).tobytes())
    r = subprocess.run([str(harness), str(src), str(dst)], capture_output=True, text=True, timeout=120)
    return r, (np.fromfile(dst, np.float32).reshape(len(rois), C, out, out) if dst.exists() else None)


def test_glue_checks_pass(harness, tmp_path):
    r, _ = _run(harness, tmp_path, np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 4), np.float32),
                np.zeros(1, np.int64), 0.25)
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed, 0 failed", r.stdout).group(1))
    assert passed >= 50, r.stdout
    for what in ("spatial_scale NaN", "output_size 65", "sampling_ratio 0", "sampling_ratio as INT64",
                 "spatial_scale of length 2"):
        assert f"ok   refused: {what}" in r.stdout, what


@pytest.mark.parametrize("scale", [0.25, 0.125, 1 / 32])
def test_enqueue_is_v06_roialign(harness, tmp_path, scale):
    rng = np.random.RandomState(int(1 / scale))
    x = rng.randn(2, 3, 12, 13).astype(np.float32)
    rois = _rois(rng) / np.float32(0.25 / scale) if scale != 0.25 else _rois(rng)
    b = rng.randint(0, 2, len(rois)).astype(np.int64)
    r, got = _run(harness, tmp_path, x, rois, b, scale)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    ref = np.stack([ref_roi_align(x[bi].astype(np.float64), rois[k].astype(np.float64), scale)
                    for k, bi in enumerate(b)])
    assert np.abs(got - ref).max() < 1e-5
    with torch.no_grad():
        t = torch.cat([roi_align_v06(torch.from_numpy(x[bi]), torch.from_numpy(rois[k:k + 1]), scale)
                       for k, bi in enumerate(b)]).numpy()
    assert np.abs(got - t).max() < 1e-5
    assert np.abs(ref[:24]).max() > 0.1  # the small RoIs are not all zero: the case is exercised


@pytest.mark.parametrize("scale,out,n", [(0.25, 7, 2), (1 / 32, 5, 3)])
def test_cpu_reference_is_v06_roialign(cpu_reference, tmp_path, scale, out, n):
    rng = np.random.RandomState(7)
    x = rng.randn(2, 3, 10, 14).astype(np.float32)
    rois = _rois(rng) * np.float32(0.25 / scale)
    b = rng.randint(0, 2, len(rois)).astype(np.int64)
    b[-1] = 5  # outside the batch: zeros, no read
    r, got = _run(cpu_reference, tmp_path, x, rois, b, scale, out, n)
    assert r.returncode == 0, r.stderr
    ref = np.stack([ref_roi_align(x[bi].astype(np.float64), rois[k].astype(np.float64), scale, out=out, n=n)
                    if bi < 2 else np.zeros((3, out, out)) for k, bi in enumerate(b)])
    assert np.abs(got - ref).max() < 1e-5
    assert np.abs(ref[:24]).max() > 0.1


def test_enqueue_sampling_and_size_attributes(harness, tmp_path):
    rng = np.random.RandomState(5)
    x = rng.randn(1, 2, 9, 11).astype(np.float32)
    rois = _rois(rng)[:20]
    b = np.zeros(len(rois), np.int64)
    r, got = _run(harness, tmp_path, x, rois, b, 0.25, out=5, n=3)
    assert r.returncode == 0, r.stdout[-3000:]
    ref = np.stack([ref_roi_align(x[0].astype(np.float64), roi.astype(np.float64), 0.25, out=5, n=3)
                    for roi in rois])
    assert np.abs(got - ref).max() < 1e-5
