"""`sai export-triton`: a Triton model repository from a `sai convert` OUTDIR."""

from __future__ import annotations

import argparse
import sys

from sai.cli.options import add_force, add_no_verify


def run(args: argparse.Namespace) -> int:
    from sai.outputs import after_publish
    from sai.runtime.triton import export_triton, parse_delay_ms, parse_gpus

    with after_publish() as done:  # once the repository is published, a Ctrl-C/SIGTERM no longer fails the run
        try:
            res = export_triton(args.outdir, args.output, name=args.name, max_batch=args.max_batch,
                                instances=args.instances, max_queue_delay_us=parse_delay_ms(args.max_delay_ms),
                                gpus=parse_gpus(args.gpus), verify=not args.no_verify, force=args.force,
                                on_published=done, portable=args.portable_onnx,
                                repository_path=args.repository_path)
        except KeyboardInterrupt:
            if not done.published:
                raise
            print(done.note("export-triton"), file=sys.stderr, flush=True)
            return 0
        return _report(res)


def _report(res: dict) -> int:
    for model, platform in res["models"].items():
        print(f"wrote {res['repo']}/{model} ({platform})")
    if res["skipped"]:
        print(f"tensorrt model skipped: {res['skipped']}")
    if not res["plugin_library"] and res.get("kind") != "detector":
        print("plugin library not found (make plugins); plugins/ not written - see the repository README")
    ort = res.get("ort_ops") or {}
    print(f"onnxruntime model: {ort.get('note', 'portable model.onnx')}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-triton", help="write a Triton model repository (TensorRT plan + onnxruntime models)")
    p.add_argument("outdir", help="a sai convert OUTDIR")
    p.add_argument("-o", "--output", required=True,
                   help="repository directory: new, empty or an earlier sai export-triton output (replaced "
                        "atomically)")
    p.add_argument("--name", help="model name prefix (default: the arch); models are NAME_trt and NAME_onnx; "
                                  "letters, digits, _ - . only")
    p.add_argument("--max-batch", type=int, help="max_batch_size >= 1 (default: the engine profile's max batch); "
                                                 "0 = Triton's 'no batching' (no dynamic batching, dims with batch)")
    p.add_argument("--instances", type=int, default=1, help="instances per model, >= 1 (TensorRT: at least 2)")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="dynamic batching max queue delay, >= 0")
    p.add_argument("--gpus", help="comma list of GPU ids, e.g. 0,1, for the instance groups (default 0 for TensorRT)")
    p.add_argument("--portable-onnx", action="store_true",
                   help="ship the portable model.onnx (function bodies, no custom-op library) as the onnxruntime model "
                        "even where libsai_ort_ops.so is built (default: the fused CPU model with the library)")
    p.add_argument("--repository-path", metavar="PATH",
                   help="the repository's absolute path where Triton runs (e.g. /models in a container); config.pbtxt "
                        "names the custom-op library under it (default: the -o folder)")
    add_no_verify(p)
    add_force(p)
    p.set_defaults(func=run)
