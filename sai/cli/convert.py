"""`sai convert`: checkpoint -> OUTDIR (model.onnx, model.trt.onnx, manifest.json, model.plan on GPUs)."""

from __future__ import annotations

import argparse
import sys

from sai.cli.options import add_alias, add_export_args, add_force, add_output, add_quiet, add_trt_blocks
from sai.errors import SaiError


def _size(text: str) -> int:
    """``4G`` / ``512M`` / bytes -> bytes."""
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    try:
        return int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2G, 512M, 1048576)") from None


def run(args: argparse.Namespace) -> int:
    from sai.outputs import after_publish
    from sai.runtime.convert import convert

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    detector = args.preset or args.config
    if detector:
        _check_detector_args(args)
    with after_publish() as done:  # once OUTDIR is published, a Ctrl-C/SIGTERM no longer makes the run fail
        try:
            if detector:
                from sai.runtime.convert import convert_detector

                res = convert_detector(args.checkpoint, detector, args.output, sampling=args.sampling,
                                       opset=args.opset, opt_shape=args.opt_shape, progress=progress,
                                       force=args.force, on_published=done)
                return _report(res, args)
            res = convert(args.checkpoint, args.arch, args.output, sampling=args.sampling, precision=args.precision,
                          opset=args.opset, min_shape=args.min_shape, opt_shape=args.opt_shape,
                          max_shape=args.max_shape, workspace=args.workspace, timing_cache=args.timing_cache,
                          version_compatible=args.version_compatible, build_engine=not args.no_engine,
                          trt_blocks=args.trt_blocks,
                          progress=progress, force=args.force, on_published=done)
        except KeyboardInterrupt:
            if not done.published:
                raise
            print(done.note("convert"), file=sys.stderr, flush=True)
            return 0
        return _report(res, args)


def _check_detector_args(args: argparse.Namespace) -> None:
    """The options a detector convert (--preset / --config) takes; the backbone-only ones are refused by name."""
    if args.preset and args.config:
        raise SaiError("give --preset NAME or --config FILE, not both")
    given = [flag for flag, v in (("--arch", args.arch), ("--min-shape", args.min_shape), ("--max-shape", args.max_shape),
                                  ("--workspace", args.workspace), ("--timing-cache", args.timing_cache),
                                  ("--version-compatible", args.version_compatible),
                                  ("--trt-blocks", args.trt_blocks)) if v]
    if args.precision != "fp32":
        given.append("--precision fp16")
    if given:
        raise SaiError(f"{', '.join(given)} do not apply to a detector convert (--preset/--config: fp32 ONNX with "
                       "dynamic batch and size, the architecture from the preset); leave them out")


def _report(res, args: argparse.Namespace) -> int:
    files = ", ".join(res.manifest["files"])
    print(f"wrote {res.outdir}: {files}, manifest.json")
    if not res.engine_built:
        print(f"engine skipped: {res.engine_skip_reason}; model.plan not written "
              "(the ONNX files run on onnxruntime; build the engine on a machine with TensorRT and a GPU)")
        if args.require_engine:
            raise SaiError(f"--require-engine: no engine was built ({res.engine_skip_reason})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="checkpoint -> ONNX (portable + TensorRT target), manifest, TensorRT engine")
    p.add_argument("checkpoint", help="checkpoint (.pth, ours or the official SAI-Det layout)")
    p.add_argument("--arch", help="e.g. sparse_resnet50 (default: what the checkpoint holds; checked against it)")
    p.add_argument("--preset", help="the whole SAI-Det detector (Faster R-CNN + FPN, boxes out) of an official config "
                   "name, e.g. sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1; the checkpoint must hold "
                   "rpn_head.*/bbox_head.* (default: none, the backbone alone)")
    p.add_argument("--config", help="the whole detector of an official SAI-Det config file (.py, read as literals, "
                   "never executed); instead of --preset (default: none)")
    add_output(p, required=True, metavar="OUTDIR",
               help="output directory: new, empty or an earlier sai convert output (replaced atomically)")
    add_export_args(p, sampling_help="sampling mode to export (default: the checkpoint's, else deterministic: "
                    "noise-free); manifest.json records the mode under export.sampling_note")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--min-shape", metavar="SHAPE",
                   help="NxCxHxW smallest input of the engine profile (default: batch 1 at --shape)")
    p.add_argument("--shape", dest="opt_shape", metavar="SHAPE",
                   help="NxCxHxW to export and optimize for (default 1,3,224,224)")
    add_alias(p, "--opt-shape", dest="opt_shape", new="--shape", metavar="SHAPE")
    p.add_argument("--max-shape", metavar="SHAPE",
                   help="NxCxHxW largest input of the engine profile (default: batch 8 at --shape)")
    p.add_argument("--workspace", type=_size, help="TensorRT workspace limit, e.g. 2G (default: TensorRT's)")
    p.add_argument("--timing-cache", metavar="FILE",
                   help="TensorRT timing cache: read into the build and written back atomically with FILE.sai.json "
                        "beside it; an existing FILE that sai did not write (no matching FILE.sai.json) is refused "
                        "before the work unless --force (read it, then overwrite it) (default: none)")
    p.add_argument("--version-compatible", action="store_true",
                   help="build a version-compatible engine with the plugin library serialized into it")
    add_trt_blocks(p, applies="model.trt.onnx, the graph the engine is built from")
    p.add_argument("--no-engine", action="store_true", help="write the ONNX files and manifest only")
    p.add_argument("--require-engine", action="store_true", help="exit non-zero when no engine could be built")
    add_force(p)
    add_quiet(p)
    p.set_defaults(func=run)
