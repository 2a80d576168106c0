"""`sai serve` for a detector OUTDIR (``manifest kind: detector``): the KServe v2 codec of detection requests.

Inputs (one per request, either):

- ``images``: UINT8 ``[N, H, W, 3]`` (NHWC) or ``[N, 3, H, W]`` (NCHW) RGB pixels (the layout told by which
  dimension is 3; a ``layout`` parameter ``"NHWC"``/``"NCHW"`` settles a 3x3 image);
- ``images_encoded``: BYTES ``[N]``, each element a JPEG or PNG file (decoded with Pillow, converted to RGB; over
  JSON the elements are base64 strings, over the binary extension / gRPC raw bytes).

Outputs: ``dets`` FP32 ``[N, 100, 5]`` (x1, y1, x2, y2, score in the original images' pixels), ``labels`` INT64
``[N, 100]`` (0-based, -1 padded), ``num_dets`` INT64 ``[N]``; with the request parameter ``"class_names": true``
also ``label_names`` BYTES ``[N, 100]`` (the class name of each label, empty where padded). The class names are
in the model config's ``parameters`` (``sai_class_names``, comma separated) and the metadata's ``parameters``.

Batching: images of any sizes. The batcher queues each request's images as a list (an object array), takes up to
``--max-batch`` images from any requests and runs ``DetectorEngine.infer`` on them once; the engine groups them by
padded size (images whose resized, padded sizes are equal run as one graph batch). Limits: ``--max-shape
NxCxHxW``'s H and W bound each image (default 4096 x 4096; an encoded image is refused from its header, before it
is decoded) and its N the images per request. Faults are 4xx ``HTTPError`` naming the problem: an encoded image
that does not decode, an image over the limits, a classification request (``/v1/infer``, a ``classification``
top-k) to a detector.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from sai.runtime import kserve
from sai.runtime.kserve import HTTPError

IMAGES, ENCODED = "images", "images_encoded"
OUTPUTS = ("dets", "labels", "num_dets")
LABEL_NAMES = "label_names"
DEFAULT_MAX_SIDE = 4096
PLATFORM = "sai_detector"
NOT_A_CLASSIFIER = ("this server serves a detector: POST /v2/models/{m}/infer with 'images' (UINT8 NHWC/NCHW) or "
                    "'images_encoded' (BYTES JPEG/PNG); it answers dets, labels, num_dets, not classification")


def is_detector(engine: Any) -> bool:
    return getattr(engine, "kind", None) == "detector"


class DetectorServing:
    """The detector engine as the data plane runs it: ``infer({"images": object array of [H, W, 3] uint8})`` ->
    the outputs of those images (one ``DetectorEngine.infer`` over the list); the limits; what the front ends show
    (``describe``, ``metadata``)."""

    kind = "detector"
    max_batch = None
    min_shape = None
    noise_inputs: list = []

    def __init__(self, engine, max_shape: Optional[Sequence[int]] = None):
        self.detector = engine
        self.backend = engine.backend
        # the v2 model name: the preset (the backbone's arch names no detector)
        self.metadata = {**engine.metadata, "arch": engine.metadata.get("preset") or "detector"}
        self.classes = list(engine.classes) if engine.classes else None
        self.max_per_img = int(engine.max_per_img)
        if max_shape is not None:
            if len(max_shape) != 4:
                raise HTTPError(500, f"--max-shape must be NxCxHxW for a detector, got {list(max_shape)}")
            self.max_images, self.max_side = int(max_shape[0]), (int(max_shape[2]), int(max_shape[3]))
            self.max_batch = self.max_images  # the data plane's batch bound too
        else:
            self.max_images, self.max_side = None, (DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE)
        self.max_shape = None  # no tensor profile: the body limit is the data plane's ceiling

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.detector.infer(list(feeds[IMAGES]))

    def describe(self) -> dict:
        info = dict(self.detector.describe())
        info.update(max_image_hw=list(self.max_side), inputs=[IMAGES, ENCODED], label_names=LABEL_NAMES)
        return info

    # what clients see ---------------------------------------------------------------------------
    def parameters(self) -> dict[str, str]:
        pre = self.detector.preprocessing
        out = {"sai_kind": "detector", "sai_max_image_hw": f"{self.max_side[0]},{self.max_side[1]}",
               "sai_img_scale": ",".join(str(int(v)) for v in pre["img_scale"]),
               "sai_size_divisor": str(int(pre["size_divisor"]))}
        if self.classes:
            out["sai_class_names"] = ",".join(self.classes)
        return out

    def model_metadata(self, name: str, version: str) -> dict:
        k = self.max_per_img
        return {"name": name, "versions": [version], "platform": PLATFORM,
                "inputs": [{"name": IMAGES, "datatype": "UINT8", "shape": [-1, -1, -1, -1]},
                           {"name": ENCODED, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "dets", "datatype": "FP32", "shape": [-1, k, 5]},
                            {"name": "labels", "datatype": "INT64", "shape": [-1, k]},
                            {"name": "num_dets", "datatype": "INT64", "shape": [-1]},
                            {"name": LABEL_NAMES, "datatype": "BYTES", "shape": [-1, k]}],
                "parameters": self.parameters()}

    def model_config(self, name: str, max_batch: int) -> dict:
        k = self.max_per_img
        return {"name": name, "platform": PLATFORM, "backend": self.backend, "max_batch_size": max_batch,
                "input": [{"name": IMAGES, "data_type": "TYPE_UINT8", "dims": [-1, -1, -1], "optional": True},
                          {"name": ENCODED, "data_type": "TYPE_STRING", "dims": [1], "optional": True}],
                "output": [{"name": "dets", "data_type": "TYPE_FP32", "dims": [k, 5]},
                           {"name": "labels", "data_type": "TYPE_INT64", "dims": [k]},
                           {"name": "num_dets", "data_type": "TYPE_INT64", "dims": []},
                           {"name": LABEL_NAMES, "data_type": "TYPE_STRING", "dims": [k]}],
                "dynamic_batching": {}, "parameters": {k: {"string_value": v} for k, v in self.parameters().items()}}

    # requests -----------------------------------------------------------------------------------
    def images_from_tensor(self, arr: np.ndarray, layout: Optional[str]) -> list[np.ndarray]:
        if arr.ndim != 4:
            raise HTTPError(400, f"input {IMAGES!r}: a batch of uint8 RGB images [N,H,W,3] or [N,3,H,W], got shape "
                                 f"{kserve.shape_text(arr.shape)}")
        from sai.errors import InputError
        from sai.runtime.detector_engine import image_list

        try:
            chw = image_list(arr, layout)
        except InputError as exc:
            raise HTTPError(400, f"input {IMAGES!r}: {exc}") from None
        for c in chw:
            self.check_size(c.shape[1], c.shape[2], IMAGES)
        return [np.ascontiguousarray(c.transpose(1, 2, 0)).astype(np.uint8) for c in chw]  # [H, W, 3] each

    def check_size(self, h: int, w: int, what: str) -> None:
        mh, mw = self.max_side
        if h > mh or w > mw:
            raise HTTPError(400, f"input {what!r}: an image of {h}x{w} pixels is larger than this server takes "
                                 f"({mh}x{mw}, --max-shape); downscale it first")

    def decode_image(self, data: bytes, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        what = f"{ENCODED}[{i}]"
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            self.check_size(h, w, ENCODED)
            if im.format not in ("JPEG", "PNG"):
                raise HTTPError(400, f"input {what!r} is a {im.format} image; send JPEG or PNG")
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except HTTPError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise HTTPError(400, f"input {what!r} ({len(data)} bytes) does not decode as a JPEG or PNG image "
                                 f"({type(exc).__name__}: {str(exc)[:120]}); send the file's bytes") from None
        if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise HTTPError(400, f"input {what!r} decodes to an empty image")
        return arr

    def images_from_encoded(self, items: Sequence[bytes]) -> list[np.ndarray]:
        return [self.decode_image(b, i) for i, b in enumerate(items)]

    def check_count(self, n: int, max_batch: int) -> None:
        if n < 1:
            raise HTTPError(400, "the request holds no images; send at least one")
        limit = min(max_batch, self.max_images or max_batch)
        if n > limit:
            raise HTTPError(400, f"the request holds {n} images; this server takes at most {limit} per request "
                                 "(--max-batch / --max-shape); split it")

    def feeds(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        arr = np.empty(len(images), dtype=object)
        for i, a in enumerate(images):
            arr[i] = a
        return {IMAGES: arr}

    def with_names(self, outs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.classes or []
        labels = outs["labels"]
        out = np.empty(labels.shape, dtype=object)
        for idx, v in np.ndenumerate(labels):
            out[idx] = names[v].encode() if 0 <= v < len(names) else (str(int(v)).encode() if v >= 0 else b"")
        return {**outs, LABEL_NAMES: out}


def _layout(params: Mapping) -> Optional[str]:
    lay = params.get("layout")
    if lay is None:
        return None
    if not isinstance(lay, str) or lay.upper() not in ("NHWC", "NCHW"):
        raise HTTPError(400, f"parameter layout must be \"NHWC\" or \"NCHW\", got {str(lay)[:20]!r}")
    return lay.upper()


def _bytes_elements(name: str, raw, n: int) -> list[bytes]:
    """The protocol's binary BYTES form (4-byte little-endian length, then the bytes), ``n`` elements."""
    raw = bytes(raw)
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise HTTPError(400, f"input {name!r}: truncated BYTES element length at byte {pos}")
        size = int.from_bytes(raw[pos:pos + 4], "little")
        if pos + 4 + size > len(raw):
            raise HTTPError(400, f"input {name!r}: a BYTES element of {size} bytes runs past the data")
        out.append(raw[pos + 4:pos + 4 + size])
        pos += 4 + size
    if len(out) != n:
        raise HTTPError(400, f"input {name!r}: {len(out)} BYTES elements, but its shape declares {n}")
    return out


def _check_outputs(names: Sequence[str], ks: Sequence[int]) -> None:
    known = [*OUTPUTS, LABEL_NAMES]
    for name, k in zip(names, ks, strict=True):
        if k:
            raise HTTPError(400, f"output {name!r}: classification (top-k) is not available: {NOT_A_CLASSIFIER}")
        if name not in known:
            raise HTTPError(400, f"unknown output {str(name)[:60]!r}; the detector has {', '.join(known)}")


def _one_input(inputs: Sequence[Any]) -> None:
    if len(inputs) != 1:
        raise HTTPError(400, f"a detection request takes one input, {IMAGES!r} or {ENCODED!r}; got {len(inputs)}")


def parse_v2(serving: DetectorServing, doc: Mapping, tail: memoryview, max_batch: int):
    """A v2 JSON request (+ binary tail) -> ``(InferRequest, class_names)`` with the images as feeds."""
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise HTTPError(400, "id must be a string")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise HTTPError(400, f'the request needs "inputs": [{{"name": "{IMAGES}" or "{ENCODED}", "shape", '
                             '"datatype", "data"}]')
    _one_input(inputs)
    t = inputs[0]
    if not isinstance(t, Mapping) or t.get("name") not in (IMAGES, ENCODED):
        got = t.get("name") if isinstance(t, Mapping) else t
        raise HTTPError(400, f"unknown input {str(got)[:60]!r}; the detector takes {IMAGES} or {ENCODED}")
    name = t["name"]
    shape = kserve.declared_shape(name, t.get("shape"))
    tparams = kserve._params(t, f"input {name!r}")
    rparams = kserve._params(doc, "request")
    size = tparams.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0 or size > len(tail)):
        raise HTTPError(400, f"input {name!r}: binary_data_size must be a byte count within the {len(tail)}-byte "
                             "binary section")
    if size is not None and size != len(tail):
        raise HTTPError(400, f"the binary section has {len(tail)} bytes, the input uses {size}")
    if size is None and "data" not in t:
        raise HTTPError(400, f"input {name!r} has neither data nor a binary_data_size parameter")
    if name == IMAGES:
        if t.get("datatype") != "UINT8":
            raise HTTPError(400, f"input {IMAGES!r} must be UINT8 pixels, got datatype {str(t.get('datatype'))[:20]}")
        if len(shape) != 4:
            raise HTTPError(400, f"input {IMAGES!r}: a batch of uint8 RGB images [N,H,W,3] or [N,3,H,W], got shape "
                                 f"{kserve.shape_text(shape)}")
        serving.check_count(shape[0], max_batch)
        hw = shape[1:3] if shape[3] == 3 else shape[2:4]
        serving.check_size(hw[0], hw[1], IMAGES)  # before the data is decoded
        dt = np.dtype(np.uint8)
        arr = kserve.tensor_from_bytes(name, dt, shape, tail) if size is not None else \
            kserve.tensor_from_list(name, dt, shape, t["data"])
        images = serving.images_from_tensor(arr, _layout({**rparams, **tparams}))
    else:
        if t.get("datatype") != "BYTES":
            raise HTTPError(400, f"input {ENCODED!r} must be BYTES (JPEG/PNG files), got datatype "
                                 f"{str(t.get('datatype'))[:20]}")
        if len(shape) != 1:
            raise HTTPError(400, f"input {ENCODED!r}: shape must be [N] (one file per image), got "
                                 f"{kserve.shape_text(shape)}")
        serving.check_count(shape[0], max_batch)
        if size is not None:
            items = _bytes_elements(name, tail, shape[0])
        else:
            data = t["data"]
            if not isinstance(data, list) or len(data) != shape[0] or not all(isinstance(s, str) for s in data):
                raise HTTPError(400, f"input {ENCODED!r}: JSON data must be {shape[0]} base64 strings (or send the "
                                     "files as binary data)")
            try:
                items = [base64.b64decode(s, validate=True) for s in data]
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"input {ENCODED!r}: JSON data is not base64; encode each file with base64 "
                                     "(or send the files as binary data)") from None
        images = serving.images_from_encoded(items)
    names = kserve._bool_param(rparams, "class_names", "request")
    binary_output = kserve._bool_param(rparams, "binary_data_output", "request")
    if "classification" in rparams or "top_k" in rparams:
        raise HTTPError(400, f"parameter classification/top_k: {NOT_A_CLASSIFIER}")
    outputs = doc.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
            raise HTTPError(400, 'outputs must be a list of {"name": ...}')
        ks = []
        for o in outputs:
            k = kserve._params(o, f"output {str(o.get('name'))[:40]!r}").get("classification", 0)
            ks.append(k if type(k) is int else 1)
        _check_outputs([o.get("name") for o in outputs], ks)
        requested = [(o["name"], kserve._bool_param(kserve._params(o, "output"), "binary_data", "output", None), 0)
                     for o in outputs]
        names = names or any(o["name"] == LABEL_NAMES for o in outputs)
    req = kserve.InferRequest(rid, serving.feeds(images), requested, bool(binary_output))
    return req, bool(names)


def parse_grpc(serving: DetectorServing, request, max_batch: int):
    """A gRPC ``ModelInferRequest`` -> ``(InferRequest, class_names)``."""
    if not request.inputs:
        raise HTTPError(400, "the request has no inputs")
    _one_input(request.inputs)
    t = request.inputs[0]
    if t.name not in (IMAGES, ENCODED):
        raise HTTPError(400, f"unknown input {t.name[:60]!r}; the detector takes {IMAGES} or {ENCODED}")
    shape = kserve.declared_shape(t.name, [int(d) for d in t.shape])
    raw = list(request.raw_input_contents)
    params = {k: _grpc_param(v) for k, v in request.parameters.items()}
    tparams = {k: _grpc_param(v) for k, v in t.parameters.items()}
    if t.name == IMAGES:
        if t.datatype != "UINT8" or len(shape) != 4:
            raise HTTPError(400, f"input {IMAGES!r} must be UINT8 [N,H,W,3] or [N,3,H,W], got {t.datatype} "
                                 f"{kserve.shape_text(shape)}")
        serving.check_count(shape[0], max_batch)
        hw = shape[1:3] if shape[3] == 3 else shape[2:4]
        serving.check_size(hw[0], hw[1], IMAGES)
        if raw:
            arr = kserve.tensor_from_bytes(t.name, np.dtype(np.uint8), shape, raw[0])
        else:
            arr = kserve.tensor_from_list(t.name, np.dtype(np.uint8), shape, list(t.contents.uint_contents))
        images = serving.images_from_tensor(arr, _layout({**params, **tparams}))
    else:
        if t.datatype != "BYTES" or len(shape) != 1:
            raise HTTPError(400, f"input {ENCODED!r} must be BYTES [N] (JPEG/PNG files), got {t.datatype} "
                                 f"{kserve.shape_text(shape)}")
        serving.check_count(shape[0], max_batch)
        items = _bytes_elements(t.name, raw[0], shape[0]) if raw else list(t.contents.bytes_contents)
        if len(items) != shape[0]:
            raise HTTPError(400, f"input {ENCODED!r}: {len(items)} elements, but its shape declares {shape[0]}")
        images = serving.images_from_encoded(items)
    names = params.get("class_names", False)
    if type(names) is not bool:
        raise HTTPError(400, "request: parameter class_names must be a bool_param")
    if "classification" in params or "top_k" in params:
        raise HTTPError(400, f"parameter classification/top_k: {NOT_A_CLASSIFIER}")
    requested = None
    if request.outputs:
        ks = [int(o.parameters["classification"].int64_param) if "classification" in o.parameters else 0
              for o in request.outputs]
        _check_outputs([o.name for o in request.outputs], ks)
        requested = [(o.name, True, 0) for o in request.outputs]
        names = names or any(o.name == LABEL_NAMES for o in request.outputs)
    return kserve.InferRequest(request.id or None, serving.feeds(images), requested, True), names


def _grpc_param(p) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None

