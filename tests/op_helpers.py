"""Shared by the one-node ONNX body tests (test_export_ops, test_export_deform_sparse)."""

from __future__ import annotations

import torch


def ort_session(model):
    """A CPU onnxruntime session for ``model`` after ``onnx.checker`` (full check, function bodies too)."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(model, full_check=True)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def make_mask(kind: str, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """``empty`` (all 0), ``full`` (all soft in [0.5, 1]) or ``random`` (~40% kept, soft values)."""
    if kind == "empty":
        return torch.zeros(n, 1, h, w)
    if kind == "full":
        return torch.rand(n, 1, h, w, generator=g) * 0.5 + 0.5
    keep = torch.rand(n, 1, h, w, generator=g) < 0.4
    return keep.float() * (torch.rand(n, 1, h, w, generator=g) * 0.5 + 0.5)
