"""`sai export`: a (Sparse)ResNet -> ONNX with the sai custom ops (portable or TensorRT target)."""

from __future__ import annotations

import argparse
import json

from sai.cli.options import (
    add_export_args,
    add_file_force,
    add_json,
    add_output,
    add_quiet,
    add_shape,
    add_trt_blocks,
    progress_printer,
)
from sai.constants import BODIES, DEFAULT_OPSET, HEADS, TARGETS
from sai.outputs import ONNX_KIND


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a (Sparse)ResNet to ONNX with sai::SparseSampleConv / sai::Interpolate",
        description="Export a model to ONNX. A --checkpoint decides DCN stages, head and classes; flags "
        "that contradict it are errors. --target portable carries local functions so any ONNX runtime "
        "runs the model; --target tensorrt leaves the custom nodes for the TensorRT plugins.",
    )
    p.add_argument("--arch", help="sparse_resnet{18,34,50,101,152} or resnet{...} (default: from --checkpoint)")
    p.add_argument("--checkpoint", help="checkpoint (.pth): ours or the official SAI-Det layout (default: none, "
                                        "random weights: fine for shapes and speed, not for outputs)")
    p.add_argument("--head", choices=list(HEADS), help="output head (default cls, or the checkpoint's)")
    p.add_argument("--num-classes", type=int, help="classifier size for --head cls (default 1000)")
    p.add_argument("--dcn-stages", help="deformable conv2 per stage, e.g. 0,1,1,1 (default: the checkpoint's, "
                                        "else 0,0,0,0)")
    p.add_argument("--base-width", type=int, help="stem width (default 64)")
    add_shape(p, default="1,3,224,224", old=("--input-shape",),
              help="example input NxCxHxW the model is traced at (H and W stay dynamic with --dynamic hw)")
    p.add_argument("--dynamic", default="batch,hw",
                   help="dynamic axes: batch,hw (default), batch, hw or none")
    add_export_args(p, sampling_help="mask sampling (default deterministic: noise-free, reproducible; stochastic adds "
                    "the uniform noise inputs; dense computes every position)")
    p.add_argument("--target", choices=list(TARGETS), default="portable",
                   help="portable: sai nodes + local functions (any ONNX runtime); tensorrt: sai nodes for the "
                   "plugins; onnx-native: the function bodies inlined, standard ops only (TensorRT without plugins)")
    add_trt_blocks(p, applies="--target tensorrt")
    p.add_argument("--body", choices=list(BODIES), default="sparse",
                   help="function bodies (portable / onnx-native): sparse computes only the sampled positions "
                   "(NonZero, GatherND, MatMul, row Gather); dense is Conv then mask (default sparse)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 19)")
    p.add_argument("--seed", type=int, help="seed of the model's noise generator (stochastic mode in PyTorch; "
                                            "default: unseeded)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX checker / shape inference")
    add_json(p)
    add_output(p, required=True,
               help="output .onnx path (written atomically); an existing file there is replaced only when it is "
                    "an ONNX model sai wrote (else --force)")
    add_file_force(p, flag="-o", kind=ONNX_KIND)
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sai.errors import SaiError
    from sai.exporter import export_onnx
    from sai.outputs import check_output_file

    # before reading the checkpoint and exporting: a folder, a missing parent, a file sai did not write
    check_output_file(args.output, "-o", kind=ONNX_KIND, force=args.force)
    say = progress_printer(args, "export")
    checkpoint = None
    if args.checkpoint is not None:  # read once: the arch, the options, the weights and the meta from it
        from sai.models.checkpoint import read_checkpoint_file

        say(f"reading {args.checkpoint}")
        checkpoint = read_checkpoint_file(args.checkpoint)
    arch = args.arch
    if arch is None:
        if checkpoint is None:
            raise SaiError("give --arch (e.g. sparse_resnet50) or a --checkpoint to take it from")
        from sai.models.checkpoint import detect_layout

        arch = detect_layout(checkpoint)["arch"]
    say(f"exporting {arch} at {args.shape} (target {args.target}): build, trace and check, up to a minute for a "
        "ResNet-50")
    result = export_onnx(
        arch, args.output,
        input_shape=args.shape, dynamic=args.dynamic, sampling=args.sampling,
        precision=args.precision, target=args.target, body=args.body, opset=args.opset, checkpoint=checkpoint,
        head=args.head, num_classes=args.num_classes, dcn_stages=args.dcn_stages,
        base_width=args.base_width, seed=args.seed, trt_blocks=args.trt_blocks, check=not args.no_check,
        verbose=getattr(args, "verbose", False),
    )
    if args.json:
        print(json.dumps({
            "path": str(result.path), "arch": result.arch, "target": result.target,
            "precision": result.precision, "sampling": result.sampling, "opset": result.opset,
            "inputs": result.input_names, "outputs": result.output_names, "sparse_ops": result.op_counts,
            "export_seconds": round(result.export_seconds, 2), "check_seconds": round(result.check_seconds, 2),
            "random_weights": checkpoint is None,
        }, indent=2))
    else:
        print(result.summary())
        if checkpoint is None:
            print(f"note: no --checkpoint, so {arch} has random weights: right for shapes, speed and parity checks; "
                  "its outputs mean nothing")
    return 0
