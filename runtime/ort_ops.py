"""The onnxruntime custom-op library of the sai ops (libsai_ort_ops.so): find it, register it.

``make install`` builds it (``python -m sai.runtime.build_ort_ops``) into ``runtime/lib/`` (inside the
package, found through the package; no system paths searched). Registered on a session's options,
its C++ kernels run the model: first every matching sparse block is rewritten into one
``sai::SparseBlock`` node (``sai.runtime.ort_fuse``: the fused NHWC block kernel PyTorch runs too; its
speed: docs/benchmarks.md), and
the sai nodes left over (fp16 models, graphs the rewrite does not match) run on the library's ``SparseSampleConv`` and
``Interpolate`` kernels: onnxruntime prefers a registered custom op over a model-local function of the
same domain and op_type, so the same portable ``model.onnx`` runs either way (``tests/test_ort_ops.py``,
``tests/test_ort_fuse.py`` check they agree). Without the library the function bodies run (the portable
path), which is also what Polygraphy's CLI runs.

On by default where built, for models in which at least one block is fused (the per-op kernels alone
were not faster than the function bodies, docs/benchmarks.md). ``SAI_ORT_OPS=1`` registers it for any
model; ``SAI_ORT_OPS=0`` keeps it off; ``$SAI_ORT_OPS_LIBRARY`` names another build. The kernels are
CPU kernels: sessions on the CUDA or TensorRT execution provider keep the bodies.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from sai.constants import SPARSE_BLOCK
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
    """(path, "") of the library sessions should use, or (None, why none): switched off, not built, bad
    override."""
    if os.environ.get(ENV_SWITCH, "") == "0":
        return None, f"{ENV_SWITCH}=0"
    return built_library()


def _asked_for() -> bool:
    """The user asked for the library whatever the model (``SAI_ORT_OPS=1`` or a named build)."""
    return os.environ.get(ENV_SWITCH, "") == "1" or bool(os.environ.get(ENV_LIBRARY))


def _ensure_handler() -> None:
    """One line per message on stderr ("sai: ...") unless the application configured logging itself."""
    root, pkg = logging.getLogger(), logging.getLogger("sai")
    if not root.handlers and not pkg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("sai: %(message)s"))
        pkg.addHandler(handler)
        pkg.setLevel(logging.INFO)
        pkg.propagate = False


def register(session_options: Any, device: str = "cpu", model_path: Optional[str] = None) -> dict:
    """Register the library on ``session_options`` where it applies and log one line saying which
    kernels run the sai nodes. With ``model_path``, the model's sparse blocks are fused first
    (``fused_model``); a model with none fused keeps the function bodies unless the library was asked for
    (module docstring). Returns what ``Engine.describe()`` reports as ``custom_ops``:
    ``{"library": path or None, "kernels": "libsai_ort_ops" | "function bodies", "note": ...,
    "fused_blocks": n, "model": what to give InferenceSession (the fused bytes, or model_path)}``."""
    _ensure_handler()
    bodies = {"library": None, "kernels": "function bodies", "fused_blocks": 0, "model": model_path}
    if device != "cpu":
        note = (f"device {device}: the sai nodes run as the model's function bodies "
                f"({LIBRARY_NAME} has CPU kernels only)")
        return dict(bodies, note=note)
    path, why = find_library()
    if path is None:
        note = f"{why}; the sai nodes run as the model's function bodies (portable path)"
        log.info("onnxruntime: %s", note)
        return dict(bodies, note=note)
    model, fused, why_not = (model_path, 0, "") if model_path is None else fused_model(model_path)
    if model_path is not None and fused == 0 and not _asked_for():
        note = (f"{why_not}: the sai nodes run as the model's function bodies (portable path; "
                f"{ENV_SWITCH}=1 runs them on {LIBRARY_NAME}'s per-op kernels)")
        log.info("onnxruntime: %s", note)
        return dict(bodies, note=note)
    try:
        session_options.register_custom_ops_library(str(path))
    except Exception as exc:  # a library built for another onnxruntime, or a broken file
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        note = f"{path} could not be registered ({first}); the sai nodes run as the function bodies"
        log.info("onnxruntime: %s", note)
        return dict(bodies, note=note)
    note = f"the sai nodes run on the C++ kernels of {path}"
    if model_path is not None:
        note += f" ({fused} sparse block(s) fused into sai::{SPARSE_BLOCK} nodes)" if fused else f" ({why_not})"
    log.info("onnxruntime: %s", note)
    return {"library": str(path), "kernels": "libsai_ort_ops", "note": note, "fused_blocks": fused, "model": model}


def fused_model(path: str) -> tuple[Any, int, str]:
    """What to give ``InferenceSession`` for ``path`` when the library is registered: the model with its
    sparse blocks rewritten into ``sai::SparseBlock`` nodes (``sai.runtime.ort_fuse``), serialized, when
    any block matched; else ``path`` itself. Returns (model, blocks fused, why none)."""
    import onnx

    from sai.runtime.ort_fuse import fuse_sparse_blocks

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # not ours to judge here: the session reports a bad file itself
        return str(path), 0, f"not read by onnx ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
    n = fuse_sparse_blocks(model)
    if n == 0:
        return str(path), 0, "no sparse block matched the fused kernel"
    if model.ByteSize() >= 2**31:
        return str(path), 0, "the model is 2 GB or more (protobuf's limit for one in-memory model)"
    return model.SerializeToString(), n, ""


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
    if not used:
        return True, f"{path} ({why_not.split(' (')[0]})"
    return True, f"{path} (on: fused sparse blocks; {'every model' if _asked_for() else 'models with a fused block'})"
