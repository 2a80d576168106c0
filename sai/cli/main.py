"""Entry point of the `sai` console script.

Each verb lives in its own module under ``sai.cli`` and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` to a ``run(args) -> int`` callable. Verb modules
import nothing heavy at module level, so ``sai --help`` works where torch or TensorRT are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

from sai import __version__
from sai.cli.options import SaiArgumentParser
from sai.errors import SaiError, Terminated, first_line

# Verb modules, in the order `sai --help` lists them. Later issues append here.
VERBS = ["doctor", "flops", "bench-ops", "export", "info", "convert", "bench", "serve", "validate", "export-triton", "train-demo", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sai",
        description="Deploy spatially adaptive CNNs (SparseResNet) to ONNX, ONNX Runtime and TensorRT.",
    )
    parser.add_argument("--version", action="version", version=f"sai {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=SaiArgumentParser)
    for name in VERBS:
        importlib.import_module(f"sai.cli.{name.replace('-', '_')}").add_parser(sub)
    return parser


EXIT_ERROR = 2  # an error the user can fix (SaiError, OSError, MemoryError): one line naming it
EXIT_INTERNAL = 3  # an unexpected exception (a bug): one line, the traceback with -v
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader (128 + SIGPIPE), as other command-line tools


def _sai_message(exc: SaiError) -> str:
    """A SaiError's own text (a few carry a compiler's output on purpose), never empty, never raising."""
    try:
        text = str(exc).strip()
    except Exception:
        text = ""
    return text or first_line(exc)


def _environment_error(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        detail = first_line(exc)
        detail = "" if detail == "MemoryError" else f" ({detail})"
        return (f"out of memory{detail}; use a smaller input shape or batch, or a machine with more memory")
    from sai.outputs import os_error_message

    action = "cannot read or write" if getattr(exc, "filename", None) else "system error"
    return os_error_message(exc, action=action)  # type: ignore[arg-type]


def _say(verb: str, message: str) -> None:
    try:
        print(f"sai {verb}: {message}", file=sys.stderr, flush=True)
    except Exception:  # stderr closed or broken: nothing more to do
        pass


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a verb runs, SIGTERM raises ``Terminated`` (a KeyboardInterrupt) so cleanup runs; verbs that
    handle SIGTERM themselves (serve drains requests) install their own handler over this one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError, TypeError):
            if signal.getsignal(signal.SIGTERM) is handler:  # a verb that set another (SIG_IGN once its output
                signal.signal(signal.SIGTERM, old)  # was published: sai.outputs.after_publish) keeps it


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    verb = getattr(args, "verb", None) or "sai"
    verbose = bool(getattr(args, "verbose", False))
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except SaiError as exc:
        if verbose:
            raise
        _say(verb, f"error: {_sai_message(exc)}")
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        _say(verb, "terminated (SIGTERM)" if terminated else "interrupted")
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except BrokenPipeError:  # `sai info m.onnx | head`: the reader is gone, which is not an error of sai
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (OSError, MemoryError) as exc:
        if verbose:
            raise
        _say(verb, f"error: {_environment_error(exc)}")
        return EXIT_ERROR
    except Exception as exc:
        if verbose:
            raise
        _say(verb, f"internal error: {type(exc).__name__}: {first_line(exc)} (a bug in sai; run "
                   f"`sai -v {verb} ...` for the traceback and report it)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
