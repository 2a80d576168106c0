"""Checkpoint handling for export: read a state dict, infer build options from it, load strictly.

Uses ``sai.models.load_checkpoint`` when the models package provides it; otherwise a strict
``load_state_dict`` over the checkpoint with the official ``backbone.`` prefix removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sai.errors import SaiError

_DCN_KEY = re.compile(r"^layer(\d)\.\d+\.conv2_offset\.weight$")


def _describe(src) -> str:
    return str(src) if not isinstance(src, Mapping) else "the given state dict"


def load_state_dict(src) -> dict:
    """A checkpoint path or mapping -> a flat state dict (``state_dict`` unwrapped)."""
    import torch

    if isinstance(src, Mapping):
        state = dict(src)
    else:
        try:
            state = torch.load(str(src), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise SaiError(f"checkpoint {src} does not exist; check the --checkpoint path") from None
        except Exception as exc:
            raise SaiError(f"cannot read checkpoint {src}: {str(exc).splitlines()[0]}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = dict(state["state_dict"])
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise SaiError(f"checkpoint {_describe(src)} holds no state dict (a mapping of parameter names)")
    return dict(state)


def _model_keys(state: Mapping[str, Any]) -> dict:
    """Key names as the model spells them: official ``backbone.`` prefix removed."""
    out = {}
    for k, v in state.items():
        out[k[len("backbone."):] if k.startswith("backbone.") else k] = v
    return out


def infer_options(arch: str, state: Mapping[str, Any]) -> dict:
    """Build options a checkpoint decides: ``dcn_stages``, ``head``, ``num_classes``, ``base_width``."""
    keys = _model_keys(state)
    stages = [False] * 4
    for k in keys:
        m = _DCN_KEY.match(k)
        if m:
            stages[int(m.group(1)) - 1] = True
    opts: dict[str, Any] = {"dcn_stages": tuple(stages)}
    if "fc.weight" in keys:
        opts["head"] = "cls"
        opts["num_classes"] = int(keys["fc.weight"].shape[0])
    elif any(k.startswith("neck.") for k in keys):
        opts["head"] = "fpn"
    else:
        opts["head"] = "none"
    if "conv1.weight" in keys:
        opts["base_width"] = int(keys["conv1.weight"].shape[0])
    return opts


def check_flags(src, inferred: Mapping[str, Any], explicit: Mapping[str, Any]) -> None:
    """SaiError when an explicit flag contradicts what the checkpoint decides."""
    for key, value in explicit.items():
        if value is None or key not in inferred:
            continue
        have = inferred[key]
        if key == "dcn_stages":
            from sai.models.network import _parse_stages

            value = _parse_stages(value)
            shown = ",".join(str(int(v)) for v in have)
        else:
            shown = str(have)
        if key == "num_classes" and inferred.get("head") != "cls":
            raise SaiError(f"--num-classes {value} given but checkpoint {_describe(src)} has no classifier "
                           f"(head {inferred.get('head')}); drop --num-classes")
        if value != have:
            flag = "--" + key.replace("_", "-")
            raise SaiError(f"{flag} {value} contradicts checkpoint {_describe(src)} which has {key} = {shown}; "
                           f"drop {flag} (the checkpoint decides it)")


def load_into(model, state: Mapping[str, Any], src) -> None:
    """Load strictly; SaiError naming missing / unexpected / mis-shaped keys."""
    from sai import models

    loader = getattr(models, "load_checkpoint", None)
    if loader is not None:
        try:
            loader(model, dict(state), strict=True)
            return
        except SaiError as exc:
            raise SaiError(f"checkpoint {_describe(src)} does not fit {getattr(model, 'arch', 'the model')}: "
                           f"{exc}") from exc
        except RuntimeError as exc:
            raise SaiError(f"checkpoint {_describe(src)} does not fit {getattr(model, 'arch', 'the model')}: "
                           f"{str(exc).strip()}") from exc
    keys = _model_keys(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(keys))
    unexpected = sorted(set(keys) - set(own))
    bad = sorted(k for k in set(own) & set(keys) if tuple(own[k].shape) != tuple(keys[k].shape))
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
        if bad:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(keys[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:10]))
        raise SaiError(f"checkpoint {_describe(src)} does not fit {getattr(model, 'arch', 'the model')} "
                       f"({'; '.join(parts)}); check --arch and the checkpoint")
    model.load_state_dict(keys, strict=True)
