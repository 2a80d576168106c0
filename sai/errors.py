"""Project exceptions: errors a user can cause, with a message naming the problem and the fix."""


class SaiError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


class MissingDependencyError(SaiError):
    """An optional dependency (tensorrt, cuda-python, ...) is needed for this path."""

    def __init__(self, module: str, purpose: str, install: str):
        super().__init__(f"{module} is required to {purpose}; install it with: {install}")
        self.module = module


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (by the CLI's handler) so that cleanup runs and nothing half-done stays."""
