"""``metadata_props`` of exported models: what was exported, how, and how to feed it.

Every key starts with ``sai.``; structured values are JSON. ``read_metadata`` returns them decoded.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

PREFIX = "sai."

# Input normalisation of the ImageNet-trained backbones (torchvision / mmdetection v0.6):
# RGB, pixel values in [0, 255]: x = (pixel - mean) / std.
DEFAULT_INPUT_NORM = {
    "color": "RGB",
    "range": "0-255",
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
}


def write_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Set ``sai.<key>`` entries (strings as is, everything else as JSON); replaces old ones."""
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        entry = model.metadata_props.add()
        entry.key = PREFIX + key
        entry.value = text


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The ``sai.*`` entries of ``model`` without the prefix, JSON values decoded."""
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if not p.key.startswith(PREFIX):
            continue
        try:
            out[p.key[len(PREFIX):]] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key[len(PREFIX):]] = p.value
    return out
