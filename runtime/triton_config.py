"""Triton model configs built as Triton's own ``ModelConfig`` protobuf (``model_config_pb2`` from
tritonclient) and written in protobuf text format; every text is parsed back into a ``ModelConfig`` and
compared with what was built before it is used, so a config Triton cannot read is never written.

Besides the inference models (``tensorrt_plan``, ``onnxruntime_onnx``) this builds:

- ``model_warmup``: one random-data request at the converted opt shape, so the first client request
  does not pay for the backend's lazy initialisation (engine contexts, ORT arena, CUDA graphs);
- labels: ``label_filename`` on the classifier output (``labels.txt``, the checkpoint's class names), so
  Triton's classification extension (``class_count``) answers ``score:index:label``;
- ``parameters``: the recorded preprocessing and sai metadata (strings, as Triton's map holds them);
- ``<name>_preprocess``: a python-backend model that takes uint8 images (NCHW or NHWC, batched) and
  normalises them as the model records, with ``sai/runtime/preprocess.py`` itself copied beside its
  ``model.py`` (one implementation for ``engine.infer``, ``sai serve`` and Triton);
- ``<name>``: an ensemble of the two, so a Triton client sends ``images`` (uint8) and gets ``logits``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sai.errors import SaiError
from sai.lazy import lazy_import

IMAGES = "images"  # the uint8 input of the preprocessing model and the ensemble
VERSION_POLICY_LATEST = 1


MODEL_CONFIG_PB2 = lazy_import("tritonclient.grpc.model_config_pb2",
                               purpose="write Triton model configs (Triton's ModelConfig protobuf)")


def pb():
    """Triton's ``model_config_pb2`` (tritonclient[grpc]); MissingDependencyError naming the extra."""
    return MODEL_CONFIG_PB2.load()


@dataclass
class Tensor:
    name: str
    data_type: str  # TYPE_FP32, ...
    dims: list[int]  # without the batch dim; -1 for dynamic


def _check_text(text: str, what: str) -> str:
    if not isinstance(text, str) or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise SaiError(f"{what} {text!r} contains control characters; Triton configs cannot carry it")
    return text


def check_count(value, what: str, lowest: int) -> int:
    """``value`` if it is an int (not a bool) >= ``lowest``; SaiError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise SaiError(f"{what} must be an integer >= {lowest}, got {value!r}")
    return value


def _tensors(msgs, specs: Sequence[Tensor], batched: bool, labels_file: Optional[str] = None,
             label_output: Optional[str] = None) -> None:
    m = pb()
    for s in specs:
        t = msgs.add()
        t.name = _check_text(s.name, "tensor name")
        t.data_type = m.DataType.Value(s.data_type)
        t.dims.extend(list(s.dims) if batched else [-1, *s.dims])
        if labels_file and s.name == label_output:
            t.label_filename = labels_file


def inference_config(name: str, platform: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor], *,
                     max_batch_size: int, kind: str, instances: int, max_queue_delay_us: int,
                     preferred: Sequence[int], gpus: Optional[Sequence[int]] = None,
                     warmup_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                     labels_file: Optional[str] = None, label_output: str = "logits",
                     parameters: Optional[Mapping[str, Any]] = None, backend: Optional[str] = None,
                     op_libraries: Sequence[str] = ()):
    """A ``ModelConfig`` for one model. ``max_batch_size=0`` is Triton's no batching (dims then include the
    batch dim, no ``dynamic_batching``); ``warmup_shapes``: name -> full dims (without batch) of one
    random-data warmup request; ``labels_file`` goes on ``label_output``; ``parameters`` become strings
    (non-strings as JSON); ``op_libraries``: custom-op libraries the backend registers before it loads the
    model (``model_operations { op_library_filename }``; Triton's onnxruntime backend passes each to
    onnxruntime's RegisterCustomOpsLibrary as is, so give absolute paths as the server sees them)."""
    m = pb()
    cfg = m.ModelConfig()
    cfg.name = _check_text(name, "model name")
    if platform:
        cfg.platform = platform
    if backend:
        cfg.backend = backend
    cfg.max_batch_size = check_count(max_batch_size, "max_batch_size", 0)
    cfg.version_policy.latest.num_versions = VERSION_POLICY_LATEST
    batched = max_batch_size > 0
    _tensors(cfg.input, inputs, batched)
    _tensors(cfg.output, outputs, batched, labels_file, label_output)
    if batched:
        pref = sorted({int(p) for p in preferred if 1 <= int(p) <= max_batch_size})
        cfg.dynamic_batching.preferred_batch_size.extend(pref)
        cfg.dynamic_batching.max_queue_delay_microseconds = check_count(max_queue_delay_us,
                                                                   "max_queue_delay_microseconds", 0)
    group = cfg.instance_group.add()
    group.count = check_count(instances, "instance count", 1)
    group.kind = m.ModelInstanceGroup.Kind.Value(kind)
    for g in gpus or []:
        group.gpus.append(check_count(g, "GPU id", 0))
    if warmup_shapes:
        w = cfg.model_warmup.add()
        w.name = "sai_random_sample"
        w.batch_size = 1 if batched else 0
        types = {s.name: s.data_type for s in inputs}
        for tname, dims in warmup_shapes.items():
            dims = [int(d) for d in dims]
            if any(d < 1 for d in dims):
                raise SaiError(f"warmup dims of {tname} must be positive, got {dims}")
            inp = w.inputs[tname]
            inp.data_type = m.DataType.Value(types[tname])
            inp.dims.extend(dims if batched else [1, *dims])
            inp.random_data = True
    for key, value in (parameters or {}).items():
        cfg.parameters[_check_text(str(key), "parameter name")].string_value = (
            value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))
    for lib in op_libraries:
        cfg.model_operations.op_library_filename.append(_check_text(str(lib), "op library path"))
    return cfg


def preprocess_config(name: str, channels: int, norm: Mapping[str, Any], *, max_batch_size: int,
                      output_type: str = "TYPE_FP32", instances: int = 1, kind: str = "KIND_CPU"):
    """The python-backend model: ``images`` uint8 [C,H,W] or [H,W,C] (per batch item) -> ``input`` [C,H,W]."""
    cfg = inference_config(name, "", [Tensor(IMAGES, "TYPE_UINT8", [-1, -1, -1])],
                           [Tensor("input", output_type, [int(channels), -1, -1])], max_batch_size=max_batch_size,
                           kind=kind, instances=instances, max_queue_delay_us=0, preferred=[],
                           parameters={"input_norm": dict(norm), "channels": str(int(channels)),
                                       "output_dtype": {"TYPE_FP32": "float32", "TYPE_FP16": "float16"}[output_type]},
                           backend="python")
    return cfg


def ensemble_config(name: str, preprocess_model: str, model: str, outputs: Sequence[Tensor], *, max_batch_size: int,
                    image_input: str = "input", labels_file: Optional[str] = None, label_output: str = "logits"):
    """``images`` (uint8) -> ``preprocess_model`` -> ``model`` -> its outputs, under the model's names."""
    m = pb()
    cfg = m.ModelConfig()
    cfg.name = _check_text(name, "model name")
    cfg.platform = "ensemble"
    cfg.max_batch_size = check_count(max_batch_size, "max_batch_size", 0)
    batched = max_batch_size > 0
    _tensors(cfg.input, [Tensor(IMAGES, "TYPE_UINT8", [-1, -1, -1])], batched)
    _tensors(cfg.output, outputs, batched, labels_file, label_output)
    pre = cfg.ensemble_scheduling.step.add()
    pre.model_name, pre.model_version = preprocess_model, -1
    pre.input_map[IMAGES] = IMAGES
    pre.output_map["input"] = "_sai_preprocessed"
    run = cfg.ensemble_scheduling.step.add()
    run.model_name, run.model_version = model, -1
    run.input_map[image_input] = "_sai_preprocessed"
    for o in outputs:
        run.output_map[o.name] = o.name
    return cfg


def to_text(cfg) -> str:
    """``cfg`` in protobuf text format, after checking that the text parses back to the same ``ModelConfig``."""
    from google.protobuf import text_format

    text = text_format.MessageToString(cfg)
    back = parse(text)
    if back != cfg:  # pragma: no cover - a protobuf bug, not a user error
        raise RuntimeError(f"config of {cfg.name} does not survive a text-format round trip")
    return text


def parse(text: str):
    """A config.pbtxt parsed into Triton's ``ModelConfig``; SaiError naming the problem otherwise."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, pb().ModelConfig())
    except text_format.ParseError as exc:
        raise SaiError(f"not a valid Triton model config: {exc}") from None


PYTHON_MODEL = '''"""Triton python-backend model written by sai export-triton: uint8 images -> the model's normalised input.

The preprocessing is sai's own (sai_preprocess.py beside this file is sai/runtime/preprocess.py);
the record comes from this model's config parameters (input_norm, as sai recorded it from the checkpoint).
"""

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

_spec = importlib.util.spec_from_file_location("sai_preprocess", os.path.join(os.path.dirname(__file__),
                                                                              "sai_preprocess.py"))
sai_preprocess = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sai_preprocess)


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.norm = json.loads(params["input_norm"]["string_value"])
        self.channels = int(params["channels"]["string_value"])
        self.dtype = np.dtype(params["output_dtype"]["string_value"])
        self.table = sai_preprocess.pixel_table(self.norm, self.channels)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, "images").as_numpy()
                x = sai_preprocess.preprocess(images, self.norm, self.channels, table=self.table)
                out = pb_utils.Tensor("input", x.astype(self.dtype, copy=False))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # a bad request answers with its error, the model keeps serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
'''


# ---- what export_triton adds around the inference models ------------------------------------------

LABELS_FILE = "labels.txt"
PYTHON_MODEL_FILE, PREPROCESS_COPY = "model.py", "sai_preprocess.py"


def model_extras(manifest: Mapping[str, Any], inputs: Sequence[Tensor]) -> dict:
    """``inference_config`` keywords for a sai model: a warmup request at the converted opt shape (when the
    manifest has one for every input), the labels file where the model records class names, and the sai
    metadata as ``parameters``."""
    meta = manifest.get("metadata") or {}
    shapes = manifest.get("shapes") or {}
    warm = {}
    for s in inputs:
        opt = (shapes.get(s.name) or {}).get("opt")
        if isinstance(opt, list) and len(opt) == len(s.dims) + 1:
            warm[s.name] = [int(v) for v in opt[1:]]
    params = {f"sai.{k}": meta[k] for k in ("arch", "sampling", "precision", "input_norm") if k in meta}
    return {"warmup_shapes": warm if len(warm) == len(inputs) else None,
            "labels_file": LABELS_FILE if labels_text(meta.get("classes")) else None, "parameters": params}


def labels_text(classes: Any) -> Optional[str]:
    """The labels file (one class name per line, in logit order), None without usable names."""
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        return None
    if any("\n" in c or "\r" in c for c in classes):
        raise SaiError("a class name contains a line break; Triton's labels file cannot hold it")
    return "\n".join(classes) + "\n"


def image_models_reason(meta: Mapping[str, Any]) -> Optional[str]:
    """Why no uint8-image ensemble is written for a model with ``meta`` (None: it is)."""
    from sai.runtime.preprocess import usable_norm, why_not_applied

    if usable_norm(meta.get("input_norm")) is None:
        return why_not_applied(meta.get("input_norm"))
    if meta.get("noise_inputs"):
        return "the model is stochastic (its noise inputs are not drawn by Triton)"
    return None


def write_image_models(path_in, base: str, meta: Mapping[str, Any], image: Tensor, outputs: Sequence[Tensor], *,
                       target: str, max_batch_size: int) -> dict[str, str]:
    """``<base>_preprocess`` (python backend) and ``<base>`` (ensemble over ``target``) under ``path_in(...)``
    (a function giving checked paths inside the repository). Returns ``{model name: platform}``."""
    from sai.runtime import preprocess

    channels = int(image.dims[0]) if image.dims and image.dims[0] > 0 else len(meta["input_norm"]["mean"])
    pre_name = f"{base}_preprocess"
    path_in(pre_name, "1").mkdir(parents=True)
    path_in(pre_name, "1", PYTHON_MODEL_FILE).write_text(PYTHON_MODEL)
    path_in(pre_name, "1", PREPROCESS_COPY).write_text(Path(preprocess.__file__).read_text())
    path_in(pre_name, "config.pbtxt").write_text(to_text(preprocess_config(
        pre_name, channels, meta["input_norm"], max_batch_size=max_batch_size, output_type=image.data_type)))
    labels = labels_text(meta.get("classes"))
    path_in(base, "1").mkdir(parents=True)  # Triton wants a version folder, empty for an ensemble
    if labels:
        path_in(base, LABELS_FILE).write_text(labels)
    path_in(base, "config.pbtxt").write_text(to_text(ensemble_config(
        base, pre_name, target, outputs, max_batch_size=max_batch_size, image_input=image.name,
        labels_file=LABELS_FILE if labels else None)))
    return {pre_name: "python", base: "ensemble"}
