"""``sai::RoiAlignV0``: mmdetection v0.6's (non-aligned) RoIAlign as an ONNX function (docs/design.md 9).

The ONNX face of ``models/detector.py: roi_align_v06``. Inputs ``X [N, C, H, W]`` (float32), ``rois [R, 4]``
(x1, y1, x2, y2 in image pixels, v0.6's inclusive convention) and ``batch_indices [R]`` (int64); attributes
``spatial_scale`` (1 / the level's stride), ``output_size`` (7) and ``sampling_ratio`` (2); output
``[R, C, output_size, output_size]``.

v0.6's RoI ends at ``(x2 + 1) * scale`` and its size is clamped at 0; ONNX ``RoiAlign``
(``output_half_pixel``) on the boxes shifted to ``(x1, y1, x2 + 1, y2 + 1)`` computes the same samples,
out-of-map rule and bilinear clamping, but clamps the size at 1. So the body runs the standard ``RoiAlign``
on every RoI and recomputes exactly, in the gather form of ``roi_align_v06`` (4 bilinear taps of each of the
``sampling_ratio^2`` samples of a bin, one ``Gather`` of the NHWC rows), only the RoIs whose scaled width or
height is under one feature cell, scattering them over the standard op's values. That part costs
``S * (output_size * sampling_ratio)^2 * 4 * C`` floats for ``S`` such RoIs (800 KB each at C = 256).
"""

from __future__ import annotations

from onnx import FunctionProto, TensorProto
from onnxscript import opset19 as op
from onnxscript import script

from ._script import HELPERS, SAI, function_proto

NAME = "RoiAlignV0"


@script(HELPERS, default_opset=op)
def _axis_samples(lo, hi, scale, out_f, n_f, p, i, size_f, st):
    """The sample coordinates of one axis ``[S, out * n]`` (``start + p * bin + (i + 0.5) * bin / n``), and
    per sample its low/high cell (int64), the weights of both and the in-map flag (float)."""
    start = op.Mul(lo, scale)
    end = op.Mul(op.Add(hi, op.Constant(value_float=1.0)), scale)
    bin_size = op.Div(op.Max(op.Sub(end, start), op.Constant(value_float=0.0)), out_f)  # [S, 1, 1]
    s3 = op.Add(op.Add(start, op.Mul(p, bin_size)), op.Div(op.Mul(i, bin_size), n_f))  # [S, out, n]
    s = op.Reshape(s3, st)  # [0, T]: an empty S stays empty
    inside = op.And(op.GreaterOrEqual(s, op.Constant(value_float=-1.0)), op.LessOrEqual(s, size_f))
    c = op.Max(s, op.Constant(value_float=0.0))
    low = op.Floor(c)
    last = op.Sub(size_f, op.Constant(value_float=1.0))
    edge = op.GreaterOrEqual(low, last)
    low = op.Where(edge, last, low)
    c = op.Where(edge, low, c)
    high = op.Where(edge, low, op.Add(low, op.Constant(value_float=1.0)))
    w_high = op.Sub(c, low)
    w_low = op.Sub(op.Constant(value_float=1.0), w_high)
    return (op.Cast(low, to=TensorProto.INT64), op.Cast(high, to=TensorProto.INT64), w_low, w_high,
            op.Cast(inside, to=TensorProto.FLOAT))


@script(SAI, default_opset=op)
def _roi_align_v0(X, rois, batch_indices, spatial_scale: float = 0.25, output_size: int = 7,
                  sampling_ratio: int = 2):
    scale = op.Constant(value_float=spatial_scale)
    full = op.RoiAlign(X, op.Add(rois, op.Constant(value_floats=[0.0, 0.0, 1.0, 1.0])), batch_indices,
                       coordinate_transformation_mode="output_half_pixel", mode="avg",
                       output_height=output_size, output_width=output_size, sampling_ratio=sampling_ratio,
                       spatial_scale=spatial_scale)
    one = op.Constant(value_float=1.0)
    x1 = op.Slice(rois, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1]))
    y1 = op.Slice(rois, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]), op.Constant(value_ints=[1]))
    x2 = op.Slice(rois, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]), op.Constant(value_ints=[1]))
    y2 = op.Slice(rois, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]), op.Constant(value_ints=[1]))
    w = op.Sub(op.Mul(op.Add(x2, one), scale), op.Mul(x1, scale))
    h = op.Sub(op.Mul(op.Add(y2, one), scale), op.Mul(y1, scale))
    small = op.Or(op.Less(w, one), op.Less(h, one))  # [R, 1]: where ONNX's size clamp at 1 differs
    sel = op.Transpose(op.NonZero(op.Squeeze(small, op.Constant(value_ints=[1]))), perm=[1, 0])  # [S, 1]
    sr = op.GatherND(rois, sel)  # [S, 4]
    sb = op.GatherND(batch_indices, sel)  # [S]
    out_i = op.Constant(value_int=output_size)
    n_i = op.Constant(value_int=sampling_ratio)
    out_f = op.Cast(out_i, to=TensorProto.FLOAT)
    n_f = op.Cast(n_i, to=TensorProto.FLOAT)
    zero_i = op.Constant(value_int=0)
    one_i = op.Constant(value_int=1)
    p = op.Reshape(op.Cast(op.Range(zero_i, out_i, one_i), to=TensorProto.FLOAT), op.Constant(value_ints=[1, -1, 1]))
    i = op.Reshape(op.Add(op.Cast(op.Range(zero_i, n_i, one_i), to=TensorProto.FLOAT), op.Constant(value_float=0.5)),
                   op.Constant(value_ints=[1, 1, -1]))
    shape = op.Shape(X)
    c_dim = op.Slice(shape, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))
    h_i = op.Slice(shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]))
    w_i = op.Slice(shape, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]))
    h_f = op.Cast(h_i, to=TensorProto.FLOAT)
    w_f = op.Cast(w_i, to=TensorProto.FLOAT)
    st = op.Concat(op.Constant(value_ints=[0]), op.Unsqueeze(op.Mul(out_i, n_i), op.Constant(value_ints=[0])), axis=0)
    r3 = op.Unsqueeze(sr, op.Constant(value_ints=[2]))  # [S, 4, 1]
    sx1 = op.Slice(r3, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[1]))
    sy1 = op.Slice(r3, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]), op.Constant(value_ints=[1]))
    sx2 = op.Slice(r3, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]), op.Constant(value_ints=[1]))
    sy2 = op.Slice(r3, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]), op.Constant(value_ints=[1]))
    ylo, yhi, wylo, wyhi, vy = _axis_samples(sy1, sy2, scale, out_f, n_f, p, i, h_f, st)  # each [S, T]
    xlo, xhi, wxlo, wxhi, vx = _axis_samples(sx1, sx2, scale, out_f, n_f, p, i, w_f, st)
    ax2 = op.Constant(value_ints=[2])
    ax1 = op.Constant(value_ints=[1])
    base = op.Unsqueeze(op.Mul(sb, op.Mul(h_i, w_i)), op.Constant(value_ints=[1, 2]))  # [S, 1, 1]
    rlo = op.Add(base, op.Unsqueeze(op.Mul(ylo, w_i), ax2))  # [S, T, 1]
    rhi = op.Add(base, op.Unsqueeze(op.Mul(yhi, w_i), ax2))
    clo = op.Unsqueeze(xlo, ax1)  # [S, 1, T]
    chi = op.Unsqueeze(xhi, ax1)
    last = op.Constant(value_ints=[-1])
    idx = op.Concat(op.Unsqueeze(op.Add(rlo, clo), last), op.Unsqueeze(op.Add(rlo, chi), last),
                    op.Unsqueeze(op.Add(rhi, clo), last), op.Unsqueeze(op.Add(rhi, chi), last), axis=-1)
    valid = op.Mul(op.Unsqueeze(vy, ax2), op.Unsqueeze(vx, ax1))  # [S, T, T]
    wyl = op.Unsqueeze(wylo, ax2)
    wyh = op.Unsqueeze(wyhi, ax2)
    wxl = op.Unsqueeze(wxlo, ax1)
    wxh = op.Unsqueeze(wxhi, ax1)
    wgt = op.Concat(op.Unsqueeze(op.Mul(op.Mul(wyl, wxl), valid), last),
                    op.Unsqueeze(op.Mul(op.Mul(wyl, wxh), valid), last),
                    op.Unsqueeze(op.Mul(op.Mul(wyh, wxl), valid), last),
                    op.Unsqueeze(op.Mul(op.Mul(wyh, wxh), valid), last), axis=-1)  # [S, T, T, 4]
    rows = op.Reshape(op.Transpose(X, perm=[0, 2, 3, 1]), op.Concat(op.Constant(value_ints=[-1]), c_dim, axis=0))
    taps = op.Gather(rows, idx, axis=0)  # [S, T, T, 4, C]
    summed = op.ReduceSum(op.Mul(taps, op.Unsqueeze(wgt, last)), op.Constant(value_ints=[3]), keepdims=0)
    out1 = op.Unsqueeze(out_i, op.Constant(value_ints=[0]))
    n1 = op.Unsqueeze(n_i, op.Constant(value_ints=[0]))
    six = op.Concat(op.Slice(op.Shape(sr), op.Constant(value_ints=[0]), op.Constant(value_ints=[1])), out1, n1, out1,
                    n1, c_dim, axis=0)  # no 0 or -1: a Reshape of an empty S must name every dim
    bins = op.ReduceSum(op.Reshape(summed, six), op.Constant(value_ints=[2, 4]), keepdims=0)  # [S, out, out, C]
    exact = op.Transpose(op.Div(bins, op.Mul(n_f, n_f)), perm=[0, 3, 1, 2])
    Y = op.ScatterND(full, sel, exact)
    return Y


def function(opset: int) -> FunctionProto:
    """``sai::RoiAlignV0`` (standard ops only, importing opset ``opset`` >= 19)."""
    return function_proto(_roi_align_v0, [_axis_samples], opset, name=NAME,
                          doc="mmdetection v0.6 RoIAlign (roi end (x2 + 1) * scale, size clamped at 0)")
