"""`sai validate`: the same inputs through torch / onnxruntime / tensorrt with Polygraphy's Comparator;
per-output tolerances, mask agreement, non-zero exit and a readable report on mismatch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sai.cli.options import (
    add_alias,
    add_file_force,
    add_image_shape_args,
    add_json,
    add_no_verify,
    add_quiet,
    add_threads_seed,
    image_shape,
    progress_printer,
)

REPORT_KIND = "sai-validate-report"  # the "sai_output" tag of --report files (sai.outputs.json_tag)


def run(args: argparse.Namespace) -> int:
    from sai.errors import SaiError
    from sai.outputs import check_output_file, json_tag, write_atomic
    from sai.runtime.validate import (
        load_backends,
        load_image_batches,
        load_input_feeds,
        parse_tolerances,
        validate,
    )

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
    if args.load_inputs and args.images:
        raise SaiError("give --load-inputs or --images, not both")
    if args.report:  # before the slow work, so the report cannot be lost at the end
        check_output_file(args.report, "-o", create_parent=True, kind=REPORT_KIND, force=args.force)
    say = progress_printer(args, "validate")
    say(f"loading {', '.join(backends)} for {args.model}")
    detector = _detector_manifest(args.model, verify=not args.no_verify)
    if detector is not None:
        return _run_detector(args, backends, detector)
    engines, skipped = load_backends(args.model, backends, checkpoint=args.checkpoint, masks=not args.no_masks,
                                     threads=args.threads, verify=not args.no_verify)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr if args.json else sys.stdout)
    try:
        first = next(iter(engines.values()))
        shape = image_shape(args, first)
        if args.load_inputs:
            feeds = load_input_feeds(args.load_inputs, first)
        elif args.images:
            feeds = load_image_batches(args.images, first, shape)
        else:
            feeds = [first.example_feeds(shape, seed=args.seed + it) for it in range(args.iterations)]
        for f in feeds:  # identical noise for every backend (a --load-inputs file may carry its own)
            image = f.get(first.primary_input.name)
            if image is not None:
                f.update({k: v for k, v in first.noise_for(image.shape).items() if k not in f})
        say(f"running {len(feeds)} input set(s) through {', '.join(engines)}")
        report = validate(engines, feeds, atol=atol, rtol=rtol, mask_threshold=args.mask_agreement)
    finally:
        for e in engines.values():
            e.close()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    if args.report:
        write_atomic(Path(args.report), json.dumps({**json_tag(REPORT_KIND), **report.to_dict()}, indent=2) + "\n",
                     flag="-o", kind=REPORT_KIND, force=args.force)
        if not args.json:
            print(f"report written to {args.report}")
    return 0 if report.passed else 1


def _detector_manifest(model, verify: bool):
    """The manifest of a detector OUTDIR (``kind: detector``), its files verified; None for anything else."""
    from sai.runtime.detector_engine import is_detector_manifest
    from sai.runtime.loader import read_manifest, verify_model_path

    p = Path(model)
    if not p.is_dir():
        return None
    manifest = read_manifest(p) if (p / "manifest.json").is_file() else None
    if not is_detector_manifest(manifest):
        return None
    if verify:
        verify_model_path(p)
    return manifest


def _run_detector(args: argparse.Namespace, backends: list, manifest: dict) -> int:
    """``sai validate`` on a detector OUTDIR: runtimes compared by detections (sai.runtime.validate)."""
    from sai.errors import SaiError
    from sai.outputs import json_tag, write_atomic
    from sai.runtime.validate import (
        detector_image_feeds,
        load_detector_backends,
        load_detector_input_feeds,
        random_detector_images,
        read_image_folder,
        validate_detector,
    )

    if getattr(args, "shape", None):
        raise SaiError("--shape does not apply to a detector: images keep their sizes and are resized as the "
                       "manifest's preprocessing says; leave it out")
    engines, skipped = load_detector_backends(args.model, manifest, backends, checkpoint=args.checkpoint,
                                              masks=not args.no_masks, threads=args.threads)
    for line in skipped:
        print(f"skipped {line}")
    try:
        first = next(iter(engines.values()))
        if args.load_inputs:
            feeds = load_detector_input_feeds(args.load_inputs, first)
        else:
            if args.images:
                images = read_image_folder(args.images)
            else:
                scale = manifest["preprocessing"]["img_scale"]
                images = random_detector_images(args.batch * args.iterations, args.seed, scale)
            feeds = []
            for i in range(0, len(images), args.batch):
                feeds += detector_image_feeds(first, images[i:i + args.batch])
        report = validate_detector(engines, feeds, mask_threshold=args.mask_agreement)
    finally:
        for e in engines.values():
            e.close()
    print(report.text())
    if args.report:
        write_atomic(Path(args.report), json.dumps({**json_tag(REPORT_KIND), **report.to_dict()}, indent=2,
                                                   default=str) + "\n",
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
    add_image_shape_args(p, batch=2, shape_help="HxW or NxCxHxW (default: the export's example size at --batch)")
    p.add_argument("--iterations", type=int, default=2,
                   help="random input sets to compare (default 2; not used with --load-inputs / --images)")
    p.add_argument("--load-inputs", metavar="FILE",
                   help="compare on the feeds of a Polygraphy input file (JSON list of {name: array}, as written by "
                        "polygraphy run --save-inputs and read by its --load-inputs) instead of random inputs "
                        "(default: random inputs)")
    p.add_argument("--images", metavar="DIR",
                   help="compare on the .png/.jpg images of DIR: RGB, resized to --shape (default the export's "
                        "example size), normalised as the model's input_norm says, in batches of --batch")
    add_threads_seed(p)
    p.add_argument("-o", "--output", dest="report", metavar="PATH",
                   help="write the full report as JSON to PATH (an existing file there is replaced only when it is an "
                        "earlier validate report; default: none)")
    add_alias(p, "--report", dest="report", new="-o/--output", metavar="PATH")
    add_file_force(p, flag="-o", kind=REPORT_KIND)
    add_json(p, what="the report")
    add_quiet(p)
    add_no_verify(p)
    p.set_defaults(func=run)
