"""Mask compaction on the device: a partition of all positions, active ones first, plus their count.

``partition(mask, mode)`` returns ``idx`` (int32 [P], P = N*H*W flat positions ``(n*H + y)*W + x``)
and ``count`` (int32 [2]: active, inactive). ``idx[:count[0]]`` are the positions where the
predicate holds (``mode`` "gt0": M > 0, for SparseSampleConv; "lt1": M < 1, for Interpolate) and
``idx[count[0]:]`` all the others, so a kernel over all of ``idx`` writes every output position once
(the active ones computed, the rest zero or copied) and reads ``count`` from memory: no host
synchronisation, fixed grids, CUDA-graph capturable. Blocks claim their slots with atomics, so the
order of blocks in ``idx`` varies from run to run; the order within a block is kept (locality).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sai.kernels._jit import kernel

BLOCK = 1024
# The kernels call only builtins of triton.language (no @triton.jit helpers such as tl.sum, tl.cdiv,
# tl.zeros): those helpers are compiled or interpreted depending on TRITON_INTERPRET when triton is
# *imported*, so avoiding them lets one process run both forms. The interpreter recognises this
# combine function and reduces/scans with numpy.
_sum = tl.standard._sum_combine


@kernel
def mask_partition_kernel(
    m_ptr, idx_ptr, cnt_ptr, P, H, W, smn, smh, smw,
    MODE_LT1: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    p = pid * BLOCK + tl.arange(0, BLOCK)
    valid = p < P
    x = p % W
    t = p // W
    y = t % H
    n = t // H
    m = tl.load(m_ptr + n.to(tl.int64) * smn + y * smh + x * smw, mask=valid, other=0.0).to(tl.float32)
    if MODE_LT1:
        pred = m < 1.0
    else:
        pred = m > 0.0
    act = (pred & valid).to(tl.int32)
    rest = ((~pred) & valid).to(tl.int32)
    n_act = tl.reduce(act, 0, _sum)
    n_rest = tl.reduce(rest, 0, _sum)
    base_act = tl.atomic_add(cnt_ptr, n_act)
    base_rest = tl.atomic_add(cnt_ptr + 1, n_rest)
    pos_act = base_act + tl.associative_scan(act, 0, _sum) - 1
    pos_rest = P - 1 - (base_rest + tl.associative_scan(rest, 0, _sum) - 1)
    dest = tl.where(act > 0, pos_act, pos_rest)
    tl.store(idx_ptr + dest, p, mask=valid)


def partition(mask: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(idx, count)`` for a mask ``[N,1,H,W]`` (any strides, float); see the module docstring."""
    n, _, h, w = mask.shape
    p = n * h * w
    idx = torch.empty(max(p, 1), dtype=torch.int32, device=mask.device)
    cnt = torch.zeros(2, dtype=torch.int32, device=mask.device)
    if p:
        grid = (triton.cdiv(p, BLOCK),)
        mask_partition_kernel.on(mask.device)[grid](
            mask, idx, cnt, p, h, w, mask.stride(0), mask.stride(2), mask.stride(3),
            MODE_LT1=(mode == "lt1"), BLOCK=BLOCK,
        )
    return idx, cnt
