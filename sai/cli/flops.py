"""`sai flops`: the official SAI FLOPs accounting beside our count of what our kernels execute."""

from __future__ import annotations

import argparse
import json

from sai.errors import SaiError


def _parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",") if v]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32:
        raise SaiError(f"image size must be N or HxW with sides >= 32, got {text!r}")
    return parts[0], parts[1]


def _parse_stages(text: str) -> tuple[bool, ...]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if len(vals) != 4 or any(v not in ("0", "1") for v in vals):
        raise SaiError(f"--dcn-stages takes 4 comma-separated 0/1 values, e.g. 0,1,1,1; got {text!r}")
    return tuple(v == "1" for v in vals)


def run(args: argparse.Namespace) -> int:
    import torch

    from sai.models import build_model
    from sai.models.checkpoint import model_from_checkpoint
    from sai.models.flops import kernel_flops, official_flops, official_input_size
    from sai.models.network import parse_arch

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
    if args.measure:
        size = _parse_size(args.measure)
        if args.checkpoint:
            model, _ = model_from_checkpoint(args.checkpoint, sampling="deterministic")
            if model.arch != args.arch:
                raise SaiError(f"--checkpoint holds {model.arch}, not {args.arch}")
            dcn = tuple(model.options["dcn_stages"])
            base_width = model.options["base_width"]
        else:
            model = build_model(args.arch, dcn_stages=dcn, base_width=base_width, head="none")
        model.eval()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model(torch.randn(1, 3, *size, generator=gen))
        densities = model.mask_stats()
        what = args.checkpoint or "random-init weights (give --checkpoint for trained masks)"
        source = f"measured on a random {size[0]}x{size[1]} image with {what}"
    h, w = official_input_size(args.res)
    official = official_flops(depth, args.res, dcn, densities, base_width)
    ours = kernel_flops(args.arch, (h, w), densities, dcn, base_width, dcn_offset_from="input" if sparse else "conv1")
    if isinstance(densities, dict):
        vals = list(densities.values())
        mean_d = (sum(v["d1"] for v in vals) / len(vals), sum(v["d2"] for v in vals) / len(vals))
    else:
        mean_d = None if densities is None else (densities, densities)
    result = {
        "arch": args.arch, "res": args.res, "input_hw": [h, w], "dcn_stages": [int(v) for v in dcn],
        "base_width": base_width, "densities": source, "mean_density": mean_d,
        "official_gflops": round(official / 1e9, 2),
        "kernel_gflops": round(ours["backbone"] / 1e9, 2),
        "kernel_by_op_gflops": {k: round(v / 1e9, 4) for k, v in ours["by_op"].items() if k != "head"},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.arch}  res {args.res} -> input {h}x{w}  dcn_stages {','.join(str(int(v)) for v in dcn)}"
          f"  base_width {base_width}")
    print(f"densities: {source}" + (f"  (mean d1 {mean_d[0]:.4f}, d2 {mean_d[1]:.4f})" if mean_d else ""))
    print(f"official accounting (paper GFlops, backbone MACs, DESIGN.md 4): {result['official_gflops']:.2f} G")
    print(f"our kernels (what the fused model executes, backbone MACs):      {result['kernel_gflops']:.2f} G")
    for k, v in result["kernel_by_op_gflops"].items():
        if v:
            print(f"  {k:<13} {v:10.3f} G")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="FLOPs: the official SAI accounting and what our kernels execute")
    p.add_argument("--arch", required=True, help="sparse_resnet{18,34,50,101,152} or resnet{18,...,152}")
    p.add_argument("--res", type=int, required=True, help="official resolution (500/600/800/1000): input "
                   "(res//32*32) x (res*5/3//32*32)")
    p.add_argument("--dcn-stages", default="0,0,0,0", help="DCN per stage, e.g. 0,1,1,1 (the paper's setting)")
    p.add_argument("--base-width", type=int, default=64, help="channels of the stem (64 = standard ResNet)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--density", type=float, help="one mask density for every sparse conv")
    g.add_argument("--measure", metavar="IMAGE_SIZE", help="measure densities with a forward pass at N or HxW")
    p.add_argument("--checkpoint", help="weights for --measure (our format or official SAI-Det)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
