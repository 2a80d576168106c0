"""``sai::SparseSampleConv`` as ONNX functions (docs/design.md 3.2): dense, sparse, pointwise and the
two deformable bodies.

The ONNX face of ``models/ops.py: sparse_sample_conv``. Each body is an ``@script`` function whose
attributes are the node's (with the defaults of design.md 3.2: ``strides=[1, 1]``, ``pads=[0, 0, 0,
0]`` (top, left, bottom, right), ``dilations=[1, 1]``, ``group=1``, ``deform_groups=1``,
``plugin_version="1"`` and ``plugin_namespace="sai"`` (TensorRT's), ``activation="none" | "relu"``),
so one function serves every node; the variants are told apart by the node's ``overload`` field.

- ``dense_function``: ``Conv`` -> activation -> zero where ``M == 0`` (the reference).
- ``sparse_function``: only the rows with ``M > 0``: ``NonZero(M > 0)`` -> (n, oy, ox) -> tap
  coordinates in the padded input -> ``GatherND`` from ``[N, Hp, Wp, g, Cin/g]`` (one transpose of
  the input) -> ``MatMul`` with the weights as ``[g, kh*kw*Cin/g, Cout/g]`` -> bias, activation ->
  every output position gathers its row (or a zero row; one ``Gather``, measured faster than
  ``ScatterND`` into an expanded zero tensor) -> NCHW. Exact (same products, summed by a GEMM
  instead of a convolution); rows with ``M == 0`` stay exactly 0. Any kernel size, strides,
  dilations, groups and batch.
- ``pointwise_function`` (overload ``pointwise``): 1x1 kernels, zero pads, one group (the
  bottleneck's conv1 and reordered conv3): no Pad copy and no taps; the input's NHWC Transpose
  directly follows the previous sparse conv's NCHW Transpose, so onnxruntime cancels the pair.
- ``deform_dense_function`` (overload ``deform``): ``DeformConv`` v1 -> activation -> mask.
- ``deform_sparse_function`` (overload ``deform``): the offsets at the active positions -> per
  (row, tap, deform group) the sample point, its 4 corners and bilinear weights (weight 0 for a
  corner outside the image, index clamped into it) -> one ``Gather`` of the corner rows from ``X``
  as ``[N*H*W*dg, Cin/dg]`` -> weighted sum over the corners -> the grouped ``MatMul`` and tail of
  the sparse body. Any kernel, strides, dilations, pads, groups, deform groups and batch.

The activation is chosen in the body from the string attribute (``Equal`` on strings, opset >= 19).
Shared fragments are ``HELPERS`` functions with tensor inputs only, inlined by ``function_proto``.
"""

# ruff: noqa: B006 -- onnxscript takes the attribute defaults (lists) from the signature; never mutated

from __future__ import annotations

from onnx import FunctionProto, TensorProto
from onnxscript import opset19 as op
from onnxscript import script

from sai.constants import (
    DEFORM_OVERLOAD,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    POINTWISE_OVERLOAD,
    SPARSE_SAMPLE_CONV,
)

from ._script import HELPERS, SAI, function_proto

NAME = SPARSE_SAMPLE_CONV

# ---------------------------------------------------------------------------- shared fragments


@script(HELPERS, default_opset=op)
def _is_relu(act):
    """``act`` (the ``activation`` attribute as a string tensor) == "relu"."""
    return op.Equal(act, op.Constant(value_string="relu"))


@script(HELPERS, default_opset=op)
def _activation_and_mask(y, M, is_relu):
    """``Y = where(M > 0, act(y), 0)``."""
    y_act = op.Where(is_relu, op.Relu(y), y)
    zero_f = op.Constant(value_float=0.0)
    keep = op.Greater(M, op.CastLike(zero_f, M))
    return op.Where(keep, y_act, op.CastLike(zero_f, y_act))


@script(HELPERS, default_opset=op)
def _active_positions(M):
    """``keep = M > 0`` and the active positions ``pos [K, 3]`` = (n, oy, ox), row-major."""
    keep = op.Greater(M, op.CastLike(op.Constant(value_float=0.0), M))
    nz3 = op.Gather(op.NonZero(keep), op.Constant(value_ints=[0, 2, 3]), axis=0)
    pos = op.Transpose(nz3, perm=[1, 0])
    return keep, pos


@script(HELPERS, default_opset=op)
def _rows_to_output(rows_b, keep, kshape, n1, howo, cout1, X, is_relu):
    """Rows ``[K, Cout]`` (bias added) -> activation -> ``Y [N, Cout, Ho, Wo]``.

    The activation on the computed rows only, one pass: max(y, 0) for relu, max(y, -inf) = y for
    none. Output: row r of every active position, a zero row elsewhere (row K), gathered in one
    pass (NonZero lists positions in row-major order, so a position's row is its rank in the mask).
    """
    zero_f = op.Constant(value_float=0.0)
    floor_f = op.Where(is_relu, zero_f, op.Constant(value_float=float("-inf")))
    rows_act = op.Max(rows_b, op.CastLike(floor_f, rows_b))
    zrow = op.Expand(op.CastLike(zero_f, X), cout1)
    rows_z = op.Concat(rows_act, op.Unsqueeze(zrow, op.Constant(value_ints=[0])), axis=0)  # [K + 1, Cout]
    keep_flat = op.Reshape(keep, op.Constant(value_ints=[-1]))
    csum = op.CumSum(op.Cast(keep_flat, to=TensorProto.INT64), op.Constant(value_int=0))
    rank = op.Sub(csum, op.Constant(value_int=1))
    rowmap = op.Where(keep_flat, rank, op.Squeeze(kshape))  # [N*Ho*Wo]
    yflat = op.Gather(rows_z, rowmap, axis=0)  # [N*Ho*Wo, Cout]
    ynhwc = op.Reshape(yflat, op.Concat(n1, howo, cout1, axis=0))
    return op.Transpose(ynhwc, perm=[0, 3, 1, 2])


@script(HELPERS, default_opset=op)
def _grouped_rows(cols3, W, B, g1, coutg1, cg1, khw, kshape, cout1):
    """``cols3 [g, K, kh*kw*Cg]`` times the weights as ``[g, kh*kw*Cg, Cout/g]`` -> rows ``[K, Cout]`` + B."""
    # weights [Cout, Cg, kh, kw] -> [g, kh*kw*Cg, Cout/g] (tap-major, channel-minor like cols3)
    w5 = op.Reshape(W, op.Concat(g1, coutg1, cg1, khw, axis=0))
    w5t = op.Transpose(w5, perm=[0, 3, 4, 2, 1])
    wmat = op.Reshape(w5t, op.Concat(g1, op.Constant(value_ints=[-1]), coutg1, axis=0))
    yg = op.MatMul(cols3, wmat)  # [g, K, Cout/g]
    ykg = op.Transpose(yg, perm=[1, 0, 2])
    rows = op.Reshape(ykg, op.Concat(kshape, cout1, axis=0), allowzero=1)
    return op.Add(rows, B)


@script(HELPERS, default_opset=op)
def _tap_offsets(khw, dil):
    """Tap offsets ``(ky*dh, kx*dw)`` as two ``[kh*kw]`` vectors, tap-major (t = ky*kw + kx)."""
    c0 = op.Constant(value_int=0)
    c1 = op.Constant(value_int=1)
    ky = op.Range(c0, op.Gather(khw, c0, axis=0), c1)
    kx = op.Range(c0, op.Gather(khw, c1, axis=0), c1)
    dy_col = op.Unsqueeze(op.Mul(ky, op.Gather(dil, c0, axis=0)), op.Constant(value_ints=[1]))  # [kh, 1]
    dx_row = op.Unsqueeze(op.Mul(kx, op.Gather(dil, c1, axis=0)), op.Constant(value_ints=[0]))  # [1, kw]
    zgrid = op.Mul(op.Add(dy_col, dx_row), c0)  # [kh, kw] zeros, for the grid shape
    neg1 = op.Constant(value_ints=[-1])
    ty = op.Reshape(op.Add(dy_col, zgrid), neg1)
    tx = op.Reshape(op.Add(dx_row, zgrid), neg1)
    return ty, tx


@script(HELPERS, default_opset=op)
def _checked_mask(M, nhw_p, khw, dil, strides):
    """``M`` as ``[N, 1, Ho, Wo]`` of this convolution (docs/design.md 3.2: ``Ho = (Hp - dh*(kh-1) - 1) / sh + 1``
    from the padded input ``nhw_p`` = (N, Hp, Wp), all four pads counted): a Reshape that fails, naming both
    shapes, for a mask of another size, as the custom-op library and the plugins refuse it (one rule; the
    bodies took the output size from ``M`` and so ignored bottom/right pads)."""
    one1 = op.Constant(value_ints=[1])
    hw_p = op.Slice(nhw_p, one1, op.Constant(value_ints=[3]))
    eff = op.Add(op.Mul(op.Sub(khw, one1), dil), one1)
    out = op.Add(op.Div(op.Sub(hw_p, eff), strides), one1)
    want = op.Concat(op.Slice(nhw_p, op.Constant(value_ints=[0]), one1), one1, out, axis=0)
    return op.Reshape(M, want)


# --------------------------------------------------------------------------------- the bodies


@script(SAI, default_opset=op)
def _dense(X, M, W, B, strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0],
           dilations: list[int] = [1, 1], group: int = 1, deform_groups: int = 1,
           plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE, activation: str = "none"):
    y = op.Conv(X, W, B, strides=strides, pads=pads, dilations=dilations, group=group)
    Y = _activation_and_mask(y, M, _is_relu(op.Constant(value_string=activation)))
    return Y


@script(SAI, default_opset=op)
def _deform_dense(X, M, W, B, Offset, strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0],
                  dilations: list[int] = [1, 1], group: int = 1, deform_groups: int = 1,
                  plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE, activation: str = "none"):
    y = op.DeformConv(X, W, Offset, B, strides=strides, pads=pads, dilations=dilations, group=group,
                      offset_group=deform_groups)
    Y = _activation_and_mask(y, M, _is_relu(op.Constant(value_string=activation)))
    return Y


@script(SAI, default_opset=op)
def _sparse(X, M, W, B, strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0],
            dilations: list[int] = [1, 1], group: int = 1, deform_groups: int = 1,
            plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE, activation: str = "none"):
    ax0 = op.Constant(value_ints=[0])
    one1 = op.Constant(value_ints=[1])
    ax_hw = op.Constant(value_ints=[2, 3])
    g = op.Constant(value_int=group)
    g1 = op.Unsqueeze(g, ax0)
    # shapes. N from M, not X: a Shape consumer of X would stop onnxruntime from folding X's layout
    # Transpose into a neighbouring Conv's NCHWc reorder
    wshape = op.Shape(W)
    cout1 = op.Slice(wshape, ax0, one1)
    cg1 = op.Gather(wshape, op.Constant(value_ints=[1]), axis=0)
    khw = op.Gather(wshape, ax_hw, axis=0)
    coutg1 = op.Div(cout1, g1)
    # input: pad H/W, NHWC, channels split by group (8-value pads, no Pad ``axes``: onnxruntime
    # 1.31's transpose optimizer mis-handles ``axes`` when it pushes the neighbouring Transposes
    # through this Pad)
    pads_t = op.Constant(value_ints=pads)
    zeros2 = op.Constant(value_ints=[0, 0])
    two1 = op.Constant(value_ints=[2])
    pads8 = op.Concat(zeros2, op.Slice(pads_t, ax0, two1), zeros2,
                      op.Slice(pads_t, two1, op.Constant(value_ints=[4])), axis=0)
    xp = op.Pad(X, pads8)
    xnhwc = op.Transpose(xp, perm=[0, 2, 3, 1])
    xpshape = op.Gather(op.Shape(xp), op.Constant(value_ints=[0, 2, 3]), axis=0)
    xg = op.Reshape(xnhwc, op.Concat(xpshape, g1, cg1, axis=0))  # [N, Hp, Wp, g, Cg]
    Mc = _checked_mask(M, xpshape, khw, op.Constant(value_ints=dilations), op.Constant(value_ints=strides))
    mshape = op.Shape(Mc)
    n1 = op.Slice(mshape, ax0, one1)
    howo = op.Gather(mshape, ax_hw, axis=0)
    keep, pos = _active_positions(Mc)
    # indices [g, K, T, 4] = (n, iy, ix, group) -> gathered [g, K, T, Cg] -> [g, K, T*Cg]
    base = op.Mul(pos, op.Concat(one1, op.Constant(value_ints=strides), axis=0))
    ty, tx = _tap_offsets(khw, op.Constant(value_ints=dilations))
    ax1 = op.Constant(value_ints=[1])
    taps = op.Concat(op.Unsqueeze(op.Mul(ty, op.Constant(value_int=0)), ax1), op.Unsqueeze(ty, ax1),
                     op.Unsqueeze(tx, ax1), axis=1)  # [T, 3] = (0, ky*dh, kx*dw)
    idx = op.Add(op.Unsqueeze(base, ax1), op.Unsqueeze(taps, ax0))  # [K, T, 3]
    idx4 = op.Unsqueeze(idx, ax0)  # [1, K, T, 3]
    gi4 = op.Reshape(op.Range(op.Constant(value_int=0), g, op.Constant(value_int=1)),
                     op.Constant(value_ints=[-1, 1, 1, 1]))  # [g, 1, 1, 1]
    idxg3 = op.Expand(idx4, op.Concat(g1, one1, one1, one1, axis=0))  # [g, K, T, 3]
    ax3 = op.Constant(value_ints=[3])
    col0 = op.Slice(idxg3, ax0, one1, ax3)
    gcol = op.Add(op.Mul(col0, op.Constant(value_int=0)), gi4)  # [g, K, T, 1] = group index
    cols = op.GatherND(xg, op.Concat(idxg3, gcol, axis=3))
    kshape = op.Shape(pos, start=0, end=1)
    tcg = op.Mul(op.ReduceProd(khw, keepdims=1), cg1)
    cols3 = op.Reshape(cols, op.Concat(g1, kshape, tcg, axis=0), allowzero=1)
    rows_b = _grouped_rows(cols3, W, B, g1, coutg1, cg1, khw, kshape, cout1)
    Y = _rows_to_output(rows_b, keep, kshape, n1, howo, cout1, X,
                        _is_relu(op.Constant(value_string=activation)))
    return Y


@script(SAI, default_opset=op)
def _pointwise(X, M, W, B, strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0],
               dilations: list[int] = [1, 1], group: int = 1, deform_groups: int = 1,
               plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE, activation: str = "none"):
    ax0 = op.Constant(value_ints=[0])
    one1 = op.Constant(value_ints=[1])
    wshape = op.Shape(W)
    cout1 = op.Slice(wshape, ax0, one1)
    mshape = op.Shape(M)
    n1 = op.Slice(mshape, ax0, one1)  # N from M (see the sparse body)
    howo = op.Gather(mshape, op.Constant(value_ints=[2, 3]), axis=0)
    xnhwc = op.Transpose(X, perm=[0, 2, 3, 1])
    keep, pos = _active_positions(M)
    base = op.Mul(pos, op.Concat(one1, op.Constant(value_ints=strides), axis=0))
    cols = op.GatherND(xnhwc, base)  # [K, Cin]
    w2 = op.Reshape(W, op.Concat(cout1, op.Constant(value_ints=[-1]), axis=0))
    rows_b = op.Add(op.MatMul(cols, op.Transpose(w2, perm=[1, 0])), B)
    kshape = op.Shape(pos, start=0, end=1)
    Y = _rows_to_output(rows_b, keep, kshape, n1, howo, cout1, X,
                        _is_relu(op.Constant(value_string=activation)))
    return Y


@script(HELPERS, default_opset=op)
def _corners(p, size, one_o, zero_o, corner_o):
    """Along one axis: the 2 corners of the sample points ``p [K, T, dg]`` as clamped int64 indices
    ``[K, T, dg, 2]`` and their linear weights (0 for a corner outside ``[0, size)``)."""
    p0 = op.Floor(p)
    lw = op.Sub(p, p0)  # fraction, weight of the far corner
    hw = op.Sub(one_o, lw)
    ax3 = op.Constant(value_ints=[3])
    c = op.Add(op.Unsqueeze(p0, ax3), corner_o)  # [K, T, dg, 2]
    wc = op.Concat(op.Unsqueeze(hw, ax3), op.Unsqueeze(lw, ax3), axis=3)
    inside = op.And(op.GreaterOrEqual(c, zero_o), op.Less(c, size))
    wv = op.Where(inside, wc, zero_o)  # 0 for outside corners
    ci = op.Cast(op.Clip(c, zero_o, op.Sub(size, one_o)), to=TensorProto.INT64)
    return ci, wv


@script(SAI, default_opset=op)
def _deform_sparse(X, M, W, B, Offset, strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0],
                   dilations: list[int] = [1, 1], group: int = 1, deform_groups: int = 1,
                   plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE, activation: str = "none"):
    c0 = op.Constant(value_int=0)
    c1 = op.Constant(value_int=1)
    ax0 = op.Constant(value_ints=[0])
    one1 = op.Constant(value_ints=[1])
    pads_t = op.Constant(value_ints=pads)
    strides_t = op.Constant(value_ints=strides)
    g = op.Constant(value_int=group)
    dg = op.Constant(value_int=deform_groups)
    g1 = op.Unsqueeze(g, ax0)
    dg1 = op.Unsqueeze(dg, ax0)
    # shapes
    xshape = op.Shape(X)
    wshape = op.Shape(W)
    n1 = op.Slice(xshape, ax0, one1)
    cin = op.Gather(xshape, c1, axis=0)
    h = op.Gather(xshape, op.Constant(value_int=2), axis=0)
    w = op.Gather(xshape, op.Constant(value_int=3), axis=0)
    cout1 = op.Slice(wshape, ax0, one1)
    cg1 = op.Gather(wshape, op.Constant(value_ints=[1]), axis=0)
    ax_hw = op.Constant(value_ints=[2, 3])
    khw = op.Gather(wshape, ax_hw, axis=0)
    coutg1 = op.Div(cout1, g1)
    cdg1 = op.Unsqueeze(op.Div(cin, dg), ax0)
    t1d = op.ReduceProd(khw, keepdims=1)  # [T], T = kh*kw
    two1 = op.Constant(value_ints=[2])
    four1 = op.Constant(value_ints=[4])
    hw_p = op.Add(op.Gather(xshape, ax_hw, axis=0),
                  op.Add(op.Slice(pads_t, ax0, two1), op.Slice(pads_t, two1, four1)))
    Mc = _checked_mask(M, op.Concat(n1, hw_p, axis=0), khw, op.Constant(value_ints=dilations), strides_t)
    howo = op.Gather(op.Shape(Mc), ax_hw, axis=0)
    # Offset [N, 2*dg*T, Ho, Wo] likewise (a Reshape that fails for another size)
    offc = op.Reshape(Offset, op.Concat(n1, op.Mul(op.Mul(dg1, t1d), two1), howo, axis=0))
    keep, pos = _active_positions(Mc)
    kshape = op.Shape(pos, start=0, end=1)
    # offsets at the active positions: [K, 2*dg*T] -> [K, dg, T, 2] -> [K, T, dg, 2]
    offk = op.GatherND(op.Transpose(offc, perm=[0, 2, 3, 1]), pos)
    off4 = op.Reshape(offk, op.Concat(kshape, dg1, t1d, op.Constant(value_ints=[2]), axis=0), allowzero=1)
    offt = op.Transpose(off4, perm=[0, 2, 1, 3])
    off_y = op.Gather(offt, c0, axis=3)  # [K, T, dg]
    off_x = op.Gather(offt, c1, axis=3)
    # integer base coordinates [K, T]: oy*sh - pad_top + ky*dh, ox*sw - pad_left + kx*dw
    ty, tx = _tap_offsets(khw, op.Constant(value_ints=dilations))
    by = op.Sub(op.Mul(op.Gather(pos, c1, axis=1), op.Gather(strides_t, c0, axis=0)),
                op.Gather(pads_t, c0, axis=0))
    bx = op.Sub(op.Mul(op.Gather(pos, op.Constant(value_int=2), axis=1), op.Gather(strides_t, c1, axis=0)),
                op.Gather(pads_t, c1, axis=0))
    ax1 = op.Constant(value_ints=[1])
    iy = op.Add(op.Unsqueeze(by, ax1), ty)  # [K, T]
    ix = op.Add(op.Unsqueeze(bx, ax1), tx)
    ax2 = op.Constant(value_ints=[2])
    # sample points [K, T, dg] and their corners [K, T, dg, 2] per axis
    py = op.Add(op.Unsqueeze(op.CastLike(iy, Offset), ax2), off_y)
    px = op.Add(op.Unsqueeze(op.CastLike(ix, Offset), ax2), off_x)
    zero_o = op.CastLike(op.Constant(value_float=0.0), Offset)
    one_o = op.CastLike(op.Constant(value_float=1.0), Offset)
    corner_o = op.CastLike(op.Constant(value_floats=[0.0, 1.0]), Offset)
    yci, wyv = _corners(py, op.CastLike(h, Offset), one_o, zero_o, corner_o)
    xci, wxv = _corners(px, op.CastLike(w, Offset), one_o, zero_o, corner_o)
    # corner weights and row indices [K, T, dg, 2 (y), 2 (x)]; row = ((n*H + y)*W + x)*dg + d
    ax3 = op.Constant(value_ints=[3])
    ax4 = op.Constant(value_ints=[4])
    cw = op.Mul(op.Unsqueeze(wyv, ax4), op.Unsqueeze(wxv, ax3))
    nh5 = op.Unsqueeze(op.Mul(op.Gather(pos, c0, axis=1), h), op.Constant(value_ints=[1, 2, 3, 4]))
    ryw = op.Mul(op.Add(nh5, op.Unsqueeze(yci, ax4)), w)
    rxyd = op.Mul(op.Add(ryw, op.Unsqueeze(xci, ax3)), dg)
    di5 = op.Unsqueeze(op.Range(c0, dg, c1), op.Constant(value_ints=[0, 1, 3, 4]))
    cidx = op.Add(rxyd, di5)
    # X as rows [N*H*W*dg, Cin/dg] (NHWC, channels split by deform group)
    xrows = op.Reshape(op.Transpose(X, perm=[0, 2, 3, 1]), op.Concat(op.Constant(value_ints=[-1]), cdg1, axis=0))
    # weighted sum over the 4 corners as a batched [1, 4] x [4, Cdg] MatMul (measured faster in
    # onnxruntime 1.31 than Mul + ReduceSum, or than 4 Gathers + Mul + Sum)
    corners = op.Gather(xrows, cidx, axis=0)  # [K, T, dg, 2, 2, Cdg]
    corners5 = op.Reshape(corners, op.Concat(kshape, t1d, dg1, four1, cdg1, axis=0), allowzero=1)
    cw5 = op.Reshape(cw, op.Concat(kshape, t1d, dg1, one1, four1, axis=0), allowzero=1)
    samp = op.Squeeze(op.MatMul(cw5, corners5), ax3)  # [K, T, dg, Cdg]
    # [K, T, dg, Cdg] = [K, T, Cin] -> [g, K, T*Cg]
    samp4 = op.Reshape(samp, op.Concat(kshape, t1d, g1, cg1, axis=0), allowzero=1)
    sampg = op.Transpose(samp4, perm=[2, 0, 1, 3])
    cols3 = op.Reshape(sampg, op.Concat(g1, kshape, op.Mul(t1d, cg1), axis=0), allowzero=1)
    rows_b = _grouped_rows(cols3, W, B, g1, coutg1, cg1, khw, kshape, cout1)
    Y = _rows_to_output(rows_b, keep, kshape, n1, howo, cout1, X,
                        _is_relu(op.Constant(value_string=activation)))
    return Y


_HELPERS = (_is_relu, _activation_and_mask, _active_positions, _rows_to_output, _grouped_rows,
            _tap_offsets, _corners, _checked_mask)


def dense_function(opset: int) -> FunctionProto:
    """Dense-equivalent body: ``Conv`` -> activation -> zero where ``M == 0``."""
    return function_proto(_dense, _HELPERS, opset, name=NAME,
                          doc="Dense-equivalent body of sai::SparseSampleConv (docs/design.md 3.2).")


def sparse_function(opset: int) -> FunctionProto:
    """Sparse body: only the rows where ``M > 0`` (docs/design.md 1)."""
    return function_proto(_sparse, _HELPERS, opset, name=NAME,
                          doc="Sparse body of sai::SparseSampleConv: only the rows with M > 0 "
                              "(docs/design.md 1, 3.2).")


def pointwise_function(opset: int) -> FunctionProto:
    """Sparse body for 1x1 kernels, zero pads, one group (overload ``pointwise``)."""
    return function_proto(_pointwise, _HELPERS, opset, name=NAME, overload=POINTWISE_OVERLOAD,
                          doc="Sparse body of sai::SparseSampleConv for 1x1 kernels (docs/design.md 1, 3.2).")


def deform_dense_function(opset: int) -> FunctionProto:
    """With ``Offset`` (overload ``deform``): ``DeformConv`` v1 -> activation -> mask."""
    return function_proto(_deform_dense, _HELPERS, opset, name=NAME, overload=DEFORM_OVERLOAD,
                          doc="Dense-equivalent body of sai::SparseSampleConv with Offset (deformable conv v1).")


def deform_sparse_function(opset: int) -> FunctionProto:
    """With ``Offset`` (overload ``deform``), sparse: bilinear corner gathers + MatMul at ``M > 0``."""
    return function_proto(_deform_sparse, _HELPERS, opset, name=NAME, overload=DEFORM_OVERLOAD,
                          doc="Sparse body of sai::SparseSampleConv with Offset: only the rows with M > 0 "
                              "(docs/design.md 3.2).")
