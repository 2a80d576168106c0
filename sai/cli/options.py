"""Option groups shared by the verbs (as Polygraphy's reusable argument groups): each flag is defined
once, with its choices from ``sai.constants`` (the same tuples the library checks), so every verb that
takes it spells, documents and validates it the same way. Nothing heavy is imported here."""

from __future__ import annotations

import argparse
from typing import Optional

from sai.constants import BACKENDS, PRECISIONS, SAMPLING_MODES

OFFICIAL_NOTE = ("NOTE: the official SAI-Det code evaluates stochastically (Gumbel noise at test time, T=0.03, "
                 "unseeded), so an official checkpoint reproduces its published test-time densities only with "
                 "stochastic")


def add_backend_args(p: argparse.ArgumentParser, *, threads_help: str = "intra-op threads (onnxruntime/torch)"
                     ) -> None:
    """``--backend``, ``--device``, ``--threads``, ``--seed``: which engine runs the model (``sai.runtime.load``)."""
    p.add_argument("--backend", default="auto", choices=list(BACKENDS))
    p.add_argument("--device", help="onnxruntime: cpu|cuda|tensorrt; torch: cpu|cuda")
    add_threads_seed(p, threads_help=threads_help)


def add_threads_seed(p: argparse.ArgumentParser, *, threads_help: Optional[str] = "intra-op threads "
                     "(onnxruntime/torch)", seed_help: Optional[str] = "seed of the noise of stochastic models"
                     ) -> None:
    """``--threads`` and ``--seed`` (default 0) of an engine."""
    p.add_argument("--threads", type=int, help=threads_help)
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def add_no_verify(p: argparse.ArgumentParser, *, what: str = "the OUTDIR's files") -> None:
    """``--no-verify``: skip the sha256 check of a sai convert OUTDIR (``verify=False``)."""
    p.add_argument("--no-verify", action="store_true",
                   help=f"skip checking {what} against the sha256 in its manifest.json")


def add_image_shape_args(p: argparse.ArgumentParser, *, batch: int, batch_help: Optional[str] = None,
                         shape_help: str = "H,W or N,C,H,W (default: the export's example input size)") -> None:
    """``--batch`` and ``--shape`` (read back with ``image_shape``)."""
    p.add_argument("--batch", type=int, default=batch, help=batch_help)
    p.add_argument("--shape", help=shape_help)


def add_export_args(p: argparse.ArgumentParser, *, sampling_help: str, precision_default: str = "fp32") -> None:
    """``--sampling`` (sampling_help, then the official-evaluation note) and ``--precision``."""
    p.add_argument("--sampling", choices=list(SAMPLING_MODES), help=f"{sampling_help}. {OFFICIAL_NOTE}")
    p.add_argument("--precision", choices=list(PRECISIONS), default=precision_default)


def add_force(p: argparse.ArgumentParser, *, flag: str = "-o") -> None:
    """``--force``: replace an output folder that holds files sai did not write (``sai.outputs``)."""
    from sai.outputs import MARKER_NAME

    p.add_argument("--force", action="store_true",
                   help=f"replace the {flag} folder even if it holds files sai did not write: the folder and "
                        "EVERYTHING in it are deleted (symbolic links are removed, not followed; never the root, "
                        "your home or current folder, or one holding an input). Without it, an existing folder "
                        f"is replaced only when empty or an earlier output of this command (its {MARKER_NAME} "
                        "lists every file in it, unchanged); anything else is refused before any work")


def add_file_force(p: argparse.ArgumentParser, *, flag: str, kind: str) -> None:
    """``--force``: overwrite the ``flag`` file even when sai did not write it (``sai.outputs.file_owner_reason``)."""
    what = "an ONNX model written by sai" if kind == "onnx" else f"a {kind} JSON written by sai (its \"sai_output\" entry)"
    p.add_argument("--force", action="store_true",
                   help=f"overwrite an existing {flag} file even if sai did not write it. Without it, an existing file "
                        f"there is overwritten only when it is {what} and no sai output folder lists it; anything "
                        "else (your file, a symbolic link) is refused before any work")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def image_shape(args: argparse.Namespace, engine) -> list[int]:
    """The N,C,H,W to run: ``--shape`` (H,W at ``--batch`` with the model's channels, or N,C,H,W), else the
    export's example size at ``--batch``."""
    from sai.shapes import parse_shape

    example = engine.metadata.get("example_input_shape") or [1, 3, 224, 224]
    if not args.shape:
        return [args.batch, *[int(v) for v in example[1:]]]
    dims = parse_shape(args.shape, "--shape", lengths=(2, 4))
    return [args.batch, int(example[1]), *dims] if len(dims) == 2 else list(dims)


__all__ = ["OFFICIAL_NOTE", "add_backend_args", "add_export_args", "add_file_force", "add_force", "add_image_shape_args",
           "add_no_verify", "add_quiet", "add_threads_seed", "image_shape"]
