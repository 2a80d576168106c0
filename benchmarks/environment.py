"""Where a measurement was taken: CPU, cores, threads, load, library versions (printed and stored beside
every benchmark result, so that a number is never read without its machine)."""

from __future__ import annotations

import os
import platform
import time
from typing import Optional

from sai.runtime.environment import versions

PACKAGES = ("sai-deploy", "torch", "onnxruntime", "onnx", "numpy", "matplotlib")
ENV_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "SAI_ORT_OPS")  # settings that change the timings


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stamp(threads: Optional[int] = None) -> dict:
    """The environment as a dict: cpu, cores (usable by this process), threads (as used; torch's default when
    None), load average, OS, Python and package versions (None where a package is not installed)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if threads is None:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:
            threads = cores
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    found = versions(PACKAGES)  # python and the installed ones
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_model(), "cores": cores, "threads": threads,
            "load_average": load, "os": f"{platform.system()} {platform.release()}",
            "python": found["python"], "versions": {p: found.get(p) for p in PACKAGES},
            "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ}}


def one_line(env: dict) -> str:
    """``stamp()`` in one line, e.g. for a table's caption."""
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    load = "/".join(str(v) for v in env["load_average"]) if env.get("load_average") else "n/a"
    evs = "".join(f", {k}={v}" for k, v in env.get("env", {}).items())
    return (f"{env['cpu']}, {env['cores']} cores usable, {env['threads']} thread(s){evs}, load {load}; "
            f"{env['os']}, Python {env['python']}; {vers}; {env['date']}")
