"""`sai bench`: p50/p90/p99 latency and throughput of a model on a backend; `--compare-dense` adds
the dense ResNet with the same weights and prints the ratio."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sai.errors import SaiError


def _image_shape(args, engine) -> list[int]:
    if not args.shape:
        ex = engine.metadata.get("example_input_shape") or [1, 3, 224, 224]
        return [args.batch, *[int(v) for v in ex[1:]]]
    vals = [v for v in args.shape.replace("x", ",").split(",") if v.strip()]
    try:
        nums = [int(v) for v in vals]
    except ValueError:
        raise SaiError(f"--shape must be H,W or N,C,H,W integers, got {args.shape!r}") from None
    if len(nums) == 2:
        return [args.batch, 3, *nums]
    if len(nums) == 4:
        return nums
    raise SaiError(f"--shape must be H,W or N,C,H,W, got {args.shape!r}")


def _checkpoint_for(args, engine) -> Path:
    from sai.runtime.loader import read_manifest

    if args.checkpoint:
        return Path(args.checkpoint)
    if engine.backend == "torch" and engine.path:
        return Path(engine.path)
    p = Path(args.model)
    manifest = read_manifest(p if p.is_dir() else p.parent) or {}
    ck = (manifest.get("checkpoint") or {}).get("path")
    if ck and Path(ck).is_file():
        if not args.no_verify:
            from sai.runtime.integrity import verify_checkpoint

            verify_checkpoint(manifest, Path(ck), p if p.is_dir() else p.parent)
        return Path(ck)
    raise SaiError("--compare-dense needs the weights: give --checkpoint CHECKPOINT (or a sai convert OUTDIR "
                   "whose manifest records an existing checkpoint)")


def run(args: argparse.Namespace) -> int:
    import sai.runtime as rt
    from sai.runtime.bench import bench, dense_twin_engine

    engine = rt.load(args.model, backend=args.backend, device=args.device, threads=args.threads, seed=args.seed,
                     verify=not args.no_verify)
    results = []
    with engine:
        shape = _image_shape(args, engine)
        feeds = engine.example_feeds(shape)
        label = str(engine.metadata.get("arch", "model"))
        results.append(bench(engine, feeds, iterations=args.iterations, warmup=args.warmup, label=label))
        if not args.json:
            print(results[-1].line(), flush=True)
        if args.compare_dense:
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency percentiles and throughput on a backend (optionally vs dense)")
    p.add_argument("model", help="sai convert OUTDIR, .onnx, .plan or checkpoint")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    p.add_argument("--device", help="onnxruntime: cpu|cuda|tensorrt; torch: cpu|cuda")
    p.add_argument("--batch", type=int, default=1, help="batch size (with --shape H,W or the model's example size)")
    p.add_argument("--shape", help="H,W or N,C,H,W (default: the export's example input size)")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, help="intra-op threads (onnxruntime/torch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise of stochastic models")
    p.add_argument("--compare-dense", action="store_true", help="also time the dense ResNet with the same weights")
    p.add_argument("--checkpoint", help="weights for --compare-dense (default: the OUTDIR manifest's checkpoint)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the OUTDIR's files against the sha256 in its manifest.json")
    p.set_defaults(func=run)
