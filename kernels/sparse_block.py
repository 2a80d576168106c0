"""The fused sparse block on the GPU (docs/design.md 3.1-3.4, second form), NHWC, a few Triton launches.

One sparse Bottleneck forward is (the per-op CUDA path took about 66 launches):

1. ``block_masks_kernel``: both 3x3 mask-predictor convs of the block input in fp32, the Gumbel
   threshold (stochastic noise as inputs), the grid prior and the hard threshold of 3.1; writes m1
   and m2 (fp32) and, for each, the partition of its positions (M > 0 first) with the counts. The
   counters live in a small persistent workspace that the last program of the grid copies out and
   resets (a ticket counter), so no zero-fill launch and no host synchronisation.
2. conv1 at m1's positions: the implicit-GEMM kernel of ``sai.kernels.sparse_sample_conv`` on this
   partition (a gather-GEMM; rows past the device-side count only write zeros).
3. ``interp_sep_kernel``: Interpolate (3.3) as two separable 1-D passes of the Gaussian
   (``K[i, j] = norm * g[i] * g[j]``) over a spatial tile: the horizontal pass of num and den for
   the tile's rows plus their halo into a per-program fp32 scratch, a CTA barrier, the vertical pass
   and the blend ``M F + (1 - M) num / den``; ``kernel_size`` is compile-time, the 1-D weights are
   computed once per program, no div/mod per tap.
4. [DCN] the offset conv of x at m2's positions (3x3, 18 channels), 5. conv2 at m2's positions
   (deformable v1 with those offsets), 6. conv3 (1x1, no bias) at m2's positions: the conv kernel.
7. ``interp_sep_kernel`` again for the tail: Interpolate(c, m2) + bias + identity, ReLU, with the 1x1
   downsample conv of the identity computed inside (``tl.dot`` over the input channels).

The BasicBlock is the same without conv3 (conv2 keeps its bias; the tail has none). So a Bottleneck
is 6 launches (7 with DCN), a BasicBlock 5 (6). fp32, fp16 and bf16 activations; masks, num, den and
the Gaussian in fp32 (design.md 7); every tensor is read through its strides (NHWC is the fast
layout) and the output is channels_last. Everything is allocated with ``torch.empty`` on the
caller's device and the grids depend on shapes only, so a forward is CUDA-graph capturable once the
weights are packed (the first call packs them; run it once before capturing).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from sai.errors import SaiError
from sai.kernels import configs
from sai.kernels._jit import check_device, interpreting, kernel
from sai.kernels.sparse_sample_conv import conv_tiles, fp32_precision, sparse_conv_kernel

DELTA = 1e-8  # docs/design.md 3.1's d
# Builtins of triton.language only (no @triton.jit helpers such as tl.sum / tl.sigmoid), as in
# compact.py: one process can then run the interpreted and the compiled forms.
_sum = tl.standard._sum_combine

# Tile defaults where configs/<arch>.json has no entry ("sparse_block_masks" / "sparse_block_interp").
_DEFAULTS = {
    "sparse_block_masks": {"BLOCK": 128, "BC": 16, "num_warps": 8, "num_stages": 1},  # no spills (sm_80/90)
    "sparse_block_interp": {"TH": 8, "TW": 8, "BC": 128, "BKD": 32, "num_warps": 8, "num_stages": 1},
    "sparse_block_tail": {"TH": 8, "TW": 8, "BC": 64, "BKD": 32, "num_warps": 8, "num_stages": 1},
}
_INTERP_DEFAULTS = {
    "sparse_block_masks": {"BLOCK": 512, "BC": 64, "num_warps": 1, "num_stages": 1},
    "sparse_block_interp": {"TH": 8, "TW": 16, "BC": 64, "BKD": 64, "num_warps": 1, "num_stages": 1},
    "sparse_block_tail": {"TH": 8, "TW": 16, "BC": 64, "BKD": 64, "num_warps": 1, "num_stages": 1},
}
# the convs' tiles: sparse_sample_conv.conv_tiles (configs.conv_config, with the feature fused_block: the
# interpreter's table has larger tiles for it, its cost being per program and op)


@kernel
def block_masks_kernel(
    x_ptr, wm_ptr, bm_ptr, u1_ptr, u2_ptr, m_ptr, idx_ptr, acc_ptr, cnt_ptr,
    N, C, H, W, H1, W1, H2, W2, S1, S2, NB1, NPROG,
    sxn, sxc, sxh, sxw,
    s1n, s1c, s1h, s1w,
    s2n, s2c, s2h, s2w,
    TD, GRID,
    STOCH: tl.constexpr, HAS_GRID: tl.constexpr, BLOCK: tl.constexpr, BC: tl.constexpr,
):
    # programs [0, NB1) cover m1's grid, [NB1, NPROG) m2's; one buffer each for both masks and both
    # partitions (m2's part starts at P1 = N*H1*W1); counters acc[0:2] (m1: active, rest), acc[2:4]
    # (m2), acc[4] the ticket.
    pid = tl.program_id(0)
    sel = (pid >= NB1).to(tl.int32)
    ho = H1 + sel * (H2 - H1)
    wo = W1 + sel * (W2 - W1)
    s = S1 + sel * (S2 - S1)
    npos = N * ho * wo
    base = sel * (N * H1 * W1)
    p = (pid - sel * NB1) * BLOCK + tl.arange(0, BLOCK)
    valid = p < npos
    ox = p % wo
    t = p // wo
    oy = t % ho
    n = (t // ho).to(tl.int64)

    # the 3x3 (pad 1) mask logit of x in fp32, whatever x's dtype (design.md 7)
    acc = tl.full([BLOCK, BC], 0.0, tl.float32)
    xrow = x_ptr + n * sxn
    for tap in tl.static_range(9):
        iy = oy * s - 1 + tap // 3
        ix = ox * s - 1 + tap % 3
        inb = valid & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        xpos = xrow + iy * sxh + ix * sxw
        for c0 in range(0, C, BC):
            ci = c0 + tl.arange(0, BC)
            km = ci < C
            xv = tl.load(xpos[:, None] + ci[None, :] * sxc, mask=inb[:, None] & km[None, :], other=0.0)
            wv = tl.load(wm_ptr + (sel * 9 + tap) * C + ci, mask=km, other=0.0)
            acc += xv.to(tl.float32) * wv[None, :]
    logit = tl.reduce(acc, 1, _sum) + tl.load(bm_ptr + sel)

    # docs/design.md 3.1 with the clamps of 7
    e = tl.exp(-tl.abs(logit))  # sigmoid without overflow
    prob = tl.where(logit >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    prob = tl.minimum(tl.maximum(prob, 0.0), 1.0)
    z = tl.log(prob + 1e-8) - tl.log(1.0 - prob + 1e-8)
    if STOCH:
        first = valid & (sel == 0)
        second = valid & (sel == 1)
        b1 = u1_ptr + n * s1n + oy * s1h + ox * s1w
        b2 = u2_ptr + n * s2n + oy * s2h + ox * s2w
        ua = (tl.load(b1, mask=first, other=0.0).to(tl.float32)
              + tl.load(b2, mask=second, other=0.0).to(tl.float32))
        ub = (tl.load(b1 + s1c, mask=first, other=0.0).to(tl.float32)
              + tl.load(b2 + s2c, mask=second, other=0.0).to(tl.float32))
        ua = tl.minimum(tl.maximum(ua, 0.0), 1.0)
        ub = tl.minimum(tl.maximum(ub, 0.0), 1.0)
        ga = -tl.log(-tl.log(ua + 1e-8) + 1e-8)
        gb = -tl.log(-tl.log(ub + 1e-8) + 1e-8)
        z = z + (ga - gb)
    zt = z / TD
    e = tl.exp(-tl.abs(zt))
    sv = tl.where(zt >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    if HAS_GRID:
        on = ((oy % GRID) == 0) & ((ox % GRID) == 0)
        sv = tl.where(on, 1.0, sv)
    m = tl.where(sv >= 0.5, sv, 0.0)
    tl.store(m_ptr + base + p, m, mask=valid)

    # the partition (compact.py's scheme): active positions first, the others from the end
    pred = m > 0.0
    act = (pred & valid).to(tl.int32)
    rest = ((~pred) & valid).to(tl.int32)
    base_act = tl.atomic_add(acc_ptr + sel * 2, tl.reduce(act, 0, _sum))
    base_rest = tl.atomic_add(acc_ptr + sel * 2 + 1, tl.reduce(rest, 0, _sum))
    pos_act = base_act + tl.associative_scan(act, 0, _sum) - 1
    pos_rest = npos - 1 - (base_rest + tl.associative_scan(rest, 0, _sum) - 1)
    dest = tl.where(act > 0, pos_act, pos_rest)
    tl.store(idx_ptr + base + dest, p, mask=valid)

    # the last program to finish publishes the counts and leaves the workspace zeroed for the next call
    tl.debug_barrier()
    ticket = tl.atomic_add(acc_ptr + 4, 1)
    if ticket == NPROG - 1:
        for k in tl.static_range(4):
            tl.store(cnt_ptr + k, tl.atomic_xchg(acc_ptr + k, 0))
        tl.atomic_xchg(acc_ptr + 4, 0)


@kernel
def interp_sep_kernel(
    f_ptr, m_ptr, y_ptr, t_ptr, td_ptr, b_ptr, id_ptr, xd_ptr, wd_ptr, bd_ptr,
    C, H, W, NTY, NTX, CIN, DS,
    sfn, sfc, sfh, sfw,
    smn, smh, smw,
    syn, syc, syh, syw,
    sin_, sic, sih, siw,
    sdn, sdc, sdh, sdw,
    HALF_S2, NORM, EPS,
    KS: tl.constexpr, TH: tl.constexpr, HRP: tl.constexpr, TW: tl.constexpr, BC: tl.constexpr,
    BKD: tl.constexpr, FUSED: tl.constexpr, HAS_BIAS: tl.constexpr, DOWN: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, EVEN_C: tl.constexpr, F_ZERO: tl.constexpr,
):
    # One program: image n, output rows [y0, y0 + TH), columns [x0, x0 + TW), channels [c0, c0 + BC).
    # Positions are flat within the tile (q = row * TW + col; TW a power of two, so // and % are shifts,
    # computed once). HRP >= TH + KS - 1 rows (a power of two) hold the horizontal pass with its halo.
    # EVEN_C: C % BC == 0 (no channel masks). F_ZERO: F is exactly 0 where M == 0 (a SparseSampleConv's
    # output, as inside the block), so F is read without the per-element M > 0 predicate; otherwise F is
    # read only where M > 0 (design.md 3.3: its other values must not matter, NaN included).
    R: tl.constexpr = (KS - 1) // 2
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    tx = pid % NTX
    t = pid // NTX
    ty = t % NTY
    n = (t // NTY).to(tl.int64)
    y0 = ty * TH
    x0 = tx * TW
    ch = pid_c * BC + tl.arange(0, BC)
    cmask = (ch < C) | EVEN_C
    prog = pid.to(tl.int64) * tl.num_programs(1) + pid_c
    fimg = f_ptr + n * sfn
    mimg = m_ptr + n * smn
    # 2-D offsets are a 1-D pointer per position plus one channel vector (few 2-D integer ops)
    fch = (ch * sfc)[None, :]

    # horizontal pass: num_h = sum_j g[j] M F and den_h = sum_j g[j] M on rows y0 - R .. y0 + TH + R - 1
    qh = tl.arange(0, HRP * TW)
    yh = y0 - R + qh // TW
    xh = x0 + qh % TW
    rowok = (qh // TW < TH + KS - 1) & (yh >= 0) & (yh < H)
    num = tl.full([HRP * TW, BC], 0.0, tl.float32)
    den = tl.full([HRP * TW], 0.0, tl.float32)
    for j in tl.static_range(KS):
        gj = tl.exp(-HALF_S2 * ((j - R) * (j - R)))  # the 1-D Gaussian factor, once per program and tap
        qx = xh + (j - R)
        ok = rowok & (qx >= 0) & (qx < W)
        mq = tl.load(mimg + yh * smh + qx * smw, mask=ok, other=0.0).to(tl.float32)
        wq = gj * mq
        den += wq
        fok = ok if F_ZERO else ok & (mq > 0.0)
        fq = tl.load((fimg + yh * sfh + qx * sfw)[:, None] + fch, mask=fok[:, None] & cmask[None, :], other=0.0)
        num += wq[:, None] * fq.to(tl.float32)
    tbase = t_ptr + prog * (HRP * TW * BC)
    dbase = td_ptr + prog * (HRP * TW)
    tl.store((tbase + qh * BC)[:, None] + tl.arange(0, BC)[None, :], num)
    tl.store(dbase + qh, den)
    tl.debug_barrier()  # the vertical pass reads what other threads of this program wrote

    # vertical pass and the blend M F + (1 - M) num / den (num, den in fp32; design.md 3.3, 7)
    q = tl.arange(0, TH * TW)
    yy = y0 + q // TW
    xx = x0 + q % TW
    ok = (yy < H) & (xx < W)
    num = tl.full([TH * TW, BC], 0.0, tl.float32)
    den = tl.full([TH * TW], 0.0, tl.float32)
    tq = (tbase + q * BC)[:, None] + tl.arange(0, BC)[None, :]
    for i in tl.static_range(KS):
        gi = tl.exp(-HALF_S2 * ((i - R) * (i - R)))
        num += gi * tl.load(tq + i * (TW * BC))
        den += gi * tl.load(dbase + q + i * TW)
    m = tl.load(mimg + yy * smh + xx * smw, mask=ok, other=0.0).to(tl.float32)
    omask = ok[:, None] & cmask[None, :]
    fok = ok if F_ZERO else ok & (m > 0.0)
    f = tl.load((fimg + yy * sfh + xx * sfw)[:, None] + fch, mask=fok[:, None] & cmask[None, :],
                other=0.0).to(tl.float32)
    out = m[:, None] * f + ((1.0 - m) / (NORM * den + EPS))[:, None] * (NORM * num)
    if FUSED:
        if HAS_BIAS:
            out += tl.load(b_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if DOWN:  # the identity is the 1x1 downsample conv (stride DS) of the block input, + its bias
            iacc = tl.full([TH * TW, BC], 0.0, tl.float32)
            xrow = xd_ptr + n * sdn + (yy * DS) * sdh + (xx * DS) * sdw
            for k0 in range(0, CIN, BKD):
                ci = k0 + tl.arange(0, BKD)
                kmask = ci < CIN
                a = tl.load(xrow[:, None] + (ci * sdc)[None, :], mask=ok[:, None] & kmask[None, :], other=0.0)
                b = tl.load((wd_ptr + ci * C)[:, None] + ch[None, :], mask=kmask[:, None] & cmask[None, :],
                            other=0.0)
                if UPCAST_DOT:  # the interpreter's dot cannot multiply bfloat16
                    iacc = tl.dot(a.to(tl.float32), b.to(tl.float32), iacc, input_precision="ieee")
                else:
                    iacc = tl.dot(a, b, iacc, input_precision=PRECISION)
            ident = iacc + tl.load(bd_ptr + ch, mask=cmask, other=0.0).to(tl.float32)[None, :]
        else:
            ident = tl.load((id_ptr + n * sin_ + yy * sih + xx * siw)[:, None] + (ch * sic)[None, :],
                            mask=omask, other=0.0).to(tl.float32)
        out = tl.maximum(out + ident, 0.0)
    tl.store((y_ptr + n * syn + yy * syh + xx * syw)[:, None] + (ch * syc)[None, :],
             out.to(y_ptr.dtype.element_ty), mask=omask)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------



def _cfg(name: str, dev: torch.device, **features) -> dict:
    arch = configs.arch_name(dev)
    try:
        return configs.lookup(name, arch, **features)
    except KeyError:
        return dict((_INTERP_DEFAULTS if arch == "interpreter" else _DEFAULTS)[name])


def _opts(dev: torch.device, cfg: dict) -> dict:
    return {} if dev.type != "cuda" else {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def _cached(cache: Optional[dict], name: str, tensors: tuple, make):
    """``make()`` once per version of ``tensors`` when the caller keeps a ``cache`` dict (a module whose
    weights outlive the call: the key cannot meet a freed tensor's address again), else every call."""
    if cache is None:
        return make()
    key = tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in tensors)
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = (key, make())
        cache[name] = hit
    return hit[1]


def _pack_conv(w: Tensor) -> Tensor:
    """``[Cout, Cin, kh, kw]`` -> contiguous ``[kh*kw, Cin, Cout]``, the conv kernel's B operand."""
    cout, cin, kh, kw = w.shape
    return w.detach().reshape(cout, cin, kh * kw).permute(2, 1, 0).contiguous()


def _pack_masks(w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Mask-predictor weights ``[M, C, 3, 3]`` -> fp32 ``[M, 9, C]`` and fp32 biases."""
    return (w.detach().float().permute(0, 2, 3, 1).reshape(w.shape[0], 9, w.shape[1]).contiguous(),
            b.detach().float().contiguous())


def new_workspace(device: torch.device) -> Tensor:
    """The persistent counters of ``block_masks_kernel`` (int32 [8], zero; the kernel leaves them zero)."""
    return torch.zeros(8, dtype=torch.int32, device=device)


def block_masks(x: Tensor, mask_weight: Tensor, mask_bias: Tensor, strides: tuple[int, int], temperature: float,
                grid_interval: int, noise1: Optional[Tensor], noise2: Optional[Tensor], workspace: Tensor,
                cache: Optional[dict] = None):
    """Both inference masks of a block (docs/design.md 3.1) and their partitions, in one launch.

    Returns ``m1, m2`` (fp32 ``[N,1,Ho,Wo]``), ``idx1, idx2`` (int32 flat positions, M > 0 first) and
    ``cnt1, cnt2`` (int32 views whose first entry is the active count)."""
    dev = x.device
    n, c, h, w = x.shape
    s1, s2 = strides
    h1, w1 = (h - 1) // s1 + 1, (w - 1) // s1 + 1
    h2, w2 = (h - 1) // s2 + 1, (w - 1) // s2 + 1
    p1, p2 = n * h1 * w1, n * h2 * w2
    mbuf = torch.empty(p1 + p2, dtype=torch.float32, device=dev)
    idx = torch.empty(p1 + p2, dtype=torch.int32, device=dev)
    cnt = torch.empty(4, dtype=torch.int32, device=dev)
    wm, bm = _cached(cache, "masks", (mask_weight, mask_bias), lambda: _pack_masks(mask_weight, mask_bias))
    cfg = _cfg("sparse_block_masks", dev)
    blk = min(cfg["BLOCK"], max(64, triton.next_power_of_2(max(p1, p2))))  # small maps: one small program
    nb1, nb2 = triton.cdiv(p1, blk), triton.cdiv(p2, blk)
    stoch = noise1 is not None
    if stoch:
        for u, hh, ww, what in ((noise1, h1, w1, "noise1"), (noise2, h2, w2, "noise2")):
            if u is None or tuple(u.shape) != (n, 2, hh, ww):
                raise SaiError(f"sai.kernels.sparse_block: {what} must be [N, 2, Ho, Wo] = {[n, 2, hh, ww]}, got "
                               f"{None if u is None else list(u.shape)}")
    u1 = noise1 if stoch else mbuf
    u2 = noise2 if stoch else mbuf
    st1 = noise1.stride() if stoch else (0, 0, 0, 0)
    st2 = noise2.stride() if stoch else (0, 0, 0, 0)
    if p1 + p2:
        block_masks_kernel.on(dev)[(nb1 + nb2,)](
            x, wm, bm, u1, u2, mbuf, idx, workspace, cnt,
            n, c, h, w, h1, w1, h2, w2, s1, s2, nb1, nb1 + nb2,
            *x.stride(), *st1, *st2,
            float(temperature) + DELTA, max(int(grid_interval), 1),
            STOCH=stoch, HAS_GRID=grid_interval > 0, BLOCK=blk, BC=min(cfg["BC"], max(16, triton.next_power_of_2(c))),
            **_opts(dev, cfg),
        )
    m1 = mbuf[:p1].view(n, 1, h1, w1)
    m2 = mbuf[p1:].view(n, 1, h2, w2)
    return m1, m2, idx[:p1], idx[p1:], cnt[0:2], cnt[2:4]


def conv_at(x: Tensor, weight: Tensor, bias: Optional[Tensor], idx: Tensor, cnt: Tensor, ho: int, wo: int,
            stride: int, pad: int, relu: bool, offset: Optional[Tensor] = None, packed: Optional[Tensor] = None
            ) -> Tensor:
    """SparseSampleConv (design.md 3.2) at a partition's active positions, one launch of the conv kernel of
    ``sai.kernels.sparse_sample_conv``: NHWC out, exactly 0 at the other positions. ``packed``: ``weight``
    packed by ``_pack_conv`` (else packed here)."""
    dev = x.device
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    y = torch.empty((n, cout, ho, wo), dtype=x.dtype, device=dev, memory_format=torch.channels_last)
    p = n * ho * wo
    if y.numel() == 0:
        return y
    wp = _pack_conv(weight) if packed is None else packed
    # the per-op conv's chooser: by P and Cout among the AOT build's tiles (small P: 64-row tiles)
    cfg = conv_tiles(dev, x, kh, kw, cin, cout, p, offset is not None, fused_block=True)
    bm, bn, bk = cfg["BM"], cfg["BN"], cfg["BK"]
    off = offset if offset is not None else x
    so = offset.stride() if offset is not None else (0, 0, 0, 0)
    sparse_conv_kernel.on(dev)[(triton.cdiv(p, bm), triton.cdiv(cout, bn))](
        x, wp, bias if bias is not None else wp, off, idx, cnt, y,
        p, h, w, ho, wo, cin, cout, cin,
        *x.stride(), *so, *y.stride(),
        stride, stride, pad, pad, 1, 1,
        KH=kh, KW=kw, HAS_BIAS=bias is not None, DEFORM=offset is not None, RELU=relu,
        PRECISION=fp32_precision() if x.dtype == torch.float32 else "ieee",
        UPCAST_DOT=interpreting() and x.dtype == torch.bfloat16,
        BM=bm, BN=bn, BK=bk, **_opts(dev, cfg),
    )
    return y


def interpolate_tail(feature: Tensor, mask: Tensor, sigma: float, kernel_size: int, eps: float,
                     fused: bool = False, bias: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                     down_weight: Optional[Tensor] = None, down_bias: Optional[Tensor] = None,
                     down_stride: int = 1, down_packed: Optional[Tensor] = None, f_zero: bool = False) -> Tensor:
    """Interpolate (design.md 3.3) as two separable passes in one launch; with ``fused``,
    ``relu(. + bias + identity)`` where the identity is ``identity`` or the 1x1 downsample conv
    (``down_weight``, ``down_bias``, ``down_stride``) of ``identity``. NHWC out, dtype of ``feature``.
    ``f_zero``: ``feature`` is exactly 0 where ``mask`` is (a SparseSampleConv output): fewer predicates."""
    dev = feature.device
    n, c, h, w = feature.shape
    y = torch.empty((n, c, h, w), dtype=feature.dtype, device=dev, memory_format=torch.channels_last)
    if y.numel() == 0:
        return y
    cfg = _cfg("sparse_block_tail" if fused else "sparse_block_interp", dev, k=kernel_size,
               down=down_weight is not None)
    # tiles no larger than the map (the last stages' maps are small), at least 16 positions (tl.dot's M)
    tw = min(cfg["TW"], triton.next_power_of_2(w))
    th = max(min(cfg["TH"], triton.next_power_of_2(h)), 16 // tw)
    bc = min(cfg["BC"], max(16, triton.next_power_of_2(c)))
    if dev.type == "cuda" and feature.element_size() == 4:
        bc = min(bc, 64)  # fp32 F tiles of 128 channels spill (sm_90)
    bkd = cfg["BKD"]
    nty, ntx = triton.cdiv(h, th), triton.cdiv(w, tw)
    grid = (n * nty * ntx, triton.cdiv(c, bc))
    hrp = triton.next_power_of_2(th + kernel_size - 1)
    nprog = grid[0] * grid[1]
    scratch = torch.empty(nprog * hrp * tw * (bc + 1), dtype=torch.float32, device=dev)
    tnum, tden = scratch[:nprog * hrp * tw * bc], scratch[nprog * hrp * tw * bc:]
    down = down_weight is not None
    ident = identity if fused else feature
    wd = (_pack_conv(down_weight) if down_packed is None else down_packed) if down else feature
    s2 = float(sigma) ** 2
    interp_sep_kernel.on(dev)[grid](
        feature, mask, y, tnum, tden, bias if bias is not None else feature, ident, ident, wd,
        down_bias if down else feature,
        c, h, w, nty, ntx, ident.shape[1], int(down_stride),
        *feature.stride(), mask.stride(0), mask.stride(2), mask.stride(3), *y.stride(),
        *ident.stride(), *ident.stride(),
        s2 / 2.0, s2 / (2.0 * math.pi), float(eps),
        KS=int(kernel_size), TH=th, HRP=hrp, TW=tw, BC=bc, BKD=bkd, FUSED=fused, HAS_BIAS=bias is not None, DOWN=down,
        PRECISION=fp32_precision() if feature.dtype == torch.float32 else "ieee",
        UPCAST_DOT=interpreting() and feature.dtype == torch.bfloat16, EVEN_C=c % bc == 0, F_ZERO=bool(f_zero),
        **_opts(dev, cfg),
    )
    return y


def sparse_block(
    x: Tensor, mask_weight: Tensor, mask_bias: Tensor, mask_strides: tuple[int, int], temperature: float,
    grid_interval: int, noise1: Optional[Tensor], noise2: Optional[Tensor],
    wa: Tensor, ba: Tensor, sa: int, wb: Tensor, bb: Tensor, sb: int, relu_b: bool,
    wc: Optional[Tensor], tail_bias: Optional[Tensor], wd: Optional[Tensor], bd: Optional[Tensor], ds: int,
    sigma1: float, sigma2: float, kernel_size: int, eps: float,
    wo: Optional[Tensor] = None, bo: Optional[Tensor] = None, so: int = 1,
    workspace: Optional[Tensor] = None, cache: Optional[dict] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One sparse block (docs/design.md 3.4, second form; the BasicBlock without ``wc``), the arguments of
    ``sai_cpu::sparse_block`` plus the mask predictors. Returns ``(out, m1, m2)``: out NHWC in x's dtype.

    ``mask_weight`` [2, C, 3, 3] / ``mask_bias`` [2] are both 3x3 mask convs (strides ``mask_strides``);
    ``noise1/2`` the uniforms [N, 2, Ho, Wo] of stochastic inference (None: deterministic); conv_a is
    ``wa`` (1x1 pad 0 or 3x3 pad 1, stride ``sa``, ReLU), conv_b ``wb`` (3x3 pad 1, stride ``sb``,
    ReLU if ``relu_b``; deformable v1 with offsets of the 3x3 conv ``wo``/``bo`` of x at stride ``so``),
    conv_c the optional 1x1 ``wc``; the identity is x or its 1x1 conv ``wd``/``bd`` at stride ``ds``.
    ``workspace``: ``new_workspace(device)``, kept by the caller (allocated here when None: one more launch);
    ``cache``: a dict the caller keeps with its weights, holding their packed forms (else packed per call).
    """
    name = "sai.kernels.sparse_block"
    dev = check_device(name, x, wa, wb, wc, wd, wo)
    if x.dim() != 4 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise SaiError(f"{name}: x must be a 4-D float32/float16/bfloat16 tensor, got {x.dtype} {list(x.shape)}")
    for what, t in (("wa", wa), ("wb", wb), ("wc", wc), ("wd", wd), ("wo", wo)):
        if t is not None and t.dtype != x.dtype:
            raise SaiError(f"{name}: {what} is {t.dtype} but x is {x.dtype}: cast the block to one dtype")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise SaiError(f"{name}: kernel_size must be a positive odd number, got {kernel_size}")
    if workspace is None:
        workspace = new_workspace(dev)
    n, _, h, w = x.shape
    m1, m2, idx1, idx2, cnt1, cnt2 = block_masks(x, mask_weight, mask_bias, mask_strides, temperature,
                                                 grid_interval, noise1, noise2, workspace, cache)

    def pk(name, w):
        return None if w is None else _cached(cache, name, (w,), lambda: _pack_conv(w))

    h1, w1 = m1.shape[2], m1.shape[3]
    h2, w2 = m2.shape[2], m2.shape[3]
    ka = wa.shape[-1]
    a = conv_at(x, wa, ba, idx1, cnt1, h1, w1, sa, ka // 2, True, packed=pk("wa", wa))
    a = interpolate_tail(a, m1, sigma1, kernel_size, eps, f_zero=True)
    off = None
    if wo is not None:
        off = conv_at(x, wo, bo, idx2, cnt2, h2, w2, so, 1, False, packed=pk("wo", wo))
    b = conv_at(a, wb, bb, idx2, cnt2, h2, w2, sb, 1, relu_b, offset=off, packed=pk("wb", wb))
    if wc is not None:
        b = conv_at(b, wc, None, idx2, cnt2, h2, w2, 1, 0, False, packed=pk("wc", wc))
    out = interpolate_tail(b, m2, sigma2, kernel_size, eps, fused=True, bias=tail_bias, identity=x,
                           down_weight=wd, down_bias=bd, down_stride=ds, down_packed=pk("wd", wd), f_zero=True)
    return out, m1, m2
