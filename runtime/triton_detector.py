"""`sai export-triton` for a detector OUTDIR (``manifest kind: detector``): a Triton model repository of three
models.

- ``<name>_onnx`` (onnxruntime_onnx): the detector graph. Inputs ``input`` FP32 [N, 3, H, W] (the padded batch),
  ``img_shape`` INT64 [N, 2], ``scale_factor`` FP32 [N]; outputs ``dets`` [N, 100, 5], ``labels`` [N, 100],
  ``num_dets`` [N]. The fused CPU model (``model.cpu-fused.onnx`` of the OUTDIR) with libsai_ort_ops.so in
  ``model_operations`` where the OUTDIR has one and the library is built (as the classifier's onnxruntime model,
  ``sai.runtime.triton``), else the portable ``model.onnx``. Per-image scalars are ``dims: [1]`` with
  ``reshape: { shape: [] }`` (Triton's form for a batched tensor of rank 1).
- ``<name>_preprocess`` (python backend): ``images`` UINT8 [N, H, W, 3] RGB -> ``input``, ``img_shape``,
  ``scale_factor``: mmdetection v0.6's test pipeline as ``sai.runtime.detector_engine`` runs it (keep-ratio resize
  to ``img_scale``, PyTorch's CPU bilinear kernel, ``(x - mean) / std``, zero padding to ``size_divisor``); the
  numpy functions are copied from ``sai/runtime/detector_engine.py`` into ``sai_detector_preprocess.py`` beside
  ``model.py`` (one implementation), the settings are the config's ``parameters``.
- ``<name>`` (ensemble): ``images`` in, ``dets`` / ``labels`` / ``num_dets`` out, in the original images' pixels.
  Class names: ``labels.txt`` in its folder (line i names label i) and the ``sai.class_names`` parameter.

Images of one request share a size (a tensor); Triton's dynamic batcher batches requests whose shapes are equal,
so every graph batch is of one padded size, as the engine's groups.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Optional

from sai.errors import SaiError

PREPROCESS_COPY = "sai_detector_preprocess.py"
DET_INPUTS = (("input", "TYPE_FP32", [3, -1, -1]), ("img_shape", "TYPE_INT64", [2]), ("scale_factor", "TYPE_FP32", []))
IMAGES = "images"

PYTHON_MODEL = '''"""Triton python-backend model written by sai export-triton: uint8 RGB images [N, H, W, 3] -> the detector
graph's inputs (input [N, 3, Hp, Wp], img_shape [N, 2], scale_factor [N]).

The preprocessing is sai's own: sai_detector_preprocess.py beside this file holds the numpy functions of
sai/runtime/detector_engine.py; the settings are this model's config parameters (sai.preprocessing).
"""

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

_spec = importlib.util.spec_from_file_location("sai_detector_preprocess",
                                               os.path.join(os.path.dirname(__file__), "sai_detector_preprocess.py"))
sai_detector_preprocess = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sai_detector_preprocess)


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.pre = json.loads(params["sai.preprocessing"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
                x, shapes, scales = sai_detector_preprocess.preprocess_batch(images, self.pre)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input", x), pb_utils.Tensor("img_shape", shapes),
                    pb_utils.Tensor("scale_factor", scales)]))
            except Exception as exc:  # a bad request answers with its error, the model keeps serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
'''

BATCH_FUNCTION = '''

def preprocess_batch(images, pre):
    """uint8 RGB images [N, H, W, 3] (one size) -> (input [N, 3, Hp, Wp] float32, img_shape [N, 2] int64,
    scale_factor [N] float32): sai.runtime.detector_engine.preprocess for images of one size."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        raise ValueError(f"images must be uint8 RGB [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    d = int(pre["size_divisor"])
    h, w = images.shape[1:3]
    nh, nw, s = rescale_size(h, w, pre["img_scale"])
    if nh < 1 or nw < 1:
        raise ValueError(f"an image of {h}x{w} pixels rescales to {nh}x{nw}; pass a less extreme aspect ratio")
    ph, pw = -(-nh // d) * d, -(-nw // d) * d
    out = np.zeros((images.shape[0], 3, ph, pw), np.float32)
    for i, img in enumerate(images):
        x = resize_bilinear(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32), nh, nw)
        if not pre["to_rgb"]:
            x = x[::-1]
        out[i, :, :nh, :nw] = (x - mean) / std
    n = images.shape[0]
    return out, np.tile(np.array([[nh, nw]], np.int64), (n, 1)), np.full(n, s, np.float32)
'''


def preprocess_source() -> str:
    """``sai_detector_preprocess.py``: the detector engine's numpy resize functions (their source, copied) and a
    batch function over them; numpy only."""
    from sai.runtime import detector_engine as de

    parts = [inspect.getsource(f) for f in (de.rescale_size, de._fma, de._linear_taps, de.resize_bilinear)]
    head = ('"""Written by sai export-triton: the detector preprocessing of sai/runtime/detector_engine.py '
            '(copied functions)."""\n\nfrom __future__ import annotations\n\nfrom collections.abc import Sequence\n\nimport numpy as np\n\n\n')
    return head + "\n\n".join(parts) + BATCH_FUNCTION


def _scalar_dims(cfg) -> None:
    """Batched per-image scalars (dims ``[]``): ``dims: [1]`` and ``reshape: { shape: [] }``."""
    for t in (*cfg.input, *cfg.output):
        if not list(t.dims):
            t.dims.append(1)
            t.reshape.SetInParent()


def export_detector_triton(triton: ModuleType, outdir: Path, manifest: Mapping, repo, *, name: Optional[str],
                           max_batch: Optional[int], instances: int, max_queue_delay_us: int, gpus: Optional[list[int]], verify: bool,
                           force: bool, on_published: Optional[Callable[[Path], None]], portable: bool,
                           repository_path: Optional[str], ort_ops_library: Optional[str]) -> dict:
    """The repository (module docstring), written atomically as ``sai.runtime.triton.export_triton`` writes a
    classifier's; the same settings checks and result keys. ``triton``: the module ``sai.runtime.triton`` (its
    helpers: names, paths, the onnxruntime model), passed in so that the two modules do not import each other."""
    _inside, _ort_ops_choice, _served_path = triton._inside, triton._ort_ops_choice, triton._served_path
    _write_onnx_model, check_name, onnx_io = triton._write_onnx_model, triton.check_name, triton.onnx_io
    from sai.outputs import check_output_dir, owned_tempdir, publish_dir, recover_interrupted
    from sai.runtime import ort_ops
    from sai.runtime import triton_config as tc
    from sai.runtime.detector_engine import check_preprocessing
    from sai.runtime.integrity import verify_outdir
    from sai.runtime.loader import FUSED_ONNX_NAME, MANIFEST_NAME, ONNX_NAME

    base = check_name(name) if name is not None else check_name(
        str(manifest.get("preset") or manifest.get("arch") or "sai_detector"), "the manifest's preset (pass --name)")
    if max_batch is not None:
        tc.check_count(max_batch, "--max-batch", 1)
    tc.check_count(instances, "--instances", 1)
    tc.check_count(max_queue_delay_us, "--max-delay-ms (in microseconds)", 0)
    for g in gpus or []:
        tc.check_count(g, "--gpus id", 0)
    pre = check_preprocessing(manifest.get("preprocessing"), str(outdir / MANIFEST_NAME))
    classes = manifest.get("classes")
    repo = Path(repo).resolve()
    src = outdir.resolve()
    if repo == src or repo.is_relative_to(src) or src.is_relative_to(repo):
        raise SaiError(f"-o {repo} overlaps the OUTDIR {src}; write the repository to a separate folder")
    if repo.exists() and not repo.is_dir():
        raise SaiError(f"-o {repo} exists and is not a directory; choose a new or empty -o directory")
    repo = check_output_dir(repo, "-o", what="sai export-triton", force=force, protect=[src])
    recover_interrupted(repo)
    if verify:
        fused_entry = (manifest.get("fused") or {}).get("file")
        verify_outdir(outdir, manifest, [ONNX_NAME] + ([FUSED_ONNX_NAME] if fused_entry == FUSED_ONNX_NAME else []))
    inputs, outputs = onnx_io(outdir / ONNX_NAME)
    got_in = [(s.name, s.data_type, len(s.dims)) for s in inputs]
    if got_in != [(n, t, len(d)) for n, t, d in DET_INPUTS]:
        raise SaiError(f"{outdir / ONNX_NAME} does not have the detector graph's inputs (input, img_shape, "
                       f"scale_factor), it has {[s.name for s in inputs]}; re-run sai convert")
    mbs = 8 if max_batch is None else max_batch
    lib, why = _ort_ops_choice(portable, gpus, ort_ops_library)
    if lib is not None and ort_ops.on_disk_fused(outdir / ONNX_NAME) is None:
        lib, why = None, "the OUTDIR has no fused CPU detector (model.cpu-fused.onnx)"
    served = _served_path(repository_path, repo)
    labels = tc.labels_text(classes)
    params = {"sai.kind": "detector", "sai.preset": str(manifest.get("preset")),
              "sai.preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()}}
    if labels:
        params["sai.class_names"] = ",".join(classes)
    out_tensors = [tc.Tensor(o.name, o.data_type, o.dims) for o in outputs]
    det_in = [tc.Tensor(n, t, list(d)) for n, t, d in DET_INPUTS]
    tmp = owned_tempdir(f".{repo.name}.tmp-", repo.parent)
    written: dict[str, str] = {}
    try:
        onnx_name, pre_name = f"{base}_onnx", f"{base}_preprocess"
        _inside(tmp, onnx_name, "1").mkdir(parents=True)
        ort = _write_onnx_model(outdir, _inside(tmp, onnx_name), lib, why, f"{served}/{onnx_name}")
        cfg = tc.inference_config(onnx_name, "onnxruntime_onnx", det_in, out_tensors, max_batch_size=mbs,
                                  kind="KIND_GPU" if gpus else "KIND_CPU", instances=instances,
                                  max_queue_delay_us=max_queue_delay_us, preferred=[mbs], gpus=gpus,
                                  parameters=params, op_libraries=[ort["op_library_filename"]]
                                  if ort["op_library_filename"] else [])
        _scalar_dims(cfg)
        _inside(tmp, onnx_name, "config.pbtxt").write_text(tc.to_text(cfg))
        written[onnx_name] = "onnxruntime_onnx"
        _inside(tmp, pre_name, "1").mkdir(parents=True)
        _inside(tmp, pre_name, "1", tc.PYTHON_MODEL_FILE).write_text(PYTHON_MODEL)
        _inside(tmp, pre_name, "1", PREPROCESS_COPY).write_text(preprocess_source())
        pcfg = tc.inference_config(pre_name, "", [tc.Tensor(IMAGES, "TYPE_UINT8", [-1, -1, 3])], det_in,
                                   max_batch_size=mbs, kind="KIND_CPU", instances=instances, max_queue_delay_us=0,
                                   preferred=[], parameters=params, backend="python")
        pcfg.ClearField("dynamic_batching")  # the ensemble's requests, one at a time: each is one image size
        _scalar_dims(pcfg)
        _inside(tmp, pre_name, "config.pbtxt").write_text(tc.to_text(pcfg))
        written[pre_name] = "python"
        m = tc.pb()
        ens = m.ModelConfig(name=base, platform="ensemble", max_batch_size=mbs)
        ens.version_policy.latest.num_versions = tc.VERSION_POLICY_LATEST
        tc._tensors(ens.input, [tc.Tensor(IMAGES, "TYPE_UINT8", [-1, -1, 3])], True)
        tc._tensors(ens.output, out_tensors, True)
        for k, v in params.items():
            ens.parameters[k].string_value = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        step = ens.ensemble_scheduling.step.add(model_name=pre_name, model_version=-1)
        step.input_map[IMAGES] = IMAGES
        for n, _, _ in DET_INPUTS:
            step.output_map[n] = f"_sai_{n}"
        step = ens.ensemble_scheduling.step.add(model_name=onnx_name, model_version=-1)
        for n, _, _ in DET_INPUTS:
            step.input_map[n] = f"_sai_{n}"
        for o in out_tensors:
            step.output_map[o.name] = o.name
        _scalar_dims(ens)
        _inside(tmp, base, "1").mkdir(parents=True)
        _inside(tmp, base, "config.pbtxt").write_text(tc.to_text(ens))
        if labels:
            _inside(tmp, base, tc.LABELS_FILE).write_text(labels)
        written[base] = "ensemble"
        _inside(tmp, "README.md").write_text(README.format(
            base=base, onnx_name=onnx_name, pre_name=pre_name, outdir=outdir, onnx_note=ort["readme"],
            scale=tuple(pre["img_scale"]), div=pre["size_divisor"]))
        publish_dir(tmp, repo, "sai export-triton", force=force, on_published=on_published)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        where = f" ({exc.filename})" if exc.filename else ""
        raise SaiError(f"cannot write the repository {repo}: {exc.strerror or exc}{where}; free space or choose a "
                       "writable -o folder (nothing was published)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"repo": str(repo), "kind": "detector", "models": written, "skipped": "a detector has no TensorRT plan from sai convert yet",
            "plugin_library": None, "ort_ops": {k: ort[k] for k in ("op_library_filename", "fused_blocks", "note")}}


README = """# Triton model repository of a sai detector (written by sai export-triton)

From `{outdir}`.

| model | platform | |
|---|---|---|
| `{base}` | ensemble | `images` UINT8 [N, H, W, 3] RGB -> `dets` FP32 [N, 100, 5], `labels` INT64 [N, 100], `num_dets` INT64 [N] |
| `{pre_name}` | python | resize keep-ratio to {scale}, normalise, pad to a multiple of {div} |
| `{onnx_name}` | onnxruntime_onnx | the detector graph: `input`, `img_shape`, `scale_factor` -> detections |

Send one or more images of one size per request to `{base}`; boxes come back as x1, y1, x2, y2, score in the
original images' pixels, sorted by score, zero padded past `num_dets`. Label i is line i of `{base}/labels.txt`
(also the `sai.class_names` parameter). The python backend needs numpy in Triton's Python environment.

{onnx_note}

Start: `tritonserver --model-repository=$PWD`.
"""
