"""The onnxruntime custom-op library of the sai ops (libsai_ort_ops.so): find it, register it.

``make install`` builds it (``python -m sai.runtime.build_ort_ops``) into ``runtime/lib/`` (inside the
package, found through the package; no system paths searched). Registered on a session's options,
its C++ kernels (the ones of the PyTorch extension) run the ``sai::SparseSampleConv`` and
``sai::Interpolate`` nodes instead of the model-local function bodies: onnxruntime prefers a
registered custom op over a local function of the same domain and op_type, so the same portable
``model.onnx`` runs either way (``tests/test_ort_ops.py`` checks both agree). Without the library the
function bodies run (the portable path), which is also what Polygraphy's CLI runs.

Off by default: on sparse_resnet101 it is not faster than the portable function bodies (measured:
docs/benchmarks.md; its OpenBLAS GEMMs are slower than onnxruntime's prepacked MLAS ones, and the
portable export's NHWC transposes stay), so using it automatically would make the default path slower. ``SAI_ORT_OPS=1`` turns it on;
``$SAI_ORT_OPS_LIBRARY`` names another build (and turns it on); ``SAI_ORT_OPS=0`` keeps it off.
The kernels are CPU kernels: sessions on the CUDA or TensorRT execution provider keep the bodies.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from sai.errors import MissingDependencyError
from sai.lazy import lazy_import

LIBRARY_NAME = "libsai_ort_ops.so"
ENV_LIBRARY = "SAI_ORT_OPS_LIBRARY"
ENV_SWITCH = "SAI_ORT_OPS"

log = logging.getLogger("sai.runtime.onnxruntime")
ONNXRUNTIME = lazy_import("onnxruntime", purpose=f"load {LIBRARY_NAME}")


def bundled_library_path() -> Path:
    """Where ``make install`` puts the library inside the package (it may not exist yet)."""
    return Path(__file__).resolve().parent / "lib" / LIBRARY_NAME


def built_library() -> tuple[Optional[Path], str]:
    """(path, "") of the built library (``$SAI_ORT_OPS_LIBRARY`` or the bundled one), whether or not it
    is switched on, or (None, why there is none)."""
    override = os.environ.get(ENV_LIBRARY)
    if override:
        path = Path(override)
        return (path, "") if path.is_file() else (None, f"${ENV_LIBRARY}={override} does not exist")
    path = bundled_library_path()
    if path.is_file():
        return path, ""
    return None, f"{LIBRARY_NAME} is not built (make install builds it)"


def find_library() -> tuple[Optional[Path], str]:
    """(path, "") of the library sessions should use, or (None, why none): off by default (see the module
    docstring), switched off, not built, bad override. Naming a library in ``$SAI_ORT_OPS_LIBRARY`` is asking
    for it."""
    switch = os.environ.get(ENV_SWITCH, "")
    if switch == "0":
        return None, f"{ENV_SWITCH}=0"
    if switch != "1" and not os.environ.get(ENV_LIBRARY):
        return None, (f"{LIBRARY_NAME} is off by default (not faster than the function bodies on "
                      f"sparse_resnet101: docs/benchmarks.md; {ENV_SWITCH}=1 turns it on)")
    return built_library()


def _ensure_handler() -> None:
    """One line per message on stderr ("sai: ...") unless the application configured logging itself."""
    root, pkg = logging.getLogger(), logging.getLogger("sai")
    if not root.handlers and not pkg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("sai: %(message)s"))
        pkg.addHandler(handler)
        pkg.setLevel(logging.INFO)
        pkg.propagate = False


def register(session_options: Any, device: str = "cpu") -> dict:
    """Register the library on ``session_options`` where it applies and log one line saying which
    kernels run the sai nodes. Returns what ``Engine.describe()`` reports as ``custom_ops``:
    ``{"library": path or None, "kernels": "libsai_ort_ops" | "function bodies", "note": ...}``."""
    _ensure_handler()
    if device != "cpu":
        note = (f"device {device}: the sai nodes run as the model's function bodies "
                f"({LIBRARY_NAME} has CPU kernels only)")
        return {"library": None, "kernels": "function bodies", "note": note}
    path, why = find_library()
    if path is None:
        note = f"{why}; the sai nodes run as the model's function bodies (portable path)"
        log.info("onnxruntime: %s", note)
        return {"library": None, "kernels": "function bodies", "note": note}
    try:
        session_options.register_custom_ops_library(str(path))
    except Exception as exc:  # a library built for another onnxruntime, or a broken file
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        note = f"{path} could not be registered ({first}); the sai nodes run as the function bodies"
        log.info("onnxruntime: %s", note)
        return {"library": None, "kernels": "function bodies", "note": note}
    note = f"the sai nodes run on the C++ kernels of {path}"
    log.info("onnxruntime: %s", note)
    return {"library": str(path), "kernels": "libsai_ort_ops", "note": note}


def status() -> tuple[bool, str]:
    """For ``sai doctor``: (built and loadable by this onnxruntime, detail incl. whether it is switched on)."""
    path, why = built_library()
    if path is None:
        return False, why
    try:
        ort = ONNXRUNTIME.load()
    except MissingDependencyError:
        return False, f"{path} (onnxruntime is not installed)"
    try:
        ort.SessionOptions().register_custom_ops_library(str(path))
    except Exception as exc:
        return False, f"{path} does not load: {str(exc).splitlines()[0][:160]}"
    used, why_not = find_library()
    return True, f"{path} ({'on' if used else why_not.split(' (')[0]})"
