"""``fuse_for_inference``: BN folding and the conv3 reorder of docs/design.md 3.4 (the exported form).

The fused Bottleneck computes

    m1 = mask(x; stride 1)   m2 = mask(x; stride s)                 # conv, sigmoid, log, add, div, where, mul
    a  = Interpolate(SparseSampleConv(x, m1, conv1+bn1, relu), m1, sigma1)
    b  = SparseSampleConv(a, m2, conv2+bn2, relu [, offset = SparseSampleConv(x, m2, conv2_offset)])
    c  = SparseSampleConv(b, m2, conv3, no bias, no activation)
    out= relu(Interpolate(c, m2, sigma2) + bn3_bias + identity(x))

Exact w.r.t. the literal order because conv3+bn3 is a per-position linear map plus a bias and the
interpolation is linear in its feature input with weights that sum to the same thing for every
channel. The DCN offsets are only needed where m2 > 0 (a deformable conv's output at a position
reads only that position's offsets), so the offset conv is sparse too (the paper's accounting).
The fused BasicBlock keeps bn2's bias inside conv2 (its 3x3 conv does not commute that way).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sai.errors import SaiError
from sai.models.blocks import (
    BasicBlock,
    Bottleneck,
    MaskBookkeeping,
    NoiseSource,
    SparseBasicBlock,
    SparseBottleneck,
    _recording,
    inference_mask,
)
from sai.models.finite import check_finite
from sai.models.ops import interpolate, sparse_sample_conv


def _nonfinite(t: Tensor) -> str:
    """"" when ``t`` is all finite, else e.g. "2 NaN, 1 inf of 64 values"."""
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return ""
    n_nan = int(torch.isnan(t).sum())
    n_inf = int((~finite).sum()) - n_nan
    parts = [p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if p]
    return f"{', '.join(parts)} of {t.numel()} values"


def check_bn_stats(bn: nn.BatchNorm2d, name: str = "") -> None:
    """SaiError naming ``name`` (the BatchNorm's state_dict prefix) when its parameters or statistics are not
    finite or ``running_var + eps <= 0`` somewhere: folding it would write NaN/inf weights (docs/design.md 3.4)."""
    label = name or "a BatchNorm layer"
    for attr in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, attr, None)
        if t is not None and (what := _nonfinite(t.detach())):
            raise SaiError(f"BatchNorm {label}: {name + '.' if name else ''}{attr} holds {what}; the checkpoint comes "
                           "from a diverged run or a damaged file: use an earlier checkpoint")
    if bn.running_var is None:
        raise SaiError(f"BatchNorm {label} keeps no running statistics (track_running_stats=False), so it cannot "
                       "be folded for inference; build it with track_running_stats=True and load trained statistics")
    var = bn.running_var.detach().double() + float(bn.eps)
    bad = torch.nonzero(var <= 0).flatten()
    if bad.numel():
        c = int(bad[0])
        raise SaiError(f"BatchNorm {label}: {name + '.' if name else ''}running_var + eps <= 0 at {bad.numel()} "
                       f"channel(s) (channel {c}: running_var {float(bn.running_var[c]):.6g}, eps {bn.eps:g}); a "
                       "variance is never negative, so the statistics are corrupt: use an earlier checkpoint or "
                       "recompute them (a forward pass over training data in train mode)")


def fold_bn(weight: Tensor, bias: Optional[Tensor], bn: nn.BatchNorm2d, name: str = "") -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the preceding conv (computed in float64). SaiError naming ``name`` (the
    BatchNorm's state_dict prefix) on invalid statistics or a result that is not finite in the weight's dtype."""
    check_bn_stats(bn, name)
    w = weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    b = -bn.running_mean.detach().double() if bias is None else bias.detach().double() - bn.running_mean.double()
    b = b * scale + bn.bias.detach().double()
    w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    w, b = w.to(weight.dtype), b.to(weight.dtype)
    for what, t in (("weight", w), ("bias", b)):
        if bad := _nonfinite(t):
            raise SaiError(f"folding BatchNorm {name or '(unnamed)'} into its conv gives a {what} with {bad} in "
                           f"{weight.dtype} (the conv's weights or weight / sqrt(running_var + eps) overflow); the "
                           "checkpoint's values are out of range: use an earlier checkpoint")
    return w, b


def _param(t: Optional[Tensor]) -> Optional[nn.Parameter]:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


def _fold_downsample(down: Optional[nn.Module], name: str = "") -> tuple[Optional[nn.Parameter],
                                                                        Optional[nn.Parameter], int]:
    if down is None:
        return None, None, 1
    conv, bn = down[0], down[1]
    w, b = fold_bn(conv.weight, conv.bias, bn, f"{name}.downsample.1" if name else "downsample.1")
    return _param(w), _param(b), conv.stride[0]


# Eager CPU inference computes the mask logits as 1x1 conv + shifted adds (see mask_logits).
FAST_MASK_LOGITS = True


def mask_logits(x: Tensor, weights: Tensor, biases: Tensor, strides: tuple[int, ...]) -> list[Tensor]:
    """The 3x3 (pad 1) mask-predictor convolutions of one block, one logit map per stride.

    ``weights`` [M, C, 3, 3] stacks the block's M mask convs (one output channel each). Eager CPU
    inference computes them as one 1x1 convolution to 9*M tap maps plus shifted adds: a
    convolution with one output channel is a poor fit for oneDNN (measured 4-13x slower). While
    exporting or compiling, the plain Conv is used, so the ONNX mask subgraph stays standard.
    """
    if not FAST_MASK_LOGITS or x.device.type != "cpu" or not _recording():
        return [F.conv2d(x, weights[i:i + 1], biases[i:i + 1], stride=s, padding=1) for i, s in enumerate(strides)]
    m, c = weights.shape[0], weights.shape[1]
    taps = F.conv2d(x, weights.permute(0, 2, 3, 1).reshape(m * 9, c, 1, 1))
    taps = F.pad(taps, (1, 1, 1, 1))
    h, w = x.shape[2], x.shape[3]
    out = []
    for i, s in enumerate(strides):
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        acc = biases[i].reshape(1, 1, 1, 1).expand(x.shape[0], 1, ho, wo).clone()
        for k in range(9):
            ky, kx = divmod(k, 3)
            acc += taps[:, i * 9 + k:i * 9 + k + 1, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
        out.append(acc)
    return out


# Eager CPU float32 inference runs each sparse block (deformable ones too) as one fused NHWC C++ op,
# ``sai_cpu::sparse_block`` (models/csrc/sai_cpu_blocks.h), when the C++ kernels are built: conv
# outputs stay compacted rows, Interpolate sums only the active neighbours and writes the block tail
# in the same pass. The same formulas as the per-op path below; False forces the per-op path.
FAST_BLOCKS = True
INTERP_EPS = 1e-5  # the eps of every Interpolate of the fused blocks (the ops' default)

# On CUDA tensors each sparse block runs as ``sai.kernels.sparse_block.sparse_block`` (the Triton block:
# masks, convs at the masks' positions and separable Interpolates in 6-7 launches, CUDA-graph capturable
# once a first forward has packed the weights). ``SAI_KERNELS_ON_CPU=1`` with ``TRITON_INTERPRET=1`` runs
# that same code path on CPU tensors under the Triton interpreter (tests, launch counts). A block the
# GPU path cannot take runs the per-op path, and the reason is logged once.
_log = logging.getLogger(__name__)
_fallbacks_logged: set = set()


def kernels_on_cpu() -> bool:
    """True when the CUDA code path runs on CPU tensors (``SAI_KERNELS_ON_CPU=1`` and ``TRITON_INTERPRET=1``)."""
    return os.environ.get("SAI_KERNELS_ON_CPU") == "1" and os.environ.get("TRITON_INTERPRET") == "1"


def _gpu_device(x: Tensor) -> bool:
    return x.device.type == "cuda" or (x.device.type == "cpu" and kernels_on_cpu())


def nhwc_stem_input(model: nn.Module, x: Tensor) -> Tensor:
    """The input of a fused sparse model as channels_last when its first sparse block runs the fused NHWC
    kernel (FAST_BLOCKS): the stem conv and the max-pool then run NHWC too (oneDNN's NHWC 7x7 conv and
    ATen's channels_last max-pool were 2.2x and 9x faster than NCHW at 512x832 here), and no block
    converts. Otherwise ``x`` unchanged."""
    first = next((blk for _, blk in model.sparse_blocks() if isinstance(blk, _FusedSparseBase)), None)
    nhwc = None if first is None or first.sampling == "dense" else first._fast_input(x)
    return x if nhwc is None else nhwc


def _pack_weight(w: Tensor) -> Tensor:
    """A conv weight [Cout, Cin, k, k] as the fused block kernel's packed GEMM operand
    (``sai_cpu::pack_conv_weight``: a tensor of the weight's shape whose storage holds the packed panels;
    only ``sai_cpu::sparse_block`` reads it)."""
    return torch.ops.sai_cpu.pack_conv_weight(w.float().contiguous())


def _ones_mask(like: Tensor) -> Tensor:
    return torch.ones_like(like[:, :1])


class _FusedSparseBase(MaskBookkeeping):
    """Shared parts of the fused sparse blocks.

    ``mask_fn(logit, temperature, noise_u, grid_interval) -> mask`` computes each hard inference mask
    (docs/design.md 3.1); None is ``sai.models.blocks.inference_mask``. Any substitute must compute the
    same formula: the exporter sets a one-node form while tracing and restores it afterwards
    (``sai.exporter.maskop.mask_as_one_node``).
    """

    sparse = True
    fused = True
    mask_fn: Optional[Callable[[Tensor, float, Optional[Tensor], int], Tensor]] = None

    def _copy_attrs(self, blk: nn.Module, name: str = "") -> None:
        self.inplanes, self.planes, self.stride = blk.inplanes, blk.planes, blk.stride
        self.with_dcn = blk.with_dcn
        self.mask_strides = blk.mask_strides
        self.gaussian_kernel = blk.gaussian_kernel
        self.grid_prior_interval = blk.grid_prior_interval
        self.T_eval = blk.T_eval
        self.sampling = blk.sampling
        self.loss_weights = blk.loss_weights
        self.noise_source: Optional[NoiseSource] = blk.noise_source
        self.sigma1 = float(blk.conv1_sigma.detach())
        self.sigma2 = float(blk.conv2_sigma.detach())
        self.mask1_weight = _param(blk.conv1_mask.weight)
        self.mask1_bias = _param(blk.conv1_mask.bias)
        self.mask2_weight = _param(blk.conv2_mask.weight)
        self.mask2_bias = _param(blk.conv2_mask.bias)
        if self.with_dcn:
            self.offset_weight = _param(blk.conv2_offset.weight)
            self.offset_bias = _param(blk.conv2_offset.bias)
        self.down_weight, self.down_bias, self.down_stride = _fold_downsample(blk.downsample, name)
        self.record_stats = blk.record_stats
        self._init_bookkeeping()

    def _mask(self, logit: Tensor, noise: Optional[Tensor]) -> Tensor:
        if self.sampling == "stochastic":
            if noise is None:
                src = self.noise_source or NoiseSource(None)
                noise = src.uniform((logit.shape[0], 2, logit.shape[2], logit.shape[3]), logit)
        else:
            noise = None
        fn = self.mask_fn or inference_mask
        return fn(logit, self.T_eval, noise, self.grid_prior_interval)

    def masks(self, x: Tensor, noise1: Optional[Tensor] = None, noise2: Optional[Tensor] = None):
        # in a half-precision model (cast_for_inference) the mask predictors stay fp32: their logits
        # decide which positions are computed (docs/design.md 7), so they read the block input in fp32
        xm = x if x.dtype == self.mask1_weight.dtype else x.to(self.mask1_weight.dtype)
        logit1, logit2 = mask_logits(
            xm, torch.cat([self.mask1_weight, self.mask2_weight]), torch.cat([self.mask1_bias, self.mask2_bias]),
            self.mask_strides)
        m1 = self._mask(logit1, noise1)
        m2 = self._mask(logit2, noise2)
        self._observe(m1, m2)
        return m1, m2

    def _gpu_refusal(self, x: Tensor) -> Optional[str]:
        """Why the GPU block (``sai.kernels.sparse_block``) cannot take ``x`` on this block, or None."""
        if os.environ.get("SAI_TRITON_KERNELS", "1") == "0":
            return "SAI_TRITON_KERNELS=0 disables the Triton kernels"
        try:
            import sai.kernels.sparse_block  # noqa: F401
        except ImportError as e:
            return f"the Triton kernels cannot be imported ({e}): install triton"
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"the input is {x.dtype}; the kernels take float32, float16 or bfloat16"
        for name in ("conv1_weight", "conv2_weight", "conv3_weight", "down_weight", "offset_weight"):
            w = getattr(self, name, None)
            if w is not None and w.dtype != x.dtype:
                return f"{name} is {w.dtype} but the input is {x.dtype}: cast the model (cast_for_inference)"
        if x.dim() != 4:
            return f"the input is {x.dim()}-D; the kernels take 4-D N x C x H x W"
        # the kernels index within one image (and the positions of a batch) in int32
        chans = max([x.shape[1]] + [d for name in ("conv1_weight", "conv2_weight", "conv3_weight")
                                    if getattr(self, name, None) is not None
                                    for d in getattr(self, name).shape[:2]])
        n, _, h, w = x.shape
        if chans * h * w >= 2**31 or 2 * n * h * w >= 2**31:
            return (f"the input {list(x.shape)} has {chans} x {h} x {w} elements per image or {n} x {h} x {w} "
                    "positions, past the kernels' int32 indexing (2^31): split the batch or the image")
        if x.requires_grad or (torch.is_grad_enabled() and self.conv1_weight.requires_grad):
            return "autograd is recording (the kernels have no backward)"
        if self.mask_fn is not None:
            return "a substitute mask_fn is set"
        return None

    def _gpu_input(self, x: Tensor) -> Optional[Tensor]:
        """``x`` as NHWC when this call runs the GPU block (CUDA tensors, or CPU tensors under
        ``kernels_on_cpu()``), else None; a refusal is logged once per reason."""
        if not (FAST_BLOCKS and _gpu_device(x) and _recording()):
            return None
        why = self._gpu_refusal(x)
        if why is not None:
            if why not in _fallbacks_logged:
                _fallbacks_logged.add(why)
                _log.warning("sai: sparse blocks run the per-op path on %s: %s", x.device.type, why)
            return None
        return x.contiguous(memory_format=torch.channels_last)

    def _gpu_forward(self, x: Tensor, noise1: Optional[Tensor], noise2: Optional[Tensor], args: tuple) -> Tensor:
        """The block as ``sai.kernels.sparse_block.sparse_block``; ``args`` its conv arguments (wa .. ds)."""
        from sai.kernels.sparse_block import new_workspace, sparse_block

        n, _, h, w = x.shape
        if self.sampling == "stochastic":
            src = self.noise_source or NoiseSource(None)
            shapes = [(n, 2, (h - 1) // s + 1, (w - 1) // s + 1) for s in self.mask_strides]
            noise1 = src.uniform(shapes[0], self.mask1_weight) if noise1 is None else noise1
            noise2 = src.uniform(shapes[1], self.mask1_weight) if noise2 is None else noise2
        else:
            noise1 = noise2 = None
        state = self.__dict__.setdefault("_gpu_state", {"cache": {}})
        tensors = (self.mask1_weight, self.mask2_weight, self.mask1_bias, self.mask2_bias)
        key = tuple((t.data_ptr(), t._version, t.device) for t in tensors)
        if state.get("mask_key") != key:  # both mask predictors stacked, kept while the weights are
            state["mask_key"] = key
            state["masks"] = (torch.cat(tensors[:2]), torch.cat(tensors[2:]))
        ws = state.get(x.device)
        if ws is None:
            ws = state[x.device] = new_workspace(x.device)
        wo, bo = (self.offset_weight, self.offset_bias) if self.with_dcn else (None, None)
        out, m1, m2 = sparse_block(
            x, *state["masks"], self.mask_strides, self.T_eval, self.grid_prior_interval, noise1, noise2, *args,
            self.sigma1, self.sigma2, self.gaussian_kernel, INTERP_EPS, wo, bo, self.stride,
            workspace=ws, cache=state["cache"])
        self._observe(m1, m2)
        return out

    def _fast_input(self, x: Tensor) -> Optional[Tensor]:
        """``x`` as NHWC (a no-op after the first fused block) when this call can run as one fused block:
        the GPU block (``_gpu_input``) or ``sai_cpu::sparse_block`` (see FAST_BLOCKS), else None."""
        from sai.models import cpu_kernels

        if _gpu_device(x):
            return self._gpu_input(x)
        if not (FAST_BLOCKS and x.device.type == "cpu" and x.dtype == torch.float32
                and self.conv1_weight.dtype == torch.float32 and not x.requires_grad and _recording()
                and cpu_kernels.active()):
            return None
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _sparse_enough(m1: Tensor, m2: Tensor) -> bool:
        """Both masks below the density where the per-op kernels switch to the dense convolution
        (``cpu_kernels.DENSE_ABOVE``): at or above it the per-op path, which then runs dense, is used."""
        from sai.models import cpu_kernels

        return all(float((m > 0).sum()) < cpu_kernels.DENSE_ABOVE * m.numel() for m in (m1, m2))

    def _packed(self, names: tuple[str, ...]) -> list[Optional[Tensor]]:
        """The weights ``names`` packed by _pack_weight (None for an absent one), cached until a weight
        changes."""
        tensors = [getattr(self, n, None) for n in names]
        key = tuple(None if t is None else (t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)
        cached = self.__dict__.get("_packed_cache")
        if cached is None or cached[0] != key:
            cached = (key, [None if t is None else _pack_weight(t.detach()) for t in tensors])
            self.__dict__["_packed_cache"] = cached
        return cached[1]

    def _offset_bias(self) -> Optional[Tensor]:
        return self.offset_bias if self.with_dcn else None

    def _identity(self, x: Tensor) -> Tensor:
        if self.down_weight is None:
            return x
        return F.conv2d(x, self.down_weight, self.down_bias, stride=self.down_stride)


class FusedSparseBottleneck(_FusedSparseBase):
    """BN-folded, conv3-reordered sparse Bottleneck (docs/design.md 3.4 second form)."""

    expansion = 4

    def __init__(self, blk: SparseBottleneck, name: str = ""):
        super().__init__()
        self._copy_attrs(blk, name)
        w1, b1 = fold_bn(blk.conv1.weight, None, blk.bn1, _key(name, "bn1"))
        w2, b2 = fold_bn(blk.conv2.weight, None, blk.bn2, _key(name, "bn2"))
        w3, b3 = fold_bn(blk.conv3.weight, None, blk.bn3, _key(name, "bn3"))
        self.conv1_weight, self.conv1_bias = _param(w1), _param(b1)
        self.conv2_weight, self.conv2_bias = _param(w2), _param(b2)
        self.conv3_weight, self.out_bias = _param(w3), _param(b3)

    def forward(self, x: Tensor, noise1: Optional[Tensor] = None, noise2: Optional[Tensor] = None) -> Tensor:
        s, k = self.stride, self.gaussian_kernel
        nhwc = self._fast_input(x) if self.sampling != "dense" else None
        fast = nhwc is not None
        x = nhwc if fast else x
        if fast and _gpu_device(x):
            return self._gpu_forward(x, noise1, noise2, (
                self.conv1_weight, self.conv1_bias, 1, self.conv2_weight, self.conv2_bias, s, True,
                self.conv3_weight, self.out_bias, self.down_weight, self.down_bias, self.down_stride))
        if self.sampling == "dense":
            identity = self._identity(x)
            a = F.relu(F.conv2d(x, self.conv1_weight, self.conv1_bias))
            if self.with_dcn:
                off = F.conv2d(x, self.offset_weight, self.offset_bias, stride=s, padding=1)
                b = sparse_sample_conv(a, _ones_mask(off), self.conv2_weight, self.conv2_bias, stride=s,
                                       padding=1, activation="relu", offset=off)
            else:
                b = F.relu(F.conv2d(a, self.conv2_weight, self.conv2_bias, stride=s, padding=1))
            c = F.conv2d(b, self.conv3_weight, self.out_bias)
            return F.relu(c + identity)
        m1, m2 = self.masks(x, noise1, noise2)
        if fast and self._sparse_enough(m1, m2):
            wa, wb, wc, wd, wo = self._packed(
                ("conv1_weight", "conv2_weight", "conv3_weight", "down_weight", "offset_weight"))
            return torch.ops.sai_cpu.sparse_block(
                x, m1, m2, wa, self.conv1_bias, 1, wb, self.conv2_bias, s, True, wc, self.out_bias, wd,
                self.down_bias, self.down_stride, self.sigma1, self.sigma2, k, INTERP_EPS, wo, self._offset_bias(), s)
        identity = self._identity(x)
        a = sparse_sample_conv(x, m1, self.conv1_weight, self.conv1_bias, activation="relu")
        a = interpolate(a, m1, self.sigma1, k)
        off = None
        if self.with_dcn:
            off = sparse_sample_conv(x, m2, self.offset_weight, self.offset_bias, stride=s, padding=1)
        b = sparse_sample_conv(a, m2, self.conv2_weight, self.conv2_bias, stride=s, padding=1,
                               activation="relu", offset=off)
        c = sparse_sample_conv(b, m2, self.conv3_weight)
        c = interpolate(c, m2, self.sigma2, k)
        return F.relu(c + self.out_bias.reshape(1, -1, 1, 1) + identity)


class FusedSparseBasicBlock(_FusedSparseBase):
    """BN-folded sparse BasicBlock (bn2 stays inside conv2: interpolation follows conv2+bn2)."""

    expansion = 1

    def __init__(self, blk: SparseBasicBlock, name: str = ""):
        super().__init__()
        self._copy_attrs(blk, name)
        w1, b1 = fold_bn(blk.conv1.weight, None, blk.bn1, _key(name, "bn1"))
        w2, b2 = fold_bn(blk.conv2.weight, None, blk.bn2, _key(name, "bn2"))
        self.conv1_weight, self.conv1_bias = _param(w1), _param(b1)
        self.conv2_weight, self.conv2_bias = _param(w2), _param(b2)

    def forward(self, x: Tensor, noise1: Optional[Tensor] = None, noise2: Optional[Tensor] = None) -> Tensor:
        s, k = self.stride, self.gaussian_kernel
        nhwc = self._fast_input(x) if self.sampling != "dense" else None
        fast = nhwc is not None
        x = nhwc if fast else x
        if fast and _gpu_device(x):
            return self._gpu_forward(x, noise1, noise2, (
                self.conv1_weight, self.conv1_bias, s, self.conv2_weight, self.conv2_bias, 1, False,
                None, None, self.down_weight, self.down_bias, self.down_stride))
        if self.sampling == "dense":
            identity = self._identity(x)
            a = F.relu(F.conv2d(x, self.conv1_weight, self.conv1_bias, stride=s, padding=1))
            if self.with_dcn:
                off = F.conv2d(x, self.offset_weight, self.offset_bias, stride=s, padding=1)
                b = sparse_sample_conv(a, _ones_mask(off), self.conv2_weight, self.conv2_bias, padding=1,
                                       offset=off)
            else:
                b = F.conv2d(a, self.conv2_weight, self.conv2_bias, padding=1)
            return F.relu(b + identity)
        m1, m2 = self.masks(x, noise1, noise2)
        if fast and self._sparse_enough(m1, m2):
            wa, wb, wd, wo = self._packed(("conv1_weight", "conv2_weight", "down_weight", "offset_weight"))
            return torch.ops.sai_cpu.sparse_block(
                x, m1, m2, wa, self.conv1_bias, s, wb, self.conv2_bias, 1, False, None, None, wd, self.down_bias,
                self.down_stride, self.sigma1, self.sigma2, k, INTERP_EPS, wo, self._offset_bias(), s)
        identity = self._identity(x)
        a = sparse_sample_conv(x, m1, self.conv1_weight, self.conv1_bias, stride=s, padding=1,
                               activation="relu")
        a = interpolate(a, m1, self.sigma1, k)
        off = None
        if self.with_dcn:
            off = sparse_sample_conv(x, m2, self.offset_weight, self.offset_bias, stride=s, padding=1)
        b = sparse_sample_conv(a, m2, self.conv2_weight, self.conv2_bias, padding=1, offset=off)
        b = interpolate(b, m2, self.sigma2, k)
        return F.relu(b + identity)


class FusedDenseBlock(nn.Module):
    """BN-folded plain Bottleneck / BasicBlock (standard torch ops; DCN through sparse_sample_conv
    with an all-ones mask, i.e. a plain deformable conv)."""

    sparse = False
    fused = True

    def __init__(self, blk: nn.Module, name: str = ""):
        super().__init__()
        self.kind = "bottleneck" if isinstance(blk, Bottleneck) else "basic"
        self.expansion = blk.expansion
        self.inplanes, self.planes, self.stride, self.with_dcn = blk.inplanes, blk.planes, blk.stride, blk.with_dcn
        self.offset_from = blk.offset_from
        w1, b1 = fold_bn(blk.conv1.weight, None, blk.bn1, _key(name, "bn1"))
        w2, b2 = fold_bn(blk.conv2.weight, None, blk.bn2, _key(name, "bn2"))
        self.conv1_weight, self.conv1_bias = _param(w1), _param(b1)
        self.conv2_weight, self.conv2_bias = _param(w2), _param(b2)
        if self.kind == "bottleneck":
            w3, b3 = fold_bn(blk.conv3.weight, None, blk.bn3, _key(name, "bn3"))
            self.conv3_weight, self.conv3_bias = _param(w3), _param(b3)
        if self.with_dcn:
            self.offset_weight = _param(blk.conv2_offset.weight)
            self.offset_bias = _param(blk.conv2_offset.bias)
            self.offset_stride = blk.conv2_offset.stride[0]
        self.down_weight, self.down_bias, self.down_stride = _fold_downsample(blk.downsample, name)

    def forward(self, x: Tensor, *unused) -> Tensor:
        s = self.stride
        s1, s2 = (1, s) if self.kind == "bottleneck" else (s, 1)
        p1 = 0 if self.kind == "bottleneck" else 1
        a = F.relu(F.conv2d(x, self.conv1_weight, self.conv1_bias, stride=s1, padding=p1))
        if self.with_dcn:
            src = a if self.offset_from == "conv1" else x
            off = F.conv2d(src, self.offset_weight, self.offset_bias, stride=self.offset_stride, padding=1)
            b = sparse_sample_conv(a, _ones_mask(off), self.conv2_weight, self.conv2_bias, stride=s2,
                                   padding=1, offset=off)
        else:
            b = F.conv2d(a, self.conv2_weight, self.conv2_bias, stride=s2, padding=1)
        if self.kind == "bottleneck":
            b = F.conv2d(F.relu(b), self.conv3_weight, self.conv3_bias)
        identity = x if self.down_weight is None else F.conv2d(
            x, self.down_weight, self.down_bias, stride=self.down_stride)
        return F.relu(b + identity)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def fuse_block(blk: nn.Module, name: str = "") -> nn.Module:
    """The fused form of one block; ``name`` (its state_dict prefix, e.g. ``layer2.0``) names it in errors."""
    if getattr(blk, "fused", False):
        return blk
    if isinstance(blk, SparseBottleneck):
        return FusedSparseBottleneck(blk, name)
    if isinstance(blk, SparseBasicBlock):
        return FusedSparseBasicBlock(blk, name)
    if isinstance(blk, (Bottleneck, BasicBlock)):
        return FusedDenseBlock(blk, name)
    raise SaiError(f"cannot fuse block of type {type(blk).__name__}")


MASK_PARAMETERS = ("mask1_weight", "mask1_bias", "mask2_weight", "mask2_bias")
_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@torch.no_grad()
def cast_for_inference(fused: nn.Module, precision: str) -> nn.Module:
    """A fused model (``fuse_for_inference``) in ``precision`` ("fp32", "fp16", "bf16"), in place: every
    parameter and buffer in that dtype except the mask predictors of the sparse blocks, which stay
    fp32 (docs/design.md 7: the mask subgraph is fp32 in half-precision models; the sai kernels take
    an fp32 mask beside fp16/bf16 activations). Feed it inputs of that dtype."""
    if precision not in _HALF:
        raise SaiError(f"precision must be one of {', '.join(_HALF)}, got {precision!r}")
    if not getattr(fused, "fused", False):
        raise SaiError("cast_for_inference needs a fused model: call fuse_for_inference first")
    dtype = _HALF[precision]
    for mod in fused.modules():
        keep = MASK_PARAMETERS if isinstance(mod, _FusedSparseBase) else ()
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_floating_point() and name not in keep:
                p.data = p.data.to(dtype)
            elif name in keep:
                p.data = p.data.float()
        for name, b in list(mod.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                setattr(mod, name, b.to(dtype))
    fused.precision = precision
    return fused


def check_finite_state(model: nn.Module) -> None:
    """SaiError naming the state_dict keys of ``model`` that hold NaN or inf (conv weights, BN parameters and
    statistics, mask predictors, heads): folded or not, they would be written into every exported model."""
    check_finite(model.state_dict(), f"the {getattr(model, 'arch', type(model).__name__)} model")


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with BN folded, the conv3 reorder, float sigmas.

    The copy keeps the model's API (``arch``, ``sampling``, ``noise_specs()``, ``densities()``,
    ``forward(x, *noise)``, outputs) and its forward calls only ``sai.models.ops`` wrappers for the
    sparse parts and standard torch ops elsewhere.
    """
    # a SaiResNet without importing sai.models.network (which imports this module for its fused stem):
    # a model built by sai.models.build_model means that module is loaded
    network = sys.modules.get("sai.models.network")
    if network is None or not isinstance(model, network.SaiResNet):
        raise SaiError(f"fuse_for_inference needs a model from sai.models.build_model, got {type(model).__name__}")
    if not getattr(model, "fused", False):
        check_finite_state(model)
    fused = copy.deepcopy(model).eval()
    for _, blk in fused.sparse_blocks():  # observers belong to the original model's blocks, not to the copy
        blk.clear_mask_observers()
    if not fused.fused:
        w, b = fold_bn(fused.conv1.weight, None, fused.bn1, "bn1")
        conv = fused.conv1  # the fused stem keeps the model's dtype and device (e.g. float64)
        stem = nn.Conv2d(conv.in_channels, w.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
                         bias=True, dtype=w.dtype, device=w.device)
        stem.weight.copy_(w)
        stem.bias.copy_(b)
        fused.conv1 = stem
        fused.bn1 = nn.Identity()
        for i in range(1, 5):
            layer = getattr(fused, f"layer{i}")
            for j in range(len(layer)):
                layer[j] = fuse_block(layer[j], f"layer{i}.{j}")
        fused.fused = True
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused.eval()
