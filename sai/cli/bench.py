"""`sai bench`: p50/p90/p99 latency and throughput of a model on a backend; `--compare-dense` adds
the dense ResNet with the same weights and prints the ratio."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sai.cli.options import (
    add_backend_args,
    add_image_shape_args,
    add_iterations,
    add_json,
    add_no_verify,
    add_quiet,
    image_shape,
    progress_printer,
)
from sai.constants import TORCH_PRECISIONS
from sai.errors import SaiError


def _checkpoint_for(args, engine):
    """The weights of the dense twin, read once (a ``LoadedCheckpoint``: checked and loaded from the same bytes)."""
    from sai.models.checkpoint import read_checkpoint_file
    from sai.runtime.loader import read_manifest

    if args.checkpoint:
        return read_checkpoint_file(args.checkpoint)
    if engine.backend == "torch" and engine.path:
        return read_checkpoint_file(engine.path)
    p = Path(args.model)
    manifest = read_manifest(p if p.is_dir() else p.parent) or {}
    ck = (manifest.get("checkpoint") or {}).get("path")
    if ck and Path(ck).is_file():
        loaded = read_checkpoint_file(ck)
        if not args.no_verify:
            from sai.runtime.integrity import verify_checkpoint

            verify_checkpoint(manifest, Path(ck), p if p.is_dir() else p.parent, loaded.sha256)
        return loaded
    raise SaiError("--compare-dense needs the weights: give --checkpoint CHECKPOINT (or a sai convert OUTDIR "
                   "whose manifest records an existing checkpoint)")


def run(args: argparse.Namespace) -> int:
    import sai.runtime as rt
    from sai.runtime.bench import bench, bench_feeds, dense_twin_engine

    options = {}
    if args.precision or args.cuda_graphs:
        from sai.runtime.loader import resolve

        backend = resolve(args.model, args.backend).backend
        if backend != "torch":
            raise SaiError(f"--precision and --cuda-graphs are options of the torch backend (a checkpoint); "
                           f"{args.model} runs on {backend}, at the precision sai convert gave it"
                           + (" and with CUDA graphs already" if backend == "tensorrt" else ""))
        options = {"precision": args.precision or "fp32", "cuda_graphs": args.cuda_graphs}
    say = progress_printer(args, "bench")
    say(f"loading {args.model} (backend {args.backend})")
    engine = rt.load(args.model, backend=args.backend, device=args.device, threads=args.threads, seed=args.seed,
                     verify=not args.no_verify, **options)
    if getattr(engine, "kind", None) == "detector":
        with engine:
            return _run_detector(args, engine, say)
    results = []
    with engine:
        shape = image_shape(args, engine)
        feeds = bench_feeds(engine, shape)  # the profile and the memory first: nothing allocated when refused
        label = str(engine.metadata.get("arch", "model"))
        say(f"timing {label} on {engine.backend}: {args.warmup} warmup + {args.iterations} runs at {shape}")
        results.append(bench(engine, feeds, iterations=args.iterations, warmup=args.warmup, label=label))
        if not args.json:
            print(results[-1].line(), flush=True)
        if args.compare_dense:
            say("building the dense twin (same weights) and timing it")
            twin = dense_twin_engine(engine, _checkpoint_for(args, engine), threads=args.threads)
            with twin:
                results.append(bench(twin, twin.example_feeds(shape), iterations=args.iterations,
                                     warmup=args.warmup, label=f"{twin.metadata.get('arch')} (dense twin)"))
            if not args.json:
                print(results[-1].line())
    report = {"model": str(args.model), "results": [r.to_dict() for r in results]}
    if args.compare_dense:
        ratio = results[0].p50_ms / results[1].p50_ms
        report["sparse_over_dense_p50"] = ratio
        if not args.json:
            verdict = f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"
            print(f"sparse/dense p50 latency ratio: {ratio:.3f} (sparse is {verdict} than dense)")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _run_detector(args: argparse.Namespace, engine, say) -> int:
    """``sai bench`` on a detector OUTDIR: end-to-end latency (images in, detections out) on random uint8 images
    (``--batch`` of them, ``--shape`` HxW or the preset's scale), the backbone's share, and with
    ``--compare-dense`` the dense twin (same weights) on the same images."""
    import numpy as np

    from sai.runtime.bench import bench_detector, dense_twin_detector_engine, detector_line
    from sai.runtime.loader import read_manifest

    if args.precision or args.cuda_graphs:
        raise SaiError("--precision and --cuda-graphs do not apply to detectors; leave them out")
    if args.checkpoint:
        raise SaiError("--checkpoint does not apply to a detector OUTDIR (its manifest records the checkpoint)")
    outdir = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
    manifest = read_manifest(outdir) or {}
    shape = getattr(args, "shape", None)
    if shape:
        from sai.shapes import parse_shape

        dims = parse_shape(shape, "--shape", lengths=(2, 4), form="HxW or NxCxHxW")
        h, w = int(dims[-2]), int(dims[-1])
    else:
        h, w = min(engine.preprocessing["img_scale"]), max(engine.preprocessing["img_scale"])
    rng = np.random.default_rng(args.seed or 0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.batch)]
    label = str(engine.metadata.get("preset", "detector"))
    say(f"timing {label} end to end on {engine.backend}/{engine.variant}: {args.warmup} warmup + "
        f"{args.iterations} runs, {args.batch} image(s) of {h}x{w}")
    results = [bench_detector(engine, images, iterations=args.iterations, warmup=args.warmup, label=label)]
    if not args.json:
        print(detector_line(results[-1]), flush=True)
    if args.compare_dense:
        say("building the dense twin detector (same weights) and timing it")
        with dense_twin_detector_engine(engine, manifest, outdir, threads=args.threads) as twin:
            results.append(bench_detector(twin, images, iterations=args.iterations, warmup=args.warmup,
                                          label=f"{label} (dense twin)"))
        if not args.json:
            print(detector_line(results[-1]))
    report = {"model": str(args.model), "kind": "detector", "results": results}
    if args.compare_dense:
        ratio = results[0]["p50_ms"] / results[1]["p50_ms"]
        report["sparse_over_dense_p50"] = ratio
        if not args.json:
            verdict = f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"
            print(f"sparse/dense end-to-end p50 ratio: {ratio:.3f} (sparse is {verdict} than dense)")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency percentiles and throughput on a backend (optionally vs dense)")
    p.add_argument("model", help="sai convert OUTDIR, .onnx, .plan or checkpoint")
    add_backend_args(p)
    add_image_shape_args(p, batch=1)
    add_iterations(p, default=50, warmup=5, help="timed runs (the percentiles are over these)")
    p.add_argument("--compare-dense", action="store_true", help="also time the dense ResNet with the same weights")
    p.add_argument("--checkpoint", help="weights for --compare-dense (default: the OUTDIR manifest's checkpoint)")
    add_json(p, what="the results")
    p.add_argument("--precision", choices=list(TORCH_PRECISIONS),
                   help="torch backend: run the checkpoint in this precision (the mask predictors stay fp32); "
                        "ONNX models and engines run at the precision sai convert gave them (default: fp32)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="torch backend on CUDA: capture one CUDA graph per input shape and replay it "
                        "(TensorRT engines replay graphs already)")
    add_no_verify(p)
    add_quiet(p)
    p.set_defaults(func=run)
