"""The dense twin of a sparse model: the plain ResNet of the same depth, width, head and DCN stages with
the sparse model's weights (the mask predictors, sigmas and temperatures have no dense counterpart and
are dropped). One builder for ``sai bench --compare-dense``, the exporter's dense arch from a sparse
checkpoint and the op benchmarks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from sai.errors import SaiError

# build_model options the weights decide and the dense twin shares
SHARED_OPTIONS = ("base_width", "head", "num_classes", "dcn_stages", "fpn_out_channels", "dcn_offset_from")
_SPARSE_ONLY = ("_mask.", "_sigma", "_gumbel.")
_HEAD_PREFIXES = {"cls": ("fc.",), "fpn": ("neck.",), "none": ()}


def dense_arch(arch: str) -> str:
    """``resnetN`` for ``sparse_resnetN`` (a dense arch stays itself)."""
    return arch[len("sparse_"):] if arch.startswith("sparse_") else arch


def is_sparse_only(key: str) -> bool:
    """Whether a state-dict key belongs to the sampling machinery (mask predictor, sigma, temperature)."""
    return any(s in key for s in _SPARSE_ONLY)


def dense_options(arch: str, options: Mapping[str, Any]) -> dict:
    """The ``build_model`` options of the dense twin of ``arch`` built with ``options``."""
    opts = {k: v for k, v in options.items() if k in SHARED_OPTIONS}
    if arch.startswith("sparse_"):
        opts["dcn_offset_from"] = "input"  # the sparse blocks predict the DCN offsets from the block input
    return opts


def load_dense_weights(model: nn.Module, checkpoint, what: str, *, dropped_head: str = "") -> None:
    """Load a (sparse or dense) checkpoint into the dense ``model``: every dense weight must be there with its
    shape; the checkpoint may hold only the sparse-only keys besides (and those of ``dropped_head``)."""
    from sai.models.checkpoint import load_checkpoint

    arch = getattr(model, "arch", type(model).__name__)
    report = load_checkpoint(model, checkpoint, strict=False)
    if report.missing or report.mismatched:
        raise SaiError(f"{what} does not fit {arch}: missing {report.missing[:10]}, mismatched "
                       f"{report.mismatched[:10]}")
    head = _HEAD_PREFIXES.get(dropped_head, ())
    extra = [k for k in report.unexpected if not is_sparse_only(k) and not (head and k.startswith(head))]
    if extra:
        raise SaiError(f"{what} does not fit {arch}: unexpected keys {extra[:10]}")


def dense_twin(source, **overrides) -> nn.Module:
    """The dense twin (eval mode) of ``source``: a sparse ``SaiResNet`` or a checkpoint (a path, a checkpoint
    dict or a ``LoadedCheckpoint``). ``overrides`` are other ``build_model`` options (e.g. ``head="none"``:
    the head's weights are then left out)."""
    from sai.models.checkpoint import describe_source, detect_layout, read_checkpoint
    from sai.models.network import build_model

    if isinstance(source, nn.Module):
        arch = str(getattr(source, "arch", ""))
        if not arch:
            raise SaiError(f"the dense twin needs a SaiResNet, got {type(source).__name__}")
        options, weights, what = dict(getattr(source, "options", {})), source.state_dict(), f"the {arch} model"
    else:
        sd, meta = read_checkpoint(source)
        weights = {"state_dict": sd, "meta": meta}
        info = detect_layout(weights)
        arch, options, what = info["arch"], info["options"], f"checkpoint {describe_source(source)}"
    opts = dense_options(arch, options)
    opts.update(overrides)
    model = build_model(dense_arch(arch), **opts)
    dropped = options.get("head", "cls") if opts.get("head", options.get("head")) != options.get("head") else ""
    load_dense_weights(model, weights, what, dropped_head=dropped)
    return model.eval()
