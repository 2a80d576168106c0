"""Tile configurations as data: ``configs/<arch>.json``, written by ``sai.kernels.gpu_check`` (its autotune section).

A file maps a kernel name to a list of entries ``{"match": {...}, "config": {...}}``; the first entry
whose ``match`` fields all equal the call's features wins (an empty match is the default). Lookup
order: ``sm_<cc>.json`` of the device, then ``default.json``; under the interpreter
``interpreter.json`` (large tiles, few programs: the interpreter's cost is per program).
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


def lookup(kernel: str, arch: str, **features) -> dict:
    """The tile config of ``kernel`` for ``arch`` and the call's ``features`` (dtype, k, ...)."""
    for name in (arch, "default"):
        for entry in _load(name).get(kernel, []):
            if all(features.get(k) == v for k, v in entry.get("match", {}).items()):
                return dict(entry["config"])
    raise KeyError(f"no tile config for {kernel} in configs/{arch}.json or configs/default.json")


def reload() -> None:
    _load.cache_clear()
