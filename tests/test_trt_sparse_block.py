"""The SparseBlock TensorRT plugin (trt_plugins/sparseBlock/) and the tensorrt target's SparseBlock nodes.

- The glue, driven through the plugin interfaces on the CPU against TensorRT headers
  (``TRT_INCLUDE_DIR`` / ``TENSORRT_ROOT``, fetched, never committed; run once per major version):
  trt_plugins/tests/sparse_block_harness.cpp checks the creator's field checks (name, type, length,
  range, the node name in each message), serialization, output shapes, formats (NHWC only), the
  configure-time block checks and the workspace plan, built warning-free at -Wall -Wextra -Werror.
- The exporter: by default the tensorrt target writes one ``sai::SparseBlock`` node per fused sparse block
  the plugin takes and no per-op node for them (``trt_blocks="per-op"`` / ``SAI_TRT_SPARSE_BLOCK=0``: per-op
  nodes only; a block the plugin cannot take stays per-op, named in one log line); each node's initializers and attributes, run
  through the float64 formulas of docs/design.md 3.1-3.4 (written out here), give the PyTorch block's
  output; fp16 files keep the masks' inputs in fp32.

The plugin's enqueue (the launch sequence on the AOT cubins, recorded and replayed under the
interpreter): tests/test_trt_sparse_block_launch.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_trt_glue import tensorrt_include_dir

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "trt_plugins"
def test_glue_harness(tmp_path):
    inc = tensorrt_include_dir()
    if inc is None:
        pytest.skip("no TensorRT headers: set TENSORRT_ROOT or TRT_INCLUDE_DIR to build and test the plugin glue")
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    from test_trt_launch import _kernels_dir

    from sai.kernels import aot

    kdir = _kernels_dir(tmp_path)  # the launch code includes the generated typed launchers
    exe = tmp_path / "sparse_block_harness"
    srcs = [PLUGINS / "tests" / "sparse_block_harness.cpp", PLUGINS / "sparseBlock" / "sparseBlockPlugin.cpp",
            PLUGINS / "sparseBlock" / "sparseBlockLaunch.cpp", PLUGINS / "sparseBlock" / "sparseBlockRunner.cpp",
            PLUGINS / "common" / "saiPluginCommon.cpp",
            PLUGINS / "common" / "saiTritonLaunch.cpp", aot.LAUNCHER_DIR / "sai_kernel_launcher.cpp",
            kdir / "sai_kernels_embedded.cpp"]
    cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
           "-isystem", str(inc), "-isystem", str(aot.cuda_include_dir()), f"-I{PLUGINS / 'common'}",
           f"-I{ROOT / 'models' / 'csrc' / 'common'}",
           f"-I{PLUGINS / 'sparseBlock'}", f"-I{aot.LAUNCHER_DIR}", f"-I{kdir}", *map(str, srcs), "-o", str(exe),
           "-ldl"]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 0 and "FAIL" not in out, out[-4000:] + run.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed, 0 failed", out).group(1))
    assert passed >= 50, out


# ---- the exporter's SparseBlock nodes --------------------------------------------------------------


def _mask(x, w, b, stride, temperature, grid):
    """docs/design.md 3.1, deterministic inference: the hard mask with its soft value, the grid prior."""
    p = torch.sigmoid(F.conv2d(x, w, b, stride=stride, padding=1))
    z = torch.log(p + 1e-8) - torch.log(1 - p + 1e-8)
    s = torch.sigmoid(z / (temperature + 1e-8))
    if grid > 0:
        ys = torch.arange(s.shape[2]).view(-1, 1) % grid == 0
        xs = torch.arange(s.shape[3]).view(1, -1) % grid == 0
        s = torch.where(ys & xs, torch.ones_like(s), s)
    return torch.where(s >= 0.5, s, torch.zeros_like(s))


def _block_reference(x, t: dict, a: dict) -> torch.Tensor:
    """One SparseBlock node in float64 from its initializers ``t`` and attributes ``a`` (design.md 3.1-3.4)."""
    from sai.models.ops import interpolate_reference, sparse_sample_conv_reference

    def conv(inp, m, w, bias, stride, pad, act, offset=None):
        return sparse_sample_conv_reference(inp, m, w, bias, offset, [stride] * 2, [pad] * 4, [1, 1], 1, 1, act)

    def opt(name):
        v = t[name]
        return v if v.numel() else None

    s1, s2 = a["mask_strides"]
    m1 = _mask(x, t["MW"][0:1], t["MB"][0:1], s1, a["temperature"], a["grid_interval"])
    m2 = _mask(x, t["MW"][1:2], t["MB"][1:2], s2, a["temperature"], a["grid_interval"])
    k = a["kernel_size"]
    y = conv(x, m1, t["WA"], opt("BA"), a["stride_a"], t["WA"].shape[-1] // 2, "relu")
    y = interpolate_reference(y, m1, a["sigma1"], k, a["eps"])
    off = None
    if opt("WO") is not None:
        off = conv(x, m2, t["WO"], opt("BO"), a["offset_stride"], 1, "none")
    y = conv(y, m2, t["WB"], opt("BB"), a["stride_b"], 1, "relu" if a["relu_b"] else "none", off)
    if opt("WC") is not None:
        y = conv(y, m2, t["WC"], None, 1, 0, "none")
    y = interpolate_reference(y, m2, a["sigma2"], k, a["eps"])
    if opt("TAIL_BIAS") is not None:
        y = y + t["TAIL_BIAS"].view(1, -1, 1, 1)
    ident = x if opt("WD") is None else F.conv2d(x, t["WD"], opt("BD"), stride=a["down_stride"])
    return torch.relu(y + ident)


def _export(tmp_path, monkeypatch, arch, dcn, precision="fp32"):
    from sai.exporter.export import export_onnx, prepare_model

    monkeypatch.delenv("SAI_TRT_SPARSE_BLOCK", raising=False)  # the default
    model, _ = prepare_model(arch, base_width=16, dcn_stages=dcn, seed=3)  # 16-divisible channels
    path = tmp_path / f"{arch}_{precision}.onnx"
    export_onnx(model, path, input_shape=(2, 3, 64, 48), target="tensorrt", precision=precision)
    import onnx

    return model, onnx.load(str(path))


def _nodes(proto):
    import onnx

    from sai.exporter.trt_blocks import INPUTS

    inits = {t.name: t for t in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        if n.domain == "sai" and n.op_type == "SparseBlock":
            t = {INPUTS[i]: inits[name] for i, name in enumerate(n.input) if 0 < i < 13}
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            out.append((n, t, a))
    return out


def _run_blocks(model):
    """(input, output) of every fused sparse block of ``model`` in call order, on one input."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), out.detach())))
             for m in model.modules() if getattr(m, "fused", False) and getattr(m, "sparse", False)]
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)))
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("arch,dcn", [("sparse_resnet18", (0, 1, 0, 1)), ("sparse_resnet50", (0, 0, 1, 1))])
def test_tensorrt_target_writes_sparse_blocks(tmp_path, monkeypatch, arch, dcn):
    from onnx import numpy_helper

    model, proto = _export(tmp_path, monkeypatch, arch, dcn)
    ops = [n.op_type for n in proto.graph.node if n.domain == "sai"]
    blocks = _run_blocks(model)
    assert ops == ["SparseBlock"] * len(blocks), ops  # one node per block, no per-op node left
    nodes = _nodes(proto)
    deform = 0
    for (node, t, a), (x, y) in zip(nodes, blocks, strict=True):
        assert len(node.input) == 13 and a["plugin_namespace"] == b"sai" and a["plugin_version"] == b"1"
        tt = {k: torch.from_numpy(numpy_helper.to_array(v).copy()).double() for k, v in t.items()}
        deform += tt["WO"].numel() > 0
        ref = _block_reference(x.double(), tt, a)
        assert ref.shape == y.shape
        torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4, msg=node.name)
    assert deform == sum(1 for m in model.modules() if getattr(m, "sparse", False) and getattr(m, "with_dcn", False))
    assert deform > 0


def test_fp16_keeps_the_mask_inputs_fp32(tmp_path, monkeypatch):
    from onnx import TensorProto

    _, proto = _export(tmp_path, monkeypatch, "sparse_resnet18", (0, 0, 0, 1), precision="fp16")
    nodes = _nodes(proto)
    assert nodes
    for _, t, _ in nodes:
        assert t["MW"].data_type == TensorProto.FLOAT and t["MB"].data_type == TensorProto.FLOAT
        for name in ("WA", "BA", "WB", "BB", "WC", "TAIL_BIAS", "WD", "BD", "WO", "BO"):
            assert t[name].data_type == TensorProto.FLOAT16, name


@pytest.mark.parametrize("how", ["argument", "env"])
def test_per_op_opt_out_keeps_the_per_op_nodes(tmp_path, monkeypatch, how):
    """``trt_blocks="per-op"`` (sai export --trt-blocks per-op), or SAI_TRT_SPARSE_BLOCK=0 with no explicit
    choice: every block as SparseSampleConv / Interpolate nodes, at a width where every block would fuse."""
    import onnx

    from sai.exporter.export import export_onnx

    monkeypatch.setenv("SAI_TRT_SPARSE_BLOCK", "0" if how == "env" else "1")  # the argument wins over the env
    path = tmp_path / "r18.onnx"
    res = export_onnx("sparse_resnet18", path, input_shape=(1, 3, 64, 64), base_width=16, target="tensorrt",
                      trt_blocks="per-op" if how == "argument" else None)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "sai"]
    assert set(ops) == {"SparseSampleConv", "Interpolate"} and ops.count("Interpolate") == 2 * 8
    assert "SparseBlock" not in res.op_counts


def test_block_the_plugin_cannot_take_falls_back_with_one_line(tmp_path, monkeypatch, caplog):
    """Blocks with a 5x5 Gaussian (the plugin's builds are 7x7) or no grid prior keep the per-op nodes, their
    output unchanged; one warning names exactly those blocks and why; the others are SparseBlock nodes."""
    import logging

    import onnx

    from sai.exporter.export import export_onnx, prepare_model

    monkeypatch.delenv("SAI_TRT_SPARSE_BLOCK", raising=False)
    model, _ = prepare_model("sparse_resnet18", base_width=16, seed=3)
    blocks = dict(model.sparse_blocks())
    blocks["layer2.1"].gaussian_kernel = 5
    blocks["layer3.0"].grid_prior_interval = 0
    path = tmp_path / "r18.onnx"
    with caplog.at_level(logging.WARNING, logger="sai.exporter.trt_blocks"):
        res = export_onnx(model, path, input_shape=(1, 3, 64, 64), target="tensorrt")
    lines = [r.getMessage() for r in caplog.records if r.name == "sai.exporter.trt_blocks"]
    assert len(lines) == 1, lines
    assert "2 of 8 sparse blocks keep the per-op TensorRT plugins" in lines[0]
    assert "layer2.1: its Gaussian is 5x5; the plugin's builds are 7x7" in lines[0], lines[0]
    assert "layer3.0: it has no grid prior" in lines[0], lines[0]
    nodes = [n for n in onnx.load(str(path)).graph.node if n.domain == "sai"]
    assert sorted({n.name.split("/")[0] for n in nodes if n.op_type != "SparseBlock"}) == ["layer2.1", "layer3.0"]
    assert [n.name for n in nodes if n.op_type == "SparseBlock"] == [
        f"{b}/block" for b in ("layer1.0", "layer1.1", "layer2.0", "layer3.1", "layer4.0", "layer4.1")]
    assert res.op_counts == {"SparseSampleConv": 4, "Interpolate": 4, "SparseBlock": 6}
    k = [onnx.helper.get_attribute_value(a) for n in nodes if n.name == "layer2.1/interp0" for a in n.attribute
         if a.name == "kernel_size"]
    assert k == [5]  # the per-op node carries the block's own Gaussian


def test_plugin_name_and_the_builds_tiles_match():
    """The creator's name is sai.constants' op name; the workspace plan's tiles (sparseBlockKernel.h) are
    those the AOT builds of the separable Interpolate compile in (kernels/aot.py SPECS)."""
    from sai import constants
    from sai.kernels import aot

    header = (PLUGINS / "sparseBlock" / "sparseBlockKernel.h").read_text()
    plugin = (PLUGINS / "sparseBlock" / "sparseBlockPlugin.h").read_text()
    assert re.search(r'\bkName\s*=\s*"([^"]*)"', plugin).group(1) == constants.SPARSE_BLOCK
    consts = {k: int(v) for k, v in re.findall(r"constexpr int32_t kSAI_BLOCK_(\w+) = (\d+);", header)}
    spec = aot.SPECS.get("block_interp_fp16")
    if spec is None:
        pytest.skip("kernels/aot.py has no block_interp specs")
    c = spec["constexprs"]
    assert (consts["KERNEL_SIZE"], consts["TH"], consts["TW"], consts["HRP"], consts["BC"]) == (
        c["KS"], c["TH"], c["TW"], c["HRP"], c["BC"])


def test_dense_sampling_has_nothing_to_fuse_and_says_nothing(tmp_path, monkeypatch, caplog):
    """sampling="dense": plain convs, no sai node at all, so no SparseBlock node and no fallback line."""
    import logging

    import onnx

    from sai.exporter.export import export_onnx

    monkeypatch.delenv("SAI_TRT_SPARSE_BLOCK", raising=False)
    path = tmp_path / "dense.onnx"
    with caplog.at_level(logging.WARNING, logger="sai.exporter.trt_blocks"):
        export_onnx("sparse_resnet18", path, input_shape=(1, 3, 64, 64), base_width=16, target="tensorrt",
                    sampling="dense")
    assert not [r for r in caplog.records if r.name == "sai.exporter.trt_blocks"]
    assert not [n for n in onnx.load(str(path)).graph.node if n.domain == "sai"]
