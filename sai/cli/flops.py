"""`sai flops`: the official SAI FLOPs accounting beside our count of what our kernels execute."""

from __future__ import annotations

import argparse
import json

from sai.constants import DCN_OFFSET_FROM, FLOPS_INPUT_RULES, SAMPLING_MODES
from sai.errors import SaiError

MEASURE_AT_INPUT = "input"  # --measure without a size


def _parse_size(text: str) -> tuple[int, int]:
    from sai.shapes import parse_shape

    parts = parse_shape(text, "image size", lengths=(1, 2), minimum=32, form="SIDE or H,W")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _parse_stages(text: str) -> tuple[bool, ...]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if len(vals) != 4 or any(v not in ("0", "1") for v in vals):
        raise SaiError(f"--dcn-stages takes 4 comma-separated 0/1 values, e.g. 0,1,1,1; got {text!r}")
    return tuple(v == "1" for v in vals)


def _mean(stats: dict) -> tuple[float, float]:
    vals = list(stats.values())
    return sum(v["d1"] for v in vals) / len(vals), sum(v["d2"] for v in vals) / len(vals)


def measure_modes(model, size: tuple[int, int], seed: int = 0) -> dict:
    """Mask stats of ``model`` on one seeded random image, in deterministic and in stochastic sampling
    (noise from ``seed``): ``{mode: model.mask_stats()}``, each averaged per forward (official counter)."""
    import torch

    from sai.models.network import set_sampling

    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    out = {}
    for mode in ("deterministic", "stochastic"):
        set_sampling(model, mode)
        model.reseed(seed)
        model.reset_densities()
        with torch.no_grad():
            model(x)
        out[mode] = model.mask_stats()
    return out


def measure_detector(det, size: tuple[int, int], seed: int = 0) -> tuple[dict, tuple[int, int]]:
    """Mask stats of a sparse detector's backbone on one seeded random uint8 image of ``size`` run through the
    detector's test preprocessing, in both sampling modes: ``({mode: mask_stats()}, padded input (h, w))``."""
    import numpy as np
    import torch

    from sai.models.detector import preprocess
    from sai.models.network import set_sampling

    img = np.random.RandomState(0).randint(0, 256, (*size, 3)).astype(np.uint8)
    x = preprocess(img, det.config)[0]["img"][None]
    out = {}
    for mode in ("deterministic", "stochastic"):
        set_sampling(det.backbone, mode)
        det.backbone.reseed(seed)
        det.backbone.reset_densities()
        with torch.no_grad():
            det.backbone(x)
        out[mode] = det.backbone.mask_stats()
    return out, (int(x.shape[2]), int(x.shape[3]))


DETECTOR_PARTS = (("backbone", "backbone"), ("neck", "neck (FPN)"), ("rpn", "RPN head"), ("roi_head", "RoI head"),
                  ("total", "total"))


def run_detector(args: argparse.Namespace) -> int:
    """``sai flops --detector``: MACs of the whole detector by part, dense and at the given/measured densities."""
    from sai.models.detector import detector_flops, load_detector
    from sai.models.detector_presets import resolve

    if args.arch is not None or args.res is not None:
        raise SaiError("--detector takes the architecture and test scale from the preset or config; drop --arch "
                       "and --res")
    cfg = resolve(args.detector)
    if args.density is not None and not 0.0 <= args.density <= 1.0:
        raise SaiError(f"--density must lie in [0, 1], got {args.density}")
    if (args.density is not None or args.measure) and not cfg.sparse:
        raise SaiError(f"{cfg.name} is a dense detector: --density/--measure need a sparse preset or config")
    if args.checkpoint and not args.measure:
        raise SaiError("--checkpoint is read for --measure only; add --measure IMAGE_SIZE")
    input_hw, densities, measured = None, None, {}
    source = "dense detector" if not cfg.sparse else "density 1.0 (no --density/--measure given)"
    if args.density is not None:
        densities, source = args.density, f"given density {args.density} for every mask"
    if args.measure:
        size = _parse_size(args.measure)
        det = load_detector(cfg, args.checkpoint)
        stats, input_hw = measure_detector(det, size, seed=args.seed)
        densities = stats[args.sampling]
        what = args.checkpoint or "random-init weights (give --checkpoint for trained masks)"
        source = (f"measured in {args.sampling} sampling on a random {size[0]}x{size[1]} image (preprocessed to "
                  f"{input_hw[0]}x{input_hw[1]}) with {what}")
        for mode, st in stats.items():
            measured[mode] = {"mean_density": _mean(st), "flops": detector_flops(cfg, input_hw, st)}
    dense = detector_flops(cfg, input_hw, None)
    at = detector_flops(cfg, input_hw, densities) if cfg.sparse else dense
    mean_d = _mean(densities) if isinstance(densities, dict) else (
        None if densities is None else (densities, densities))
    fixed = dense["dense_parts"]
    bound = dense["total"] / fixed
    g = {k: {p: round(v[p] / 1e9, 2) for p, _ in DETECTOR_PARTS} for k, v in (("dense", dense), ("at", at))}
    result = {
        "detector": cfg.name, "arch": cfg.arch, "dcn_stages": [int(v) for v in cfg.dcn_stages],
        "img_scale": list(cfg.img_scale), "input_hw": list(dense["input_hw"]), "num_rois": dense["num_rois"],
        "densities": source, "mean_density": mean_d, "dense_gmacs": g["dense"], "gmacs": g["at"],
        "dense_parts_gmacs": round(fixed / 1e9, 2), "dense_parts_share": round(fixed / dense["total"], 4),
        "saving": round(dense["total"] / at["total"], 3),
        "backbone_saving": round(dense["backbone"] / at["backbone"], 3) if at["backbone"] else None,
        "saving_bound": round(bound, 3),
    }
    if measured:
        result["measured"] = {m: {"mean_density": v["mean_density"],
                                  "gmacs": {p: round(v["flops"][p] / 1e9, 2) for p, _ in DETECTOR_PARTS}}
                              for m, v in measured.items()}
    result["note"] = (f"the neck, RPN and RoI head stay dense ({result['dense_parts_gmacs']:.1f} G, "
                      f"{result['dense_parts_share']:.0%} of the dense detector), so the detector's saving is "
                      f"bounded by them: even a backbone at density 0 leaves it at most {bound:.2f}x fewer MACs "
                      "than dense")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    h, w = dense["input_hw"]
    print(f"{cfg.name}: {cfg.arch}, dcn_stages {','.join(str(int(v)) for v in cfg.dcn_stages)}, test scale "
          f"{cfg.img_scale[0]}x{cfg.img_scale[1]} -> input {h}x{w}; RoI head for {dense['num_rois']} RoIs (max_num, "
          "the most the RPN gives)")
    print(f"densities: {source}" + (f"  (mean d1 {mean_d[0]:.4f}, d2 {mean_d[1]:.4f})" if mean_d else ""))
    print(f"  {'part (our kernels, MACs)':<26} {'dense G':>10} {'at densities G':>15}")
    for key, label in DETECTOR_PARTS:
        print(f"  {label:<26} {g['dense'][key]:10.2f} {g['at'][key]:15.2f}")
    for mode, m in result.get("measured", {}).items():
        print(f"  measured {mode}: mean d1 {m['mean_density'][0]:.4f}, d2 {m['mean_density'][1]:.4f}: backbone "
              f"{m['gmacs']['backbone']:.2f} G, total {m['gmacs']['total']:.2f} G")
    if cfg.sparse:
        print(f"saving: detector {result['saving']:.2f}x fewer MACs than dense, backbone alone "
              f"{result['backbone_saving'] or float('inf'):.2f}x")
    print(result["note"])
    return 0


def run(args: argparse.Namespace) -> int:
    from sai.models import build_model
    from sai.models.checkpoint import model_from_checkpoint
    from sai.models.flops import input_rule, kernel_flops, official_flops, official_input_size
    from sai.models.network import parse_arch

    if args.detector:
        if args.measure == MEASURE_AT_INPUT:
            raise SaiError("--detector --measure needs the image size, e.g. --measure 800x1333")
        return run_detector(args)
    if args.arch is None or args.res is None:
        raise SaiError("sai flops needs --arch and --res (a backbone), or --detector PRESET for the whole detector")
    sparse, depth = parse_arch(args.arch)
    dcn = _parse_stages(args.dcn_stages)
    if args.res < 32:
        raise SaiError(f"--res must be >= 32, got {args.res}")
    if args.density is not None and not 0.0 <= args.density <= 1.0:
        raise SaiError(f"--density must lie in [0, 1], got {args.density}")
    if (args.density is not None or args.measure) and not sparse:
        raise SaiError(f"{args.arch} is a dense baseline: --density/--measure need a sparse_resnet* arch")
    base_width = args.base_width
    densities = None
    source = "dense baseline" if not sparse else "density 1.0 (no --density/--measure given)"
    if sparse:
        densities = 1.0
    if args.density is not None:
        densities, source = args.density, f"given density {args.density} for every mask"
    rule = input_rule(args.res, args.input)
    h, w = official_input_size(args.res, rule)
    offset_from = args.dcn_offset_from
    if sparse and offset_from != "input":
        raise SaiError("sparse models predict DCN offsets from the block input: --dcn-offset-from input")
    measured: dict = {}
    if args.measure:
        # --measure alone: at the counted input, so the densities and the count are of one size
        size = (h, w) if args.measure == MEASURE_AT_INPUT else _parse_size(args.measure)
        if args.checkpoint:
            model, _ = model_from_checkpoint(args.checkpoint, sampling="deterministic")
            if model.arch != args.arch:
                raise SaiError(f"--checkpoint holds {model.arch}, not {args.arch}")
            dcn = tuple(model.options["dcn_stages"])
            base_width = model.options["base_width"]
        else:
            model = build_model(args.arch, dcn_stages=dcn, base_width=base_width, head="none")
        stats = measure_modes(model.eval(), size, seed=args.seed)
        densities = stats[args.sampling]
        what = args.checkpoint or "random-init weights (give --checkpoint for trained masks)"
        source = (f"measured in {args.sampling} sampling on a random {size[0]}x{size[1]} image with {what} "
                  "(per-forward average, as the official counters)")
        for mode, st in stats.items():
            off = official_flops(depth, args.res, dcn, st, base_width, rule)
            ker = kernel_flops(args.arch, (h, w), st, dcn, base_width, dcn_offset_from=offset_from)["backbone"]
            measured[mode] = {
                "mean_density": _mean(st),
                "official_gflops": round(off / 1e9, 2), "kernel_gflops": round(ker / 1e9, 2),
                "official_macs": int(off), "kernel_macs": int(ker),
                "blocks": {k: [v["d1"], v["d2"]] for k, v in st.items()},
            }
        measured["stochastic"]["seed"] = args.seed
        measured_hw = list(size)
    official = official_flops(depth, args.res, dcn, densities, base_width, rule)
    ours = kernel_flops(args.arch, (h, w), densities, dcn, base_width, dcn_offset_from=offset_from)
    if isinstance(densities, dict):
        mean_d = _mean(densities)
    else:
        mean_d = None if densities is None else (densities, densities)
    rule_text = ("classification rule: res x res" if rule == "classification" else
                 "detection rule: (res//32*32) x (res*5/3//32*32)")
    result = {
        "arch": args.arch, "res": args.res, "input_hw": [h, w], "input_rule": rule,
        "dcn_stages": [int(v) for v in dcn], "dcn_offset_from": offset_from,
        "base_width": base_width, "densities": source, "mean_density": mean_d,
        "official_gflops": round(official / 1e9, 2),
        "kernel_gflops": round(ours["backbone"] / 1e9, 2),
        "kernel_by_op_gflops": {k: round(v / 1e9, 4) for k, v in ours["by_op"].items() if k != "head"},
        "official_macs": int(official), "kernel_macs": int(ours["backbone"]),
        "kernel_by_op_macs": {k: int(v) for k, v in ours["by_op"].items() if k != "head"},
    }
    if measured:
        result["measured"] = measured
        result["measured_hw"] = measured_hw
        result["note"] = ("official SAI-Det inference is stochastic (Gumbel noise at eval, T=0.03, unseeded); "
                          "sai's default sampling is deterministic (noise-free)")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.arch}  res {args.res} -> input {h}x{w} ({rule_text})  "
          f"dcn_stages {','.join(str(int(v)) for v in dcn)}  base_width {base_width}")
    print(f"densities: {source}")
    if measured and measured_hw != [h, w]:
        print(f"note: densities measured at {measured_hw[0]}x{measured_hw[1]}, MACs counted at {h}x{w} (--measure "
              "without a size measures at the counted input)")
    rows = [("backbone MACs at the densities above", mean_d, result["official_macs"], result["kernel_macs"])]
    for mode, m in measured.items():
        label = ("deterministic (sai default, noise-free)" if mode == "deterministic" else
                 f"stochastic (seed {m['seed']}; official SAI-Det eval)")
        rows.append((label, m["mean_density"], m["official_macs"], m["kernel_macs"]))
    print()
    print(f"{'':<44} {'mean d1':>8} {'mean d2':>8}  {'official (paper)':>16}  {'our kernels':>12}")
    for label, md, off, ker in rows:
        d1, d2 = (f"{md[0]:.4f}", f"{md[1]:.4f}") if md else ("-", "-")
        print(f"{label:<44} {d1:>8} {d2:>8}  {format_macs(off):>16}  {format_macs(ker):>12}")
    print()
    total = result["kernel_macs"] or 1
    print(f"{'our kernels by op':<44} {'MACs':>12} {'share':>7}")
    for k, v in result["kernel_by_op_macs"].items():
        if v:
            print(f"  {k:<42} {format_macs(v):>12} {v / total:>7.1%}")
    print()
    print("official: the paper's accounting (docs/design.md 4); our kernels: what the fused model executes")
    if measured:
        print(f"note: {result['note']}")
    return 0


def format_macs(v: float) -> str:
    """A MAC count with its unit, three or more significant digits (``289.47 G``, ``1.23 M``, ``950``)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="FLOPs: the official SAI accounting and what our kernels execute")
    p.add_argument("--arch", help="sparse_resnet{18,34,50,101,152} or resnet{18,...,152} (no default: required "
                   "without --detector)")
    p.add_argument("--res", type=int, help="official resolution (500/600/800/1000): input "
                   "(res//32*32) x (res*5/3//32*32); see --input (no default: required without --detector)")
    p.add_argument("--detector", metavar="PRESET", help="the whole detector of an official preset name or config "
                   "file: backbone, neck, RPN and RoI head, dense and at --density / --measure (image size; "
                   "--checkpoint: an official detector checkpoint; default: none, the backbone alone)")
    p.add_argument("--input", choices=list(FLOPS_INPUT_RULES), default="auto",
                   help="input size rule: detection (res//32*32) x (res*5/3//32*32), classification res x res; "
                   "auto (default) = classification at res 224 only, as the official SAI calculator")
    p.add_argument("--dcn-stages", default="0,0,0,0", help="DCN per stage, e.g. 0,1,1,1 (the paper's setting)")
    p.add_argument("--base-width", type=int, default=64, help="channels of the stem (64 = standard ResNet)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--density", type=float, help="one mask density for every sparse conv (default: 1.0, or "
                   "--measure)")
    g.add_argument("--measure", metavar="IMAGE_SIZE", nargs="?", const=MEASURE_AT_INPUT,
                   help="measure densities with a forward pass; alone: at the counted input (--res/--input), "
                        "or at N or HxW (--detector: the image size before its preprocessing) (default: off)")
    p.add_argument("--checkpoint", help="weights for --measure (our format or official SAI-Det; default: random "
                   "initialisation)")
    p.add_argument("--sampling", choices=[m for m in SAMPLING_MODES if m != "dense"], default="deterministic",
                   help="--measure: the mode whose densities give the headline numbers (both are printed). "
                   "deterministic (default) is noise-free; official SAI-Det inference is stochastic")
    p.add_argument("--seed", type=int, default=0, help="--measure: noise seed of the stochastic measurement")
    p.add_argument("--dcn-offset-from", choices=list(DCN_OFFSET_FROM), default="input",
                   help="DCN offset conv input for our kernel count: input (SAI-Det, default) or conv1 "
                   "(upstream mmdetection dense ResNet)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
