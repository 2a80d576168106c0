"""A Triton model repository from a `sai convert` OUTDIR: a TensorRT plan model (when model.plan
exists) and an onnxruntime model, each with dynamic batching, instance groups,
a warmup request, the class names as a labels file and the sai metadata as parameters; where the model
records its checkpoint's preprocessing, a python-backend preprocessing model and an ensemble that take
uint8 images; the plugin library (with its LD_PRELOAD companion), and a README saying how Triton loads it. The configs are Triton's
ModelConfig protobuf (``sai.runtime.triton_config``), parsed back before they are written.

The onnxruntime model is the fused CPU model (``model.cpu-fused.onnx`` of the OUTDIR, or fused here for an OUTDIR
of an older sai) where libsai_ort_ops.so is built: the library and the BLAS it links are copied into the model's
folder and named in its config's ``model_operations { op_library_filename }`` by absolute path (Triton's
onnxruntime backend hands that string to onnxruntime's RegisterCustomOpsLibrary as is), under
``repository_path`` (default: where the repository is written). Without the library, with ``portable`` or on
GPU instances, it is the portable model.onnx (function bodies, no library).

Every setting is checked before anything is written (names, numbers, GPU ids, the ONNX file), and every
file goes into a temporary sibling of the repository that ``publish_dir`` renames into place. An existing
repository folder is replaced only when it is empty or an earlier output of ``sai export-triton`` (its
``.sai-output.json`` lists every file in it, unchanged); anything else, repositories of sai versions before
that marker included, is refused before the OUTDIR is read, unless ``force``.
``max_batch=0`` means what it means to Triton: the model does not batch (no ``dynamic_batching``,
dims include the batch dimension).
"""

from __future__ import annotations

import math
import re
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sai.errors import SaiError
from sai.outputs import check_output_dir, owned_tempdir, publish_dir, recover_interrupted
from sai.runtime.integrity import verify_outdir
from sai.runtime.loader import MANIFEST_NAME, ONNX_NAME, PLAN_NAME, read_manifest
from sai.runtime.ort_ops import LIBRARY_NAME
from sai.runtime.triton_config import check_count as _count

TRITON_DTYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32",
                 2: "TYPE_UINT8", 3: "TYPE_INT8", 9: "TYPE_BOOL"}


NAME_RULE = "letters, digits, '_', '-' and '.', starting with a letter, digit or '_' (at most 100 characters)"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")


def check_name(name: str, what: str = "--name") -> str:
    """``name`` if it is a safe model-directory and config name (no path separators, quotes or ``..``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise SaiError(f"{what} {name!r} is not a valid Triton model name; use {NAME_RULE}, without '..'")
    return name


def parse_gpus(text: Optional[str]) -> Optional[list[int]]:
    """``"0,1"`` -> [0, 1] (None for None/empty); SaiError naming the bad item otherwise."""
    if text is None or not str(text).strip():
        return None
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item.isdigit() or not item.isascii():
            raise SaiError(f"--gpus must be comma-separated GPU ids (non-negative integers, e.g. 0,1), got {text!r}")
        if int(item) in out:
            raise SaiError(f"--gpus lists GPU {int(item)} twice in {text!r}; list each GPU once")
        out.append(int(item))
    return out


def parse_delay_ms(value: float) -> int:
    """``--max-delay-ms`` as Triton's integer microseconds; SaiError unless finite and >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SaiError(f"--max-delay-ms must be a finite number >= 0, got {value!r}")
    return int(round(value * 1000))


@dataclass
class IOSpec:
    name: str
    data_type: str
    dims: list[int]  # without the batch dim; -1 for dynamic


def onnx_io(path: Path) -> tuple[list[IOSpec], list[IOSpec]]:
    """Graph inputs/outputs of an ONNX file as Triton specs (batch dim dropped)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError on a truncated file, OSError, ...
        detail = " ".join(str(exc).split())[:160]
        raise SaiError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {detail}); "
                       "re-run sai convert") from None
    inits = {i.name for i in model.graph.initializer}

    def spec(v) -> IOSpec:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        if t.elem_type not in TRITON_DTYPES:
            raise SaiError(f"tensor {v.name} has an ONNX type ({t.elem_type}) Triton configs do not map here")
        return IOSpec(v.name, TRITON_DTYPES[t.elem_type], dims[1:])

    inputs, outputs = [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]
    if not inputs or not outputs or not model.graph.node:
        raise SaiError(f"{path} holds no model (no graph inputs, outputs or nodes; empty or not an ONNX file); "
                       "re-run sai convert")
    return inputs, outputs


def model_config(name: str, platform: str, inputs: list[IOSpec], outputs: list[IOSpec], *, max_batch_size: int,
                 kind: str, instances: int, max_queue_delay_us: int, preferred: list[int],
                 gpus: Optional[list[int]] = None, **extras) -> str:
    """config.pbtxt text: a Triton ``ModelConfig`` protobuf (``triton_config.inference_config``; ``extras``:
    its warmup/labels/parameters keywords) in text format. ``inputs``/``outputs`` dims exclude the batch
    dim; ``max_batch_size=0`` (no batching) puts it back as -1 and writes no ``dynamic_batching``."""
    from sai.runtime import triton_config as tc

    check_name(name, "model name")
    cfg = tc.inference_config(name, platform, [tc.Tensor(s.name, s.data_type, s.dims) for s in inputs],
                              [tc.Tensor(s.name, s.data_type, s.dims) for s in outputs], max_batch_size=max_batch_size,
                              kind=kind, instances=instances, max_queue_delay_us=max_queue_delay_us,
                              preferred=preferred, gpus=gpus, **extras)
    return tc.to_text(cfg)


README = """# Triton model repository for {arch} ({sampling}, {precision})

Written by `sai export-triton` from `{outdir}`.

| model | platform | file |
| --- | --- | --- |
{rows}

{batching}
{noise_note}{images_note}
## Starting Triton

{onnx_note}

The TensorRT model needs the sai plugin library (`plugins/{plugin_name}`),
built for the container's TensorRT major version (`sai doctor` shows which). Either the TensorRT
backend loads it (it dlopens the library after loading TensorRT; the library then registers its
plugins itself):

    tritonserver --model-repository=$PWD \\
        --backend-config=tensorrt,plugins=$PWD/plugins/{plugin_name}

or preload the autoload library, which brings in the container's libnvinfer and then the plugins:

    LD_PRELOAD=$PWD/plugins/{autoload_name} tritonserver --model-repository=$PWD

Preloading `{plugin_name}` itself registers nothing (TensorRT is not loaded yet at that point).
The plan must come from the same TensorRT version and GPU architecture as the Triton container,
unless it was built with `sai convert --version-compatible`: the plugin library is then serialized
into the plan, and Triton must be told to run the lean runtime such a plan carries:

    tritonserver --model-repository=$PWD --backend-config=tensorrt,version-compatible=true \\
        --backend-config=tensorrt,plugins=$PWD/plugins/{plugin_name}
{vc_note}{plugin_note}
## Checking

    curl localhost:8000/v2/models/{onnx_name}/config
    curl localhost:8000/v2/health/ready
"""


BATCHING = {
    True: "Both models take `input` as [N, {channels}, H, W] float (N up to the model's `max_batch_size`) and\n"
          "batch requests dynamically (same-shaped requests only; see `dynamic_batching` in each config.pbtxt).",
    False: "Both models have `max_batch_size: 0` (`--max-batch 0`): Triton does not batch them; each request's\n"
           "`input` carries its own batch dimension, [N, {channels}, H, W] float, and requests run one by one.",
}


IMAGES_NOTE = """
## Images in

`{base}` is an ensemble: `{base}_preprocess` (python backend) takes `images`, uint8 [N, {channels}, H, W]
or [N, H, W, {channels}] in the model's colour order, normalises them as recorded from the checkpoint
({norm}; the parameters of its config.pbtxt, applied by sai's own `sai_preprocess.py` beside its
`model.py`), and `{target}` runs them. Clients send uint8 images to `{base}`, float inputs to `{target}`.
"""

LABELS_NOTE = """
The classifier output carries the class names (`labels.txt`, `label_filename`): ask for top-k labels with
Triton's classification extension, e.g. `InferRequestedOutput("logits", class_count=5)` on `{base}`.
"""


def written_mbs(root: Path, model: str) -> int:
    """``max_batch_size`` of a config already written under ``root`` (the ensemble must not exceed it)."""
    from sai.runtime import triton_config as tc

    return int(tc.parse((root / model / "config.pbtxt").read_text()).max_batch_size)


def _inside(root: Path, *parts: str) -> Path:
    """``root / parts`` after checking that it resolves inside ``root`` (no write escapes the repository)."""
    dest = root.joinpath(*parts).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise SaiError(f"refusing to write {dest}: outside the repository being written ({root})")
    return dest


def export_triton(outdir, repo, *, name: Optional[str] = None, max_batch: Optional[int] = None,
                  instances: int = 1, max_queue_delay_us: int = 5000, gpus: Optional[list[int]] = None,
                  plugin_library: Optional[str] = None, verify: bool = True, force: bool = False,
                  on_published: Optional[Callable[[Path], None]] = None, portable: bool = False,
                  repository_path: Optional[str] = None, ort_ops_library: Optional[str] = None) -> dict:
    """Write the repository into ``repo`` (atomically: a temporary sibling renamed at the end).
    ``max_batch``: None = the engine profile's max batch, 0 = no batching (Triton's meaning), else >= 1.
    ``verify``: check the OUTDIR's files against its manifest's sha256 first. ``force``: replace ``repo``
    even when it holds files sai did not write. ``on_published``: see ``sai.outputs.publish_dir``.
    ``portable``: ship the portable model.onnx even where libsai_ort_ops.so is built; ``repository_path``: the
    repository's absolute path as Triton will see it (default: ``repo``); ``ort_ops_library``: the library to
    ship (default: ``sai.runtime.ort_ops.find_library``). See the module docstring."""
    outdir = Path(outdir)
    manifest = read_manifest(outdir)
    if manifest is None or not (outdir / ONNX_NAME).is_file():
        raise SaiError(f"{outdir} is not a sai convert OUTDIR (no {MANIFEST_NAME} / {ONNX_NAME}); run sai convert first")
    if manifest.get("kind") == "detector":  # images in, detections out: sai.runtime.triton_detector
        import sys

        from sai.runtime.triton_detector import export_detector_triton

        return export_detector_triton(sys.modules[__name__], outdir, manifest, repo, name=name, max_batch=max_batch,
                                      instances=instances, max_queue_delay_us=max_queue_delay_us, gpus=gpus,
                                      verify=verify, force=force,
                                      on_published=on_published, portable=portable,
                                      repository_path=repository_path, ort_ops_library=ort_ops_library)
    # every setting first, before any file is read or written
    base = check_name(name) if name is not None else check_name(str(manifest.get("arch") or "sai_model"),
                                                                 "the manifest's arch (pass --name)")
    if max_batch is not None:
        _count(max_batch, "--max-batch", 0)
    _count(instances, "--instances", 1)
    _count(max_queue_delay_us, "--max-delay-ms (in microseconds)", 0)
    for g in gpus or []:
        _count(g, "--gpus id", 0)
    if gpus is not None and len(set(gpus)) != len(gpus):
        raise SaiError(f"--gpus lists a GPU twice ({gpus}); list each GPU once")
    repo = Path(repo).resolve()
    src = outdir.resolve()
    if repo == src or repo.is_relative_to(src) or src.is_relative_to(repo):
        raise SaiError(f"-o {repo} overlaps the OUTDIR {src}; write the repository to a separate folder")
    if repo.exists() and not repo.is_dir():
        raise SaiError(f"-o {repo} exists and is not a directory; choose a new or empty -o directory")
    repo = check_output_dir(repo, "-o", what="sai export-triton", force=force, protect=[src, plugin_library])
    recover_interrupted(repo)  # leftovers of a run killed with SIGKILL
    meta = manifest.get("metadata") or {}
    shapes = (manifest.get("shapes") or {}).get("input") or {}
    profile_max = int((shapes.get("max") or [8])[0])
    mbs = profile_max if max_batch is None else max_batch
    plan = outdir / PLAN_NAME
    if verify:
        verify_outdir(outdir, manifest, [ONNX_NAME] + ([PLAN_NAME] if plan.is_file() else []))
    inputs, outputs = onnx_io(outdir / ONNX_NAME)
    from sai.runtime import triton_config as tc

    tensors = [tc.Tensor(s.name, s.data_type, s.dims) for s in inputs]
    extras = tc.model_extras(manifest, tensors)  # warmup, labels file, parameters
    labels = tc.labels_text(meta.get("classes"))
    preferred = sorted({p for p in (2, 4, 8, 16, 32) if p <= mbs} | {mbs}) if mbs > 0 else []
    if plugin_library is not None and not Path(plugin_library).is_file():
        raise SaiError(f"plugin library {plugin_library} does not exist; build it with `make plugins`")
    ort_lib, ort_note = _ort_ops_choice(portable, gpus, ort_ops_library)
    served = _served_path(repository_path, repo)
    tmp = owned_tempdir(f".{repo.name}.tmp-", repo.parent)  # SaiError naming the folder if it cannot
    written = {}
    try:
        onnx_name = f"{base}_onnx"
        _inside(tmp, onnx_name, "1").mkdir(parents=True)
        ort = _write_onnx_model(outdir, _inside(tmp, onnx_name), ort_lib, ort_note, f"{served}/{onnx_name}")
        _inside(tmp, onnx_name, "config.pbtxt").write_text(model_config(
            onnx_name, "onnxruntime_onnx", inputs, outputs, max_batch_size=mbs, kind="KIND_CPU" if not gpus else
            "KIND_GPU", instances=instances, max_queue_delay_us=max_queue_delay_us, preferred=preferred, gpus=gpus,
            op_libraries=[ort["op_library_filename"]] if ort["op_library_filename"] else [], **extras))
        if labels:
            _inside(tmp, onnx_name, tc.LABELS_FILE).write_text(labels)
        written[onnx_name] = "onnxruntime_onnx"
        what = f" (fused CPU model, {ort['fused_blocks']} sai::SparseBlock nodes)" if ort["fused_blocks"] else ""
        rows = [f"| `{onnx_name}` | onnxruntime_onnx | `{onnx_name}/1/model.onnx`{what} |"]
        trt_name = f"{base}_trt"
        skipped = None
        if plan.is_file():
            trt_mbs = min(mbs, profile_max)
            _inside(tmp, trt_name, "1").mkdir(parents=True)
            shutil.copy2(plan, _inside(tmp, trt_name, "1", "model.plan"))
            _inside(tmp, trt_name, "config.pbtxt").write_text(model_config(
                trt_name, "tensorrt_plan", inputs, outputs, max_batch_size=trt_mbs, kind="KIND_GPU",
                instances=max(instances, 2), max_queue_delay_us=max_queue_delay_us,
                preferred=[p for p in preferred if p <= trt_mbs], gpus=gpus or [0], **extras))
            if labels:
                _inside(tmp, trt_name, tc.LABELS_FILE).write_text(labels)
            written[trt_name] = "tensorrt_plan"
            rows.append(f"| `{trt_name}` | tensorrt_plan | `{trt_name}/1/model.plan` |")
        else:
            skipped = f"no {PLAN_NAME} in {outdir} (engines are built by sai convert where TensorRT and a GPU exist)"
        if plugin_library is None:
            from sai.runtime.plugins import find_plugin_library

            found = find_plugin_library()
            plugin_library = str(found) if found else None
        plugin_name, autoload_name = "libsai_trt_plugins.so", "libsai_trt_plugins_autoload.so"
        plugin_note = ""
        if plugin_library:
            _inside(tmp, "plugins").mkdir()
            shutil.copy2(plugin_library, _inside(tmp, "plugins", plugin_name))
            companion = Path(plugin_library).with_name(autoload_name)
            if companion.is_file():
                shutil.copy2(companion, _inside(tmp, "plugins", autoload_name))
            else:
                plugin_note = (f"\n`{autoload_name}` (for LD_PRELOAD) was not found beside the plugin library: "
                               "`make plugins` builds it; copy it to `plugins/`.\n")
        else:
            plugin_note = ("\nThe plugin library was not built where this repository was written: build it with "
                           "`make plugins` and copy it to `plugins/`.\n")
        vc = bool((manifest.get("engine") or {}).get("version_compatible"))
        vc_note = ("\nThis plan was built version-compatible: use the last command.\n" if vc and trt_name in written
                   else "")
        noise = meta.get("noise_inputs") or []
        noise_note = ""
        if noise:
            noise_note = (f"\nThis model is stochastic: every request must also carry the {len(noise)} noise inputs "
                          "(`noise.<block>.mask{1,2}`, uniform [0, 1) of shape [N, 2, ceil(H/s), ceil(W/s)] for the "
                          "stride s in the model's `sai.noise_inputs` metadata); Triton does not draw them.\n")
        channels = inputs[0].dims[0] if inputs[0].dims else "C"
        images_note = ""
        why_not = tc.image_models_reason(meta)
        if why_not is None:
            target = trt_name if trt_name in written else onnx_name
            written.update(tc.write_image_models(lambda *p: _inside(tmp, *p), base, meta, tensors[0],
                                                 [tc.Tensor(o.name, o.data_type, o.dims) for o in outputs],
                                                 target=target, max_batch_size=min(mbs, written_mbs(tmp, target))))
            images_note = IMAGES_NOTE.format(base=base, target=target, channels=channels,
                                             norm=meta["input_norm"].get("formula", ""))
        else:
            images_note = f"\nNo uint8-image ensemble: {why_not}; clients send the normalised float input.\n"
        if labels:
            images_note += LABELS_NOTE.format(base=base if why_not is None else onnx_name)
        _inside(tmp, "README.md").write_text(README.format(
            arch=manifest.get("arch"), sampling=meta.get("sampling"), precision=meta.get("precision"),
            outdir=outdir, rows="\n".join(rows), channels=channels,
            noise_note=noise_note, images_note=images_note, plugin_name=plugin_name, autoload_name=autoload_name,
            vc_note=vc_note, plugin_note=plugin_note, onnx_name=onnx_name, onnx_note=ort["readme"],
            batching=BATCHING[mbs > 0].format(channels=channels)))
        publish_dir(tmp, repo, "sai export-triton", force=force, on_published=on_published)
    except OSError as exc:  # a full disk, a folder that became unwritable, ...
        shutil.rmtree(tmp, ignore_errors=True)
        where = f" ({exc.filename})" if exc.filename else ""
        raise SaiError(f"cannot write the repository {repo}: {exc.strerror or exc}{where}; free space or choose a "
                       "writable -o folder (nothing was published)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"repo": str(repo), "models": written, "skipped": skipped, "plugin_library": plugin_library,
            "ort_ops": {k: ort[k] for k in ("op_library_filename", "fused_blocks", "note")}}


def _ort_ops_choice(portable: bool, gpus: Optional[list[int]], library: Optional[str]) -> tuple[Optional[Path], str]:
    """(the custom-op library to ship, "") or (None, why the portable model.onnx is shipped)."""
    from sai.runtime import ort_ops

    if portable:
        return None, "--portable-onnx"
    if gpus:
        return None, f"--gpus: GPU instances, where {LIBRARY_NAME} (CPU kernels) does not apply"
    if library is not None:
        if not Path(library).is_file():
            raise SaiError(f"custom-op library {library} does not exist; build it with "
                           "python -m sai.runtime.build_ort_ops")
        return Path(library), ""
    path, why = ort_ops.find_library()
    return (path, "") if path is not None else (None, why)


def _served_path(repository_path: Optional[str], repo: Path) -> str:
    """The repository's absolute path on the Triton host (``--repository-path``, default ``repo``)."""
    if repository_path is None:
        return str(repo)
    text = str(repository_path)
    if not text.startswith("/") or any(ord(c) < 32 for c in text) or "/../" in f"{text}/":
        raise SaiError(f"--repository-path {text!r} must be an absolute path (where Triton sees the repository, "
                       "e.g. /models)")
    return text.rstrip("/") or "/"


def _write_onnx_model(outdir: Path, model_dir: Path, library: Optional[Path], why_not: str, served_dir: str) -> dict:
    """``model_dir/1/model.onnx``: the fused CPU model with ``library`` (and the libraries it links from outside
    the system) beside it in ``model_dir``, or the portable model. Returns the op library path to name in the
    config (or None), the blocks fused, a note and the README paragraph."""
    from sai.runtime import ort_ops
    from sai.runtime.convert import write_fused_onnx

    dest = model_dir / "1" / "model.onnx"
    portable = ("The onnxruntime model needs nothing else: the sai custom ops carry ONNX model-local functions that "
                "ONNX Runtime inlines (the portable model.onnx{why}; about as fast as the dense ResNet there).")
    fused_blocks = 0
    if library is not None:
        disk = ort_ops.on_disk_fused(outdir / ONNX_NAME)
        if disk is not None:
            shutil.copy2(disk[0], dest)
            fused_blocks = disk[1]
        else:  # an OUTDIR of a sai before model.cpu-fused.onnx (or one whose model.onnx changed): fuse it here
            made = write_fused_onnx(outdir / ONNX_NAME, dest)
            fused_blocks, why_not = made["blocks"], made.get("reason", "")
    if not fused_blocks:
        shutil.copy2(outdir / ONNX_NAME, dest)
        note = f"portable model.onnx ({why_not})" if why_not else "portable model.onnx"
        return {"op_library_filename": None, "fused_blocks": 0, "note": note,
                "readme": textwrap.fill(portable.format(why=f": {why_not}" if why_not else ""), 110,
                                        break_on_hyphens=False, break_long_words=False)}
    files, origin = ort_ops.library_bundle(library)
    shutil.copy2(files[0], model_dir / LIBRARY_NAME)
    for f in files[1:]:
        shutil.copy2(f, model_dir / f.name)
    op_path = f"{served_dir}/{LIBRARY_NAME}"
    beside = ", ".join(f"`{f.name}`" for f in files[1:])
    text = (f"The onnxruntime model is sai's fused CPU model ({fused_blocks} sparse blocks as `sai::SparseBlock` "
            f"nodes, which have no function body): its config.pbtxt names `{LIBRARY_NAME}` in `model_operations` by "
            f"the absolute path `{op_path}`, which Triton's onnxruntime backend registers as is, so the repository "
            "must be at that path where Triton runs (`sai export-triton --repository-path /models` writes it for a "
            f"container that mounts it at /models). The library is in the model's folder"
            + (f", with {beside} that it links" if beside else "")
            + "; it was compiled for the CPU of the machine that built it (`-march=native`) against the onnxruntime "
            "C API of sai's onnxruntime, so Triton's onnxruntime must be at least as new. `--portable-onnx` writes the "
            "portable model instead (function bodies, no library, slower).")
    if not origin and beside:
        text += (f"\n\nThis build of `{LIBRARY_NAME}` finds {beside} only at the path it was built with: start Triton "
                 f"with `LD_LIBRARY_PATH=<this repository>/{model_dir.name}`, or rebuild the library "
                 "(`python -m sai.runtime.build_ort_ops --force`) so that it looks beside itself.")
    text = "\n\n".join(textwrap.fill(par, 110, break_on_hyphens=False, break_long_words=False)
                         for par in text.split("\n\n"))
    return {"op_library_filename": op_path, "fused_blocks": fused_blocks,
            "note": f"fused CPU model ({fused_blocks} blocks) with {op_path}", "readme": text}
