"""The ``tensorrt`` target's fused blocks: one ``sai::SparseBlock`` node per fusable sparse block.

While the model is exported for TensorRT (``export_onnx(..., target="tensorrt")``), each fused sparse
block (``sai.models.fuse``) that the SparseBlock plugin (trt_plugins/sparseBlock/README.md) can run
traces as one custom op ``sai_export::sparse_block`` whose translation writes the node: the block input
X (NCHW in the file; the plugin takes it channels-last), both mask predictors (fp32), the block's
folded weights and biases, and the noise inputs of stochastic sampling. Its eager body is the block's
own forward, so the traced output shape and values are the block's. A block the plugin cannot take
(deform groups > 1, a Gaussian other than 7x7, no grid prior, channel counts off 16, a shape the kernels
are not built for) keeps the per-op nodes (SparseSampleConv / Interpolate plugins), with one log line
naming which and why for the whole model. After export, ``fill_absent_inputs`` gives every absent input a
``[0]`` initializer of the node's weight type (the plugin's convention, as the onnxruntime op's) and names
each node ``<block>/block``.

On by default (``mode``): ``export_onnx(..., trt_blocks="per-op")`` / ``sai export --trt-blocks per-op``
keeps every block on the per-op plugins (the graph is then the portable one minus its functions, as
``sai convert``'s model.trt.onnx). Without an explicit choice the environment variable
``SAI_TRT_SPARSE_BLOCK`` decides (``0`` per-op, ``1`` fused), then the default ``fused``. The plugin is
registered in libsai_trt_plugins.so; its launch sequence (sparseBlockRunner.cpp) is checked against the
float64 block by tests/test_trt_sparse_block_launch.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from sai.constants import (
    DOMAIN,
    INTERPOLATE,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SPARSE_BLOCK,
    SPARSE_SAMPLE_CONV,
)
from sai.errors import SaiError

_log = logging.getLogger(__name__)

KERNEL_SIZE = 7  # the Gaussian the plugin's AOT builds compile in (sparseBlockKernel.h)
OFFSET_CHANNELS = 18  # a deformable conv2 with one offset group
EMPTY_PREFIX = "sai_block.empty"
INPUTS = ("X", "MW", "MB", "WA", "BA", "WB", "BB", "WC", "TAIL_BIAS", "WD", "BD", "WO", "BO", "U1", "U2")
_BLOCKS: dict[int, nn.Module] = {}  # the blocks whose forward the op's eager body runs (export time only)


MODES = ("fused", "per-op")
ENV = "SAI_TRT_SPARSE_BLOCK"  # the default's override: 1 fused, 0 per-op (an explicit choice wins)


def mode(requested: Optional[str] = None) -> str:
    """The tensorrt target's block mode: ``requested`` (``export_onnx``'s ``trt_blocks``, ``sai export
    --trt-blocks``) when given, else ``SAI_TRT_SPARSE_BLOCK`` (``1`` fused, ``0`` per-op), else ``fused``."""
    if requested is not None:
        if requested not in MODES:
            raise SaiError(f"trt_blocks must be one of {', '.join(MODES)}, got {requested!r}")
        return requested
    env = os.environ.get(ENV, "").strip()
    if env in ("", "1"):
        return "fused"
    if env == "0":
        return "per-op"
    raise SaiError(f"{ENV}={env!r} is not 0 or 1: unset it (default: one SparseBlock node per fusable block), "
                   "or set 0 for the per-op nodes (or pass --trt-blocks per-op)")


@torch.library.custom_op("sai_export::sparse_block", mutates_args=())
def sparse_block_op(
    x: Tensor, mask_weight: Tensor, mask_bias: Tensor, wa: Tensor, ba: Tensor, wb: Tensor, bb: Tensor,
    wc: Optional[Tensor], tail_bias: Optional[Tensor], wd: Optional[Tensor], bd: Optional[Tensor],
    wo: Optional[Tensor], bo: Optional[Tensor], noise1: Optional[Tensor], noise2: Optional[Tensor],
    block: int, stride_a: int, stride_b: int, relu_b: int, down_stride: int, offset_stride: int,
    mask_strides: list[int], sigma1: float, sigma2: float, kernel_size: int, eps: float, temperature: float,
    grid_interval: int,
) -> Tensor:
    """One sparse block (docs/design.md 3.1-3.4): the eager body is the block's own forward."""
    blk = _BLOCKS[block]
    return type(blk).forward(blk, x, noise1, noise2).clone()


@sparse_block_op.register_fake
def _(x, mask_weight, mask_bias, wa, ba, wb, bb, wc, tail_bias, wd, bd, wo, bo, noise1, noise2, block, stride_a,
      stride_b, relu_b, down_stride, offset_stride, mask_strides, sigma1, sigma2, kernel_size, eps, temperature,
      grid_interval):
    s = stride_a * stride_b
    cout = wc.shape[0] if wc is not None else wb.shape[0]
    return x.new_empty((x.shape[0], cout, (x.shape[2] - 1) // s + 1, (x.shape[3] - 1) // s + 1))


def _spec(blk: nn.Module) -> tuple[Optional[dict], str]:
    """The SparseBlock attributes and weights of a fused sparse block, or (None, why the plugin cannot take it)."""
    from sai.models.fuse import INTERP_EPS

    bottleneck = getattr(blk, "conv3_weight", None) is not None
    s = int(blk.stride)
    sa, sb = (1, s) if bottleneck else (s, 1)
    wa, wb = blk.conv1_weight, blk.conv2_weight
    wc = blk.conv3_weight if bottleneck else None
    c, cm, cb = wa.shape[1], wa.shape[0], wb.shape[0]
    cout = wc.shape[0] if wc is not None else cb
    wd = blk.down_weight
    wo = blk.offset_weight if blk.with_dcn else None
    ms = [int(v) for v in blk.mask_strides]
    if int(blk.gaussian_kernel) != KERNEL_SIZE:
        return None, f"its Gaussian is {blk.gaussian_kernel}x{blk.gaussian_kernel}; the plugin's builds are 7x7"
    if int(blk.grid_prior_interval) < 1:
        return None, "it has no grid prior; the plugin's mask builds compile one in"
    if ms != [sa, sa * sb]:
        return None, f"its mask strides {ms} are not [stride_a, stride_a * stride_b] = {[sa, sa * sb]}"
    if wa.shape[2] != wa.shape[3] or wa.shape[2] not in (1, 3) or list(wb.shape[2:]) != [3, 3]:
        return None, f"conv1 is {list(wa.shape[2:])} and conv2 {list(wb.shape[2:])}: the plugin takes 1x1/3x3 and 3x3"
    if wo is not None and wo.shape[0] != OFFSET_CHANNELS:
        return None, f"its offset conv gives {wo.shape[0]} channels; the plugin takes one offset group (18)"
    if wd is None and (s != 1 or cout != c):
        return None, "its identity is x but the block changes the size or the channels"
    if any(v % 16 for v in (c, cm, cb, cout)):
        return None, f"channels {c}/{cm}/{cb}/{cout} are not multiples of 16 (the plugin's block builds)"
    zeros = torch.zeros(0, dtype=wa.dtype)
    spec = {
        "tensors": [torch.cat([blk.mask1_weight, blk.mask2_weight]).float(),
                    torch.cat([blk.mask1_bias, blk.mask2_bias]).float(),
                    wa, blk.conv1_bias if blk.conv1_bias is not None else zeros, wb,
                    blk.conv2_bias if blk.conv2_bias is not None else zeros, wc,
                    blk.out_bias if bottleneck else None, wd, blk.down_bias if wd is not None else None,
                    wo, blk.offset_bias if wo is not None else None],
        "attrs": dict(stride_a=sa, stride_b=sb, relu_b=int(bottleneck), down_stride=int(blk.down_stride),
                      offset_stride=s, mask_strides=ms, sigma1=float(blk.sigma1), sigma2=float(blk.sigma2),
                      kernel_size=KERNEL_SIZE, eps=float(INTERP_EPS), temperature=float(blk.T_eval),
                      grid_interval=int(blk.grid_prior_interval)),
    }
    return spec, ""


def _fused_forward(blk: nn.Module, key: int, spec: dict):
    def forward(x: Tensor, noise1: Optional[Tensor] = None, noise2: Optional[Tensor] = None) -> Tensor:
        if blk.sampling == "stochastic" and (noise1 is None or noise2 is None):
            return type(blk).forward(blk, x, noise1, noise2)
        if blk.sampling != "stochastic":
            noise1 = noise2 = None
        return torch.ops.sai_export.sparse_block(x, *spec["tensors"], noise1, noise2, key, **spec["attrs"])

    return forward


@contextlib.contextmanager
def blocks_as_plugin_nodes(model: nn.Module) -> Iterator[int]:
    """While active, every fusable fused sparse block of ``model`` traces as one ``sparse_block`` op
    (yields how many); the others keep their per-op forward, named with their reasons in one log line."""
    patched, kept = [], {}
    try:
        for name, blk in model.named_modules():
            if not getattr(blk, "sparse", False):
                continue
            name = name or "?"
            if not getattr(blk, "fused", False):
                kept.setdefault("not fused for inference (export with fuse=True, the default)", []).append(name)
                continue
            if blk.sampling == "dense":  # plain convs, no sai node at all: nothing to fuse or to keep
                continue
            spec, why = _spec(blk)
            if spec is None:
                kept.setdefault(why, []).append(name)
                continue
            key = id(blk)
            _BLOCKS[key] = blk
            blk.forward = _fused_forward(blk, key, spec)
            patched.append(blk)
        if kept:
            _log.warning("%s", fallback_line(kept, len(patched)))
        yield len(patched)
    finally:
        for blk in patched:
            del blk.forward  # back to the class's forward
            _BLOCKS.pop(id(blk), None)


def fallback_line(kept: dict[str, list[str]], fused: int) -> str:
    """The one log line of a model whose blocks ``kept`` ({why: [block names]}) stay on the per-op plugins."""
    n = sum(len(v) for v in kept.values())
    whys = "; ".join(f"{', '.join(names)}: {why}" for why, names in kept.items())
    return (f"sai export: {n} of {n + fused} sparse blocks keep the per-op TensorRT plugins "
            f"(SparseSampleConv/Interpolate) instead of sai::SparseBlock: {whys}")


def sparse_block_schema():
    from onnx import defs

    fp, opt = defs.OpSchema.FormalParameter, defs.OpSchema.FormalParameterOption.Optional
    attr, t = defs.OpSchema.Attribute, defs.OpSchema.AttrType
    types = ["tensor(float)", "tensor(float16)"]
    docs = {"X": "block input [N,C,H,W]", "MW": "both 3x3 mask convs, fp32 [2,C,3,3]", "MB": "their biases, fp32 [2]",
            "WA": "conv1 [Cm,C,k,k]", "BA": "[Cm] or [0]", "WB": "conv2 [Cb,Cm,3,3]", "BB": "[Cb] or [0]",
            "WC": "conv3 [Cout,Cb,1,1] or [0]", "TAIL_BIAS": "[Cout] or [0]", "WD": "downsample [Cout,C,1,1] or [0]",
            "BD": "[Cout] or [0]", "WO": "DCN offset conv [18,C,3,3] or [0]", "BO": "[18] or [0]",
            "U1": "noise fp32 [N,2,H1,W1]", "U2": "noise fp32 [N,2,H2,W2]"}
    inputs = [fp(n, "F" if n in ("MW", "MB", "U1", "U2") else "T", docs[n],
                 **({"param_option": opt} if n in ("U1", "U2") else {})) for n in INPUTS]
    return defs.OpSchema(
        SPARSE_BLOCK, DOMAIN, 1,
        doc="One sparse residual block with its masks (docs/design.md 3.1-3.4); TensorRT plugin sai::SparseBlock.",
        inputs=inputs, outputs=[fp("Y", "T", "output [N,Cout,H2,W2]")],
        type_constraints=[("T", types, "activations and weights"), ("F", ["tensor(float)"], "masks, noise")],
        attributes=[attr(n, kind, n, required=False) for n, kind in (
            ("stride_a", t.INT), ("stride_b", t.INT), ("relu_b", t.INT), ("down_stride", t.INT),
            ("offset_stride", t.INT), ("mask_strides", t.INTS), ("sigma1", t.FLOAT), ("sigma2", t.FLOAT),
            ("kernel_size", t.INT), ("eps", t.FLOAT), ("temperature", t.FLOAT), ("grid_interval", t.INT),
            ("plugin_version", t.STRING), ("plugin_namespace", t.STRING))],
    )


def translate_sparse_block(x, mask_weight, mask_bias, wa, ba, wb, bb, wc, tail_bias, wd, bd, wo, bo, noise1,
                           noise2, block, stride_a, stride_b, relu_b, down_stride, offset_stride, mask_strides,
                           sigma1, sigma2, kernel_size, eps, temperature, grid_interval):
    """``sai_export::sparse_block`` -> ``sai::SparseBlock`` (absent inputs: empty names, filled after export)."""
    from onnxscript.values import Op, Opset

    op = Op(Opset(DOMAIN, 1), SPARSE_BLOCK, sparse_block_schema())
    inputs = [x, mask_weight, mask_bias, wa, ba, wb, bb, wc, tail_bias, wd, bd, wo, bo]
    if noise1 is not None:
        inputs += [noise1, noise2]
    return op(*inputs, stride_a=int(stride_a), stride_b=int(stride_b), relu_b=int(relu_b),
              down_stride=int(down_stride), offset_stride=int(offset_stride),
              mask_strides=[int(v) for v in mask_strides], sigma1=float(sigma1), sigma2=float(sigma2),
              kernel_size=int(kernel_size), eps=float(eps), temperature=float(temperature),
              grid_interval=int(grid_interval), plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)


def translations() -> dict:
    return {torch.ops.sai_export.sparse_block.default: translate_sparse_block}


def fill_absent_inputs(model) -> list[str]:
    """Every absent input (empty name) of a SparseBlock node -> a ``[0]`` initializer of its weight type
    (WA's: the activations'); each node named ``<block>/block`` (call before the torch metadata is
    stripped: the block names come from the exporter's name scopes). Returns the blocks, graph order."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    from sai.exporter.graph import _block_of, _scopes  # the per-op nodes' block names (fix_custom_nodes)

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    used = {n.name for n in g.node}
    blocks = []
    for node in g.node:
        if node.domain != DOMAIN or node.op_type != SPARSE_BLOCK:
            continue
        block = _block_of(_scopes(node))
        blocks.append(block)
        if f"{block}/block" not in used:
            used.discard(node.name)
            node.name = f"{block}/block"
            used.add(node.name)
        wa = inits.get(node.input[3])
        dt = wa.data_type if wa is not None else TensorProto.FLOAT
        name = f"{EMPTY_PREFIX}.{TensorProto.DataType.Name(dt).lower()}"
        while len(node.input) < 13:  # the exporter drops trailing absent inputs
            node.input.append("")
        for i, inp in enumerate(node.input):
            if i < 13 and not inp:
                if name not in inits:
                    arr = np.zeros((0,), dtype=np.float16 if dt == TensorProto.FLOAT16 else np.float32)
                    inits[name] = numpy_helper.from_array(arr, name)
                    g.initializer.append(inits[name])
                node.input[i] = name
    return blocks


def block_table(model, per_op: dict[str, dict[str, int]], fused: list[str]) -> dict[str, dict[str, int]]:
    """The export's block list with the SparseBlock nodes: ``{block: {SparseSampleConv, Interpolate,
    SparseBlock: count}}`` in graph order (``per_op``: ``graph.fix_custom_nodes``'s list; ``fused``:
    ``fill_absent_inputs``'s). Without SparseBlock nodes: ``per_op`` unchanged."""
    if not fused:
        return per_op
    empty = {SPARSE_SAMPLE_CONV: 0, INTERPOLATE: 0, SPARSE_BLOCK: 0}
    table: dict[str, dict[str, int]] = {}
    for node in model.graph.node:  # graph order: a block's first sai node
        block = node.name.split("/")[0]
        if node.domain == DOMAIN and block not in table and (block in per_op or block in fused):
            table[block] = {**empty, **per_op.get(block, {}), SPARSE_BLOCK: fused.count(block)}
    for block in [*per_op, *fused]:  # a node whose name was taken keeps its block at the end
        table.setdefault(block, {**empty, **per_op.get(block, {}), SPARSE_BLOCK: fused.count(block)})
    return table
