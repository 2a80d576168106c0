"""sai::RoiAlignV0 (mmdetection v0.6's non-aligned RoIAlign, docs/design.md 9) as a Triton kernel: the GPU
face of ``trt_plugins/roiAlignV0/roiAlignV0Math.h`` (same float32 operations in the same order; divisions
round to nearest, as the CUDA original's).

One program per output bin (RoI r, row ph, column pw) and block of ``BC`` channels: the ``NS x NS`` samples of
the bin, each 4 bilinear taps read through X's strides (any layout), averaged. A RoI's batch index outside
``0..N-1`` gives zeros (never an out-of-bounds read). Not yet compiled into the TensorRT plugin library
(``make kernels`` has no spec for it); ``tests/test_detector_trt_kernel.py`` runs it under the interpreter
and compiles it ahead of time for sm_75 / sm_90 into a temporary folder.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sai.errors import SaiError
from sai.kernels._jit import check_device, kernel

MAX_OUT = 64  # roiAlignV0Math.h: kSAI_ROI_ALIGN_MAX_OUT
MAX_SAMPLING = 16  # kSAI_ROI_ALIGN_MAX_SAMPLING


@kernel
def roi_align_v0_kernel(
    x_ptr, r_ptr, b_ptr, y_ptr,
    N, C, H, W,
    sxn, sxc, sxh, sxw,
    SCALE,
    OUT: tl.constexpr, NS: tl.constexpr, BC: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    pw = pid % OUT
    ph = (pid // OUT) % OUT
    r = pid // (OUT * OUT)
    ch = pid_c * BC + tl.arange(0, BC)
    cmask = ch < C
    bi = tl.load(b_ptr + r).to(tl.int64)
    bok = (bi >= 0) & (bi < N)
    bi = tl.where(bok, bi, 0)
    rp = r_ptr + r.to(tl.int64) * 4
    x1 = tl.load(rp)
    y1 = tl.load(rp + 1)
    x2 = tl.load(rp + 2)
    y2 = tl.load(rp + 3)
    start_w = x1 * SCALE
    start_h = y1 * SCALE
    end_w = (x2 + 1.0) * SCALE
    end_h = (y2 + 1.0) * SCALE
    roi_w = tl.maximum(end_w - start_w, 0.0)
    roi_h = tl.maximum(end_h - start_h, 0.0)
    bin_w = tl.fdiv(roi_w, tl.full([], OUT, tl.float32), ieee_rounding=True)
    bin_h = tl.fdiv(roi_h, tl.full([], OUT, tl.float32), ieee_rounding=True)
    hf = H.to(tl.float32)
    wf = W.to(tl.float32)
    base = x_ptr + bi * sxn + ch.to(tl.int64) * sxc
    lmask = cmask & bok
    acc = tl.full([BC], 0.0, tl.float32)
    nsf = tl.full([], NS, tl.float32)
    for iy in tl.static_range(NS):
        y = start_h + ph.to(tl.float32) * bin_h + tl.fdiv((iy + 0.5) * bin_h, nsf, ieee_rounding=True)
        for ix in tl.static_range(NS):
            x = start_w + pw.to(tl.float32) * bin_w + tl.fdiv((ix + 0.5) * bin_w, nsf, ieee_rounding=True)
            inside = (y >= -1.0) & (y <= hf) & (x >= -1.0) & (x <= wf)
            yc = tl.maximum(y, 0.0)
            xc = tl.maximum(x, 0.0)
            yl = tl.where(inside, yc, 0.0).to(tl.int32)  # (int) of a clamped value inside the map: floor
            xl = tl.where(inside, xc, 0.0).to(tl.int32)
            yedge = yl >= H - 1
            xedge = xl >= W - 1
            yl = tl.where(yedge, H - 1, yl)
            xl = tl.where(xedge, W - 1, xl)
            yc = tl.where(yedge, yl.to(tl.float32), yc)
            xc = tl.where(xedge, xl.to(tl.float32), xc)
            yh = tl.where(yedge, yl, yl + 1)
            xh = tl.where(xedge, xl, xl + 1)
            ly = yc - yl.to(tl.float32)
            lx = xc - xl.to(tl.float32)
            hy = 1.0 - ly
            hx = 1.0 - lx
            m = lmask & ((ch * 0 + inside.to(tl.int32)) != 0)  # a scalar flag over the channel block
            row_l = base + yl.to(tl.int64) * sxh
            row_h = base + yh.to(tl.int64) * sxh
            lt = tl.load(row_l + xl.to(tl.int64) * sxw, mask=m, other=0.0).to(tl.float32)
            rt = tl.load(row_l + xh.to(tl.int64) * sxw, mask=m, other=0.0).to(tl.float32)
            lb = tl.load(row_h + xl.to(tl.int64) * sxw, mask=m, other=0.0).to(tl.float32)
            rb = tl.load(row_h + xh.to(tl.int64) * sxw, mask=m, other=0.0).to(tl.float32)
            acc += hy * hx * lt + hy * lx * rt + ly * hx * lb + ly * lx * rb
    out = tl.fdiv(acc, tl.full([], NS * NS, tl.float32), ieee_rounding=True)
    yo = y_ptr + (r.to(tl.int64) * C + ch.to(tl.int64)) * (OUT * OUT) + ph * OUT + pw
    tl.store(yo, out, mask=cmask)


def roi_align_v0(x: Tensor, rois: Tensor, batch_indices: Tensor, spatial_scale: float, output_size: int = 7,
                 sampling_ratio: int = 2, block_c: int = 64) -> Tensor:
    """``Y [R, C, output_size, output_size]`` float32 from ``x [N, C, H, W]`` float32 (any strides), ``rois
    [R, 4]`` float32 and ``batch_indices [R]`` int64 (v0.6 RoIAlign; CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``)."""
    dev = check_device("roi_align_v0", x, rois, batch_indices)
    if x.dim() != 4 or x.dtype != torch.float32:
        raise SaiError(f"roi_align_v0: x must be float32 [N, C, H, W], got {x.dtype} {list(x.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 4 or rois.dtype != torch.float32:
        raise SaiError(f"roi_align_v0: rois must be float32 [R, 4], got {rois.dtype} {list(rois.shape)}")
    if batch_indices.shape != (rois.shape[0],) or batch_indices.dtype != torch.int64:
        raise SaiError(f"roi_align_v0: batch_indices must be int64 [{rois.shape[0]}], got {batch_indices.dtype} "
                       f"{list(batch_indices.shape)}")
    if not (1 <= output_size <= MAX_OUT and 1 <= sampling_ratio <= MAX_SAMPLING and spatial_scale > 0):
        raise SaiError(f"roi_align_v0: output_size 1..{MAX_OUT}, sampling_ratio 1..{MAX_SAMPLING} and "
                       f"spatial_scale > 0, got {output_size}, {sampling_ratio}, {spatial_scale}")
    n, c, h, w = x.shape
    r = rois.shape[0]
    y = torch.empty(r, c, output_size, output_size, dtype=torch.float32, device=dev)
    if r == 0 or c == 0:
        return y
    bc = min(int(block_c), triton.next_power_of_2(c))
    grid = (r * output_size * output_size, triton.cdiv(c, bc))
    roi_align_v0_kernel.on(dev)[grid](
        x, rois.contiguous(), batch_indices.contiguous(), y, n, c, h, w, *x.stride(), float(spatial_scale),
        OUT=int(output_size), NS=int(sampling_ratio), BC=bc)
    return y


def aot_spec() -> dict:
    """The specialization ``sai.kernels.aot.compile_one`` takes (fp32, output 7, sampling 2: the official
    configs)."""
    return {
        "module": "sai.kernels.roi_align_v0", "kernel": "roi_align_v0_kernel", "cfg_kernel": None,
        "dtype": "float32", "constexprs": {"OUT": 7, "NS": 2, "BC": 64}, "num_warps": 2,
        "features": {}, "types": {"b_ptr": "*i64", "SCALE": "fp32"}, "divisible": [],
        "grid": "(R * OUT * OUT, cdiv(C, BC), 1)",
    }
