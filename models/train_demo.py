"""Train the demo pair: a small SparseResNet-18 and its dense ResNet-18 twin on the shapes task.

Recipe (the official SAI one, shortened to minutes on a CPU). As SAI-Det starts from a pretrained dense
ResNet, phase 1 trains a dense ResNet-18 from scratch; phase 2 fine-tunes two models from those
weights with the same data order, optimiser and schedule: the dense twin (plain fine-tuning), then
the sparse model (``init_from_dense``; Gumbel-sigmoid masks whose temperature decays geometrically
from ``max_T`` every training forward, ``decay_alpha`` chosen so it reaches ``final_T`` at the last
step; the grid prior; the sparse loss towards a density set point, ``model.sparse_loss(target=...)``,
that starts dense and reaches ``target_density`` after ``density_warmup`` of the steps). On top of
the official recipe the sparse model is distilled from its dense twin (soft targets at temperature
``distill_T``, weight ``distill_weight``): on this task it closes most of the accuracy gap (measured:
plain cross-entropy 97.55% vs 99.85% dense; with distillation and the warm-up, see metrics.json).
Everything is seeded (torch, the data generator, the batch order); training runs on one thread by
default, which is both the fastest choice on a shared machine and deterministic. During training
the sparse blocks interpolate with ``interpolate_matmul`` (the same formula, faster on small maps).

Outputs (``out`` directory): ``sparse_resnet18.pth``, ``resnet18.pth`` (our checkpoint format; meta
holds arch, options, input normalisation, classes, dataset and the recorded metrics),
``train_log.jsonl`` (one JSON object per logged step / evaluation) and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sai.errors import SaiError
from sai.models import demo_data
from sai.models.checkpoint import init_from_dense, save_checkpoint
from sai.models.flops import kernel_flops, official_flops
from sai.models.fuse import fuse_for_inference
from sai.models.network import build_model
from sai.outputs import atomic_path, write_atomic

SPARSE_FILE = "sparse_resnet18.pth"
DENSE_FILE = "resnet18.pth"
DEFAULT_OUT = Path(__file__).resolve().parent / "zoo" / "sai_demo_r18"


# DemoConfig fields that `sai train-demo` has a flag for (--name-with-dashes)
CLI_SETTINGS = ("seed", "pretrain_epochs", "epochs", "finetune_lr", "train_size", "test_size", "batch_size",
                "base_width", "target_density", "sparse_loss_weight", "lr", "threads", "distill_weight",
                "density_warmup")


@dataclass
class DemoConfig:
    """Everything that decides the trained weights (recorded in metrics.json and the checkpoints)."""

    seed: int = 0
    pretrain_epochs: int = 5  # phase 1: the dense ResNet-18 from scratch
    epochs: int = 9  # phase 2: fine-tuning, sparse (from the phase-1 weights) and dense alike
    train_size: int = 12000
    val_size: int = 500
    test_size: int = 2000
    batch_size: int = 64
    image_size: int = demo_data.IMAGE_SIZE
    base_width: int = 16
    target_density: float = 0.2
    sparse_loss_weight: float = 6.0
    mask_bias_init: float = 1.0
    mask_lr_mult: float = 10.0
    max_T: float = 1.0
    final_T: float = 0.1
    # Inference here is deterministic (no Gumbel noise, hard threshold); the last fraction of fine-tuning
    # trains with exactly that mask (at the low end of the temperature decay): training_masks="inference".
    deterministic_tail: float = 0.0
    # Weight of the polarisation loss mean(4 p (1 - p)) on the mask probabilities: confident masks make the
    # noisy soft training mask and the deterministic hard inference mask agree (and mean p ~ density).
    polarize_weight: float = 1.0
    polarize_start: float = 0.3  # ramped in linearly from this fraction of fine-tuning (density first)
    # Knowledge distillation from the dense twin (trained first): loss = (1 - w) CE + w T^2 KL(teacher_T || student_T)
    distill_weight: float = 0.7
    distill_T: float = 4.0
    # The sparse loss's set point starts at 1 (dense) and reaches target_density linearly over this fraction
    # of fine-tuning, so the network loses positions gradually instead of all at once.
    density_warmup: float = 0.3
    grid_prior_interval: int = 11
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    threads: int = 1
    log_every: int = 10
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise SaiError naming every setting outside its range (and the flag that sets it)."""
        bad = []

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                where = f"--{name.replace('_', '-')}" if name in CLI_SETTINGS else f"DemoConfig.{name}"
                bad.append(f"{name} = {getattr(self, name)!r} ({where}): {rule}")

        for name in ("seed", "pretrain_epochs"):
            need(int(getattr(self, name)) >= 0, name, "must be >= 0")
        for name in ("epochs", "train_size", "val_size", "test_size", "batch_size", "base_width", "threads",
                     "log_every", "image_size"):
            need(int(getattr(self, name)) >= 1, name, "must be >= 1")
        need(0.0 < self.target_density <= 1.0, "target_density", "must be in (0, 1]")
        need(0.0 <= self.distill_weight <= 1.0, "distill_weight", "must be in [0, 1] (0 = plain cross-entropy)")
        for name in ("density_warmup", "deterministic_tail"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "must be a fraction of fine-tuning in [0, 1]")
        need(0.0 <= self.polarize_start < 1.0, "polarize_start", "must be in [0, 1)")
        for name in ("sparse_loss_weight", "polarize_weight", "weight_decay", "warmup_frac"):
            need(getattr(self, name) >= 0.0, name, "must be >= 0")
        for name in ("lr", "finetune_lr", "distill_T", "max_T", "final_T", "mask_lr_mult"):
            need(getattr(self, name) > 0.0, name, "must be > 0")
        if bad:
            raise SaiError("train-demo settings out of range: " + "; ".join(bad))

    def steps(self, epochs: Optional[int] = None) -> int:
        """Optimiser steps of ``epochs`` (default: the fine-tuning phase)."""
        return (self.epochs if epochs is None else epochs) * math.ceil(self.train_size / self.batch_size)

    def decay_alpha(self) -> float:
        """Per-forward temperature decay so ``max_T`` reaches ``final_T`` at the last fine-tuning step."""
        return (self.final_T / self.max_T) ** (1.0 / max(1, self.steps()))

    def model_options(self, sparse: bool) -> dict:
        opts = {"num_classes": len(demo_data.CLASSES), "head": "cls", "base_width": self.base_width}
        if sparse:
            opts.update(max_T=self.max_T, decay_alpha=self.decay_alpha(), mask_bias_init=self.mask_bias_init,
                        sparse_loss_weight=self.sparse_loss_weight, grid_prior_interval=self.grid_prior_interval)
        return opts


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """``A[i, j] = g[j - i + r]`` for ``|j - i| <= r`` (an ``n x n`` banded matrix: 1-D zero-padded conv)."""
    r = (g.shape[0] - 1) // 2
    idx = torch.arange(n)
    d = idx[None, :] - idx[:, None] + r
    valid = (d >= 0) & (d < g.shape[0])
    return torch.where(valid, g[d.clamp(0, g.shape[0] - 1)], torch.zeros((), dtype=g.dtype))


def interpolate_matmul(feature: torch.Tensor, mask: torch.Tensor, sigma, kernel_size: int = 7,
                       eps: float = 1e-5) -> torch.Tensor:
    """docs/design.md 3.3 with the separable Gaussian as two banded matmuls (exact, differentiable in all
    three inputs). The training-time stand-in for ``interpolate_reference``: on the small maps of
    the demo it is several times faster on a CPU than a 7x7 depthwise conv and its backward."""
    r = (kernel_size - 1) // 2
    s2 = sigma.reshape(()) ** 2 if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma) ** 2)
    s2 = s2.to(feature.dtype)
    ii = torch.arange(-r, r + 1, dtype=feature.dtype)
    g = torch.exp(-(s2 / 2) * ii ** 2)
    scale = s2 / (2 * math.pi)
    ah, aw = _band(feature.shape[-2], g), _band(feature.shape[-1], g)
    num = scale * (ah @ (feature * mask) @ aw.T)
    den = scale * (ah @ mask @ aw.T) + eps
    return mask * feature + (1 - mask) * num / den


def polarization_loss(model: nn.Module) -> torch.Tensor:
    """``mean_blocks(mean(4 p (1 - p)))`` over both masks of every sparse block (0 when every sampling
    probability is 0 or 1) from the last training forward."""
    terms = []
    for _, blk in model.sparse_blocks():
        for p in blk.last_probs:
            terms.append((4 * p * (1 - p)).mean())
    return torch.stack(terms).mean()


def input_meta(cfg: DemoConfig) -> dict:
    """How to feed the demo models (stored in the checkpoint meta)."""
    return {"layout": "NCHW", "channels": "RGB", "height": cfg.image_size, "width": cfg.image_size,
            "scale": 1.0 / 255.0, "mean": list(demo_data.MEAN), "std": list(demo_data.STD),
            "formula": "x = (rgb_uint8 / 255 - mean) / std"}


def dataset_meta(cfg: DemoConfig) -> dict:
    return {"generator": "sai.models.demo_data", "seed": cfg.seed, "image_size": cfg.image_size,
            "splits": {"train": [0, cfg.train_size], "val": [0, cfg.val_size], "test": [0, cfg.test_size]}}


def _param_groups(model: nn.Module, cfg: DemoConfig) -> list[dict]:
    mask, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if "_mask." in name or name.endswith("_sigma"):
            mask.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if mask:
        groups.append({"params": mask, "weight_decay": 0.0, "lr_mult": cfg.mask_lr_mult})
    return groups


def _lr_at(step: int, total: int, cfg: DemoConfig, peak: Optional[float] = None) -> float:
    """Linear warm-up then cosine decay to 0 over ``total`` steps."""
    peak = cfg.lr if peak is None else peak
    warm = max(1, int(cfg.warmup_frac * total))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, batch: int = 250,
             fuse: bool = True) -> dict:
    """Accuracy and (sparse models) measured mask stats in deterministic inference mode."""
    was_training = model.training
    if getattr(model, "is_sparse", False):
        model.reset_densities()  # drops the last training forward's graph-attached probabilities
    net = fuse_for_inference(model) if fuse else model.eval()
    if getattr(net, "is_sparse", False):
        net.sampling = "deterministic"
        net.reset_densities()
    correct = 0
    for i in range(0, len(labels), batch):
        x = demo_data.normalize(images_u8[i:i + batch])
        correct += int((net(x).argmax(1) == labels[i:i + batch]).sum())
    out = {"accuracy": correct / max(1, len(labels)), "n": int(len(labels))}
    if getattr(net, "is_sparse", False):
        stats = net.mask_stats()
        out["mask_stats"] = {k: dict(v) for k, v in stats.items()}
        ds = [d for v in stats.values() for d in (v["d1"], v["d2"])]
        out["mean_density"] = sum(ds) / max(1, len(ds))
    if not fuse:
        model.train(was_training)
    return out


def train_model(arch: str, cfg: DemoConfig, train: tuple[torch.Tensor, torch.Tensor],
                val: tuple[torch.Tensor, torch.Tensor], log: Callable[[dict], None],
                progress: Callable[[str], None], *, epochs: int, lr: float, phase: str,
                init: Optional[dict] = None, teacher: Optional[nn.Module] = None) -> tuple[nn.Module, float]:
    """Train one model for ``epochs`` (peak learning rate ``lr``), from scratch or from ``init`` (a dense
    ResNet state dict: loaded as is into a dense model, via ``init_from_dense`` into a sparse one), with
    ``teacher`` (eval mode, frozen) distilled into it when ``cfg.distill_weight`` > 0. Returns the model (eval mode) and the wall time in seconds."""
    sparse = arch.startswith("sparse_")
    torch.manual_seed(cfg.seed)
    model = build_model(arch, **cfg.model_options(sparse))
    if init is not None:
        if sparse:
            init_from_dense(model, {"state_dict": init})
        else:
            model.load_state_dict(init, strict=True)
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=lr)
    images, labels = train
    order_gen = torch.Generator().manual_seed(cfg.seed + 1 + (1000 if init is not None else 0))
    t0 = time.perf_counter()
    # the sparse blocks interpolate with the banded-matmul form (same formula, faster on the demo's small maps)
    options = model.training_options(interpolate_fn=interpolate_matmul) if sparse else contextlib.nullcontext()
    with options:
        _train_loop(model, arch, sparse, cfg, opt, images, labels, epochs, lr, phase, order_gen, val, log,
                    progress, t0, teacher)
    model.eval()
    return model, time.perf_counter() - t0


def _train_loop(model, arch, sparse, cfg, opt, images, labels, epochs, peak, phase, order_gen, val, log, progress,
                t0, teacher=None) -> None:
    n, step, total = len(labels), 0, cfg.steps(epochs)
    tail_start = total - int(round(cfg.deterministic_tail * total)) if sparse else total + 1
    # the tail's training_masks="inference" is undone by train_model's training_options on exit
    _epochs(model, arch, sparse, cfg, opt, images, labels, epochs, peak, phase, order_gen, val, log, progress,
            t0, n, step, total, tail_start, teacher)


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target term ``T^2 KL(softmax(t/T) || softmax(s/T))`` (batch mean)."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def density_set_point(cfg: DemoConfig, step: int, total: int) -> float:
    """The sparse loss's target at ``step``: 1 -> ``target_density`` over ``density_warmup`` of ``total``."""
    warm = cfg.density_warmup * total
    if warm <= 0 or step >= warm:
        return cfg.target_density
    return 1.0 + (cfg.target_density - 1.0) * step / warm


def _epochs(model, arch, sparse, cfg, opt, images, labels, epochs, peak, phase, order_gen, val, log, progress,
            t0, n, step, total, tail_start, teacher=None) -> None:
    t_all = None
    if teacher is not None and cfg.distill_weight > 0:  # no augmentation: the teacher's logits once per image
        with torch.no_grad():
            teacher.eval()
            t_all = torch.cat([teacher(demo_data.normalize(images[i:i + 500])) for i in range(0, n, 500)])
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=order_gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x, y = demo_data.normalize(images[idx]), labels[idx]
            lr = _lr_at(step, total, cfg, peak)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            if sparse:
                model.reset_densities()
                if step == tail_start:  # inference masks from here (no noise, hard threshold; docs/design.md 3.1)
                    model.set_training_options(training_masks="inference")
                    progress(f"  {phase} {arch}: inference masks (no noise, hard threshold) from step {step + 1}")
            logits = model(x)
            ce = F.cross_entropy(logits, y)
            task, kd = ce, None
            if t_all is not None:
                kd = distill_loss(logits, t_all[idx], cfg.distill_T)
                task = (1 - cfg.distill_weight) * ce + cfg.distill_weight * kd
            sl = (model.sparse_loss(target=density_set_point(cfg, step, total)) if sparse else torch.zeros(()))
            if sparse and cfg.polarize_weight:
                ramp = min(1.0, max(0.0, (step / total - cfg.polarize_start) / (1.0 - cfg.polarize_start)))
                sl = sl + cfg.polarize_weight * ramp * polarization_loss(model)
            loss = task + sl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % cfg.log_every == 0 or step == total - 1:
                rec = {"model": arch, "phase": phase, "epoch": epoch, "step": step, "lr": lr, "loss": float(loss.detach()),
                       "ce": float(ce.detach()), "train_acc": float((logits.argmax(1) == y).float().mean()),
                       "elapsed_s": round(time.perf_counter() - t0, 2)}
                if kd is not None:
                    rec["distill"] = float(kd.detach())
                if sparse:
                    blk = next(b for _, b in model.sparse_blocks())
                    ds = [d for v in model.densities().values() for d in v]
                    rec.update(sparse_loss=float(sl.detach()), T=float(blk.conv1_gumbel.cur_T),
                               train_density=sum(ds) / len(ds))
                log(rec)
                progress(f"  {phase} {arch} epoch {epoch + 1}/{epochs} step {step + 1}/{total} loss {rec['loss']:.3f} "
                         f"acc {rec['train_acc']:.2f}" + (f" density {rec['train_density']:.2f} T {rec['T']:.3f}"
                                                          if sparse else ""))
            step += 1
        ev = evaluate(model, *val)
        rec = {"model": arch, "phase": phase, "epoch": epoch, "step": step, "val_accuracy": ev["accuracy"],
               "elapsed_s": round(time.perf_counter() - t0, 2)}
        if sparse:
            rec["val_mean_density"] = ev["mean_density"]
        log(rec)
        progress(f"  {phase} {arch} epoch {epoch + 1}: val acc {ev['accuracy']:.3f}"
                 + (f" mean density {ev['mean_density']:.3f}" if sparse else ""))


def flops_summary(cfg: DemoConfig, mask_stats: dict) -> dict:
    """Our kernel count (what the fused model executes) and the official-style accounting."""
    hw = (cfg.image_size, cfg.image_size)
    common = {"base_width": cfg.base_width, "head": "cls", "num_classes": len(demo_data.CLASSES)}
    k_sparse = kernel_flops("sparse_resnet18", hw, densities=mask_stats, **common)
    k_dense = kernel_flops("resnet18", hw, densities=None, **common)
    dens = {k: (v["d1"], v["d2"]) for k, v in mask_stats.items()}
    # official rule (docs/design.md 4) at its smallest resolution that keeps every stage >= 1 pixel
    res = 64
    o_sparse = official_flops(18, res, dcn_stages=(0, 0, 0, 0), densities=dens, base_width=cfg.base_width)
    o_dense = official_flops(18, res, dcn_stages=(0, 0, 0, 0), densities=None, base_width=cfg.base_width)
    return {
        "kernel": {"sparse_macs": k_sparse["total"], "dense_macs": k_dense["total"],
                   "ratio": k_sparse["total"] / k_dense["total"],
                   "sparse_by_op": k_sparse["by_op"], "dense_by_op": k_dense["by_op"],
                   "input_hw": list(hw)},
        "official": {"sparse_macs": o_sparse, "dense_macs": o_dense, "ratio": o_sparse / o_dense,
                     "res": res, "note": "docs/design.md 4 accounting (backbone only, detection-style input "
                                         "(res//32*32) x (res*5/3//32*32), masks' densities measured here)"},
    }


def train_demo(out: Optional[os.PathLike] = None, cfg: Optional[DemoConfig] = None,
               progress: Callable[[str], None] = print) -> dict:
    """Generate the data, train the sparse model and its dense twin, evaluate, write everything."""
    cfg = cfg or DemoConfig()
    cfg.validate()
    out = Path(out) if out is not None else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    log_path = out / "train_log.jsonl"
    try:
        progress(f"train-demo: generating data (seed {cfg.seed}: {cfg.train_size} train, {cfg.val_size} val, "
                 f"{cfg.test_size} test, {cfg.image_size}x{cfg.image_size})")
        t = time.perf_counter()
        train = demo_data.make_split(cfg.seed, "train", cfg.train_size, cfg.image_size)
        val = demo_data.make_split(cfg.seed, "val", cfg.val_size, cfg.image_size)
        test = demo_data.make_split(cfg.seed, "test", cfg.test_size, cfg.image_size)
        t_data = time.perf_counter() - t
        with atomic_path(log_path, flag="--out") as log_tmp, open(log_tmp, "w") as fh:
            def log(rec: dict) -> None:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()

            progress(f"train-demo: phase 1, dense resnet18 from scratch (width {cfg.base_width}, "
                     f"{cfg.steps(cfg.pretrain_epochs)} steps)")
            pre, t_pre = train_model("resnet18", cfg, train, val, log, progress, epochs=cfg.pretrain_epochs,
                                     lr=cfg.lr, phase="pretrain")
            init = {k: v.clone() for k, v in pre.state_dict().items()}
            progress("train-demo: phase 2, dense twin resnet18 from the phase-1 weights")
            dense, t_dense = train_model("resnet18", cfg, train, val, log, progress, epochs=cfg.epochs,
                                         lr=cfg.finetune_lr, phase="finetune", init=init)
            progress(f"train-demo: phase 2, sparse_resnet18 from the same weights, same schedule (target density "
                     f"{cfg.target_density}, T {cfg.max_T} -> {cfg.final_T}, {cfg.steps()} steps"
                     + (f", distilled from the dense twin (weight {cfg.distill_weight}, T {cfg.distill_T})"
                        if cfg.distill_weight > 0 else "") + ")")
            sparse, t_sparse = train_model("sparse_resnet18", cfg, train, val, log, progress, epochs=cfg.epochs,
                                           lr=cfg.finetune_lr, phase="finetune", init=init,
                                           teacher=dense if cfg.distill_weight > 0 else None)
        progress("train-demo: evaluating on the held-out test split (deterministic inference)")
        ev_s = evaluate(sparse, *test)
        ev_d = evaluate(dense, *test)
        metrics = {
            "task": "sai demo shapes (sai.models.demo_data)",
            "classes": list(demo_data.CLASSES),
            "seed": cfg.seed,
            "config": asdict(cfg) | {"decay_alpha": cfg.decay_alpha(), "finetune_steps": cfg.steps(),
                                     "pretrain_steps": cfg.steps(cfg.pretrain_epochs)},
            "recipe": ("phase 1: dense resnet18 from scratch (pretrain_epochs, AdamW, cosine); phase 2 from those "
                       "weights, same data order and schedule for both: the dense twin (plain fine-tuning), then "
                       "sparse_resnet18 (init_from_dense; Gumbel temperature max_T -> final_T, grid prior, sparse "
                       "loss whose set point falls from 1 to target_density over density_warmup, mask "
                       "polarisation, distillation from the dense twin with distill_weight at distill_T)"),
            "input": input_meta(cfg),
            "dataset": dataset_meta(cfg),
            "eval": {"split": "test", "n": ev_s["n"], "sampling": "deterministic"},
            "accuracy": {"sparse": ev_s["accuracy"], "dense": ev_d["accuracy"],
                         "gap_points": 100 * (ev_d["accuracy"] - ev_s["accuracy"])},
            "mean_density": ev_s["mean_density"],
            "densities": ev_s["mask_stats"],
            "flops": flops_summary(cfg, ev_s["mask_stats"]),
            "timings_s": {"data": round(t_data, 1), "pretrain_dense": round(t_pre, 1),
                          "finetune_sparse": round(t_sparse, 1), "finetune_dense": round(t_dense, 1), "total": None},
            "threads": cfg.threads,
            "torch_version": str(torch.__version__),
            "files": {"sparse": SPARSE_FILE, "dense": DENSE_FILE, "log": log_path.name},
        }
        metrics["acceptance"] = {"mean_density_le_0.5": metrics["mean_density"] <= 0.5,
                                 "gap_le_2_points": metrics["accuracy"]["gap_points"] <= 2.0}
        metrics["timings_s"]["total"] = round(time.perf_counter() - t_start, 1)
        common = {"classes": list(demo_data.CLASSES), "input": input_meta(cfg), "dataset": dataset_meta(cfg),
                  "demo_config": asdict(cfg)}
        save_checkpoint(sparse, out / SPARSE_FILE, **common,
                        metrics={"test_accuracy": ev_s["accuracy"], "mean_density": ev_s["mean_density"]},
                        dense_twin=DENSE_FILE)
        save_checkpoint(dense, out / DENSE_FILE, **common, metrics={"test_accuracy": ev_d["accuracy"]})
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n", flag="--out")
        progress(f"train-demo: test accuracy sparse {ev_s['accuracy']:.4f} dense {ev_d['accuracy']:.4f}, "
                 f"mean density {ev_s['mean_density']:.3f}, kernel MACs ratio "
                 f"{metrics['flops']['kernel']['ratio']:.3f}, total {metrics['timings_s']['total']:.0f} s -> {out}")
        return metrics
    finally:
        torch.set_num_threads(prev_threads)


__all__ = ["DEFAULT_OUT", "DENSE_FILE", "DemoConfig", "SPARSE_FILE", "evaluate", "train_demo"]
