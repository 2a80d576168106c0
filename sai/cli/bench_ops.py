"""`sai bench-ops`: sparse vs dense speed of the sai ops, a block and a model, in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

SECTIONS = ("op", "block", "model", "onnx")


def run(args: argparse.Namespace) -> int:
    import torch

    from sai.benchmarks import opbench
    from sai.errors import SaiError
    from sai.models import cpu_kernels

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SaiError(f"unknown section(s) {bad}: choose from {','.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    backend = "C++ (sai_cpu)" if cpu_kernels.active() else "PyTorch reference (C++ kernels not built)"
    print(f"sai bench-ops: {threads} thread(s), CPU kernels: {backend}", flush=True)
    cases = []
    if "op" in sections:
        print("  ops ...", flush=True)
        cases += opbench.bench_ops(args.repeats)
    if "block" in sections:
        print("  block ...", flush=True)
        cases += opbench.bench_block(args.repeats)
    if "model" in sections:
        h, w = (int(v) for v in args.model_shape.split("x"))
        print(f"  model {args.model_arch} {h}x{w} ...", flush=True)
        cases += opbench.bench_model(max(3, args.repeats // 2), args.model_arch, h, w, args.density)
    if "onnx" in sections:
        h, w = (int(v) for v in args.model_shape.split("x"))
        print(f"  onnx {args.model_arch} {h}x{w} (export + onnxruntime) ...", flush=True)
        cases += opbench.bench_onnx(max(3, args.repeats // 2), args.model_arch, h, w, args.density, threads)
    print(opbench.format_table(cases, threads))
    if args.json:
        path = Path(args.json)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(opbench.to_json(cases, threads, backend))
        tmp.replace(path)
        print(f"wrote {path}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-ops", help="sparse vs dense speed: ops, a block, a model (CPU)")
    p.add_argument("--sections", default="op,block,model,onnx", help="comma list of op,block,model,onnx")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per case (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    p.add_argument("--model-arch", default="sparse_resnet101")
    p.add_argument("--model-shape", default="512x832", help="HxW of the model input")
    p.add_argument("--density", type=float, default=0.3, help="target mask density of the model")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=run)
