"""What an OUTDIR holds: the names sai convert writes, its manifest (read and checked) and the checkpoint it
records. A leaf module (it imports only ``sai.errors`` and ``sai.runtime.integrity``): the loader, the engines
and ``sai.runtime.ort_ops`` take these from here, so none of them needs the loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from sai.errors import SaiError
from sai.runtime.integrity import MANIFEST_NAME, check_manifest

ONNX_NAME, TRT_ONNX_NAME, PLAN_NAME = "model.onnx", "model.trt.onnx", "model.plan"
FUSED_ONNX_NAME = "model.cpu-fused.onnx"  # model.onnx with sai::SparseBlock nodes (needs libsai_ort_ops.so)
OUTDIR_FILES = (ONNX_NAME, TRT_ONNX_NAME, FUSED_ONNX_NAME, PLAN_NAME)  # what sai convert writes (and lists)


def read_manifest(outdir: Path) -> Optional[dict]:
    """The OUTDIR's manifest (None when there is none); SaiError when it is not JSON or not a manifest."""
    path = Path(outdir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SaiError(f"{path} is not valid JSON ({str(exc)[:200]}); re-run sai convert") from None
    return check_manifest(doc, path)


def checkpoint_of(manifest: Optional[dict], outdir: Path) -> Path:
    ck = (manifest or {}).get("checkpoint") or {}
    path = ck.get("path")
    if not path:
        raise SaiError(f"{outdir} records no checkpoint; pass the checkpoint (.pth) for the torch backend")
    p = Path(path)
    if not p.is_absolute():
        p = outdir / p
    if not p.is_file():
        raise SaiError(f"checkpoint {p} recorded in {outdir / MANIFEST_NAME} is gone; pass --checkpoint")
    return p
