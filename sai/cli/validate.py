"""`sai validate`: the same inputs through torch / onnxruntime / tensorrt with Polygraphy's Comparator;
per-output tolerances, mask agreement, non-zero exit and a readable report on mismatch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sai.cli.options import add_file_force, add_image_shape_args, add_no_verify, add_threads_seed, image_shape

REPORT_KIND = "sai-validate-report"  # the "sai_output" tag of --report files (sai.outputs.json_tag)


def run(args: argparse.Namespace) -> int:
    from sai.errors import SaiError
    from sai.outputs import check_output_file, json_tag, write_atomic
    from sai.runtime.validate import load_backends, parse_tolerances, validate

    atol = parse_tolerances(args.atol, 1e-4, "--atol")
    rtol = parse_tolerances(args.rtol, 1e-3, "--rtol")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends:
        raise SaiError("--backends is empty; give e.g. torch,onnxruntime (or auto)")
    for flag, value in (("--iterations", args.iterations), ("--batch", args.batch)):
        if value < 1:
            raise SaiError(f"{flag} must be at least 1, got {value}")
    if not 0.0 <= args.mask_agreement <= 1.0:
        raise SaiError(f"--mask-agreement is a fraction in [0, 1], got {args.mask_agreement}")
    if args.report:  # before the slow work, so the report cannot be lost at the end
        check_output_file(args.report, "--report", create_parent=True, kind=REPORT_KIND, force=args.force)
    engines, skipped = load_backends(args.model, backends, checkpoint=args.checkpoint, masks=not args.no_masks,
                                     threads=args.threads, verify=not args.no_verify)
    for line in skipped:
        print(f"skipped {line}")
    try:
        first = next(iter(engines.values()))
        shape = image_shape(args, first)
        feeds = []
        for it in range(args.iterations):
            f = first.example_feeds(shape, seed=args.seed + it)
            f.update(first.noise_for(shape))  # identical noise for every backend
            feeds.append(f)
        report = validate(engines, feeds, atol=atol, rtol=rtol, mask_threshold=args.mask_agreement)
    finally:
        for e in engines.values():
            e.close()
    print(report.text())
    if args.report:
        write_atomic(Path(args.report), json.dumps({**json_tag(REPORT_KIND), **report.to_dict()}, indent=2) + "\n",
                     flag="--report", kind=REPORT_KIND, force=args.force)
        print(f"report written to {args.report}")
    return 0 if report.passed else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare backends on identical inputs (Polygraphy Comparator)")
    p.add_argument("model", help="sai convert OUTDIR or .onnx")
    p.add_argument("--checkpoint", help="weights for the torch backend (default: the OUTDIR manifest's)")
    p.add_argument("--backends", default="auto", help="comma list of torch,onnxruntime,tensorrt (default: all available)")
    p.add_argument("--atol", nargs="+", help="absolute tolerance: VALUE and/or OUTPUT:VALUE (default 1e-4)")
    p.add_argument("--rtol", nargs="+", help="relative tolerance: VALUE and/or OUTPUT:VALUE (default 1e-3)")
    p.add_argument("--mask-agreement", type=float, default=0.999,
                   help="minimum fraction of positions whose sampling decision (M > 0) agrees (default 0.999)")
    p.add_argument("--no-masks", action="store_true", help="compare the outputs only")
    add_image_shape_args(p, batch=2, shape_help="H,W or N,C,H,W (default: the export's example size at --batch)")
    p.add_argument("--iterations", type=int, default=2, help="input sets to compare")
    add_threads_seed(p, threads_help=None, seed_help=None)
    p.add_argument("--report", help="write the full report as JSON (an existing file there is replaced only when it "
                                    "is an earlier validate report)")
    add_file_force(p, flag="--report", kind=REPORT_KIND)
    add_no_verify(p)
    p.set_defaults(func=run)
