"""FLOPs (multiply-accumulates): the official SAI accounting and our count of what our kernels execute.

``official_flops`` is docs/design.md section 4 exactly (the paper's "GFlops": backbone MACs at
``h = (res // 32) * 32``, ``w = (res * 5/3 // 32) * 32``, ``cost(k, cin, cout, s) = k*k*cin*cout*(h//s)*(w//s)``).
The official calculator (``mmdet/utils/flops.py`` of SAI-Det) switches to a square ``res x res``
classification input at ``res == 224``; ``input="auto"`` follows that rule, ``"detection"`` /
``"classification"`` pick one explicitly (``official_input_size``).

``kernel_flops`` counts what the fused model (``fuse_for_inference``) runs for an input H x W:

- stem 7x7 conv and downsample 1x1 convs: dense (maxpool/ReLU/adds are not MACs);
- mask predictors (3x3, cin -> 1): dense at their resolution;
- every SparseSampleConv at its mask's density ``d`` (fraction of positions with M > 0): conv1 at d1,
  conv2 and conv3 at d2 (the conv3 reorder), the DCN offset conv at d2 (it is a SparseSampleConv
  at m2 in the fused model) plus the deformable conv's bilinear sampling (4 MACs per input channel
  per tap) at d2;
- every Interpolate only where ``M < 1`` (fraction ``u``; ``u = 1 - d`` for a hard mask): a 7x7
  Gaussian per channel (numerator) plus one 7x7 for the denominator: ``u * H * W * (C + 1) * k*k``;
- the head: ``fc`` or the FPN convs (reported apart; the official numbers are backbone only).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Optional, Union

from sai.constants import FLOPS_INPUT_RULES
from sai.errors import SaiError
from sai.models.ops import conv_output_size

Densities = Union[None, float, Mapping]


INPUT_RULES = FLOPS_INPUT_RULES


def input_rule(res: int, input: str = "auto") -> str:
    """``"detection"`` or ``"classification"``: what ``input`` means at ``res`` (``auto``: classification
    exactly at res 224, as the official calculator decides)."""
    if input not in INPUT_RULES:
        raise SaiError(f"input must be one of {', '.join(INPUT_RULES)}, got {input!r}")
    if input == "auto":
        return "classification" if int(res) == 224 else "detection"
    return input


def official_input_size(res: int, input: str = "auto") -> tuple[int, int]:
    """The official input for a resolution. Detection: ``((res // 32) * 32, (res * 5/3 // 32) * 32)``;
    classification: ``(res, res)``; ``auto``: classification at res 224 only (the official calculator)."""
    if input_rule(res, input) == "classification":
        return int(res), int(res)
    return (int(res) // 32) * 32, int((int(res) * 5.0 / 3.0) // 32) * 32


def block_plan(depth: int, base_width: int = 64) -> list[dict]:
    """Every residual block: name, stage, index, kind, inplanes, planes, stride, feature stride."""
    from sai.models.network import DEPTHS

    if depth not in DEPTHS:
        raise SaiError(f"unknown depth {depth}; valid: {sorted(DEPTHS)}")
    kind, counts = DEPTHS[depth]
    exp = 4 if kind == "bottleneck" else 1
    plan, inplanes = [], base_width
    for i, n in enumerate(counts):
        planes = base_width * 2 ** i
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            feat = 4 * 2 ** i
            plan.append({
                "name": f"layer{i + 1}.{j}", "stage": i, "index": j, "kind": kind, "inplanes": inplanes,
                "planes": planes, "out": planes * exp, "stride": stride, "feat": feat,
                "feat_in": feat // stride, "downsample": j == 0 and (stride != 1 or inplanes != planes * exp),
            })
            inplanes = planes * exp
    return plan


def _block_densities(densities: Densities, name: str) -> dict:
    """``{"d1", "d2", "u1", "u2"}`` for a block from a float, a per-block mapping or measured stats."""
    if isinstance(densities, (int, float)):
        d = float(densities)
        return {"d1": d, "d2": d, "u1": 1 - d, "u2": 1 - d}
    v = densities.get(name) if densities is not None else None
    if v is None:
        raise SaiError(f"no density for block {name}; give one per sparse block or a single float")
    if isinstance(v, Mapping):
        d1, d2 = float(v["d1"]), float(v["d2"])
        return {"d1": d1, "d2": d2, "u1": float(v.get("u1", 1 - d1)), "u2": float(v.get("u2", 1 - d2))}
    d1, d2 = (float(x) for x in v)
    return {"d1": d1, "d2": d2, "u1": 1 - d1, "u2": 1 - d2}


def _check_density(d: dict, name: str) -> None:
    for k, v in d.items():
        if not 0.0 <= v <= 1.0:
            raise SaiError(f"density {k}={v} of {name} must lie in [0, 1]")


def official_flops(depth: int, res: int, dcn_stages=(False, True, True, True), densities: Densities = None,
                   base_width: int = 64, input: str = "auto") -> float:
    """The paper's backbone MACs (docs/design.md 4). ``densities=None``: the dense baseline (no mask or
    interpolation cost, offset conv in full); otherwise a float for every mask or a mapping
    ``block name -> (d1, d2)`` (or measured stats) for the sparse model.

    BasicBlock depths (18/34) extend the rule by analogy: conv1 (3x3, stride s) at d1, conv2 at d2,
    two 3x3 mask convs at the output grid, interpolation ``cost(7, planes, 1, s) * d(1-d)`` for each.
    ``input``: the input size rule (``official_input_size``; ``auto``: detection except res 224, as the
    official calculator).
    """
    h, w = official_input_size(res, input)

    def cost(k, cin, cout, s):
        return k * k * cin * cout * (h // s) * (w // s)

    dcn = [bool(int(v)) for v in dcn_stages]
    total = cost(7, 3, base_width, 2)
    for b in block_plan(depth, base_width):
        s, inp, planes = b["feat"], b["inplanes"], b["planes"]
        if b["downsample"]:
            total += cost(1, inp, b["out"], s)
        sparse = densities is not None
        dd = _block_densities(densities, b["name"]) if sparse else {"d1": 1.0, "d2": 1.0}
        d1, d2 = dd["d1"], dd["d2"]
        if b["kind"] == "bottleneck":
            s1 = b["feat_in"]
            total += cost(1, inp, planes, s1) * d1 + cost(3, planes, planes, s) * d2 + cost(1, planes, 4 * planes, s) * d2
            if sparse:
                total += cost(3, inp, 1, s1) + cost(3, inp, 1, s)
                total += cost(7, planes, 1, s1) * d1 * (1 - d1) + cost(7, 4 * planes, 1, s) * d2 * (1 - d2)
        else:
            total += cost(3, inp, planes, s) * d1 + cost(3, planes, planes, s) * d2
            if sparse:
                total += 2 * cost(3, inp, 1, s)
                total += cost(7, planes, 1, s) * (d1 * (1 - d1) + d2 * (1 - d2))
        if dcn[b["stage"]]:
            total += cost(3, inp, 18, s) * (d2 if sparse else 1.0)
    return float(total)


def kernel_flops(arch: str, input_hw: tuple[int, int], densities: Densities = None,
                 dcn_stages=(False, False, False, False), base_width: int = 64, head: str = "none",
                 num_classes: int = 1000, fpn_out_channels: int = 256, gaussian_kernel: int = 7,
                 dcn_offset_from: Optional[str] = None) -> dict:
    """MACs our fused model executes for an ``input_hw`` image (batch 1), itemised.

    ``densities``: None (dense: a ``resnet*`` arch, or a sparse model in ``dense`` sampling), a float
    for every mask, a mapping ``block -> (d1, d2)``, or ``model.mask_stats()`` (adds the measured
    interpolated fractions ``u1, u2``). Returns ``{"total", "backbone", "head", "by_op", "blocks"}``.
    """
    from sai.models.network import parse_arch

    sparse_arch, depth = parse_arch(arch)
    sparse = sparse_arch and densities is not None
    dcn = [bool(int(v)) for v in dcn_stages]
    offset_from = dcn_offset_from or "input"  # the SAI-Det default of every arch (network.DCN_OFFSET_FROM)
    k2 = gaussian_kernel * gaussian_kernel
    h, w = (int(v) for v in input_hw)
    by_op: OrderedDict[str, float] = OrderedDict(
        (k, 0.0) for k in ("stem", "downsample", "mask", "conv", "offset", "dcn_sampling", "interpolate", "head"))
    h, w = conv_output_size(h, 7, 2, 3, 3, 1), conv_output_size(w, 7, 2, 3, 3, 1)
    by_op["stem"] = 49.0 * 3 * base_width * h * w
    h, w = conv_output_size(h, 3, 2, 1, 1, 1), conv_output_size(w, 3, 2, 1, 1, 1)
    blocks: OrderedDict[str, float] = OrderedDict()
    feats = []
    for b in block_plan(depth, base_width):
        inp, planes, out, s = b["inplanes"], b["planes"], b["out"], b["stride"]
        ho, wo = conv_output_size(h, 3, s, 1, 1, 1), conv_output_size(w, 3, s, 1, 1, 1)
        hw_in, hw_out = float(h * w), float(ho * wo)
        dd = _block_densities(densities, b["name"]) if sparse else {"d1": 1.0, "d2": 1.0, "u1": 0.0, "u2": 0.0}
        _check_density(dd, b["name"])
        d1, d2, u1, u2 = dd["d1"], dd["d2"], dd["u1"], dd["u2"]
        ops = OrderedDict()
        if b["kind"] == "bottleneck":
            ops["conv"] = inp * planes * hw_in * d1 + 9 * planes * planes * hw_out * d2 + planes * out * hw_out * d2
            hw1, c1 = hw_in, planes
        else:
            ops["conv"] = 9 * inp * planes * hw_out * d1 + 9 * planes * planes * hw_out * d2
            hw1, c1 = hw_out, planes
        if sparse:
            ops["mask"] = 9.0 * inp * (hw1 + hw_out)
            c2 = out if b["kind"] == "bottleneck" else planes  # conv3 reorder: interpolate 4*planes
            ops["interpolate"] = (u1 * hw1 * (c1 + 1) + u2 * hw_out * (c2 + 1)) * k2
        if dcn[b["stage"]]:
            if offset_from == "input":
                ops["offset"] = 9 * inp * 18 * hw_out * d2
            else:  # dense mmdet DCN: offsets from conv1's output
                ops["offset"] = 9 * planes * 18 * hw_out
            ops["dcn_sampling"] = 4 * 9 * planes * hw_out * d2
        if b["downsample"]:
            ops["downsample"] = inp * out * hw_out
        for k, v in ops.items():
            by_op[k] += v
        blocks[b["name"]] = float(sum(ops.values()))
        h, w = ho, wo
        if b["index"] == 0:
            feats.append(None)
        feats[-1] = (out, h, w)
    if head == "cls":
        by_op["head"] = float(feats[-1][0] * num_classes)
    elif head == "fpn":
        tot = 0.0
        for c, fh, fw in feats:
            tot += c * fpn_out_channels * fh * fw + 9 * fpn_out_channels * fpn_out_channels * fh * fw
        by_op["head"] = tot
    backbone = float(sum(v for k, v in by_op.items() if k != "head"))
    return {"total": backbone + by_op["head"], "backbone": backbone, "head": by_op["head"],
            "by_op": dict(by_op), "blocks": dict(blocks)}
