"""`sai bench-ops`: sparse vs dense speed of the sai ops, a block and a model, in one run."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from sai.cli.options import add_alias, add_file_force, add_iterations, add_output, warn_deprecated

# "onnx" is both onnx sections: the single-op cases and the whole model
SECTIONS = ("op", "block", "model", "onnx-op", "onnx-model")
ALIASES = {"onnx": ("onnx-op", "onnx-model")}
DEFAULT_SIZES = "256x416 512x832 800x1333"
JSON_KIND = "sai-bench-ops"  # the "sai_output" tag of -o files (sai.outputs.json_tag)


def _sizes(values) -> list[tuple[int, int]]:
    """``--shapes``: ``HxW`` items separated by spaces or commas (the old ``--sizes 256x416,512x832``); an item
    without an ``x`` is one ``H,W`` (``--shapes 64,64``). Each goes through ``parse_shape``."""
    from sai.errors import SaiError
    from sai.shapes import parse_shape

    items: list[str] = []
    for token in [values] if isinstance(values, str) else list(values):
        for word in token.split():
            items += [t for t in word.split(",") if t.strip()] if "x" in word.lower() else [word]
    out = [parse_shape(item, "--shapes item", lengths=(2,), form=f"HxW (e.g. --shapes {DEFAULT_SIZES})")
           for item in items]
    if not out:
        raise SaiError(f"--shapes: give at least one HxW (e.g. --shapes {DEFAULT_SIZES})")
    return out  # type: ignore[return-value]


class _JsonFlagOrPath(argparse.Action):
    """``--json``: print the results as JSON on stdout. ``--json PATH`` (its meaning before the CLI convention)
    still writes PATH, with one warning naming ``-o PATH``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values is None or values is True:  # no value: argparse passes the const
            namespace.json = True
            return
        warn_deprecated(parser, "--json PATH", "-o PATH", " (--json alone prints the JSON on stdout)")
        namespace.output = values


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
    argv = ["bench-ops", "--sections", args.sections, "--iterations", str(args.iterations), "--threads",
            str(args.threads), "--model-arch", args.model_arch, "--shapes",
            *(f"{h}x{w}" for h, w in _sizes(args.shapes)), "--density", str(args.density)]
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
    sizes = _sizes(args.shapes)
    if args.iterations < 1:
        raise SaiError(f"--iterations must be at least 1, got {args.iterations}")
    if args.output:  # before minutes of timing: a folder, a missing parent, a file sai did not write
        from sai.outputs import check_output_file

        check_output_file(args.output, "-o", kind=JSON_KIND, force=args.force)
    log = sys.stderr if args.json else sys.stdout  # --json: stdout is the JSON document alone
    sweep = _densities(args.densities) if args.densities else []
    if not 0 < args.density <= 1:
        raise SaiError(f"--density {args.density}: must be in (0, 1]")
    options = {"base_width": args.model_base_width} if args.model_base_width else None
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    backend = "C++ (sai_cpu)" if cpu_kernels.active() else "PyTorch reference (C++ kernels not built)"
    env = environment.stamp(threads)
    print(f"sai bench-ops: {threads} thread(s), CPU kernels: {backend}", file=log, flush=True)
    print(f"  environment: {environment.one_line(env)}", file=log, flush=True)
    arch, reps = args.model_arch, max(3, args.iterations // 2)
    shown = ",".join(f"{h}x{w}" for h, w in sizes)
    # the density sweep runs at the largest size, beside the size sweep at --density
    at = f" and densities {','.join(str(d) for d in sweep)} at {sizes[-1][0]}x{sizes[-1][1]}" if sweep else ""
    cases = []
    if "op" in sections:
        print("  ops ...", file=log, flush=True)
        cases += opbench.bench_ops(args.iterations)
    if "block" in sections:
        print("  block ...", file=log, flush=True)
        cases += opbench.bench_block(args.iterations)
    if "model" in sections:
        print(f"  model {arch} {shown}{at} (torch) ...", file=log, flush=True)
        cases += opbench.bench_model(reps, arch, sizes, args.density, more_densities=sweep, options=options)
    if "onnx-op" in sections:
        print("  onnx ops ...", file=log, flush=True)
        cases += opbench.bench_onnx_op(max(reps, 5), threads=threads)
    if "onnx-model" in sections:
        print(f"  onnx {arch} {shown}{at} (export + onnxruntime) ...", file=log, flush=True)
        cases += opbench.bench_onnx(reps, arch, sizes, args.density, threads, more_densities=sweep, options=options)
    print(opbench.format_table(cases, threads), file=log)
    if args.output or args.json:
        from sai.outputs import json_tag

        text = opbench.to_json(cases, threads, backend, command=_command(args), environment=env,
                               environment_line=environment.one_line(env), arch=arch,
                               sizes=[list(hw) for hw in sizes], density=args.density,
                               densities=sorted({args.density, *sweep}), options=options, **json_tag(JSON_KIND))
        if args.json:
            print(text)
        if args.output:
            from sai.outputs import write_atomic

            path = Path(args.output)
            write_atomic(path, text, flag="-o", kind=JSON_KIND, force=args.force)
            print(f"wrote {path}", file=log)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-ops", help="sparse vs dense speed: ops, a block, a model (CPU)")
    p.add_argument("--sections", default="op,block,model,onnx",
                   help="comma list of " + ",".join(SECTIONS) + " (onnx = onnx-op,onnx-model)")
    add_iterations(p, default=7, help="timed repeats per case (the median is reported; the model sections time "
                                      "half as many, at least 3)")
    add_alias(p, "--repeats", dest="iterations", new="--iterations", type=int, metavar="N")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    p.add_argument("--model-arch", default="sparse_resnet101", help="network of the model sections")
    p.add_argument("--model-base-width", type=int, default=0,
                   help="base width of the model sections' network (default: the arch's, 64)")
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SIZES, metavar="HxW",
                   help=f"input sizes of the model sections (default {DEFAULT_SIZES}; the largest "
                        "sparse_resnet101 line takes minutes on 2 cores)")
    for old in ("--sizes", "--model-shape"):  # a comma list of HxW; --model-shape: one size
        add_alias(p, old, dest="shapes", new="--shapes", metavar="HxW,...")
    p.add_argument("--density", type=float, default=0.3, help="target mask density of the model sections")
    p.add_argument("--densities", default="",
                   help="comma list: also time the model sections at these densities, at the largest size "
                        "(default: none)")
    add_output(p, help="also write the results as JSON (with the environment and the command) to PATH; an existing "
                       "file there is replaced only when it is an earlier bench-ops JSON (default: none)")
    p.add_argument("--json", nargs="?", const=True, default=False, metavar="PATH", action=_JsonFlagOrPath,
                   help="print the results as JSON on stdout (the table and progress go to stderr); "
                        "--json PATH is the deprecated spelling of -o PATH (default: off)")
    add_file_force(p, flag="-o", kind=JSON_KIND)
    p.set_defaults(func=run)
