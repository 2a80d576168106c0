"""``metadata_props`` of exported models: what was exported, how, and how to feed it.

Every key starts with ``sai.``; structured values are JSON. ``read_metadata`` returns them decoded.

Two entries say how to feed a model images and read its classes, both taken from the checkpoint (by
``sai.models.checkpoint_meta``, which the torch backend uses too, so every backend reports the same):

- ``input_norm``: the preprocessing the model was trained with (``input_norm_from_checkpoint``)::

      {"layout": "NCHW", "color": "RGB", "dtype": "uint8", "range": "0-255",
       "scale": 0.00392156862745098, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
       "formula": "x = (pixel * scale - mean) / std", "source": "checkpoint"}

  ``layout``/``color``: the image input's layout and channel order; ``mean``/``std`` are in the units
  of ``pixel * scale``. ``source`` says where it comes from: ``checkpoint`` (its ``meta["input"]``, as
  ``sai train-demo`` writes), ``mmdetection config`` (the ``img_norm_cfg`` in an mmdetection
  checkpoint's meta), ``given`` (passed to ``export_onnx``) or ``assumed`` (the checkpoint records none:
  the ImageNet statistics of torchvision / mmdetection, which the runtime does not apply to raw
  pixels on its own, see ``sai.runtime.preprocess``).
- ``classes``: the class names of a classifier, in logit order (``meta["classes"]`` /
  ``meta["CLASSES"]``), when there is one per logit.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "sai."
def write_metadata(model, values: dict[str, Any]) -> None:
    """Set ``sai.<key>`` entries of an ``onnx.ModelProto`` (strings as is, everything else as JSON);
    replaces old ones."""
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        entry = model.metadata_props.add()
        entry.key = PREFIX + key
        entry.value = text


def read_metadata(model) -> dict[str, Any]:
    """The ``sai.*`` entries of an ``onnx.ModelProto`` without the prefix, JSON values decoded."""
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if not p.key.startswith(PREFIX):
            continue
        try:
            out[p.key[len(PREFIX):]] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key[len(PREFIX):]] = p.value
    return out
