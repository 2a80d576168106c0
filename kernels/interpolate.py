"""Interpolate (docs/design.md 3.3) as a Triton stencil computed only where M < 1.

``compact.partition(mask, "lt1")`` puts the positions with M < 1 first; tiles of positions x
channels run the k x k Gaussian stencil for those rows only (the other rows copy F, and tiles wholly
past the device-side count skip the stencil), reading F and M through their strides (NHWC fast).
The normaliser is computed in fp32 whatever the input dtype: the Gaussian weights
``K = sigma^2/(2 pi) exp(-sigma^2/2 (i^2+j^2))`` are evaluated in fp32 in the kernel (in fp16 they
underflow for the usual sigmas), ``num`` and ``den = conv(M, K) + eps`` accumulate in fp32, and
F is read only where its neighbour's M > 0 (its values elsewhere must not matter: a NaN there never
reaches the output). ``den >= eps > 0`` so no inf or NaN appears where M == 1 or den is tiny.

The optional fused epilogue ``relu(interp + bias + identity)`` is the bottleneck tail of
docs/design.md 3.4 (fast form) in one kernel: ``interpolate_add_relu``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import triton
import triton.language as tl
from torch import Tensor

from sai.errors import SaiError
from sai.kernels import configs
from sai.kernels._jit import check_device, check_float, kernel
from sai.kernels.compact import partition


@kernel
def interpolate_kernel(
    f_ptr, m_ptr, idx_ptr, cnt_ptr, b_ptr, id_ptr, y_ptr,
    P, C, H, W,
    sfn, sfc, sfh, sfw,
    smn, smh, smw,
    sin_, sic, sih, siw,
    syn, syc, syh, syw,
    HALF_S2, NORM, EPS,
    KS, FUSED: tl.constexpr,
    BP: tl.constexpr, BC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    count = tl.load(cnt_ptr)
    rows = pid_p * BP + tl.arange(0, BP)
    rvalid = rows < P
    need = rows < count  # M < 1 here: the stencil is needed
    p = tl.load(idx_ptr + rows, mask=rvalid, other=0)
    x = p % W
    t = p // W
    y = t % H
    n = (t // H).to(tl.int64)
    ch = pid_c * BC + tl.arange(0, BC)
    cmask = ch < C
    m = tl.load(m_ptr + n * smn + y * smh + x * smw, mask=rvalid, other=0.0).to(tl.float32)

    num = tl.full([BP, BC], 0.0, tl.float32)
    den = tl.full([BP], 0.0, tl.float32)
    if pid_p * BP < count:
        R = (KS - 1) // 2
        for tap in range(KS * KS):  # a loop, not unrolled: 49 taps of gathers would bloat the code
            di = tap // KS - R
            dj = tap % KS - R
            kw = NORM * tl.exp(-HALF_S2 * (di * di + dj * dj))  # fp32 Gaussian weight
            qy = y + di
            qx = x + dj
            inb = need & (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
            mq = tl.load(m_ptr + n * smn + qy * smh + qx * smw, mask=inb, other=0.0).to(tl.float32)
            wq = kw * mq
            den += wq
            use = inb & (mq > 0)
            fq = tl.load(f_ptr + n[:, None] * sfn + (qy * sfh + qx * sfw)[:, None] + ch[None, :] * sfc,
                         mask=use[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            num += wq[:, None] * fq

    omask = rvalid[:, None] & cmask[None, :]
    f = tl.load(f_ptr + n[:, None] * sfn + (y * sfh + x * sfw)[:, None] + ch[None, :] * sfc,
                mask=omask & (m > 0)[:, None], other=0.0).to(tl.float32)
    out = m[:, None] * f
    interp = (1.0 - m)[:, None] * (num / (den + EPS)[:, None])
    out += tl.where(need[:, None], interp, 0.0)
    if FUSED:
        bias = tl.load(b_ptr + ch, mask=cmask, other=0.0).to(tl.float32)
        ident = tl.load(id_ptr + n[:, None] * sin_ + (y * sih + x * siw)[:, None] + ch[None, :] * sic,
                        mask=omask, other=0.0).to(tl.float32)
        out = tl.maximum(out + bias[None, :] + ident, 0.0)
    yptr = y_ptr + n[:, None] * syn + (y * syh + x * syw)[:, None] + ch[None, :] * syc
    tl.store(yptr, out.to(y_ptr.dtype.element_ty), mask=omask)


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------


def _check(name: str, feature: Tensor, mask: Tensor, kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise SaiError(f"{name}: kernel_size must be a positive odd number, got {kernel_size}")
    if feature.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1:
        raise SaiError(f"{name} expects feature [N,C,H,W] and mask [N,1,H,W], got "
                       f"{list(feature.shape)} and {list(mask.shape)}")
    if (mask.shape[0], mask.shape[2], mask.shape[3]) != (feature.shape[0], feature.shape[2], feature.shape[3]):
        raise SaiError(f"{name}: mask {list(mask.shape)} must match feature {list(feature.shape)} in N, H and W")
    check_float(name, "feature", feature)
    check_float(name, "mask", mask)


def _launch(feature, mask, sigma, kernel_size, eps, bias=None, identity=None) -> Tensor:
    dev = feature.device
    n, c, h, w = feature.shape
    y = torch.empty((n, c, h, w), dtype=feature.dtype, device=dev, memory_format=torch.channels_last)
    p = n * h * w
    if y.numel() == 0:
        return y
    idx, cnt = partition(mask, "lt1")
    s2 = float(sigma) ** 2
    cfg = configs.lookup("interpolate", configs.arch_name(dev), dtype=str(feature.dtype).replace("torch.", ""),
                         k=kernel_size, fused=bias is not None)
    bp, bc = cfg["BP"], cfg["BC"]
    grid = (triton.cdiv(p, bp), triton.cdiv(c, bc))
    fused = bias is not None
    ident = identity if fused else feature
    launch_opts = {} if dev.type != "cuda" else {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    interpolate_kernel.on(dev)[grid](
        feature, mask, idx, cnt, bias if fused else feature, ident, y,
        p, c, h, w, *feature.stride(), mask.stride(0), mask.stride(2), mask.stride(3),
        *ident.stride(), *y.stride(),
        s2 / 2.0, s2 / (2.0 * math.pi), float(eps),
        KS=kernel_size, FUSED=fused, BP=bp, BC=bc, **launch_opts,
    )
    return y


def interpolate(
    feature: Tensor,
    mask: Tensor,
    sigma: Union[float, Tensor],
    kernel_size: int = 7,
    eps: float = 1e-5,
) -> Tensor:
    """``sai.models.ops.interpolate`` on the GPU (stencil only where M < 1); channels_last NCHW output."""
    name = "sai.kernels.interpolate"
    _check(name, feature, mask, kernel_size)
    check_device(name, feature, mask)
    return _launch(feature, mask, float(sigma), int(kernel_size), float(eps))


def interpolate_add_relu(
    feature: Tensor,
    mask: Tensor,
    sigma: Union[float, Tensor],
    bias: Optional[Tensor],
    identity: Tensor,
    kernel_size: int = 7,
    eps: float = 1e-5,
) -> Tensor:
    """``relu(interpolate(feature, mask, sigma) + bias + identity)`` in one kernel (docs/design.md 3.4, fast form)."""
    name = "sai.kernels.interpolate_add_relu"
    _check(name, feature, mask, kernel_size)
    c = feature.shape[1]
    if bias is None:
        bias = torch.zeros(c, dtype=torch.float32, device=feature.device)
    if tuple(bias.shape) != (c,):
        raise SaiError(f"{name}: bias must have shape [{c}], got {list(bias.shape)}")
    if tuple(identity.shape) != tuple(feature.shape):
        raise SaiError(f"{name}: identity must have the feature's shape {list(feature.shape)}, "
                       f"got {list(identity.shape)}")
    check_float(name, "bias", bias)
    check_float(name, "identity", identity)
    check_device(name, feature, mask, bias, identity)
    return _launch(feature, mask, float(sigma), int(kernel_size), float(eps), bias, identity)
