"""The one prepared GPU run (``make gpu-check``, docs/design.md 6): everything a lent GPU machine should tell us.

``python -m sai.benchmarks.gpu_check --out build/gpu-check`` (or ``python benchmarks/gpu_check.py`` in a
checkout that is not installed, e.g. on a GPU machine without network) writes ``gpu-check.json`` (rewritten after
every section, so a run cut short still reports what it reached) with:

- ``env``: Python, torch, triton, numpy, CUDA, cuDNN, the device and its compute capability;
- ``parity``: every kernel vs the PyTorch reference in float64 on the same device (a reduced matrix of
  strides, pads, groups, deform_groups, masks, fp32 ieee / fp16 / bf16);
- ``plugin_kernels``: the TensorRT plugins' enqueue code (trt_plugins/*/<op>Launch.cpp on the AOT
  cubins, built here with g++ for this GPU's arch) on CUDA tensors without TensorRT: parity in fast
  and any-size builds, NHWC8/NHWC16/NCHW, FP32/FP16/BF16, FP32 masks, deformable, tactics; the fp16
  NHWC8 conv 3x3 256->256 at 64x64 per tactic against cuDNN;
- ``ops``: fp16 op timings, batch 1 and 8, r = 0.1 / 0.25 / 0.5 / 1.0, against cuDNN dense in the same
  run (torch conv2d, channels_last, fp16; for Interpolate the dense formula in torch), both
  CUDA-graphed, with ratios dense/sparse (> 1: the sparse kernel is faster);
- ``block``: the fused stage-3 Bottleneck (1024 ch, 64x104) sparse vs dense, and its fast tail
  (``interpolate_add_relu``);
- ``model``: sparse_resnet101 (density ~0.3) vs resnet101, 512x832 and 1024x1664, batch 1, fp16,
  CUDA-graphed;
- ``fused``: the fused inference model of ``sai.models.fuse`` on the torch CUDA path, whatever it
  runs there (the fused GPU block of ``sai.kernels.sparse_block`` where it takes a block): the
  stage-3 Bottleneck at r = 0.3 and sparse_resnet101 at density 0.3 (512x832, 1024x1664), fp16,
  CUDA-graphed, batch 1 and 8, against the dense twin; skipped with a note without that module;
- ``engine`` (where TensorRT and the plugin library are installed; says which is missing otherwise):
  single-op engines against the PyTorch reference (tests/test_trt_gpu.py) and sparse_resnet101
  (density ~0.3, fp16, 512x832) converted, validated and benchmarked against its dense twin with
  the sai CLI;
- ``autotune``: a sweep of conv tile configs (BM 64-256, BN 64-256) over several sizes and densities
  (one winner per size bucket of P = N*Ho*Wo) and of Interpolate's; winners go to ``configs/sm_<cc>.json`` under ``--out``
  and, with ``--write-configs``, into the package's ``kernels/configs/`` (the committed table the AOT
  build reads).

Without a GPU (or with ``--tiny``) the same code runs end to end under the Triton interpreter at tiny
sizes, timings skipped: the test suite runs it that way, so it works the first time it meets a GPU.
Needs no network, and on the GPU machine only python, torch, triton and numpy: onnx, onnxscript,
onnxruntime and polygraphy are imported by no section that times kernels (the ``env`` section lists
which are there). Each section records its own error instead of ending the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def bootstrap_from_checkout() -> None:
    """Run from a checkout without installing (a GPU machine with no network: ``python benchmarks/gpu_check.py``).

    pyproject.toml installs each top-level folder X as ``sai.X`` (tests/test_layout.py checks that the names
    agree), so adding the checkout's root to the ``sai`` package's search path resolves ``sai.kernels``,
    ``sai.models``, ... from their folders with no map of its own. Packages resolve on first import, and the
    sections import only ``sai.kernels`` and ``sai.models`` (python, torch, triton, numpy) up front, so a bare
    GPU machine without onnx, onnxscript, onnxruntime or polygraphy runs every section that does not need them."""
    if sys.path and Path(sys.path[0]).resolve() == _ROOT / "benchmarks":
        sys.path.pop(0)  # the script's folder: its modules are sai.benchmarks.*, never top-level names
    sys.path.insert(0, str(_ROOT))
    import sai  # the top-level package is the checkout's sai/ folder

    if str(_ROOT) not in sai.__path__:
        sai.__path__.append(str(_ROOT))


def _now() -> float:
    return time.perf_counter()


class Report:
    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.data: dict = {"sections": {}}
        self.t0 = _now()
        self.budget_s = budget_s
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (_now() - self.t0)

    def section(self, name: str, fn, *args) -> None:
        t = _now()
        entry: dict = {}
        if self.left() <= 0:
            entry = {"skipped": "time budget spent"}
        else:
            try:
                entry = fn(*args) or {}
            except Exception as e:  # a section's failure is a result, not the end of the run
                entry = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        entry["seconds"] = round(_now() - t, 2)
        self.data["sections"][name] = entry
        print(f"gpu-check: {name}: {'ERROR ' + entry['error'] if 'error' in entry else 'ok'} ({entry['seconds']}s)",
              flush=True)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(_now() - self.t0, 2)
        from sai.outputs import write_atomic

        write_atomic(self.out / "gpu-check.json", json.dumps(self.data, indent=1, default=str) + "\n", flag="--out")


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------


def env_section(dev) -> dict:
    import numpy
    import torch
    import triton

    out = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "numpy": numpy.__version__, "device": str(dev), "interpreter": dev.type == "cpu",
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None}
    # what a bare GPU machine lacks: none of it is needed by the sections that time the kernels
    opt = {}
    for mod in ("onnx", "onnxscript", "onnxruntime", "polygraphy", "tensorrt"):
        try:
            opt[mod] = getattr(importlib.import_module(mod), "__version__", "installed")
        except Exception as e:  # noqa: BLE001 - absent or broken: either way not used here
            opt[mod] = f"absent ({type(e).__name__}: {str(e)[:80]})"
    out["optional_packages"] = opt
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        out.update(name=p.name, cc=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        from sai.kernels import torch_ops

        out["torch_ops_registered"] = torch_ops.registered()
    return out


def _rel_err(got, ref) -> float:
    scale = max(ref.abs().max().item(), 1e-30)
    return (got.double() - ref).abs().max().item() / scale


def parity_section(dev, tiny: bool) -> dict:
    import torch

    import sai.kernels as K
    from sai.models.ops import (
        conv_output_size,
        interpolate_reference,
        normalize_pads,
        sparse_sample_conv_reference,
    )

    tol = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}
    g = torch.Generator(device="cpu").manual_seed(0)
    s = 1 if tiny else 4  # size multiplier
    conv_cases = [
        dict(cin=20 * s, cout=24 * s, h=9 * s, w=11 * s, k=3, stride=1, pads=1, dil=1, groups=1, dg=0),
        dict(cin=17 * s, cout=33 * s, h=8 * s, w=10 * s, k=1, stride=2, pads=0, dil=1, groups=1, dg=0),
        dict(cin=8 * s, cout=12 * s, h=11 * s, w=9 * s, k=5, stride=2, pads=(2, 1, 0, 3), dil=2, groups=4, dg=0),
        dict(cin=8 * s, cout=10 * s, h=7 * s, w=6 * s, k=3, stride=1, pads=1, dil=1, groups=1, dg=1),
        dict(cin=8 * s, cout=6 * s, h=8 * s, w=7 * s, k=3, stride=2, pads=(1, 0, 2, 1), dil=2, groups=2, dg=4),
    ]
    dtypes = [torch.float32, torch.float16] if tiny else [torch.float32, torch.float16, torch.bfloat16]
    if tiny:  # the interpreter: one case per kernel path
        conv_cases = conv_cases[2:4]
    results = []
    for case in conv_cases:
        for dt in dtypes:
            if tiny and dt != torch.float32 and case["dg"]:
                continue
            pads = normalize_pads(case["pads"])
            ho = conv_output_size(case["h"], case["k"], case["stride"], pads[0], pads[2], case["dil"])
            wo = conv_output_size(case["w"], case["k"], case["stride"], pads[1], pads[3], case["dil"])
            n = 2
            x = torch.randn(n, case["cin"], case["h"], case["w"], generator=g).to(dt)
            wt = (torch.randn(case["cout"], case["cin"] // case["groups"], case["k"], case["k"], generator=g)
                  / (case["cin"] * case["k"] ** 2) ** 0.5).to(dt)
            b = torch.randn(case["cout"], generator=g).to(dt)
            m = torch.rand(n, 1, ho, wo, generator=g)
            m = torch.where(m < 0.4, 0.0, torch.where(m > 0.8, 1.0, m))
            off = (2.5 * torch.randn(n, 2 * case["dg"] * case["k"] ** 2, ho, wo, generator=g)).to(dt) \
                if case["dg"] else None
            x, wt, b, m = (t.to(dev) for t in (x, wt, b, m))
            off = off.to(dev) if off is not None else None
            dgs = max(case["dg"], 1)
            stride, dil = [case["stride"]] * 2, [case["dil"]] * 2
            ref = sparse_sample_conv_reference(x.double(), m.double(), wt.double(), b.double(),
                                               None if off is None else off.double(), stride, pads, dil,
                                               case["groups"], dgs, "relu")
            got = K.sparse_sample_conv(x.contiguous(memory_format=torch.channels_last), m, wt, b, stride, pads,
                                       dil, case["groups"], "relu", off, dgs)
            err = _rel_err(got, ref)
            zeros_ok = bool((got[(m == 0).expand_as(got)] == 0).all())
            factor = 2.0 if case["dg"] else 1.0
            results.append({"op": "sparse_sample_conv", **{k: v for k, v in case.items()}, "dtype": str(dt),
                            "rel_err": err, "zeros_exact": zeros_ok, "ok": err <= tol[dt] * factor and zeros_ok})
    for ks, c, h, w, fused in ((3, 20, 5, 6, False), (7, 19, 5, 4, True)) if tiny else \
            ((3, 64, 33, 47, False), (7, 1024, 32, 52, False), (7, 256, 32, 52, True)):
        for dt in dtypes:
            f = torch.randn(2, c, h, w, generator=g).to(dt)
            m = torch.rand(2, 1, h, w, generator=g)
            m = torch.where(m < 0.5, 0.0, torch.where(m > 0.8, 1.0, m))
            bias = torch.randn(c, generator=g)
            ident = torch.randn(2, c, h, w, generator=g).to(dt)
            f, m, bias, ident = (t.to(dev) for t in (f, m, bias, ident))
            ref = interpolate_reference(f.double(), m.double(), 1.2, ks, 1e-5)
            poisoned = torch.where(m.bool(), f, torch.tensor(float("nan"), dtype=dt, device=dev))
            if fused:
                ref = torch.relu(ref + bias.double()[None, :, None, None] + ident.double())
                got = K.interpolate_add_relu(poisoned, m, 1.2, bias, ident.contiguous(memory_format=torch.channels_last),
                                             ks)
            else:
                got = K.interpolate(poisoned.contiguous(memory_format=torch.channels_last), m, 1.2, ks)
            err = _rel_err(got, ref)
            results.append({"op": "interpolate_add_relu" if fused else "interpolate", "k": ks, "c": c, "h": h,
                            "w": w, "dtype": str(dt), "rel_err": err, "finite": bool(torch.isfinite(got).all()),
                            "ok": err <= tol[dt] and bool(torch.isfinite(got).all())})
    failed = [r for r in results if not r["ok"]]
    return {"cases": results, "passed": len(results) - len(failed), "failed": len(failed)}


def _graphed(fn, reps: int):
    """A CUDA graph of ``reps`` calls of ``fn`` (after a warm-up on a side stream), or None."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return graph


def time_ms(fn, reps: int = 20, trials: int = 5) -> dict:
    """Median ms per call, CUDA-graphed (``reps`` calls per graph replay); eager when capture fails."""
    import torch

    mode = "graph"
    try:
        graph = _graphed(fn, reps)
        run = graph.replay
    except Exception as e:  # noqa: BLE001 - fall back, but say so
        mode = f"eager ({type(e).__name__}: {str(e)[:120]})"
        torch.cuda.synchronize()

        def run():
            for _ in range(reps):
                fn()
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / reps)
    times.sort()
    return {"ms": times[len(times) // 2], "min_ms": times[0], "mode": mode}


def _random_mask(n, h, w, r, dev):
    import torch

    g = torch.Generator(device="cpu").manual_seed(int(r * 1000) + n + h)
    return (torch.rand(n, 1, h, w, generator=g) < r).float().to(dev)


def ops_section(dev) -> dict:
    import torch
    import torch.nn.functional as F

    import sai.kernels as K
    from sai.models.ops import interpolate_reference

    dt = torch.float16
    cl = torch.channels_last
    rows = []
    torch.backends.cudnn.benchmark = True
    for batch in (1, 8):
        for name, cin, cout, k, h, w in (("conv3x3 256->256", 256, 256, 3, 64, 64),
                                         ("conv3x3 256->256", 256, 256, 3, 128, 208),
                                         ("conv1x1 1024->256", 1024, 256, 1, 64, 104)):
            x = torch.randn(batch, cin, h, w, device=dev, dtype=dt).contiguous(memory_format=cl)
            wt = (torch.randn(cout, cin, k, k, device=dev) / (cin * k * k) ** 0.5).to(dt).contiguous(memory_format=cl)
            b = torch.randn(cout, device=dev, dtype=dt)
            pad = k // 2
            dense = time_ms(lambda x=x, wt=wt, b=b, pad=pad: F.relu(F.conv2d(x, wt, b, padding=pad)))
            for r in (0.1, 0.25, 0.5, 1.0):
                m = _random_mask(batch, h, w, r, dev)
                sp = time_ms(lambda x=x, m=m, wt=wt, b=b, pad=pad: K.sparse_sample_conv(x, m, wt, b, padding=pad,
                                                                                        activation="relu"))
                rows.append({"op": f"{name} {h}x{w}", "batch": batch, "r": r, "sparse_ms": sp["ms"],
                             "dense_ms": dense["ms"], "ratio": dense["ms"] / sp["ms"], "mode": sp["mode"],
                             "dense_mode": dense["mode"]})
        c, h, w = 1024, 64, 104
        f = torch.randn(batch, c, h, w, device=dev, dtype=dt).contiguous(memory_format=cl)
        for r in (0.1, 0.25, 0.5, 1.0):
            m = _random_mask(batch, h, w, r, dev)
            dense = time_ms(lambda f=f, m=m: interpolate_reference(f, m.to(dt), 1.0, 7, 1e-5))
            sp = time_ms(lambda f=f, m=m: K.interpolate(f, m, 1.0, 7))
            rows.append({"op": f"interpolate k7 {c}ch {h}x{w}", "batch": batch, "r": r, "sparse_ms": sp["ms"],
                         "dense_ms": dense["ms"], "ratio": dense["ms"] / sp["ms"], "mode": sp["mode"],
                         "dense": "interpolate_reference (torch, fp16)"})
    return {"rows": rows, "goals": {
        "conv3x3 r=0.25 batch 1 >= 2.5x": [r["ratio"] for r in rows if r["op"].startswith("conv3x3") and r["r"] == 0.25
                                           and r["batch"] == 1],
        "conv3x3 r=1.0 batch 1 >= 1/1.15": [r["ratio"] for r in rows if r["op"].startswith("conv3x3") and r["r"] == 1.0
                                            and r["batch"] == 1]}}


def _randomize_masks(model, seed: int = 0) -> None:
    """Random mask predictor weights (a fresh model's are zero: every position would be active)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith(("conv1_mask", "conv2_mask")):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.01)


def _calibrate_mask_bias(model, x, density: float) -> None:
    """Each mask predictor's bias set so that about ``density`` of its logits are positive (one forward;
    a pre-hook per mask conv, so later blocks see the calibrated earlier ones)."""
    import torch
    import torch.nn.functional as F

    def hook(mod, args):
        logit = F.conv2d(args[0], mod.weight, None, mod.stride, mod.padding).flatten().float()
        if logit.numel() > 4_000_000:
            logit = logit[torch.randperm(logit.numel(), device=logit.device)[:4_000_000]]
        mod.bias.fill_(-float(torch.quantile(logit, 1.0 - density)))

    handles = [mod.register_forward_pre_hook(hook) for name, mod in model.named_modules()
               if name.endswith(("conv1_mask", "conv2_mask"))]
    if not handles:
        raise RuntimeError("the model has no mask predictors (conv1_mask/conv2_mask) to calibrate")
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()


def _measured_density(model) -> float:
    vals = [v for pair in model.densities().values() for v in pair]
    return sum(vals) / max(len(vals), 1)


def _dense_twin(model, **options):
    from sai.models import dense_twin

    return dense_twin(model, **options)


def _stage3_block(dev, dt, r: float, h: int, w: int, tiny: bool):
    import torch
    from torch import nn

    from sai.models import build_model, fuse_for_inference
    from sai.models.blocks import Bottleneck
    from sai.models.fuse import fuse_block

    width = {"base_width": 4} if tiny else {}
    model = build_model("sparse_resnet50", head="none", **width)
    blk = model.layer3[1]
    cin = blk.inplanes
    x = torch.randn(1, cin, h, w)
    _randomize_masks(blk)
    _calibrate_mask_bias(nn.Sequential(blk), x, r)
    fused = fuse_for_inference(model).layer3[1]
    dense_blk = Bottleneck(cin, blk.planes)
    dense_blk.load_state_dict({k: v for k, v in blk.state_dict().items() if k in dense_blk.state_dict()})
    dense_fused = fuse_block(dense_blk.eval())
    fused = fused.to(dev).eval()
    dense_fused = dense_fused.to(dev, dt).eval().to(memory_format=torch.channels_last)
    return fused, dense_fused, x.to(dev)


def _fast_tail(blk, x):
    """The fused Bottleneck of docs/design.md 3.4 (fast form) on sai.kernels, the tail in one kernel."""
    import sai.kernels as K

    m1, m2 = blk.masks(x)
    s, k = blk.stride, blk.gaussian_kernel
    identity = blk._identity(x)
    a = K.sparse_sample_conv(x, m1, blk.conv1_weight, blk.conv1_bias, activation="relu")
    a = K.interpolate(a, m1, blk.sigma1, k)
    off = None
    if blk.with_dcn:
        off = K.sparse_sample_conv(x, m2, blk.offset_weight, blk.offset_bias, stride=s, padding=1)
    b = K.sparse_sample_conv(a, m2, blk.conv2_weight, blk.conv2_bias, stride=s, padding=1, activation="relu",
                             offset=off)
    c = K.sparse_sample_conv(b, m2, blk.conv3_weight)
    return K.interpolate_add_relu(c, m2, blk.sigma2, blk.out_bias, identity, k)


def block_section(dev, tiny: bool) -> dict:
    import torch

    dt = torch.float16 if dev.type == "cuda" else torch.float32
    h, w = (6, 7) if tiny else (64, 104)
    rows = []
    for r in (0.25,) if tiny else (0.25, 0.5):
        fused, dense, x = _stage3_block(dev, dt, r, h, w, tiny)
        with torch.no_grad():
            fused.reset_densities()
            ref = fused(x) if dev.type == "cpu" else None  # the interpreter: check the fast tail against it
            if ref is None:
                fused.masks(x)  # the masks alone record the densities
            stats = fused.mask_stats() or {}
            fused = fused.to(dt).to(memory_format=torch.channels_last)
            fused.record_stats = False  # no per-block host copy: no sync, CUDA graphs can capture
            xs = x.to(dt).contiguous(memory_format=torch.channels_last)
            tail = _fast_tail(fused, xs)
            if ref is not None:  # interpreter: the fast tail equals the fused block's forward
                row = {"r": r, "fast_tail_rel_err": _rel_err(tail, ref.double())}
            else:
                ts = time_ms(lambda f=fused, x=xs: f(x), reps=10)
                tt = time_ms(lambda f=fused, x=xs: _fast_tail(f, x), reps=10)
                td = time_ms(lambda f=dense, x=xs: f(x), reps=10)
                row = {"r": r, "sparse_ms": ts["ms"], "fast_tail_ms": tt["ms"], "dense_ms": td["ms"],
                       "ratio": td["ms"] / ts["ms"], "ratio_fast_tail": td["ms"] / tt["ms"], "mode": ts["mode"]}
            row.update(measured_d1=stats.get("d1"), measured_d2=stats.get("d2"), size=f"{h}x{w}")
            rows.append(row)
    return {"rows": rows, "block": "sparse_resnet50.layer3[1] (stage-3 Bottleneck), fp16, batch 1"}


def model_section(dev, tiny: bool) -> dict:
    import torch

    from sai.models import build_model, fuse_for_inference

    dt = torch.float16 if dev.type == "cuda" else torch.float32
    sizes = [(32, 32)] if tiny else [(512, 832), (1024, 1664)]
    arch = "sparse_resnet18" if tiny else "sparse_resnet101"
    rows = []
    for h, w in sizes:
        torch.manual_seed(0)
        width = {"base_width": 16} if tiny else {}
        model = build_model(arch, head="none", **width).eval()
        _randomize_masks(model)
        x = torch.randn(1, 3, h, w)
        model = model.to(dev)
        x = x.to(dev)
        _calibrate_mask_bias(model, x, 0.3)
        dense = fuse_for_inference(_dense_twin(model, head="none", **width)).to(dev)
        fused = fuse_for_inference(model).eval()
        with torch.no_grad():
            fused.reset_densities()
            fused(x)
            d = _measured_density(fused)
            fused = fused.to(dt).to(memory_format=torch.channels_last)
            dense = dense.to(dt).to(memory_format=torch.channels_last).eval()
            fused.record_stats = False  # no per-block host copy: no sync, CUDA graphs can capture
            xs = x.to(dt).contiguous(memory_format=torch.channels_last)
            y = fused(xs)
            ys = y if isinstance(y, (tuple, list)) else [y]
            row = {"arch": arch, "size": f"{h}x{w}", "measured_density": d,
                   "finite": all(bool(torch.isfinite(t).all()) for t in ys)}
            if dev.type == "cuda":
                ts = time_ms(lambda f=fused, x=xs: f(x), reps=3, trials=5)
                td = time_ms(lambda f=dense, x=xs: f(x), reps=3, trials=5)
                row.update(sparse_ms=ts["ms"], dense_ms=td["ms"], ratio=td["ms"] / ts["ms"], mode=ts["mode"],
                           dense_mode=td["mode"])
        rows.append(row)
        model = fused = dense = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows}


# ---- fused: the fused inference model's GPU block (sai.models.fuse) against dense, batch 1 and 8 -----

FUSED_GPU_MODULE = "sai.kernels.sparse_block"  # the fused sparse block on the GPU (issue 24 item 1)


def fused_gpu_block_present() -> bool:
    try:
        return importlib.util.find_spec(FUSED_GPU_MODULE) is not None
    except ImportError:
        return False


def _time_pair(sparse, dense, x, reps: int) -> dict:
    import torch

    with torch.no_grad():
        ts = time_ms(lambda: sparse(x), reps=reps, trials=5)
        td = time_ms(lambda: dense(x), reps=reps, trials=5)
    return {"sparse_ms": ts["ms"], "dense_ms": td["ms"], "ratio": td["ms"] / ts["ms"], "mode": ts["mode"],
            "dense_mode": td["mode"]}


def fused_section(dev, tiny: bool) -> dict:
    """The fused inference model of ``sai.models.fuse`` on the torch CUDA path, whatever it runs there
    (the fused GPU block where it takes the block, the per-op kernels elsewhere): the stage-3
    Bottleneck at r = 0.3 and sparse_resnet101 at density 0.3 (512x832 and 1024x1664), fp16,
    channels_last, CUDA-graphed, batch 1 and 8, against the dense twin in the same run. Skipped
    with a note where the fused GPU block is not in the checkout (the block and model sections time
    the per-op path) and without a GPU."""
    if not fused_gpu_block_present():
        return {"skipped": f"no fused GPU block in this checkout ({FUSED_GPU_MODULE} is missing): nothing new to "
                           "time; the block and model sections time the fused model's per-op GPU path"}
    if dev.type != "cuda" or tiny:
        return {"skipped": "timings need a GPU" if dev.type != "cuda" else "--tiny",
                "fused_gpu_block": FUSED_GPU_MODULE}
    import torch

    from sai.models import build_model, fuse_for_inference

    dt, cl = torch.float16, torch.channels_last
    loaded_before = set(sys.modules)
    rows = []
    fused, dense, x1 = _stage3_block(dev, torch.float32, 0.3, 64, 104, False)
    with torch.no_grad():
        fused.reset_densities()
        fused(x1)
        stats = fused.mask_stats() or {}
        fused = fused.to(dt).to(memory_format=cl).eval()
        fused.record_stats = False  # no per-block host copy: no sync, CUDA graphs can capture
        for batch in (1, 8):
            x = torch.randn(batch, *x1.shape[1:], device=dev).to(dt).contiguous(memory_format=cl)
            rows.append({"what": "stage-3 Bottleneck (sparse_resnet50.layer3[1]) 64x104", "batch": batch, "r": 0.3,
                         "measured_d1": stats.get("d1"), "measured_d2": stats.get("d2"),
                         **_time_pair(fused, dense, x, reps=10)})
    fused = dense = None
    for h, w in ((512, 832), (1024, 1664)):
        torch.manual_seed(0)
        model = build_model("sparse_resnet101", head="none").eval()
        _randomize_masks(model)
        model = model.to(dev)
        x = torch.randn(1, 3, h, w, device=dev)
        _calibrate_mask_bias(model, x, 0.3)
        dense = fuse_for_inference(_dense_twin(model, head="none")).to(dev).to(dt).to(memory_format=cl).eval()
        fused = fuse_for_inference(model).eval()
        with torch.no_grad():
            fused.reset_densities()
            fused(x)
            d = _measured_density(fused)
            fused = fused.to(dt).to(memory_format=cl)
            fused.record_stats = False
            for batch in (1, 8):
                xb = torch.randn(batch, 3, h, w, device=dev).to(dt).contiguous(memory_format=cl)
                rows.append({"what": f"sparse_resnet101 {h}x{w}", "batch": batch, "measured_density": d,
                             **_time_pair(fused, dense, xb, reps=3)})
        model = fused = dense = None
        torch.cuda.empty_cache()
    used = sorted(m for m in set(sys.modules) - loaded_before if m.startswith("sai.kernels."))
    return {"rows": rows, "fused_gpu_block": FUSED_GPU_MODULE, "kernel_modules_loaded_by_the_runs": used,
            "goals": {"stage-3 block r=0.3 >= 2x": [r["ratio"] for r in rows if r["what"].startswith("stage-3")],
                      "sparse_resnet101 1024x1664 >= 1.5x": [r["ratio"] for r in rows
                                                             if r["what"] == "sparse_resnet101 1024x1664"]}}


# ---- plugin_kernels: the TensorRT plugins' launch code on the device, without TensorRT -------------

_LAYOUT_IDS = {"NCHW": 0, "NHWC": 1, "NHWC8": 2, "NHWC16": 3}
_TYPE_IDS = {"fp32": 0, "fp16": 1, "bf16": 2}


def build_launch_library(out: Path, cc: int, jobs: int) -> Path:
    """The plugins' launchers + the kernels' launcher + the cubins for sm_<cc>, as one shared library
    with a C ABI (trt_plugins/tests/launch_capi.cpp). Uses build/kernels when `make kernels` built
    that arch, else compiles the kernels for sm_<cc> into ``out/kernels`` (no network needed)."""
    import shutil
    import subprocess

    from sai.kernels import aot

    kdir = _ROOT / "build" / "kernels"
    want = {aot.image_stem(n, t) for n, s, t in aot._expand_specs(list(aot.SPECS)) if aot.supported(s, cc)}
    if not ((kdir / "sai_kernels_embedded.cpp").is_file()
            and want <= {p.stem for p in (kdir / f"sm_{cc}").glob("*.json")}):
        kdir = out / "kernels"
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = str(_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        code = ("import sys; sys.argv[0] = 'aot'; sys.path.insert(0, sys.argv[1]); import sai; "
                "sai.__path__.append(sys.argv[1]); from sai.kernels import aot; sys.exit(aot.main(sys.argv[2:]))")
        proc = subprocess.run([sys.executable, "-c", code, str(_ROOT), "--out", str(kdir), "--arch",
                               str(cc), "--jobs", str(jobs)], env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise RuntimeError(f"AOT build for sm_{cc} failed: {proc.stderr[-2000:]}")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) to build the plugins' launch code")
    plugins = _ROOT / "trt_plugins"
    srcs = [plugins / "tests" / "launch_capi.cpp", plugins / "common" / "saiTritonLaunch.cpp",
            plugins / "sparseSampleConv" / "sparseSampleConvLaunch.cpp",
            plugins / "interpolate" / "interpolateLaunch.cpp", aot.LAUNCHER_DIR / "sai_kernel_launcher.cpp",
            kdir / "sai_kernels_embedded.cpp"]
    incs = [aot.cuda_include_dir(), aot.LAUNCHER_DIR, kdir, plugins / "common", _ROOT / "models" / "csrc" / "common",
            plugins / "sparseSampleConv",
            plugins / "interpolate"]
    lib = out / "libsai_launch_check.so"
    cmd = [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror",
           *[f"-I{i}" for i in incs], *map(str, srcs), "-o", str(lib), "-ldl"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"building the launch library failed: {proc.stderr[-2000:]}")
    return lib


class LaunchLibrary:
    """ctypes view of libsai_launch_check.so (the C ABI of trt_plugins/tests/launch_capi.cpp)."""

    def __init__(self, path: Path):
        import ctypes

        self.ct = ctypes
        self.lib = ctypes.CDLL(str(path))
        self.lib.sai_launch_error.restype = ctypes.c_char_p
        for fn in ("sai_conv_workspace", "sai_interp_workspace"):
            getattr(self.lib, fn).restype = ctypes.c_size_t
            getattr(self.lib, fn).argtypes = [ctypes.POINTER(ctypes.c_int64)]
        vp = ctypes.c_void_p
        self.lib.sai_conv_launch.argtypes = [ctypes.POINTER(ctypes.c_int64), vp, vp, vp, vp, vp, vp, vp,
                                             ctypes.c_size_t, vp]
        self.lib.sai_interp_launch.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float), vp,
                                               vp, vp, vp, ctypes.c_size_t, vp]

    def _ints(self, values):
        return (self.ct.c_int64 * len(values))(*values)

    def error(self) -> str:
        return self.lib.sai_launch_error().decode()

    def conv_workspace(self, params) -> int:
        return self.lib.sai_conv_workspace(self._ints(params))

    def conv(self, params, ptrs, ws, ws_size, stream) -> int:
        return self.lib.sai_conv_launch(self._ints(params), *ptrs, ws, ws_size, stream)

    def interp_workspace(self, params) -> int:
        return self.lib.sai_interp_workspace(self._ints(params))

    def interp(self, params, sigma_eps, ptrs, ws, ws_size, stream) -> int:
        f = (self.ct.c_float * 2)(*sigma_eps)
        return self.lib.sai_interp_launch(self._ints(params), f, *ptrs, ws, ws_size, stream)


def _dev_layout(t, layout: str, pad_value: float = float("nan")):
    """A logical NCHW tensor in TensorRT's memory order for ``layout``; (buffer, logical view)."""
    import torch

    if layout == "NCHW":
        buf = t.contiguous()
        return buf, buf
    v = {"NHWC": 1, "NHWC8": 8, "NHWC16": 16}[layout]
    n, c, h, w = t.shape
    cp = (c + v - 1) // v * v
    buf = torch.full((n, h, w, cp), pad_value, dtype=t.dtype, device=t.device)
    buf[..., :c] = t.permute(0, 2, 3, 1)
    return buf, buf[..., :c].permute(0, 3, 1, 2)


def _plugin_conv(lib, dev, case: dict, r: float = 0.5, seed: int = 0):
    """One SparseSampleConv through the plugins' launcher: (run(), y logical view, reference(), y pad view)."""
    import torch

    from sai.models.ops import conv_output_size, sparse_sample_conv_reference

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case["type"]]
    mdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case["mtype"]]
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, cin, cout, h, w, k, grp, dg = (case[key] for key in ("n", "cin", "cout", "h", "w", "k", "g", "dg"))
    pads, s, d = case["pads"], case["s"], case["d"]
    ho = conv_output_size(h, k, s, pads[0], pads[2], d)
    wo = conv_output_size(w, k, s, pads[1], pads[3], d)
    x = torch.randn(n, cin, h, w, generator=g).to(dev, dt)
    wt = (torch.randn(cout, cin // grp, k, k, generator=g) / (cin * k * k) ** 0.5).to(dev, dt)
    b = torch.randn(cout, generator=g).to(dev, dt)
    m = (torch.rand(n, 1, ho, wo, generator=g) < r).to(dev, mdt)
    off = (2.5 * torch.randn(n, 2 * dg * k * k, ho, wo, generator=g)).to(dev, dt) if dg else None
    xb, _ = _dev_layout(x, case["xl"])
    mb, _ = _dev_layout(m, case.get("ml", "NCHW"))
    ob = _dev_layout(off, case["xl"])[0] if off is not None else None
    yb, y = _dev_layout(torch.empty(n, cout, ho, wo, dtype=dt, device=dev), case["xl"])
    params = [n, cin, h, w, cout, k, k, s, s, *pads, d, d, grp, max(dg, 1), case["act"], _TYPE_IDS[case["type"]],
              _TYPE_IDS[case["mtype"]], _LAYOUT_IDS[case["xl"]], _LAYOUT_IDS[case.get("ml", "NCHW")],
              case.get("tactic", 0), 1 if dg else 0]
    ws = torch.empty(max(lib.conv_workspace(params), 1), dtype=torch.uint8, device=dev)
    ptrs = [xb.data_ptr(), mb.data_ptr(), wt.contiguous().data_ptr(), b.data_ptr(),
            ob.data_ptr() if ob is not None else None, yb.data_ptr()]

    def run():
        rc = lib.conv(params, ptrs, ws.data_ptr(), ws.numel(), torch.cuda.current_stream().cuda_stream)
        if rc != 0:
            raise RuntimeError(f"sparseSampleConvLaunch: cudaError {rc}: {lib.error()}")

    def reference():
        return sparse_sample_conv_reference(x.double(), m.double(), wt.double(), b.double(),
                                            None if off is None else off.double(), [s, s], list(pads), [d, d], grp,
                                            max(dg, 1), "relu" if case["act"] else "none")

    pad = yb[..., cout:] if yb.dim() == 4 and case["xl"] != "NCHW" and yb.shape[-1] > cout else None
    return run, y, reference, pad, (x, wt, b)


_PLUGIN_CONV_CASES = [
    dict(type="fp16", mtype="fp32", xl="NHWC8", n=2, cin=64, cout=64, h=19, w=23, k=3, s=1, pads=(1, 1, 1, 1), d=1,
         g=1, dg=0, act=1, tactic=1, build="sparse_conv_fp16_k3_relu"),
    dict(type="fp16", mtype="fp16", xl="NHWC8", n=1, cin=64, cout=32, h=17, w=15, k=1, s=1, pads=(0, 0, 0, 0), d=1,
         g=1, dg=0, act=0, tactic=2, build="sparse_conv_fp16_k1"),
    dict(type="fp16", mtype="fp32", xl="NHWC8", n=1, cin=12, cout=20, h=13, w=11, k=3, s=2, pads=(1, 0, 1, 2), d=1,
         g=1, dg=0, act=0, build="sparse_conv_fp16_any"),
    dict(type="bf16", mtype="fp32", xl="NHWC16", n=1, cin=32, cout=48, h=12, w=14, k=3, s=1, pads=(1, 1, 1, 1), d=1,
         g=1, dg=1, act=1, build="sparse_conv_bf16_k3_deform_relu"),
    dict(type="fp32", mtype="fp32", xl="NCHW", n=1, cin=24, cout=36, h=15, w=13, k=5, s=1, pads=(4, 4, 4, 4), d=2,
         g=3, dg=0, act=1, build="sparse_conv_fp32_any_relu"),
    dict(type="fp32", mtype="fp32", xl="NHWC", n=1, cin=16, cout=16, h=9, w=9, k=3, s=1, pads=(1, 1, 1, 1), d=1,
         g=1, dg=2, act=0, build="sparse_conv_fp32_any_deform"),
]


def plugin_kernels_section(dev, tiny: bool, out: Path) -> dict:
    """The TensorRT plugins' enqueue code (trt_plugins/*/<op>Launch.cpp on the AOT Triton cubins), built
    here and run on torch CUDA tensors through a C ABI: parity against the PyTorch reference in every
    kind of build and layout, and the fp16 NHWC8 conv 3x3 256->256 at 64x64 timed against cuDNN. Without
    a GPU it builds and loads the library and checks that a launch fails cleanly without a driver."""
    import torch

    cc = 80
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        cc = major * 10 + minor
    lib_path = build_launch_library(out, cc, jobs=min(8, os.cpu_count() or 2))
    lib = LaunchLibrary(lib_path)
    if dev.type != "cuda":
        params = [1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 0, 0, 0]
        import ctypes

        ws = lib.conv_workspace(params)
        host = ctypes.create_string_buffer(ws + 256)  # never touched: the launch stops at the missing driver
        rc = lib.conv(params, [None] * 6, (ctypes.addressof(host) + 255) // 256 * 256, ws, None)
        if rc == 0 or "no CUDA driver" not in lib.error():
            raise RuntimeError(f"a launch without a GPU should fail cleanly, got {rc}: {lib.error()}")
        return {"built": str(lib_path), "cc": cc, "workspace_bytes": ws,
                "launch_without_gpu": f"cudaError {rc}: {lib.error()}",
                "skipped": "parity and timings need a GPU (tests/test_trt_launch.py replays the launches on the CPU)"}
    tol = {"fp32": 1e-4, "fp16": 4e-3, "bf16": 3e-2}
    rows = []
    for case in _PLUGIN_CONV_CASES:
        run, y, reference, pad, _ = _plugin_conv(lib, dev, case)
        run()
        torch.cuda.synchronize()
        err = _rel_err(y, reference())
        ok = err <= tol[case["type"]] and bool(torch.isfinite(y.float()).all()) and (pad is None or bool((pad == 0).all()))
        rows.append({"op": "SparseSampleConv", **{k: v for k, v in case.items() if k != "pads"}, "rel_err": err,
                     "ok": ok})
    from sai.models.ops import interpolate_reference

    for dtn, mtn, layout, c, k in (("fp16", "fp32", "NHWC8", 64, 7), ("bf16", "bf16", "NHWC8", 24, 5),
                                   ("fp32", "fp32", "NCHW", 20, 7), ("fp16", "fp16", "NHWC16", 48, 3)):
        dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        g = torch.Generator(device="cpu").manual_seed(c)
        f = torch.randn(2, c, 21, 17, generator=g).to(dev, dt[dtn])
        mr = torch.rand(2, 1, 21, 17, generator=g)
        m = torch.where(mr < 0.4, 0.0, torch.where(mr > 0.8, 1.0, mr)).to(dev, dt[mtn])
        fb, _ = _dev_layout(f, layout)
        yb, yv = _dev_layout(torch.empty_like(f), layout)
        params = [2, c, 21, 17, k, _TYPE_IDS[dtn], _TYPE_IDS[mtn], _LAYOUT_IDS[layout], 0]
        ws = torch.empty(max(lib.interp_workspace(params), 1), dtype=torch.uint8, device=dev)
        rc = lib.interp(params, (1.3, 1e-5), [fb.data_ptr(), m.contiguous().data_ptr(), yb.data_ptr()],
                        ws.data_ptr(), ws.numel(), torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        err = _rel_err(yv, interpolate_reference(f.double(), m.double(), 1.3, k, 1e-5)) if rc == 0 else float("inf")
        rows.append({"op": "Interpolate", "type": dtn, "mtype": mtn, "layout": layout, "c": c, "k": k,
                     "rel_err": err, "ok": rc == 0 and err <= tol[dtn], "error": lib.error() if rc else ""})
    timings = []
    if not tiny:
        import torch.nn.functional as F

        torch.backends.cudnn.benchmark = True
        for r in (0.1, 0.25, 0.5, 1.0):
            for tactic in (1, 2):
                case = dict(type="fp16", mtype="fp32", xl="NHWC8", n=1, cin=256, cout=256, h=64, w=64, k=3, s=1,
                            pads=(1, 1, 1, 1), d=1, g=1, dg=0, act=1, tactic=tactic)
                run, _, _, _, (x, wt, b) = _plugin_conv(lib, dev, case, r=r)
                xc, wc = x.contiguous(memory_format=torch.channels_last), wt.contiguous(memory_format=torch.channels_last)
                dense = time_ms(lambda xc=xc, wc=wc, b=b: F.relu(F.conv2d(xc, wc, b, padding=1)))
                sp = time_ms(run)
                timings.append({"op": "conv3x3 256->256 64x64 fp16 NHWC8 (plugin launch)", "r": r, "tactic": tactic,
                                "plugin_ms": sp["ms"], "cudnn_ms": dense["ms"], "ratio": dense["ms"] / sp["ms"],
                                "mode": sp["mode"]})
    failed = [r for r in rows if not r["ok"]]
    return {"cc": cc, "library": str(lib_path), "parity": rows, "passed": len(rows) - len(failed),
            "failed": len(failed), "timings": timings}


# ---- engine: TensorRT engines with the plugins, where TensorRT is installed -------------------------


def _sai_cli(args: list[str], timeout: float) -> tuple[int, str]:
    """``python -m sai ARGS`` (the installed package: a machine with TensorRT has sai installed)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "sai", *args], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def engine_section(dev, tiny: bool, out: Path) -> dict:
    """Single-op engines against the PyTorch reference (tests/test_trt_gpu.py) and the sparse vs dense
    engine latency of sparse_resnet101 (density ~0.3, fp16, 512x832), through the sai CLI. Where
    TensorRT, a GPU or the plugin library is missing it says which and the run goes on."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - any import failure means: no usable TensorRT here
        return {"skipped": f"no TensorRT here (import tensorrt: {type(e).__name__}: {str(e)[:160]}); the "
                           "plugin_kernels section runs the plugins' launch code without it"}
    if dev.type != "cuda":
        return {"skipped": f"TensorRT {trt.__version__} is installed but there is no GPU"}
    from sai.runtime.plugins import find_plugin_library

    lib = find_plugin_library()
    if lib is None:
        return {"skipped": f"TensorRT {trt.__version__} but no libsai_trt_plugins.so: run make plugins "
                           "TENSORRT_ROOT=... (or TRT_INCLUDE_DIR=...)"}
    result: dict = {"tensorrt": trt.__version__, "library": str(lib)}
    import subprocess

    tests = _ROOT / "tests" / "test_trt_gpu.py"
    if tests.is_file() and importlib.util.find_spec("pytest") is not None:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(tests)],
                              capture_output=True, text=True, timeout=900, cwd=str(_ROOT))
        result["single_op_engines"] = {"returncode": proc.returncode,
                                       "summary": (proc.stdout.strip().splitlines() or [""])[-1]}
    else:
        result["single_op_engines"] = {"skipped": "tests/test_trt_gpu.py or pytest not available"}
    if tiny:
        result["model"] = {"skipped": "--tiny"}
        return result
    import torch

    from sai.models import build_model
    from sai.models.checkpoint import save_checkpoint

    model = build_model("sparse_resnet101", head="none").eval()
    _randomize_masks(model)
    _calibrate_mask_bias(model, torch.randn(1, 3, 512, 832), 0.3)
    ckpt = save_checkpoint(model, out / "sparse_resnet101_d0.3.pth")
    conv_dir = out / "engine_sparse_resnet101"
    shape = "1,3,512,832"
    rc, log = _sai_cli(["convert", str(ckpt), "-o", str(conv_dir), "--precision", "fp16", "--shape", shape,
                        "--min-shape", shape, "--max-shape", shape, "--require-engine", "-q"], timeout=1800)
    if rc != 0:
        result["model"] = {"error": f"sai convert failed ({rc}): {log[-1500:]}"}
        return result
    rc, log = _sai_cli(["validate", str(conv_dir), "--backends", "tensorrt", "-o", str(out / "validate.json")],
                       timeout=900)
    result["validate"] = {"returncode": rc, "tail": log[-600:]}
    rc, log = _sai_cli(["bench", str(conv_dir), "--backend", "tensorrt", "--compare-dense", "--shape", shape,
                        "--json"], timeout=900)
    try:
        result["model"] = json.loads(log[log.index("{"):log.rindex("}") + 1]) if rc == 0 else {"error": log[-1500:]}
    except ValueError:
        result["model"] = {"error": f"sai bench printed no JSON: {log[-800:]}"}
    return result


def _bucket_bounds(ps: list[int]) -> list[int | None]:
    """P_max of each size's bucket: the geometric midpoint to the next size; the largest is open."""
    return [int((a * b) ** 0.5) for a, b in zip(ps, ps[1:], strict=False)] + [None]


def _pick_conv_winners(trials: list[dict], shapes: list[tuple], rates: tuple) -> list[dict]:
    """Per size: the config with the smallest geometric mean over the rates of (its time / the best
    time at that rate); every size's winner becomes a table entry for its bucket of P (N*Ho*Wo)."""
    out = []
    ps = [n * h * w for n, _, _, h, w in shapes]
    for si, bound in zip(sorted(range(len(shapes)), key=lambda i: ps[i]), _bucket_bounds(sorted(ps)), strict=True):
        good = [t for t in trials if t.get("ok") and all(t["ms"].get(f"{si}/{r}") is not None for r in rates)]
        if not good:
            continue
        best = {r: min(t["ms"][f"{si}/{r}"] for t in good) for r in rates}
        for t in good:
            t.setdefault("score", {})[str(si)] = (
                math.prod(t["ms"][f"{si}/{r}"] / best[r] for r in rates) ** (1 / len(rates))
                if all(best[r] for r in rates) else 0.0)
        win = min(good, key=lambda t: t["score"][str(si)])
        out.append({"bound": bound, "config": win["config"], "shape": list(shapes[si]),
                    "ms_by_rate": {str(r): win["ms"][f"{si}/{r}"] for r in rates}, "score": win["score"][str(si)]})
    return out


def autotune_section(dev, tiny: bool, out: Path, write_configs: bool, deadline: float = float("inf")) -> dict:
    """Sweep tile configs of the conv (3x3 and 1x1, fp16) over several sizes and rates, and of
    Interpolate (k7); keep the fastest. Conv winners are per size: each becomes a table entry for
    its range of P (``P_max``, the rows N*Ho*Wo the grid covers: the active count lives on the device,
    so the host picks by P), the geometric mean over the rates deciding.

    Stops trying configs at ``deadline`` (perf_counter time), keeping the best one so far."""
    import torch

    from sai.kernels import configs
    from sai.kernels.interpolate import interpolate as interp
    from sai.kernels.sparse_sample_conv import sparse_sample_conv as conv
    from sai.models.ops import interpolate_reference, sparse_sample_conv_reference

    arch = configs.arch_name(dev)
    dt = torch.float16 if dev.type == "cuda" else torch.float32
    if tiny:
        conv_space = [dict(BM=64, BN=16, BK=16, num_warps=1, num_stages=1), dict(BM=32, BN=32, BK=16, num_warps=1,
                                                                              num_stages=1)]
        interp_space = [dict(BP=64, BC=16, num_warps=1, num_stages=1), dict(BP=16, BC=32, num_warps=1, num_stages=1)]
        # (N, Cin, Cout, H, W) per kernel size, several sizes (P = N*H*W)
        shapes = {"3": [(1, 16, 24, 9, 11), (2, 16, 24, 12, 14)], "1": [(1, 24, 16, 9, 11)]}
        rates = (0.25, 1.0)
        ishape = (1, 20, 9, 11)
    else:
        conv_space = [dict(BM=bm, BN=bn, BK=bk, num_warps=nw, num_stages=ns) for bm, bn, bk, nw, ns in (
            (128, 64, 64, 8, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 64, 64, 4, 4),
            (64, 128, 64, 4, 3), (64, 256, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 4, 3),
            (256, 128, 64, 8, 3), (64, 64, 32, 4, 3))]
        interp_space = [dict(BP=bp, BC=bc, num_warps=nw, num_stages=1)
                        for bp, bc, nw in ((16, 64, 4), (32, 64, 4), (64, 64, 8), (32, 128, 4), (64, 128, 8),
                                           (16, 128, 4))]
        # the stage 2-4 sizes of a 1024x1664 input (and a stage-2 batch of 8): P = 1664 ... 212992
        shapes = {"3": [(1, 256, 256, 32, 52), (1, 256, 256, 64, 104), (1, 256, 256, 128, 208), (8, 256, 256, 128, 208)],
                  "1": [(1, 1024, 256, 32, 52), (1, 1024, 256, 64, 104), (1, 512, 256, 128, 208)]}
        rates = (0.1, 0.3, 1.0)
        ishape = (1, 1024, 64, 104)

    orig = configs.lookup
    results: dict = {"arch": arch, "conv": {}, "interpolate": [], "rates": list(rates),
                     "conv_shapes": {k: [list(v) for v in vs] for k, vs in shapes.items()}}
    winners: dict = {}
    try:
        for k, kshapes in shapes.items():
            g = torch.Generator(device="cpu").manual_seed(1)
            cases = []
            for si, (n, cin, cout, h, w) in enumerate(kshapes):
                x = torch.randn(n, cin, h, w, generator=g).to(dev, dt).contiguous(memory_format=torch.channels_last)
                wt = (torch.randn(cout, cin, int(k), int(k), generator=g) / (cin * int(k) ** 2) ** 0.5).to(dev, dt)
                masks = {r: _random_mask(n, h, w, r, dev) for r in rates}
                cases.append((si, x, wt, masks))
            pad = int(k) // 2
            trials = []
            for cfg in conv_space:
                if _now() > deadline:
                    trials.append({"config": cfg, "skipped": "time budget"})
                    continue
                configs.lookup = lambda kernel, a, _cfg=cfg, **f: dict(_cfg) if kernel == "sparse_sample_conv" \
                    else orig(kernel, a, **f)
                trial: dict = {"config": cfg, "ms": {}, "rel_err": 0.0}
                try:
                    for si, x, wt, masks in cases:
                        m = masks[rates[0]]
                        ref = sparse_sample_conv_reference(x.double(), m.double(), wt.double(), None, None, [1, 1],
                                                           [pad] * 4, [1, 1], 1, 1, "none")
                        trial["rel_err"] = max(trial["rel_err"], _rel_err(conv(x, m, wt, None, padding=pad), ref))
                        ref = None
                        for r in rates:
                            trial["ms"][f"{si}/{r}"] = time_ms(
                                lambda x=x, m=masks[r], wt=wt, pad=pad: conv(x, m, wt, None, padding=pad), reps=10,
                                trials=3)["ms"] if dev.type == "cuda" else 0.0
                    trial["ok"] = trial["rel_err"] < 4e-3
                except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: not a candidate
                    trial["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                trials.append(trial)
            results["conv"][f"k{k}"] = trials
            for win in _pick_conv_winners(trials, kshapes, rates):
                match = {"dtype": str(dt).replace("torch.", ""), "k": int(k), "deform": False, "cout_min": 128}
                if win["bound"] is not None:
                    match["P_max"] = win["bound"]
                winners.setdefault("sparse_sample_conv", []).append(
                    {"match": match, "config": win["config"],
                     "measured": {"shape": win["shape"], "ms_by_rate": win["ms_by_rate"], "score": win["score"]}})
        g = torch.Generator(device="cpu").manual_seed(2)
        f = torch.randn(*ishape, generator=g).to(dev, dt).contiguous(memory_format=torch.channels_last)
        m = _random_mask(ishape[0], ishape[2], ishape[3], 0.25, dev)
        ref = interpolate_reference(f.double(), m.double(), 1.0, 7, 1e-5)
        for cfg in interp_space:
            if _now() > deadline:
                results["interpolate"].append({"config": cfg, "skipped": "time budget"})
                continue
            configs.lookup = lambda kernel, a, _cfg=cfg, **fe: dict(_cfg) if kernel == "interpolate" \
                else orig(kernel, a, **fe)
            try:
                err = _rel_err(interp(f, m, 1.0, 7), ref)
                t = time_ms(lambda: interp(f, m, 1.0, 7), reps=10, trials=3)["ms"] if dev.type == "cuda" else None
                results["interpolate"].append({"config": cfg, "ms": t, "rel_err": err, "ok": err < 4e-3})
            except Exception as e:  # noqa: BLE001
                results["interpolate"].append({"config": cfg, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        good = [t for t in results["interpolate"] if t.get("ok")]
        if good:
            best = min(good, key=lambda t: t["ms"] if t["ms"] is not None else 0.0)
            winners["interpolate"] = [{"match": {}, "config": best["config"],
                                       "measured": {"ms": best["ms"], "shape": list(ishape), "r": 0.25}}]
    finally:
        configs.lookup = orig

    # the new table: winners first, then the arch's (or default) entries for everything not tuned
    base = configs._load(arch) or configs._load("default")
    table = {"_comment": f"autotuned by python -m sai.benchmarks.gpu_check on {arch} ({time.strftime('%Y-%m-%d')}); "
                         "entries without 'measured' are the untuned defaults"}
    for kernel in ("sparse_sample_conv", "interpolate"):
        table[kernel] = winners.get(kernel, []) + list(base.get(kernel, []))
    (out / "configs").mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=1) + "\n"
    (out / "configs" / f"{arch}.json").write_text(text)
    results["winners"] = winners
    results["written"] = [str(out / "configs" / f"{arch}.json")]
    if write_configs and dev.type == "cuda":
        dest = configs.HERE / f"{arch}.json"
        dest.write_text(text)
        configs.reload()
        results["written"].append(str(dest))
    return results


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sai.benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/gpu-check"))
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the default without a GPU)")
    ap.add_argument("--sections", default="env,parity,plugin_kernels,ops,block,model,fused,engine,autotune")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip the sections left after this long")
    ap.add_argument("--write-configs", action="store_true",
                    help="also write the autotune winners into the package's kernels/configs/ (GPU only)")
    args = ap.parse_args(argv)

    import torch

    if torch.cuda.is_available():
        dev = torch.device("cuda")
    else:
        os.environ["TRITON_INTERPRET"] = "1"  # read by sai.kernels at launch
        dev = torch.device("cpu")
    tiny = args.tiny or dev.type == "cpu"
    import sai.models  # noqa: F401  (registers the CUDA implementations where CUDA is)

    rep = Report(args.out, args.budget_s)
    rep.data.update(tiny=tiny, started=time.strftime("%Y-%m-%dT%H:%M:%S"), argv=sys.argv[1:])
    wanted = args.sections.split(",")
    plan = [("env", env_section, (dev,)), ("parity", parity_section, (dev, tiny)),
            ("plugin_kernels", plugin_kernels_section, (dev, tiny, args.out)),
            ("ops", ops_section, (dev,)), ("block", block_section, (dev, tiny)),
            ("model", model_section, (dev, tiny)), ("fused", fused_section, (dev, tiny)),
            ("engine", engine_section, (dev, tiny, args.out)),
            ("autotune", autotune_section, (dev, tiny, args.out, args.write_configs, rep.t0 + args.budget_s))]
    for name, fn, fargs in plan:
        if name not in wanted:
            continue
        if name == "ops" and (dev.type != "cuda" or tiny):
            rep.data["sections"]["ops"] = {"skipped": "timings need a GPU" if dev.type != "cuda" else "--tiny"}
            continue
        rep.section(name, fn, *fargs)
    rep.write()
    errors = [n for n, s in rep.data["sections"].items() if "error" in s or s.get("failed")]
    parity = rep.data["sections"].get("parity", {})
    print(f"gpu-check: wrote {args.out / 'gpu-check.json'} in {rep.data['elapsed_s']}s; "
          f"parity {parity.get('passed', '-')} ok / {parity.get('failed', '-')} failed; errors in: {errors or 'none'}")
    return 1 if errors or parity.get("failed") else 0


if __name__ == "__main__":
    if not __package__:  # run as a file, not with -m
        bootstrap_from_checkout()
    sys.exit(main())
