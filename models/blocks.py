"""Residual blocks: the official sparse Bottleneck (docs/design.md 3.1, 3.4), a sparse BasicBlock, dense twins.

The sparse blocks here are the *literal official order* (training and the reference for export):

    Bottleneck   m1 = mask(x; stride 1)   m2 = mask(x; stride s)      # both from the block input x
                 a = Interp(relu(bn1(conv1 x)), m1, sigma1)
                 b = relu(bn2(conv2(a [, offset = conv2_offset(x)])))
                 out = relu(bn3(conv3(Interp(b, m2, sigma2))) + identity(x))

    BasicBlock   (our design, by analogy: one mask per 3x3 conv, interpolation after each)
                 m1 = mask(x; stride s)   m2 = mask(x; stride s)      # both from x, conv outputs' grid
                 a = Interp(relu(bn1(conv1 x)), m1, sigma1)
                 out = relu(Interp(bn2(conv2(a [, offset])), m2, sigma2) + identity(x))

The fast, BN-folded, reordered inference form lives in ``sai.models.fuse``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from sai.models.ops import deform_conv2d_reference, interpolate

DELTA = 1e-8  # the official p_value of GumbelSigmoid
MASK_BIAS_INIT = 3.0  # official: constant_init(conv{1,2}_mask, val=0, bias=3.)
SIGMA_INIT = 3.0  # official: conv{1,2}_sigma = nn.Parameter(torch.tensor(3.))


# ----------------------------------------------------------------------------------------------
# mask math (docs/design.md 3.1), shared by the literal and the fused blocks
# ----------------------------------------------------------------------------------------------


def gumbel_noise(u: Tensor) -> Tensor:
    """``n = g1 - g2`` with ``g = -log(-log(u + d) + d)`` from uniforms ``u`` of shape [N,2,H,W].

    ``u`` is clamped to [0, 1] first: a fed value just above 1 would make the inner log positive and
    the outer one NaN (a no-op for every valid uniform, so the official values are unchanged).
    """
    g = -torch.log(-torch.log(u.clamp(0.0, 1.0) + DELTA) + DELTA)
    return g[:, 0:1] - g[:, 1:2]


def grid_prior(s: Tensor, interval: int) -> Tensor:
    """Set ``s[:, :, ::g, ::g] = 1`` without in-place slice assignment (export-friendly, dynamic H/W)."""
    h, w = s.shape[-2], s.shape[-1]
    rows = torch.arange(h, device=s.device) % interval == 0
    cols = torch.arange(w, device=s.device) % interval == 0
    grid = rows[:, None] & cols[None, :]
    return torch.where(grid, torch.ones((), dtype=s.dtype, device=s.device), s)


def mask_from_logit(
    logit: Tensor,
    temperature,
    noise_u: Optional[Tensor],
    grid_interval: int,
    hard: bool,
) -> tuple[Tensor, Tensor]:
    """Gumbel-sigmoid mask of docs/design.md 3.1. Returns ``(mask, p)``; ``p = sigmoid(logit)``.

    The official GumbelSigmoid takes a 2-way softmax of ``(log(p+d)+g1)/(T+d)`` and
    ``(log(1-p+d)+g2)/(T+d)``; its first entry is exactly the sigmoid of the difference used here.

    ``p`` is clamped to [0, 1] before ``1 - p``: torch's sigmoid never leaves [0, 1] (the clamp is a
    no-op and the official values are unchanged bit for bit), but other runtimes' may round to
    ``1.0000001`` (onnxruntime's CPU Sigmoid near logit 17.8), which made ``log(1 - p + d)`` NaN. Every
    formulation of the mask (``sai.exporter.maskop``) applies the same clamps.
    """
    p = torch.sigmoid(logit).clamp(0.0, 1.0)
    z = torch.log(p + DELTA) - torch.log(1 - p + DELTA)
    if noise_u is not None:
        z = z + gumbel_noise(noise_u)
    s = torch.sigmoid(z / (temperature + DELTA))
    if grid_interval > 0:
        s = grid_prior(s, grid_interval)
    if hard:
        s = s * (s >= 0.5).to(s.dtype)
    return s, p


def inference_mask(logit: Tensor, temperature: float, noise_u: Optional[Tensor], grid_interval: int) -> Tensor:
    """The hard inference mask of docs/design.md 3.1 (``mask_from_logit(..., hard=True)`` without ``p``).

    The default ``mask_fn`` of the fused blocks; the exporter substitutes a one-node form of the same
    formula while tracing (``sai.exporter.maskop.mask_as_one_node``)."""
    return mask_from_logit(logit, temperature, noise_u, grid_interval, hard=True)[0]


def _recording() -> bool:
    """False while torch.export / ONNX export traces the model (no side effects then)."""
    if torch.onnx.is_in_onnx_export():
        return False
    try:
        return not torch.compiler.is_compiling()
    except AttributeError:  # very old torch
        return True


class NoiseSource:
    """The seedable generator a stochastic model draws its uniforms from (CPU, moved to x's device)."""

    def __init__(self, seed: Optional[int] = None):
        self.seed = seed
        self.generator: Optional[torch.Generator] = None
        self.reseed(seed)

    def reseed(self, seed: Optional[int]) -> None:
        self.seed = seed
        if seed is None:
            self.generator = None
        else:
            self.generator = torch.Generator()
            self.generator.manual_seed(int(seed))

    def uniform(self, shape, like: Tensor) -> Tensor:
        u = torch.rand(tuple(shape), generator=self.generator, dtype=torch.float32)
        return u.to(device=like.device, dtype=like.dtype)


class GumbelSigmoid(nn.Module):
    """Holds the official temperature buffer ``cur_T`` (key ``conv{1,2}_gumbel.cur_T``).

    Training uses ``cur_T`` and multiplies it by ``decay_alpha`` after every training forward
    (official behaviour); inference uses the fixed ``T_eval``.
    """

    def __init__(self, max_T: float = 1.0, decay_alpha: float = 0.99998):
        super().__init__()
        self.max_T = float(max_T)
        self.decay_alpha = float(decay_alpha)
        self.register_buffer("cur_T", torch.tensor(float(max_T)))

    @torch.no_grad()
    def step(self) -> None:
        self.cur_T.mul_(self.decay_alpha)


class DeformConv2d(nn.Module):
    """Deformable convolution v1 (mmdet ``DeformConv``: weight only, no bias); reference math."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, deform_groups: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.deform_groups = deform_groups

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        p = self.padding
        return deform_conv2d_reference(
            x, offset, self.weight, None, [self.stride] * 2, [p] * 4, [self.dilation] * 2, 1,
            self.deform_groups,
        )


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


# ----------------------------------------------------------------------------------------------
# mask observers and density bookkeeping, shared by the literal and the fused sparse blocks
# ----------------------------------------------------------------------------------------------

MaskObserver = Callable[[str, str, Tensor], None]  # (block name, "m1" | "m2", the mask the block uses)
_observer_ids = itertools.count()


class MaskObserverHandle:
    """What ``add_mask_observer`` returns: ``remove()`` unregisters the observer (idempotent); as a context
    manager it removes it on exit (``with model.add_mask_observer(fn): model(x)``)."""

    def __init__(self, registries: Iterable[dict], key: int, names: Iterable[str] = ()):
        self._registries = list(registries)
        self._key = key
        self.names = list(names)  # the blocks it observes

    def remove(self) -> None:
        for reg in self._registries:
            reg.pop(self._key, None)

    def __enter__(self) -> MaskObserverHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def register_mask_observer(blocks: Iterable[tuple[str, MaskBookkeeping]], fn: MaskObserver) -> MaskObserverHandle:
    """Register ``fn`` on each ``(name, block)``; the returned handle removes it from all of them."""
    key = next(_observer_ids)
    regs, names = [], []
    for name, blk in blocks:
        blk._mask_observers[key] = (name, fn)
        regs.append(blk._mask_observers)
        names.append(name)
    return MaskObserverHandle(regs, key, names)


class MaskBookkeeping(nn.Module):
    """Mask observers and the density counters of a sparse block (literal or fused).

    - ``add_mask_observer(fn)``: ``fn(block_name, "m1" | "m2", mask)`` is called with each mask the block
      computes, after it is computed and before it is used (the very tensor the block uses: soft in
      training, hard at inference; observers must not modify it). Not called while torch.export / ONNX
      export / torch.compile trace the model.
    - ``record_stats``: with False the block keeps no density statistics (``mask_stats()`` stays None).
      Recording copies four numbers to the host per block and forward, a device sync that stalls a GPU
      and that CUDA-graph capture refuses; GPU timing turns it off.
    """

    record_stats = True  # class default; set per instance (or SaiResNet.record_stats for a whole model)
    block_name = ""  # the name observers receive when registered on the block itself

    def _init_bookkeeping(self) -> None:
        self._mask_observers: dict[int, tuple[str, MaskObserver]] = {}
        self.reset_densities()

    def add_mask_observer(self, fn: MaskObserver, name: Optional[str] = None) -> MaskObserverHandle:
        """Call ``fn(name, which, mask)`` with every mask this block computes; returns the removal handle."""
        return register_mask_observer([(self.block_name if name is None else name, self)], fn)

    def clear_mask_observers(self) -> None:
        self._mask_observers.clear()

    def _observe(self, m1: Tensor, m2: Tensor) -> None:
        """Report the block's masks to its observers and count them (nothing while tracing)."""
        if not _recording():
            return
        for label, fn in list(self._mask_observers.values()):
            fn(label, "m1", m1)
            fn(label, "m2", m2)
        if self.record_stats:
            self._record(m1, m2)

    def reset_densities(self) -> None:
        self._stat_sum: Optional[Tensor] = None  # [d1, d2, u1, u2]: per-forward fractions, summed
        self._stat_count = 0  # forwards
        self._stat_img_sum: Optional[Tensor] = None  # the same fractions weighted by the batch size
        self._stat_images = 0
        self.last_probs: Optional[tuple[Tensor, Tensor]] = None

    def _record(self, m1: Tensor, m2: Tensor) -> None:
        with torch.no_grad():
            if self.training:  # soft masks: count what inference would sample (s >= 0.5)
                m1, m2 = m1 * (m1 >= 0.5), m2 * (m2 >= 0.5)
            n = m1.shape[0]
            stats = torch.stack([
                (m1 > 0).float().mean(), (m2 > 0).float().mean(),
                (m1 < 1).float().mean(), (m2 < 1).float().mean(),
            ]).cpu()
        self._stat_sum = stats if self._stat_sum is None else self._stat_sum + stats
        self._stat_count += 1
        self._stat_img_sum = stats * n if self._stat_img_sum is None else self._stat_img_sum + stats * n
        self._stat_images += n

    def mask_stats(self, average: str = "forward") -> Optional[dict]:
        """Measured ``d1, d2`` (fraction of positions with M > 0) and ``u1, u2`` (M < 1), or None.

        ``average="forward"`` (default) is the official SAI-Det counter: each forward's fraction over its
        whole batch (``binary.mean()``), averaged over forwards. ``"image"`` weights each forward by its
        batch size (every image counts once); the two differ only when batch sizes differ.
        """
        if average not in ("forward", "image"):
            raise ValueError(f"average must be 'forward' or 'image', got {average!r}")
        total, count = (self._stat_sum, self._stat_count) if average == "forward" else \
            (self._stat_img_sum, self._stat_images)
        if total is None or count == 0:
            return None
        v = (total / count).tolist()
        return {"d1": v[0], "d2": v[1], "u1": v[2], "u2": v[3]}


TRAINING_MASKS = ("gumbel", "inference")


# ----------------------------------------------------------------------------------------------
# sparse blocks (literal official order)
# ----------------------------------------------------------------------------------------------


class _SparseBase(MaskBookkeeping):
    """Mask predictors, Gumbel temperature, sigmas, noise and density bookkeeping of a sparse block.

    Training options (plain attributes, also set model-wide by ``SaiResNet.training_options``):

    - ``interpolate_fn``: the interpolation the block runs, ``fn(feature, mask, sigma, kernel_size)``; None
      is ``sai.models.ops.interpolate``. Any exact form of docs/design.md 3.3 (e.g. the banded-matmul
      ``train_demo.interpolate_matmul``, faster on small maps).
    - ``training_masks``: ``"gumbel"`` (official: Gumbel noise, soft mask at the training temperature) or
      ``"inference"`` (training forwards use the inference mask of docs/design.md 3.1: no noise, the hard
      threshold, at the current training temperature; gradients reach the logits through ``s`` at the
      kept positions). Evaluation forwards are unaffected.
    """

    sparse = True
    fused = False
    keep_probs = False  # set on frozen blocks (network frozen_stages): sparse_loss still sees them
    interpolate_fn: Optional[Callable] = None
    training_masks = "gumbel"

    def _init_sparse(self, inplanes: int, stride1: int, stride2: int, cfg: dict) -> None:
        self.mask_strides = (stride1, stride2)
        self.conv1_mask = nn.Conv2d(inplanes, 1, 3, stride=stride1, padding=1, bias=True)
        self.conv2_mask = nn.Conv2d(inplanes, 1, 3, stride=stride2, padding=1, bias=True)
        for m in (self.conv1_mask, self.conv2_mask):
            nn.init.zeros_(m.weight)
            nn.init.constant_(m.bias, cfg.get("mask_bias_init", MASK_BIAS_INIT))
        self.conv1_gumbel = GumbelSigmoid(cfg["max_T"], cfg["decay_alpha"])
        self.conv2_gumbel = GumbelSigmoid(cfg["max_T"], cfg["decay_alpha"])
        sigma = float(cfg.get("sigma_init", SIGMA_INIT))
        self.conv1_sigma = nn.Parameter(torch.tensor(sigma))
        self.conv2_sigma = nn.Parameter(torch.tensor(sigma))
        self.gaussian_kernel = int(cfg["gaussian_kernel"])
        self.grid_prior_interval = int(cfg["grid_prior_interval"])
        self.T_eval = float(cfg["T_eval"])
        self.sampling = cfg["sampling"]
        self.noise_source: Optional[NoiseSource] = None  # set by the network
        self._init_bookkeeping()

    # -- masks -----------------------------------------------------------------------------
    def _needs_noise(self) -> bool:
        return self.sampling != "dense" and (self.training or self.sampling == "stochastic")

    def _mask(self, logit: Tensor, gumbel: Optional[GumbelSigmoid], noise: Optional[Tensor]):
        if self.training and gumbel is not None and self.training_masks == "inference":
            return mask_from_logit(logit, gumbel.cur_T, None, self.grid_prior_interval, hard=True)
        if self._needs_noise() and noise is None:
            src = self.noise_source or NoiseSource(None)
            noise = src.uniform((logit.shape[0], 2, logit.shape[2], logit.shape[3]), logit)
        if not self._needs_noise():
            noise = None
        if self.training and gumbel is not None:
            return mask_from_logit(logit, gumbel.cur_T, noise, self.grid_prior_interval, hard=False)
        return mask_from_logit(logit, self.T_eval, noise, self.grid_prior_interval, hard=True)

    def _masks(self, x: Tensor, noise1: Optional[Tensor], noise2: Optional[Tensor]):
        m1, p1 = self._mask(self.conv1_mask(x), self.conv1_gumbel, noise1)
        m2, p2 = self._mask(self.conv2_mask(x), self.conv2_gumbel, noise2)
        if self.training or self.keep_probs:
            self.last_probs = (p1, p2)
        if self.training:
            self.conv1_gumbel.step()
            self.conv2_gumbel.step()
        self._observe(m1, m2)
        return m1, m2

    def _interp(self, f: Tensor, m: Tensor, sigma) -> Tensor:
        fn = self.interpolate_fn or interpolate
        return fn(f, m, sigma, self.gaussian_kernel)


class SparseBottleneck(_SparseBase):
    """The official SAI Bottleneck (pytorch style: stride on conv2), docs/design.md 3.1 / 3.4."""

    expansion = 4
    loss_weights = (0.25, 0.75)  # official sparse loss: 0.25 * mean(p1) + 0.75 * mean(p2)

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 dcn: bool = False, cfg: Optional[dict] = None):
        super().__init__()
        cfg = cfg or {}
        self.inplanes, self.planes, self.stride, self.with_dcn = inplanes, planes, stride, bool(dcn)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        if self.with_dcn:
            self.conv2_offset = nn.Conv2d(inplanes, 18, 3, stride=stride, padding=1)
            nn.init.zeros_(self.conv2_offset.weight)
            nn.init.zeros_(self.conv2_offset.bias)
            self.conv2 = DeformConv2d(planes, planes, 3, stride=stride, padding=1)
        else:
            self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample
        self._init_sparse(inplanes, 1, stride, cfg)

    def forward(self, x: Tensor, noise1: Optional[Tensor] = None, noise2: Optional[Tensor] = None) -> Tensor:
        dense = self.sampling == "dense"
        if not dense:
            m1, m2 = self._masks(x, noise1, noise2)
        out = self.relu(self.bn1(self.conv1(x)))
        if not dense:
            out = self._interp(out, m1, self.conv1_sigma)
        if self.with_dcn:
            out = self.conv2(out, self.conv2_offset(x))
        else:
            out = self.conv2(out)
        out = self.relu(self.bn2(out))
        if not dense:
            out = self._interp(out, m2, self.conv2_sigma)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class SparseBasicBlock(_SparseBase):
    """Sparse BasicBlock (ResNet-18/34), our design by analogy with the official Bottleneck.

    Both 3x3 convs produce the output grid (conv1 has the stride), so both masks are predicted
    from the block input x with stride s; each conv's output is interpolated from its samples.
    DCN (if enabled) replaces conv2, its offsets predicted from x (stride s) as in the Bottleneck.
    """

    expansion = 1
    loss_weights = (0.5, 0.5)

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 dcn: bool = False, cfg: Optional[dict] = None):
        super().__init__()
        cfg = cfg or {}
        self.inplanes, self.planes, self.stride, self.with_dcn = inplanes, planes, stride, bool(dcn)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        if self.with_dcn:
            self.conv2_offset = nn.Conv2d(inplanes, 18, 3, stride=stride, padding=1)
            nn.init.zeros_(self.conv2_offset.weight)
            nn.init.zeros_(self.conv2_offset.bias)
            self.conv2 = DeformConv2d(planes, planes, 3, stride=1, padding=1)
        else:
            self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample
        self._init_sparse(inplanes, stride, stride, cfg)

    def forward(self, x: Tensor, noise1: Optional[Tensor] = None, noise2: Optional[Tensor] = None) -> Tensor:
        dense = self.sampling == "dense"
        if not dense:
            m1, m2 = self._masks(x, noise1, noise2)
        out = self.relu(self.bn1(self.conv1(x)))
        if not dense:
            out = self._interp(out, m1, self.conv1_sigma)
        if self.with_dcn:
            out = self.conv2(out, self.conv2_offset(x))
        else:
            out = self.conv2(out)
        out = self.bn2(out)
        if not dense:
            out = self._interp(out, m2, self.conv2_sigma)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


# ----------------------------------------------------------------------------------------------
# dense blocks (the plain ResNet baselines, torchvision key names)
# ----------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """Plain ResNet Bottleneck (torchvision names). DCN offsets from the block input
    (``offset_from="input"``: the official SAI-Det dense ResNet, the default) or from conv1's output
    (``offset_from="conv1"``: upstream mmdetection v0.6)."""

    expansion = 4
    sparse = False
    fused = False

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 dcn: bool = False, cfg: Optional[dict] = None):
        super().__init__()
        cfg = cfg or {}
        self.inplanes, self.planes, self.stride, self.with_dcn = inplanes, planes, stride, bool(dcn)
        self.offset_from = cfg.get("dcn_offset_from") or "input"
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        if self.with_dcn:
            cin = planes if self.offset_from == "conv1" else inplanes
            self.conv2_offset = nn.Conv2d(cin, 18, 3, stride=stride, padding=1)
            nn.init.zeros_(self.conv2_offset.weight)
            nn.init.zeros_(self.conv2_offset.bias)
            self.conv2 = DeformConv2d(planes, planes, 3, stride=stride, padding=1)
        else:
            self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: Tensor, *unused) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.with_dcn:
            out = self.conv2(out, self.conv2_offset(out if self.offset_from == "conv1" else x))
        else:
            out = self.conv2(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """Plain ResNet BasicBlock (torchvision names); DCN on conv2 like the Bottleneck."""

    expansion = 1
    sparse = False
    fused = False

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 dcn: bool = False, cfg: Optional[dict] = None):
        super().__init__()
        cfg = cfg or {}
        self.inplanes, self.planes, self.stride, self.with_dcn = inplanes, planes, stride, bool(dcn)
        self.offset_from = cfg.get("dcn_offset_from") or "input"
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        if self.with_dcn:
            if self.offset_from == "conv1":
                self.conv2_offset = nn.Conv2d(planes, 18, 3, stride=1, padding=1)
            else:
                self.conv2_offset = nn.Conv2d(inplanes, 18, 3, stride=stride, padding=1)
            nn.init.zeros_(self.conv2_offset.weight)
            nn.init.zeros_(self.conv2_offset.bias)
            self.conv2 = DeformConv2d(planes, planes, 3, stride=1, padding=1)
        else:
            self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: Tensor, *unused) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.with_dcn:
            out = self.conv2(out, self.conv2_offset(out if self.offset_from == "conv1" else x))
        else:
            out = self.conv2(out)
        out = self.bn2(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


__all__ = [
    "BasicBlock", "Bottleneck", "DeformConv2d", "GumbelSigmoid", "MaskBookkeeping", "MaskObserver",
    "MaskObserverHandle", "NoiseSource", "SparseBasicBlock", "SparseBottleneck", "TRAINING_MASKS", "grid_prior",
    "gumbel_noise", "inference_mask", "mask_from_logit", "register_mask_observer",
]
