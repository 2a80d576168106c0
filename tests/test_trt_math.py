"""The TensorRT plugins' shared kernel math (models/csrc/common), built for the CPU, against
independent references: torch.nn.functional.conv2d, ONNX Runtime's DeformConv, and the docs/design.md 3.3
formula written out here with conv2d.

trt_plugins/tests/cpu_ops.cpp is compiled with g++ into build/ (once per session) and loaded with
ctypes. Both the per-element path and a CPU replay of the CUDA pipeline (compaction, chunked
im2col, grouped GEMM, scatter) are checked.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "trt_plugins" / "tests" / "cpu_ops.cpp"
COMMON = ROOT / "models" / "csrc" / "common"

F32P = ctypes.POINTER(ctypes.c_float)
I32P = ctypes.POINTER(ctypes.c_int32)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build trt_plugins/tests/cpu_ops.cpp")
    out = tmp_path_factory.mktemp("trt_cpu") / "libsai_trt_cpu_ops.so"
    cmd = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", f"-I{COMMON}",
           str(SRC), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"building cpu_ops.cpp failed:\n{r.stderr}"
    dll = ctypes.CDLL(str(out))
    dll.sai_cpu_ssc_direct_f32.argtypes = [I32P, F32P, F32P, F32P, F32P, F32P, F32P]
    dll.sai_cpu_ssc_pipeline_f32.argtypes = [I32P, F32P, F32P, F32P, F32P, F32P, F32P, ctypes.c_int32, I32P]
    interp_args = [ctypes.c_int32] * 5 + [ctypes.c_float, ctypes.c_float, F32P, F32P, F32P]
    dll.sai_cpu_interp_direct_f32.argtypes = interp_args
    dll.sai_cpu_interp_pipeline_f32.argtypes = [*interp_args, I32P]
    dll.sai_cpu_bilinear_f32.argtypes = [F32P, ctypes.c_int32, ctypes.c_int32, ctypes.c_float, ctypes.c_float]
    dll.sai_cpu_bilinear_f32.restype = ctypes.c_float
    dll.sai_cpu_gaussian_weight.argtypes = [ctypes.c_float, ctypes.c_int32, ctypes.c_int32]
    dll.sai_cpu_gaussian_weight.restype = ctypes.c_float
    dll.sai_cpu_conv_output_size.argtypes = [ctypes.c_int32] * 6
    return dll


def ptr(a: np.ndarray | None):
    if a is None:
        return None
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(F32P)


# ------------------------------------------------------------------ independent references


def torch_conv(x, w, b, stride, pads, dil, groups):
    xt = F.pad(torch.from_numpy(x).double(), (pads[1], pads[3], pads[0], pads[2]))
    y = F.conv2d(xt, torch.from_numpy(w).double(), None if b is None else torch.from_numpy(b).double(),
                 stride=stride, dilation=dil, groups=groups)
    return y.numpy()


def ort_deform_conv(x, w, b, offset, stride, pads, dil, groups, dg):
    node = helper.make_node("DeformConv", ["X", "W", "O", "B"], ["Y"], strides=stride, pads=pads,
                            dilations=dil, group=groups, offset_group=dg, kernel_shape=list(w.shape[2:]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("X", "W", "O", "B")]
    graph = helper.make_graph([node], "dc", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    bias = b if b is not None else np.zeros(w.shape[0], np.float32)
    return sess.run(None, {"X": x, "W": w, "O": offset, "B": bias})[0].astype(np.float64)


def reference_ssc(x, mask, w, b, offset, stride, pads, dil, groups, dg, act):
    if offset is None:
        y = torch_conv(x, w, b, stride, pads, dil, groups)
    else:
        y = ort_deform_conv(x, w, b, offset, stride, pads, dil, groups, dg)
    if act == 1:
        y = np.maximum(y, 0)
    return np.where(mask > 0, y, 0.0)


def reference_interp(f, m, sigma, k, eps):
    """docs/design.md 3.3 written out: Gaussian kernel, depthwise conv of F*M, conv of M."""
    r = (k - 1) // 2
    ii = np.arange(-r, r + 1, dtype=np.float64)
    kern = sigma**2 / (2 * math.pi) * np.exp(-(sigma**2 / 2) * (ii[:, None] ** 2 + ii[None, :] ** 2))
    ft, mt = torch.from_numpy(f).double(), torch.from_numpy(m).double()
    c = f.shape[1]
    kt = torch.from_numpy(kern)
    num = F.conv2d(ft * mt, kt.expand(c, 1, k, k), padding=r, groups=c)
    den = F.conv2d(mt, kt.view(1, 1, k, k), padding=r) + eps
    return (mt * ft + (1 - mt) * num / den).numpy()


# ------------------------------------------------------------------ inputs


def make_mask(rng, n, h, w, kind):
    if kind == "empty":
        return np.zeros((n, 1, h, w), np.float32)
    if kind == "full":
        return np.ones((n, 1, h, w), np.float32)
    keep = rng.random((n, 1, h, w)) < 0.4
    if kind == "hard":
        return keep.astype(np.float32)
    soft = rng.uniform(0.5, 1.0, (n, 1, h, w)).astype(np.float32)  # the sampling mask's range
    return np.where(keep, soft, 0).astype(np.float32)


def out_size(size, k, s, pb, pe, d):
    return (size + pb + pe - d * (k - 1) - 1) // s + 1


CONV_CASES = [
    # n, cin, cout, h, w, k, stride, pads, dil, groups, dg, offset, bias, act
    (1, 4, 6, 9, 11, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, False, True, 1),
    (3, 4, 4, 8, 7, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2, 1, False, False, 0),
    (2, 6, 6, 13, 10, 3, (1, 2), (2, 0, 1, 2), (2, 2), 3, 1, False, True, 0),
    (1, 3, 5, 15, 12, 5, (2, 1), (2, 2, 2, 2), (1, 2), 1, 1, False, True, 1),
    (2, 2, 3, 17, 14, 7, (1, 1), (3, 3, 3, 3), (1, 1), 1, 1, False, False, 1),
    (1, 8, 8, 7, 9, 1, (2, 2), (0, 0, 0, 0), (1, 1), 8, 1, False, True, 0),
    (1, 4, 6, 9, 11, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, True, True, 1),
    (3, 4, 4, 10, 7, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2, 2, True, True, 0),
    (2, 6, 6, 11, 12, 3, (1, 1), (2, 2, 2, 2), (2, 2), 3, 3, True, True, 1),
    (1, 4, 2, 12, 9, 5, (2, 1), (2, 1, 2, 3), (1, 1), 1, 4, True, True, 0),
]
MASKS = ["soft", "hard", "empty", "full"]


def make_conv_inputs(rng, case, mask_kind):
    n, cin, cout, h, w, k, stride, pads, dil, groups, dg, use_off, use_bias, act = case
    ho = out_size(h, k, stride[0], pads[0], pads[2], dil[0])
    wo = out_size(w, k, stride[1], pads[1], pads[3], dil[1])
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = (rng.standard_normal((cout, cin // groups, k, k)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if use_bias else None
    off = (rng.standard_normal((n, 2 * dg * k * k, ho, wo)) * 1.5).astype(np.float32) if use_off else None
    mask = make_mask(rng, n, ho, wo, mask_kind)
    ip = np.array([n, cin, h, w, cout, k, k, *stride, *pads, *dil, groups, dg, act], np.int32)
    return x, mask, wt, b, off, ip, (n, cout, ho, wo)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"n{c[0]}c{c[1]}k{c[5]}s{c[6][0]}{c[6][1]}d{c[8][0]}g{c[9]}dg{c[10]}{'off' if c[11] else ''}")
def test_sparse_sample_conv_matches_reference(lib, case, mask_kind):
    rng = np.random.default_rng(zlib.crc32(repr((case, mask_kind)).encode()))
    x, mask, wt, b, off, ip, shape = make_conv_inputs(rng, case, mask_kind)
    n, cin, cout, h, w, k, stride, pads, dil, groups, dg, use_off, use_bias, act = case
    ref = reference_ssc(x, mask, wt, b, off, list(stride), list(pads), list(dil), groups, dg, act)

    y = np.full(shape, np.nan, np.float32)
    assert lib.sai_cpu_ssc_direct_f32(ip.ctypes.data_as(I32P), ptr(x), ptr(mask), ptr(wt), ptr(b), ptr(off), ptr(y)) == 0
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert np.all(y[np.broadcast_to(mask == 0, shape)] == 0)  # exactly zero where M == 0

    for chunk in (1, 7, 64, 100000):
        yp = np.full(shape, np.nan, np.float32)
        cnt = ctypes.c_int32(-1)
        rc = lib.sai_cpu_ssc_pipeline_f32(ip.ctypes.data_as(I32P), ptr(x), ptr(mask), ptr(wt), ptr(b), ptr(off),
                                          ptr(yp), chunk, ctypes.byref(cnt))
        assert rc == 0
        assert cnt.value == int((mask > 0).sum())
        np.testing.assert_allclose(yp, ref, rtol=1e-4, atol=1e-4)


def test_conv_rejects_invalid_params(lib):
    ip = np.array([1, 4, 8, 8, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 0], np.int32)  # groups 3 !| 4
    z = np.zeros(1024, np.float32)
    assert lib.sai_cpu_ssc_direct_f32(ip.ctypes.data_as(I32P), ptr(z), ptr(z), ptr(z), None, None, ptr(z)) == -1
    ip[15] = 1
    ip[7] = 0  # zero stride
    assert lib.sai_cpu_ssc_direct_f32(ip.ctypes.data_as(I32P), ptr(z), ptr(z), ptr(z), None, None, ptr(z)) == -1


@pytest.mark.parametrize("args", [(7, 3, 1, 1, 1, 1), (8, 3, 2, 1, 1, 1), (5, 5, 1, 0, 0, 2), (4, 7, 1, 3, 3, 1),
                                  (3, 7, 2, 0, 0, 1), (9, 2, 3, 0, 1, 1)])
def test_conv_output_size_floor_rule(lib, args):
    size, k, s, pb, pe, d = args
    expect = (size + pb + pe - d * (k - 1) - 1) // s + 1  # may be < 1: then the op is invalid
    assert lib.sai_cpu_conv_output_size(*args) == expect


def test_bilinear_boundary_rules(lib):
    """torchvision / ONNX DeformConv: 0 outside (-1, H) x (-1, W); out-of-image corners contribute 0."""
    plane = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    f = lib.sai_cpu_bilinear_f32
    p = ptr(plane)
    assert f(p, 3, 4, -1.0, 0.0) == 0 and f(p, 3, 4, 3.0, 0.0) == 0 and f(p, 3, 4, 0.0, 4.0) == 0
    assert f(p, 3, 4, 0.0, -1.0) == 0
    assert f(p, 3, 4, 1.0, 2.0) == pytest.approx(plane[1, 2])
    assert f(p, 3, 4, -0.5, 0.0) == pytest.approx(0.5 * plane[0, 0])
    assert f(p, 3, 4, 2.5, 3.5) == pytest.approx(0.25 * plane[2, 3])
    assert f(p, 3, 4, 0.25, 1.5) == pytest.approx(0.75 * (plane[0, 1] + plane[0, 2]) / 2 + 0.25 * (plane[1, 1] + plane[1, 2]) / 2)
    assert f(p, 3, 4, float("nan"), 1.0) == 0


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_gaussian_weight(lib, sigma):
    for i, j in [(0, 0), (1, 0), (2, 3), (-3, 1)]:
        want = sigma**2 / (2 * math.pi) * math.exp(-(sigma**2) / 2 * (i * i + j * j))
        assert lib.sai_cpu_gaussian_weight(sigma, i, j) == pytest.approx(want, rel=2e-5, abs=1e-30)


INTERP_CASES = [
    # n, c, h, w, k, sigma, eps
    (1, 3, 9, 11, 7, 1.0, 1e-5),
    (3, 2, 8, 5, 3, 0.7, 1e-5),
    (2, 4, 13, 12, 5, 1.6, 1e-3),
    (1, 1, 6, 7, 7, 0.4, 1e-5),
    (2, 3, 17, 15, 9, 2.5, 1e-5),
]


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("case", INTERP_CASES, ids=lambda c: f"n{c[0]}c{c[1]}{c[2]}x{c[3]}k{c[4]}")
def test_interpolate_matches_reference(lib, case, mask_kind):
    n, c, h, w, k, sigma, eps = case
    rng = np.random.default_rng(zlib.crc32(repr((case, mask_kind)).encode()))
    f = rng.standard_normal((n, c, h, w)).astype(np.float32)
    m = make_mask(rng, n, h, w, mask_kind)
    ref = reference_interp(f, m, sigma, k, eps)
    out = np.full(f.shape, np.nan, np.float32)
    assert lib.sai_cpu_interp_direct_f32(n, c, h, w, k, sigma, eps, ptr(f), ptr(m), ptr(out)) == 0
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    outp = np.full(f.shape, np.nan, np.float32)
    cnt = ctypes.c_int32(-1)
    assert lib.sai_cpu_interp_pipeline_f32(n, c, h, w, k, sigma, eps, ptr(f), ptr(m), ptr(outp), ctypes.byref(cnt)) == 0
    assert cnt.value == int((m < 1).sum())
    np.testing.assert_allclose(outp, ref, rtol=1e-4, atol=1e-5)


def test_interpolate_ignores_feature_where_mask_is_zero(lib):
    """docs/design.md 3.3: F's values where M == 0 must not matter (even inf/NaN)."""
    rng = np.random.default_rng(3)
    n, c, h, w, k = 1, 2, 8, 9, 7
    f = rng.standard_normal((n, c, h, w)).astype(np.float32)
    m = make_mask(rng, n, h, w, "soft")
    ref = reference_interp(f, m, 1.2, k, 1e-5)
    f_bad = f.copy()
    f_bad[np.broadcast_to(m == 0, f.shape)] = np.nan
    for fn in ("sai_cpu_interp_direct_f32", "sai_cpu_interp_pipeline_f32"):
        out = np.zeros_like(f)
        extra = [ctypes.byref(ctypes.c_int32())] if "pipeline" in fn else []
        assert getattr(lib, fn)(n, c, h, w, k, 1.2, 1e-5, ptr(f_bad), ptr(m), ptr(out), *extra) == 0
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [0, 4, 33])
def test_interpolate_rejects_bad_kernel_size(lib, k):
    z = np.zeros(64, np.float32)
    assert lib.sai_cpu_interp_direct_f32(1, 1, 4, 4, k, 1.0, 1e-5, ptr(z), ptr(z), ptr(z)) == -1
