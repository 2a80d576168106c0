"""The TensorRT plugins' launch code on the embedded Triton kernels, replayed on the CPU.

``trt_plugins/tests/launch_recorder.cpp`` links the plugins' launchers (SparseSampleConvRunner,
InterpolateRunner: build choice, workspace layout, weight packing, strides, grids, zero bias,
padding channels) with the kernels' C++ launcher and the embedded cubins of ``make kernels``, and
runs them, as consecutive enqueues of one plugin, against a recording CUDA driver: every device
allocation, memset, stream wait and kernel launch they issue comes out as JSON, pointers as offsets
into a virtual arena, with what the host did per enqueue (heap allocations, image scans, module
cache lookups, driver lookups, build choices, weight packs). This test lays the inputs out in a host
arena in the layout TensorRT would hand over (NCHW, NHWC, NHWC8, NHWC16; padding channels and every
unwritten byte poisoned with NaN), replays the operations in order with the Triton interpreter
running the very kernel source each cubin was compiled from (with the constants recorded in its
metadata), and compares the output of the first and of a later enqueue (the output poisoned between
them) with the PyTorch reference of sai.models.ops in float64. The steady-state enqueue must issue
one memset and two kernels per op (plus the padding-channel fill of a vectorised output whose C is
not a multiple of its vector) and do no heap allocation, image scan, lock or build choice.

Without a GPU this is as close to `enqueue` as it gets: what it cannot see is the GPU itself
(`make gpu-check` and a TensorRT engine on a GPU machine do).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

from sai.models.ops import (  # noqa: E402
    conv_output_size,
    interpolate_reference,
    sparse_sample_conv_reference,
)

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "trt_plugins"
CC = 80  # the arch whose images the recorder picks (sm_80: mma.sync builds)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PTR = {"*fp32": torch.float32, "*fp16": torch.float16, "*bf16": torch.bfloat16, "*i32": torch.int32,
       "*i16": torch.int16}
EPS = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}
VECTOR = {"NCHW": 1, "NHWC": 1, "NHWC8": 8, "NHWC16": 16}


def _kernels_dir(tmp_root: Path) -> Path:
    """SAI_KERNELS_DIR or build/kernels when `make kernels` built every spec for sm_80 there, else a
    fresh sm_80-only build."""
    from sai.kernels import aot

    want = {aot.image_stem(n, t) for n, _, t in aot._expand_specs(list(aot.SPECS))}
    for built in ([Path(os.environ["SAI_KERNELS_DIR"])] if os.environ.get("SAI_KERNELS_DIR") else []) + [
            ROOT / "build" / "kernels"]:
        have = {p.stem for p in (built / f"sm_{CC}").glob("*.json")}
        if (built / "sai_kernels_embedded.cpp").is_file() and want <= have:
            return built
    out = tmp_root / "kernels"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "sai.kernels.aot", "--out", str(out), "--arch",
                           str(CC), "--jobs", "2"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def build_recorder(tmp_path_factory, name: str, extra_srcs=(), extra_incs=(), flags=()) -> dict:
    """g++ -Werror build of trt_plugins/tests/launch_recorder.cpp with the per-op launch sources (plus
    ``extra_srcs``, ``extra_incs``, ``flags``) and the AOT kernels of ``_kernels_dir``, in a fresh temporary
    folder ``name``: ``{"exe", "kernels"}``. Skips without g++."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    from sai.kernels import aot

    tmp = tmp_path_factory.mktemp(name)
    kdir = _kernels_dir(tmp)
    exe = tmp / f"{name}_recorder"
    srcs = [PLUGINS / "tests" / "launch_recorder.cpp", PLUGINS / "common" / "saiTritonLaunch.cpp",
            PLUGINS / "sparseSampleConv" / "sparseSampleConvLaunch.cpp",
            PLUGINS / "interpolate" / "interpolateLaunch.cpp", *extra_srcs,
            aot.LAUNCHER_DIR / "sai_kernel_launcher.cpp", kdir / "sai_kernels_embedded.cpp"]
    incs = [aot.cuda_include_dir(), aot.LAUNCHER_DIR, kdir, PLUGINS / "common", ROOT / "models" / "csrc" / "common",
            PLUGINS / "sparseSampleConv",
            PLUGINS / "interpolate", *extra_incs]
    cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", *flags, *[f"-I{i}" for i in incs],
           *map(str, srcs), "-o", str(exe), "-ldl"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"exe": exe, "kernels": kdir}


@pytest.fixture(scope="module")
def recorder(tmp_path_factory):
    return build_recorder(tmp_path_factory, "launch")


# ---- the arena ----------------------------------------------------------------------------------


class Arena:
    """Host bytes standing for device memory; every byte starts as 0xFF (NaN in every float type)."""

    def __init__(self):
        self.parts: list[tuple[int, bytes]] = []
        self.size = 0
        self.buf: torch.Tensor | None = None

    def reserve(self, nbytes: int, shift: int = 0) -> int:
        """``shift`` bytes past a 256-byte boundary: TensorRT may hand a tensor that starts anywhere
        (one inside a concatenation buffer)."""
        at = self.size + shift
        self.size += (max(nbytes, 1) + shift + 255) // 256 * 256
        return at

    def put(self, data: torch.Tensor, shift: int = 0) -> int:
        at = self.reserve(data.numel() * data.element_size(), shift)
        self.parts.append((at, data.contiguous().view(torch.uint8).reshape(-1)))
        return at

    def materialize(self, extra: int) -> None:
        self.buf = torch.full((self.size + extra + 256,), 0xFF, dtype=torch.uint8)
        for at, raw in self.parts:
            self.buf[at:at + raw.numel()] = raw

    def view(self, at: int, dtype: torch.dtype) -> torch.Tensor:
        size = torch.tensor([], dtype=dtype).element_size()
        n = (self.buf.numel() - at) // size
        return self.buf[at:at + n * size].view(dtype)


def to_layout(t: torch.Tensor, layout: str, pad_value: float = float("nan")) -> torch.Tensor:
    """A logical NCHW tensor in TensorRT's memory order for `layout` (padding channels = pad_value)."""
    if layout == "NCHW":
        return t.contiguous()
    v = VECTOR[layout]
    n, c, h, w = t.shape
    cp = (c + v - 1) // v * v
    out = torch.full((n, h, w, cp), pad_value, dtype=t.dtype)
    out[..., :c] = t.permute(0, 2, 3, 1)
    return out


def from_layout(raw: torch.Tensor, shape, layout: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logical NCHW tensor, padding channels or None) from the bytes of a tensor in `layout`."""
    n, c, h, w = shape
    if layout == "NCHW":
        return raw[: n * c * h * w].reshape(n, c, h, w), None
    v = VECTOR[layout]
    cp = (c + v - 1) // v * v
    t = raw[: n * h * w * cp].reshape(n, h, w, cp)
    return t[..., :c].permute(0, 3, 1, 2), (t[..., c:] if cp > c else None)


def replay(ops: list[dict], arena: Arena, kernels_dir: Path) -> list[dict]:
    launches = []
    for op in ops:
        if op["op"] in ("alloc", "sync"):  # device memory is arena bytes already; streams are in order here
            continue
        if op["op"] == "memset":
            arena.buf[op["dst"]:op["dst"] + op["bytes"]] = op["value"]
        elif op["op"] == "memset2d":
            arena.buf.as_strided((op["height"], op["width"]), (op["pitch"], 1), op["dst"]).fill_(op["value"])
        else:
            from sai.kernels import aot

            stem = aot.image_stem(op["spec"], op["tactic"])
            meta = json.loads((kernels_dir / f"sm_{op['cc']}" / f"{stem}.json").read_text())
            assert op["hidden"] == [0, 0]  # no scratch: the images need none
            fn = getattr(importlib.import_module(meta["module"]), meta["kernel"]).interp
            kwargs = {}
            for p in meta["params"]:
                value = op["args"][p["name"]]
                if p["type"].startswith("*"):
                    size = torch.tensor([], dtype=PTR[p["type"]]).element_size()
                    if value % size:  # only the fused tail's pointers, never read without FUSED: any view
                        assert p["name"] in ("b_ptr", "id_ptr") and meta["constexprs"].get("FUSED") is False, p
                        value -= value % size
                    value = arena.view(value, PTR[p["type"]])
                elif p["type"] == "fp32":
                    value = float(value)  # "2" in the JSON is still the float 2.0
                kwargs[p["name"]] = value
            const = dict(meta["constexprs"])
            if "UPCAST_DOT" in const and "bf16" in op["spec"]:
                const["UPCAST_DOT"] = True  # the interpreter's dot cannot multiply bfloat16
            fn[tuple(op["grid"])](**kwargs, **const)
            launches.append(op)
    return launches


def record(recorder, **case) -> dict:
    args = [f"{k}={v}" for k, v in case.items() if v is not None]
    proc = subprocess.run([str(recorder["exe"]), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


# ---- SparseSampleConv ---------------------------------------------------------------------------

CONV = [
    # fp16 NHWC8, aligned: the fast 3x3 build with tactic 2, mask in fp32, ReLU, bias
    dict(type="fp16", mtype="fp32", xl="NHWC8", ml="NCHW", n=2, cin=16, cout=32, h=7, w=9, k=3, s=1, pads=(1, 1, 1, 1),
         d=1, g=1, act=1, bias=True, dg=0, tactic=2, build="sparse_conv_fp16_k3_relu"),
    # fp16 NHWC8 with padding channels on both sides, no bias, no ReLU: the any-size build
    dict(type="fp16", mtype="fp16", xl="NHWC8", ml="NHWC8", n=1, cin=12, cout=20, h=8, w=6, k=3, s=2,
         pads=(1, 0, 1, 2), d=1, g=1, act=0, bias=False, dg=0, tactic=0, build="sparse_conv_fp16_any"),
    # fp32 NCHW (TensorRT's kLINEAR), grouped 1x1 with stride
    dict(type="fp32", mtype="fp32", xl="NCHW", ml="NCHW", n=1, cin=8, cout=12, h=9, w=7, k=1, s=2, pads=(0, 0, 0, 0),
         d=1, g=2, act=1, bias=True, dg=0, tactic=0, build="sparse_conv_fp32_any_relu"),
    # bf16 NHWC16 1x1, aligned: the fast 1x1 build
    dict(type="bf16", mtype="bf16", xl="NHWC16", ml="NCHW", n=1, cin=32, cout=16, h=5, w=6, k=1, s=1,
         pads=(0, 0, 0, 0), d=1, g=1, act=0, bias=True, dg=0, tactic=1, build="sparse_conv_bf16_k1"),
    # fp16 NCHW 5x5 dilated: kernel sizes beyond the unrolled builds
    dict(type="fp16", mtype="fp32", xl="NCHW", ml="NCHW", n=1, cin=6, cout=9, h=10, w=9, k=5, s=1, pads=(4, 4, 4, 4),
         d=2, g=3, act=1, bias=True, dg=0, tactic=0, build="sparse_conv_fp16_any_relu"),
    # deformable, fp16 NHWC16 aligned (fast deform build; the offset has 18 channels, padded to 32)
    dict(type="fp16", mtype="fp32", xl="NHWC16", ml="NCHW", n=1, cin=16, cout=16, h=6, w=7, k=3, s=1,
         pads=(1, 1, 1, 1), d=1, g=1, act=1, bias=True, dg=1, tactic=0, build="sparse_conv_fp16_k3_deform_relu"),
    # deformable, fp32 NCHW, two deform groups
    dict(type="fp32", mtype="fp32", xl="NCHW", ml="NCHW", n=1, cin=8, cout=6, h=6, w=5, k=3, s=1, pads=(1, 1, 1, 1),
         d=1, g=1, act=0, bias=False, dg=2, tactic=0, build="sparse_conv_fp32_any_deform"),
    # aligned shapes, but X starts 2 bytes past a 16-byte boundary (inside a concatenation): the any build
    dict(type="fp16", mtype="fp32", xl="NHWC8", ml="NCHW", n=1, cin=16, cout=32, h=6, w=7, k=3, s=1,
         pads=(1, 1, 1, 1), d=1, g=1, act=1, bias=True, dg=0, tactic=2, shift=2, build="sparse_conv_fp16_any_relu"),
    # both enqueues inside a CUDA-graph capture: no allocation, no wait, the weights packed in the workspace
    dict(type="fp16", mtype="fp16", xl="NHWC16", ml="NCHW", n=1, cin=16, cout=16, h=5, w=6, k=3, s=1,
         pads=(1, 1, 1, 1), d=1, g=1, act=0, bias=False, dg=0, tactic=1, capture=1, build="sparse_conv_fp16_k3"),
    # the second enqueue reads W from another address: packed again into the runner's buffer
    dict(type="bf16", mtype="fp32", xl="NHWC8", ml="NCHW", n=1, cin=16, cout=16, h=5, w=5, k=1, s=1,
         pads=(0, 0, 0, 0), d=1, g=1, act=1, bias=False, dg=0, tactic=2, weight2=True,
         build="sparse_conv_bf16_k1_relu"),
    dict(type="fp32", mtype="fp32", xl="NCHW", ml="NCHW", n=1, cin=5, cout=7, h=7, w=6, k=3, s=1, pads=(1, 1, 1, 1),
         d=1, g=1, act=0, bias=True, dg=0, tactic=0, shift=4, build="sparse_conv_fp32_any"),
]


def _soft_mask(shape, gen):
    r = torch.rand(shape, generator=gen)
    return torch.where(r < 0.4, 0.0, torch.where(r > 0.8, 1.0, r))


@pytest.mark.parametrize("case", CONV, ids=[c["build"] + "-" + c["xl"] + ("-capture" if c.get("capture") else "")
                                            + ("-weight2" if c.get("weight2") else "") for c in CONV])
def test_conv_launch_replayed_matches_the_reference(recorder, case):
    dt = DTYPES[case["type"]]
    gen = torch.Generator().manual_seed(3)
    n, cin, cout, h, w, k, g = (case[key] for key in ("n", "cin", "cout", "h", "w", "k", "g"))
    pt, pl, pb, pr = case["pads"]
    ho = conv_output_size(h, k, case["s"], pt, pb, case["d"])
    wo = conv_output_size(w, k, case["s"], pl, pr, case["d"])
    x = torch.randn(n, cin, h, w, generator=gen).to(dt)
    weight = (torch.randn(cout, cin // g, k, k, generator=gen) / math.sqrt(cin * k * k)).to(dt)
    bias = torch.randn(cout, generator=gen).to(dt) if case["bias"] else None
    mask = _soft_mask((n, 1, ho, wo), gen).to(DTYPES[case["mtype"]])
    offset = (2.5 * torch.randn(n, 2 * case["dg"] * k * k, ho, wo, generator=gen)).to(dt) if case["dg"] else None

    arena = Arena()
    shift = case.get("shift", 0)
    off = {"x": arena.put(to_layout(x, case["xl"]), shift), "mask": arena.put(to_layout(mask, case["ml"])),
           "weight": arena.put(weight), "bias": arena.put(bias) if bias is not None else -1,
           "offset": arena.put(to_layout(offset, case["xl"])) if offset is not None else -1}
    weight2 = None
    if case.get("weight2"):  # the second enqueue reads another W (another address): packed again
        weight2 = (torch.randn(cout, cin // g, k, k, generator=gen) / math.sqrt(cin * k * k)).to(dt)
        off["weight2"] = arena.put(weight2)
    y_bytes = n * ho * wo * ((cout + (v := VECTOR[case["xl"]]) - 1) // v * v) * x.element_size()
    off["y"] = arena.reserve(y_bytes, shift)
    off["ws"] = arena.reserve(0)
    rec = record(recorder, op="conv", cc=CC, type=case["type"], mtype=case["mtype"], xl=case["xl"], ml=case["ml"],
                 N=n, C=cin, H=h, W=w, Cout=cout, kh=k, kw=k, sh=case["s"], sw=case["s"], pt=pt, pl=pl, pb=pb, pr=pr,
                 dh=case["d"], dw=case["d"], groups=g, dg=max(case["dg"], 1), act=case["act"],
                 tactic=case["tactic"], runs=2, capture=case.get("capture"), **off)
    assert rec["result"] == 0, rec["error"]
    arena.materialize(rec["workspace"] + rec["device_bytes"])
    ref = sparse_sample_conv_reference(
        x.double(), mask.double(), weight.double(), None if bias is None else bias.double(),
        None if offset is None else offset.double(), [case["s"]] * 2, [pt, pl, pb, pr], [case["d"]] * 2, g,
        max(case["dg"], 1), "relu" if case["act"] else "none")
    pack = "copy4d_b32" if dt == torch.float32 else "copy4d_b16"
    for run, want_weight in zip(rec["runs"], (weight, weight if weight2 is None else weight2), strict=True):
        launches = replay(run["ops"], arena, recorder["kernels"])
        # the weights are packed by the first enqueue only (a capture, or another W, packs again)
        packed = run is rec["runs"][0] or case.get("capture") or weight2 is not None
        assert [op["spec"] for op in launches] == [pack] * bool(packed) + [
            f"mask_partition_{case['mtype']}_gt0", case["build"]]
        # the tactic asked for; the any builds have one tile config, which every tactic falls back to
        assert launches[-1]["tactic"] == (1 if "any" in case["build"] else (case["tactic"] or 1))
        if want_weight is not weight:
            ref = sparse_sample_conv_reference(
                x.double(), mask.double(), want_weight.double(), None if bias is None else bias.double(),
                None if offset is None else offset.double(), [case["s"]] * 2, [pt, pl, pb, pr], [case["d"]] * 2, g,
                max(case["dg"], 1), "relu" if case["act"] else "none")
        got, pad = from_layout(arena.view(off["y"], dt), (n, cout, ho, wo), case["xl"])
        assert torch.isfinite(got.float()).all(), "an output element was never written"
        assert bool((got[(mask == 0).expand_as(got)] == 0).all()), "outputs where M == 0 must be exactly 0"
        scale = max(ref.abs().max().item(), 1e-30)
        err = (got.double() - ref).abs().max().item() / scale
        assert err <= 2 * EPS[dt], f"max error {err:.3g} of the largest output"
        if pad is not None:
            assert bool((pad == 0).all()), "the padding channels of a vectorised output must be 0"
        arena.buf[off["y"]:off["y"] + y_bytes] = 0xFF  # the next enqueue must write every output again


def test_conv_launch_refuses_a_short_workspace_and_unknown_tactics(recorder):
    base = dict(op="conv", cc=CC, type="fp16", mtype="fp16", xl="NHWC8", ml="NCHW", N=1, C=16, H=4, W=4, Cout=16,
                kh=3, kw=3, sh=1, sw=1, pt=1, pl=1, pb=1, pr=1, dh=1, dw=1, groups=1, dg=1, act=1, x=0, mask=4096,
                weight=8192, bias=-1, offset=-1, y=16384, ws=-1)
    rec = record(recorder, **base, tactic=0)
    assert rec["result"] != 0 and "workspace" in rec["error"] and rec["ops"] == []
    rec = record(recorder, **{**base, "ws": 32768}, tactic=9)
    assert rec["result"] != 0 and "unknown tactic 9" in rec["error"] and rec["ops"] == []


def test_launch_on_an_arch_without_images_names_the_kernel(recorder):
    rec = record(recorder, op="conv", cc=70, type="fp16", mtype="fp16", xl="NHWC8", ml="NCHW", N=1, C=16, H=4, W=4,
                 Cout=16, kh=3, kw=3, sh=1, sw=1, pt=1, pl=1, pb=1, pr=1, dh=1, dw=1, groups=1, dg=1, act=1, x=0,
                 mask=4096, weight=8192, bias=-1, offset=-1, y=16384, ws=32768, tactic=0)
    assert rec["result"] != 0
    assert "no mask_partition_fp16_gt0 kernel for sm_70" in rec["error"]


# ---- Interpolate --------------------------------------------------------------------------------

INTERP = [
    dict(type="fp16", mtype="fp32", xl="NHWC8", ml="NCHW", n=2, c=16, h=7, w=9, k=7, sigma=1.3,
         build="interpolate_fp16_mfp32"),
    dict(type="bf16", mtype="bf16", xl="NHWC8", ml="NHWC8", n=1, c=12, h=6, w=5, k=5, sigma=0.9,
         build="interpolate_bf16_mbf16_any"),
    dict(type="fp32", mtype="fp32", xl="NCHW", ml="NCHW", n=1, c=5, h=8, w=7, k=3, sigma=1.0,
         build="interpolate_fp32_mfp32_any"),
    dict(type="fp16", mtype="fp16", xl="NHWC16", ml="NCHW", n=1, c=32, h=5, w=6, k=9, sigma=2.0,
         build="interpolate_fp16_mfp16"),
    dict(type="fp16", mtype="fp32", xl="NHWC8", ml="NCHW", n=1, c=16, h=6, w=5, k=5, sigma=1.1, shift=2,
         build="interpolate_fp16_mfp32_any"),
]


@pytest.mark.parametrize("case", INTERP, ids=[c["build"] + "-" + c["xl"] for c in INTERP])
def test_interpolate_launch_replayed_matches_the_reference(recorder, case):
    dt = DTYPES[case["type"]]
    gen = torch.Generator().manual_seed(5)
    n, c, h, w = case["n"], case["c"], case["h"], case["w"]
    feature = torch.randn(n, c, h, w, generator=gen).to(dt)
    mask = _soft_mask((n, 1, h, w), gen).to(DTYPES[case["mtype"]])
    arena = Arena()
    shift = case.get("shift", 0)
    off = {"x": arena.put(to_layout(feature, case["xl"]), shift), "mask": arena.put(to_layout(mask, case["ml"]))}
    v = VECTOR[case["xl"]]
    off["y"] = arena.reserve(n * h * w * ((c + v - 1) // v * v) * feature.element_size(), shift)
    off["ws"] = arena.reserve(0)
    rec = record(recorder, op="interp", cc=CC, type=case["type"], mtype=case["mtype"], xl=case["xl"], ml=case["ml"],
                 N=n, C=c, H=h, W=w, k=case["k"], sigma=case["sigma"], eps=1e-5, tactic=0, runs=2, **off)
    assert rec["result"] == 0, rec["error"]
    arena.materialize(rec["workspace"] + rec["device_bytes"])
    ref = interpolate_reference(feature.double(), mask.double(), case["sigma"], case["k"], 1e-5)
    y_bytes = n * h * w * ((c + v - 1) // v * v) * feature.element_size()
    for run in rec["runs"]:
        launches = replay(run["ops"], arena, recorder["kernels"])
        assert [op["spec"] for op in launches] == [f"mask_partition_{case['mtype']}_lt1", case["build"]]
        got, pad = from_layout(arena.view(off["y"], dt), (n, c, h, w), case["xl"])
        assert torch.isfinite(got.float()).all(), "an output element was never written"
        scale = max(ref.abs().max().item(), 1e-30)
        err = (got.double() - ref).abs().max().item() / scale
        assert err <= 2 * EPS[dt], f"max error {err:.3g} of the largest output"
        if pad is not None:
            assert bool((pad == 0).all()), "the padding channels of a vectorised output must be 0"
        arena.buf[off["y"]:off["y"] + y_bytes] = 0xFF  # the next enqueue must write every output again


# ---- the work of one enqueue --------------------------------------------------------------------


def _conv_args(case: dict) -> dict:
    """The recorder's arguments for a conv case at fixed arena offsets (for the counts: no replay)."""
    n, cin, cout, h, w, k, g = (case[key] for key in ("n", "cin", "cout", "h", "w", "k", "g"))
    pt, pl, pb, pr = case["pads"]
    shift = case.get("shift", 0)
    return dict(op="conv", cc=CC, type=case["type"], mtype=case["mtype"], xl=case["xl"], ml=case["ml"], N=n, C=cin,
                H=h, W=w, Cout=cout, kh=k, kw=k, sh=case["s"], sw=case["s"], pt=pt, pl=pl, pb=pb, pr=pr,
                dh=case["d"], dw=case["d"], groups=g, dg=max(case["dg"], 1), act=case["act"], tactic=case["tactic"],
                x=shift, mask=1 << 20, weight=2 << 20, bias=(3 << 20) if case["bias"] else -1,
                offset=(4 << 20) if case["dg"] else -1, y=(5 << 20) + shift, ws=6 << 20)


def _padded(c: int, layout: str) -> bool:
    return c % VECTOR[layout] != 0


# what docs/design.md section 6 and the launch headers promise, per enqueue after the first
STEADY = {"launches": 2, "syncs": 0, "mallocs": 0, "device_allocs": 0, "image_scans": 0, "module_lookups": 0,
          "driver_lookups": 0, "prepares": 0, "packs": 0}


@pytest.mark.parametrize("case", [c for c in CONV if not c.get("capture") and not c.get("weight2")],
                         ids=[c["build"] + "-" + c["xl"] for c in CONV if not c.get("capture") and not c.get("weight2")])
def test_conv_enqueue_work(recorder, case):
    rec = record(recorder, **_conv_args(case), runs=3)
    assert rec["result"] == 0, rec["error"]
    first, *later = rec["runs"]
    # the first enqueue chooses and resolves the builds, allocates and packs the weights once and waits
    assert first["prepares"] == 1 and first["packs"] == 1 and first["device_allocs"] == 1 and first["syncs"] == 1
    assert first["launches"] == 3  # copy4d, mask_partition, the conv
    pad = _padded(case["cout"], case["xl"])
    for run in later:
        # memset of the counts + mask_partition + the conv (+ the padding channels' fill): nothing else,
        # and no host work beyond filling the arguments
        assert {k: run[k] for k in STEADY} == STEADY, run
        assert run["memsets"] == 1 + pad
        assert len(run["ops"]) == 3 + pad


@pytest.mark.parametrize("case", INTERP, ids=[c["build"] + "-" + c["xl"] for c in INTERP])
def test_interpolate_enqueue_work(recorder, case):
    rec = record(recorder, op="interp", cc=CC, type=case["type"], mtype=case["mtype"], xl=case["xl"], ml=case["ml"],
                 N=case["n"], C=case["c"], H=case["h"], W=case["w"], k=case["k"], sigma=case["sigma"], eps=1e-5,
                 tactic=0, runs=3, x=case.get("shift", 0), mask=1 << 20, y=(2 << 20) + case.get("shift", 0),
                 ws=3 << 20)
    assert rec["result"] == 0, rec["error"]
    first, *later = rec["runs"]
    assert first["prepares"] == 1 and first["device_allocs"] == 0 and first["syncs"] == 0
    pad = _padded(case["c"], case["xl"])
    for run in later:
        assert {k: run[k] for k in STEADY} == STEADY, run
        assert run["memsets"] == 1 + pad and len(run["ops"]) == 3 + pad


def test_conv_pack_every_launch_mode(recorder):
    # packEveryLaunch (a W that may change between enqueues): packed into the workspace every time,
    # no device allocation, no wait, still no host allocation or build choice after the first
    rec = record(recorder, **_conv_args(CONV[0]), every=1, runs=3)
    assert rec["result"] == 0, rec["error"]
    assert [r["packs"] for r in rec["runs"]] == [1, 1, 1] and rec["device_bytes"] == 0
    assert [r["syncs"] for r in rec["runs"]] == [0, 0, 0]
    for run in rec["runs"][1:]:
        assert run["launches"] == 3 and run["mallocs"] == 0 and run["prepares"] == 0 and run["image_scans"] == 0


def test_a_shape_change_refills_the_arguments_only(recorder):
    # dynamic shapes: another batch in the next enqueue keeps the builds and the packed weights; the
    # grids and sizes follow the new shape, with no string work, lookup or allocation
    rec = record(recorder, **_conv_args(CONV[0]), runs=3, N2=5)
    assert rec["result"] == 0, rec["error"]
    second = rec["runs"][1]
    assert {k: second[k] for k in STEADY} == STEADY, second
    from sai.kernels import aot

    for op in second["ops"][1:]:  # the partition and the conv: P and the grid of the new batch
        meta = json.loads((recorder["kernels"] / f"sm_{op['cc']}" / f"{aot.image_stem(op['spec'], op['tactic'])}.json")
                          .read_text())
        rows = meta["constexprs"].get("BM", meta["constexprs"].get("BLOCK"))
        assert op["args"]["P"] == 5 * 7 * 9 and op["grid"][0] == -(-5 * 7 * 9 // rows), op
    case = INTERP[0]
    rec = record(recorder, op="interp", cc=CC, type=case["type"], mtype=case["mtype"], xl=case["xl"], ml=case["ml"],
                 N=case["n"], C=case["c"], H=case["h"], W=case["w"], k=case["k"], sigma=case["sigma"], eps=1e-5,
                 tactic=0, runs=2, N2=3, x=0, mask=1 << 20, y=2 << 20, ws=3 << 20)
    assert rec["result"] == 0, rec["error"]
    second = rec["runs"][1]
    assert {k: second[k] for k in STEADY} == STEADY, second
    assert second["ops"][-1]["args"]["P"] == 3 * case["h"] * case["w"]


def test_generated_typed_launches_refuse_what_the_build_cannot_take(recorder):
    # the pack functions aot.py generates for the real images (the plugins' only way to launch)
    proc = subprocess.run([str(recorder["exe"]), "op=typed", f"cc={CC}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout)
    ok = {"valid", "kh_any", "x_misaligned_any"}  # the any build takes any kernel size and alignment
    assert {k for k, v in got.items() if v["result"] == 0} == ok, got
    expect = {"relu_mismatch": "RELU is compiled in as 1, called with 0",
              "kh_mismatch": "KH is compiled in as 3, called with 1",
              "x_misaligned": "x_ptr is not 16-byte aligned, which this build assumes",
              "cin_not_16": "CIN_G = 24 is not a multiple of 16, which this build assumes",
              "p_overflow": f"P = {1 << 40} does not fit in int32",
              "y_unset": "y_ptr was not set", "deform_unset": "DEFORM was not set",
              "other_family": "the arguments are not of this kernel's family"}
    for name, text in expect.items():
        assert text in got[name]["error"] and got[name]["error"].startswith("sparse_conv_fp16_k3_relu"), got[name]


@pytest.mark.parametrize("share", [0, 1])
def test_execution_contexts_share_the_packed_weights(recorder, share):
    # the instances of one engine's execution contexts (attachToContext) share one packed copy per W:
    # only the first packs, allocates and waits; unshared runners (build phase) pack their own
    rec = record(recorder, **_conv_args(CONV[0]), runs=2, share=share, clones=2)
    assert rec["result"] == 0, rec["error"]
    first, second, *clones = rec["runs"]
    assert first["packs"] == 1 and first["device_allocs"] == 1 and second["packs"] == 0
    for clone in clones:
        assert clone["prepares"] == 1  # its own build choice and resolution
        assert (clone["packs"], clone["device_allocs"], clone["syncs"]) == ((0, 0, 0) if share else (1, 1, 1)), clone
        assert [op.get("spec") for op in clone["ops"] if op["op"] == "launch"][-1] == CONV[0]["build"]
        conv = clone["ops"][-1]
        assert conv["args"]["w_ptr"] == (first["ops"][0]["dst"] if share else clone["ops"][0]["dst"])
