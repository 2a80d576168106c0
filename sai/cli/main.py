"""Entry point of the `sai` console script.

Each verb lives in its own module under ``sai.cli`` and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` to a ``run(args) -> int`` callable. Verb modules
import nothing heavy at module level, so ``sai --help`` works where torch or TensorRT are missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sai import __version__
from sai.errors import SaiError

# Verb modules, in the order `sai --help` lists them. Later issues append here.
VERBS = ["doctor", "flops", "bench-ops", "export", "info", "convert", "bench", "serve", "validate", "export-triton", "train-demo", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sai",
        description="Deploy spatially adaptive CNNs (SparseResNet) to ONNX, ONNX Runtime and TensorRT.",
    )
    parser.add_argument("--version", action="version", version=f"sai {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name in VERBS:
        importlib.import_module(f"sai.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SaiError as exc:
        if args.verbose:
            raise
        print(f"sai {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sai {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
