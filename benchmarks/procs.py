"""Helpers for the server processes the serve benchmarks (and the serve tests) start: their RSS, a free port,
and reaping one that may still run."""

from __future__ import annotations

import socket
import subprocess


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (/proc), NaN if /proc does not say."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reap(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs (bounded wait), then close its stdout/stderr pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()
