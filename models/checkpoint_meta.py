"""What a checkpoint's ``meta`` says about feeding the model and reading its outputs: the preprocessing
record ``input_norm`` and the class names. The exporter records both in the ONNX metadata
(``sai.exporter.metadata``) and the torch backend reports the same from the checkpoint itself.

``input_norm``::

    {"layout": "NCHW", "color": "RGB", "dtype": "uint8", "range": "0-255",
     "scale": 0.00392156862745098, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
     "formula": "x = (pixel * scale - mean) / std", "source": "checkpoint"}

``source``: ``checkpoint`` (its ``meta["input"]``, as ``sai train-demo`` writes), ``mmdetection config``
(the ``img_norm_cfg`` in an mmdetection checkpoint's meta), ``given`` (passed to ``export_onnx``) or
``assumed`` (the ImageNet statistics, never applied to raw pixels by the runtime on its own).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from sai.errors import SaiError

FORMULA = "x = (pixel * scale - mean) / std"
SOURCES = ("checkpoint", "mmdetection config", "given", "assumed")
# Input normalisation of the ImageNet-trained backbones (torchvision / mmdetection v0.6):
# RGB, pixel values in [0, 255]: x = (pixel - mean) / std. Recorded as "assumed" where a checkpoint has none.
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
DEFAULT_INPUT_NORM = {
    "layout": "NCHW",
    "color": "RGB",
    "dtype": "uint8",
    "range": "0-255",
    "scale": 1.0,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "formula": FORMULA,
    "source": "assumed",
}


def _floats(value, what: str, channels: int) -> list[float]:
    vals = [value] if isinstance(value, (int, float)) else value
    if not isinstance(vals, Sequence) or isinstance(vals, str) or not vals:
        raise SaiError(f"input_norm {what} must be a number or a list of {channels}, got {value!r}")
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise SaiError(f"input_norm {what} must hold numbers, got {value!r}") from None
    if len(out) == 1:
        out = out * channels
    if len(out) != channels or not all(math.isfinite(v) for v in out):
        raise SaiError(f"input_norm {what} must be {channels} finite numbers (one per channel), got {value!r}")
    return out


def canonical_input_norm(norm: Mapping[str, Any], source: str, channels: int = 3) -> dict:
    """The ``input_norm`` record for ``norm`` (a record, or a checkpoint's ``meta["input"]`` with
    ``scale``/``mean``/``std``/``channels``/``layout``): every field present and checked; SaiError naming
    the field otherwise. Without ``scale`` the mean/std are in pixel units (scale 1)."""
    if not isinstance(norm, Mapping):
        raise SaiError(f"input_norm must be a dict with mean and std, got {type(norm).__name__}")
    if source not in SOURCES:
        raise SaiError(f"input_norm source must be one of {', '.join(SOURCES)}, got {source!r}")
    color = str(norm.get("color", norm.get("channels", "RGB"))).upper()
    if color not in ("RGB", "BGR"):
        raise SaiError(f"input_norm color must be RGB or BGR, got {color!r}")
    layout = str(norm.get("layout", "NCHW")).upper()
    if layout not in ("NCHW", "NHWC"):
        raise SaiError(f"input_norm layout must be NCHW or NHWC, got {layout!r}")
    if "mean" not in norm or "std" not in norm:
        raise SaiError("input_norm needs mean and std (per channel, in the units of pixel * scale)")
    scale = norm.get("scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
        raise SaiError(f"input_norm scale must be a positive number, got {scale!r}")
    std = _floats(norm["std"], "std", channels)
    if any(v == 0 for v in std):
        raise SaiError(f"input_norm std must not be 0, got {std}")
    return {"layout": layout, "color": color, "dtype": "uint8", "range": "0-255", "scale": float(scale),
            "mean": _floats(norm["mean"], "mean", channels), "std": std, "formula": FORMULA, "source": source}


_MMDET_NORM = re.compile(r"img_norm_cfg\s*=\s*dict\(\s*mean\s*=\s*\[([^\]]*)\]\s*,\s*std\s*=\s*\[([^\]]*)\]"
                         r"(?:\s*,\s*to_rgb\s*=\s*(True|False))?")


def input_norm_from_checkpoint(meta: Optional[Mapping[str, Any]], channels: int = 3) -> dict:
    """The ``input_norm`` record a checkpoint's ``meta`` holds: its ``input`` entry (sai's format), else the
    ``img_norm_cfg`` of an mmdetection config stored in it, else the ImageNet default marked ``assumed``."""
    meta = meta or {}
    inp = meta.get("input")
    if isinstance(inp, Mapping) and "mean" in inp and "std" in inp:
        return canonical_input_norm(inp, "checkpoint", channels)
    config = meta.get("config")
    if isinstance(config, str) and (m := _MMDET_NORM.search(config)):
        mean = [float(v) for v in m.group(1).split(",") if v.strip()]
        std = [float(v) for v in m.group(2).split(",") if v.strip()]
        # mmdetection loads BGR images (cv2) and converts them to RGB when to_rgb is True
        color = "RGB" if m.group(3) in (None, "True") else "BGR"
        return canonical_input_norm({"mean": mean, "std": std, "color": color}, "mmdetection config", channels)
    return canonical_input_norm(DEFAULT_INPUT_NORM, "assumed", channels)


def classes_from_checkpoint(meta: Optional[Mapping[str, Any]], num_classes: Optional[int]) -> Optional[list[str]]:
    """The class names of a classifier checkpoint (``meta["classes"]`` or mmdetection's ``meta["CLASSES"]``),
    when they are strings and exactly one per logit; None otherwise."""
    meta = meta or {}
    names = meta.get("classes", meta.get("CLASSES"))
    if not num_classes or not isinstance(names, Sequence) or isinstance(names, str):
        return None
    if len(names) != int(num_classes) or not all(isinstance(n, str) for n in names):
        return None
    return [str(n) for n in names]


def checkpoint_meta(checkpoint) -> dict:
    """The ``meta`` dict of a checkpoint (a path, a checkpoint dict or a bare state dict; {} when it has none).
    A path is memory-mapped, so only the small meta entry is read, not the weights."""
    import os

    if isinstance(checkpoint, Mapping):
        meta = checkpoint.get("meta")
        return dict(meta) if isinstance(meta, Mapping) else {}
    if not isinstance(checkpoint, (str, os.PathLike)):
        return {}
    from sai.models.checkpoint import load_file, read_checkpoint

    try:
        obj = load_file(checkpoint, mmap=True)
    except Exception:  # legacy (non-zip) files cannot be mapped; the export reads them anyway
        return read_checkpoint(checkpoint)[1]
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}
