"""`sai convert` + `sai validate` on official-layout SparseResNet-50/101 checkpoints with DCN in stages 2-4
(issue 23: the first such model crashed validate with "Input array to view() must be contiguous in memory":
the fused block's NHWC output reached Polygraphy's comparator as a channels_last view).

Checkpoints: random values (``test_models.randomize``: realistic BN statistics, intermediate mask densities,
offsets of about a pixel) under the key list of docs/design.md 4 (``test_checkpoint.official_keys``), small
widths and a 64x64 input so R101 converts in seconds. Both execution paths: fused (the defaults: torch's
``sai_cpu::sparse_block``, onnxruntime's ``sai::SparseBlock``) and per-op (torch ``FAST_BLOCKS`` off,
onnxruntime on libsai_ort_ops' per-op kernels with no block fused).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_checkpoint import official_keys
from test_models import randomize

from sai.cli.main import main
from sai.models import build_model

COUNTS = {"sparse_resnet50": (3, 4, 6, 3), "sparse_resnet101": (3, 4, 23, 3)}


def official_checkpoint(arch: str, path, seed: int = 0):
    """An official SAI-Det checkpoint (``backbone.`` + ``neck.`` keys, mmdet meta) of ``arch`` with DCN in
    stages 2-4, at base width 8 and FPN width 16. The residual branches' last BN scales are kept small (as in
    trained networks) so the outputs stay O(10) and float32 round-off stays within validate's tolerances."""
    model = randomize(build_model(arch, base_width=8, dcn_stages=(0, 1, 1, 1), head="fpn", fpn_out_channels=16),
                      seed=seed)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith(".bn3.weight"):
            v.copy_(torch.rand(v.shape, generator=g) * 0.2)
    keys = official_keys(counts=COUNTS[arch], dcn=(False, True, True, True), width=8, neck=16)
    official = {k: sd[k[len("backbone."):] if k.startswith("backbone.") else k].clone() for k in keys}
    torch.save({"state_dict": official, "meta": {"mmdet_version": "0.6.0"}}, path)
    return path


@pytest.fixture(scope="module", params=sorted(COUNTS))
def converted(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    ck = official_checkpoint(arch, root / "official.pth")
    out = root / "out"
    rc = main(["convert", str(ck), "-o", str(out), "--shape", "1,3,64,64", "-q"])  # arch from the checkpoint
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metadata"]["arch"] == arch and manifest["metadata"]["dcn_stages"] == [0, 1, 1, 1]
    return out


@pytest.mark.parametrize("path", ["fused", "per-op"])
def test_official_dcn_converts_and_validates(converted, path, monkeypatch, capsys, caplog, tmp_path):
    from sai.runtime import ort_ops

    caplog.set_level(logging.INFO, logger=ort_ops.log.name)
    if ort_ops.built_library()[0] is None:
        pytest.skip("libsai_ort_ops.so is not built (make install)")
    if path == "per-op":
        monkeypatch.setattr("sai.models.fuse.FAST_BLOCKS", False)
        monkeypatch.setattr(ort_ops, "fused_model", lambda p: (str(p), 0, "per-op run (test)"))
        monkeypatch.setenv("SAI_ORT_OPS", "1")
    report = tmp_path / "report.json"
    rc = main(["validate", str(converted), "--threads", "1", "--iterations", "1", "-o", str(report)])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    assert "validate: PASSED" in cap.out and "internal error" not in cap.err
    rep = json.loads(report.read_text())
    assert rep["backends"] == ["torch", "onnxruntime"] and not rep["nonfinite"]
    assert [o["output"] for o in rep["outputs"]] == ["p2", "p3", "p4", "p5", "p6"]
    # the sparse paths ran: intermediate densities (not all-ones masks, which take the dense fallback)
    dens = rep["densities"]["exported"]["mean"]
    assert 0.05 < dens[0] < 0.95 and 0.05 < dens[1] < 0.95, dens
    said = cap.err + caplog.text  # which kernels onnxruntime ran (ort_ops logs one line)
    assert ("sparse block(s) fused" if path == "fused" else "per-op run (test)") in said


def test_engine_outputs_are_row_major(converted):
    """Every host output is C-contiguous, whichever kernel produced it (the comparator reinterprets buffers)."""
    import sai.runtime as rt

    ck = json.loads((converted / "manifest.json").read_text())["checkpoint"]["path"]
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with rt.load(ck, backend="torch", threads=1, verify=False) as eng:
        outs = eng.infer(x)
    assert all(v.flags.c_contiguous for v in outs.values())
