"""sai validate on a convert OUTDIR: torch vs onnxruntime pass; a perturbed ONNX weight fails with a
readable report; per-output tolerances apply by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from runtime_helpers import record_files

from sai.cli.main import main
from sai.errors import SaiError
from sai.runtime.validate import parse_tolerances


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


def test_report_has_both_sampling_modes_densities(outdir, tmp_path, capsys):
    """Official SAI-Det inference is stochastic, sai's default deterministic: validate reports the
    densities of both (stochastic with a fixed seed) beside the exported model's, and the manifest says which."""
    manifest = json.loads((outdir / "manifest.json").read_text())
    assert manifest["export"]["sampling"] == "deterministic"
    assert "official SAI-Det evaluation is stochastic" in manifest["export"]["sampling_note"]
    report = tmp_path / "report.json"
    rc, out = _validate(capsys, [str(outdir), "--report", str(report), "--iterations", "1"])
    assert rc == 0, out
    assert "densities (mean d1/d2" in out and "torch stochastic seed 0" in out
    assert "official SAI-Det evaluation is stochastic" in out
    dens = json.loads(report.read_text())["densities"]
    det, sto, exp = dens["deterministic"], dens["stochastic"], dens["exported"]
    assert exp["sampling"] == "deterministic" and sto["seed"] == 0
    assert list(det["blocks"]) == list(sto["blocks"]) == list(exp["blocks"]) and len(det["blocks"]) == 8
    # the exported (deterministic) masks are the torch deterministic ones; the noisy ones differ
    assert exp["mean"] == pytest.approx(det["mean"], abs=1e-6)
    assert all(0.0 < d < 1.0 for d in det["mean"] + sto["mean"])
    assert det["blocks"] != sto["blocks"]
    # fixed seed: the same stochastic densities every run
    rc, _ = _validate(capsys, [str(outdir), "--report", str(report), "--iterations", "1"])
    assert rc == 0 and json.loads(report.read_text())["densities"]["stochastic"] == sto


def test_sampling_densities_restores_the_model():
    from runtime_helpers import tiny_model

    from sai.models import fuse_for_inference
    from sai.runtime.validate import sampling_densities

    model = fuse_for_inference(tiny_model())
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    gen = model.noise_source.generator
    a = sampling_densities(model, [x], seed=3)
    assert model.sampling == "deterministic" and model.noise_source.generator is gen and not model.densities()
    assert sampling_densities(model, [x], seed=3) == a and sampling_densities(model, [x], seed=4) != a


def test_sampling_choice_says_official_eval_is_stochastic(capsys):
    for verb in ("export", "convert"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "official SAI-Det code evaluates stochastically" in text, verb
