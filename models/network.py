"""SparseResNet / ResNet networks, their heads, and ``build_model``.

Key names follow torchvision for the backbone (``conv1``, ``bn1``, ``layer{1..4}.{i}.*``, ``fc``) and
mmdetection v0.6 for the neck (``neck.lateral_convs.{i}.conv.*``, ``neck.fpn_convs.{i}.conv.*``), so
torchvision ResNets and official SAI-Det checkpoints map onto them by prefix only.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sai.compat import is_batchnorm
from sai.constants import DCN_OFFSET_FROM, HEADS, SAMPLING_MODES
from sai.errors import SaiError
from sai.models.blocks import (
    TRAINING_MASKS,
    BasicBlock,
    Bottleneck,
    MaskObserver,
    MaskObserverHandle,
    NoiseSource,
    SparseBasicBlock,
    SparseBottleneck,
    register_mask_observer,
)
from sai.models.ops import conv_output_size

DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
_UNSET: Callable = object()  # type: ignore[assignment]  # "leave this option as it is"
ARCHS = tuple([f"sparse_resnet{d}" for d in DEPTHS] + [f"resnet{d}" for d in DEPTHS])

DEFAULT_OPTIONS = {
    "num_classes": 1000,
    "head": "cls",
    "dcn_stages": (False, False, False, False),
    "sampling": "deterministic",
    "grid_prior_interval": 11,
    "gaussian_kernel": 7,
    "max_T": 1.0,
    "decay_alpha": 0.99998,
    "T_eval": 0.03,
    "base_width": 64,
    "fpn_out_channels": 256,
    "sparse_loss_weight": 0.1,
    "sigma_init": 3.0,
    "mask_bias_init": 3.0,
    "zero_init_residual": False,
    "dcn_offset_from": None,  # where DCN offsets come from; None: "input" (SAI-Det, every arch), see below
    "seed": None,
    "norm_eval": False,  # BN in eval mode during train() (mmdet ResNet; official SAI-Det configs: True)
    "frozen_stages": -1,  # -1 none; 0 the stem; N the stem + layer1..N (official SAI-Det configs: 0)
}
# dcn_offset_from: "input" = the offset conv reads the block input (3x3, inplanes -> 18, conv2's stride), as
# the official SAI-Det code does in both its SparseResNet and its dense ResNet (so SAI-Det checkpoints of
# either kind load with the default); "conv1" = it reads conv1's output (planes -> 18), as upstream
# mmdetection's ResNet does (its DCN checkpoints need dcn_offset_from="conv1"; dense archs only).


def parse_arch(arch: str) -> tuple[bool, int]:
    """``"sparse_resnet101"`` -> ``(True, 101)``; SaiError naming the valid archs otherwise."""
    if not isinstance(arch, str) or arch not in ARCHS:
        raise SaiError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    sparse = arch.startswith("sparse_")
    return sparse, int(arch[len("sparse_resnet"):] if sparse else arch[len("resnet"):])


def _parse_stages(value) -> tuple[bool, bool, bool, bool]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        vals = tuple(bool(int(v)) if not isinstance(v, bool) else v for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 4:
        raise SaiError(f"dcn_stages must be 4 bools/ints (one per stage), e.g. (0, 1, 1, 1); got {value!r}")
    return vals  # type: ignore[return-value]


def normalize_options(arch: str, **options) -> dict:
    """Validate ``build_model`` options; fill defaults. ``width`` (a multiplier) sets ``base_width``."""
    sparse, _ = parse_arch(arch)
    if "width" in options:
        width = options.pop("width")
        if "base_width" in options:
            raise SaiError("give either width (a multiplier of 64) or base_width, not both")
        try:
            options["base_width"] = int(round(64 * float(width)))
        except (TypeError, ValueError):
            raise SaiError(f"width must be a number (multiplier of 64 channels), got {width!r}") from None
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise SaiError(
            f"unknown option(s) {', '.join(unknown)} for {arch}; valid options: "
            f"{', '.join(sorted(DEFAULT_OPTIONS))} (and width)"
        )
    opts = dict(DEFAULT_OPTIONS)
    opts.update(options)
    opts["dcn_stages"] = _parse_stages(opts["dcn_stages"])
    if opts["head"] not in HEADS:
        raise SaiError(f"head must be one of {HEADS}, got {opts['head']!r}")
    if opts["sampling"] not in SAMPLING_MODES:
        raise SaiError(f"sampling must be one of {SAMPLING_MODES}, got {opts['sampling']!r}")
    for key in ("num_classes", "grid_prior_interval", "gaussian_kernel", "base_width", "fpn_out_channels"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (v == 0 and key != "grid_prior_interval"):
            raise SaiError(f"{key} must be a positive int, got {v!r}")
    if opts["gaussian_kernel"] % 2 == 0:
        raise SaiError(f"gaussian_kernel must be odd (official 7), got {opts['gaussian_kernel']}")
    for key in ("max_T", "T_eval", "decay_alpha", "sigma_init"):
        try:
            opts[key] = float(opts[key])
        except (TypeError, ValueError):
            raise SaiError(f"{key} must be a number, got {opts[key]!r}") from None
        if opts[key] <= 0:
            raise SaiError(f"{key} must be > 0, got {opts[key]}")
    opts["mask_bias_init"] = float(opts["mask_bias_init"])
    opts["sparse_loss_weight"] = float(opts["sparse_loss_weight"])
    if opts["dcn_offset_from"] is None:
        opts["dcn_offset_from"] = "input"
    if opts["dcn_offset_from"] not in DCN_OFFSET_FROM:
        raise SaiError(f"dcn_offset_from must be 'input' (SAI-Det) or 'conv1' (upstream mmdetection), got "
                       f"{opts['dcn_offset_from']!r}")
    if sparse and opts["dcn_offset_from"] != "input":
        raise SaiError("sparse models predict DCN offsets from the block input: dcn_offset_from='input'")
    fs = opts["frozen_stages"]
    if isinstance(fs, bool) or not isinstance(fs, int) or not -1 <= fs <= 4:
        raise SaiError(f"frozen_stages must be an int in [-1, 4] (-1: none, 0: the stem, N: stem + layer1..N), "
                       f"got {fs!r}")
    if not isinstance(opts["norm_eval"], bool):
        raise SaiError(f"norm_eval must be True or False, got {opts['norm_eval']!r}")
    if opts["seed"] is not None and (isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int)):
        raise SaiError(f"seed must be an int or None, got {opts['seed']!r}")
    return opts


class ConvModule(nn.Module):
    """mmdet ``ConvModule`` without norm/activation: only ``.conv`` (so keys read ``...{i}.conv.*``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """mmdetection v0.6 FPN as configured by SAI-Det: 4 inputs -> ``out_channels``, ``num_outs=5``
    (the 5th level is ``max_pool2d(P5, 1, stride=2)``), nearest top-down upsampling.

    Upsampling uses the lower level's size rather than ``scale_factor=2``: identical for the even
    sizes mmdet sees (inputs padded to 32), and it also works for odd sizes and dynamic shapes.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_outs: int = 5):
        super().__init__()
        self.in_channels, self.out_channels, self.num_outs = list(in_channels), out_channels, num_outs
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, 1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)


class SaiResNet(nn.Module):
    """A (Sparse)ResNet backbone with a classification head, an FPN neck or no head.

    ``forward(x, *noise)``: for ``sampling="stochastic"`` pass one uniform tensor per
    ``noise_specs()`` entry (shape [N, 2, Ho, Wo], see ``noise_shapes``), or none to draw them from
    the model's seeded generator. Other modes take only ``x``.
    """

    def __init__(self, arch: str, **options):
        super().__init__()
        opts = normalize_options(arch, **options)
        sparse, depth = parse_arch(arch)
        self.arch, self.depth, self.is_sparse = arch, depth, sparse
        self.options = opts
        self.fused = False
        self.head = opts["head"]
        kind, blocks = DEPTHS[depth]
        if sparse:
            block_cls = SparseBasicBlock if kind == "basic" else SparseBottleneck
        else:
            block_cls = BasicBlock if kind == "basic" else Bottleneck
        self.stage_blocks = blocks
        bw = opts["base_width"]
        self.noise_source = NoiseSource(opts["seed"])
        self.conv1 = nn.Conv2d(3, bw, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(bw)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = bw
        cfg = dict(opts)
        self.out_channels: list[int] = []
        for i, n in enumerate(blocks):
            planes = bw * 2 ** i
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or inplanes != planes * block_cls.expansion:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block_cls.expansion, 1, stride=s, bias=False),
                        nn.BatchNorm2d(planes * block_cls.expansion),
                    )
                blk = block_cls(inplanes, planes, s, down, dcn=opts["dcn_stages"][i], cfg=cfg)
                if sparse:
                    blk.noise_source = self.noise_source
                layers.append(blk)
                inplanes = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(inplanes)
        if self.head == "cls":
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, opts["num_classes"])
        elif self.head == "fpn":
            self.neck = FPN(self.out_channels, opts["fpn_out_channels"], 5)
        self._init_weights()
        self._sampling = opts["sampling"]
        self._freeze_stages()

    # -- fine-tuning: frozen stages and norm_eval (mmdet ResNet semantics) --------------------
    def _frozen_modules(self) -> list[nn.Module]:
        fs = self.options.get("frozen_stages", -1)
        mods: list[nn.Module] = [self.conv1, self.bn1] if fs >= 0 else []
        return mods + [getattr(self, f"layer{i}") for i in range(1, fs + 1)]

    def _freeze_stages(self) -> None:
        """``frozen_stages`` >= 0: the stem, and N >= 1: also layer1..N, get ``requires_grad=False``
        and eval mode (so their BN statistics stay and their sparse blocks run inference masks), as
        mmdet's ``ResNet._freeze_stages``."""
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            for blk in m.modules():
                if getattr(blk, "sparse", False):
                    # frozen sparse blocks still report their probabilities to sparse_loss (the official
                    # loss counts every block), while training the rest of the model
                    blk.keep_probs = self.training

    def train(self, mode: bool = True):
        """``nn.Module.train`` plus mmdet's rules: frozen stages stay in eval mode; with ``norm_eval``
        every BatchNorm stays in eval mode (running statistics unchanged, affine still trained)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.options.get("norm_eval", False):
            for m in self.modules():
                if is_batchnorm(m):
                    m.eval()
        return self

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if name.startswith("neck"):
                continue
            if isinstance(m, nn.Conv2d) and not name.endswith(("_mask", "_offset")):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.options["zero_init_residual"]:
            for blk in self.blocks():
                bn = getattr(blk, "bn3", None) or blk.bn2
                nn.init.zeros_(bn.weight)

    # -- structure ---------------------------------------------------------------------------
    def named_blocks(self) -> Iterator[tuple[str, nn.Module]]:
        """All residual blocks in forward order, named ``layer{i}.{j}``."""
        for i in range(1, 5):
            for j, blk in enumerate(getattr(self, f"layer{i}")):
                yield f"layer{i}.{j}", blk

    def blocks(self) -> list[nn.Module]:
        return [b for _, b in self.named_blocks()]

    def sparse_blocks(self) -> Iterator[tuple[str, nn.Module]]:
        """The sparse blocks with their names (empty for dense baselines)."""
        for name, blk in self.named_blocks():
            if getattr(blk, "sparse", False):
                yield name, blk

    @property
    def sampling(self) -> str:
        return self._sampling

    @sampling.setter
    def sampling(self, mode: str) -> None:
        set_sampling(self, mode)

    def noise_specs(self) -> list[tuple[str, int]]:
        """``(name, feature stride)`` of every mask that takes noise, in forward-argument order.

        Empty unless ``sampling == "stochastic"``. The stride is the mask's stride w.r.t. the input
        image (4, 8, 16, 32); use ``noise_shapes`` for exact shapes at odd sizes.
        """
        if self._sampling != "stochastic":
            return []
        specs = []
        feat = 4
        for name, blk in self.named_blocks():
            if not getattr(blk, "sparse", False):
                feat *= blk.stride
                continue
            s1, s2 = blk.mask_strides
            specs.append((f"noise.{name}.mask1", feat * s1))
            specs.append((f"noise.{name}.mask2", feat * s2))
            feat *= blk.stride
        return specs

    def reseed(self, seed: Optional[int]) -> None:
        """Restart the stochastic-mode generator from ``seed`` (None: torch's global RNG)."""
        self.noise_source.reseed(seed)

    # -- mask observers, statistics switch, training options -------------------------------------
    def add_mask_observer(self, fn: MaskObserver) -> MaskObserverHandle:
        """Call ``fn(block_name, "m1" | "m2", mask)`` with every mask every sparse block computes (in forward
        order; the tensor the block then uses). Returns a handle: ``.remove()``, or use it as a context
        manager (``with model.add_mask_observer(fn): model(x)``). Observers are not copied by
        ``fuse_for_inference``; not called while exporting or compiling."""
        return register_mask_observer(self.sparse_blocks(), fn)

    @property
    def record_stats(self) -> bool:
        """Whether the sparse blocks keep density statistics (``mask_stats``, ``densities``). False: no
        per-block host copy, so GPU forwards do not sync and CUDA graphs can capture them."""
        return all(blk.record_stats for _, blk in self.sparse_blocks())

    @record_stats.setter
    def record_stats(self, on: bool) -> None:
        for _, blk in self.sparse_blocks():
            blk.record_stats = bool(on)

    def set_training_options(self, *, interpolate_fn=_UNSET, training_masks=_UNSET) -> None:
        """Set the sparse blocks' training options (``_SparseBase``): ``interpolate_fn`` (None: the
        reference ``interpolate``) and ``training_masks`` (``"gumbel"`` | ``"inference"``)."""
        if training_masks is not _UNSET and training_masks not in TRAINING_MASKS:
            raise SaiError(f"training_masks must be one of {TRAINING_MASKS}, got {training_masks!r}")
        for _, blk in self.sparse_blocks():
            if getattr(blk, "fused", False):
                raise SaiError("training options apply to the trainable model, not to a fused one")
            if interpolate_fn is not _UNSET:
                blk.interpolate_fn = interpolate_fn
            if training_masks is not _UNSET:
                blk.training_masks = training_masks

    @contextlib.contextmanager
    def training_options(self, *, interpolate_fn=_UNSET, training_masks=_UNSET) -> Iterator[SaiResNet]:
        """``set_training_options`` for the ``with`` block; every block's previous options come back on
        exit (including any ``set_training_options`` called inside it)."""
        saved = [(blk, blk.interpolate_fn, blk.training_masks) for _, blk in self.sparse_blocks()
                 if not getattr(blk, "fused", False)]
        try:
            self.set_training_options(interpolate_fn=interpolate_fn, training_masks=training_masks)
            yield self
        finally:
            for blk, fn, masks in saved:
                blk.interpolate_fn, blk.training_masks = fn, masks

    # -- densities / loss --------------------------------------------------------------------
    def reset_densities(self) -> None:
        for _, blk in self.sparse_blocks():
            blk.reset_densities()

    def densities(self, average: str = "forward") -> OrderedDict[str, tuple[float, float]]:
        """Measured mask densities ``(d1, d2)`` per sparse block since the last ``reset_densities()``
        (fraction of positions with mask > 0). ``average="forward"``: the official SAI-Det counter
        (each forward's fraction over its whole batch, averaged over forwards); ``"image"``: every
        image weighted once (differs only when batch sizes differ)."""
        return OrderedDict((k, (v["d1"], v["d2"])) for k, v in self.mask_stats(average).items())

    def mask_stats(self, average: str = "forward") -> OrderedDict[str, dict]:
        """Per sparse block: ``d1, d2`` (mask > 0) and ``u1, u2`` (mask < 1, i.e. interpolated),
        averaged as ``densities``."""
        out: OrderedDict[str, dict] = OrderedDict()
        for name, blk in self.sparse_blocks():
            st = blk.mask_stats(average)
            if st is not None:
                out[name] = st
        return out

    def sparse_loss(self, target: Optional[float] = None) -> Tensor:
        """Sparsity loss of the last training forward.

        ``target=None`` is the official SAI-Det loss: per block ``0.25 * mean(p1) + 0.75 * mean(p2)``
        (``p = sigmoid(mask logit)``; BasicBlock 0.5/0.5), averaged over blocks, times
        ``sparse_loss_weight``. It pushes the sampling probability down without a set point. With a
        ``target`` density it becomes ``weight * mean_blocks((w1*mean(p1) + w2*mean(p2) - target)^2)``
        so training settles at that density instead of collapsing (our extension).
        """
        terms = []
        for name, blk in self.sparse_blocks():
            if blk.last_probs is None:
                raise SaiError(f"no training forward recorded for {name}: call model.train() and run a "
                               "forward pass before sparse_loss()")
            p1, p2 = blk.last_probs
            w1, w2 = blk.loss_weights
            t = w1 * p1.mean() + w2 * p2.mean()
            terms.append(t if target is None else (t - float(target)) ** 2)
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).mean() * self.options["sparse_loss_weight"]

    # -- forward -----------------------------------------------------------------------------
    def forward_features(self, x: Tensor, *noise: Tensor) -> tuple[Tensor, ...]:
        specs_n = 2 * sum(1 for _ in self.sparse_blocks()) if self._sampling == "stochastic" else 0
        if noise and len(noise) != specs_n:
            raise SaiError(
                f"{self.arch} in sampling={self._sampling!r} takes {specs_n} noise tensors "
                f"(see model.noise_specs()), got {len(noise)}"
            )
        if self.fused and self.is_sparse:
            from sai.models.fuse import nhwc_stem_input

            x = nhwc_stem_input(self, x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        k = 0
        for i in range(1, 5):
            for blk in getattr(self, f"layer{i}"):
                if noise and getattr(blk, "sparse", False):
                    x = blk(x, noise[k], noise[k + 1])
                    k += 2
                else:
                    x = blk(x)
            # (channels_last after the fused CPU blocks, sai.models.fuse.FAST_BLOCKS: the same values)
            outs.append(x)
        return tuple(outs)

    def forward(self, x: Tensor, *noise: Tensor):
        feats = self.forward_features(x, *noise)
        if self.head == "cls":
            return self.fc(torch.flatten(self.avgpool(feats[-1]), 1))
        if self.head == "fpn":
            return self.neck(feats)
        return feats


# ----------------------------------------------------------------------------------------------
# module-level API
# ----------------------------------------------------------------------------------------------


def build_model(arch: str, **options) -> SaiResNet:
    """Build ``sparse_resnet{18,34,50,101,152}`` or ``resnet{18,34,50,101,152}``.

    Options (defaults in ``DEFAULT_OPTIONS``): num_classes, head ("cls" | "fpn" | "none"),
    dcn_stages (4 bools/ints), sampling ("deterministic" | "stochastic" | "dense"),
    grid_prior_interval, gaussian_kernel, max_T, decay_alpha, T_eval, base_width or width
    (multiplier of 64), fpn_out_channels, sparse_loss_weight, sigma_init, mask_bias_init,
    zero_init_residual, dcn_offset_from ("input": SAI-Det, the default; "conv1": upstream mmdetection's
    dense DCN), seed, norm_eval and frozen_stages (fine-tuning, as mmdet's ResNet: BN kept in eval mode;
    the stem + first N stages frozen. The official SAI-Det detector configs use norm_eval=True,
    frozen_stages=0).
    """
    return SaiResNet(arch, **options)


def set_sampling(model: nn.Module, mode: str) -> None:
    """Switch a (fused or unfused) sparse model between deterministic / stochastic / dense."""
    if mode not in SAMPLING_MODES:
        raise SaiError(f"sampling must be one of {SAMPLING_MODES}, got {mode!r}")
    if not isinstance(model, SaiResNet):
        raise SaiError(f"set_sampling needs a model from sai.models.build_model, got {type(model).__name__}")
    model._sampling = mode
    model.options["sampling"] = mode
    for _, blk in model.sparse_blocks():
        blk.sampling = mode


def iter_sparse_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, block)`` for every sparse block of ``model`` in forward order."""
    return model.sparse_blocks()


FPN_OUTPUTS = ("p2", "p3", "p4", "p5", "p6")
STAGE_OUTPUTS = ("c2", "c3", "c4", "c5")


def output_names(n: int, head: Optional[str]) -> list[str]:
    """Names of a model's ``n`` outputs, the same in the exported graphs and every backend: ``logits`` (cls),
    ``p2``..``p6`` (fpn), ``c2``..``c5`` (none)."""
    if n == 1:
        return ["logits" if head in (None, "cls") else "output"]
    if head == "fpn" and n == len(FPN_OUTPUTS):
        return list(FPN_OUTPUTS)
    if head == "none" and n == len(STAGE_OUTPUTS):
        return list(STAGE_OUTPUTS)
    return [f"output{i}" for i in range(n)]


def noise_shapes(model: nn.Module, input_shape) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Exact ``(name, [N, 2, Ho, Wo])`` of every noise input for an input of ``input_shape``
    (``[N, C, H, W]``), following the stem's and each mask conv's shape rule."""
    if len(input_shape) != 4:
        raise SaiError(f"input_shape must be [N, C, H, W], got {list(input_shape)}")
    if model.sampling != "stochastic":
        return []
    n, _, h, w = (int(v) for v in input_shape)
    h, w = conv_output_size(h, 7, 2, 3, 3, 1), conv_output_size(w, 7, 2, 3, 3, 1)
    h, w = conv_output_size(h, 3, 2, 1, 1, 1), conv_output_size(w, 3, 2, 1, 1, 1)
    shapes = []
    for name, blk in model.named_blocks():
        if getattr(blk, "sparse", False):
            for idx, s in enumerate(blk.mask_strides, 1):
                ho, wo = conv_output_size(h, 3, s, 1, 1, 1), conv_output_size(w, 3, s, 1, 1, 1)
                shapes.append((f"noise.{name}.mask{idx}", (n, 2, ho, wo)))
        # block output grid: the strided 3x3 (pad 1) or 1x1 downsample give the same size
        h, w = conv_output_size(h, 3, blk.stride, 1, 1, 1), conv_output_size(w, 3, blk.stride, 1, 1, 1)
    return shapes
