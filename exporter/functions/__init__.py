"""ONNX model-local functions (domain ``sai``) for the two custom ops: sparse and dense bodies.

These are the ONNX faces of ``models/ops.py: sparse_sample_conv / interpolate`` (docs/design.md 3.2,
3.3), written in onnxscript, one module per op: ``sparse_sample_conv`` and ``interpolate``. A
portable model carries them so any ONNX runtime (onnxruntime, ``polygraphy run --onnxrt``) runs the
custom nodes as is; the TensorRT target strips them and keeps the ``sai`` opset import; the
onnx-native target inlines them.

Bodies reference the calling node's attributes (``ref_attr_name``), so one function serves every
node; variants are told apart by the node's ``overload`` field (IR >= 10, set by
``graph.set_overloads``). Two kinds (``BODIES``):

- ``sparse`` (default): ``SparseSampleConv`` computes only the rows with ``M > 0``
  (NonZero -> GatherND -> MatMul -> Gather into NCHW; overload ``""`` any kernel, ``pointwise``
  1x1, ``deform`` bilinear corner gathers then MatMul; ``deform_body="dense"`` keeps ``DeformConv``);
  ``Interpolate`` as a depthwise ``Conv`` (group from the node's ``channels`` attribute).
- ``dense`` (the reference): ``Conv`` / ``DeformConv`` then mask; the Gaussian as a 1-channel Conv.
"""

from __future__ import annotations

import onnx
from onnx import FunctionProto

from . import interpolate, sparse_sample_conv
from ._script import DOMAIN, DOMAIN_VERSION

MIN_OPSET = 19  # Equal on strings and DeformConv
DEFORM_OVERLOAD = sparse_sample_conv.DEFORM_OVERLOAD
POINTWISE_OVERLOAD = sparse_sample_conv.POINTWISE_OVERLOAD

SSC = sparse_sample_conv.NAME
INTERP = interpolate.NAME
OP_TYPES = (SSC, INTERP)

from sai.constants import BODIES  # noqa: E402  (one list of the bodies, the CLI's choices)

DEFORM_BODIES = ("dense", "sparse")  # the deformable overload's body, chosen apart from ``body``

__all__ = [
    "BODIES", "DEFORM_BODIES", "DEFORM_OVERLOAD", "DOMAIN", "DOMAIN_VERSION",
    "INTERP", "MIN_OPSET", "OP_TYPES", "POINTWISE_OVERLOAD", "SSC", "all_functions", "attach_functions",
    "inline_functions", "interpolate", "sparse_sample_conv", "strip_functions",
]


def all_functions(opset: int, body: str = "dense", channels: bool = True,
                  deform_body: str | None = None) -> list[FunctionProto]:
    """The local functions of one body kind (``BODIES``).

    ``dense``: Conv / DeformConv then mask; the 2-D Gaussian as a 1-channel Conv (the reference).
    ``sparse``: SparseSampleConv gathers only the rows with M > 0 (``sparse_sample_conv.
    sparse_function``); Interpolate as a depthwise Conv when the nodes carry ``channels``
    (``channels=False``: separable 1-channel convs). ``deform_body`` (``DEFORM_BODIES``; default
    the same kind as ``body``) picks the deformable overload:
    ``dense`` DeformConv then mask, or ``sparse`` (bilinear corner gathers + MatMul at M > 0; faster
    than DeformConv below about half density: docs/benchmarks.md has the measured numbers). So the
    sparse body is the deformable default of ``body="sparse"``.
    """
    if body not in BODIES:
        raise ValueError(f"body must be one of {BODIES}, got {body!r}")
    deform_body = body if deform_body is None else deform_body
    if deform_body not in DEFORM_BODIES:
        raise ValueError(f"deform_body must be one of {DEFORM_BODIES}, got {deform_body!r}")
    ssc = sparse_sample_conv
    deform = ssc.deform_sparse_function(opset) if deform_body == "sparse" else ssc.deform_dense_function(opset)
    if body == "dense":
        return [ssc.dense_function(opset), deform, interpolate.plain_function(opset)]
    interp = interpolate.depthwise_function(opset) if channels else interpolate.separable_function(opset)
    return [ssc.sparse_function(opset), ssc.pointwise_function(opset), deform, interp]


def attach_functions(model: onnx.ModelProto, opset: int, body: str = "sparse",
                     deform_body: str | None = None) -> None:
    """Add the ``sai`` local functions (``body``: sparse | dense; ``deform_body``: see ``all_functions``)
    for the variants the graph uses (after ``graph.fill_missing_bias`` and ``graph.set_overloads``)."""
    from sai.exporter import graph

    strip_functions(model)
    if body == "sparse":
        graph.fill_missing_bias(model)
    graph.set_overloads(model, pointwise=body == "sparse")
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    interps = [n for n in nodes if n.op_type == INTERP]
    channels = all(any(a.name == "channels" and a.i > 0 for a in n.attribute) for n in interps)
    used = {(n.op_type, n.overload) for n in nodes}
    for fn in all_functions(opset, body, channels=channels, deform_body=deform_body):
        if (fn.name, fn.overload) in used:
            model.functions.append(fn)


def inline_functions(model: onnx.ModelProto) -> None:
    """Replace every ``sai`` node by its function body (``onnx-native`` target: standard ops only)."""
    import onnx.inliner

    inlined = onnx.inliner.inline_local_functions(model)
    model.CopyFrom(inlined)
    keep = [imp for imp in model.opset_import if imp.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def strip_functions(model: onnx.ModelProto) -> None:
    """Remove the ``sai`` local functions; the ``sai`` opset import stays (TensorRT target)."""
    keep = [fn for fn in model.functions if fn.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
