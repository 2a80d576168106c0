"""Optional heavy modules (torch, onnxruntime, tensorrt, cuda-python, tritonclient, triton), imported when
first used, so ``sai --help`` and the CPU paths work where one is missing, and one message where it is.

``lazy_import("onnxruntime", purpose="run the onnxruntime backend")`` returns a ``LazyModule``: nothing is
imported until an attribute is read (or ``.load()`` is called); then a missing module, or one whose native
library fails to load, raises ``MissingDependencyError``:

    onnxruntime is required to run the onnxruntime backend; install it with: pip install 'sai-deploy[cpu]' ...

``INSTALL`` holds the fix of every optional dependency, also what ``sai doctor`` prints.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Optional

from sai.errors import MissingDependencyError

# distribution -> how to install it (the fix in every message about it)
INSTALL = {
    "torch": "pip install torch==2.13.0 (the CPU build; an unpinned torch pulls a multi-GB CUDA build)",
    "onnxruntime": "pip install 'sai-deploy[cpu]' (onnxruntime), or 'sai-deploy[gpu]' (onnxruntime-gpu) on an "
                   "NVIDIA GPU",
    "tensorrt": "pip install tensorrt on a machine with an NVIDIA GPU and the TensorRT library (libnvinfer)",
    "cuda-python": "pip install 'sai-deploy[gpu]' (or 'cuda-python>=12,<14')",
    "tritonclient": "pip install 'sai-deploy[triton]' (tritonclient[grpc])",
    "triton": "pip install 'sai-deploy[kernels]' (triton==3.6.0)",
    "onnx": "pip install 'onnx==1.23.*'",
    "onnxscript": "pip install 'onnxscript==0.7.*'",
    "polygraphy": "pip install 'polygraphy==0.53.*'",
}


def _detail(exc: BaseException, names: Sequence[str]) -> str:
    """`` (<why>)`` unless the module is simply not installed."""
    if isinstance(exc, ModuleNotFoundError) and any(n == exc.name or n.startswith(f"{exc.name}.") for n in names):
        return ""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return f" ({first[:120]})"


class LazyModule:
    """A module imported on first use (``.load()`` or any attribute)."""

    def __init__(self, name: str, purpose: str, dist: Optional[str] = None, install: Optional[str] = None,
                 fallbacks: Sequence[str] = ()):
        self._names = (name, *fallbacks)
        self._dist = dist or name.split(".")[0]
        self._purpose = purpose
        self._install = install or INSTALL.get(self._dist, f"pip install {self._dist}")

    def load(self) -> ModuleType:
        """The module (imported now unless ``sys.modules`` has it); MissingDependencyError naming the fix
        where it cannot be imported."""
        first: Optional[BaseException] = None
        for name in self._names:
            try:
                return importlib.import_module(name)
            except Exception as exc:  # ImportError, or a wheel whose native library fails to load
                first = first or exc
        assert first is not None
        raise MissingDependencyError(self._dist, self._purpose + _detail(first, self._names), self._install) from None

    def available(self) -> bool:
        """Whether the module imports (without raising)."""
        try:
            self.load()
        except MissingDependencyError:
            return False
        return True

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._names[0]}>"


def lazy_import(name: str, *, purpose: str, dist: Optional[str] = None, install: Optional[str] = None,
                fallbacks: Sequence[str] = ()) -> LazyModule:
    """``name`` imported on first use; ``purpose`` completes "<dist> is required to ..."; ``dist`` is the
    distribution to name (default: the top-level package), ``install`` the fix (default ``INSTALL[dist]``),
    ``fallbacks`` other import names of the same thing (older layouts)."""
    return LazyModule(name, purpose, dist, install, fallbacks)


__all__ = ["INSTALL", "LazyModule", "lazy_import"]
