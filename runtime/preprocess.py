"""Images in: the preprocessing recorded at export (``input_norm``, see ``sai.exporter.metadata``),
applied to raw uint8 pixels in the runtime. This is the one place it happens: ``Engine.infer`` calls
``preprocess`` for a uint8 image input (and so does ``sai serve``, which hands uint8 tensors to it).

- layouts: NCHW or NHWC, told by ``layout=`` or else by where the model's channel count is (dim 1 or 3;
  when both fit, the recorded layout, NCHW);
- colour: pixels are taken in the recorded channel order (RGB for every sai model); ``color="BGR"``
  (OpenCV images) flips them;
- values: ``x = (pixel * scale - mean) / std`` per channel, through a 256-entry table per channel
  computed in float64, so every value is the correctly rounded float32 of the formula;
- only records that come from the model's own checkpoint (``source`` ``checkpoint`` / ``mmdetection
  config``) or were given at export are applied; an ``assumed`` record (the checkpoint records no
  preprocessing) or a record written before sai recorded the checkpoint's (no ``source``) is not:
  raw pixels are then an InputError naming the fix, as any other dtype the model cannot take.

A float input is taken as already normalised and passed as it is.

``sai export-triton`` copies this file into the python-backend preprocessing model of a Triton
repository, where sai is not installed: it needs only numpy there (errors are then ValueErrors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

try:
    from sai.errors import InputError, SaiError
except ImportError:  # inside a Triton python-backend model (see the module docstring)
    SaiError = InputError = ValueError  # type: ignore[misc,assignment]

TRUSTED_SOURCES = ("checkpoint", "mmdetection config", "given")
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("RGB", "BGR")


def usable_norm(norm: Any) -> Optional[dict]:
    """The ``input_norm`` record when the runtime may apply it to raw pixels, else None (see the module doc)."""
    if not isinstance(norm, Mapping) or norm.get("source") not in TRUSTED_SOURCES:
        return None
    if norm.get("mean") is None or norm.get("std") is None:
        return None
    return dict(norm)


def why_not_applied(norm: Any) -> str:
    """Why raw pixels are not accepted for a model with ``norm`` (for the dtype error); '' when they are."""
    if usable_norm(norm) is not None:
        return ""
    if not isinstance(norm, Mapping):
        return "the model records no preprocessing"
    if "source" not in norm:
        return "the model was exported before sai recorded the checkpoint's preprocessing (re-run sai convert)"
    return "its checkpoint records no preprocessing, so the recorded ImageNet input_norm is only assumed"


def pixel_table(norm: Mapping[str, Any], channels: int) -> np.ndarray:
    """``[channels, 256]`` float32: the normalised value of every uint8 pixel value per channel."""
    scale = float(norm.get("scale", 1.0))
    mean = np.broadcast_to(np.asarray(norm["mean"], np.float64).reshape(-1), (channels,))
    std = np.broadcast_to(np.asarray(norm["std"], np.float64).reshape(-1), (channels,))
    v = np.arange(256, dtype=np.float64)
    return ((v[None, :] * scale - mean[:, None]) / std[:, None]).astype(np.float32)


def image_layout(shape: tuple[int, ...], channels: int, layout: Optional[str] = None,
                 recorded: str = "NCHW") -> str:
    """``NCHW`` or ``NHWC`` for a batch of images of ``shape``; InputError when it fits neither."""
    if layout is not None:
        layout = str(layout).upper()
        if layout not in LAYOUTS:
            raise SaiError(f"layout must be NCHW or NHWC, got {layout!r}")
    if len(shape) != 4:
        hint = " (add a batch axis: images[None])" if len(shape) == 3 else ""
        raise InputError(f"uint8 images must be a batch [N,C,H,W] or [N,H,W,C], got shape {list(shape)}{hint}")
    fits = [lay for lay, dim in (("NCHW", 1), ("NHWC", 3)) if shape[dim] == channels]
    if layout is not None:
        if layout not in fits:
            raise InputError(f"uint8 images of shape {list(shape)} are not {layout} with {channels} channels")
        return layout
    if not fits:
        raise InputError(f"uint8 images of shape {list(shape)} have {channels} channels neither at dim 1 (NCHW) "
                         "nor at dim 3 (NHWC), as the model takes")
    return recorded if len(fits) == 2 and recorded in fits else fits[0]


def preprocess(images: Any, norm: Mapping[str, Any], channels: int, *, layout: Optional[str] = None,
               color: Optional[str] = None, table: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 ``images`` (NCHW or NHWC, ``color`` RGB/BGR, default the recorded order) -> the model's
    float32 NCHW input, normalised as ``norm`` says. ``table``: a cached ``pixel_table``."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise InputError(f"images must be uint8 to be normalised, got {x.dtype.name}")
    lay = image_layout(x.shape, channels, layout, str(norm.get("layout", "NCHW")))
    if color is not None:
        color = str(color).upper()
        if color not in COLORS:
            raise SaiError(f"color must be RGB or BGR, got {color!r}")
    lut = pixel_table(norm, channels) if table is None else table
    flip = color is not None and color != str(norm.get("color", "RGB")).upper()
    n, h, w = (x.shape[0], x.shape[2], x.shape[3]) if lay == "NCHW" else x.shape[:3]
    out = np.empty((n, channels, h, w), np.float32)
    for m in range(channels):  # model channel m reads pixel channel c (reversed for the other colour order)
        c = channels - 1 - m if flip else m
        plane = x[:, c] if lay == "NCHW" else x[..., c]
        out[:, m] = lut[m][plane]
    return out


def preprocess_torch(images, norm: Mapping[str, Any], channels: int, *, layout: Optional[str] = None,
                     color: Optional[str] = None):
    """``preprocess`` for a uint8 torch tensor, on its own device (a CUDA image batch stays on the GPU): the
    same table, gathered by torch. Returns a contiguous float32 NCHW tensor on the tensor's device."""
    import torch

    x = images
    if x.dtype != torch.uint8:
        raise InputError(f"images must be uint8 to be normalised, got {x.dtype}")
    lay = image_layout(tuple(x.shape), channels, layout, str(norm.get("layout", "NCHW")))
    if color is not None and str(color).upper() not in COLORS:
        raise SaiError(f"color must be RGB or BGR, got {color!r}")
    if lay == "NHWC":
        x = x.permute(0, 3, 1, 2)
    if color is not None and str(color).upper() != str(norm.get("color", "RGB")).upper():
        x = x.flip(1)
    lut = torch.from_numpy(pixel_table(norm, channels)).to(x.device).reshape(-1)
    offset = (torch.arange(channels, device=x.device, dtype=torch.int64) * 256).view(1, channels, 1, 1)
    return lut[x.to(torch.int64) + offset].contiguous()
