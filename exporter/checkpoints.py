"""Checkpoints for export: the checkpoint decides what it can, flags that contradict it are errors.

Thin layer over ``sai.models.checkpoint`` (``detect_layout``, ``load_checkpoint``). One addition:
a dense ``resnet*`` arch accepts a sparse checkpoint of the same depth and takes its shared weights
(the dense baseline with the same weights; mask predictors and sigmas are left out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sai.errors import SaiError


def _describe(src) -> str:
    from sai.models.checkpoint import describe_source

    return describe_source(src)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def resolve_options(arch: str, checkpoint, explicit: Mapping[str, Any]) -> tuple[dict, dict]:
    """Build options for ``arch`` from ``checkpoint`` plus the non-None ``explicit`` flags.

    Returns ``(options, layout info)``. SaiError when the checkpoint is for another architecture
    or an explicit flag contradicts what its weights decide.
    """
    from sai.models.checkpoint import detect_layout
    from sai.models.network import _parse_stages

    info = detect_layout(checkpoint)
    ck_arch = info["arch"]
    dense_from_sparse = ck_arch == f"sparse_{arch}"
    if ck_arch != arch and not dense_from_sparse:
        raise SaiError(f"checkpoint {_describe(checkpoint)} holds a {ck_arch} but --arch is {arch}; "
                       f"pass --arch {ck_arch} (or omit --arch)")
    options = dict(info["options"])
    for key, value in explicit.items():
        if value is None:
            continue
        if key == "num_classes" and options.get("head") != "cls":
            raise SaiError(f"{_flag(key)} {value} given but checkpoint {_describe(checkpoint)} has no classifier "
                           f"(its head is {options.get('head')}); drop {_flag(key)}")
        if key in options:
            have = options[key]
            want = _parse_stages(value) if key == "dcn_stages" else value
            if key == "dcn_stages":
                have = tuple(bool(v) for v in have)
            if want != have:
                shown = ",".join(str(int(v)) for v in have) if key == "dcn_stages" else have
                raise SaiError(f"{_flag(key)} {value} contradicts checkpoint {_describe(checkpoint)}, whose "
                               f"weights have {key} = {shown}; drop {_flag(key)} (the checkpoint decides it)")
        options[key] = value
    if dense_from_sparse:
        from sai.models.twin import dense_options

        options = dense_options(ck_arch, options) | {k: v for k, v in explicit.items() if v is not None}
    return options, info


def load_into(model, checkpoint) -> None:
    """Strict load; for a dense model from a sparse checkpoint every dense weight must be present."""
    from sai.models.checkpoint import load_checkpoint
    from sai.models.twin import load_dense_weights

    if getattr(model, "is_sparse", True):
        load_checkpoint(model, checkpoint, strict=True)
        return
    load_dense_weights(model, checkpoint, f"checkpoint {_describe(checkpoint)}")
