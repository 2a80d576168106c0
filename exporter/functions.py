"""ONNX model-local functions (domain ``sai``) with dense-equivalent bodies for the two custom ops.

These are the ONNX faces of ``models/ops.py: sparse_sample_conv / interpolate`` (DESIGN.md 3.2,
3.3). A portable model carries them so any ONNX runtime (onnxruntime, ``polygraphy run --onnxrt``)
runs the custom nodes as is; the TensorRT target strips them and keeps the ``sai`` opset import.

Bodies reference the calling node's attributes (``ref_attr_name``), so one function serves every
node. ``SparseSampleConv`` has two bodies told apart by the node's ``overload`` field (IR >= 10):
``""`` (Conv, inputs X, M, W [, B]) and ``"deform"`` (DeformConv, inputs X, M, W, B, Offset).
The activation is selected in the body with a string compare (``Equal`` on strings, opset >= 19).
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, FunctionProto, TensorProto, helper

DOMAIN = "sai"
DOMAIN_VERSION = 1
MIN_OPSET = 19  # Equal on strings and DeformConv
DEFORM_OVERLOAD = "deform"

SSC = "SparseSampleConv"
INTERP = "Interpolate"
OP_TYPES = (SSC, INTERP)


def _ref(name: str, attr_type: int, ref: str | None = None) -> AttributeProto:
    a = AttributeProto()
    a.name = name
    a.ref_attr_name = ref or name
    a.type = attr_type
    return a


def _node(op: str, inputs: list[str], outputs: list[str], refs=(), **attrs) -> onnx.NodeProto:
    n = helper.make_node(op, inputs, outputs, **attrs)
    n.attribute.extend(refs)
    return n


def _conv_attr_defaults(with_activation: bool = True) -> list[AttributeProto]:
    out = [
        helper.make_attribute("strides", [1, 1]),
        helper.make_attribute("pads", [0, 0, 0, 0]),
        helper.make_attribute("dilations", [1, 1]),
        helper.make_attribute("group", 1),
        helper.make_attribute("deform_groups", 1),
        helper.make_attribute("plugin_version", "1"),
        helper.make_attribute("plugin_namespace", "sai"),
    ]
    if with_activation:
        out.append(helper.make_attribute("activation", "none"))
    return out


def _activation_and_mask(y: str) -> list[onnx.NodeProto]:
    """``Y = where(M > 0, act(y), 0)`` with ``act`` chosen by the string attribute ``activation``."""
    return [
        _node("Constant", [], ["act"], refs=[_ref("value_string", AttributeProto.STRING, "activation")]),
        helper.make_node("Constant", [], ["relu_name"], value_string="relu"),
        helper.make_node("Equal", ["act", "relu_name"], ["is_relu"]),
        helper.make_node("Relu", [y], ["y_relu"]),
        helper.make_node("Where", ["is_relu", "y_relu", y], ["y_act"]),
        helper.make_node("Constant", [], ["zero_f"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("CastLike", ["zero_f", "M"], ["zero_m"]),
        helper.make_node("Greater", ["M", "zero_m"], ["keep"]),
        helper.make_node("CastLike", ["zero_f", "y_act"], ["zero_y"]),
        helper.make_node("Where", ["keep", "y_act", "zero_y"], ["Y"]),
    ]


def sparse_sample_conv_function(opset: int) -> FunctionProto:
    """``SparseSampleConv`` dense body: ``Conv`` -> activation -> zero where ``M == 0``."""
    conv_refs = [
        _ref("strides", AttributeProto.INTS),
        _ref("pads", AttributeProto.INTS),
        _ref("dilations", AttributeProto.INTS),
        _ref("group", AttributeProto.INT),
    ]
    nodes = [_node("Conv", ["X", "W", "B"], ["y"], refs=conv_refs), *_activation_and_mask("y")]
    return helper.make_function(
        DOMAIN, SSC, ["X", "M", "W", "B"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=_conv_attr_defaults(),
        doc_string="Dense-equivalent body of sai::SparseSampleConv (DESIGN.md 3.2).",
    )


def sparse_sample_deform_conv_function(opset: int) -> FunctionProto:
    """``SparseSampleConv`` with ``Offset`` (overload ``deform``): ``DeformConv`` v1 body."""
    refs = [
        _ref("strides", AttributeProto.INTS),
        _ref("pads", AttributeProto.INTS),
        _ref("dilations", AttributeProto.INTS),
        _ref("group", AttributeProto.INT),
        _ref("offset_group", AttributeProto.INT, "deform_groups"),
    ]
    nodes = [_node("DeformConv", ["X", "W", "Offset", "B"], ["y"], refs=refs), *_activation_and_mask("y")]
    return helper.make_function(
        DOMAIN, SSC, ["X", "M", "W", "B", "Offset"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=_conv_attr_defaults(),
        overload=DEFORM_OVERLOAD,
        doc_string="Dense-equivalent body of sai::SparseSampleConv with Offset (deformable conv v1).",
    )


def interpolate_function(opset: int) -> FunctionProto:
    """``Interpolate`` dense body: the formula of DESIGN.md 3.3 in standard ops.

    The depthwise Gaussian sum runs as a 1-channel ``Conv`` over ``[N*C, 1, H, W]`` (a ``group``
    attribute cannot depend on the channel count inside a function); ``auto_pad=SAME_UPPER`` with
    an odd kernel and stride 1 is exactly a zero padding of ``r`` on every side.
    """
    f = TensorProto.FLOAT
    i64 = TensorProto.INT64

    def const(name, dtype, dims, vals):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, vals))

    nodes = [
        _node("Constant", [], ["ks"], refs=[_ref("value_int", AttributeProto.INT, "kernel_size")]),
        _node("Constant", [], ["sigma"], refs=[_ref("value_float", AttributeProto.FLOAT, "sigma")]),
        _node("Constant", [], ["eps"], refs=[_ref("value_float", AttributeProto.FLOAT, "eps")]),
        const("one_i", i64, [], [1]),
        const("two_i", i64, [], [2]),
        const("half_f", f, [], [0.5]),
        const("inv_2pi", f, [], [0.15915494309189535]),
        const("one_f", f, [], [1.0]),
        const("shape_11kk_head", i64, [2], [1, 1]),
        const("shape_m1_1", i64, [2], [-1, 1]),
        const("ax0", i64, [1], [0]),
        const("ax1", i64, [1], [1]),
        # r = (k - 1) / 2; i = [-r .. r] as float
        helper.make_node("Sub", ["ks", "one_i"], ["km1"]),
        helper.make_node("Div", ["km1", "two_i"], ["r"]),
        helper.make_node("Neg", ["r"], ["neg_r"]),
        helper.make_node("Add", ["r", "one_i"], ["r1"]),
        helper.make_node("Range", ["neg_r", "r1", "one_i"], ["ii"]),
        helper.make_node("Cast", ["ii"], ["fi"], to=f),
        helper.make_node("Mul", ["fi", "fi"], ["fi2"]),
        helper.make_node("Unsqueeze", ["fi2", "ax1"], ["fi2_col"]),
        helper.make_node("Unsqueeze", ["fi2", "ax0"], ["fi2_row"]),
        helper.make_node("Add", ["fi2_col", "fi2_row"], ["d2"]),
        # K = s^2/(2 pi) * exp(-(s^2/2) * d2)
        helper.make_node("Mul", ["sigma", "sigma"], ["s2"]),
        helper.make_node("Mul", ["s2", "half_f"], ["s2h"]),
        helper.make_node("Mul", ["d2", "s2h"], ["e_arg"]),
        helper.make_node("Neg", ["e_arg"], ["e_neg"]),
        helper.make_node("Exp", ["e_neg"], ["g"]),
        helper.make_node("Mul", ["s2", "inv_2pi"], ["scale"]),
        helper.make_node("Mul", ["g", "scale"], ["k2"]),
        helper.make_node("Unsqueeze", ["ks", "ax0"], ["ks1"]),
        helper.make_node("Concat", ["shape_11kk_head", "ks1", "ks1"], ["kshape"], axis=0),
        helper.make_node("Reshape", ["k2", "kshape"], ["k4_f"]),
        helper.make_node("CastLike", ["k4_f", "F"], ["K"]),
        # num = depthwise_conv(F * M, K); den = conv(M, K) + eps
        helper.make_node("Mul", ["F", "M"], ["fm"]),
        helper.make_node("Shape", ["F"], ["fshape"]),
        helper.make_node("Shape", ["F"], ["hw"], start=2),
        helper.make_node("Concat", ["shape_m1_1", "hw"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["fm", "flat_shape"], ["fm_flat"]),
        helper.make_node("Conv", ["fm_flat", "K"], ["num_flat"], auto_pad="SAME_UPPER"),
        helper.make_node("Reshape", ["num_flat", "fshape"], ["num"]),
        helper.make_node("Conv", ["M", "K"], ["den0"], auto_pad="SAME_UPPER"),
        helper.make_node("CastLike", ["eps", "F"], ["eps_t"]),
        helper.make_node("Add", ["den0", "eps_t"], ["den"]),
        # out = M * F + (1 - M) * num / den
        helper.make_node("Div", ["num", "den"], ["interp"]),
        helper.make_node("CastLike", ["one_f", "M"], ["one_m"]),
        helper.make_node("Sub", ["one_m", "M"], ["inv_m"]),
        helper.make_node("Mul", ["inv_m", "interp"], ["fill"]),
        helper.make_node("Add", ["fm", "fill"], ["Y"]),
    ]
    return helper.make_function(
        DOMAIN, INTERP, ["F", "M"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=[
            helper.make_attribute("kernel_size", 7),
            helper.make_attribute("sigma", 1.0),
            helper.make_attribute("eps", 1e-5),
            helper.make_attribute("plugin_version", "1"),
            helper.make_attribute("plugin_namespace", "sai"),
        ],
        doc_string="Dense-equivalent body of sai::Interpolate (DESIGN.md 3.3).",
    )


def all_functions(opset: int) -> list[FunctionProto]:
    return [
        sparse_sample_conv_function(opset),
        sparse_sample_deform_conv_function(opset),
        interpolate_function(opset),
    ]


def attach_functions(model: onnx.ModelProto, opset: int) -> None:
    """Add the ``sai`` local functions for the variants the graph uses (call after export)."""
    strip_functions(model)
    used = {(n.op_type, n.overload) for n in model.graph.node if n.domain == DOMAIN}
    for fn in all_functions(opset):
        if (fn.name, fn.overload) in used:
            model.functions.append(fn)


def strip_functions(model: onnx.ModelProto) -> None:
    """Remove the ``sai`` local functions; the ``sai`` opset import stays (TensorRT target)."""
    keep = [fn for fn in model.functions if fn.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
