"""sai doctor's runtime checks: every missing piece names what it disables and the fix; the engine-build
verdict agrees with what sai convert does."""

from __future__ import annotations

import json

from sai.cli.main import main
from sai.runtime.environment import engine_unavailable_reason


def test_doctor_runtime_checks(capsys):
    assert main(["doctor", "--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    for name in ("cuda-python", "tritonclient", "onnxruntime cuda EP", "onnxruntime tensorrt EP", "engine build",
                 "sai cpu kernels", "sai plugins"):
        assert name in checks, name
    for c in checks.values():
        if not c["ok"]:
            assert c["disables"] and c["fix"], c
    reason = engine_unavailable_reason()
    assert checks["engine build"]["ok"] == (reason is None)
    if reason is not None:
        assert "model.plan" in checks["engine build"]["detail"]
    import onnxruntime

    cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert checks["onnxruntime cuda EP"]["ok"] == cuda_ep
