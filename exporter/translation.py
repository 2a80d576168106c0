"""Dynamo translations of ``torch.ops.sai.*`` into plain ``sai`` custom nodes (docs/design.md 3.2, 3.3).

The nodes are built with ``onnxscript.values.Op`` from Python ``OpSchema`` objects that are never
registered globally (docs/design.md 5). torch.export drops default arguments, so every attribute is
written explicitly. A deformable node without bias gets an empty bias slot here; the exporter
replaces it with a zero initializer afterwards (a node never keeps an empty input name).
"""

from __future__ import annotations

import functools

from onnx import defs

from sai.constants import PLUGIN_NAMESPACE, PLUGIN_VERSION
from sai.exporter.functions import DOMAIN, DOMAIN_VERSION, INTERP, SSC

_FP = defs.OpSchema.FormalParameter
_OPTIONAL = defs.OpSchema.FormalParameterOption.Optional
_A = defs.OpSchema.Attribute
_T = defs.OpSchema.AttrType
_TYPES = ["tensor(float)", "tensor(float16)"]


def sparse_sample_conv_schema() -> defs.OpSchema:
    return defs.OpSchema(
        SSC, DOMAIN, DOMAIN_VERSION,
        doc="Convolution computed only where M > 0, exactly 0 elsewhere (docs/design.md 3.2).",
        inputs=[
            _FP("X", "T", "input [N,Cin,H,W]"),
            _FP("M", "T", "mask [N,1,Ho,Wo]"),
            _FP("W", "T", "weight [Cout,Cin/group,kh,kw]"),
            _FP("B", "T", "bias [Cout]", param_option=_OPTIONAL),
            _FP("Offset", "T", "deformable offsets [N,2*dg*kh*kw,Ho,Wo]", param_option=_OPTIONAL),
        ],
        outputs=[_FP("Y", "T", "output [N,Cout,Ho,Wo]")],
        type_constraints=[("T", _TYPES, "float tensors")],
        attributes=[
            _A("strides", _T.INTS, "strides", required=False),
            _A("pads", _T.INTS, "ONNX pads [top, left, bottom, right]", required=False),
            _A("dilations", _T.INTS, "dilations", required=False),
            _A("group", _T.INT, "groups", required=False),
            _A("deform_groups", _T.INT, "deformable offset groups", required=False),
            _A("activation", _T.STRING, "none | relu", required=False),
            _A("plugin_version", _T.STRING, "TensorRT plugin version", required=False),
            _A("plugin_namespace", _T.STRING, "TensorRT plugin namespace", required=False),
        ],
    )


def interpolate_schema() -> defs.OpSchema:
    return defs.OpSchema(
        INTERP, DOMAIN, DOMAIN_VERSION,
        doc="Gaussian interpolation of the positions where M < 1 (docs/design.md 3.3).",
        inputs=[_FP("F", "T", "feature [N,C,H,W]"), _FP("M", "T", "mask [N,1,H,W]")],
        outputs=[_FP("Y", "T", "output [N,C,H,W]")],
        type_constraints=[("T", _TYPES, "float tensors")],
        attributes=[
            _A("kernel_size", _T.INT, "odd Gaussian window", required=False),
            _A("sigma", _T.FLOAT, "the block's learned scalar", required=False),
            _A("eps", _T.FLOAT, "denominator epsilon", required=False),
            _A("channels", _T.INT, "C of F (lets the portable body run a depthwise Conv; plugins ignore it)",
               required=False),
            _A("plugin_version", _T.STRING, "TensorRT plugin version", required=False),
            _A("plugin_namespace", _T.STRING, "TensorRT plugin namespace", required=False),
        ],
    )


@functools.cache
def _ops():
    from onnxscript.values import Op, Opset

    opset = Opset(DOMAIN, DOMAIN_VERSION)
    return Op(opset, SSC, sparse_sample_conv_schema()), Op(opset, INTERP, interpolate_schema())


def translate_sparse_sample_conv(
    x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups, activation
):
    """``sai::sparse_sample_conv`` -> ``sai::SparseSampleConv`` (input order X, M, W, B, Offset)."""
    ssc, _ = _ops()
    inputs = [x, mask, weight]
    if bias is not None or offset is not None:
        inputs.append(bias)  # None with an offset: filled by a zero initializer after export
    if offset is not None:
        inputs.append(offset)
    return ssc(
        *inputs,
        strides=[int(v) for v in stride],
        pads=[int(v) for v in pads],
        dilations=[int(v) for v in dilation],
        group=int(groups),
        deform_groups=int(deform_groups),
        activation=str(activation),
        plugin_version=PLUGIN_VERSION,
        plugin_namespace=PLUGIN_NAMESPACE,
    )


def translate_interpolate(feature, mask, sigma, kernel_size, eps):
    """``sai::interpolate`` -> ``sai::Interpolate``."""
    _, interp = _ops()
    extra = {}
    channels = feature.shape[1] if feature.shape is not None and len(feature.shape) == 4 else None
    if isinstance(channels, int) or (hasattr(channels, "__index__") and not isinstance(channels, str)):
        extra["channels"] = int(channels)
    return interp(
        feature, mask,
        **extra,
        kernel_size=int(kernel_size),
        sigma=float(sigma),
        eps=float(eps),
        plugin_version=PLUGIN_VERSION,
        plugin_namespace=PLUGIN_NAMESPACE,
    )


def translate_adaptive_avg_pool2d(x, output_size):
    """``aten.adaptive_avg_pool2d`` to 1x1 (the classifier head) as one ``GlobalAveragePool``.

    Translating it here means no op of our graphs needs a decomposition, so the exporter can skip
    its whole-graph re-trace (see ``export._skip_noop_decomposition``).
    """
    from onnxscript import opset18 as op

    if [int(v) for v in output_size] != [1, 1]:
        raise NotImplementedError(f"adaptive_avg_pool2d to {list(output_size)}: only 1x1 is exported")
    return op.GlobalAveragePool(x)


def translation_table() -> dict:
    import torch

    import sai.models.ops  # noqa: F401  (registers torch.ops.sai.*)
    from sai.exporter.maskop import translate_sampling_mask

    return {
        torch.ops.sai.sparse_sample_conv.default: translate_sparse_sample_conv,
        torch.ops.sai.interpolate.default: translate_interpolate,
        torch.ops.sai_export.sampling_mask.default: translate_sampling_mask,
        torch.ops.aten.adaptive_avg_pool2d.default: translate_adaptive_avg_pool2d,
    }
