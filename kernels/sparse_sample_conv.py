"""SparseSampleConv (docs/design.md 3.2) as a Triton implicit GEMM over the active positions.

Rows of the GEMM are the active output positions (``compact.partition``: M > 0 first, then the
rest), columns the output channels of one group, and one software-pipelined K loop runs over taps x
blocks of input channels (the pipeline drains once per tile, not after every tap; tiles come from
``configs/`` by the rows N*Ho*Wo and the output channels). A tiles are gathered straight from the input through its strides (NHWC is the fast
layout: the channels of one position are contiguous), zero outside the image, or bilinearly sampled
for the deformable variant (v1, zero outside); B tiles come from the weights packed once to
``[group, tap, Cin/group, Cout/group]``. ``tl.dot`` accumulates in fp32 (tensor cores for
fp16/bf16; fp32 inputs use ``fp32_precision()``: "ieee" by default, "tf32" on request). The
epilogue adds the bias, applies the activation and writes every position of the output once: the
computed value where M > 0 and exactly 0 elsewhere (the tiles past the device-side count only
write zeros), so there is no im2col buffer, no memset and no host synchronisation.
"""

from __future__ import annotations

import os
import weakref
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from sai.errors import SaiError
from sai.kernels import configs
from sai.kernels._jit import check_device, check_float, interpreting, kernel
from sai.kernels.compact import partition


@kernel
def sparse_conv_kernel(
    x_ptr, w_ptr, b_ptr, off_ptr, idx_ptr, cnt_ptr, y_ptr,
    P, H, W, Ho, Wo, CIN_G, COUT_G, CIN_DG,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    syn, syc, syh, syw,
    STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W,
    KH, KW,
    HAS_BIAS: tl.constexpr, DEFORM: tl.constexpr, RELU: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    # One K loop over taps x channel blocks (kk -> tap = kk // nkb, c0 = (kk % nkb) * BK), not a tap
    # loop around a channel loop: the software pipeliner then overlaps the loads of the next tap with
    # the MMAs of this one and drains once per tile instead of after every tap (a nested loop waits
    # for every wgmma / cp.async and syncs the CTA at each inner exit; make cuda-check fails on that).
    # KH and KW are run-time values here and in the "any" AOT builds, constants in the fast builds
    # (1x1, 3x3); either way the taps are not unrolled: the loop stays one loop.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    nblk = (COUT_G + BN - 1) // BN
    g = pid_n // nblk
    co = (pid_n % nblk) * BN + tl.arange(0, BN)
    cmask = co < COUT_G
    count = tl.load(cnt_ptr)

    rows = pid_m * BM + tl.arange(0, BM)
    rvalid = rows < P
    act = rows < count
    p = tl.load(idx_ptr + rows, mask=rvalid, other=0)
    ox = p % Wo
    t = p // Wo
    oy = t % Ho
    n = (t // Ho).to(tl.int64)

    acc = tl.full([BM, BN], 0.0, tl.float32)
    if pid_m * BM < count:  # tiles wholly past the active count only write zeros
        xrow = x_ptr + n * sxn
        iy0 = oy * STRIDE_H - PAD_T  # the tap (0, 0) of each row; tap (ky, kx) adds (ky*DIL_H, kx*DIL_W)
        ix0 = ox * STRIDE_W - PAD_L
        if not DEFORM:
            xbase = xrow + iy0 * sxh + ix0 * sxw
        hu = H.to(tl.uint32)  # 0 <= iy < H as one unsigned compare
        wu = W.to(tl.uint32)
        wgrp = w_ptr + (g * KH * KW * CIN_G).to(tl.int64) * COUT_G
        # (tap, ky, kx, c0) walk the flat K index as loop-carried counters: no division per step
        tap = 0
        ky = 0
        kx = 0
        c0 = 0
        for _kk in range(0, KH * KW * ((CIN_G + BK - 1) // BK)):
            dy = ky * DIL_H
            dx = kx * DIL_W
            iy = iy0 + dy
            ix = ix0 + dx
            ci = c0 + tl.arange(0, BK)
            kmask = ci < CIN_G
            cg = g * CIN_G + ci
            if DEFORM:
                # offset channel (dg*KH*KW + tap)*2 + {0: dy, 1: dx}; dg of each input channel
                och = ((cg // CIN_DG) * (KH * KW) + tap) * 2
                obase = off_ptr + n * son + oy * soh + ox * sow
                omask = act[:, None] & kmask[None, :]
                ody = tl.load(obase[:, None] + och[None, :] * soc, mask=omask, other=0.0).to(tl.float32)
                odx = tl.load(obase[:, None] + (och + 1)[None, :] * soc, mask=omask, other=0.0).to(tl.float32)
                py = iy.to(tl.float32)[:, None] + ody
                px = ix.to(tl.float32)[:, None] + odx
                inside = omask & (py > -1.0) & (py < H) & (px > -1.0) & (px < W)
                y0f = tl.floor(py)
                x0f = tl.floor(px)
                ly = py - y0f
                lx = px - x0f
                y0 = y0f.to(tl.int32)
                x0 = x0f.to(tl.int32)
                cptr = xrow[:, None] + cg[None, :] * sxc
                val = tl.full([BM, BK], 0.0, tl.float32)
                for corner in tl.static_range(4):
                    yc = y0 + corner // 2
                    xc = x0 + corner % 2
                    wy = ly if corner // 2 == 1 else 1.0 - ly
                    wx = lx if corner % 2 == 1 else 1.0 - lx
                    ok = inside & (yc >= 0) & (yc < H) & (xc >= 0) & (xc < W)
                    v = tl.load(cptr + yc * sxh + xc * sxw, mask=ok, other=0.0).to(tl.float32)
                    val += v * (wy * wx)
                a = val.to(x_ptr.dtype.element_ty)
            else:
                inb = act & (iy.to(tl.uint32) < hu) & (ix.to(tl.uint32) < wu)
                aptr = xbase[:, None] + (dy * sxh + dx * sxw) + cg[None, :] * sxc
                a = tl.load(aptr, mask=inb[:, None] & kmask[None, :], other=0.0)
            wtap = wgrp + (tap * CIN_G).to(tl.int64) * COUT_G
            b = tl.load(wtap + ci[:, None] * COUT_G + co[None, :],
                        mask=kmask[:, None] & cmask[None, :], other=0.0)
            if UPCAST_DOT:  # the interpreter's dot cannot multiply bfloat16 (stored as uint16)
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc, input_precision=PRECISION)
            c0 += BK
            next_tap = c0 >= CIN_G
            c0 = tl.where(next_tap, 0, c0)
            tap = tl.where(next_tap, tap + 1, tap)
            kx = tl.where(next_tap, kx + 1, kx)
            next_row = kx >= KW
            kx = tl.where(next_row, 0, kx)
            ky = tl.where(next_row, ky + 1, ky)

    if HAS_BIAS:
        bias = tl.load(b_ptr + g * COUT_G + co, mask=cmask, other=0.0).to(tl.float32)
        acc += bias[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    acc = tl.where(act[:, None], acc, 0.0)
    yptr = y_ptr + n[:, None] * syn + (oy * syh + ox * syw)[:, None] + (g * COUT_G + co)[None, :] * syc
    tl.store(yptr, acc.to(y_ptr.dtype.element_ty), mask=rvalid[:, None] & cmask[None, :])


# ----------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------

_FP32_PRECISIONS = ("ieee", "tf32")
_state = {"fp32": os.environ.get("SAI_KERNELS_FP32", "ieee")}
_packed: dict = {}


def fp32_precision(value: Optional[str] = None) -> str:
    """Get (or set) how fp32 inputs multiply: "ieee" (exact fp32 FMA, default) or "tf32" (tensor cores)."""
    if value is not None:
        if value not in _FP32_PRECISIONS:
            raise SaiError(f"fp32 precision must be one of {_FP32_PRECISIONS}, got {value!r}")
        _state["fp32"] = value
    return _state["fp32"]


def pack_weight(weight: Tensor, groups: int) -> Tensor:
    """``[Cout, Cin/g, kh, kw]`` -> contiguous ``[g, kh*kw, Cin/g, Cout/g]``, cached per weight version.

    An entry lives only as long as the weight tensor it was packed from (a weakref finalizer drops it):
    a freed weight's address reused by a new tensor of the same shape must never hit the old packing."""
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype, weight.device, groups)
    hit = _packed.get(key)
    if hit is not None and hit[0]() is not None:
        return hit[1]
    cout, cin_g, kh, kw = weight.shape
    packed = (weight.detach().reshape(groups, cout // groups, cin_g, kh * kw)
              .permute(0, 3, 2, 1).contiguous())
    if len(_packed) > 256:
        _packed.clear()
    _packed[key] = (weakref.ref(weight), packed)
    weakref.finalize(weight, _packed.pop, key, None)
    return packed


def conv_tiles(dev: torch.device, x: Tensor, kh: int, kw: int, cin_g: int, cout_g: int, p: int, deform: bool,
               **extra) -> dict:
    """The tile config of one launch of ``sparse_conv_kernel`` (``configs.conv_config``, the one chooser of
    the per-op conv and the fused block): by the rows ``p`` (N*Ho*Wo) and output channels per group, among
    the tiles of the AOT build this launch corresponds to ("fast": 1x1/3x3, channels innermost,
    16-divisible channel counts; else "any"), so every tile picked here has a cubin in ``make kernels``."""
    fast = (kh == kw and kh in (1, 3) and x.stride(1) == 1 and cin_g % 16 == 0 and cout_g % 16 == 0
            and x.dtype != torch.float32)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else None
    return configs.conv_config(configs.arch_name(dev), dtype=str(x.dtype).replace("torch.", ""), k=kh, deform=deform,
                               P=p, cout=cout_g, build="fast" if fast else "any", sms=sms, **extra)


def _pair(value, name: str) -> list[int]:
    from sai.models.ops import _pair as ops_pair

    return ops_pair(value, name)


def sparse_sample_conv(
    x: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: str = "none",
    offset: Optional[Tensor] = None,
    deform_groups: int = 1,
) -> Tensor:
    """``sai.models.ops.sparse_sample_conv`` on the GPU: computed only where ``mask > 0``, 0 elsewhere.

    Returns logical NCHW ``[N, Cout, Ho, Wo]`` in channels_last memory, dtype of ``x``.
    """
    from sai.models.ops import _check_conv_args, normalize_pads

    stride_l = _pair(stride, "stride")
    pads_l = normalize_pads(padding)
    dil_l = _pair(dilation, "dilation")
    return sparse_sample_conv_attrs(x, mask, weight, bias, offset, stride_l, pads_l, dil_l,
                                    int(groups), int(deform_groups), activation, _check=_check_conv_args)


def sparse_sample_conv_attrs(x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups,
                             activation, _check=None) -> Tensor:
    """The kernel with normalised attributes (the argument order of ``torch.ops.sai.sparse_sample_conv``)."""
    if _check is None:
        from sai.models.ops import _check_conv_args as _check
    name = "sai.kernels.sparse_sample_conv"
    dev = check_device(name, x, mask, weight, bias, offset)
    check_float(name, "x", x)
    check_float(name, "weight", weight, x.dtype)
    check_float(name, "bias", bias)
    check_float(name, "offset", offset)
    check_float(name, "mask", mask)
    ho, wo = _check(x, mask, weight, bias, offset, list(stride), list(pads), list(dilation),
                    groups, deform_groups, activation)
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    cout_g = cout // groups
    y = torch.empty((n, cout, ho, wo), dtype=x.dtype, device=dev, memory_format=torch.channels_last)
    p = n * ho * wo
    if y.numel() == 0:
        return y
    idx, cnt = partition(mask, "gt0")
    wp = pack_weight(weight, groups)
    cfg = conv_tiles(dev, x, kh, kw, cin_g, cout_g, p, offset is not None)
    bm, bn, bk = cfg["BM"], cfg["BN"], cfg["BK"]
    grid = (triton.cdiv(p, bm), groups * triton.cdiv(cout_g, bn))
    off = offset if offset is not None else x  # never read without DEFORM
    so = offset.stride() if offset is not None else (0, 0, 0, 0)
    launch_opts = {} if dev.type != "cuda" else {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    sparse_conv_kernel.on(dev)[grid](
        x, wp, bias if bias is not None else wp, off, idx, cnt, y,
        p, h, w, ho, wo, cin_g, cout_g, cin // max(deform_groups, 1),
        *x.stride(), *so, *y.stride(),
        stride[0], stride[1], pads[0], pads[1], dilation[0], dilation[1],
        KH=kh, KW=kw, HAS_BIAS=bias is not None, DEFORM=offset is not None,
        RELU=activation == "relu",
        PRECISION=_state["fp32"] if x.dtype == torch.float32 else "ieee",
        UPCAST_DOT=interpreting() and x.dtype == torch.bfloat16,
        BM=bm, BN=bn, BK=bk, **launch_opts,
    )
    return y
