"""``convert``: checkpoint -> OUTDIR with model.onnx, model.trt.onnx, model.cpu-fused.onnx (when a sparse block
fuses), manifest.json and (GPU + TensorRT only) model.plan. Everything is written into a temporary sibling
directory that is renamed into place at the end, so OUTDIR is either the old complete result or the new one,
never half of each.

model.cpu-fused.onnx is model.onnx with every matching sparse block rewritten into one ``sai::SparseBlock`` node
(``sai.runtime.ort_fuse``): the CPU speed of libsai_ort_ops.so on disk, for plain onnxruntime
(``SessionOptions.register_custom_ops_library``) and Triton's onnxruntime backend (``sai export-triton``). Its
SparseBlock nodes carry no function body, so it runs only with that library; model.onnx stays the portable
model. The manifest's ``fused`` entry records the file, the blocks, the library it needs and the sha256 of the
model.onnx it was made from (``sai.runtime`` loads it as is only while they match).

model.trt.onnx, the graph the TensorRT engine is built from, is the exporter's tensorrt target: one
``sai::SparseBlock`` node per sparse block the SparseBlock plugin takes (a second export; ``trt_blocks`` /
``--trt-blocks per-op``: the portable model with its functions stripped, per-op nodes only). The manifest's
``tensorrt_onnx`` entry records the mode and the SparseBlock nodes.

An existing OUTDIR is replaced only when it is empty or provably an earlier output of ``sai convert``: its
``.sai-output.json`` (``sai.outputs``) lists every file in it, unchanged, or (outputs of sai versions before
that marker) it holds only the files convert writes, its manifest.json is convert's and records each of
them with the size and sha256 it has. Anything else is refused before the checkpoint is read, unless
``force``."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sai.errors import SaiError
from sai.outputs import MARKER_MAX_BYTES, publish_dir, recover_interrupted, write_atomic
from sai.runtime.engine import noise_shape
from sai.runtime.environment import engine_unavailable_reason, versions
from sai.runtime.integrity import sha256
from sai.runtime.loader import FUSED_ONNX_NAME, MANIFEST_NAME, ONNX_NAME, PLAN_NAME, TRT_ONNX_NAME

Shape = tuple[int, int, int, int]
MANIFEST_FORMAT = "sai-convert/1"
WRITTEN = (MANIFEST_NAME, ONNX_NAME, TRT_ONNX_NAME, FUSED_ONNX_NAME, PLAN_NAME)  # what convert writes (+ its marker)
MANIFEST_KEYS = ("format", "created", "arch", "checkpoint", "export", "shapes", "engine", "files", "versions")


def legacy_output_reason(folder: Path) -> Optional[str]:
    """None when ``folder`` (which has no output marker) is an OUTDIR of a sai version before the marker:
    nothing but the files convert writes, a manifest.json of convert's schema, and every other file recorded
    in it with its size and sha256. Otherwise why not (``sai.outputs.foreign_reason``'s ``legacy`` check)."""
    present = {}
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.name not in WRITTEN or not e.is_file(follow_symlinks=False):
            return f"it holds {e.name}, which sai convert does not write"
        present[e.name] = e
    if MANIFEST_NAME not in present:
        return f"it holds {next(iter(present))} but no {MANIFEST_NAME} of sai convert"
    try:
        if present[MANIFEST_NAME].stat().st_size > MARKER_MAX_BYTES:
            raise ValueError
        manifest = json.loads(Path(present[MANIFEST_NAME].path).read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return f"its {MANIFEST_NAME} does not parse as a sai convert manifest"
    if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT
            or any(k not in manifest for k in MANIFEST_KEYS) or not isinstance(manifest["files"], dict)):
        return f"its {MANIFEST_NAME} is not a sai convert manifest ({MANIFEST_FORMAT})"
    for name, e in present.items():
        if name == MANIFEST_NAME:
            continue
        entry = manifest["files"].get(name)
        if (not isinstance(entry, dict) or entry.get("bytes") != e.stat(follow_symlinks=False).st_size
                or entry.get("sha256") != sha256(e.path)):
            return f"{name} is not the file its {MANIFEST_NAME} records (changed since sai convert wrote it)"
    return None


@dataclass
class ConvertResult:
    outdir: Path
    manifest: dict
    engine_built: bool
    engine_skip_reason: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def parse_shape(text, what: str = "shape") -> Shape:
    """An engine profile's N,C,H,W (``sai.exporter.export.parse_input_shape``); SaiError naming ``what``."""
    from sai.exporter.export import parse_input_shape

    return parse_input_shape(text, what)


def resolve_profile(min_shape=None, opt_shape=None, max_shape=None) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) image shapes with defaults around ``opt`` (1,3,224,224): min = batch 1 at opt's
    size, max = batch 8 x opt's size; checks min <= opt <= max elementwise and equal channels."""
    opt = parse_shape(opt_shape, "--shape") if opt_shape else (1, 3, 224, 224)
    lo = parse_shape(min_shape, "--min-shape") if min_shape else (1, opt[1], opt[2], opt[3])
    hi = parse_shape(max_shape, "--max-shape") if max_shape else (max(8, opt[0]), opt[1], opt[2], opt[3])
    lo = tuple(min(a, b) for a, b in zip(lo, opt, strict=True)) if not min_shape else lo
    if not (lo[1] == opt[1] == hi[1]):
        raise SaiError(f"channels differ between --min-shape {list(lo)}, --shape {list(opt)}, --max-shape {list(hi)}")
    if any(a > b or b > c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise SaiError(f"need --min-shape <= --shape <= --max-shape in every dim, got {list(lo)}, {list(opt)}, "
                       f"{list(hi)}")
    return lo, opt, hi  # type: ignore[return-value]


def sampling_note(mode: str) -> str:
    """What the exported sampling mode means next to the official SAI-Det evaluation (stochastic)."""
    official = ("official SAI-Det evaluation is stochastic (Gumbel noise at test time, T=0.03, unseeded)")
    if mode == "deterministic":
        return (f"deterministic: noise-free masks, reproducible; {official}, so this model's densities and "
                "outputs differ from the official test-time ones (convert with --sampling stochastic to match)")
    if mode == "stochastic":
        return (f"stochastic: Gumbel noise from the noise.* inputs at T_eval, as the official code; {official}; "
                "here the noise is an input, so a fixed seed reproduces a run")
    return f"{mode}: every position computed (no sampling); {official}"


def write_tensorrt_onnx(portable: Path, dest: Path, trt_blocks: str = "per-op") -> None:
    """model.trt.onnx with per-op nodes: the portable model with the ``sai`` local functions stripped (the
    TensorRT parser then maps the custom nodes to the plugins), ``sai.target = tensorrt`` and ``sai.trt_blocks``.
    Identical graph and weights, so it costs a file copy instead of a second export (``--trt-blocks per-op``,
    or a model with no sai node, where fused and per-op are the same graph)."""
    import onnx

    from sai.exporter import functions, metadata
    from sai.exporter.export import save_atomic

    model = onnx.load(str(portable))
    functions.strip_functions(model)
    meta = metadata.read_metadata(model)
    meta["target"] = "tensorrt"
    meta["trt_blocks"] = trt_blocks
    metadata.write_metadata(model, meta)
    save_atomic(model, dest)


def write_tensorrt_target(portable: Path, portable_res, dest: Path, trt_blocks: str, export_args: dict) -> dict:
    """model.trt.onnx, the graph TensorRT engines are built from, and the manifest's ``tensorrt_onnx`` entry
    (``{"file", "trt_blocks", "sparse_blocks", "sparse_ops"}``). ``fused`` (the default, as ``sai export
    --target tensorrt``): a second export with ``target="tensorrt"`` (``export_args``: the portable export's),
    one ``sai::SparseBlock`` node per block the plugin takes, the others per-op with one log line
    (``sai.exporter.trt_blocks``). The ORT SparseBlock of model.cpu-fused.onnx is another contract (NHWC,
    the masks as inputs) while the plugin computes the masks from their weights, which the portable graph
    holds only rewritten (``mask_taps``), so the portable model is exported again rather than rewritten.
    ``per-op``, or a model with no sai node: the portable model's graph (``write_tensorrt_onnx``)."""
    from sai.constants import SPARSE_BLOCK, SPARSE_SAMPLE_CONV
    from sai.exporter.export import export_onnx

    ops = dict(portable_res.metadata.get("sparse_ops", {}))
    if trt_blocks == "fused" and ops.get(SPARSE_SAMPLE_CONV, 0):
        res = export_onnx(export_args.pop("arch"), dest, target="tensorrt", trt_blocks="fused", **export_args)
        bad = [k for k in ("input_names", "output_names", "noise_inputs")
               if [list(v) if k == "noise_inputs" else v for v in getattr(res, k)] !=
               [list(v) if k == "noise_inputs" else v for v in getattr(portable_res, k)]]
        if bad:  # a bug, not a user error: both exports are of the same model
            raise RuntimeError(f"{dest.name} and the portable model differ in {', '.join(bad)}")
        ops = dict(res.metadata.get("sparse_ops", {}))
    else:
        write_tensorrt_onnx(portable, dest, trt_blocks)
    return {"file": dest.name, "trt_blocks": trt_blocks, "sparse_blocks": int(ops.pop(SPARSE_BLOCK, 0)),
            "sparse_ops": ops}


def write_fused_onnx(portable: Path, dest: Path) -> dict:
    """model.cpu-fused.onnx: ``portable`` with its matching sparse blocks fused into ``sai::SparseBlock`` nodes
    (``sai.runtime.ort_fuse``), its metadata saying so (``sai.target = onnxruntime-sai-ops``, ``sai.fused_blocks``,
    ``sai.custom_op_library``). Written only when at least one block fuses. Returns the manifest's ``fused`` entry:
    ``{"file", "blocks", "library", "from", "from_sha256"}``, or ``{"file": None, "blocks": 0, "reason"}``."""
    import onnx

    from sai.exporter import metadata
    from sai.exporter.export import save_atomic
    from sai.runtime.ort_fuse import fuse_sparse_blocks
    from sai.runtime.ort_ops import FUSED_KEY, LIBRARY_KEY, LIBRARY_NAME, TARGET

    model = onnx.load(str(portable))
    n = fuse_sparse_blocks(model)
    if n == 0:
        return {"file": None, "blocks": 0, "reason": "no sparse block matched the fused kernel (e.g. fp16 weights, "
                "a layout ort_fuse does not fuse)"}
    if model.ByteSize() >= 2**31:
        return {"file": None, "blocks": 0, "reason": "the fused model would be 2 GB or more (protobuf's limit)"}
    meta = metadata.read_metadata(model)
    meta.update({"target": TARGET, FUSED_KEY: n, LIBRARY_KEY: LIBRARY_NAME})
    metadata.write_metadata(model, meta)
    save_atomic(model, dest)
    return {"file": dest.name, "blocks": n, "library": LIBRARY_NAME, "from": portable.name,
            "from_sha256": sha256(portable),
            "note": f"{dest.name} runs only with {LIBRARY_NAME} registered (SessionOptions.register_custom_ops_library "
                    f"or Triton's model_operations); {portable.name} is the portable model"}


def has_detector_heads(loaded) -> bool:
    """Whether a read checkpoint holds the detector heads (``rpn_head.*`` / ``bbox_head.*``)."""
    from sai.models.checkpoint import read_checkpoint
    from sai.runtime.detector_engine import is_detector_checkpoint

    return is_detector_checkpoint(read_checkpoint(loaded)[0])


def convert(checkpoint, arch: Optional[str], outdir, *, sampling: Optional[str] = None, precision: str = "fp32",
            opset: Optional[int] = None, min_shape=None, opt_shape=None, max_shape=None,
            workspace: Optional[int] = None, timing_cache=None, version_compatible: bool = False,
            build_engine: bool = True, progress: Callable[[str], None] = lambda s: None,
            export_options: Optional[dict] = None, force: bool = False,
            on_published: Optional[Callable[[Path], None]] = None, trt_blocks: Optional[str] = None) -> ConvertResult:
    """Export ``checkpoint`` (our format or the official layout; ``arch`` or the checkpoint's own) into
    ``outdir``; see the module docstring. ``trt_blocks``: model.trt.onnx's blocks, ``fused`` (one
    ``sai::SparseBlock`` node per block the plugin takes) or ``per-op``; None: ``SAI_TRT_SPARSE_BLOCK`` or
    ``fused`` (``sai.exporter.trt_blocks.mode``, as ``sai export --target tensorrt``). The engine is built only where ``engine_unavailable_reason``
    is None; otherwise ``engine_skip_reason`` says why. ``force``: replace ``outdir`` even when it holds
    files sai did not write (never one holding the checkpoint or the timing cache). ``on_published(outdir)``
    runs right after the commit, while signals are still held (``sai.outputs.publish_dir``)."""
    from sai.exporter import trt_blocks as trt_blocks_module
    from sai.exporter.export import DEFAULT_OPSET, export_onnx
    from sai.models import detect_layout
    from sai.models.checkpoint import read_checkpoint_file
    from sai.outputs import check_output_dir, interrupt_watch, os_error_message, owned_tempdir
    from sai.runtime.ort_ops import LIBRARY_NAME

    ck = Path(checkpoint)
    if ck.is_dir():
        raise SaiError(f"checkpoint {ck} is a directory; give the checkpoint file (.pth/.pt) inside it")
    if not ck.is_file():
        raise SaiError(f"checkpoint {ck} does not exist")
    lo, opt, hi = resolve_profile(min_shape, opt_shape, max_shape)
    blocks_mode = trt_blocks_module.mode(trt_blocks)
    # the output is checked before the slow work (reading the checkpoint, exporting)
    outdir = check_output_dir(Path(outdir).resolve(), "-o", what="sai convert", force=force,
                              legacy=legacy_output_reason, protect=[ck, timing_cache])
    if timing_cache and build_engine:  # a cache sai may not overwrite is refused now, not after the build
        from sai.runtime.build import check_timing_cache

        check_timing_cache(timing_cache, force=force)
    recover_interrupted(outdir)
    loaded = read_checkpoint_file(ck)  # the one read of the file: its sha256, tensors and meta
    info = detect_layout(loaded)
    if has_detector_heads(loaded):
        progress(f"note: {ck.name} holds detector heads (rpn_head.*, bbox_head.*); converting its backbone + FPN "
                 "only (features, not boxes): pass --preset NAME or --config FILE for the whole detector")
    if arch is None:
        arch = info["arch"]
    elif arch != info["arch"]:
        raise SaiError(f"--arch {arch} does not match the checkpoint, whose weights are {info['arch']}")
    tmp = owned_tempdir(f".{outdir.name}.tmp-", outdir.parent)
    seconds: dict[str, float] = {}
    with interrupt_watch() as watch:
        try:
            progress(f"[1/4] exporting {arch} ({sampling or 'checkpoint sampling'}, {precision}) -> {ONNX_NAME}")
            t = time.perf_counter()
            export_args = dict(checkpoint=loaded, input_shape=opt, sampling=sampling, precision=precision,
                               opset=opset or DEFAULT_OPSET, **(export_options or {}))
            res = export_onnx(arch, tmp / ONNX_NAME, target="portable", **export_args)
            seconds["export"] = time.perf_counter() - t
            what = ("one sai::SparseBlock node per block for the TensorRT plugins" if blocks_mode == "fused"
                    else "per-op nodes, local functions stripped for the TensorRT parser")
            progress(f"[2/4] writing {TRT_ONNX_NAME} ({what}) and "
                     f"{FUSED_ONNX_NAME} (sparse blocks fused for {LIBRARY_NAME})")
            t = time.perf_counter()
            tensorrt_onnx = write_tensorrt_target(tmp / ONNX_NAME, res, tmp / TRT_ONNX_NAME, blocks_mode,
                                                  {"arch": arch, **export_args})
            seconds["tensorrt_onnx"] = time.perf_counter() - t
            fused = write_fused_onnx(tmp / ONNX_NAME, tmp / FUSED_ONNX_NAME)
            reason = engine_unavailable_reason() if build_engine else "engine build disabled"
            built = False
            engine_info: dict[str, Any] = {}
            if reason is None:
                progress(f"[3/4] building {PLAN_NAME} with TensorRT")
                t = time.perf_counter()
                from sai.runtime.build import build_engine as _build

                engine_info = _build(tmp / TRT_ONNX_NAME, tmp / PLAN_NAME, profile=(lo, opt, hi),
                                     noise_inputs=res.noise_inputs, precision=precision, workspace=workspace,
                                     timing_cache=timing_cache, version_compatible=version_compatible,
                                     force=force)
                seconds["engine"] = time.perf_counter() - t
                built = True
            else:
                progress("[3/4] TensorRT engine: skipped (why: see the summary below)")
            progress(f"[4/4] writing {MANIFEST_NAME}")
            files = {}
            for name in (ONNX_NAME, TRT_ONNX_NAME, FUSED_ONNX_NAME, PLAN_NAME):
                p = tmp / name
                if p.is_file():
                    files[name] = {"sha256": sha256(p), "bytes": p.stat().st_size}
            shapes = {"input": {"min": list(lo), "opt": list(opt), "max": list(hi)}}
            for name, stride in res.noise_inputs:
                shapes[name] = {k: list(noise_shape(s, stride)) for k, s in (("min", lo), ("opt", opt), ("max", hi))}
            manifest = {
                "format": MANIFEST_FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "arch": arch,
                "checkpoint": {"path": str(ck.resolve()), "sha256": loaded.sha256, "layout": info.get("layout")},
                "export": {"sampling": res.sampling, "sampling_note": sampling_note(res.sampling),
                           "precision": precision, "opset": res.opset,
                           "input_names": res.input_names, "output_names": res.output_names,
                           # a profile asked for binds every backend; the default one only TensorRT engines
                           "profile_given": any(v is not None for v in (min_shape, opt_shape, max_shape))},
                "shapes": shapes,
                "engine": {"built": built, "skip_reason": reason or "", "workspace": workspace,
                           "version_compatible": version_compatible,
                           "timing_cache": str(timing_cache) if timing_cache else None, **engine_info},
                "files": files,
                "fused": fused,
                "tensorrt_onnx": tensorrt_onnx,
                "versions": versions(),
                "metadata": res.metadata,
            }
            write_atomic(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
            watch.check()  # a Ctrl-C whose exception a library swallowed still publishes nothing
            publish_dir(tmp, outdir, "sai convert", force=force, legacy=legacy_output_reason,
                        on_published=on_published)
        except OSError as exc:  # a full disk, a folder that became unwritable, ...
            shutil.rmtree(tmp, ignore_errors=True)
            raise SaiError(os_error_message(exc, outdir)) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ConvertResult(outdir, manifest, built, reason or "", seconds)


# ----------------------------------------------------------------------------------------------
# the whole detector (``sai convert CKPT --preset NAME`` / ``--config FILE``)
# ----------------------------------------------------------------------------------------------

DETECTOR_EXAMPLE_SHAPE = (1, 3, 128, 192)  # the padded batch traced; batch and size stay dynamic


def _tensorrt_detector_target(det, dest: Path, shape, opset: int) -> dict:
    """The detector's tensorrt-target ONNX where ``export_detector`` offers that target, else why not."""
    import inspect

    from sai.exporter.detector_export import export_detector

    if "target" not in inspect.signature(export_detector).parameters:
        return {"file": None, "reason": "the detector export has no tensorrt target in this sai yet (only the "
                "portable model.onnx, which plain onnxruntime runs)"}
    try:
        export_detector(det, dest, input_shape=shape, opset=opset, target="tensorrt")
    except (SaiError, NotImplementedError, ValueError) as exc:
        from sai.errors import first_line

        dest.unlink(missing_ok=True)
        return {"file": None, "reason": f"the detector's tensorrt target was not written: {first_line(exc)}"}
    return {"file": dest.name}


def convert_detector(checkpoint, config, outdir, *, sampling: Optional[str] = None, opset: Optional[int] = None,
                     opt_shape=None, progress: Callable[[str], None] = lambda s: None, force: bool = False,
                     on_published: Optional[Callable[[Path], None]] = None) -> ConvertResult:
    """The whole SAI-Det detector into ``outdir``: ``model.onnx`` (portable: standard ops + the sai ops with their
    function bodies; inputs the padded batch, ``img_shape``, ``scale_factor``; outputs ``dets``, ``labels``,
    ``num_dets``), ``model.cpu-fused.onnx`` (its sparse blocks fused for libsai_ort_ops.so, when any fuse), the
    tensorrt-target file where the exporter offers one, and ``manifest.json`` with ``kind: detector``, the
    preset/config, the preprocessing and the class names. ``config``: a preset name, an official config file
    (read as literals, never run) or a ``DetectorConfig``. The output folder's safety is ``convert``'s."""
    from dataclasses import asdict

    from sai.exporter.detector_export import export_detector
    from sai.models.checkpoint import read_checkpoint_file
    from sai.models.detector import load_detector
    from sai.models.detector_presets import resolve as resolve_config
    from sai.outputs import check_output_dir, interrupt_watch, os_error_message, owned_tempdir
    from sai.runtime.detector_engine import COCO_CLASSES
    from sai.runtime.ort_ops import LIBRARY_NAME

    ck = Path(checkpoint)
    if ck.is_dir():
        raise SaiError(f"checkpoint {ck} is a directory; give the checkpoint file (.pth/.pt) inside it")
    if not ck.is_file():
        raise SaiError(f"checkpoint {ck} does not exist")
    cfg = resolve_config(config)  # a bad preset name or config file fails before anything is read or written
    if sampling is not None and not cfg.sparse and sampling != "dense":
        raise SaiError(f"--sampling {sampling}: the detector {cfg.name} is dense (no sampling masks); leave "
                       "--sampling out")
    shape = parse_shape(opt_shape, "--shape") if opt_shape else DETECTOR_EXAMPLE_SHAPE
    outdir = check_output_dir(Path(outdir).resolve(), "-o", what="sai convert", force=force,
                              legacy=legacy_output_reason, protect=[ck])
    recover_interrupted(outdir)
    loaded = read_checkpoint_file(ck)
    if not has_detector_heads(loaded):
        raise SaiError(f"checkpoint {ck} has no detector heads (no rpn_head.* / bbox_head.* keys), so the detector "
                       f"{cfg.name} cannot give boxes; give the full SAI-Det detector checkpoint, or leave out "
                       "--preset/--config to convert its backbone (+ FPN) for features")
    overrides = {"sampling": sampling} if sampling is not None and cfg.sparse else {}
    progress(f"[1/4] loading {ck.name} into the detector {cfg.name} ({cfg.arch}, strict)")
    det = load_detector(cfg, loaded, fuse=True, **overrides)
    from sai.exporter.export import DEFAULT_OPSET

    opset = opset or DEFAULT_OPSET
    tmp = owned_tempdir(f".{outdir.name}.tmp-", outdir.parent)
    seconds: dict[str, float] = {}
    with interrupt_watch() as watch:
        try:
            progress(f"[2/4] exporting the detector -> {ONNX_NAME} (portable)")
            t = time.perf_counter()
            res = export_detector(det, tmp / ONNX_NAME, input_shape=shape, opset=opset)
            seconds["export"] = time.perf_counter() - t
            progress(f"[3/4] writing {FUSED_ONNX_NAME} (sparse blocks fused for {LIBRARY_NAME}) and the tensorrt target")
            fused = write_fused_onnx(tmp / ONNX_NAME, tmp / FUSED_ONNX_NAME)
            trt = _tensorrt_detector_target(det, tmp / TRT_ONNX_NAME, shape, opset)
            progress(f"[4/4] writing {MANIFEST_NAME}")
            files = {}
            for name in (ONNX_NAME, TRT_ONNX_NAME, FUSED_ONNX_NAME):
                p = tmp / name
                if p.is_file():
                    files[name] = {"sha256": sha256(p), "bytes": p.stat().st_size}
            config_rec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
            coco = cfg.num_classes == len(COCO_CLASSES) + 1
            reason = "the detector's TensorRT engine is not built by sai convert yet"
            manifest = {
                "format": MANIFEST_FORMAT,
                "kind": "detector",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "arch": cfg.arch,
                "preset": cfg.name,
                "config": config_rec,
                "config_source": str(Path(config).resolve()) if isinstance(config, (str, os.PathLike))
                and Path(str(config)).suffix == ".py" and Path(str(config)).is_file() else "preset",
                "checkpoint": {"path": str(ck.resolve()), "sha256": loaded.sha256, "layout": "official-detector"},
                "export": {"sampling": res.sampling, "sampling_note": sampling_note(res.sampling),
                           "precision": "fp32", "opset": res.opset, "input_names": res.input_names,
                           "output_names": res.output_names, "profile_given": False,
                           "tensorrt_target": trt},
                "shapes": {"input": {"opt": list(shape)}},  # the traced example; batch and size are dynamic
                "preprocessing": {"img_scale": list(cfg.img_scale), "mean": list(cfg.mean), "std": list(cfg.std),
                                  "to_rgb": bool(cfg.to_rgb), "size_divisor": int(cfg.size_divisor),
                                  "keep_ratio": True, "resize": "bilinear, half-pixel centres, sizes int(x * s + 0.5), "
                                  "rounded to uint8 (mmdetection v0.6 test pipeline)", "input": "uint8 RGB"},
                "classes": list(COCO_CLASSES) if coco else None,
                "classes_note": ("COCO's 80 classes in mmdetection v0.6's order (coco_classes()); label i is "
                                 "classes[i]") if coco else f"{cfg.num_classes - 1} classes; no names recorded",
                "engine": {"built": False, "skip_reason": reason},
                "files": files,
                "fused": fused,
                "versions": versions(),
                "metadata": res.metadata,
            }
            write_atomic(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
            watch.check()
            publish_dir(tmp, outdir, "sai convert", force=force, legacy=legacy_output_reason,
                        on_published=on_published)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SaiError(os_error_message(exc, outdir)) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ConvertResult(outdir, manifest, False, reason, seconds)
