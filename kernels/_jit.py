"""One kernel object, two executions: compiled for CUDA tensors, interpreted for CPU tensors.

``triton.jit`` decides between the two when a module is imported (from ``TRITON_INTERPRET``). Here
each kernel keeps both forms built from the same source, so importing ``sai.kernels`` never
depends on the environment; the launcher picks the form at launch: interpreted under
``TRITON_INTERPRET=1`` (as triton.jit would), else compiled for CUDA tensors. CPU tensors are
accepted only under ``TRITON_INTERPRET=1`` (the interpreter is a test and debugging tool, far too
slow to be a CPU backend; the C++ CPU kernels of ``sai.models`` are that).
"""

from __future__ import annotations

import os

import torch

from sai.errors import SaiError


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class Kernel:
    """A ``@triton.jit`` kernel in both forms; ``kernel.jit`` is the JITFunction (AOT, CUDA)."""

    def __init__(self, fn):
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        self.fn = fn
        self.__name__ = fn.__name__
        self.jit = JITFunction(fn)
        self.interp = InterpretedFunction(fn)

    def __getitem__(self, grid):
        raise TypeError("launch with kernel.on(device)[grid](...)")

    def on(self, device: torch.device):
        if interpreting() and device.type in ("cpu", "cuda"):  # as triton.jit: the env var interprets
            return self.interp
        if device.type == "cuda":
            return self.jit
        raise SaiError(
            f"sai.kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1 for testing), "
            f"got {device.type} tensors: move the inputs to a GPU or use sai.models.ops on the CPU"
        )


def kernel(fn) -> Kernel:
    """Decorator: ``@kernel`` in place of ``@triton.jit``."""
    return Kernel(fn)


def check_device(name: str, *tensors) -> torch.device:
    """The common device of ``tensors`` (None entries skipped); SaiError when they differ."""
    devs = {t.device for t in tensors if t is not None}
    if len(devs) != 1:
        raise SaiError(f"{name}: all tensors must be on one device, got {sorted(str(d) for d in devs)}")
    return devs.pop()


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float(name: str, what: str, t, dtype=None) -> None:
    if t is None:
        return
    if t.dtype not in FLOAT_DTYPES:
        raise SaiError(f"{name}: {what} must be float32, float16 or bfloat16, got {t.dtype}: cast it first")
    if dtype is not None and t.dtype != dtype:
        raise SaiError(f"{name}: {what} is {t.dtype} but the input is {dtype}: cast it to {dtype}")
