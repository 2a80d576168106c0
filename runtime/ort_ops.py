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

The fused model on disk: ``sai convert`` writes ``model.cpu-fused.onnx`` (the same rewrite, done once; its
metadata carries ``sai.fused_blocks`` and ``sai.custom_op_library``). A session of an OUTDIR's model.onnx loads
that file as is, without rewriting anything, while the manifest records it as made from the model.onnx it
lists (``on_disk_fused``); a session of the fused file itself needs the library (a CPU session with it
registered), else a SaiError says to build it or load model.onnx.
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
# metadata of a fused model file (``sai.`` + key): how many SparseBlock nodes, which library runs them
FUSED_KEY, LIBRARY_KEY, TARGET = "fused_blocks", "custom_op_library", "onnxruntime-sai-ops"

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
        _preload_blas()
        return path, ""
    return None, f"{LIBRARY_NAME} is not built (make install builds it)"


def _preload_blas() -> None:
    """Load the libscipy_openblas.so that the library links from wherever Python finds scipy_openblas32, so the
    library loads whatever its runpath holds (an install whose dependencies live in another site folder)."""
    if _preloaded:
        return
    try:
        import ctypes

        import scipy_openblas32 as sob

        _preloaded.append(ctypes.CDLL(str(Path(sob.get_lib_dir()) / f"lib{sob.get_library()}.so"),
                                      mode=ctypes.RTLD_GLOBAL))
    except (ImportError, OSError, AttributeError):
        pass


_preloaded: list = []


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


def fused_blocks_of(path) -> int:
    """``sai.fused_blocks`` of an ONNX file's metadata (a fused model file sai wrote), 0 for any other file;
    read from the file's top-level fields, the graph is not parsed."""
    from sai.outputs import onnx_header

    head = onnx_header(path) if path is not None and os.path.isfile(path) else None
    value = (head or {}).get("metadata", {}).get(f"sai.{FUSED_KEY}", "0")
    return int(value) if value.isdigit() else 0


def on_disk_fused(model_path) -> Optional[tuple[Path, int]]:
    """(path, blocks) of the fused CPU model that sai convert wrote beside ``model_path`` (an OUTDIR's
    model.onnx): its manifest lists the file and records it as made from the model.onnx whose sha256 the
    manifest lists now (a model.onnx replaced since, and recorded so, is fused in memory instead). Else None."""
    from sai.errors import SaiError
    from sai.runtime.outdir import read_manifest

    p = Path(model_path)
    try:
        manifest = read_manifest(p.parent)
    except SaiError:
        return None
    fused = (manifest or {}).get("fused") or {}
    files = (manifest or {}).get("files") or {}
    name = fused.get("file")
    if (not isinstance(name, str) or Path(name).name != name or fused.get("from") != p.name or name not in files
            or not isinstance(files.get(p.name), dict) or files[p.name].get("sha256") != fused.get("from_sha256")):
        return None
    path = p.parent / name
    blocks = fused_blocks_of(path)
    return (path, blocks) if blocks > 0 else None


def register(session_options: Any, device: str = "cpu", model_path: Optional[str] = None) -> dict:
    """Register the library on ``session_options`` where it applies and log one line saying which
    kernels run the sai nodes. With ``model_path``, the model's sparse blocks are fused first
    (``fused_model``); a model with none fused keeps the function bodies unless the library was asked for
    (module docstring); a fused model that sai convert wrote (``model_path`` itself, or beside an OUTDIR's
    model.onnx: ``on_disk_fused``) is given to the session as is. Returns what ``Engine.describe()`` reports as
    ``custom_ops``: ``{"library": path or None, "kernels": "libsai_ort_ops" | "function bodies", "note": ...,
    "fused_blocks": n, "model": what to give InferenceSession (a path, or the fused bytes)}`` (plus
    ``"fused_file"`` for a fused model from the disk)."""
    from sai.errors import SaiError

    _ensure_handler()
    bodies = {"library": None, "kernels": "function bodies", "fused_blocks": 0, "model": model_path}
    itself = fused_blocks_of(model_path)  # model_path is a fused model file: it cannot run on the bodies

    def needs(why: str) -> SaiError:
        return SaiError(f"{model_path} is sai's fused CPU model ({itself} sai::SparseBlock nodes, no function bodies): "
                        f"it runs only on the CPU with {LIBRARY_NAME} registered, but here: {why}; build the library "
                        "(python -m sai.runtime.build_ort_ops) or load the portable model.onnx beside it")

    if device != "cpu":
        if itself:
            raise needs(f"this session is on {device}")
        note = (f"device {device}: the sai nodes run as the model's function bodies "
                f"({LIBRARY_NAME} has CPU kernels only)")
        return dict(bodies, note=note)
    path, why = find_library()
    if path is None:
        if itself:
            raise needs(why)
        note = f"{why}; the sai nodes run as the model's function bodies (portable path)"
        log.info("onnxruntime: %s", note)
        return dict(bodies, note=note)
    disk = (Path(model_path), itself) if itself else (on_disk_fused(model_path) if model_path is not None else None)
    if disk is not None:
        try:
            session_options.register_custom_ops_library(str(path))
        except Exception as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if itself:
                raise needs(f"{path} could not be registered ({first})") from None
            note = f"{path} could not be registered ({first}); the sai nodes run as the function bodies"
            log.info("onnxruntime: %s", note)
            return dict(bodies, note=note)
        note = (f"the sai nodes run on the C++ kernels of {path} ({disk[1]} sparse block(s) fused by sai convert: "
                f"{disk[0].name}, loaded as is)")
        log.info("onnxruntime: %s", note)
        return {"library": str(path), "kernels": "libsai_ort_ops", "note": note, "fused_blocks": disk[1],
                "model": str(disk[0]), "fused_file": str(disk[0])}
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


def _elf_dynamic(path: Path) -> tuple[list[str], list[str]]:
    """(DT_NEEDED names, DT_RUNPATH/DT_RPATH entries) of a 64-bit little-endian ELF shared library, read from
    its program headers; ([], []) for anything else."""
    import struct

    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return [], []
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((vaddr, offset, filesz))
        elif p_type == 2:
            dynamic = (offset, filesz)
    if dynamic is None:
        return [], []
    entries = []
    for k in range(dynamic[1] // 16):
        tag, val = struct.unpack_from("<qQ", data, dynamic[0] + 16 * k)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab = next((v for t, v in entries if t == 5), None)
    base = next((off + strtab - va for va, off, size in loads if strtab is not None and va <= strtab < va + size), None)
    if base is None:
        return [], []

    def text(at: int) -> str:
        return data[base + at:data.index(b"\0", base + at)].decode("utf-8", "replace")

    needed = [text(v) for t, v in entries if t == 1]
    paths = [d for t, v in entries if t in (15, 29) for d in text(v).split(":") if d]
    return needed, paths


def library_bundle(path) -> tuple[list[Path], bool]:
    """What a copy of the library needs beside it to load on another machine: the library and the libraries it
    links that its runpath finds outside the system folders (libscipy_openblas.so), and whether its runpath
    holds ``$ORIGIN`` (a copy then finds them beside it; an older build needs ``LD_LIBRARY_PATH``)."""
    needed, runpath = _elf_dynamic(Path(path))
    files = [Path(path)]
    here = Path(path).resolve().parent
    for name in needed:
        for d in runpath:
            d = d.replace("${ORIGIN}", str(here)).replace("$ORIGIN", str(here))
            if Path(d).resolve() == here:
                continue
            cand = Path(d) / name
            if cand.is_file():
                files.append(cand.resolve())
                break
    return files, any("ORIGIN" in d for d in runpath)


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
