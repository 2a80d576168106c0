"""Tile configurations as data: ``configs/<arch>.json``, written by ``sai.benchmarks.gpu_check`` (its autotune section).

A file maps a kernel name to a list of entries ``{"match": {...}, "config": {...}}``; the first entry
whose ``match`` fields all hold for the call's features wins (an empty match is the default). A field
``X`` must equal the feature ``X``; ``X_max`` / ``X_min`` bound a numeric feature ``X`` (inclusive),
and an entry with a field whose feature the call does not give never matches. Lookup order:
``sm_<cc>.json`` of the device, then ``default.json``; under the interpreter ``interpreter.json``
(large tiles, few programs: the interpreter's cost is per program).

The conv's features: ``dtype``, ``k`` (kernel height), ``deform``, ``build`` ("fast": NHWC, 16-divisible
channels; "any": every layout), and at run time ``P`` (the rows the grid covers, N*Ho*Wo: the active count
is on the device, so the host picks by P) and ``cout`` (output channels per group). Every caller of the
conv kernel (the per-op conv, the fused block) takes its tiles from ``conv_config``, the one chooser: it
picks among the tile classes the ahead-of-time builds carry (``CONV_TACTICS``, one AOT tactic each), so a
tile chosen at run time always has a cubin in ``make kernels`` (tests/test_cuda_static.py checks it).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

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


# ----------------------------------------------------------------------------------------------
# the conv's tiles
# ----------------------------------------------------------------------------------------------

# The fast conv builds' tile classes (fp16/bf16, not deformable), one ahead-of-time tactic each (kernels/aot.py;
# ids are stable: TensorRT engines store them). Tactic 1 is the arch's plain ``{"build": "fast"}`` entry, the
# others the arch's ``{"build": "fast", "tile": name}`` entry (tactic 2 the same 64x64x32 on every arch; listed before
# the plain one; where the arch's table has none, e.g. sm_75's FMA-only one, the lookup falls through to
# tactic 1's config: every arch builds every tactic).
CONV_TACTICS = {1: "tuned", 2: "tile64x64x32", 3: "tile64x128", 4: "tile128x64", 5: "tile128x256"}
# the grid-fill target of conv_config: CTAs per SM at the grid's full P (the active rows are a fraction of
# P, so one wave at P would leave SMs idle at lower density); H100 SXM's 132 SMs where no device says
FILL_CTAS_PER_SM = 2
DEFAULT_SMS = 132


def conv_tactics(arch: str, **features) -> dict[int, dict]:
    """Tactic id -> tile config of the conv build with ``features`` (dtype, k, deform, build) on ``arch``:
    every tile class for a fast fp16/bf16 build (kernels/aot.py builds each), only tactic 1 otherwise (fp32,
    deformable, "any")."""
    base = lookup("sparse_sample_conv", arch, **features)
    fast = features.get("build") == "fast" and features.get("dtype") != "float32" and not features.get("deform")
    if not fast:
        return {1: base}
    out = {1: base}
    for tactic, name in CONV_TACTICS.items():
        if tactic != 1:
            out[tactic] = lookup("sparse_sample_conv", arch, **features, tile=name)
    return out


def conv_config(arch: str, *, dtype: str, k: int, deform: bool, P: int, cout: int, build: str = "fast",
                sms: Optional[int] = None, **extra) -> dict:
    """The conv's tile config (``BM``, ``BN``, ``BK``, ``num_warps``, ``num_stages``, and the AOT ``tactic``) for
    ``P`` rows (N*Ho*Wo) and ``cout`` output channels per group: the one chooser of the per-op conv and the fused
    block. Among the build's tactics (``conv_tactics``): the largest tile (BM*BN, then BN) no wider than the
    channels need whose grid has at least ``FILL_CTAS_PER_SM`` CTAs per SM (``sms``: the device's count, else
    H100's 132); if none fills the SMs, the one with the most CTAs (small P: 64-row tiles). An entry with the
    run-time features (``P_max``, ``cout_min``: gpu_check --autotune writes those) overrides the choice where
    its tile is one of the tactics'.
    ``extra``: further match features (the interpreter's table has larger tiles for ``fused_block``)."""
    feats = {"dtype": dtype, "k": k, "deform": deform, "build": build, **extra}
    tactics = conv_tactics(arch, **feats)
    if len(tactics) == 1 or arch == "interpreter":
        return {**tactics[1], "tactic": 1}
    tuned = lookup("sparse_sample_conv", arch, **feats, P=P, cout=cout)
    if tuned != tactics[1]:  # a run-time entry (by P / cout) matched before the build's own entry
        hit = [t for t, c in tactics.items() if c == tuned]
        if hit:
            return {**tuned, "tactic": hit[0]}
    need_bn = max(64, 1 << max(0, (cout - 1).bit_length()))  # no tile wider than the channels need
    target = FILL_CTAS_PER_SM * (sms or DEFAULT_SMS)

    def ctas(c: dict) -> int:
        return -(-P // c["BM"]) * -(-cout // c["BN"])

    fits = [t for t, c in tactics.items() if c["BN"] <= need_bn] or list(tactics)
    full = [t for t in fits if ctas(tactics[t]) >= target]
    if full:
        best = max(full, key=lambda t: (tactics[t]["BM"] * tactics[t]["BN"], tactics[t]["BN"], -t))
    else:
        best = max(fits, key=lambda t: (ctas(tactics[t]), tactics[t]["BM"] * tactics[t]["BN"], -t))
    return {**tactics[best], "tactic": best}
