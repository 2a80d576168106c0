"""`sai bench-ops`: sparse vs dense speed of the sai ops, a block and a model, in one run."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from sai.cli.options import add_file_force

# "onnx" is both onnx sections: the single-op cases and the whole model
SECTIONS = ("op", "block", "model", "onnx-op", "onnx-model")
ALIASES = {"onnx": ("onnx-op", "onnx-model")}
DEFAULT_SIZES = "256x416,512x832,800x1333"
JSON_KIND = "sai-bench-ops"  # the "sai_output" tag of --json files (sai.outputs.json_tag)


def _sizes(text: str) -> list[tuple[int, int]]:
    """``--sizes``: a comma list of ``HxW`` (each item through ``parse_shape``)."""
    from sai.errors import SaiError
    from sai.shapes import parse_shape

    out = [parse_shape(item, "--sizes entry", lengths=(2,), form="HxW")
           for item in (t.strip() for t in text.split(",")) if item]
    if not out:
        raise SaiError(f"--sizes: give at least one HxW (e.g. {DEFAULT_SIZES})")
    return out  # type: ignore[return-value]


def _densities(text: str) -> list[float]:
    from sai.errors import SaiError

    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SaiError(f"--densities: {text!r} is not a comma list of numbers in (0, 1]") from None
    if any(not 0 < v <= 1 for v in vals):
        raise SaiError(f"--densities: {text!r}: every density must be in (0, 1]")
    return vals


def _sections(text: str) -> list[str]:
    from sai.errors import SaiError

    out: list[str] = []
    for s in (t.strip() for t in text.split(",")):
        if not s:
            continue
        for name in ALIASES.get(s, (s,)):
            if name not in SECTIONS:
                raise SaiError(f"unknown section {s!r}: choose from {','.join(SECTIONS + tuple(ALIASES))}")
            if name not in out:
                out.append(name)
    return out


def _command(args: argparse.Namespace) -> str:
    """The command that reproduces this run (every option spelled out)."""
    argv = ["bench-ops", "--sections", args.sections, "--repeats", str(args.repeats), "--threads", str(args.threads),
            "--model-arch", args.model_arch, "--sizes", args.sizes, "--density", str(args.density)]
    if args.model_base_width:
        argv += ["--model-base-width", str(args.model_base_width)]
    if args.densities:
        argv += ["--densities", args.densities]
    return "sai " + " ".join(shlex.quote(a) for a in argv)


def run(args: argparse.Namespace) -> int:
    # OpenMP threads that spin-wait after each parallel region take the cores from the call timed next
    # (sparse and dense run in turn): on 2 shared cores torch ran 6-8x slower with spinning. The same as
    # onnxruntime's sessions here (allow_spinning 0). Applies where torch is not imported yet (the CLI); a
    # value in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from sai.benchmarks import environment, opbench
    from sai.errors import SaiError
    from sai.models import cpu_kernels

    sections = _sections(args.sections)
    sizes = _sizes(args.sizes)
    if args.json:  # before minutes of timing: a folder, a missing parent, a file sai did not write
        from sai.outputs import check_output_file

        check_output_file(args.json, "--json", kind=JSON_KIND, force=args.force)
    sweep = _densities(args.densities) if args.densities else []
    if not 0 < args.density <= 1:
        raise SaiError(f"--density {args.density}: must be in (0, 1]")
    options = {"base_width": args.model_base_width} if args.model_base_width else None
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    backend = "C++ (sai_cpu)" if cpu_kernels.active() else "PyTorch reference (C++ kernels not built)"
    env = environment.stamp(threads)
    print(f"sai bench-ops: {threads} thread(s), CPU kernels: {backend}", flush=True)
    print(f"  environment: {environment.one_line(env)}", flush=True)
    arch, reps = args.model_arch, max(3, args.repeats // 2)
    shown = ",".join(f"{h}x{w}" for h, w in sizes)
    # the density sweep runs at the largest size, beside the size sweep at --density
    at = f" and densities {','.join(str(d) for d in sweep)} at {sizes[-1][0]}x{sizes[-1][1]}" if sweep else ""
    cases = []
    if "op" in sections:
        print("  ops ...", flush=True)
        cases += opbench.bench_ops(args.repeats)
    if "block" in sections:
        print("  block ...", flush=True)
        cases += opbench.bench_block(args.repeats)
    if "model" in sections:
        print(f"  model {arch} {shown}{at} (torch) ...", flush=True)
        cases += opbench.bench_model(reps, arch, sizes, args.density, more_densities=sweep, options=options)
    if "onnx-op" in sections:
        print("  onnx ops ...", flush=True)
        cases += opbench.bench_onnx_op(max(reps, 5), threads=threads)
    if "onnx-model" in sections:
        print(f"  onnx {arch} {shown}{at} (export + onnxruntime) ...", flush=True)
        cases += opbench.bench_onnx(reps, arch, sizes, args.density, threads, more_densities=sweep, options=options)
    print(opbench.format_table(cases, threads))
    if args.json:
        from sai.outputs import json_tag, write_atomic

        path = Path(args.json)
        command = _command(args)
        write_atomic(path, opbench.to_json(cases, threads, backend, command=command, environment=env,
                                           environment_line=environment.one_line(env), arch=arch,
                                           sizes=[list(hw) for hw in sizes], density=args.density,
                                           densities=sorted({args.density, *sweep}), options=options,
                                           **json_tag(JSON_KIND)),
                     flag="--json", kind=JSON_KIND, force=args.force)
        print(f"wrote {path}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-ops", help="sparse vs dense speed: ops, a block, a model (CPU)")
    p.add_argument("--sections", default="op,block,model,onnx",
                   help="comma list of " + ",".join(SECTIONS) + " (onnx = onnx-op,onnx-model)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per case (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    p.add_argument("--model-arch", default="sparse_resnet101")
    p.add_argument("--model-base-width", type=int, default=0,
                   help="base width of the model sections' network (default: the arch's, 64)")
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help=f"HxW input sizes of the model sections, comma list (default {DEFAULT_SIZES}; the "
                        "largest sparse_resnet101 line takes minutes on 2 cores)")
    p.add_argument("--model-shape", dest="sizes", help=argparse.SUPPRESS)  # the old name of a one-size --sizes
    p.add_argument("--density", type=float, default=0.3, help="target mask density of the model sections")
    p.add_argument("--densities", default="",
                   help="comma list: also time the model sections at these densities, at the largest size")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (with the environment); an existing "
                                                  "file there is replaced only when it is an earlier bench-ops JSON")
    add_file_force(p, flag="--json", kind=JSON_KIND)
    p.set_defaults(func=run)
