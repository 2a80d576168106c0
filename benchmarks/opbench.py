"""Sparse vs dense, measured side by side in one run: ops, a block, a whole model.

Every case times a sparse callable and its dense counterpart with the same weights, interleaved
(sparse, dense, sparse, dense, ...) at the same thread count, and reports medians, the spread
(min..max) and the ratio dense/sparse (> 1: sparse is faster). Masks are set to a target density:
random masks for ops, the mask predictors' bias for blocks and models (calibrated on the input so
that the predicted logits are positive at about that fraction of positions).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sai.errors import SaiError
from sai.runtime import ort_ops


@dataclass
class Case:
    """One sparse-vs-dense measurement. ``sparse_ms`` is None for a case that did not run (``note`` says why).
    ``ratio_spread``: min..max over the repeats of dense/sparse of the same round (the run-to-run spread)."""

    section: str
    name: str
    density: Optional[float]
    sparse_ms: Optional[float]
    dense_ms: Optional[float]
    sparse_spread: Optional[tuple[float, float]]
    dense_spread: Optional[tuple[float, float]]
    ratio: Optional[float]
    extra: dict = field(default_factory=dict)
    ratio_spread: Optional[tuple[float, float]] = None
    note: str = ""


def time_pair(sparse: Callable[[], object], dense: Callable[[], object], repeats: int, warmup: int = 1):
    """Interleaved timing of two callables; returns (sparse times, dense times) in ms."""
    with torch.inference_mode():
        for _ in range(warmup):
            sparse()
            dense()
        ts, td = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sparse()
            t1 = time.perf_counter()
            dense()
            t2 = time.perf_counter()
            ts.append((t1 - t0) * 1e3)
            td.append((t2 - t1) * 1e3)
    return ts, td


def time_interleaved(fns: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[list[float]]:
    """Interleaved timing of several callables (a, b, c, a, b, c, ...); returns their times in ms."""
    with torch.inference_mode():
        for _ in range(warmup):
            for f in fns:
                f()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats):
            for f, t in zip(fns, times, strict=True):
                t0 = time.perf_counter()
                f()
                t.append((time.perf_counter() - t0) * 1e3)
    return times


def _case(section, name, density, ts, td, **extra) -> Case:
    ms, md = statistics.median(ts), statistics.median(td)
    rounds = [d / t for t, d in zip(ts, td, strict=True) if t > 0]
    return Case(section, name, density, ms, md, (min(ts), max(ts)), (min(td), max(td)), md / ms, extra,
                (min(rounds), max(rounds)) if rounds else None)


def _vs_channels_last(fused: Callable[[], object], dense: Callable[[], object], dense_cl: Callable[[], object],
                      repeats: int) -> tuple[list[float], list[float], dict]:
    """Interleaved timing of the sparse callable, the dense one (NCHW, the baseline of the case's ratio) and the
    dense one on channels_last tensors (oneDNN's NHWC convolutions, often faster on a CPU, so a second
    baseline): (sparse ms, dense ms, extras with the channels_last median and the ratio against it)."""
    ts, td, tc = time_interleaved([fused, dense, dense_cl], repeats)
    mc = statistics.median(tc)
    return ts, td, {"dense_channels_last_ms": mc, "ratio_vs_dense_channels_last": mc / statistics.median(ts)}


def _not_run(section, name, density, note: str, **extra) -> Case:
    return Case(section, name, density, None, None, None, None, None, extra, None, note)


def random_mask(n: int, h: int, w: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, h, w, generator=g) < density).float()


# ------------------------------------------------------------------------------------ ops


def bench_ops(repeats: int, size: int = 64, densities=(0.1, 0.25, 0.5, 1.0)) -> list[Case]:
    from sai.models import ops

    out = []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, size, size, generator=g)
    w = torch.randn(256, 256, 3, 3, generator=g) * 0.02
    b = torch.randn(256, generator=g)
    for r in densities:
        m = random_mask(1, size, size, r, 1)
        ts, td = time_pair(
            lambda m=m: ops.sparse_sample_conv(x, m, w, b, padding=1, activation="relu"),
            lambda: F.relu(F.conv2d(x, w, b, padding=1)),
            repeats,
        )
        out.append(_case("op", f"SparseSampleConv 3x3 256->256 {size}x{size}", r, ts, td))
    x1 = torch.randn(1, 1024, size, size, generator=g)
    w1 = torch.randn(256, 1024, 1, 1, generator=g) * 0.02
    for r in (0.25, 0.5):
        m = random_mask(1, size, size, r, 2)
        ts, td = time_pair(
            lambda m=m: ops.sparse_sample_conv(x1, m, w1, b, activation="relu"),
            lambda: F.relu(F.conv2d(x1, w1, b)),
            repeats,
        )
        out.append(_case("op", f"SparseSampleConv 1x1 1024->256 {size}x{size}", r, ts, td))
    f = torch.randn(1, 256, size, size, generator=g)
    for r in (0.25, 0.5):
        m = random_mask(1, size, size, r, 3)
        ts, td = time_pair(
            lambda m=m: ops.interpolate(f, m, 1.0, 7),
            lambda m=m: ops.interpolate_reference(f, m, 1.0, 7, 1e-5),
            repeats,
        )
        out.append(_case("op", f"Interpolate 256ch {size}x{size} (vs dense formula)", r, ts, td))
    return out


# ------------------------------------------------------------------------- blocks, models


def randomize_masks(model: nn.Module, seed: int = 0) -> None:
    """Give the mask predictors random weights (fresh models have zero mask weights)."""
    g = torch.Generator().manual_seed(seed)
    for name, mod in model.named_modules():
        if name.endswith(("conv1_mask", "conv2_mask")):
            with torch.no_grad():
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.01)


@torch.no_grad()
def calibrate_mask_bias(model: nn.Module, x: torch.Tensor, density: float) -> None:
    """Set every mask predictor's bias so that about ``density`` of its logits are positive.

    One forward pass: a pre-hook on each mask conv sets its bias from the input it receives, so
    later blocks see the already calibrated earlier blocks.
    """
    handles = []

    def hook(mod, args):
        logit = F.conv2d(args[0], mod.weight, None, mod.stride, mod.padding)
        flat = logit.flatten()
        if flat.numel() > 4_000_000:
            flat = flat[torch.randperm(flat.numel())[:4_000_000]]
        mod.bias.fill_(-float(torch.quantile(flat, 1.0 - density)))

    for name, mod in model.named_modules():
        if name.endswith(("conv1_mask", "conv2_mask")):
            handles.append(mod.register_forward_pre_hook(hook))
    if not handles:
        raise SaiError("the model has no mask predictors (conv1_mask/conv2_mask) to calibrate")
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()


def dense_twin(sparse_model: nn.Module, arch: Optional[str] = None, **options) -> nn.Module:
    """``sai.models.dense_twin`` with the old signature (benchmarks/gpu_check.py passes the dense arch, which
    the model decides: a different one is refused)."""
    from sai.models import dense_twin as models_dense_twin

    twin = models_dense_twin(sparse_model, **options)
    if arch is not None and twin.arch != arch:
        raise SaiError(f"the dense twin of {sparse_model.arch} is {twin.arch}, not {arch}")
    return twin


def measured_density(model: nn.Module) -> float:
    dens = model.densities()
    vals = [v for pair in dens.values() for v in pair]
    return sum(vals) / max(len(vals), 1)


def bench_block(repeats: int, size: int = 64, densities=(0.25, 0.5)) -> list[Case]:
    """Stage-3 Bottleneck (1024 channels in and out, 256 planes) at size x size, fused, against the dense
    Bottleneck with the same weights (NCHW, and channels_last as a second baseline)."""
    from sai.models import build_model, fuse_for_inference
    from sai.models.blocks import Bottleneck, SparseBottleneck
    from sai.models.fuse import fuse_block

    out = []
    torch.manual_seed(0)
    x = torch.randn(1, 1024, size, size)
    for r in densities:
        model = build_model("sparse_resnet50", head="none")
        blk = model.layer3[1]
        if not isinstance(blk, SparseBottleneck):
            raise SaiError("sparse_resnet50.layer3[1] is not a SparseBottleneck")
        randomize_masks(blk)
        wrapper = nn.Sequential(blk)
        calibrate_mask_bias(wrapper, x, r)
        fused = fuse_for_inference(model).layer3[1]
        dense_blk = Bottleneck(1024, 256)
        dense_blk.load_state_dict({k: v for k, v in blk.state_dict().items() if k in dense_blk.state_dict()})
        dense_fused = fuse_block(dense_blk.eval())
        with torch.no_grad():
            fused(x)
            d = fused.mask_stats() or {}
        dense_cl = copy.deepcopy(dense_fused).to(memory_format=torch.channels_last)
        # each block gets its input in the layout it has inside its model: the sparse block's fused CPU
        # kernel runs NHWC (only a model's first sparse block converts), the dense block's NCHW (and NHWC
        # for the channels_last baseline)
        xs = x.contiguous(memory_format=torch.channels_last) if fused._fast_input(x) is not None else x
        xc = x.contiguous(memory_format=torch.channels_last)
        ts, td, cl = _vs_channels_last(lambda f=fused, xs=xs: f(xs), lambda f=dense_fused: f(x),
                                       lambda f=dense_cl, xc=xc: f(xc), repeats)
        out.append(_case("block", f"stage-3 Bottleneck 1024ch {size}x{size}", r, ts, td,
                         measured_d1=d.get("d1"), measured_d2=d.get("d2"), **cl))
    return out


def model_pair(arch: str, calib: torch.Tensor, density: float, options: Optional[dict] = None):
    """(sparse model, dense twin) with the same weights, unfused, eval mode: random mask predictors with
    their biases calibrated on ``calib`` so that about ``density`` of the positions are computed
    (``calibrate_mask_bias`` again sets another density on the same model)."""
    from sai.models import build_model, dense_twin

    opts = dict(options or {}, head="none")
    model = build_model(arch, **opts).eval()
    randomize_masks(model)
    calibrate_mask_bias(model, calib, density)
    return model, dense_twin(model, **opts)


def _size_extra(arch: str, h: int, w: int, backend: str, options: Optional[dict]) -> dict:
    extra = {"backend": backend, "arch": arch, "height": h, "width": w}
    if options:
        extra["options"] = dict(options)
    return extra


def _points(sizes, density: float, more_densities) -> tuple[list[tuple[int, int]], list[tuple[float, list]]]:
    """The sweep: ``density`` at every size, then each other density of ``more_densities`` at the largest."""
    sizes = [tuple(int(v) for v in s) for s in sizes]
    points = [(float(density), sizes)] + [(float(d), [sizes[-1]]) for d in more_densities if d != density]
    return sizes, points


def bench_model(repeats: int, arch: str = "sparse_resnet101", sizes=((512, 832),), density: float = 0.3, *,
                more_densities=(), options: Optional[dict] = None) -> list[Case]:
    """The fused sparse model vs its fused dense twin in PyTorch (the sai C++ CPU kernels where built): one
    model, its masks calibrated at the first size, timed at every ``(h, w)`` of ``sizes``; then recalibrated to
    each of ``more_densities`` and timed at the largest size (the dense twin is the same throughout)."""
    from sai.models import fuse_for_inference

    torch.manual_seed(0)
    sizes, points = _points(sizes, density, more_densities)
    calib = torch.randn(1, 3, *sizes[0])
    model, dense = model_pair(arch, calib, density, options)
    dense = fuse_for_inference(dense)
    dense_cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    dense_arch = arch.replace("sparse_", "")
    out = []
    for d, at in points:
        if d != density:
            calibrate_mask_bias(model, calib, d)
        fused = fuse_for_inference(model)
        for h, w in at:
            x = torch.randn(1, 3, h, w)
            with torch.no_grad():
                fused.reset_densities()
                fused(x)
            md = measured_density(fused)
            xc = x.contiguous(memory_format=torch.channels_last)
            ts, td, cl = _vs_channels_last(lambda x=x, f=fused: f(x), lambda x=x: dense(x),
                                           lambda xc=xc: dense_cl(xc), repeats)
            out.append(_case("model", f"{arch} vs {dense_arch} {h}x{w}", d, ts, td,
                             measured_mean_density=md, **cl, **_size_extra(arch, h, w, "torch", options)))
    return out


def bench_onnx_op(repeats: int, size: int = 64, channels: int = 256, densities=(0.1, 0.25, 0.5, 1.0),
                  threads: int = 0) -> list[Case]:
    """One SparseSampleConv 3x3 (sparse ONNX function body) vs Conv + Mul, and its deformable variant
    (sparse bilinear-gather body) vs the DeformConv body, onnxruntime CPU."""
    from sai.benchmarks.opmodels import bench_deform_sparse_sample_conv, bench_sparse_sample_conv

    cases = []
    for r in bench_sparse_sample_conv(repeats, size=size, channels=channels, densities=densities,
                                      threads=threads or 2):
        cases.append(_case("onnx", f"SparseSampleConv 3x3 {channels}->{channels} {size}x{size} vs Conv+Mul",
                           r["density"], r["sparse_times"], r["conv_mul_times"]))
    for r in bench_deform_sparse_sample_conv(repeats, size=size, channels=channels, densities=densities,
                                             threads=threads or 2):
        cases.append(_case("onnx", f"deformable 3x3 {channels}->{channels} {size}x{size} vs DeformConv",
                           r["density"], r["sparse_times"], r["dense_times"]))
    return cases


def _custom_op_session(path: str, threads: int):
    """(session with libsai_ort_ops.so registered and the model's sparse blocks fused, "") or (None, why not):
    the library is loaded here whether or not ``SAI_ORT_OPS`` switches it on for the runtime."""
    import onnxruntime as ort

    lib, why = ort_ops.built_library()
    if lib is None:
        return None, f"not built: {why}"
    from sai.benchmarks.opmodels import bench_session_options

    opts = bench_session_options(threads)
    try:
        opts.register_custom_ops_library(str(lib))
        model, _, _ = ort_ops.fused_model(path)  # as the runtime does
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]), ""
    except Exception as exc:  # built for another onnxruntime, or a broken file
        return None, f"not loadable: {lib}: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"


def bench_onnx(repeats: int, arch: str = "sparse_resnet101", sizes=((512, 832),), density: float = 0.3,
               threads: int = 0, workdir: Optional[str] = None, *, more_densities=(),
               options: Optional[dict] = None) -> list[Case]:
    """onnxruntime CPU: the portable sparse ONNX vs the dense ResNet's ONNX with the same weights, and the same
    portable model with libsai_ort_ops.so registered as sai.runtime runs it (its sparse blocks rewritten into
    fused sai::SparseBlock nodes, the rest on the library's per-op kernels), the three sessions timed in turn. One model (masks calibrated at the first size, exported with dynamic H/W) at every ``(h, w)`` of
    ``sizes``; then recalibrated and exported again for each of ``more_densities``, timed at the largest size
    against the same dense session. Per point a ``portable ...`` and a ``custom-op ...`` case; the latter says
    "not built" (no timings) where the library is absent."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from sai.benchmarks.opmodels import bench_session_options
    from sai.exporter import export_onnx

    torch.manual_seed(0)
    sizes, points = _points(sizes, density, more_densities)
    calib = torch.randn(1, 3, *sizes[0])
    model, dense = model_pair(arch, calib, density, options)
    dense_arch = arch.replace("sparse_", "")
    opts = bench_session_options(threads)
    shape = (1, 3, *sizes[0])
    cases = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        dense_path = f"{tmp}/dense.onnx"
        export_onnx(dense, dense_path, input_shape=shape, check=False)
        d_sess = ort.InferenceSession(dense_path, opts, providers=["CPUExecutionProvider"])
        d_name = d_sess.get_inputs()[0].name
        for k, (d, at) in enumerate(points):
            if d != density:
                calibrate_mask_bias(model, calib, d)
            sparse_path = f"{tmp}/sparse{k}.onnx"
            export_onnx(model, sparse_path, input_shape=shape, target="portable", check=False)
            s_sess = ort.InferenceSession(sparse_path, opts, providers=["CPUExecutionProvider"])
            c_sess, why = _custom_op_session(sparse_path, threads)
            s_name = s_sess.get_inputs()[0].name
            for h, w in at:
                x = torch.randn(1, 3, h, w).numpy().astype(np.float32)
                sf, df = {s_name: x}, {d_name: x}
                fns = [lambda f=sf, s=s_sess: s.run(None, f), lambda f=df: d_sess.run(None, f)]
                if c_sess is not None:
                    fns.append(lambda f=sf, c=c_sess: c.run(None, f))
                times = time_interleaved(fns, repeats)
                ts, td = times[0], times[1]
                tail = f"{arch} vs {dense_arch} ONNX, onnxruntime {h}x{w}"
                cases.append(_case("onnx", f"portable {tail}", d, ts, td,
                                   **_size_extra(arch, h, w, "onnxruntime", options)))
                extra = _size_extra(arch, h, w, "onnxruntime+libsai_ort_ops", options)
                if c_sess is None:
                    cases.append(_not_run("onnx", f"custom-op {tail}", d, why, **extra))
                else:
                    tc = times[2]
                    cases.append(_case("onnx", f"custom-op {tail}", d, tc, td,
                                       vs_portable=statistics.median(ts) / statistics.median(tc), **extra))
            del s_sess, c_sess
    return cases


# ---------------------------------------------------------------------------------- report


def _fmt_extra(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


TABLE_EXTRA_SKIP = ("backend", "arch", "height", "width", "options")  # in the case name or the header already


def format_table(cases: list[Case], threads: int) -> str:
    lines = [f"sparse vs dense, medians over repeats, {threads} thread(s); ratio = dense / sparse (> 1: sparse faster), "
             "[min-max] over the repeats",
             f"{'section':<7} {'case':<52} {'density':>7} {'sparse ms':>18} {'dense ms':>18} {'ratio':>6} "
             f"{'ratio spread':>12}"]
    for c in cases:
        dens = "-" if c.density is None else f"{c.density:.2f}"
        if c.sparse_ms is None:
            lines.append(f"{c.section:<7} {c.name:<52} {dens:>7} {c.note}")
            continue
        sp = f"{c.sparse_ms:8.2f} [{c.sparse_spread[0]:.1f}-{c.sparse_spread[1]:.1f}]"
        dp = f"{c.dense_ms:8.2f} [{c.dense_spread[0]:.1f}-{c.dense_spread[1]:.1f}]"
        rs = f"{c.ratio_spread[0]:.2f}-{c.ratio_spread[1]:.2f}" if c.ratio_spread else ""
        lines.append(f"{c.section:<7} {c.name:<52} {dens:>7} {sp:>18} {dp:>18} {c.ratio:6.2f} {rs:>12}")
        shown = {k: v for k, v in c.extra.items() if k not in TABLE_EXTRA_SKIP}
        if shown:
            lines.append(f"{'':<7} {'':<52} " + ", ".join(f"{k}={_fmt_extra(v)}" for k, v in shown.items()))
    return "\n".join(lines)


def to_json(cases: list[Case], threads: int, backend: str, **info) -> str:
    """The cases as JSON (``info``: more top-level fields, e.g. the command and the environment)."""
    return json.dumps({"threads": threads, "cpu_kernels": backend, **info, "cases": [asdict(c) for c in cases]},
                      indent=2)
