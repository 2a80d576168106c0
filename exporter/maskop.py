"""The sampling mask (docs/design.md 3.1) as one node while exporting, standard ONNX ops in the file.

Why: torch.export traces every elementwise op of the mask (sigmoid, logs, Gumbel noise, the
grid prior's aranges, threshold: about 20 FX nodes per mask, two masks per block) with symbolic
H/W, and each op pays for sympy reasoning about nested conv-output sizes. The masks were ~70% of
the traced graph and most of the export time. During export the fused blocks' ``mask_fn`` (their
documented mask hook, ``sai.models.fuse``) is set to one custom op ``sai_export::sampling_mask`` (its
eager body *is* ``mask_from_logit``) and restored afterwards by ``mask_as_one_node``,
whose translation below writes exactly the docs/design.md 3.1 formula in standard ONNX ops. The ONNX
file is the same kind of graph as before (no ``sai_export`` node survives); the noise inputs are no
longer broadcast against the logits inside torch.export, so their dims need no reconciliation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from sai.models.blocks import DELTA, mask_from_logit


@torch.library.custom_op("sai_export::sampling_mask", mutates_args=())
def sampling_mask(logit: Tensor, noise: Optional[Tensor], temperature: float, grid_interval: int) -> Tensor:
    """Hard inference mask of docs/design.md 3.1 (``noise`` = uniforms [N,2,H,W] or None)."""
    return mask_from_logit(logit, temperature, noise, grid_interval, hard=True)[0]


@sampling_mask.register_fake
def _(logit, noise, temperature, grid_interval):
    return torch.empty_like(logit)


def one_node_mask(logit: Tensor, temperature: float, noise_u: Optional[Tensor], grid_interval: int) -> Tensor:
    """A fused block's ``mask_fn`` while exporting: the hard inference mask as one ``sampling_mask`` node."""
    return torch.ops.sai_export.sampling_mask(logit, noise_u, float(temperature), int(grid_interval))


@contextlib.contextmanager
def mask_as_one_node(model: nn.Module) -> Iterator[None]:
    """While active, the fused sparse blocks of ``model`` compute their masks through ``sampling_mask``.

    Through the blocks' public hook only (``mask_fn``, documented in ``sai.models.fuse``: set, then set back to
    what it was, also when the export fails); no function of torch or sai is replaced."""
    blocks = [m for m in model.modules() if getattr(m, "fused", False) and getattr(m, "sparse", False)]
    saved = [(blk, blk.mask_fn) for blk in blocks]
    for blk in blocks:
        blk.mask_fn = one_node_mask
    try:
        yield
    finally:
        for blk, fn in saved:
            blk.mask_fn = fn


def translate_sampling_mask(logit, noise, temperature, grid_interval):
    """docs/design.md 3.1 in standard ONNX ops, op for op the order of ``mask_from_logit``."""
    from onnxscript import opset18 as op

    def c(v):
        return op.CastLike(op.Constant(value_float=float(v)), logit)

    # the clamps of mask_from_logit: onnxruntime's Sigmoid returns 1.0000001 near logit 17.8, and
    # log(1 - p + d) is then NaN; a fed uniform above 1 would make the Gumbel term NaN
    p = op.Clip(op.Sigmoid(logit), c(0.0), c(1.0))
    z = op.Sub(op.Log(op.Add(p, c(DELTA))), op.Log(op.Add(op.Sub(c(1.0), p), c(DELTA))))
    if noise is not None:
        u = op.Clip(op.CastLike(noise, logit), c(0.0), c(1.0))
        g = op.Neg(op.Log(op.Add(op.Neg(op.Log(op.Add(u, c(DELTA)))), c(DELTA))))
        g1, g2 = op.Split(g, num_outputs=2, axis=1)
        z = op.Add(z, op.Sub(g1, g2))
    s = op.Sigmoid(op.Div(z, c(float(temperature) + DELTA)))
    if int(grid_interval) > 0:
        gi = op.Constant(value_int=int(grid_interval))
        zero = op.Constant(value_int=0)
        one = op.Constant(value_int=1)
        h = op.Squeeze(op.Shape(s, start=2, end=3))
        w = op.Squeeze(op.Shape(s, start=3, end=4))
        rows = op.Equal(op.Mod(op.Range(zero, h, one), gi), zero)
        cols = op.Equal(op.Mod(op.Range(zero, w, one), gi), zero)
        grid = op.And(op.Unsqueeze(rows, op.Constant(value_ints=[1])), cols)
        s = op.Where(grid, c(1.0), s)
    return op.Mul(s, op.CastLike(op.GreaterOrEqual(s, c(0.5)), s))
