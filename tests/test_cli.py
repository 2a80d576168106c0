"""The `sai` console script: help, version, doctor, and one-line errors."""

import json
import subprocess
import sys

import sai


def run_sai(*args):
    return subprocess.run([sys.executable, "-m", "sai", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    out = run_sai("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"sai {sai.__version__}"
    out = run_sai("--help")
    assert out.returncode == 0 and "doctor" in out.stdout


def test_doctor_reports_every_piece_and_what_missing_ones_disable():
    out = run_sai("doctor", "--json")
    assert out.returncode == 0, out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    for name in ("python", "torch", "onnx", "onnxruntime", "polygraphy", "tensorrt", "nvcc", "gpu"):
        assert name in checks
    import torch

    assert checks["torch"]["ok"] and checks["torch"]["detail"] == torch.__version__
    for c in checks.values():
        if not c["ok"]:
            assert c["disables"] and c["fix"], c


def test_unknown_verb_is_a_usage_error():
    out = run_sai("no-such-verb")
    assert out.returncode == 2 and "invalid choice" in out.stderr
