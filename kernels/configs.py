"""Tile configurations as data: ``configs/<arch>.json``, written by ``sai.benchmarks.gpu_check`` (its autotune section).

A file maps a kernel name to a list of entries ``{"match": {...}, "config": {...}}``; the first entry
whose ``match`` fields all hold for the call's features wins (an empty match is the default). A field
``X`` must equal the feature ``X``; ``X_max`` / ``X_min`` bound a numeric feature ``X`` (inclusive),
and an entry with a field whose feature the call does not give never matches. Lookup order:
``sm_<cc>.json`` of the device, then ``default.json``; under the interpreter ``interpreter.json``
(large tiles, few programs: the interpreter's cost is per program).

The conv's features: ``dtype``, ``k`` (kernel height), ``deform``; at run time also ``P`` (the rows
the grid covers, N*Ho*Wo: the active count is on the device, so the host picks by P) and ``cout``
(output channels per group); the ahead-of-time builds give ``build`` ("fast" or "any") instead,
since they serve every P (TensorRT times their tactics).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent / "configs"


@functools.cache
def _load(name: str) -> dict:
    path = HERE / f"{name}.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def arch_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "interpreter"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def matches(match: dict, features: dict) -> bool:
    """Whether an entry's ``match`` holds for ``features`` (equality; ``_max`` / ``_min`` bounds)."""
    for key, want in match.items():
        for suffix, ok in (("_max", lambda v, w: v <= w), ("_min", lambda v, w: v >= w)):
            if key.endswith(suffix) and key[: -len(suffix)] not in match:
                have = features.get(key[: -len(suffix)])
                if have is None or isinstance(have, bool) or not ok(have, want):
                    return False
                break
        else:
            if key not in features or features[key] != want:
                return False
    return True


def lookup(kernel: str, arch: str, **features) -> dict:
    """The tile config of ``kernel`` for ``arch`` and the call's ``features`` (dtype, k, P, ...)."""
    for name in (arch, "default"):
        for entry in _load(name).get(kernel, []):
            if matches(entry.get("match", {}), features):
                return dict(entry["config"])
    raise KeyError(f"no tile config for {kernel} in configs/{arch}.json or configs/default.json")


def reload() -> None:
    _load.cache_clear()
