"""sai convert: exit codes, atomic replacement of OUTDIR, argument errors. The export itself is
stubbed here by copying the session's real export (the full path runs once in runtime_helpers)."""

from __future__ import annotations

import json
import shutil
import types

import pytest
from runtime_helpers import ARCH, tiny_checkpoint, tiny_outdir

import sai.exporter.export as export_mod
from sai.cli.main import main
from sai.errors import SaiError
from sai.runtime.convert import resolve_profile


@pytest.fixture
def fake_export(tmp_path_factory, monkeypatch):
    outdir, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0
    manifest = json.loads((outdir / "manifest.json").read_text())
    calls = []

    def fake(arch, path, **kw):
        calls.append(kw)
        if kw.get("sampling") == "boom":
            raise SaiError("export failed on purpose")
        shutil.copy(outdir / "model.onnx", path)
        return types.SimpleNamespace(noise_inputs=[], sampling="deterministic", opset=21, input_names=["input"],
                                     output_names=["logits"], metadata=manifest["metadata"])

    monkeypatch.setattr(export_mod, "export_onnx", fake)
    return calls


def test_require_engine_exits_nonzero_with_reason(fake_export, tmp_path, capsys):
    ck = tiny_checkpoint(tmp_path)
    rc = main(["convert", str(ck), "-o", str(tmp_path / "out"), "--require-engine", "-q"])
    cap = capsys.readouterr()
    assert rc == 2 and "--require-engine: no engine was built" in cap.err
    assert cap.out.count("engine skipped:") == 1
    assert main(["convert", str(ck), "-o", str(tmp_path / "out2")]) == 0
    cap = capsys.readouterr()  # with progress lines: the reason is printed once, in the summary (issue 27)
    reason = cap.out.split("engine skipped: ", 1)[1].split(";", 1)[0]
    assert reason and (cap.out + cap.err).count(reason) == 1, (cap.out, cap.err)
    assert "[3/4] TensorRT engine: skipped" in cap.err


def test_failed_convert_leaves_previous_outdir_intact(fake_export, tmp_path):
    from sai.runtime.convert import convert

    ck = tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    convert(ck, ARCH, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SaiError, match="on purpose"):
        convert(ck, ARCH, out, sampling="boom")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    convert(ck, ARCH, out, opt_shape="2,3,64,64")  # replacing a previous OUTDIR works
    assert json.loads((out / "manifest.json").read_text())["shapes"]["input"]["opt"] == [2, 3, 64, 64]
    assert fake_export[-1]["input_shape"] == (2, 3, 64, 64)


def test_refuses_to_replace_foreign_directory(fake_export, tmp_path):
    from sai.runtime.convert import convert

    ck = tiny_checkpoint(tmp_path)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(SaiError, match="is not written by sai convert"):
        convert(ck, ARCH, foreign)
    assert (foreign / "cat.jpg").read_bytes() == b"meow"


def test_arch_mismatch_and_missing_checkpoint(tmp_path, capsys):
    ck = tiny_checkpoint(tmp_path)
    assert main(["convert", str(ck), "--arch", "sparse_resnet50", "-o", str(tmp_path / "o")]) == 2
    assert "does not match the checkpoint, whose weights are sparse_resnet18" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "none.pth"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_profile_defaults_and_errors():
    assert resolve_profile(None, "2,3,64,64", None) == ((1, 3, 64, 64), (2, 3, 64, 64), (8, 3, 64, 64))
    with pytest.raises(SaiError, match="min-shape <= --shape <= --max-shape"):
        resolve_profile("4,3,64,64", "2,3,64,64", None)
    with pytest.raises(SaiError, match="channels differ"):
        resolve_profile("1,1,64,64", "2,3,64,64", None)
    with pytest.raises(SaiError, match="--max-shape"):
        resolve_profile(None, None, "1,3,x,64")


def test_convert_reads_the_checkpoint_file_once(tmp_path, monkeypatch):
    """Layout, export (options, weights, preprocessing) and the manifest's sha256 all come from one read."""
    import builtins
    import io
    import os

    import sai.models.checkpoint as ckmod
    from sai.runtime.convert import convert

    ck = tiny_checkpoint(tmp_path)
    loads, opens = [], []
    real_load, real_open = ckmod.load_file, io.open

    def counting_load(source, **kw):
        loads.append(source)
        return real_load(source, **kw)

    def counting_open(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == str(ck.resolve()):
            opens.append(file)
        return real_open(file, *a, **kw)

    monkeypatch.setattr(ckmod, "load_file", counting_load)
    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    res = convert(ck, ARCH, tmp_path / "out", opt_shape="1,3,32,32", build_engine=False)
    monkeypatch.undo()
    assert len(loads) == 1 and len(opens) == 1, (loads, opens)
    import hashlib

    assert res.manifest["checkpoint"]["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert res.manifest["metadata"]["input_norm"]["source"] == "assumed"  # the meta came through the one read


# ---- model.trt.onnx: one sai::SparseBlock node per block (issue 24 item 2b) -----------------------------


def test_cli_trt_blocks_reaches_the_tensorrt_export(fake_export, tmp_path, monkeypatch):
    """``sai convert`` exports model.trt.onnx with target tensorrt and fused blocks by default (a second
    export); ``--trt-blocks per-op`` exports once and strips the portable model instead."""
    monkeypatch.delenv("SAI_TRT_SPARSE_BLOCK", raising=False)
    ck = tiny_checkpoint(tmp_path)
    assert main(["convert", str(ck), "-o", str(tmp_path / "fused"), "-q", "--no-engine"]) == 0
    assert [(c.get("target"), c.get("trt_blocks")) for c in fake_export] == [("portable", None), ("tensorrt", "fused")]
    assert fake_export[0]["input_shape"] == fake_export[1]["input_shape"]
    assert fake_export[0]["checkpoint"] is fake_export[1]["checkpoint"]  # the one read of the file
    fake_export.clear()
    assert main(["convert", str(ck), "-o", str(tmp_path / "per_op"), "-q", "--no-engine", "--trt-blocks", "per-op"]) == 0
    assert [c.get("target") for c in fake_export] == ["portable"]
    manifest = json.loads((tmp_path / "per_op" / "manifest.json").read_text())
    assert manifest["tensorrt_onnx"]["trt_blocks"] == "per-op" and manifest["tensorrt_onnx"]["sparse_blocks"] == 0
    with pytest.raises(SystemExit):
        main(["convert", str(ck), "-o", str(tmp_path / "bad"), "--trt-blocks", "all"])


def _r18_w16_checkpoint(tmp_path):
    """sparse_resnet18 at base width 16 (every channel count a multiple of 16, so the plugin takes every
    block), DCN in stages 2 and 4, masks about half sparse, offsets about a pixel."""
    import torch
    from runtime_helpers import half_sparse

    from sai.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = half_sparse(build_model("sparse_resnet18", base_width=16, num_classes=10, dcn_stages=(0, 1, 0, 1)),
                        offsets=True)
    return save_checkpoint(model, tmp_path / "r18w16.pth")


def _sai_ops(path):
    import onnx

    from sai.constants import DOMAIN

    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node if n.domain == DOMAIN]
    return model, {op: ops.count(op) for op in ("SparseSampleConv", "Interpolate", "SparseBlock")}


def test_trt_onnx_has_one_sparse_block_per_block(tmp_path, monkeypatch):
    """resnet18 has 2+2+2+2 basic blocks: model.trt.onnx holds 8 SparseBlock nodes and no per-op node, passes
    the ONNX checker and records the mode; each node's initializers and attributes, through the float64
    formulas of docs/design.md 3.1-3.4, give the checkpoint's block output. ``trt_blocks="per-op"``:
    model.trt.onnx keeps the portable model's per-op nodes (2 SparseSampleConv + 2 Interpolate per block,
    plus the offset conv of each of the 4 deformable blocks)."""
    import onnx
    import torch
    from onnx import numpy_helper
    from test_trt_sparse_block import _block_reference, _nodes

    from sai.exporter import metadata
    from sai.exporter.export import prepare_model
    from sai.models.checkpoint import read_checkpoint_file
    from sai.runtime.convert import convert

    monkeypatch.delenv("SAI_TRT_SPARSE_BLOCK", raising=False)
    ck = _r18_w16_checkpoint(tmp_path)
    res = convert(ck, None, tmp_path / "fused", opt_shape="1,3,64,64", build_engine=False)
    proto, ops = _sai_ops(tmp_path / "fused" / "model.trt.onnx")
    assert ops == {"SparseSampleConv": 0, "Interpolate": 0, "SparseBlock": 8}, ops
    onnx.checker.check_model(proto, full_check=True)
    assert metadata.read_metadata(proto)["trt_blocks"] == "fused"
    entry = res.manifest["tensorrt_onnx"]
    assert entry["file"] == "model.trt.onnx" and entry["trt_blocks"] == "fused" and entry["sparse_blocks"] == 8
    assert res.manifest["export"]["input_names"] == [i.name for i in proto.graph.input]

    model, _ = prepare_model("sparse_resnet18", checkpoint=read_checkpoint_file(ck))
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), out.detach())))
             for m in model.modules() if getattr(m, "fused", False) and getattr(m, "sparse", False)]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    for h in hooks:
        h.remove()
    deform = 0
    for (node, t, a), (x, y) in zip(_nodes(proto), seen, strict=True):
        tt = {k: torch.from_numpy(numpy_helper.to_array(v).copy()).double() for k, v in t.items()}
        deform += tt["WO"].numel() > 0
        torch.testing.assert_close(y.double(), _block_reference(x.double(), tt, a), rtol=1e-4, atol=1e-4,
                                   msg=node.name)
    assert deform == 4

    per_op = convert(ck, None, tmp_path / "per_op", opt_shape="1,3,64,64", build_engine=False, trt_blocks="per-op")
    proto, ops = _sai_ops(tmp_path / "per_op" / "model.trt.onnx")
    assert ops == {"SparseSampleConv": 2 * 8 + 4, "Interpolate": 2 * 8, "SparseBlock": 0}, ops
    assert _sai_ops(tmp_path / "per_op" / "model.onnx")[1] == ops and not proto.functions
    assert metadata.read_metadata(proto)["trt_blocks"] == "per-op"
    assert per_op.manifest["tensorrt_onnx"]["trt_blocks"] == "per-op"
    assert per_op.manifest["tensorrt_onnx"]["sparse_blocks"] == 0
