"""ONNX model-local functions (domain ``sai``) for the two custom ops: sparse and dense bodies.

These are the ONNX faces of ``models/ops.py: sparse_sample_conv / interpolate`` (docs/design.md 3.2,
3.3). A portable model carries them so any ONNX runtime (onnxruntime, ``polygraphy run --onnxrt``)
runs the custom nodes as is; the TensorRT target strips them and keeps the ``sai`` opset import;
the onnx-native target inlines them.

Bodies reference the calling node's attributes (``ref_attr_name``), so one function serves every
node; variants are told apart by the node's ``overload`` field (IR >= 10). Two kinds (``BODIES``):

- ``sparse`` (default): ``SparseSampleConv`` computes only the rows with ``M > 0``
  (NonZero -> GatherND -> MatMul -> Gather into NCHW; overload ``""`` any kernel, ``pointwise``
  1x1, ``deform`` bilinear corner gathers then MatMul; ``deform_body="dense"`` keeps ``DeformConv``);
  ``Interpolate`` as a depthwise ``Conv`` (group from the node's ``channels`` attribute).
- ``dense`` (the reference): ``Conv`` / ``DeformConv`` then mask; the Gaussian as a 1-channel Conv.

The activation is selected in the body from the string attribute (``Equal`` on strings, opset >= 19).
"""

from __future__ import annotations

import onnx
from onnx import AttributeProto, FunctionProto, TensorProto, helper

DOMAIN = "sai"
DOMAIN_VERSION = 1
MIN_OPSET = 19  # Equal on strings and DeformConv
DEFORM_OVERLOAD = "deform"
POINTWISE_OVERLOAD = "pointwise"  # sparse body only: 1x1 kernel, zero pads, one group

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
        doc_string="Dense-equivalent body of sai::SparseSampleConv (docs/design.md 3.2).",
    )


def _rows_activation_and_output() -> list[onnx.NodeProto]:
    """Sparse bodies' tail: ``rows_b [K, Cout]`` -> activation -> ``Y [N, Cout, Ho, Wo]``.

    Needs ``zero_f``, ``keep`` (M > 0), ``kshape`` ([K]), ``n1``, ``howo``, ``cout1``, ``ax0``,
    ``neg1``, ``c0``, ``c1``, ``X``.
    """
    return [
        # activation on the computed rows only, one pass: max(y, 0) for relu, max(y, -inf) = y for none
        _node("Constant", [], ["act"], refs=[_ref("value_string", AttributeProto.STRING, "activation")]),
        helper.make_node("Constant", [], ["relu_name"], value_string="relu"),
        helper.make_node("Equal", ["act", "relu_name"], ["is_relu"]),
        helper.make_node("Constant", [], ["neg_inf_f"], value=helper.make_tensor(
            "ninf", TensorProto.FLOAT, [], [float("-inf")])),
        helper.make_node("Where", ["is_relu", "zero_f", "neg_inf_f"], ["floor_f"]),
        helper.make_node("CastLike", ["floor_f", "rows_b"], ["floor"]),
        helper.make_node("Max", ["rows_b", "floor"], ["rows_act"]),
        # output: row r of every active position, a zero row elsewhere (row K), gathered in one pass
        # (NonZero lists positions in row-major order, so a position's row is its rank in the mask)
        helper.make_node("CastLike", ["zero_f", "X"], ["zero_x"]),
        helper.make_node("Expand", ["zero_x", "cout1"], ["zrow"]),
        helper.make_node("Unsqueeze", ["zrow", "ax0"], ["zrow2"]),
        helper.make_node("Concat", ["rows_act", "zrow2"], ["rows_z"], axis=0),  # [K + 1, Cout]
        helper.make_node("Reshape", ["keep", "neg1"], ["keep_flat"]),
        helper.make_node("Cast", ["keep_flat"], ["keep_i"], to=TensorProto.INT64),
        helper.make_node("CumSum", ["keep_i", "c0"], ["csum"]),
        helper.make_node("Sub", ["csum", "c1"], ["rank"]),
        helper.make_node("Squeeze", ["kshape"], ["k0"]),
        helper.make_node("Where", ["keep_flat", "rank", "k0"], ["rowmap"]),  # [N*Ho*Wo]
        helper.make_node("Gather", ["rows_z", "rowmap"], ["yflat"], axis=0),  # [N*Ho*Wo, Cout]
        helper.make_node("Concat", ["n1", "howo", "cout1"], ["yshape"], axis=0),
        helper.make_node("Reshape", ["yflat", "yshape"], ["ynhwc"]),
        helper.make_node("Transpose", ["ynhwc"], ["Y"], perm=[0, 3, 1, 2]),
    ]


def _grouped_matmul_rows_and_output() -> list[onnx.NodeProto]:
    """Sparse bodies' GEMM and tail: ``cols3 [g, K, kh*kw*Cg]`` times the weights as
    ``[g, kh*kw*Cg, Cout/g]`` -> rows ``[K, Cout]`` + ``B`` -> ``_rows_activation_and_output``.

    Needs ``cols3``, ``W``, ``B``, ``g1``, ``coutg1``, ``cg1``, ``khw``, ``neg1``, ``kshape``, ``cout1``
    (and what ``_rows_activation_and_output`` needs).
    """
    return [
        # weights [Cout, Cg, kh, kw] -> [g, kh*kw*Cg, Cout/g] (tap-major, channel-minor like cols3)
        helper.make_node("Concat", ["g1", "coutg1", "cg1", "khw"], ["w5shape"], axis=0),
        helper.make_node("Reshape", ["W", "w5shape"], ["w5"]),
        helper.make_node("Transpose", ["w5"], ["w5t"], perm=[0, 3, 4, 2, 1]),
        helper.make_node("Concat", ["g1", "neg1", "coutg1"], ["wmshape"], axis=0),
        helper.make_node("Reshape", ["w5t", "wmshape"], ["wmat"]),
        helper.make_node("MatMul", ["cols3", "wmat"], ["yg"]),  # [g, K, Cout/g]
        helper.make_node("Transpose", ["yg"], ["ykg"], perm=[1, 0, 2]),
        helper.make_node("Concat", ["kshape", "cout1"], ["rowshape"], axis=0),
        helper.make_node("Reshape", ["ykg", "rowshape"], ["rows"], allowzero=1),
        helper.make_node("Add", ["rows", "B"], ["rows_b"]),
        *_rows_activation_and_output(),
    ]


def sparse_sample_conv_sparse_function(opset: int) -> FunctionProto:
    """``SparseSampleConv`` sparse body: compute only the rows where ``M > 0`` (docs/design.md 1).

    ``NonZero(M > 0)`` -> (n, oy, ox) -> tap coordinates in the padded input -> ``GatherND`` from
    ``[g, N, Hp, Wp, Cin/g]`` (one transpose of the input) -> ``MatMul`` with the weights as
    ``[g, kh*kw*Cin/g, Cout/g]`` -> bias, activation -> every output position gathers its row (or a
    zero row; one ``Gather``, measured faster than ``ScatterND`` into an expanded zero tensor) -> NCHW. Exact (same products, summed by a GEMM instead of a convolution); rows with
    ``M == 0`` stay exactly 0. Any kernel size, strides, dilations, groups and batch.
    """
    i64 = TensorProto.INT64

    def const(name, vals, dims=None):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, i64, [len(vals)] if dims is None else dims, vals))

    nodes = [
        _node("Constant", [], ["pads"], refs=[_ref("value_ints", AttributeProto.INTS, "pads")]),
        _node("Constant", [], ["strides"], refs=[_ref("value_ints", AttributeProto.INTS, "strides")]),
        _node("Constant", [], ["dil"], refs=[_ref("value_ints", AttributeProto.INTS, "dilations")]),
        _node("Constant", [], ["g"], refs=[_ref("value_int", AttributeProto.INT, "group")]),
        const("c0", [0], []), const("c1", [1], []),
        const("ax0", [0]), const("ax1", [1]), const("ax_hw", [2, 3]), const("one1", [1]),
        const("neg1", [-1]), const("nhw_rows", [0, 2, 3]), const("gshape4", [-1, 1, 1, 1]), const("ax3", [3]),
        const("two1", [2]), const("four1", [4]), const("zeros2", [0, 0]),
        helper.make_node("Unsqueeze", ["g", "ax0"], ["g1"]),
        # shapes
        # N from M, not X: a Shape consumer of X would stop onnxruntime from folding X's layout
        # Transpose into a neighbouring Conv's NCHWc reorder
        helper.make_node("Shape", ["W"], ["wshape"]),
        helper.make_node("Shape", ["M"], ["mshape"]),
        helper.make_node("Slice", ["mshape", "ax0", "one1"], ["n1"]),
        helper.make_node("Slice", ["wshape", "ax0", "one1"], ["cout1"]),
        helper.make_node("Gather", ["wshape", "ax1"], ["cg1"], axis=0),
        helper.make_node("Gather", ["wshape", "ax_hw"], ["khw"], axis=0),
        helper.make_node("Gather", ["mshape", "ax_hw"], ["howo"], axis=0),
        helper.make_node("Div", ["cout1", "g1"], ["coutg1"]),
        # input: pad H/W (ONNX pads order = Pad with axes [2, 3]), NHWC, channels split by group
        # (8-value pads, no Pad ``axes``: onnxruntime 1.31's transpose optimizer mis-handles ``axes``
        # when it pushes the neighbouring Transposes through this Pad)
        helper.make_node("Slice", ["pads", "ax0", "two1"], ["pads_begin"]),
        helper.make_node("Slice", ["pads", "two1", "four1"], ["pads_end"]),
        helper.make_node("Concat", ["zeros2", "pads_begin", "zeros2", "pads_end"], ["pads8"], axis=0),
        helper.make_node("Pad", ["X", "pads8"], ["xp"]),
        helper.make_node("Transpose", ["xp"], ["xnhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Shape", ["xp"], ["xpshape4"]),
        helper.make_node("Gather", ["xpshape4", "nhw_rows"], ["xpshape"], axis=0),
        helper.make_node("Concat", ["xpshape", "g1", "cg1"], ["x5shape"], axis=0),
        helper.make_node("Reshape", ["xnhwc", "x5shape"], ["xg"]),  # [N, Hp, Wp, g, Cg]
        # active positions (n, oy, ox) -> [K, 3]
        helper.make_node("Constant", [], ["zero_f"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("CastLike", ["zero_f", "M"], ["zero_m"]),
        helper.make_node("Greater", ["M", "zero_m"], ["keep"]),
        helper.make_node("NonZero", ["keep"], ["nz"]),
        helper.make_node("Gather", ["nz", "nhw_rows"], ["nz3"], axis=0),
        helper.make_node("Transpose", ["nz3"], ["pos"], perm=[1, 0]),
        # tap offsets [T, 3] = (0, ky*dh, kx*dw)
        helper.make_node("Concat", ["one1", "strides"], ["step3"], axis=0),
        helper.make_node("Mul", ["pos", "step3"], ["base"]),
        helper.make_node("Gather", ["khw", "c0"], ["kh"], axis=0),
        helper.make_node("Gather", ["khw", "c1"], ["kw"], axis=0),
        helper.make_node("Gather", ["dil", "c0"], ["dh"], axis=0),
        helper.make_node("Gather", ["dil", "c1"], ["dw"], axis=0),
        helper.make_node("Range", ["c0", "kh", "c1"], ["ky"]),
        helper.make_node("Range", ["c0", "kw", "c1"], ["kx"]),
        helper.make_node("Mul", ["ky", "dh"], ["dy"]),
        helper.make_node("Mul", ["kx", "dw"], ["dx"]),
        helper.make_node("Unsqueeze", ["dy", "ax1"], ["dy_col"]),
        helper.make_node("Unsqueeze", ["dx", "ax0"], ["dx_row"]),
        helper.make_node("Add", ["dy_col", "dx_row"], ["dxy0"]),  # [kh, kw], for the grid shape
        helper.make_node("Mul", ["dxy0", "c0"], ["zgrid"]),
        helper.make_node("Add", ["dy_col", "zgrid"], ["dyg"]),
        helper.make_node("Add", ["dx_row", "zgrid"], ["dxg"]),
        helper.make_node("Reshape", ["zgrid", "neg1"], ["t0"]),
        helper.make_node("Reshape", ["dyg", "neg1"], ["t1"]),
        helper.make_node("Reshape", ["dxg", "neg1"], ["t2"]),
        helper.make_node("Unsqueeze", ["t0", "ax1"], ["t0c"]),
        helper.make_node("Unsqueeze", ["t1", "ax1"], ["t1c"]),
        helper.make_node("Unsqueeze", ["t2", "ax1"], ["t2c"]),
        helper.make_node("Concat", ["t0c", "t1c", "t2c"], ["taps"], axis=1),
        # indices [g, K, T, 4] = (n, iy, ix, group) -> gathered [g, K, T, Cg] -> [g, K, T*Cg]
        helper.make_node("Unsqueeze", ["base", "ax1"], ["base3"]),
        helper.make_node("Unsqueeze", ["taps", "ax0"], ["taps3"]),
        helper.make_node("Add", ["base3", "taps3"], ["idx"]),  # [K, T, 3]
        helper.make_node("Unsqueeze", ["idx", "ax0"], ["idx4"]),  # [1, K, T, 3]
        helper.make_node("Range", ["c0", "g", "c1"], ["gi"]),
        helper.make_node("Reshape", ["gi", "gshape4"], ["gi4"]),  # [g, 1, 1, 1]
        helper.make_node("Concat", ["g1", "one1", "one1", "one1"], ["gexp"], axis=0),
        helper.make_node("Expand", ["idx4", "gexp"], ["idxg3"]),  # [g, K, T, 3]
        helper.make_node("Slice", ["idxg3", "ax0", "one1", "ax3"], ["col0"]),
        helper.make_node("Mul", ["col0", "c0"], ["col0z"]),
        helper.make_node("Add", ["col0z", "gi4"], ["gcol"]),  # [g, K, T, 1] = group index
        helper.make_node("Concat", ["idxg3", "gcol"], ["idxg"], axis=3),
        helper.make_node("GatherND", ["xg", "idxg"], ["cols"]),
        helper.make_node("Shape", ["pos"], ["kshape"], start=0, end=1),
        helper.make_node("ReduceProd", ["khw"], ["t1d"], keepdims=1),
        helper.make_node("Mul", ["t1d", "cg1"], ["tcg"]),
        helper.make_node("Concat", ["g1", "kshape", "tcg"], ["cols3shape"], axis=0),
        helper.make_node("Reshape", ["cols", "cols3shape"], ["cols3"], allowzero=1),
        *_grouped_matmul_rows_and_output(),
    ]
    return helper.make_function(
        DOMAIN, SSC, ["X", "M", "W", "B"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=_conv_attr_defaults(),
        doc_string="Sparse body of sai::SparseSampleConv: only the rows with M > 0 (docs/design.md 1, 3.2).",
    )


def sparse_sample_conv_pointwise_function(opset: int) -> FunctionProto:
    """``SparseSampleConv`` sparse body for 1x1 kernels, zero pads, one group (overload ``pointwise``).

    The bottleneck's conv1 and (reordered) conv3: no Pad copy and no taps; the input's NHWC
    Transpose directly follows the previous sparse conv's NCHW Transpose, so onnxruntime cancels
    the pair (conv2 -> conv3 stays NHWC). Rows: ``GatherND`` at ``(n, oy*sh, ox*sw)`` -> ``MatMul``.
    """
    i64 = TensorProto.INT64

    def const(name, vals, dims=None):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, i64, [len(vals)] if dims is None else dims, vals))

    nodes = [
        _node("Constant", [], ["strides"], refs=[_ref("value_ints", AttributeProto.INTS, "strides")]),
        const("c0", [0], []), const("c1", [1], []), const("ax0", [0]), const("one1", [1]), const("neg1", [-1]),
        const("nhw_rows", [0, 2, 3]), const("ax_hw", [2, 3]),
        helper.make_node("Shape", ["W"], ["wshape"]),
        helper.make_node("Slice", ["wshape", "ax0", "one1"], ["cout1"]),
        helper.make_node("Shape", ["M"], ["mshape"]),
        helper.make_node("Slice", ["mshape", "ax0", "one1"], ["n1"]),  # N from M (see the 3x3 body)
        helper.make_node("Gather", ["mshape", "ax_hw"], ["howo"], axis=0),
        helper.make_node("Transpose", ["X"], ["xnhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Constant", [], ["zero_f"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("CastLike", ["zero_f", "M"], ["zero_m"]),
        helper.make_node("Greater", ["M", "zero_m"], ["keep"]),
        helper.make_node("NonZero", ["keep"], ["nz"]),
        helper.make_node("Gather", ["nz", "nhw_rows"], ["nz3"], axis=0),
        helper.make_node("Transpose", ["nz3"], ["pos"], perm=[1, 0]),
        helper.make_node("Concat", ["one1", "strides"], ["step3"], axis=0),
        helper.make_node("Mul", ["pos", "step3"], ["base"]),
        helper.make_node("GatherND", ["xnhwc", "base"], ["cols"]),  # [K, Cin]
        helper.make_node("Concat", ["cout1", "neg1"], ["w2shape"], axis=0),
        helper.make_node("Reshape", ["W", "w2shape"], ["w2"]),
        helper.make_node("Transpose", ["w2"], ["wmat"], perm=[1, 0]),
        helper.make_node("MatMul", ["cols", "wmat"], ["rows"]),
        helper.make_node("Add", ["rows", "B"], ["rows_b"]),
        helper.make_node("Shape", ["pos"], ["kshape"], start=0, end=1),
        *_rows_activation_and_output(),
    ]
    return helper.make_function(
        DOMAIN, SSC, ["X", "M", "W", "B"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=_conv_attr_defaults(),
        overload=POINTWISE_OVERLOAD,
        doc_string="Sparse body of sai::SparseSampleConv for 1x1 kernels (docs/design.md 1, 3.2).",
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


def sparse_sample_deform_conv_sparse_function(opset: int) -> FunctionProto:
    """``SparseSampleConv`` with ``Offset`` (overload ``deform``), sparse body: only the rows where ``M > 0``.

    ``NonZero(M > 0)`` -> (n, oy, ox) -> the offsets there (``GatherND`` from NHWC) -> per (row, tap,
    deform group) the sample point, its 4 corners and bilinear weights (weight 0 for a corner outside
    the image, index clamped into it) -> one ``Gather`` of the corner rows from ``X`` as
    ``[N*H*W*dg, Cin/dg]`` -> weighted sum over the corners -> ``[K, kh*kw, Cin]`` -> per group
    ``MatMul`` with ``W`` as ``[g, kh*kw*Cin/g, Cout/g]`` -> bias, activation -> NCHW (the tail of
    the non-deformable sparse body). DeformConv v1 semantics (docs/design.md 3.2); any kernel, strides,
    dilations, pads, groups, deform groups and batch; ``group`` and ``deform_groups`` independent.
    """
    i64 = TensorProto.INT64

    def const(name, vals, dims=None):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name, i64, [len(vals)] if dims is None else dims, vals))

    def fconst(name, vals, dims):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, dims, vals))

    nodes = [
        _node("Constant", [], ["pads"], refs=[_ref("value_ints", AttributeProto.INTS, "pads")]),
        _node("Constant", [], ["strides"], refs=[_ref("value_ints", AttributeProto.INTS, "strides")]),
        _node("Constant", [], ["dil"], refs=[_ref("value_ints", AttributeProto.INTS, "dilations")]),
        _node("Constant", [], ["g"], refs=[_ref("value_int", AttributeProto.INT, "group")]),
        _node("Constant", [], ["dg"], refs=[_ref("value_int", AttributeProto.INT, "deform_groups")]),
        const("c0", [0], []), const("c1", [1], []), const("c2", [2], []), const("c3", [3], []),
        const("ax0", [0]), const("ax1", [1]), const("ax2", [2]), const("ax3", [3]), const("ax4", [4]),
        const("ax_k1", [1, 2, 3, 4]), const("ax_dg", [0, 1, 3, 4]),
        const("ax_hw", [2, 3]), const("one1", [1]), const("two1", [2]), const("four1", [4]), const("neg1", [-1]),
        const("nhw_rows", [0, 2, 3]),
        fconst("zero_f", [0.0], []), fconst("one_f", [1.0], []), fconst("corner_f", [0.0, 1.0], [2]),
        helper.make_node("Unsqueeze", ["g", "ax0"], ["g1"]),
        helper.make_node("Unsqueeze", ["dg", "ax0"], ["dg1"]),
        # shapes
        helper.make_node("Shape", ["X"], ["xshape"]),
        helper.make_node("Shape", ["W"], ["wshape"]),
        helper.make_node("Shape", ["M"], ["mshape"]),
        helper.make_node("Slice", ["xshape", "ax0", "one1"], ["n1"]),
        helper.make_node("Gather", ["xshape", "c1"], ["cin"], axis=0),
        helper.make_node("Gather", ["xshape", "c2"], ["h"], axis=0),
        helper.make_node("Gather", ["xshape", "c3"], ["w"], axis=0),
        helper.make_node("Slice", ["wshape", "ax0", "one1"], ["cout1"]),
        helper.make_node("Gather", ["wshape", "ax1"], ["cg1"], axis=0),
        helper.make_node("Gather", ["wshape", "ax_hw"], ["khw"], axis=0),
        helper.make_node("Gather", ["mshape", "ax_hw"], ["howo"], axis=0),
        helper.make_node("Div", ["cout1", "g1"], ["coutg1"]),
        helper.make_node("Div", ["cin", "dg"], ["cdg"]),
        helper.make_node("Unsqueeze", ["cdg", "ax0"], ["cdg1"]),
        helper.make_node("ReduceProd", ["khw"], ["t1d"], keepdims=1),  # [T], T = kh*kw
        # active positions (n, oy, ox) -> [K, 3]
        helper.make_node("CastLike", ["zero_f", "M"], ["zero_m"]),
        helper.make_node("Greater", ["M", "zero_m"], ["keep"]),
        helper.make_node("NonZero", ["keep"], ["nz"]),
        helper.make_node("Gather", ["nz", "nhw_rows"], ["nz3"], axis=0),
        helper.make_node("Transpose", ["nz3"], ["pos"], perm=[1, 0]),
        helper.make_node("Shape", ["pos"], ["kshape"], start=0, end=1),
        helper.make_node("Gather", ["pos", "c0"], ["pn"], axis=1),  # [K]
        helper.make_node("Gather", ["pos", "c1"], ["poy"], axis=1),
        helper.make_node("Gather", ["pos", "c2"], ["pox"], axis=1),
        # offsets at the active positions: [K, 2*dg*T] -> [K, dg, T, 2] -> [K, T, dg, 2]
        helper.make_node("Transpose", ["Offset"], ["off_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("GatherND", ["off_nhwc", "pos"], ["offk"]),
        helper.make_node("Concat", ["kshape", "dg1", "t1d", "two1"], ["off4shape"], axis=0),
        helper.make_node("Reshape", ["offk", "off4shape"], ["off4"], allowzero=1),
        helper.make_node("Transpose", ["off4"], ["offt"], perm=[0, 2, 1, 3]),
        helper.make_node("Gather", ["offt", "c0"], ["off_y"], axis=3),  # [K, T, dg]
        helper.make_node("Gather", ["offt", "c1"], ["off_x"], axis=3),
        # integer base coordinates [K, T]: oy*sh - pad_top + ky*dh, ox*sw - pad_left + kx*dw
        helper.make_node("Gather", ["strides", "c0"], ["sh"], axis=0),
        helper.make_node("Gather", ["strides", "c1"], ["sw"], axis=0),
        helper.make_node("Gather", ["pads", "c0"], ["pt"], axis=0),
        helper.make_node("Gather", ["pads", "c1"], ["pl"], axis=0),
        helper.make_node("Gather", ["khw", "c0"], ["kh"], axis=0),
        helper.make_node("Gather", ["khw", "c1"], ["kw"], axis=0),
        helper.make_node("Gather", ["dil", "c0"], ["dh"], axis=0),
        helper.make_node("Gather", ["dil", "c1"], ["dw"], axis=0),
        helper.make_node("Range", ["c0", "kh", "c1"], ["ky"]),
        helper.make_node("Range", ["c0", "kw", "c1"], ["kx"]),
        helper.make_node("Mul", ["ky", "dh"], ["tdy"]),
        helper.make_node("Mul", ["kx", "dw"], ["tdx"]),
        helper.make_node("Unsqueeze", ["tdy", "ax1"], ["tdy_col"]),  # [kh, 1]
        helper.make_node("Unsqueeze", ["tdx", "ax0"], ["tdx_row"]),  # [1, kw]
        helper.make_node("Add", ["tdy_col", "tdx_row"], ["tgrid"]),
        helper.make_node("Mul", ["tgrid", "c0"], ["tzero"]),
        helper.make_node("Add", ["tdy_col", "tzero"], ["tyg"]),
        helper.make_node("Add", ["tdx_row", "tzero"], ["txg"]),
        helper.make_node("Reshape", ["tyg", "neg1"], ["ty"]),  # [T], tap-major (t = ky*kw + kx)
        helper.make_node("Reshape", ["txg", "neg1"], ["tx"]),
        helper.make_node("Mul", ["poy", "sh"], ["oys"]),
        helper.make_node("Sub", ["oys", "pt"], ["by"]),
        helper.make_node("Mul", ["pox", "sw"], ["oxs"]),
        helper.make_node("Sub", ["oxs", "pl"], ["bx"]),
        helper.make_node("Unsqueeze", ["by", "ax1"], ["by_col"]),
        helper.make_node("Unsqueeze", ["bx", "ax1"], ["bx_col"]),
        helper.make_node("Add", ["by_col", "ty"], ["iy"]),  # [K, T]
        helper.make_node("Add", ["bx_col", "tx"], ["ix"]),
        helper.make_node("CastLike", ["iy", "Offset"], ["iyf"]),
        helper.make_node("CastLike", ["ix", "Offset"], ["ixf"]),
        helper.make_node("Unsqueeze", ["iyf", "ax2"], ["iyf3"]),
        helper.make_node("Unsqueeze", ["ixf", "ax2"], ["ixf3"]),
        # sample points [K, T, dg] and their corners [K, T, dg, 2] per axis
        helper.make_node("Add", ["iyf3", "off_y"], ["py"]),
        helper.make_node("Add", ["ixf3", "off_x"], ["px"]),
        helper.make_node("CastLike", ["zero_f", "Offset"], ["zero_o"]),
        helper.make_node("CastLike", ["one_f", "Offset"], ["one_o"]),
        helper.make_node("CastLike", ["corner_f", "Offset"], ["corner_o"]),
        helper.make_node("CastLike", ["h", "Offset"], ["hf"]),
        helper.make_node("CastLike", ["w", "Offset"], ["wf"]),
        helper.make_node("Sub", ["hf", "one_o"], ["hm1f"]),
        helper.make_node("Sub", ["wf", "one_o"], ["wm1f"]),
    ]
    for a, size, sizem1 in (("y", "hf", "hm1f"), ("x", "wf", "wm1f")):
        nodes += [
            helper.make_node("Floor", [f"p{a}"], [f"{a}0"]),
            helper.make_node("Sub", [f"p{a}", f"{a}0"], [f"l{a}"]),  # fraction, weight of the far corner
            helper.make_node("Sub", ["one_o", f"l{a}"], [f"h{a}"]),
            helper.make_node("Unsqueeze", [f"{a}0", "ax3"], [f"{a}0u"]),
            helper.make_node("Add", [f"{a}0u", "corner_o"], [f"{a}c"]),  # [K, T, dg, 2]
            helper.make_node("Unsqueeze", [f"h{a}", "ax3"], [f"h{a}u"]),
            helper.make_node("Unsqueeze", [f"l{a}", "ax3"], [f"l{a}u"]),
            helper.make_node("Concat", [f"h{a}u", f"l{a}u"], [f"w{a}c"], axis=3),
            helper.make_node("GreaterOrEqual", [f"{a}c", "zero_o"], [f"{a}ge"]),
            helper.make_node("Less", [f"{a}c", size], [f"{a}lt"]),
            helper.make_node("And", [f"{a}ge", f"{a}lt"], [f"{a}in"]),
            helper.make_node("Where", [f"{a}in", f"w{a}c", "zero_o"], [f"w{a}v"]),  # 0 for outside corners
            helper.make_node("Clip", [f"{a}c", "zero_o", sizem1], [f"{a}cc"]),
            helper.make_node("Cast", [f"{a}cc"], [f"{a}ci"], to=i64),
        ]
    nodes += [
        # corner weights and row indices [K, T, dg, 2 (y), 2 (x)]; row = ((n*H + y)*W + x)*dg + d
        helper.make_node("Unsqueeze", ["wyv", "ax4"], ["wy5"]),
        helper.make_node("Unsqueeze", ["wxv", "ax3"], ["wx5"]),
        helper.make_node("Mul", ["wy5", "wx5"], ["cw"]),
        helper.make_node("Unsqueeze", ["yci", "ax4"], ["yci5"]),
        helper.make_node("Unsqueeze", ["xci", "ax3"], ["xci5"]),
        helper.make_node("Mul", ["pn", "h"], ["nh"]),
        helper.make_node("Unsqueeze", ["nh", "ax_k1"], ["nh5"]),
        helper.make_node("Add", ["nh5", "yci5"], ["ry"]),
        helper.make_node("Mul", ["ry", "w"], ["ryw"]),
        helper.make_node("Add", ["ryw", "xci5"], ["rxy"]),
        helper.make_node("Mul", ["rxy", "dg"], ["rxyd"]),
        helper.make_node("Range", ["c0", "dg", "c1"], ["di"]),
        helper.make_node("Unsqueeze", ["di", "ax_dg"], ["di5"]),
        helper.make_node("Add", ["rxyd", "di5"], ["cidx"]),
        # X as rows [N*H*W*dg, Cin/dg] (NHWC, channels split by deform group)
        helper.make_node("Transpose", ["X"], ["xnhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Concat", ["neg1", "cdg1"], ["xrshape"], axis=0),
        helper.make_node("Reshape", ["xnhwc", "xrshape"], ["xrows"]),
        # weighted sum over the 4 corners as a batched [1, 4] x [4, Cdg] MatMul (measured faster in
        # onnxruntime 1.31 than Mul + ReduceSum, or than 4 Gathers + Mul + Sum)
        helper.make_node("Gather", ["xrows", "cidx"], ["corners"], axis=0),  # [K, T, dg, 2, 2, Cdg]
        helper.make_node("Concat", ["kshape", "t1d", "dg1", "four1", "cdg1"], ["cr5shape"], axis=0),
        helper.make_node("Reshape", ["corners", "cr5shape"], ["corners5"], allowzero=1),
        helper.make_node("Concat", ["kshape", "t1d", "dg1", "one1", "four1"], ["cw5shape"], axis=0),
        helper.make_node("Reshape", ["cw", "cw5shape"], ["cw5"], allowzero=1),
        helper.make_node("MatMul", ["cw5", "corners5"], ["samp5"]),
        helper.make_node("Squeeze", ["samp5", "ax3"], ["samp"]),  # [K, T, dg, Cdg]
        # [K, T, dg, Cdg] = [K, T, Cin] -> [g, K, T*Cg]; weights [Cout, Cg, kh, kw] -> [g, kh*kw*Cg, Cout/g]
        helper.make_node("Concat", ["kshape", "t1d", "g1", "cg1"], ["s4shape"], axis=0),
        helper.make_node("Reshape", ["samp", "s4shape"], ["samp4"], allowzero=1),
        helper.make_node("Transpose", ["samp4"], ["sampg"], perm=[2, 0, 1, 3]),
        helper.make_node("Mul", ["t1d", "cg1"], ["tcg"]),
        helper.make_node("Concat", ["g1", "kshape", "tcg"], ["cols3shape"], axis=0),
        helper.make_node("Reshape", ["sampg", "cols3shape"], ["cols3"], allowzero=1),
        *_grouped_matmul_rows_and_output(),
    ]
    return helper.make_function(
        DOMAIN, SSC, ["X", "M", "W", "B", "Offset"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=_conv_attr_defaults(),
        overload=DEFORM_OVERLOAD,
        doc_string="Sparse body of sai::SparseSampleConv with Offset: only the rows with M > 0 (docs/design.md 3.2).",
    )


def _in_float32(nodes: list[onnx.NodeProto], inputs: tuple[str, ...], output: str) -> list[onnx.NodeProto]:
    """The body ``nodes`` computed in float32 whatever the input type; the output cast back to it.

    Why (fp16 models): the Gaussian weights underflow in fp16 (``exp(-(s^2/2) d^2)`` below 6e-8),
    so ``den = conv(M, K) + eps`` falls to ``eps`` where the sampled neighbours are far, ``(1 - M) /
    den`` then exceeds fp16's 65504 and ``0 * inf`` is NaN: the trained demo model gave NaN for every
    logit. In float32 the same formula is finite everywhere (num/den is a weighted mean of sampled
    features). For float32 inputs the Casts are identities that onnxruntime removes.
    """
    renamed = {name: f"{name}__f32" for name in (*inputs, output)}
    body = []
    for node in nodes:
        node.input[:] = [renamed.get(n, n) if n in inputs else n for n in node.input]
        node.output[:] = [renamed[n] if n == output else n for n in node.output]
        body.append(node)
    head = [helper.make_node("Cast", [name], [renamed[name]], to=TensorProto.FLOAT) for name in inputs]
    tail = [helper.make_node("CastLike", [renamed[output], inputs[0]], [output])]
    return head + body + tail


def interpolate_function(opset: int, separable: bool = False, depthwise: bool = False) -> FunctionProto:
    """``Interpolate`` body: the formula of docs/design.md 3.3 in standard ops.

    The depthwise Gaussian sum runs as a 1-channel ``Conv`` over ``[N*C, 1, H, W]`` (a ``group``
    attribute cannot depend on the channel count inside a function); ``auto_pad=SAME_UPPER`` with
    an odd kernel and stride 1 is exactly a zero padding of ``r`` on every side. ``separable``:
    ``K = s^2/(2 pi) * g(i) * g(j)`` with ``g(i) = exp(-(s^2/2) i^2)``, so each 2-D sum is a 1 x k
    then a k x 1 convolution (2k instead of k^2 products per value; zero padding separates too).
    ``depthwise``: the numerator is one depthwise ``Conv`` over ``[N, C, H, W]`` with ``group`` taken
    from the node's ``channels`` attribute (measured in onnxruntime 1.31 at 256x128x208: 24 ms vs
    204 ms for the 1-channel conv over ``[N*C, 1, H, W]``, which runs one tiny GEMM per plane).
    The depthwise body also does its elementwise work (``F * M``, ``num * w``, the sum) in NHWC
    between boundary Transposes: the sparse SparseSampleConv bodies produce and consume NHWC rows,
    so onnxruntime's transpose optimizer cancels those Transposes against theirs (with
    ``graph.nhwc_residual_tails`` the residual add and ReLU stay NHWC too) and folds the ones next
    to the depthwise ``Conv`` into its NCHWc reorders. The result is the same arithmetic in another
    memory order (exact); measured on sparse_resnet101 at 512x832 with the other passes: 7-9% faster.
    """
    if separable and depthwise:
        raise ValueError("interpolate_function: choose separable or depthwise, not both")
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
        *([] if depthwise else [const("shape_m1_1", i64, [2], [-1, 1])]),
        const("one_1d", i64, [1], [1]),
        const("ax0", i64, [1], [0]),
        const("ax1", i64, [1], [1]),
        const("ax3", i64, [1], [3]),
        # r = (k - 1) / 2; i = [-r .. r] as float
        helper.make_node("Sub", ["ks", "one_i"], ["km1"]),
        helper.make_node("Div", ["km1", "two_i"], ["r"]),
        helper.make_node("Neg", ["r"], ["neg_r"]),
        helper.make_node("Add", ["r", "one_i"], ["r1"]),
        helper.make_node("Range", ["neg_r", "r1", "one_i"], ["ii"]),
        helper.make_node("Cast", ["ii"], ["fi"], to=f),
        helper.make_node("Mul", ["fi", "fi"], ["fi2"]),
        helper.make_node("Mul", ["sigma", "sigma"], ["s2"]),
        helper.make_node("Mul", ["s2", "half_f"], ["s2h"]),
        helper.make_node("Mul", ["s2", "inv_2pi"], ["scale"]),
        helper.make_node("Unsqueeze", ["ks", "ax0"], ["ks1"]),
    ]
    if separable:
        nodes += [
            # Kr = s^2/(2 pi) * g as [1,1,1,k]; Kc = g as [1,1,k,1]
            helper.make_node("Mul", ["fi2", "s2h"], ["e_arg"]),
            helper.make_node("Neg", ["e_arg"], ["e_neg"]),
            helper.make_node("Exp", ["e_neg"], ["g"]),
            helper.make_node("Mul", ["g", "scale"], ["g_scaled"]),
            helper.make_node("Concat", ["shape_11kk_head", "one_1d", "ks1"], ["rshape"], axis=0),
            helper.make_node("Concat", ["shape_11kk_head", "ks1", "one_1d"], ["cshape"], axis=0),
            helper.make_node("Reshape", ["g_scaled", "rshape"], ["kr_f"]),
            helper.make_node("Reshape", ["g", "cshape"], ["kc_f"]),
            helper.make_node("CastLike", ["kr_f", "F"], ["Kr"]),
            helper.make_node("CastLike", ["kc_f", "F"], ["Kc"]),
        ]
    else:
        nodes += [
            helper.make_node("Unsqueeze", ["fi2", "ax1"], ["fi2_col"]),
            helper.make_node("Unsqueeze", ["fi2", "ax0"], ["fi2_row"]),
            helper.make_node("Add", ["fi2_col", "fi2_row"], ["d2"]),
            # K = s^2/(2 pi) * exp(-(s^2/2) * d2)
            helper.make_node("Mul", ["d2", "s2h"], ["e_arg"]),
            helper.make_node("Neg", ["e_arg"], ["e_neg"]),
            helper.make_node("Exp", ["e_neg"], ["g"]),
            helper.make_node("Mul", ["g", "scale"], ["k2"]),
            helper.make_node("Concat", ["shape_11kk_head", "ks1", "ks1"], ["kshape"], axis=0),
            helper.make_node("Reshape", ["k2", "kshape"], ["k4_f"]),
            helper.make_node("CastLike", ["k4_f", "F"], ["K"]),
        ]

    def gauss(x: str, out: str) -> list[onnx.NodeProto]:
        if x == "fm" and depthwise:
            return [
                # C from the attribute, not Shape(F): the kernel stays a constant that onnxruntime
                # folds and prepacks (NCHWc depthwise), 2.5x faster than a runtime-built kernel
                _node("Constant", [], ["c0d"], refs=[_ref("value_int", AttributeProto.INT, "channels")]),
                helper.make_node("Unsqueeze", ["c0d", "ax0"], ["c1"]),
                helper.make_node("Concat", ["c1", "one_1d", "ks1", "ks1"], ["kdw_shape"], axis=0),
                helper.make_node("Expand", ["K", "kdw_shape"], ["Kdw"]),
                _node("Conv", [x, "Kdw"], [out], refs=[_ref("group", AttributeProto.INT, "channels")],
                      auto_pad="SAME_UPPER"),
            ]
        if not separable:
            return [helper.make_node("Conv", [x, "K"], [out], auto_pad="SAME_UPPER")]
        return [helper.make_node("Conv", [x, "Kr"], [out + "_r"], auto_pad="SAME_UPPER"),
                helper.make_node("Conv", [out + "_r", "Kc"], [out], auto_pad="SAME_UPPER")]

    nhwc = depthwise  # the sparse body's Interpolate: elementwise work in NHWC (see below)
    if nhwc:
        # elementwise work in NHWC between boundary Transposes that onnxruntime's transpose optimizer
        # cancels against the neighbouring sparse bodies' (their rows are NHWC); the depthwise Conv's
        # Transposes fold into its NCHWc reorders
        nodes += [
            helper.make_node("Transpose", ["F"], ["Ft"], perm=[0, 2, 3, 1]),
            helper.make_node("Squeeze", ["M", "ax1"], ["M3"]),
            helper.make_node("Unsqueeze", ["M3", "ax3"], ["Mt"]),
            helper.make_node("Mul", ["Ft", "Mt"], ["fmt"]),
            helper.make_node("Transpose", ["fmt"], ["fm"], perm=[0, 3, 1, 2]),
        ]
    else:
        nodes += [
            # num = depthwise_conv(F * M, K); den = conv(M, K) + eps
            helper.make_node("Mul", ["F", "M"], ["fm"]),
        ]
    if depthwise:
        nodes += gauss("fm", "num")
    else:
        nodes += [
            helper.make_node("Shape", ["F"], ["fshape"]),
            helper.make_node("Shape", ["F"], ["hw"], start=2),
            helper.make_node("Concat", ["shape_m1_1", "hw"], ["flat_shape"], axis=0),
            helper.make_node("Reshape", ["fm", "flat_shape"], ["fm_flat"]),
            *gauss("fm_flat", "num_flat"),
            helper.make_node("Reshape", ["num_flat", "fshape"], ["num"]),
        ]
    nodes += [
        *gauss("M", "den0"),
        helper.make_node("CastLike", ["eps", "F"], ["eps_t"]),
        helper.make_node("Add", ["den0", "eps_t"], ["den"]),
        helper.make_node("CastLike", ["one_f", "M"], ["one_m"]),
        helper.make_node("Sub", ["one_m", "M"], ["inv_m"]),
    ]
    if nhwc:
        nodes += [
            helper.make_node("Div", ["inv_m", "den"], ["wfill"]),
            helper.make_node("Transpose", ["num"], ["numt0"], perm=[0, 2, 3, 1]),
            # a no-op Reshape: keeps onnxruntime's transpose optimizer from moving this Transpose
            # below the Mul (it then stays next to the Conv and folds into its NCHWc reorder)
            helper.make_node("Shape", ["fmt"], ["fmt_shape"]),
            helper.make_node("Reshape", ["numt0", "fmt_shape"], ["numt"]),
            helper.make_node("Squeeze", ["wfill", "ax1"], ["wfill3"]),
            helper.make_node("Unsqueeze", ["wfill3", "ax3"], ["wfillt"]),
            helper.make_node("Mul", ["numt", "wfillt"], ["fillt"]),
            helper.make_node("Add", ["fmt", "fillt"], ["Yt"]),
            helper.make_node("Transpose", ["Yt"], ["Y"], perm=[0, 3, 1, 2]),
        ]
    elif depthwise:  # out = M * F + num * ((1 - M) / den): the division on [N,1,H,W], two full passes
        nodes += [
            helper.make_node("Div", ["inv_m", "den"], ["wfill"]),
            helper.make_node("Mul", ["num", "wfill"], ["fill"]),
            helper.make_node("Add", ["fm", "fill"], ["Y"]),
        ]
    else:  # out = M * F + (1 - M) * num / den
        nodes += [
            helper.make_node("Div", ["num", "den"], ["interp"]),
            helper.make_node("Mul", ["inv_m", "interp"], ["fill"]),
            helper.make_node("Add", ["fm", "fill"], ["Y"]),
        ]
    nodes = _in_float32(nodes, inputs=("F", "M"), output="Y")
    return helper.make_function(
        DOMAIN, INTERP, ["F", "M"], ["Y"], nodes,
        [helper.make_opsetid("", opset)],
        attributes=["channels"] if depthwise else [],
        attribute_protos=[
            helper.make_attribute("kernel_size", 7),
            helper.make_attribute("sigma", 1.0),
            helper.make_attribute("eps", 1e-5),
            *([] if depthwise else [helper.make_attribute("channels", 0)]),
            helper.make_attribute("plugin_version", "1"),
            helper.make_attribute("plugin_namespace", "sai"),
        ],
        doc_string="Body of sai::Interpolate (docs/design.md 3.3)" + (", separable Gaussian." if separable else "."),
    )


BODIES = ("sparse", "dense")
DEFORM_BODIES = ("dense", "sparse")  # the deformable overload's body, chosen apart from ``body``
DEFAULT_DEFORM_BODY = {"dense": "dense", "sparse": "sparse"}


def all_functions(opset: int, body: str = "dense", channels: bool = True,
                  deform_body: str | None = None) -> list[FunctionProto]:
    """The local functions of one body kind (``BODIES``).

    ``dense``: Conv / DeformConv then mask; the 2-D Gaussian as a 1-channel Conv (the reference).
    ``sparse``: SparseSampleConv gathers only the rows with M > 0 (``sparse_sample_conv_sparse_
    function``); Interpolate as a depthwise Conv when the nodes carry ``channels`` (``channels=False``:
    separable 1-channel convs). ``deform_body`` (``DEFORM_BODIES``; default ``DEFAULT_DEFORM_BODY[body]``,
    i.e. the same kind as ``body``) picks the deformable overload: ``dense`` DeformConv then mask, or
    ``sparse`` (``sparse_sample_deform_conv_sparse_function``: bilinear corner gathers + MatMul at M > 0).
    Measured (``opmodels.bench_deform_sparse_sample_conv``: onnxruntime 1.31, 2 threads, 3x3 256->256
    at 64x64, batch 1, offsets ~ N(0, 2), medians of 15 interleaved runs) at density 0.1 / 0.25 / 0.5 /
    1.0: sparse 16 / 31 / 53 / 95 ms vs DeformConv 63 / 59 / 62 / 66 ms on an idle machine (4.0x / 1.9x
    / 1.16x / 0.70x); with the other core busy 27-41 / 60-70 / 100-119 / 166-176 vs 99-125 ms
    (3.0-3.6x / 1.7-1.8x / 1.05-1.1x / 0.64-0.69x; 0.3: 1.69x, break-even near 0.55). So the sparse
    body is the deformable default of ``body="sparse"``. Its cost over DeformConv is the sampling: 4
    corner rows per tap gathered to memory, then combined (DeformConv fuses both).
    """
    if body not in BODIES:
        raise ValueError(f"body must be one of {BODIES}, got {body!r}")
    deform_body = DEFAULT_DEFORM_BODY[body] if deform_body is None else deform_body
    if deform_body not in DEFORM_BODIES:
        raise ValueError(f"deform_body must be one of {DEFORM_BODIES}, got {deform_body!r}")
    deform = (sparse_sample_deform_conv_sparse_function(opset) if deform_body == "sparse"
              else sparse_sample_deform_conv_function(opset))
    if body == "dense":
        return [sparse_sample_conv_function(opset), deform, interpolate_function(opset)]
    return [sparse_sample_conv_sparse_function(opset), sparse_sample_conv_pointwise_function(opset), deform,
            interpolate_function(opset, separable=not channels, depthwise=channels)]


def _is_pointwise(node: onnx.NodeProto) -> bool:
    """4 inputs, one group, zero pads (the caller checks the 1x1 kernel on the weight initializer)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (len(node.input) == 4 and attrs.get("group", 1) == 1
            and list(attrs.get("pads", [0, 0, 0, 0])) == [0, 0, 0, 0])


def _set_overloads(model: onnx.ModelProto, body: str) -> None:
    """``deform`` for 5 inputs; ``pointwise`` (sparse body) for 1x1 kernels with zero pads, one group."""
    kernels = {t.name: list(t.dims[2:]) for t in model.graph.initializer if len(t.dims) == 4}
    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type != SSC:
            continue
        if len(node.input) == 5:
            node.overload = DEFORM_OVERLOAD
        elif body == "sparse" and _is_pointwise(node) and kernels.get(node.input[2]) == [1, 1]:
            node.overload = POINTWISE_OVERLOAD
        else:
            node.overload = ""


def _fill_missing_bias(model: onnx.ModelProto) -> None:
    """Give 3-input SparseSampleConv nodes a zero bias (the sparse body adds B to its rows)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.domain != DOMAIN or node.op_type != SSC or len(node.input) != 3:
            continue
        w = inits.get(node.input[2])
        if w is None:
            raise RuntimeError(f"{node.name}: weight {node.input[2]} is not an initializer")
        name = f"{node.input[2]}.zero_bias"
        if name not in inits:
            dtype = helper.tensor_dtype_to_np_dtype(w.data_type)
            import numpy as np

            inits[name] = numpy_helper.from_array(np.zeros([int(w.dims[0])], dtype=dtype), name)
            graph.initializer.append(inits[name])
        node.input.append(name)


def attach_functions(model: onnx.ModelProto, opset: int, body: str = "sparse",
                     deform_body: str | None = None) -> None:
    """Add the ``sai`` local functions (``body``: sparse | dense; ``deform_body``: see ``all_functions``)
    for the variants the graph uses."""
    strip_functions(model)
    if body == "sparse":
        _fill_missing_bias(model)
    _set_overloads(model, body)
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
