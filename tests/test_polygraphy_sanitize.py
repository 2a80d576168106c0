"""Polygraphy's standard clean-up on a converted model (issue 27): ``polygraphy surgeon sanitize --fold-constants``
(onnx-graphsurgeon rewrites every node) must leave a model that ``polygraphy run --onnxrt`` runs and that matches
the unsanitized model on onnxruntime; sai's loader restores the metadata_props that sanitize drops from the
manifest, and warns where there is none."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx_graphsurgeon", reason="polygraphy surgeon needs onnx-graphsurgeon (pip install onnx-graphsurgeon)")

POLYGRAPHY = Path(sys.executable).parent / "polygraphy"
SHAPE = [3, 3, 32, 32]


def _polygraphy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(POLYGRAPHY), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def sanitized(outdir, tmp_path_factory) -> Path:
    """The tiny OUTDIR's model.onnx through the real CLI, in a folder of its own beside a copy of the manifest
    (the layout the README gives)."""
    if not POLYGRAPHY.is_file():
        pytest.skip(f"no polygraphy CLI at {POLYGRAPHY}")
    d = tmp_path_factory.mktemp("sanitized")
    shutil.copy(outdir / "manifest.json", d / "manifest.json")
    _polygraphy("surgeon", "sanitize", str(outdir / "model.onnx"), "--fold-constants", "-o", "sanitized.onnx", cwd=d)
    return d / "sanitized.onnx"


def test_sanitize_drops_the_metadata_and_keeps_typed_constants(outdir, sanitized):
    import onnx

    before = onnx.load(str(outdir / "model.onnx"))
    after = onnx.load(str(sanitized))
    assert any(p.key == "sai.input_norm" for p in before.metadata_props)
    assert not after.metadata_props  # what sanitize does; the loader has to cope (below)
    assert {f.name for f in after.functions} == {f.name for f in before.functions}
    doubles = [(f.name, n.name) for f in after.functions for n in f.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value" and a.t.data_type == onnx.TensorProto.DOUBLE]
    assert not doubles, f"sanitize re-emitted double constants in the sai bodies: {doubles[:5]}"


def test_polygraphy_run_matches_the_unsanitized_model(outdir, sanitized):
    d = sanitized.parent
    _polygraphy("run", str(outdir / "model.onnx"), "--onnxrt", "--input-shapes", f"input:{SHAPE}",
                "--save-inputs", "in.json", "--save-outputs", "ref.json", cwd=d)
    proc = _polygraphy("run", "sanitized.onnx", "--onnxrt", "--load-inputs", "in.json", "--load-outputs", "ref.json",
                       "--atol", "1e-5", "--rtol", "1e-4", cwd=d)
    assert "PASSED" in proc.stdout + proc.stderr


def test_loader_restores_the_metadata_from_the_manifest(outdir, sanitized):
    import onnxruntime as ort

    import sai.runtime as rt

    manifest = json.loads((outdir / "manifest.json").read_text())
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    ref = ort.InferenceSession(str(outdir / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with rt.load(sanitized) as engine:
        assert engine.metadata["input_norm"] == manifest["metadata"]["input_norm"]
        assert engine.metadata["arch"] == manifest["metadata"]["arch"]
        y = engine.infer(x)["logits"]
    np.testing.assert_allclose(y, ref[0], rtol=1e-4, atol=1e-5)


def test_loader_warns_without_a_manifest(sanitized, tmp_path):
    import sai.runtime as rt

    lone = tmp_path / "sanitized.onnx"
    shutil.copy(sanitized, lone)
    with pytest.warns(UserWarning, match="carries no sai metadata.*manifest.json"):
        engine = rt.load(lone)
    with engine:
        assert "input_norm" not in engine.metadata
