"""Project exceptions: errors a user can cause, with a message naming the problem and the fix."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``str(exc)`` for a one-line message; never raises (an empty or
    unprintable exception gives its type name)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)


class SaiError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


class InputError(SaiError):
    """A request's tensors do not fit the model (name, rank, shape, dtype). Servers answer 4xx."""


class MissingDependencyError(SaiError):
    """An optional dependency (tensorrt, cuda-python, ...) is needed for this path."""

    def __init__(self, module: str, purpose: str, install: str):
        super().__init__(f"{module} is required to {purpose}; install it with: {install}")
        self.module = module


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (by the CLI's handler) so that cleanup runs and nothing half-done stays."""
