"""sai.kernels (the Triton GPU kernels) on the CPU under the Triton interpreter, against the reference.

The oracle is the PyTorch reference of sai.models.ops (docs/design.md 3.2 / 3.3) evaluated in float64 on
the inputs rounded to the kernel's dtype, so the tolerance only has to cover the kernel's own
roundings: fp32 (ieee) within 1e-5 relative, fp16/bf16 within a couple of their epsilons of the
largest output. Shapes are small (the interpreter's cost is per program) but cross every tile edge:
channel counts that are not multiples of the 16-wide tiles, more positions than one 64-row tile,
batch > 1, odd sizes. TRITON_INTERPRET is set only while these tests run (sai.kernels reads it at
launch, not at import).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
# triton 3.6's interpreter converts 1-element arrays to ints in loop bounds (numpy 1.25+ warns)
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

from sai.errors import SaiError  # noqa: E402
from sai.models.ops import (  # noqa: E402
    conv_output_size,
    interpolate_reference,
    normalize_pads,
    sparse_sample_conv_reference,
)


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


K = pytest.importorskip("sai.kernels")

EPS = {torch.float32: 1e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}


def _mask(shape, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "empty":
        return torch.zeros(shape)
    if kind == "full":
        return torch.ones(shape)
    if kind == "binary":
        return (torch.rand(shape, generator=gen) > 0.5).float()
    # soft: zeros, ones and values in (0, 1), as an inference mask has (s * (s >= 0.5)) and more
    r = torch.rand(shape, generator=gen)
    return torch.where(r < 0.4, 0.0, torch.where(r > 0.8, 1.0, r))


def _close(got: torch.Tensor, ref: torch.Tensor, dtype, factor: float = 1.0):
    scale = max(ref.abs().max().item(), 1e-30)
    err = (got.double() - ref).abs().max().item() / scale
    assert err <= EPS[dtype] * factor, f"max error {err:.3g} of the largest output, allowed {EPS[dtype] * factor:.3g}"


# ----------------------------------------------------------------------------------------------
# SparseSampleConv
# ----------------------------------------------------------------------------------------------

CONV_CASES = [
    # n, cin, cout, h, w, k, stride, pads, dilation, groups, mask, activation, bias
    dict(n=2, cin=20, cout=24, h=9, w=11, k=3, stride=1, pads=1, dil=1, groups=1, mask="soft", act="relu"),
    dict(n=1, cin=17, cout=33, h=8, w=10, k=1, stride=2, pads=0, dil=1, groups=1, mask="binary", act="none"),
    dict(n=1, cin=8, cout=12, h=11, w=9, k=5, stride=2, pads=(2, 1, 0, 3), dil=2, groups=4, mask="soft", act="relu"),
    dict(n=2, cin=5, cout=7, h=7, w=8, k=7, stride=1, pads=3, dil=1, groups=1, mask="binary", act="none", bias=False),
    dict(n=1, cin=6, cout=9, h=10, w=12, k=3, stride=(1, 2), pads=(0, 2), dil=(2, 1), groups=3, mask="soft", act="relu"),
    dict(n=2, cin=16, cout=16, h=6, w=7, k=3, stride=1, pads=1, dil=1, groups=16, mask="binary", act="none"),
    dict(n=1, cin=12, cout=20, h=9, w=9, k=3, stride=1, pads=1, dil=1, groups=1, mask="empty", act="relu"),
    dict(n=1, cin=12, cout=20, h=9, w=9, k=3, stride=1, pads=1, dil=1, groups=1, mask="full", act="none"),
]


def _conv_inputs(case, dtype, deform_groups=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, cin, cout, h, w, k = (case[key] for key in ("n", "cin", "cout", "h", "w", "k"))
    pads = normalize_pads(case["pads"])
    stride = [case["stride"]] * 2 if isinstance(case["stride"], int) else list(case["stride"])
    dil = [case["dil"]] * 2 if isinstance(case["dil"], int) else list(case["dil"])
    ho = conv_output_size(h, k, stride[0], pads[0], pads[2], dil[0])
    wo = conv_output_size(w, k, stride[1], pads[1], pads[3], dil[1])
    x = torch.randn(n, cin, h, w, generator=gen).to(dtype)
    weight = (torch.randn(cout, cin // case["groups"], k, k, generator=gen) / math.sqrt(cin * k * k)).to(dtype)
    bias = torch.randn(cout, generator=gen).to(dtype) if case.get("bias", True) else None
    mask = _mask((n, 1, ho, wo), case["mask"], gen)
    offset = None
    if deform_groups:
        offset = (2.5 * torch.randn(n, 2 * deform_groups * k * k, ho, wo, generator=gen)).to(dtype)
    return x, mask, weight, bias, offset, stride, pads, dil


def _conv_check(case, dtype, deform_groups=0, memory_format=torch.channels_last, factor=1.0):
    x, mask, weight, bias, offset, stride, pads, dil = _conv_inputs(case, dtype, deform_groups)
    ref = sparse_sample_conv_reference(
        x.double(), mask.double(), weight.double(), None if bias is None else bias.double(),
        None if offset is None else offset.double(), stride, pads, dil, case["groups"],
        max(deform_groups, 1), case["act"])
    got = K.sparse_sample_conv(x.contiguous(memory_format=memory_format), mask, weight, bias, stride, pads, dil,
                               case["groups"], case["act"], offset, max(deform_groups, 1))
    assert got.shape == ref.shape and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert bool((got[(mask == 0).expand_as(got)] == 0).all()), "outputs where M == 0 must be exactly 0"
    _close(got, ref, dtype, factor)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c['k']}s{c['stride']}g{c['groups']}{c['mask']}")
def test_conv_fp32_matches_reference(case):
    _conv_check(case, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2]], ids=["k3", "k5g4"])
def test_conv_half_matches_reference(case, dtype):
    _conv_check(case, dtype)


@pytest.mark.parametrize(
    "case,dg",
    [
        (dict(n=2, cin=6, cout=10, h=7, w=6, k=3, stride=1, pads=1, dil=1, groups=1, mask="soft", act="relu"), 1),
        (dict(n=1, cin=8, cout=6, h=8, w=7, k=3, stride=2, pads=(1, 0, 2, 1), dil=2, groups=2, mask="binary",
              act="none"), 4),
    ],
    ids=["dg1", "dg4g2"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_deformable_conv_matches_reference(case, dg, dtype):
    # the bilinear sample is rounded to the input dtype before the tensor-core product
    _conv_check(case, dtype, deform_groups=dg, factor=2.0)


def test_conv_any_memory_format_and_views():
    case = CONV_CASES[0]
    _conv_check(case, torch.float32, memory_format=torch.contiguous_format)
    x, mask, weight, bias, _, stride, pads, dil = _conv_inputs(case, torch.float32)
    wide = torch.randn(x.shape[0], x.shape[1] + 3, x.shape[2], x.shape[3] + 2)
    wide[:, 1:-2, :, 1:-1] = x
    view = wide[:, 1:-2, :, 1:-1]  # a strided view, neither NCHW- nor NHWC-contiguous
    ref = sparse_sample_conv_reference(x, mask, weight, bias, None, stride, pads, dil, 1, 1, "relu")
    got = K.sparse_sample_conv(view, mask.transpose(2, 3).contiguous().transpose(2, 3), weight, bias, stride,
                               pads, dil, 1, "relu")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_conv_nan_outside_the_mask_never_reaches_the_output():
    # positions where M == 0 are never computed, so a NaN produced there upstream stays out
    case = dict(n=1, cin=8, cout=8, h=6, w=6, k=1, stride=1, pads=0, dil=1, groups=1, mask="binary", act="none")
    x, mask, weight, bias, _, stride, pads, dil = _conv_inputs(case, torch.float32)
    x = torch.where(mask.bool(), x, float("nan"))
    got = K.sparse_sample_conv(x, mask, weight, bias, stride, pads, dil)
    assert not got.isnan().any()


def test_conv_rejects_bad_input():
    case = CONV_CASES[0]
    x, mask, weight, bias, *_ = _conv_inputs(case, torch.float32)
    with pytest.raises(SaiError, match="weight is torch.float16"):
        K.sparse_sample_conv(x, mask, weight.half(), bias, padding=1)
    with pytest.raises(SaiError, match="mask must have shape"):
        K.sparse_sample_conv(x, mask[:, :, 1:], weight, bias, padding=1)
    with pytest.raises(SaiError, match="float32, float16 or bfloat16"):
        K.sparse_sample_conv(x.to(torch.int32), mask, weight.to(torch.int32), None, padding=1)
    with pytest.raises(SaiError, match="activation"):
        K.sparse_sample_conv(x, mask, weight, bias, padding=1, activation="gelu")
    with pytest.raises(SaiError, match="groups"):
        K.sparse_sample_conv(x, mask, weight, bias, padding=1, groups=3)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, mask, weight, bias, *_ = _conv_inputs(CONV_CASES[0], torch.float32)
    with pytest.raises(SaiError, match="TRITON_INTERPRET=1"):
        K.sparse_sample_conv(x, mask, weight, bias, padding=1)


def test_weights_are_packed_once():
    from sai.kernels.sparse_sample_conv import pack_weight

    weight = torch.randn(12, 3, 3, 3)
    first = pack_weight(weight, 2)
    assert pack_weight(weight, 2) is first
    assert first.shape == (2, 9, 3, 6)
    weight.add_(1.0)  # an in-place update bumps the version: repacked
    assert pack_weight(weight, 2) is not first


def test_packed_weights_die_with_their_weight():
    """A freed weight's address reused by a new tensor of the same shape must not hit the old packing
    (it returned stale packed weights): the cache entry goes with the tensor it was packed from."""
    import gc
    import importlib

    ssc = importlib.import_module("sai.kernels.sparse_sample_conv")  # the module (the package rebinds the name)

    weight = torch.randn(12, 3, 3, 3)
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype, weight.device, 2)
    ssc.pack_weight(weight, 2)
    assert key in ssc._packed
    del weight
    gc.collect()
    assert key not in ssc._packed
    other = torch.randn(12, 3, 3, 3)  # same shape: the allocator may hand out the same address
    ref = other.reshape(2, 6, 3, 9).permute(0, 3, 2, 1)
    torch.testing.assert_close(ssc.pack_weight(other, 2), ref, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# mask compaction
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gt0", "lt1"])
def test_partition_puts_active_positions_first(mode):
    from sai.kernels.compact import partition

    gen = torch.Generator().manual_seed(3)
    mask = _mask((3, 1, 23, 31), "soft", gen).contiguous(memory_format=torch.channels_last)  # > one block
    idx, count = partition(mask, mode)
    flat = mask.reshape(-1)  # flat position (n*H + y)*W + x whatever the memory format
    pred = flat > 0 if mode == "gt0" else flat < 1
    c = int(count[0])
    assert c == int(pred.sum()) and int(count[1]) == flat.numel() - c
    assert sorted(idx.tolist()) == list(range(flat.numel()))
    assert bool(pred[idx[:c].long()].all()) and not bool(pred[idx[c:].long()].any())


# ----------------------------------------------------------------------------------------------
# Interpolate
# ----------------------------------------------------------------------------------------------


def _interp_inputs(n, c, h, w, dtype, kind="soft", seed=1):
    gen = torch.Generator().manual_seed(seed)
    feature = torch.randn(n, c, h, w, generator=gen).to(dtype)
    mask = _mask((n, 1, h, w), kind, gen)
    return feature, mask


@pytest.mark.parametrize(
    "n,c,h,w,ks,sigma,dtype",
    [
        (2, 20, 9, 11, 3, 1.3, torch.float32),
        (1, 7, 6, 5, 7, 0.9, torch.float32),
        (1, 33, 4, 5, 1, 2.0, torch.float32),
        (2, 20, 9, 11, 3, 1.3, torch.float16),
        (1, 7, 6, 5, 7, 0.9, torch.bfloat16),
    ],
    ids=["k3", "k7", "k1", "k3fp16", "k7bf16"],
)
def test_interpolate_matches_reference(n, c, h, w, ks, sigma, dtype):
    feature, mask = _interp_inputs(n, c, h, w, dtype)
    ref = interpolate_reference(feature.double(), mask.double(), sigma, ks, 1e-5)
    # F where M == 0 must not matter: poison it
    poisoned = torch.where(mask.bool(), feature, torch.tensor(float("nan"), dtype=dtype))
    got = K.interpolate(poisoned, mask, sigma, ks, 1e-5)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    _close(got, ref, dtype)
    ones = mask == 1
    assert torch.equal(got[ones.expand_as(got)], feature[ones.expand_as(feature)]), "M == 1 copies F"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_interpolate_normaliser_is_fp32(dtype):
    # large sigma: the Gaussian weights of the outer taps underflow in fp16 (exp(-8*18) ~ 1e-63), and
    # an isolated sample makes den tiny; the output must stay finite and match the fp64 formula
    feature, _ = _interp_inputs(1, 5, 7, 7, dtype)
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 0, 0] = 1.0
    mask[0, 0, 6, 6] = 0.75
    ref = interpolate_reference(feature.double(), mask.double(), 4.0, 7, 1e-5)
    got = K.interpolate(feature, mask, 4.0, 7, 1e-5)
    assert torch.isfinite(got).all()
    _close(got, ref, dtype)


@pytest.mark.parametrize("kind", ["empty", "full"])
def test_interpolate_empty_and_full_masks(kind):
    feature, mask = _interp_inputs(2, 18, 5, 6, torch.float32, kind)
    got = K.interpolate(feature, mask, 1.0, 3)
    want = torch.zeros_like(feature) if kind == "empty" else feature
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_interpolate_add_relu_is_the_bottleneck_tail(dtype):
    n, c, h, w = 2, 19, 7, 9
    feature, mask = _interp_inputs(n, c, h, w, dtype, seed=5)
    gen = torch.Generator().manual_seed(6)
    bias = torch.randn(c, generator=gen)
    identity = torch.randn(n, c, h, w, generator=gen).to(dtype)
    ref = torch.relu(interpolate_reference(feature.double(), mask.double(), 1.1, 3, 1e-5)
                     + bias.double()[None, :, None, None] + identity.double())
    got = K.interpolate_add_relu(feature, mask, 1.1, bias, identity, 3)
    _close(got, ref, dtype)


def test_interpolate_rejects_bad_input():
    feature, mask = _interp_inputs(1, 4, 5, 5, torch.float32)
    with pytest.raises(SaiError, match="odd"):
        K.interpolate(feature, mask, 1.0, 4)
    with pytest.raises(SaiError, match="must match feature"):
        K.interpolate(feature, mask[:, :, 1:], 1.0, 3)
    with pytest.raises(SaiError, match="identity"):
        K.interpolate_add_relu(feature, mask, 1.0, None, feature[:, :2], 3)


# ----------------------------------------------------------------------------------------------
# ahead-of-time build: tensor cores in the PTX (a silent fall back to FMA fails here)
# ----------------------------------------------------------------------------------------------


def test_aot_conv_uses_tensor_cores(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "sai.kernels.aot", "--out", str(tmp_path), "--arch", "80,90",
         "--specs", "sparse_conv_fp16_k3", "--jobs", "1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ptx80 = (tmp_path / "sm_80" / "sparse_conv_fp16_k3.ptx").read_text()
    ptx90 = (tmp_path / "sm_90" / "sparse_conv_fp16_k3.ptx").read_text()
    assert "mma.sync" in ptx80 and "ldmatrix" in ptx80, "sm_80 conv fell back to FMA"
    assert "wgmma.mma_async" in ptx90, "sm_90 conv has no wgmma"
    meta = json.loads((tmp_path / "sm_80" / "sparse_conv_fp16_k3.json").read_text())
    entry = ptx80[ptx80.index(".entry " + meta["entry"]):]
    entry = entry[: entry.index(")")]
    # the compiled entry takes the user parameters plus the two hidden scratch pointers
    assert entry.count("_param_") == len(meta["params"]) + 2
    assert meta["global_scratch_size"] == 0 and meta["profile_scratch_size"] == 0
    cpp = (tmp_path / "sai_kernels_embedded.cpp").read_text()
    assert '"sparse_conv_fp16_k3", 80, 1,' in cpp and '"sparse_conv_fp16_k3", 90, 2,' in cpp  # spec, arch, tactic
    # the object embeds the cubins (.incbin) and the manifest sai doctor reads from a library's bytes
    from sai.kernels import aot
    from sai.runtime.environment import describe_kernels, kernels_manifest

    aot.compile_cpp(tmp_path)
    data = (tmp_path / "sai_kernels_embedded.o").read_bytes()
    assert (tmp_path / "sm_90" / "sparse_conv_fp16_k3__t2.cubin").read_bytes() in data
    manifest = kernels_manifest(data)
    # every tile class of the run-time chooser (configs.CONV_TACTICS) is a tactic of the fast build
    assert manifest["specs"] == {"sparse_conv_fp16_k3": {"archs": [80, 90], "tactics": [1, 2, 3, 4, 5]}}
    assert describe_kernels(manifest) == "Triton 3.6.0 kernels: 1 builds for sm_80, sm_90, tactics 1, 2, 3, 4, 5"
    t5 = json.loads((tmp_path / "sm_90" / "sparse_conv_fp16_k3__t5.json").read_text())["constexprs"]
    assert (t5["BM"], t5["BN"]) == (128, 256)  # the wide tile (configs/sm_90.json's tile128x256)


# ----------------------------------------------------------------------------------------------
# PyTorch on CUDA: the kernels behind torch.ops.sai.* (registration; the GPU itself is not here)
# ----------------------------------------------------------------------------------------------


def test_cuda_implementation_of_the_custom_ops_is_registered():
    from sai.kernels import torch_ops

    assert torch_ops.register()
    for op in ("sai::sparse_sample_conv", "sai::interpolate"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


def test_cuda_implementations_run_the_kernels():
    # the registered functions themselves, on CPU tensors under the interpreter
    from sai.kernels import torch_ops

    case = CONV_CASES[0]
    x, mask, weight, bias, _, stride, pads, dil = _conv_inputs(case, torch.float16)
    got = torch_ops.sparse_sample_conv_cuda(x, mask, weight, bias, None, stride, pads, dil, 1, 1, "relu")
    assert got.is_contiguous(memory_format=torch.channels_last)  # the kernel's layout, not the reference's
    ref = sparse_sample_conv_reference(x.double(), mask.double(), weight.double(), bias.double(), None,
                                       stride, pads, dil, 1, 1, "relu")
    _close(got, ref, torch.float16)
    feature, fmask = _interp_inputs(1, 6, 5, 5, torch.float64)  # float64: the reference serves it
    fmask = fmask.double()
    torch.testing.assert_close(torch_ops.interpolate_cuda(feature, fmask, 1.0, 3, 1e-5),
                               interpolate_reference(feature, fmask, 1.0, 3, 1e-5))


# ----------------------------------------------------------------------------------------------
# make gpu-check: the prepared GPU run, end to end under the interpreter at tiny sizes
# ----------------------------------------------------------------------------------------------


# a bare GPU machine: python, torch, triton, numpy; importing anything else fails (child processes too)
_BARE_SITECUSTOMIZE = """
import importlib.machinery as _m

_orig = _m.PathFinder.find_spec.__func__


def _find_spec(cls, name, path=None, target=None):
    if name.split(".")[0] in ("onnx", "onnxscript", "onnxruntime", "polygraphy", "tensorrt"):
        return None  # as where it is not installed: find_spec gives None, import ModuleNotFoundError
    return _orig(cls, name, path, target)


_m.PathFinder.find_spec = classmethod(_find_spec)
"""


def test_gpu_check_runs_end_to_end_under_the_interpreter(tmp_path):
    """make gpu-check as a bare GPU machine runs it: the file from the checkout (no install there) and no
    onnx, onnxscript, onnxruntime, polygraphy or tensorrt importable (issue 24 item 5)."""
    import json
    import os
    import subprocess
    import sys

    from sai.kernels import configs

    before = sorted(p.name for p in configs.HERE.glob("*.json"))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sitecustomize.py").write_text(_BARE_SITECUSTOMIZE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(bare), *filter(None, [os.environ.get("PYTHONPATH")])]))
    probe = subprocess.run([sys.executable, "-c", "import onnx"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'onnx'" in probe.stderr  # the blocker works
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), "--out", str(out), "--tiny"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    sections = report["sections"]
    assert set(sections) == {"env", "parity", "plugin_kernels", "ops", "block", "model", "fused", "engine",
                             "autotune"}
    assert not [name for name, s in sections.items() if "error" in s]
    assert all("No module named" in v for v in sections["env"]["optional_packages"].values())
    assert "skipped" in sections["fused"]  # no GPU here (or no fused GPU block): said, not an error
    assert sections["parity"]["failed"] == 0 and sections["parity"]["passed"] >= 5
    assert "skipped" in sections["ops"]
    # the plugins' launch code built and loaded; without a GPU a launch fails cleanly, naming the cause
    assert "no CUDA driver" in sections["plugin_kernels"]["launch_without_gpu"]
    assert "no TensorRT here" in sections["engine"]["skipped"]  # and the run went on
    assert sections["block"]["rows"][0]["fast_tail_rel_err"] < 1e-5  # docs/design.md 3.4 fast form == fused block
    assert all(row["finite"] for row in sections["model"]["rows"])
    tuned = json.loads((out / "configs" / "interpreter.json").read_text())
    # autotune: one winner per size of each kernel size, the smaller sizes bounded by P (N*Ho*Wo)
    conv = tuned["sparse_sample_conv"]
    assert conv[0]["match"]["k"] == 3 and "P_max" in conv[0]["match"] and "P_max" not in conv[1]["match"]
    assert conv[1]["match"]["k"] == 3 and conv[2]["match"]["k"] == 1 and tuned["interpolate"]
    assert sorted(p.name for p in configs.HERE.glob("*.json")) == before  # the package table is untouched


def test_public_signatures_are_those_of_the_reference_ops():
    import inspect

    from sai.models import ops

    for name in ("sparse_sample_conv", "interpolate"):
        ours = inspect.signature(getattr(K, name))
        ref = inspect.signature(getattr(ops, name))
        assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == \
               [(p.name, p.default, p.kind) for p in ref.parameters.values()], name


def test_cpp_launcher_with_a_fake_driver(tmp_path):
    """The driver-API launcher against fake cu* functions: image choice per arch, per-context cache,
    shared-memory opt-in, parameters with the two hidden scratch pointers (no GPU, no libcuda)."""
    import shutil
    import subprocess

    from sai.kernels import aot

    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    launcher = aot.LAUNCHER_DIR
    exe = tmp_path / "launcher_test"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{aot.cuda_include_dir()}",
                    f"-I{launcher}", str(launcher / "sai_kernel_launcher.cpp"),
                    str(launcher / "test" / "launcher_test.cpp"), "-o", str(exe)], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "launcher_test: OK" in proc.stdout, proc.stdout + proc.stderr


def test_fake_kernels_state_the_strides_the_implementations_return(monkeypatch):
    """torch.compile plans with the fake kernels' strides: they must be the real outputs' strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sai.kernels import torch_ops

    monkeypatch.setitem(torch_ops._state, "registered", True)  # as on a GPU machine
    cl, cont = torch.channels_last, torch.contiguous_format
    with FakeTensorMode():
        for dt, want in ((torch.float16, cl), (torch.bfloat16, cl), (torch.float32, cl), (torch.float64, cont)):
            x = torch.empty(1, 8, 6, 6, device="cuda", dtype=dt)
            m = torch.empty(1, 1, 6, 6, device="cuda", dtype=dt)
            w = torch.empty(8, 8, 3, 3, device="cuda", dtype=dt)
            y = torch.ops.sai.sparse_sample_conv(x, m, w, None, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, 1, "relu")
            assert y.is_contiguous(memory_format=want), dt
            assert torch.ops.sai.interpolate(x, m, 1.0, 3, 1e-5).is_contiguous(memory_format=want), dt
        x = torch.empty(1, 8, 6, 6, device="cpu")
        y = torch.ops.sai.sparse_sample_conv(x, x[:, :1], torch.empty(8, 8, 3, 3), None, None, [1, 1], [1, 1, 1, 1],
                                             [1, 1], 1, 1, "relu")
        assert y.is_contiguous()  # the CPU kernels and every reference fallback: contiguous NCHW

    # the CUDA implementations (run here on CPU tensors under the interpreter) return exactly that,
    # whatever the input's memory format: channels_last from the kernels, NCHW from the fallback
    x, mask, weight, bias, _, stride, pads, dil = _conv_inputs(CONV_CASES[0], torch.float16)
    x = x.contiguous()
    assert torch_ops.sparse_sample_conv_cuda(x, mask.half(), weight, bias, None, stride, pads, dil, 1, 1,
                                             "relu").is_contiguous(memory_format=cl)
    xd = x.double().contiguous(memory_format=cl)
    got = torch_ops.sparse_sample_conv_cuda(xd, mask.double(), weight.double(), bias.double(), None, stride, pads,
                                            dil, 1, 1, "relu")
    assert got.is_contiguous()
    feature, fmask = _interp_inputs(1, 6, 5, 5, torch.float16)
    assert torch_ops.interpolate_cuda(feature, fmask, 1.0, 3, 1e-5).is_contiguous(memory_format=cl)
    fd = feature.double().contiguous(memory_format=cl)
    assert torch_ops.interpolate_cuda(fd, fmask.double(), 1.0, 3, 1e-5).is_contiguous()



@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32-cpu-kernels", "fp16-reference"])
@pytest.mark.parametrize("mask_kind", ["soft", "binary"])  # soft: dense above the threshold; binary ~0.5
def test_cpu_ops_pass_torch_opcheck_with_channels_last_inputs(dtype, mask_kind):
    """torch's own check of a custom op (schema; fake kernel against the real one, strides included)
    on the CPU implementations, with channels_last inputs (the dense path used to keep that format)."""
    case = dict(CONV_CASES[0], mask=mask_kind)
    x, mask, weight, bias, _, stride, pads, dil = _conv_inputs(case, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.sai.sparse_sample_conv.default,
                          (x, mask.to(dtype), weight, bias, None, stride, pads, dil, 1, 1, "relu"),
                          test_utils=("test_schema", "test_faketensor"))
    feature, fmask = _interp_inputs(1, 6, 5, 5, dtype, kind=mask_kind)
    torch.library.opcheck(torch.ops.sai.interpolate.default,
                          (feature.contiguous(memory_format=torch.channels_last), fmask.to(dtype), 1.0, 3, 1e-5),
                          test_utils=("test_schema", "test_faketensor"))
