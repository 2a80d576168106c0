"""``sai::Interpolate`` as ONNX functions (docs/design.md 3.3): plain, separable and depthwise bodies.

The ONNX face of ``models/ops.py: interpolate``: ``out = M * F + (1 - M) * conv(F * M, K) /
(conv(M, K) + eps)`` with the Gaussian ``K = s^2/(2 pi) * exp(-(s^2/2) (i^2 + j^2))``, ``i, j`` in
``[-r, r]``, ``r = (k - 1) / 2``. Attributes (design.md 3.3): ``kernel_size = 7``, ``sigma = 1.0``,
``eps = 1e-5``, ``channels`` (ours: the depthwise body's ``group``; 0 = unknown, plugins ignore
it), ``plugin_version = "1"`` and ``plugin_namespace = "sai"`` (TensorRT's).

Every body computes in float32 whatever the input type and casts the output back. Why (fp16
models): the Gaussian weights underflow in fp16 (``exp(-(s^2/2) d^2)`` below 6e-8), so ``den =
conv(M, K) + eps`` falls to ``eps`` where the sampled neighbours are far, ``(1 - M) / den`` then
exceeds fp16's 65504 and ``0 * inf`` is NaN: the trained demo model gave NaN for every logit. In
float32 the same formula is finite everywhere (num/den is a weighted mean of sampled features).
For float32 inputs the Casts are identities that onnxruntime removes (docs/design.md 7).

- ``plain_function`` (the dense reference): the Gaussian sums as a 1-channel ``Conv`` over
  ``[N*C, 1, H, W]`` (a ``group`` cannot depend on the channel count inside a function);
  ``auto_pad=SAME_UPPER`` with an odd kernel and stride 1 is exactly a zero padding of ``r``.
- ``separable_function``: ``K = s^2/(2 pi) * g(i) * g(j)`` with ``g(i) = exp(-(s^2/2) i^2)``, so
  each 2-D sum is a 1 x k then a k x 1 convolution (2k instead of k^2 products per value).
- ``depthwise_function`` (the sparse body's, when the nodes carry ``channels``): the numerator is
  one depthwise ``Conv`` over ``[N, C, H, W]`` with ``group`` from ``channels`` (measured in
  onnxruntime 1.31 at 256x128x208: 24 ms vs 204 ms for the 1-channel conv over ``[N*C, 1, H, W]``,
  which runs one tiny GEMM per plane), and the elementwise work (``F * M``, ``num * w``, the sum)
  in NHWC between boundary Transposes: the sparse SparseSampleConv bodies produce and consume NHWC
  rows, so onnxruntime's transpose optimizer cancels those Transposes against theirs (with
  ``graph.nhwc_residual_tails`` the residual add and ReLU stay NHWC too) and folds the ones next to
  the depthwise ``Conv`` into its NCHWc reorders. The same arithmetic in another memory order
  (exact); measured on sparse_resnet101 at 512x832 with the other passes: 7-9% faster.
"""

# ruff: noqa: B006 -- onnxscript takes the attribute defaults (lists) from the signature; never mutated

from __future__ import annotations

from onnx import FunctionProto, TensorProto
from onnxscript import opset19 as op
from onnxscript import script

from sai.constants import INTERPOLATE, PLUGIN_NAMESPACE, PLUGIN_VERSION

from ._script import HELPERS, SAI, function_proto

NAME = INTERPOLATE

# ---------------------------------------------------------------------------- shared fragments


@script(HELPERS, default_opset=op)
def _gaussian_taps(ks, sigma):
    """``i^2`` for ``i`` in ``[-r, r]`` (float), ``s^2/2``, ``s^2/(2 pi)`` and ``[k]``."""
    one_i = op.Constant(value_int=1)
    r = op.Div(op.Sub(ks, one_i), op.Constant(value_int=2))
    fi = op.Cast(op.Range(op.Neg(r), op.Add(r, one_i), one_i), to=TensorProto.FLOAT)
    fi2 = op.Mul(fi, fi)
    s2 = op.Mul(sigma, sigma)
    s2h = op.Mul(s2, op.Constant(value_float=0.5))
    scale = op.Mul(s2, op.Constant(value_float=0.15915494309189535))  # 1 / (2 pi)
    ks1 = op.Unsqueeze(ks, op.Constant(value_ints=[0]))
    return fi2, s2h, scale, ks1


@script(HELPERS, default_opset=op)
def _kernel_2d(fi2, s2h, scale, ks1, F):
    """``K [1, 1, k, k] = s^2/(2 pi) * exp(-(s^2/2) * (i^2 + j^2))`` in ``F``'s type."""
    d2 = op.Add(op.Unsqueeze(fi2, op.Constant(value_ints=[1])), op.Unsqueeze(fi2, op.Constant(value_ints=[0])))
    k2 = op.Mul(op.Exp(op.Neg(op.Mul(d2, s2h))), scale)
    k4 = op.Reshape(k2, op.Concat(op.Constant(value_ints=[1, 1]), ks1, ks1, axis=0))
    return op.CastLike(k4, F)


@script(HELPERS, default_opset=op)
def _kernel_separable(fi2, s2h, scale, ks1, F):
    """``Kr [1, 1, 1, k] = s^2/(2 pi) * g`` and ``Kc [1, 1, k, 1] = g``, ``g = exp(-(s^2/2) i^2)``."""
    g = op.Exp(op.Neg(op.Mul(fi2, s2h)))
    head = op.Constant(value_ints=[1, 1])
    one_1d = op.Constant(value_ints=[1])
    kr = op.Reshape(op.Mul(g, scale), op.Concat(head, one_1d, ks1, axis=0))
    kc = op.Reshape(g, op.Concat(head, ks1, one_1d, axis=0))
    return op.CastLike(kr, F), op.CastLike(kc, F)


@script(HELPERS, default_opset=op)
def _as_planes(x, F):
    """``x [N, C, H, W]`` as ``[N*C, 1, H, W]`` (the 1-channel Gaussian ``Conv``'s input)."""
    flat_shape = op.Concat(op.Constant(value_ints=[-1, 1]), op.Shape(F, start=2), axis=0)
    return op.Reshape(x, flat_shape)


@script(HELPERS, default_opset=op)
def _blend(fm, num, den0, eps, F, M):
    """``out = M * F + (1 - M) * num / (den0 + eps)``."""
    den = op.Add(den0, op.CastLike(eps, F))
    inv_m = op.Sub(op.CastLike(op.Constant(value_float=1.0), M), M)
    return op.Add(fm, op.Mul(inv_m, op.Div(num, den)))


_HELPERS = (_gaussian_taps, _kernel_2d, _kernel_separable, _as_planes, _blend)

# --------------------------------------------------------------------------------- the bodies


@script(SAI, default_opset=op)
def _plain(F, M, kernel_size: int = 7, sigma: float = 1.0, eps: float = 1e-5, channels: int = 0,
           plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE):
    F32 = op.Cast(F, to=TensorProto.FLOAT)
    M32 = op.Cast(M, to=TensorProto.FLOAT)
    fi2, s2h, scale, ks1 = _gaussian_taps(op.Constant(value_int=kernel_size), op.Constant(value_float=sigma))
    K = _kernel_2d(fi2, s2h, scale, ks1, F32)
    fm = op.Mul(F32, M32)
    num_planes = op.Conv(_as_planes(fm, F32), K, auto_pad="SAME_UPPER")
    num = op.Reshape(num_planes, op.Shape(F32))
    den0 = op.Conv(M32, K, auto_pad="SAME_UPPER")
    y = _blend(fm, num, den0, op.Constant(value_float=eps), F32, M32)
    Y = op.CastLike(y, F)
    return Y


@script(SAI, default_opset=op)
def _separable(F, M, kernel_size: int = 7, sigma: float = 1.0, eps: float = 1e-5, channels: int = 0,
               plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE):
    F32 = op.Cast(F, to=TensorProto.FLOAT)
    M32 = op.Cast(M, to=TensorProto.FLOAT)
    fi2, s2h, scale, ks1 = _gaussian_taps(op.Constant(value_int=kernel_size), op.Constant(value_float=sigma))
    Kr, Kc = _kernel_separable(fi2, s2h, scale, ks1, F32)
    fm = op.Mul(F32, M32)
    num_r = op.Conv(_as_planes(fm, F32), Kr, auto_pad="SAME_UPPER")
    num = op.Reshape(op.Conv(num_r, Kc, auto_pad="SAME_UPPER"), op.Shape(F32))
    den_r = op.Conv(M32, Kr, auto_pad="SAME_UPPER")
    den0 = op.Conv(den_r, Kc, auto_pad="SAME_UPPER")
    y = _blend(fm, num, den0, op.Constant(value_float=eps), F32, M32)
    Y = op.CastLike(y, F)
    return Y


@script(SAI, default_opset=op)
def _depthwise(F, M, channels: int, kernel_size: int = 7, sigma: float = 1.0, eps: float = 1e-5,
               plugin_version: str = PLUGIN_VERSION, plugin_namespace: str = PLUGIN_NAMESPACE):
    F32 = op.Cast(F, to=TensorProto.FLOAT)
    M32 = op.Cast(M, to=TensorProto.FLOAT)
    fi2, s2h, scale, ks1 = _gaussian_taps(op.Constant(value_int=kernel_size), op.Constant(value_float=sigma))
    K = _kernel_2d(fi2, s2h, scale, ks1, F32)
    ax0 = op.Constant(value_ints=[0])
    ax1 = op.Constant(value_ints=[1])
    ax3 = op.Constant(value_ints=[3])
    # elementwise work in NHWC between boundary Transposes that onnxruntime's transpose optimizer
    # cancels against the neighbouring sparse bodies' (their rows are NHWC); the depthwise Conv's
    # Transposes fold into its NCHWc reorders
    fmt = op.Mul(op.Transpose(F32, perm=[0, 2, 3, 1]), op.Unsqueeze(op.Squeeze(M32, ax1), ax3))
    fm = op.Transpose(fmt, perm=[0, 3, 1, 2])
    # C from the attribute, not Shape(F): the kernel stays a constant that onnxruntime folds and
    # prepacks (NCHWc depthwise), 2.5x faster than a runtime-built kernel
    c1 = op.Unsqueeze(op.Constant(value_int=channels), ax0)
    Kdw = op.Expand(K, op.Concat(c1, op.Constant(value_ints=[1]), ks1, ks1, axis=0))
    num = op.Conv(fm, Kdw, group=channels, auto_pad="SAME_UPPER")
    den0 = op.Conv(M32, K, auto_pad="SAME_UPPER")
    # out = M * F + num * ((1 - M) / den): the division on [N, 1, H, W]
    den = op.Add(den0, op.CastLike(op.Constant(value_float=eps), F32))
    inv_m = op.Sub(op.CastLike(op.Constant(value_float=1.0), M32), M32)
    wfill = op.Div(inv_m, den)
    # a no-op Reshape: keeps onnxruntime's transpose optimizer from moving this Transpose below
    # the Mul (it then stays next to the Conv and folds into its NCHWc reorder)
    numt = op.Reshape(op.Transpose(num, perm=[0, 2, 3, 1]), op.Shape(fmt))
    fillt = op.Mul(numt, op.Unsqueeze(op.Squeeze(wfill, ax1), ax3))
    y = op.Transpose(op.Add(fmt, fillt), perm=[0, 3, 1, 2])
    Y = op.CastLike(y, F)
    return Y


def plain_function(opset: int) -> FunctionProto:
    """The reference body: 1-channel Gaussian ``Conv`` over ``[N*C, 1, H, W]``."""
    return function_proto(_plain, _HELPERS, opset, name=NAME, doc="Body of sai::Interpolate (docs/design.md 3.3).")


def separable_function(opset: int) -> FunctionProto:
    """1 x k then k x 1 Gaussian ``Conv`` over ``[N*C, 1, H, W]`` (nodes without ``channels``)."""
    return function_proto(_separable, _HELPERS, opset, name=NAME,
                          doc="Body of sai::Interpolate (docs/design.md 3.3), separable Gaussian.")


def depthwise_function(opset: int) -> FunctionProto:
    """Depthwise Gaussian ``Conv`` (``group`` = the node's ``channels``), elementwise work in NHWC."""
    return function_proto(_depthwise, _HELPERS, opset, name=NAME, doc="Body of sai::Interpolate (docs/design.md 3.3).")
