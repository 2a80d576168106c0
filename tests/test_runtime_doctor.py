"""sai doctor's runtime checks: every missing piece names what it disables and the fix; the engine-build
verdict follows what is installed here (found without sai)."""

from __future__ import annotations

import json
import subprocess
import sys

from sai.cli.main import main


def _imports(module: str) -> bool:
    """Whether ``module`` imports in a fresh interpreter (a fact found without sai)."""
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def _doctor(capsys) -> dict:
    assert main(["doctor", "--json"]) == 0
    return {c["name"]: c for c in json.loads(capsys.readouterr().out)}


def test_doctor_runtime_checks(capsys):
    checks = _doctor(capsys)
    for name in ("cuda-python", "tritonclient", "onnxruntime cuda EP", "onnxruntime tensorrt EP", "engine build",
                 "sai cpu kernels", "sai plugins"):
        assert name in checks, name
    for c in checks.values():
        if not c["ok"]:
            assert c["disables"] and c["fix"], c
    import onnxruntime

    cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert checks["onnxruntime cuda EP"]["ok"] == cuda_ep


def test_doctor_says_no_engine_without_the_plugin_library(capsys, monkeypatch, tmp_path):
    """A plugin library that is not there (the override names a missing file): no engine can be built, whatever
    else this machine has; the verdict names the first missing piece, tensorrt where it does not import."""
    monkeypatch.setenv("SAI_TRT_PLUGIN_LIBRARY", str(tmp_path / "missing" / "libsai_trt_plugins.so"))
    checks = _doctor(capsys)
    assert checks["sai plugins"]["ok"] is False
    build = checks["engine build"]
    assert build["ok"] is False and "model.plan" in build["detail"] and build["fix"]
    if not _imports("tensorrt"):
        assert "tensorrt missing" in build["detail"]
