"""sai validate on a convert OUTDIR: torch vs onnxruntime pass; a perturbed ONNX weight fails with a
readable report; per-output tolerances apply by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from runtime_helpers import record_files, tiny_outdir

from sai.cli.main import main
from sai.errors import SaiError
from sai.runtime.validate import parse_tolerances


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    out, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0, info
    return out


@pytest.fixture(scope="module")
def perturbed(outdir, tmp_path_factory):
    """A copy of OUTDIR whose largest weight (the classifier) is scaled by 1.01."""
    dest = tmp_path_factory.mktemp("perturbed") / "out"
    shutil.copytree(outdir, dest)
    model = onnx.load(str(dest / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = onnx.numpy_helper.to_array(init) * np.float32(1.01)
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(dest / "model.onnx"))
    record_files(dest, "model.onnx")  # a consistent OUTDIR of a (slightly) different model
    return dest


def _validate(capsys, argv):
    rc = main(["validate", *argv, "--threads", "1"])
    return rc, capsys.readouterr().out


def test_passes_torch_vs_onnxruntime(outdir, tmp_path, capsys):
    report = tmp_path / "report.json"
    rc, out = _validate(capsys, [str(outdir), "--report", str(report)])
    assert rc == 0, out
    assert "validate: torch vs onnxruntime on inputs [[2, 3, 32, 32], [2, 3, 32, 32]]" in out
    assert "validate: PASSED" in out and "skipped tensorrt" in out
    rep = json.loads(report.read_text())
    assert rep["passed"] and rep["backends"] == ["torch", "onnxruntime"]
    assert [o["output"] for o in rep["outputs"]] == ["logits", "logits"]
    assert all(o["max_abs"] < 1e-4 for o in rep["outputs"])
    # masks of every sparse block (8 blocks x 2), both iterations, identical decisions
    assert len(rep["masks"]) == 32 and all(m["agreement"] == 1.0 for m in rep["masks"])


def test_perturbed_weight_fails_with_readable_report(perturbed, tmp_path, capsys):
    report = tmp_path / "report.json"
    rc, out = _validate(capsys, [str(perturbed), "--report", str(report)])
    assert rc == 1
    fails = [ln for ln in out.splitlines() if ln.strip().startswith("FAIL")]
    assert fails and all("torch vs onnxruntime" in ln and "logits" in ln and "max abs" in ln for ln in fails)
    assert out.rstrip().endswith("validate: FAILED") or "validate: FAILED" in out
    rep = json.loads(report.read_text())
    assert rep["passed"] is False and any(not o["passed"] and o["max_abs"] > 1e-4 for o in rep["outputs"])


def test_per_output_tolerance_by_name(perturbed, capsys):
    rc, out = _validate(capsys, [str(perturbed), "--atol", "1e-4", "logits:10", "--rtol", "logits:10",
                                 "--iterations", "1"])
    assert rc == 0, out
    assert "(atol 10, rtol 10)" in out


def test_parse_tolerances_and_errors(outdir, capsys):
    assert parse_tolerances(["1e-3", "logits:0.5", "a:b:2"], 1e-4, "--atol") == {"": 1e-3, "logits": 0.5, "a:b": 2.0}
    with pytest.raises(SaiError, match="NAME:NUMBER"):
        parse_tolerances(["logits:x"], 1e-4, "--atol")
    rc = main(["validate", str(outdir / "model.onnx"), "--backends", "onnxruntime"])
    assert rc == 2 and "at least two backends" in capsys.readouterr().err
