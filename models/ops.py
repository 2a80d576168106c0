"""The two sai ops as ``torch.library`` custom ops, with PyTorch reference implementations.

Semantics follow docs/design.md section 3 (normative):

- ``sai::sparse_sample_conv``: ``Y = act(conv(X, W) + B)`` where ``M > 0`` and exactly 0 where
  ``M == 0``; deformable convolution v1 (ONNX ``DeformConv`` semantics, no mask input) when an
  ``offset`` is given.
- ``sai::interpolate``: ``out = M*F + (1-M) * dwconv(F*M, K) / (conv(M, K) + eps)`` with the
  Gaussian kernel ``K[i,j] = sigma^2/(2 pi) * exp(-sigma^2/2 * (i^2 + j^2))``.

The reference functions here are the CPU fallback and the oracle the faster kernels are tested
against. The custom ops have fake kernels (for ``torch.export``) and autograd (recomputing the
reference), so the same model code trains, evaluates and exports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from sai.errors import SaiError

ACTIVATIONS = ("none", "relu")

IntOrPair = Union[int, Sequence[int]]


# ----------------------------------------------------------------------------------------------
# argument normalisation
# ----------------------------------------------------------------------------------------------


def _pair(value: IntOrPair, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    vals = [int(v) for v in value]
    if len(vals) == 1:
        return vals * 2
    if len(vals) != 2:
        raise SaiError(f"{name} must be an int or a pair of ints, got {value!r}")
    return vals


def normalize_pads(padding: IntOrPair) -> list[int]:
    """Return ONNX 4-value pads ``[top, left, bottom, right]`` from an int, a pair or 4 values."""
    if isinstance(padding, int):
        return [padding] * 4
    vals = [int(v) for v in padding]
    if len(vals) == 1:
        return vals * 4
    if len(vals) == 2:
        return [vals[0], vals[1], vals[0], vals[1]]
    if len(vals) == 4:
        return vals
    raise SaiError(f"padding must be an int, a pair or 4 ONNX-style values, got {padding!r}")


def conv_output_size(
    size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int
) -> int:
    """Output length of a convolution along one axis (ONNX/PyTorch floor rule)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _check_conv_args(
    x: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    offset: Optional[Tensor],
    stride: list[int],
    pads: list[int],
    dilation: list[int],
    groups: int,
    deform_groups: int,
    activation: str,
) -> tuple[int, int]:
    if x.dim() != 4 or weight.dim() != 4 or mask.dim() != 4:
        raise SaiError(
            "sparse_sample_conv expects 4-D NCHW x, mask [N,1,Ho,Wo] and weight [Cout,Cin/g,kh,kw]; "
            f"got x {tuple(x.shape)}, mask {tuple(mask.shape)}, weight {tuple(weight.shape)}"
        )
    if activation not in ACTIVATIONS:
        raise SaiError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if min(stride) < 1 or min(dilation) < 1 or min(pads) < 0:
        raise SaiError(f"stride/dilation must be >= 1 and pads >= 0, got {stride}, {dilation}, {pads}")
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    if groups < 1 or cin % groups or cout % groups or cin // groups != cin_g:
        raise SaiError(
            f"groups={groups} does not fit x channels {cin} and weight {tuple(weight.shape)}: "
            "weight must be [Cout, Cin/groups, kh, kw] with Cin and Cout divisible by groups"
        )
    ho = conv_output_size(h, kh, stride[0], pads[0], pads[2], dilation[0])
    wo = conv_output_size(w, kw, stride[1], pads[1], pads[3], dilation[1])
    if ho < 1 or wo < 1:
        raise SaiError(f"input {h}x{w} is too small for kernel {kh}x{kw} with these pads/dilations")
    if tuple(mask.shape) != (n, 1, ho, wo):
        raise SaiError(
            f"mask must have shape [N,1,Ho,Wo] = {[n, 1, ho, wo]} for this convolution, "
            f"got {list(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (cout,):
        raise SaiError(f"bias must have shape [{cout}], got {list(bias.shape)}")
    if offset is not None:
        if deform_groups < 1 or cin % deform_groups:
            raise SaiError(f"deform_groups={deform_groups} must divide the input channels {cin}")
        want = (n, 2 * deform_groups * kh * kw, ho, wo)
        if tuple(offset.shape) != want:
            raise SaiError(f"offset must have shape {list(want)}, got {list(offset.shape)}")
    return ho, wo


# ----------------------------------------------------------------------------------------------
# reference implementations (plain differentiable PyTorch)
# ----------------------------------------------------------------------------------------------


def deform_conv2d_reference(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    pads: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    deform_groups: int,
) -> Tensor:
    """Deformable convolution v1 (ONNX ``DeformConv`` without mask input).

    Offset channel ``g*2*K + 2*k + {0: dy, 1: dx}`` for deform group ``g`` and kernel tap ``k``
    (row-major over kh x kw). Bilinear sampling, zero outside the image.
    """
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    ho = conv_output_size(h, kh, stride[0], pads[0], pads[2], dilation[0])
    wo = conv_output_size(w, kw, stride[1], pads[1], pads[3], dilation[1])
    k = kh * kw
    dg = deform_groups
    dev, dt = x.device, x.dtype
    off = offset.reshape(n, dg, k, 2, ho, wo)
    ky = torch.arange(kh, device=dev).repeat_interleave(kw).to(dt)
    kx = torch.arange(kw, device=dev).repeat(kh).to(dt)
    base_y = (torch.arange(ho, device=dev, dtype=dt) * stride[0] - pads[0])[None, :, None] + (
        ky * dilation[0]
    )[:, None, None]
    base_x = (torch.arange(wo, device=dev, dtype=dt) * stride[1] - pads[1])[None, None, :] + (
        kx * dilation[1]
    )[:, None, None]
    py = base_y + off[:, :, :, 0]  # [N, dg, K, Ho, Wo]
    px = base_x + off[:, :, :, 1]
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0 = torch.floor(py)
    x0 = torch.floor(px)
    ly = py - y0
    lx = px - x0
    hy = 1 - ly
    hx = 1 - lx
    y0i = y0.long()
    x0i = x0.long()
    xg = x.reshape(n, dg, cin // dg, h * w)
    cols = torch.zeros(n, dg, cin // dg, k * ho * wo, device=dev, dtype=dt)
    for dy, dx, wgt in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
        yc = y0i + dy
        xc = x0i + dx
        ok = inside & (yc >= 0) & (yc < h) & (xc >= 0) & (xc < w)
        idx = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).reshape(n, dg, 1, k * ho * wo)
        vals = torch.gather(xg, 3, idx.expand(n, dg, cin // dg, k * ho * wo))
        cols = cols + vals * (wgt * ok.to(dt)).reshape(n, dg, 1, k * ho * wo)
    cols = cols.reshape(n, groups, cin_g * k, ho * wo)
    wmat = weight.reshape(groups, cout // groups, cin_g * k)
    out = torch.einsum("gok,ngkl->ngol", wmat, cols).reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias.reshape(1, cout, 1, 1)
    return out


def sparse_sample_conv_reference(
    x: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    offset: Optional[Tensor],
    stride: Sequence[int],
    pads: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    deform_groups: int,
    activation: str,
) -> Tensor:
    """Dense-equivalent reference of docs/design.md 3.2: conv, bias, activation, then zero where M == 0."""
    if offset is None:
        xp = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        y = F.conv2d(xp, weight, bias, stride=list(stride), dilation=list(dilation), groups=groups)
    else:
        y = deform_conv2d_reference(
            x, offset, weight, bias, stride, pads, dilation, groups, deform_groups
        )
    if activation == "relu":
        y = torch.relu(y)
    return torch.where(mask > 0, y, torch.zeros((), dtype=y.dtype, device=y.device))


def gaussian_kernel(sigma: Union[float, Tensor], kernel_size: int, dtype=None, device=None) -> Tensor:
    """``K[i,j] = sigma^2/(2 pi) * exp(-sigma^2/2 * (i^2 + j^2))`` for ``i, j in [-r, r]``."""
    r = (kernel_size - 1) // 2
    if isinstance(sigma, Tensor):
        dtype = dtype or sigma.dtype
        device = device or sigma.device
        s2 = sigma.to(dtype) ** 2
    else:
        s2 = torch.tensor(float(sigma) ** 2, dtype=dtype or torch.float32, device=device)
    ii = torch.arange(-r, r + 1, dtype=s2.dtype, device=s2.device)
    d2 = ii[:, None] ** 2 + ii[None, :] ** 2
    return s2 / (2 * math.pi) * torch.exp(-(s2 / 2) * d2)


def interpolate_reference(
    feature: Tensor, mask: Tensor, sigma: Union[float, Tensor], kernel_size: int, eps: float
) -> Tensor:
    """docs/design.md 3.3 in plain PyTorch (differentiable in feature, mask and a tensor sigma).

    Half-precision inputs are computed in float32 and the result cast back: in fp16 the Gaussian
    weights underflow, ``den`` falls to ``eps``, ``(1 - M) / den`` overflows and ``0 * inf`` is NaN.
    """
    if feature.dtype in (torch.float16, torch.bfloat16):
        out = interpolate_reference(feature.float(), mask.float(), sigma, kernel_size, eps)
        return out.to(feature.dtype)
    c = feature.shape[1]
    r = (kernel_size - 1) // 2
    kern = gaussian_kernel(sigma, kernel_size, dtype=feature.dtype, device=feature.device)
    num = F.conv2d(feature * mask, kern.expand(c, 1, kernel_size, kernel_size), padding=r, groups=c)
    den = F.conv2d(mask, kern.reshape(1, 1, kernel_size, kernel_size), padding=r) + eps
    return mask * feature + (1 - mask) * num / den


# ----------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("sai::sparse_sample_conv", mutates_args=())
def _sparse_sample_conv_op(
    x: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    offset: Optional[Tensor],
    stride: list[int],
    pads: list[int],
    dilation: list[int],
    groups: int,
    deform_groups: int,
    activation: str,
) -> Tensor:
    return sparse_sample_conv_reference(
        x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups, activation
    ).contiguous()


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernels_take_conv(x: Tensor, mask: Tensor, weight: Tensor, offset: Optional[Tensor]) -> bool:
    """Whether the Triton conv kernel takes these dtypes (else its CUDA implementation runs the reference)."""
    same = weight.dtype == x.dtype and (offset is None or offset.dtype == x.dtype)
    return x.dtype in _KERNEL_DTYPES and same and mask.dtype in _KERNEL_DTYPES


def kernels_take_interp(feature: Tensor, mask: Tensor) -> bool:
    """Whether the Triton Interpolate kernel takes these dtypes."""
    return feature.dtype in _KERNEL_DTYPES and mask.dtype in _KERNEL_DTYPES


def output_memory_format(device: torch.device, kernels_take: bool) -> torch.memory_format:
    """The memory format every implementation of the sai ops returns, which the fake kernels state
    (torch.compile relies on it): channels_last where the Triton kernels run (CUDA tensors of a
    dtype they take, the kernels registered), contiguous NCHW everywhere else (the CPU kernels and
    every reference fallback)."""
    if device.type == "cuda" and kernels_take:
        try:
            from sai.kernels import torch_ops
        except ImportError:  # no triton: the reference serves CUDA tensors
            return torch.contiguous_format
        if torch_ops.registered():
            return torch.channels_last
    return torch.contiguous_format


@_sparse_sample_conv_op.register_fake
def _(x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups, activation):
    fmt = output_memory_format(x.device, kernels_take_conv(x, mask, weight, offset))
    return torch.empty((x.shape[0], weight.shape[0], mask.shape[2], mask.shape[3]), dtype=x.dtype,
                       device=x.device, memory_format=fmt)


def _ssc_setup(ctx, inputs, output):
    ctx.save_for_backward(*(t for t in inputs[:5] if t is not None))
    ctx.present = [t is not None for t in inputs[:5]]
    ctx.attrs = inputs[5:]


def _ssc_backward(ctx, grad):
    saved = list(ctx.saved_tensors)
    tensors = [saved.pop(0) if p else None for p in ctx.present]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None for t in tensors]
        out = sparse_sample_conv_reference(*leaves, *ctx.attrs)
        need = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, need, grad, allow_unused=True))
    result = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
    return (*result, None, None, None, None, None, None)


torch.library.register_autograd(
    "sai::sparse_sample_conv", _ssc_backward, setup_context=_ssc_setup
)


@torch.library.custom_op("sai::interpolate", mutates_args=())
def _interpolate_op(feature: Tensor, mask: Tensor, sigma: float, kernel_size: int, eps: float) -> Tensor:
    return interpolate_reference(feature, mask, sigma, kernel_size, eps).contiguous()


@_interpolate_op.register_fake
def _(feature, mask, sigma, kernel_size, eps):
    fmt = output_memory_format(feature.device, kernels_take_interp(feature, mask))
    return torch.empty(feature.shape, dtype=feature.dtype, device=feature.device, memory_format=fmt)


def _interp_setup(ctx, inputs, output):
    feature, mask, sigma, kernel_size, eps = inputs
    ctx.save_for_backward(feature, mask)
    ctx.attrs = (sigma, kernel_size, eps)


def _interp_backward(ctx, grad):
    feature, mask = ctx.saved_tensors
    with torch.enable_grad():
        f = feature.detach().requires_grad_(True)
        m = mask.detach().requires_grad_(True)
        out = interpolate_reference(f, m, *ctx.attrs)
        gf, gm = torch.autograd.grad(out, (f, m), grad)
    return gf, gm, None, None, None


torch.library.register_autograd("sai::interpolate", _interp_backward, setup_context=_interp_setup)


# ----------------------------------------------------------------------------------------------
# public wrappers
# ----------------------------------------------------------------------------------------------


def sparse_sample_conv(
    x: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    activation: str = "none",
    offset: Optional[Tensor] = None,
    deform_groups: int = 1,
) -> Tensor:
    """Convolution computed only where ``mask > 0`` (zero elsewhere); docs/design.md 3.2.

    ``padding`` is an int, a pair ``(ph, pw)`` or ONNX pads ``(top, left, bottom, right)``.
    ``offset`` switches to deformable convolution v1.
    """
    stride_l = _pair(stride, "stride")
    pads_l = normalize_pads(padding)
    dil_l = _pair(dilation, "dilation")
    if not torch.compiler.is_compiling():  # traced: fake kernel + ONNX shape inference check shapes
        _check_conv_args(
            x, mask, weight, bias, offset, stride_l, pads_l, dil_l, groups, deform_groups, activation
        )
    return torch.ops.sai.sparse_sample_conv(
        x, mask, weight, bias, offset, stride_l, pads_l, dil_l, int(groups), int(deform_groups), activation
    )


def interpolate(
    feature: Tensor,
    mask: Tensor,
    sigma: Union[float, Tensor],
    kernel_size: int = 7,
    eps: float = 1e-5,
) -> Tensor:
    """Gaussian interpolation of the positions where ``mask < 1``; docs/design.md 3.3.

    A ``sigma`` tensor that requires grad (training) takes the differentiable reference path;
    otherwise the custom op is called with ``float(sigma)``.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise SaiError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if feature.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1:
        raise SaiError(
            f"interpolate expects feature [N,C,H,W] and mask [N,1,H,W], got "
            f"{list(feature.shape)} and {list(mask.shape)}"
        )
    if (mask.shape[0], mask.shape[2], mask.shape[3]) != (feature.shape[0], feature.shape[2], feature.shape[3]):
        raise SaiError(
            f"mask {list(mask.shape)} must match feature {list(feature.shape)} in N, H and W"
        )
    if isinstance(sigma, Tensor):
        if sigma.requires_grad and torch.is_grad_enabled():
            return interpolate_reference(feature, mask, sigma.reshape(()), kernel_size, eps)
        sigma = float(sigma)
    return torch.ops.sai.interpolate(feature, mask, float(sigma), int(kernel_size), float(eps))
