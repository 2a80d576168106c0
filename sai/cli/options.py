"""Option groups shared by the verbs (as Polygraphy's reusable argument groups): each flag is defined
once, with its choices from ``sai.constants`` (the same tuples the library checks), so every verb that
takes it spells, documents and validates it the same way. Nothing heavy is imported here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, Optional

from sai.constants import BACKENDS, PRECISIONS, SAMPLING_MODES

# The conventions every verb follows (README "CLI"):
#   -o/--output PATH   the file or folder the verb writes (older spellings: hidden aliases that warn once)
#   --json             a flag: print the result as JSON on stdout (progress and tables go to stderr then)
#   --shape / --shapes one input size, HxW or NxCxHxW (`,` works as well as `x`); a list of them
#   --iterations / --warmup  timed and untimed repetitions
#   -q/--quiet         no progress lines (on stderr, one per step that can take more than a few seconds)
# and every option has help text that states its default (SaiHelpFormatter adds it where the text does not).


class SaiHelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default: " (default: X)" is appended where the help text does not
    already state one and the default is a value (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (text == argparse.SUPPRESS or "default" in text or not action.option_strings or action.required
                or action.nargs == 0 or any(action.default is v for v in (None, argparse.SUPPRESS, False, True))
                or action.default == ""):
            return text
        return text + " (default: %(default)s)"


class SaiArgumentParser(argparse.ArgumentParser):
    """The parser of every verb (``add_subparsers(parser_class=...)``): SaiHelpFormatter unless given another."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", SaiHelpFormatter)
        super().__init__(*args, **kwargs)


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's dest, prints one warning naming the new one."""

    def __init__(self, option_strings, dest, *, new: str, note: str = "", **kwargs: Any) -> None:
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.note = new, note

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warn_deprecated(parser, str(option_string), self.new, self.note)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def warn_deprecated(parser: argparse.ArgumentParser, old: str, new: str, note: str = "") -> None:
    """``PROG: warning: OLD is deprecated, use NEW`` on stderr, once per parser and spelling."""
    warned = parser.__dict__.setdefault("_sai_warned", set())
    if old not in warned:
        warned.add(old)
        print(f"{parser.prog}: warning: {old} is deprecated, use {new}{note}", file=sys.stderr, flush=True)


def add_alias(p: argparse.ArgumentParser, old: str, *, dest: str, new: str, note: str = "", **kwargs: Any) -> None:
    """``old`` as a hidden, deprecated spelling of ``new`` (same ``dest``; ``type``/``nargs`` as given)."""
    p.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, note=note, default=argparse.SUPPRESS, **kwargs)


def add_output(p: argparse.ArgumentParser, *, help: str, required: bool = False, old: tuple[str, ...] = (),
               default: Optional[str] = None, metavar: str = "PATH") -> None:
    """``-o/--output PATH`` (dest ``output``): what the verb writes; ``old`` spellings stay as deprecated aliases."""
    p.add_argument("-o", "--output", required=required, default=default, metavar=metavar, help=help)
    for flag in old:
        add_alias(p, flag, dest="output", new="-o/--output", metavar=metavar)


def add_json(p: argparse.ArgumentParser, *, what: str = "the result") -> None:
    """``--json``: print ``what`` as JSON on stdout (the one meaning of --json in every verb)."""
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def add_iterations(p: argparse.ArgumentParser, *, default: int, help: str, warmup: Optional[int] = None) -> None:
    """``--iterations N`` (and ``--warmup N`` when ``warmup`` is given): how often a timed step repeats."""
    p.add_argument("--iterations", type=int, default=default, metavar="N", help=help)
    if warmup is not None:
        p.add_argument("--warmup", type=int, default=warmup, metavar="N", help="untimed runs before the timed ones")


def _interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_printer(args: argparse.Namespace, verb: str, *, always: bool = False) -> Callable[[str], None]:
    """A line per step on stderr (``sai VERB: ...``), silent with ``-q``; stdout stays the result. Unless
    ``always``, only where stderr is a terminal: a script or a log gets the result and the one-line error."""
    show = not getattr(args, "quiet", False) and (always or _interactive())

    def say(msg: str) -> None:
        if show:
            print(f"sai {verb}: {msg}", file=sys.stderr, flush=True)

    return say


OFFICIAL_NOTE = ("NOTE: the official SAI-Det code evaluates stochastically (Gumbel noise at test time, T=0.03, "
                 "unseeded), so an official checkpoint reproduces its published test-time densities only with "
                 "stochastic")


def add_backend_args(p: argparse.ArgumentParser, *, threads_help: str = "intra-op threads (onnxruntime/torch)"
                     ) -> None:
    """``--backend``, ``--device``, ``--threads``, ``--seed``: which engine runs the model (``sai.runtime.load``)."""
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="engine that runs the model; auto: from the file (OUTDIR: tensorrt where it holds a "
                        "model.plan and TensorRT works here, else onnxruntime; .onnx: onnxruntime; .plan: "
                        "tensorrt; checkpoint: torch)")
    p.add_argument("--device", help="onnxruntime: cpu|cuda|tensorrt; torch: cpu|cuda (default: cpu; tensorrt: "
                                    "its GPU)")
    add_threads_seed(p, threads_help=threads_help)


def add_threads_seed(p: argparse.ArgumentParser, *, threads_help: str = "intra-op threads (onnxruntime/torch)",
                     seed_help: str = "seed of the random inputs and of the noise of stochastic models") -> None:
    """``--threads`` and ``--seed`` (default 0) of an engine."""
    p.add_argument("--threads", type=int, help=f"{threads_help} (default: the runtime's)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def add_no_verify(p: argparse.ArgumentParser, *, what: str = "the OUTDIR's files") -> None:
    """``--no-verify``: skip the sha256 check of a sai convert OUTDIR (``verify=False``)."""
    p.add_argument("--no-verify", action="store_true",
                   help=f"skip checking {what} against the sha256 in its manifest.json")


SHAPE_FORMS = "HxW or NxCxHxW (`,` works as well as `x`)"


def add_shape(p: argparse.ArgumentParser, *, help: str, default: Optional[str] = None, old: tuple[str, ...] = (),
              metavar: str = "SHAPE") -> None:
    """``--shape`` (dest ``shape``): one input size; ``old`` spellings stay as deprecated aliases."""
    p.add_argument("--shape", default=default, metavar=metavar, help=help)
    for flag in old:
        add_alias(p, flag, dest="shape", new="--shape", metavar=metavar)


def add_image_shape_args(p: argparse.ArgumentParser, *, batch: int,
                         batch_help: str = "images per run (with --shape HxW or the model's example size)",
                         shape_help: str = "input size: HxW (at --batch, with the model's channels) or NxCxHxW "
                                           "(default: the export's example input size)") -> None:
    """``--batch`` and ``--shape`` (read back with ``image_shape``)."""
    p.add_argument("--batch", type=int, default=batch, help=batch_help)
    add_shape(p, help=shape_help)


def add_export_args(p: argparse.ArgumentParser, *, sampling_help: str, precision_default: str = "fp32") -> None:
    """``--sampling`` (sampling_help, then the official-evaluation note) and ``--precision``."""
    p.add_argument("--sampling", choices=list(SAMPLING_MODES), help=f"{sampling_help}. {OFFICIAL_NOTE}")
    p.add_argument("--precision", choices=list(PRECISIONS), default=precision_default,
                   help="weights and activations of the exported model")


TRT_BLOCKS = ("fused", "per-op")  # sai.exporter.trt_blocks.MODES (not imported here: it needs torch)


def add_trt_blocks(p: argparse.ArgumentParser, *, applies: str) -> None:
    """``--trt-blocks fused|per-op`` (None: ``SAI_TRT_SPARSE_BLOCK``, then fused), for ``applies`` (the file it
    shapes: ``--target tensorrt`` for export, model.trt.onnx for convert)."""
    p.add_argument("--trt-blocks", choices=list(TRT_BLOCKS), default=None,
                   help=f"{applies}: fused (default) writes one sai::SparseBlock node per sparse block the plugin "
                   "takes (the others stay per-op, named in one log line); per-op writes SparseSampleConv / "
                   "Interpolate nodes only. Unset: SAI_TRT_SPARSE_BLOCK (1 fused, 0 per-op) or fused")


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
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines (a line per step on stderr, where stderr is a terminal)")


def image_shape(args: argparse.Namespace, engine) -> list[int]:
    """The N,C,H,W to run: ``--shape`` (H,W at ``--batch`` with the model's channels, or N,C,H,W), else the
    export's example size at ``--batch``."""
    from sai.shapes import parse_shape

    example = engine.metadata.get("example_input_shape") or [1, 3, 224, 224]
    if not args.shape:
        return [args.batch, *[int(v) for v in example[1:]]]
    dims = parse_shape(args.shape, "--shape", lengths=(2, 4))
    return [args.batch, int(example[1]), *dims] if len(dims) == 2 else list(dims)


__all__ = ["OFFICIAL_NOTE", "SHAPE_FORMS", "TRT_BLOCKS", "SaiArgumentParser", "SaiHelpFormatter", "add_alias", "add_backend_args",
           "add_export_args", "add_file_force", "add_force", "add_image_shape_args", "add_iterations", "add_json",
           "add_no_verify", "add_output", "add_quiet", "add_shape", "add_threads_seed", "add_trt_blocks", "image_shape",
           "progress_printer", "warn_deprecated"]
