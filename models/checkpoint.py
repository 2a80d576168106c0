"""Checkpoints: our format, the official SAI-Det (mmdetection v0.6) layout, dense ResNet init.

Our format (``save_checkpoint``) is a dict::

    {"format": "sai-deploy-checkpoint/1",
     "state_dict": {... model.state_dict() ...},
     "meta": {"arch": "sparse_resnet101", "options": {...build_model options...},
              "sai_version": ..., "torch_version": ..., **extra}}

The official layout (docs/design.md 4) has the backbone under ``backbone.`` and the neck under
``neck.lateral_convs.{i}.conv.*`` / ``neck.fpn_convs.{i}.conv.*``; detector heads (``rpn_head.``,
``bbox_head.``, ...) are not part of our models and are reported as ignored. Our key names are the
official ones without the ``backbone.`` prefix, so the mapping is by prefix only.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from sai.errors import SaiError
from sai.models.finite import check_finite

FORMAT = "sai-deploy-checkpoint/1"
OWN_PREFIXES = ("neck.",)
HEAD_PREFIXES = ("rpn_head.", "bbox_head.", "roi_head.", "mask_head.", "bbox_roi_extractor.", "shared_head.")
TOLERATED_MISSING = ("num_batches_tracked",)  # old checkpoints lack it; unused at inference

StateDictLike = Union[str, os.PathLike, Mapping]


@dataclass
class LoadReport:
    """What a load did. ``missing``/``unexpected``/``mismatched`` are empty after a strict load."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint [..] vs model [..]"
    ignored: list[str] = field(default_factory=list)  # detector-head keys of official files
    meta: dict = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"layout {self.layout}: {len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "mismatched", "ignored"):
            vals = getattr(self, name)
            if vals:
                parts.append(f"{len(vals)} {name}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------


class LoadedCheckpoint(dict):
    """A checkpoint file read once (``read_checkpoint_file``): ``{"state_dict", "meta"}`` plus the file's
    ``path`` and ``sha256``. Every function that takes a checkpoint takes it instead of the path, so a
    pipeline (``sai convert``: layout, export, manifest) reads the file one time."""

    def __init__(self, path: Path, sha256: str, state_dict: dict, meta: dict):
        super().__init__(state_dict=state_dict, meta=meta)
        self.path = path
        self.sha256 = sha256

    def __str__(self) -> str:  # messages name the file, as for a path
        return str(self.path)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise SaiError(f"checkpoint {path} is a directory; give the checkpoint file (.pth/.pt) inside it")
    if not path.is_file():
        raise SaiError(f"checkpoint {path} does not exist (give the path of a .pth/.pt file)")


def load_file(source, *, weights_only: bool = True, mmap: bool = False):
    """``torch.load`` of a checkpoint (a path or a binary file object) on the CPU: the one place sai
    unpickles one."""
    with warnings.catch_warnings():  # torch warns about plain pickles before failing on them
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(source, map_location="cpu", weights_only=weights_only, mmap=mmap)


def _load(path: Path, weights_only: bool, data: Optional[bytes] = None):
    import io

    try:
        return load_file(io.BytesIO(data) if data is not None else path, weights_only=weights_only)
    except Exception as exc:  # pickle errors of every kind, truncated archives, I/O errors
        raise SaiError(unreadable_reason(path, exc, weights_only)) from None


def read_checkpoint_file(path: Union[str, os.PathLike], weights_only: bool = True) -> LoadedCheckpoint:
    """Read the file at ``path`` once: its sha256 and its tensors and meta from the same bytes."""
    import hashlib

    path = Path(path)
    _check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SaiError(unreadable_reason(path, exc, weights_only)) from None
    digest = hashlib.sha256(data).hexdigest()
    sd, meta = read_checkpoint(_load(path, weights_only, data), weights_only=weights_only, source=path)
    return LoadedCheckpoint(path, digest, sd, meta)


def read_checkpoint(path_or_state_dict: StateDictLike, weights_only: bool = True,
                    source: Optional[Path] = None) -> tuple[dict, dict]:
    """Return ``(state_dict, meta)`` from a file path, a checkpoint dict (``LoadedCheckpoint`` included) or a
    bare state dict. ``source``: the file a given dict was read from (for messages)."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict)
        _check_file(path)
        obj = _load(path, weights_only)
        source = path
    else:
        obj = path_or_state_dict
    if not isinstance(obj, Mapping):
        where = f"checkpoint {source} holds" if source is not None else "got"
        raise SaiError(f"a checkpoint must be a dict (with 'state_dict') or a state dict; {where} a "
                       f"{type(obj).__name__}")
    meta = dict(obj.get("meta") or {}) if isinstance(obj.get("meta", None), Mapping) else {}
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    else:
        sd = obj
    sd = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not sd:
        raise SaiError("the checkpoint holds no tensors (expected a dict with a 'state_dict' of tensors)")
    return sd, meta


def describe_source(checkpoint) -> str:
    """How messages name a checkpoint: its file (a path or a ``LoadedCheckpoint``), else "the given state dict"."""
    if isinstance(checkpoint, LoadedCheckpoint):
        return str(checkpoint.path)
    return "the given state dict" if isinstance(checkpoint, Mapping) else str(checkpoint)


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, short and whole (torch's weights-only text is replaced)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.startswith("Weights only load failed"):
        text = "the weights-only unpickler refused it"
    elif len(text) > 160:
        text = text[:160].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}"


def unreadable_reason(path: Path, exc: BaseException, weights_only: bool = True) -> str:
    """Why ``torch.load`` failed on ``path``, from the file itself: empty, not a torch file, a truncated or
    corrupt zip archive, non-tensor objects (refused for safety). One sentence with what to do."""
    import pickle
    import zipfile

    again = "copy or download it again, or re-save it with sai's save_checkpoint / torch.save"
    if isinstance(exc, OSError):
        return f"cannot read checkpoint {path}: {exc.strerror or _first_line(exc)}; check the file and its permissions"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"cannot read checkpoint {path}: {err.strerror or _first_line(err)}"
    if size == 0:
        return f"checkpoint {path} is empty (0 bytes): the save or the download did not finish; {again}"
    if head.startswith(b"PK"):  # torch.save's zip archive
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return (f"checkpoint {path} is a truncated or corrupt zip archive ({size} bytes; its end or its "
                    f"directory is missing or damaged); {again}")
        if bad is not None:
            return f"checkpoint {path} is corrupt: its member {bad} fails the CRC check; {again}"
        if weights_only and isinstance(exc, pickle.UnpicklingError):
            return (f"checkpoint {path} holds Python objects besides tensors (e.g. a whole pickled model or an "
                    "optimizer), which sai does not unpickle since that can run arbitrary code; save only the "
                    "weights: torch.save({'state_dict': model.state_dict()}, path)")
        return f"cannot read checkpoint {path} ({_first_line(exc)}); {again}"
    if head[:1] == b"\x80":  # a pickle stream: torch's legacy (< 1.6) format or a plain pickle
        return (f"checkpoint {path} is a legacy (pre-zip) torch file or a plain pickle that cannot be read as "
                f"tensors ({_first_line(exc)}); it may be truncated or hold non-tensor objects: re-save it with "
                "torch.save({'state_dict': model.state_dict()}, path) using a current torch")
    return (f"{path} is not a torch checkpoint (it starts with {head!r}; torch.save writes a zip archive "
            "starting with b'PK'); give the .pth/.pt file")


def check_bn_variances(sd: Mapping[str, Tensor], source: str = "the checkpoint") -> None:
    """SaiError naming the first BatchNorm ``running_var`` tensors with negative values: a variance is never
    negative, and folding one into its conv (``fuse_for_inference``) gives NaN weights."""
    bad = []
    for k, v in sd.items():
        if k.endswith("running_var") and isinstance(v, Tensor) and v.is_floating_point() and v.numel():
            neg = v < 0
            if bool(neg.any()):
                c = int(torch.nonzero(neg.flatten())[0])
                bad.append(f"{k} ({int(neg.sum())} of {v.numel()} negative, e.g. channel {c}: "
                           f"{float(v.flatten()[c]):.6g})")
                if len(bad) == 3:
                    break
    if bad:
        raise SaiError(f"{source} holds invalid BatchNorm statistics: {'; '.join(bad)}{' ...' if len(bad) == 3 else ''}"
                       "; a variance is never negative, so the file is damaged or was edited: use an earlier "
                       "checkpoint or recompute the statistics")


def _strip_module(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def to_model_keys(sd: Mapping[str, Tensor]) -> tuple[str, dict[str, Tensor], list[str]]:
    """Map a state dict onto our key names. Returns ``(layout, mapped, ignored_keys)``.

    Layouts: ``"official"`` (``backbone.`` prefix, mmdet v0.6), ``"sai"`` (ours / torchvision names).
    """
    sd = _strip_module(sd)
    if any(k.startswith("backbone.") for k in sd):
        mapped, ignored = {}, []
        for k, v in sd.items():
            if k.startswith("backbone."):
                mapped[k[len("backbone."):]] = v
            elif k.startswith(OWN_PREFIXES):
                mapped[k] = v
            elif k.startswith(HEAD_PREFIXES):
                ignored.append(k)
            else:
                mapped[k] = v  # reported as unexpected
        return "official", mapped, ignored
    return "sai", sd, []


# ----------------------------------------------------------------------------------------------
# layout detection
# ----------------------------------------------------------------------------------------------


def detect_layout(path_or_state_dict: StateDictLike) -> dict:
    """Infer what a checkpoint holds: ``{"layout", "arch", "options", "stage_blocks"}``.

    ``options`` are ``build_model`` options the weights decide: ``dcn_stages`` (from which stages
    have ``conv2_offset`` keys), ``head`` (``fpn`` from ``neck.*``, ``cls`` from ``fc.*``, else
    ``none``), ``num_classes``, ``base_width`` and ``fpn_out_channels``. Our own checkpoints return
    their recorded arch/options (checked against the weights).
    """
    from sai.models.network import DEPTHS

    sd, meta = read_checkpoint(path_or_state_dict)
    layout, sd, _ = to_model_keys(sd)
    if "conv1.weight" not in sd:
        raise SaiError("not a ResNet checkpoint: no conv1.weight (or backbone.conv1.weight) key")
    counts = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    depth = next((d for d, (kk, c) in DEPTHS.items() if kk == kind and tuple(c) == tuple(counts)), None)
    if depth is None:
        raise SaiError(f"unknown ResNet depth: {kind} blocks per stage {tuple(counts)}; supported depths "
                       f"{sorted(DEPTHS)}")
    sparse = any(k.endswith("conv1_mask.weight") for k in sd)
    options: dict[str, Any] = {}
    options["base_width"] = int(sd["conv1.weight"].shape[0])
    options["dcn_stages"] = tuple(
        any(re.match(rf"layer{i}\.\d+\.conv2_offset\.weight$", k) for k in sd) for i in range(1, 5)
    )
    if not sparse and any(options["dcn_stages"]):
        fits = {_offset_source(sd, k) for k in sd if k.endswith(".conv2_offset.weight")} - {None}
        if len(fits) > 1:
            raise SaiError("the checkpoint's DCN offset convs disagree on their input (some read the block "
                           "input, some conv1's output); cannot build one model for it")
        options["dcn_offset_from"] = fits.pop() if fits else "input"
    if "neck.lateral_convs.0.conv.weight" in sd:
        options["head"] = "fpn"
        options["fpn_out_channels"] = int(sd["neck.lateral_convs.0.conv.weight"].shape[0])
    elif "fc.weight" in sd:
        options["head"] = "cls"
        options["num_classes"] = int(sd["fc.weight"].shape[0])
    else:
        options["head"] = "none"
    arch = f"{'sparse_' if sparse else ''}resnet{depth}"
    if meta.get("arch") and meta.get("format") == FORMAT and isinstance(meta.get("options"), Mapping):
        if meta["arch"] != arch:
            raise SaiError(f"checkpoint meta says arch {meta['arch']} but its weights are {arch}")
        merged = dict(meta["options"])
        merged.update(options)
        options = merged
    return {"layout": layout, "arch": arch, "options": options, "stage_blocks": tuple(counts), "meta": meta}


def _offset_source(sd: Mapping[str, Tensor], offset_key: str) -> Optional[str]:
    """``dcn_offset_from`` that fits a ``layerI.J.conv2_offset.weight`` of ``sd``: ``"input"`` when its
    in-channels are the block's input channels (SAI-Det), ``"conv1"`` when they are conv1's output
    channels (upstream mmdetection), None when both agree (the shapes cannot tell)."""
    blk = offset_key[: -len(".conv2_offset.weight")]
    w, c1 = sd.get(offset_key), sd.get(blk + ".conv1.weight")
    if w is None or c1 is None or w.dim() != 4 or c1.dim() != 4:
        return None
    cin, inplanes, planes = w.shape[1], c1.shape[1], c1.shape[0]
    if inplanes == planes:
        return None
    return "input" if cin == inplanes else "conv1" if cin == planes else None


def _offset_hint(model: nn.Module, sd: Mapping[str, Tensor], report: LoadReport) -> str:
    """Name ``dcn_offset_from`` and the value that fits when conv2_offset shapes are what mismatch."""
    keys = [m.split(":")[0] for m in report.mismatched if m.split(":")[0].endswith(".conv2_offset.weight")]
    fits = {_offset_source(sd, k) for k in keys} - {None}
    if len(fits) != 1:
        return ""
    fit = fits.pop()
    have = getattr(model, "options", {}).get("dcn_offset_from")
    if fit == have:
        return ""
    where = "the block input (SAI-Det)" if fit == "input" else "conv1's output (upstream mmdetection)"
    if getattr(model, "is_sparse", False) and fit == "conv1":
        return (f"{len(keys)} conv2_offset conv(s) of the checkpoint read {where}; sparse models read the block "
                "input only (dcn_offset_from='input'), so this is a dense checkpoint: build a resnet* arch with "
                "dcn_offset_from='conv1'. ")
    return (f"{len(keys)} conv2_offset conv(s) of the checkpoint read {where}, but the model was built with "
            f"dcn_offset_from={have!r}: build it with dcn_offset_from={fit!r} (or use model_from_checkpoint). ")


# ----------------------------------------------------------------------------------------------
# loading / saving
# ----------------------------------------------------------------------------------------------


def _describe(report: LoadReport, limit: Optional[int] = None) -> str:
    lines = []
    for name, fix in (("missing", "the checkpoint lacks them"), ("unexpected", "the model has no such keys"),
                      ("mismatched", "shapes differ")):
        vals = getattr(report, name)
        if vals:
            shown = vals if limit is None else vals[:limit]
            lines.append(f"{len(vals)} {name} key(s) ({fix}): " + ", ".join(shown))
    return "; ".join(lines)


def load_checkpoint(model: nn.Module, path_or_state_dict: StateDictLike, strict: bool = True,
                    weights_only: bool = True, *, check_stats: bool = True) -> LoadReport:
    """Load our checkpoints or the official SAI-Det layout into ``model`` (strict by default).

    A strict load raises SaiError naming every missing key, unexpected key and shape mismatch
    (with both shapes). ``strict=False`` loads what matches and returns the report. Weights holding NaN or
    inf are refused, and so are negative BatchNorm variances unless ``check_stats`` is False
    (``init_from_dense``: training re-estimates them).
    """
    if getattr(model, "fused", False):
        raise SaiError("load checkpoints into the unfused model, then call fuse_for_inference")
    sd, meta = read_checkpoint(path_or_state_dict, weights_only=weights_only)
    source = ("the given state dict" if type(path_or_state_dict) is not LoadedCheckpoint
              and isinstance(path_or_state_dict, Mapping) else f"checkpoint {describe_source(path_or_state_dict)}")
    check_finite(sd, source)
    if check_stats:
        check_bn_variances(sd, source)
    layout, sd, ignored = to_model_keys(sd)
    if meta.get("format") == FORMAT:
        layout = "sai"
        if meta.get("arch") and meta["arch"] != getattr(model, "arch", meta["arch"]) and strict:
            raise SaiError(f"checkpoint is for {meta['arch']} but the model is {model.arch}; build the model "
                           f"with build_model({meta['arch']!r}, **meta['options']) or use model_from_checkpoint")
    own = model.state_dict()
    report = LoadReport(layout=layout, ignored=ignored, meta=meta)
    usable = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append(f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}")
        else:
            usable[k] = v
    report.missing = [k for k in own if k not in sd and not k.endswith(TOLERATED_MISSING)]
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise SaiError(
            f"checkpoint does not match {getattr(model, 'arch', type(model).__name__)} "
            f"({layout} layout): {_offset_hint(model, sd, report)}{_describe(report)}. Build the model with "
            "the checkpoint's options (sai.models.detect_layout) or load with strict=False"
        )
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


def init_from_dense(model: nn.Module, path_or_state_dict: StateDictLike, weights_only: bool = True) -> LoadReport:
    """Initialise a (sparse) model from a dense ResNet state dict (torchvision or mmdet names) for
    fine-tuning: every key present with the same shape is loaded; the rest keep their init.

    ``report.missing`` lists what was not loaded (mask predictors, sigmas, temperatures, DCN
    offsets, a head of another size...), ``report.unexpected``/``mismatched`` what was skipped.
    """
    sd, meta = read_checkpoint(path_or_state_dict, weights_only=weights_only)
    layout, sd, ignored = to_model_keys(sd)
    report = load_checkpoint(model, sd, strict=False, check_stats=False)
    report.layout = "dense-init:" + layout
    report.ignored = ignored
    report.meta = meta
    if not report.loaded:
        raise SaiError("no tensor of the dense state dict matches the model (not a ResNet state dict, or a "
                       "different depth/width?)")
    return report


def save_checkpoint(model: nn.Module, path: Union[str, os.PathLike], **extra_meta) -> Path:
    """Write ``model`` in our format (to a temporary name, then renamed)."""
    if getattr(model, "fused", False):
        raise SaiError("save the unfused model (fused models are for export/inference only)")
    from sai import __version__

    options = dict(getattr(model, "options", {}))
    if "dcn_stages" in options:
        options["dcn_stages"] = tuple(bool(v) for v in options["dcn_stages"])
    meta = {"format": FORMAT, "arch": getattr(model, "arch", None), "options": options,
            "sai_version": __version__, "torch_version": str(torch.__version__)}
    meta.update(extra_meta)
    obj = {"format": FORMAT, "state_dict": model.state_dict(), "meta": meta}
    from sai.outputs import atomic_path, os_error_message

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaiError(os_error_message(exc, path.parent, "cannot create the folder")) from None
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def model_from_checkpoint(path_or_state_dict: StateDictLike, strict: bool = True, **overrides):
    """Build the model a checkpoint describes (``detect_layout``) and load it. Returns
    ``(model, report)``. ``overrides`` are extra ``build_model`` options (e.g. ``sampling``)."""
    from sai.models.network import build_model

    sd, meta = read_checkpoint(path_or_state_dict)
    info = detect_layout({"state_dict": sd, "meta": meta})
    options = dict(info["options"])
    clash = {k for k in overrides if k in ("dcn_stages", "head", "num_classes", "base_width", "fpn_out_channels")
             and k in options and overrides[k] != options[k]}
    if clash and strict:
        raise SaiError(f"option(s) {', '.join(sorted(clash))} are fixed by the checkpoint's weights: "
                       f"{ {k: options[k] for k in sorted(clash)} }")
    options.update(overrides)
    model = build_model(info["arch"], **options)
    report = load_checkpoint(model, {"state_dict": sd, "meta": meta}, strict=strict)
    return model, report
