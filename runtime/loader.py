"""``load(path, backend=...)``: pick the file and backend for a model path and build the engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sai.constants import BACKENDS
from sai.errors import SaiError
from sai.runtime.engine import Engine
from sai.runtime.environment import tensorrt_usable
from sai.runtime.integrity import MANIFEST_NAME, verify_checkpoint, verify_outdir
from sai.runtime.outdir import (  # the OUTDIR's names and manifest (a leaf module)
    FUSED_ONNX_NAME,  # noqa: F401 (re-exported, like the names below)
    ONNX_NAME,
    OUTDIR_FILES,
    PLAN_NAME,
    TRT_ONNX_NAME,
    checkpoint_of,
    read_manifest,
)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


@dataclass
class Resolved:
    backend: str
    file: Path
    manifest: Optional[dict]


def verify_model_path(path, backend: Optional[str] = None) -> None:
    """The integrity check ``load``/``resolve`` do with ``verify=True``: for an OUTDIR every file its manifest
    lists (plus, for the torch backend, the recorded checkpoint); for a model file inside an OUTDIR
    (model.onnx, model.trt.onnx, model.plan next to manifest.json), the same. Other paths: nothing to check."""
    p = Path(path)
    outdir = p if p.is_dir() else p.parent
    if not p.is_dir() and p.name not in OUTDIR_FILES:
        return
    manifest = read_manifest(outdir)
    if manifest is None:
        if p.is_dir():
            raise SaiError(f"{p} has no {MANIFEST_NAME}, so its files cannot be checked; give a sai convert "
                           "OUTDIR or the .onnx file itself, or pass --no-verify (verify=False in sai.runtime.load)")
        return
    uses = [p.name] if not p.is_dir() else [n for n in OUTDIR_FILES if (p / n).is_file()]
    verify_outdir(outdir, manifest, uses)
    if p.is_dir() and backend == "torch":
        verify_checkpoint(manifest, checkpoint_of(manifest, p), p)


def resolve(path, backend: str = "auto", *, verify: bool = False) -> Resolved:
    """Which backend and file ``load`` uses for ``path`` (an OUTDIR, .onnx, .plan/.engine or checkpoint).
    ``verify``: check the files against the manifest's sha256 first (``verify_model_path``)."""
    r = _resolve(path, backend)
    if verify:
        verify_model_path(path, r.backend)
    return r


def _resolve(path, backend: str) -> Resolved:
    if backend not in BACKENDS:
        raise SaiError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    p = Path(path)
    if not p.exists():
        raise SaiError(f"{p} does not exist; give a sai convert OUTDIR, a .onnx, a .plan or a checkpoint")
    if p.is_dir():
        manifest = read_manifest(p)
        plan, onnx_file = p / PLAN_NAME, p / ONNX_NAME
        if backend == "auto":
            backend = "tensorrt" if plan.is_file() and tensorrt_usable() else "onnxruntime"
        if backend == "tensorrt":
            if not plan.is_file():
                raise SaiError(f"{p} has no {PLAN_NAME} (engines are built only where TensorRT and a GPU exist); "
                               "use --backend onnxruntime, or run sai convert on a GPU machine")
            return Resolved("tensorrt", plan, manifest)
        if backend == "torch":
            return Resolved("torch", checkpoint_of(manifest, p), manifest)
        if not onnx_file.is_file():
            raise SaiError(f"{p} has no {ONNX_NAME}; is it a sai convert OUTDIR?")
        return Resolved("onnxruntime", onnx_file, manifest)
    suffix = p.suffix.lower()
    sibling = read_manifest(p.parent) if (p.parent / MANIFEST_NAME).is_file() else None
    if suffix == ".onnx":
        if backend in ("auto", "onnxruntime"):
            return Resolved("onnxruntime", p, sibling)
        raise SaiError(f"the {backend} backend cannot run an ONNX file directly: "
                       + ("build an engine with sai convert" if backend == "tensorrt" else "give the checkpoint"))
    if suffix in (".plan", ".engine", ".trt"):
        if backend in ("auto", "tensorrt"):
            return Resolved("tensorrt", p, sibling)
        raise SaiError(f"{p} is a TensorRT engine; only --backend tensorrt runs it")
    if suffix in CHECKPOINT_SUFFIXES:
        if backend in ("auto", "torch"):
            return Resolved("torch", p, None)
        raise SaiError(f"{p} is a checkpoint; run it with --backend torch, or convert it with sai convert")
    raise SaiError(f"cannot tell what {p} is from its suffix; use .onnx, .plan, .pth or a sai convert OUTDIR")


def load(path, backend: str = "auto", device: Optional[str] = None, *, seed: Optional[int] = None,
         threads: Optional[int] = None, sampling: Optional[str] = None, verify: bool = True, **options) -> Engine:
    """An ``Engine`` for ``path``. ``device``: onnxruntime ``cpu|cuda|tensorrt`` (EP; default cuda when
    onnxruntime-gpu offers it, else cpu), torch ``cpu|cuda`` (default cpu);
    ``seed`` seeds the noise of stochastic models; ``sampling`` overrides a checkpoint's sampling mode
    (torch); ``verify`` checks a sai convert OUTDIR's files against its manifest's sha256 before loading
    (False skips it: ``--no-verify``); extra ``options`` go to the backend (e.g. ``streams``, ``cuda_graphs``).
    A detector OUTDIR (manifest ``kind: detector``) gives a ``sai.runtime.detector_engine.DetectorEngine`` (uint8
    images in, ``dets``/``labels``/``num_dets`` out; options ``fused`` and ``checkpoint``)."""
    r = resolve(path, backend, verify=verify)
    outdir = Path(path) if Path(path).is_dir() else Path(path).parent
    if (r.manifest or {}).get("kind") == "detector" and (Path(path).is_dir() or Path(path).name in OUTDIR_FILES):
        from sai.runtime.detector_engine import load_detector_engine  # images in, detections out

        return load_detector_engine(outdir, r.manifest, r.backend, device=device, seed=seed, threads=threads,
                                    **options)
    engine = _load(r, device, seed=seed, threads=threads, sampling=sampling, **options)
    # A TensorRT engine is built for its profile; onnxruntime and torch take any size unless convert was given one
    given = bool(((r.manifest or {}).get("export") or {}).get("profile_given"))
    if r.backend == "tensorrt" or device == "tensorrt" or given:
        prof = ((r.manifest or {}).get("shapes") or {}).get(engine.primary_input.name) or {}
        engine.set_profile(prof.get("min"), prof.get("max"))
    return engine


def _restore_metadata(engine: Engine, r: Resolved) -> None:
    """An ONNX file that lost its ``sai.*`` metadata_props (``polygraphy surgeon sanitize`` drops them all) takes
    them from the manifest beside it (the same values); without one, a warning says what is missing and how to
    restore it."""
    if engine.metadata:
        return
    meta = (r.manifest or {}).get("metadata") or {}
    if not meta:
        import warnings

        warnings.warn(f"{r.file} carries no sai metadata (input_norm, noise inputs, classes; tools such as "
                      "polygraphy surgeon sanitize drop metadata_props): uint8 images are refused and noise is not "
                      "drawn; copy its sai convert manifest.json beside it (README: Models that lost their "
                      "metadata)", stacklevel=3)
        return
    restore_metadata(engine, meta)


def restore_metadata(engine: Engine, meta: dict) -> None:
    """Give an engine whose model lost its metadata the manifest's ``metadata`` (the same values convert wrote
    into metadata_props): input_norm, classes, noise inputs, ..."""
    engine.metadata.update(meta)
    names = {s.name for s in engine.inputs}
    engine.noise_inputs = [(str(n), int(s)) for n, s in meta.get("noise_inputs", []) if n in names]


def _load(r: Resolved, device, *, seed, threads, sampling, **options) -> Engine:
    meta = (r.manifest or {}).get("metadata") or {}
    if r.backend == "onnxruntime":
        from sai.runtime.ort_backend import OnnxRuntimeEngine

        ort_file = r.file
        if device == "tensorrt" and (r.file.parent / TRT_ONNX_NAME).is_file():
            ort_file = r.file.parent / TRT_ONNX_NAME  # custom nodes map to the plugins in the TRT EP
        engine = OnnxRuntimeEngine(str(ort_file), device=device, threads=threads, seed=seed, **options)
        _restore_metadata(engine, r)
        return engine
    if r.backend == "torch":
        from sai.runtime.torch_backend import TorchEngine

        if sampling is None and meta.get("sampling") in ("deterministic", "stochastic"):
            sampling = meta["sampling"]
        engine = TorchEngine(str(r.file), device=device or "cpu", threads=threads, seed=seed, sampling=sampling,
                             **options)
        if "input_norm" in meta:  # the export's input normalisation, for messages like the dtype check's
            engine.metadata.setdefault("input_norm", meta["input_norm"])
        return engine
    from sai.runtime.trt_backend import TensorRTEngine

    return TensorRTEngine(str(r.file), seed=seed, metadata=meta, **options)
