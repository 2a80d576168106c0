"""The README's Python API examples run as written (issue 27): the `sai convert` line before them, the
`sai.runtime` snippet in a fresh folder, and the tritonclient snippet against a real `sai serve` of that OUTDIR
on 127.0.0.1 (only its address changed to the test's free port). Outputs are checked against plain
onnxruntime on the converted model.onnx."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of README.md, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def _block_with(lang: str, needle: str) -> str:
    found = [code for lg, code in _blocks() if lg == lang and needle in code]
    assert len(found) == 1, f"expected one {lang} block of README.md with {needle!r}, found {len(found)}"
    return found[0]


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A fresh folder where the README's `sai convert` line ran as written (models/ linked in, as in a checkout)."""
    d = tmp_path_factory.mktemp("readme")
    (d / "models").symlink_to(ROOT / "models")
    code = _block_with("bash", "sai convert models/zoo/sai_demo_r18/sparse_resnet18.pth -o out")
    for line in code.splitlines():
        cmd = line.split("#", 1)[0].strip()
        if cmd:
            proc = subprocess.run(shlex.split(cmd), cwd=d, env=_env(), capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return d


def _reference(work: Path, images: np.ndarray) -> np.ndarray:
    """Plain onnxruntime on the portable model.onnx, the images normalised by the formula of its manifest."""
    import json

    import onnxruntime as ort

    norm = json.loads((work / "out" / "manifest.json").read_text())["metadata"]["input_norm"]
    mean, std = np.array(norm["mean"])[:, None, None], np.array(norm["std"])[:, None, None]
    x = ((images.astype(np.float64) * norm["scale"] - mean) / std).astype(np.float32)
    sess = ort.InferenceSession(str(work / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def test_python_api_snippet_runs_as_written(work):
    code = _block_with("python", 'rt.load("out/")')
    scope: dict = {}
    cwd = os.getcwd()
    os.chdir(work)
    try:
        exec(compile(code, "README.md (Python API)", "exec"), scope)
    finally:
        os.chdir(cwd)
    import json

    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest["export"]["profile_given"] is False  # the default profile binds only TensorRT engines
    assert manifest["shapes"]["input"]["min"] == [1, 3, 224, 224]
    images = scope["images"]
    assert images.dtype == np.uint8 and images.shape == (2, 3, 64, 64)  # below that profile: onnxruntime runs it
    ref = _reference(work, images)
    np.testing.assert_allclose(scope["y"], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scope["y2"], ref, rtol=1e-4, atol=1e-4)
    assert [p.index for p in scope["top"][0]] == list(np.argsort(-ref[0], kind="stable")[:3])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tritonclient_snippet_against_sai_serve(work):
    pytest.importorskip("tritonclient.http")
    code = _block_with("python", "tritonclient.http")
    port = _free_port()
    assert code.count('"localhost:8000"') == 1
    code = code.replace('"localhost:8000"', f'"127.0.0.1:{port}"')
    proc = subprocess.Popen([str(BIN / "sai"), "serve", "out", "--host", "127.0.0.1", "--port", str(port),
                             "--grpc-port", "0"], cwd=work, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):  # readiness, polled (the model loads in a few seconds)
            if proc.poll() is not None:
                pytest.fail(f"sai serve exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("sai serve did not become ready")
        scope: dict = {}
        exec(compile(code, "README.md (tritonclient)", "exec"), scope)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    logits, pixels = scope["logits"], scope["pixels"]
    assert logits.shape == (2, 10)
    np.testing.assert_allclose(logits, _reference(work, pixels.astype(np.uint8)), rtol=1e-4, atol=1e-4)
