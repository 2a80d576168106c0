"""The Open Inference Protocol (KServe v2) tensor codec shared by the HTTP and gRPC front ends of `sai serve`.

Pure functions, no server: request JSON (+ the binary tensor data extension) -> numpy feeds, outputs -> response
JSON/bytes, model metadata. Every fault a client can cause is an ``HTTPError`` with the status the protocol asks
for (400 bad request, 404 unknown model or version, 413 over a limit) and a message naming the field and the fix;
the gRPC front end maps the same statuses to gRPC codes.

Non-finite outputs in JSON: JSON has no NaN or infinity, so they are sent as the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (protobuf's JSON mapping of float fields; numpy and tritonclient parse them
back with ``np.array(data, dtype)``). Binary outputs carry them as IEEE bits. The body is always valid JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from sai.runtime.engine import Engine, ProfileError, check_profile

PROTOCOL_EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")
HEADER_LENGTH = "Inference-Header-Content-Length"

V2_TO_NP: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
NP_TO_V2 = {v: k for k, v in V2_TO_NP.items()}
MAX_ELEMENTS = 1 << 40  # a declared shape beyond this is nonsense whatever the limits (and would overflow int64)
MAX_RANK = 32  # numpy's limit on dimensions (numpy 1.x); no model here takes more than a handful


class HTTPError(Exception):
    """A request fault with its HTTP status (gRPC maps the status to a code)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def v2_datatype(dtype) -> str:
    dt = np.dtype(dtype)
    if dt == np.dtype(object):
        return "BYTES"
    if dt not in NP_TO_V2:
        raise HTTPError(500, f"the model has a tensor of dtype {dt.name}, which the v2 protocol cannot carry")
    return NP_TO_V2[dt]


# ----------------------------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------------------------


def _dims(shape: Sequence) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def accepted_dims(engine: Engine, spec) -> list[int]:
    """The shape a client may send for ``spec``: the model's fixed dims, and for the image input also every dim
    the engine profile pins (its min equals its max); -1 where a range is accepted (see ``profile_parameters``)."""
    dims = _dims(spec.shape)
    if spec.name == engine.primary_input.name and engine.min_shape is not None and engine.max_shape is not None \
            and len(engine.min_shape) == len(dims) == len(engine.max_shape):
        dims = [lo if d == -1 and lo == hi else d for d, lo, hi in zip(dims, engine.min_shape, engine.max_shape,
                                                                      strict=True)]
    return dims


def profile_parameters(engine: Engine) -> dict[str, str]:
    """The image input's accepted range, ``N,C,H,W`` strings (``sai_min_shape`` / ``sai_max_shape``; absent
    where the engine has no bound): what ``/v2/models/{m}/config``'s ``parameters`` carry, so a client can learn
    which shapes the server takes before it sends one (400 outside them, naming the accepted ranges)."""
    out = {"sai_profile_input": engine.primary_input.name}
    for key, shape in (("sai_min_shape", engine.min_shape), ("sai_max_shape", engine.max_shape)):
        if shape is not None:
            out[key] = ",".join(str(int(d)) for d in shape)
    return out


PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan",
             # not "pytorch_libtorch": that is Triton's TorchScript backend, and this is an eager nn.Module
             "torch": "pytorch_eager"}


def model_metadata(engine: Engine, name: str, version: str) -> dict:
    """``GET /v2/models/{name}``: the image input (noise inputs of stochastic models are optional and drawn
    from the server's seed when left out, so they are not listed) and every output; shapes as accepted
    (``accepted_dims``)."""
    noise = {n for n, _ in engine.noise_inputs}
    return {
        "name": name, "versions": [version], "platform": _platform(engine),
        "inputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": accepted_dims(engine, s)}
                   for s in engine.inputs if s.name not in noise],
        "outputs": [{"name": s.name, "datatype": v2_datatype(s.dtype), "shape": _dims(s.shape)} for s in engine.outputs],
    }


def _platform(engine: Engine) -> str:
    return PLATFORMS.get(engine.backend, engine.backend)


def model_config(engine: Engine, name: str, max_batch: int) -> dict:
    """``GET /v2/models/{name}/config`` in Triton's model-config JSON (what perf_analyzer reads): dims without
    the batch dimension (as accepted), ``max_batch_size`` of the server's batcher, and the profile's range in
    ``parameters`` (``profile_parameters``, Triton's ``{"key": {"string_value": ...}}`` form)."""
    noise = {n for n, _ in engine.noise_inputs}

    def tensor(s, dims):
        out = {"name": s.name, "data_type": "TYPE_" + v2_datatype(s.dtype), "dims": dims[1:]}
        if s.name in noise:
            out["optional"] = True
        return out

    return {"name": name, "platform": _platform(engine), "backend": engine.backend, "max_batch_size": max_batch,
            "input": [tensor(s, accepted_dims(engine, s)) for s in engine.inputs],
            "output": [tensor(s, _dims(s.shape)) for s in engine.outputs], "dynamic_batching": {},
            "parameters": {k: {"string_value": v} for k, v in profile_parameters(engine).items()}}


# ----------------------------------------------------------------------------------------------
# requests
# ----------------------------------------------------------------------------------------------


@dataclass
class InferRequest:
    id: Optional[str]
    feeds: dict[str, np.ndarray]
    outputs: Optional[list[tuple[str, Optional[bool], int]]]  # (name, binary_data or None, classification k)
    binary_output: bool  # the request-level binary_data_output parameter


def shape_text(shape: Sequence[int], limit: int = 8) -> str:
    """``shape`` for a message, short whatever it holds: at most ``limit`` dims, each at most 12 digits (a dim
    of 400 digits is shown as ``10^399``; formatting it with ``%g`` would overflow a float)."""
    def dim(d: int) -> str:
        if abs(d) < 10**12:
            return str(d)
        return f"{'-' if d < 0 else ''}~10^{int(math.log10(abs(d)))}"

    dims = [dim(d) for d in list(shape)[:limit]]
    more = f", ... ({len(shape)} dims)" if len(shape) > limit else ""
    return "[" + ", ".join(dims) + more + "]"


def count_text(n: int) -> str:
    """An element or byte count for a message: exact below 10^12, else its order of magnitude."""
    return str(n) if n < 10**12 else f"~10^{int(math.log10(n))}"


def declared_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A v2 ``shape``: a list of at most MAX_RANK non-negative ints whose product stays bounded (no overflow, no
    bools)."""
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int for d in shape):
        raise HTTPError(400, f"input {name!r}: shape must be a list of integers, got {str(shape)[:100]}")
    if len(shape) > MAX_RANK:
        raise HTTPError(400, f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_RANK} are supported "
                             "(the model's input has far fewer)")
    if any(d < 0 for d in shape):
        raise HTTPError(400, f"input {name!r}: shape {shape_text(shape)} has a negative dimension")
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise HTTPError(400, f"input {name!r}: shape {shape_text(shape)} holds {count_text(n)} elements; no model "
                             "takes that")
    return tuple(shape)


def check_declared(engine: Engine, name: str, datatype: Any, shape: tuple[int, ...]) -> np.dtype:
    """Name, datatype and shape of one declared input against the model, before its data is decoded: 400 for
    what does not fit, 400 for a shape beyond the engine profile. Returns the numpy dtype to decode as."""
    specs = engine.input_specs
    spec = specs.get(name)
    if spec is None:
        raise HTTPError(400, f"unknown input {name!r}; the model takes {', '.join(specs)}")
    if not isinstance(datatype, str) or datatype not in V2_TO_NP:
        hint = " (BYTES tensors are not supported)" if datatype == "BYTES" else ""
        raise HTTPError(400, f"input {name!r}: datatype {str(datatype)[:20]!r} is not supported{hint}; use one of "
                             f"{', '.join(V2_TO_NP)}")
    dt, want = V2_TO_NP[datatype], np.dtype(spec.dtype)
    raw_image = name == engine.primary_input.name and dt == np.uint8 and dt != want
    if dt != want and not raw_image:
        raise HTTPError(400, f"input {name!r} has datatype {datatype}, but the model takes {v2_datatype(want)}")
    if len(shape) != len(spec.shape):
        if raw_image:
            raise HTTPError(400, f"input {name!r}: uint8 images must be a batch [N,C,H,W] or [N,H,W,C], got shape "
                                 f"{shape_text(shape)}")
        raise HTTPError(400, f"input {name!r} has shape {shape_text(shape)}, expected {_dims(spec.shape)} (rank "
                             f"{len(spec.shape)})")
    if raw_image:  # uint8 images, NCHW or NHWC: the engine's preprocessing decides (or refuses, naming why)
        return dt
    if any(isinstance(w, int) and w != h for w, h in zip(spec.shape, shape, strict=True)):
        raise HTTPError(400, f"input {name!r} has shape {shape_text(shape)}, expected {_dims(spec.shape)}")
    if name == engine.primary_input.name:
        try:
            check_profile(name, shape, engine.min_shape, engine.max_shape)
        except ProfileError as exc:
            raise HTTPError(400, str(exc)) from None
    return dt


def tensor_from_bytes(name: str, dtype: np.dtype, shape: tuple[int, ...], raw) -> np.ndarray:
    want = math.prod(shape) * dtype.itemsize
    if len(raw) != want:
        raise HTTPError(400, f"input {name!r}: {len(raw)} bytes of data, but shape {shape_text(shape)} x "
                             f"{NP_TO_V2[dtype]} needs {count_text(want)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def tensor_from_list(name: str, dtype: np.dtype, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) -> array of ``shape``; only numbers (booleans for BOOL)."""
    if not isinstance(data, list):
        raise HTTPError(400, f"input {name!r}: data must be a list of numbers")
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise HTTPError(400, f"input {name!r}: data is not a rectangular list of numbers ({str(exc)[:120]})") from None
    kinds = "b" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
    if arr.size and arr.dtype.kind not in kinds:
        what = {"O": "numbers out of range or mixed values", "U": "strings", "b": "booleans", "f": "non-integers"}
        raise HTTPError(400, f"input {name!r}: data holds {what.get(arr.dtype.kind, arr.dtype.name)}, not "
                             f"{NP_TO_V2[dtype]} values")
    if arr.size != math.prod(shape):
        raise HTTPError(400, f"input {name!r}: {arr.size} values, but shape {shape_text(shape)} needs "
                             f"{count_text(math.prod(shape))}")
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise HTTPError(400, f"input {name!r}: values outside the {NP_TO_V2[dtype]} range [{info.min}, {info.max}]")
    with np.errstate(over="ignore"):
        out = arr.astype(dtype).reshape(shape)
    if dtype.kind == "f" and not np.isfinite(out).all():
        raise HTTPError(400, f"input {name!r} contains NaN or infinity (or values beyond {NP_TO_V2[dtype]})")
    return out


def split_http_body(body: bytes, header_length: Optional[str]) -> tuple[Any, memoryview]:
    """``(JSON document, binary tail)``; the binary extension puts ``Inference-Header-Content-Length`` bytes of
    JSON first."""
    if header_length is None:
        head, tail = body, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise HTTPError(400, f"{HEADER_LENGTH} {header_length[:30]!r} is not a byte count within the {len(body)}-"
                                 "byte body")
        head, tail = body[:n], memoryview(body)[n:]
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, 5,000-digit ints, 100k-deep nesting
        raise HTTPError(400, f"malformed JSON in the request: {type(exc).__name__}: {str(exc)[:160]}") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, 'the request must be a JSON object {"inputs": [...]}')
    return doc, tail


def _params(obj: Mapping, what: str) -> Mapping:
    p = obj.get("parameters", {})
    if not isinstance(p, Mapping):
        raise HTTPError(400, f"{what}: parameters must be an object")
    return p


def parse_infer_request(doc: Mapping, tail: memoryview, engine: Engine) -> InferRequest:
    """A v2 inference request (JSON already parsed, binary tail beside it) -> feeds checked against the
    model's declared names, datatypes, ranks and profile; the engine's own checks come after."""
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise HTTPError(400, "id must be a string")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise HTTPError(400, 'the request needs "inputs": a non-empty list of {"name", "shape", "datatype", "data"}')
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, Mapping) or not isinstance(t.get("name"), str):
            raise HTTPError(400, f"inputs[{i}] must be an object with a string name")
        name = t["name"]
        if name in feeds:
            raise HTTPError(400, f"input {name!r} is given twice")
        shape = declared_shape(name, t.get("shape"))
        dtype = check_declared(engine, name, t.get("datatype"), shape)
        size = _params(t, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise HTTPError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(tail):
                raise HTTPError(400, f"input {name!r}: binary_data_size {size} at offset {offset} runs past the "
                                     f"{len(tail)}-byte binary section")
            feeds[name] = tensor_from_bytes(name, dtype, shape, tail[offset:offset + size])
            offset += size
        elif "data" in t:
            feeds[name] = tensor_from_list(name, dtype, shape, t["data"])
        else:
            raise HTTPError(400, f"input {name!r} has neither data nor a binary_data_size parameter")
    if offset != len(tail):
        raise HTTPError(400, f"the binary section has {len(tail)} bytes, the inputs use {offset}")
    missing = [s.name for s in engine.inputs if s.name not in feeds and s.name not in dict(engine.noise_inputs)]
    if missing:
        raise HTTPError(400, f"missing input(s) {', '.join(missing)}")
    binary_output = _bool_param(_params(doc, "request"), "binary_data_output", "request")
    outputs = doc.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise HTTPError(400, 'outputs must be a list of {"name": ...}')
        requested = []
        known = [s.name for s in engine.outputs]
        for o in outputs:
            if not isinstance(o, Mapping) or o.get("name") not in known:
                got = o.get("name") if isinstance(o, Mapping) else o
                raise HTTPError(400, f"unknown output {str(got)[:60]!r}; the model has {', '.join(known)}")
            p = _params(o, f"output {o['name']!r}")
            k = p.get("classification", 0)
            if type(k) is not int or k < 0:
                raise HTTPError(400, f"output {o['name']!r}: classification must be a non-negative integer (top-k)")
            requested.append((o["name"], _bool_param(p, "binary_data", f"output {o['name']!r}", None), k))
    return InferRequest(rid, feeds, requested, bool(binary_output))


def _bool_param(params: Mapping, key: str, what: str, default: Optional[bool] = False) -> Optional[bool]:
    """A boolean parameter: JSON true/false only (the string "false" is not false)."""
    if key not in params:
        return default
    value = params[key]
    if type(value) is not bool:
        raise HTTPError(400, f"{what}: parameter {key} must be true or false (a JSON boolean), got "
                             f"{json.dumps(value)[:40]}")
    return value


# ----------------------------------------------------------------------------------------------
# responses
# ----------------------------------------------------------------------------------------------


def json_values(arr: np.ndarray) -> list:
    """Flat row-major list for JSON; non-finite floats as "NaN"/"Infinity"/"-Infinity" (module docstring)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat.tolist()
    out = flat.astype(object)
    bad = ~np.isfinite(flat)
    out[bad] = np.where(np.isnan(flat[bad]), "NaN", np.where(flat[bad] > 0, "Infinity", "-Infinity"))
    return out.tolist()


def selected_outputs(outs: Mapping[str, np.ndarray], req: InferRequest,
                     labels: Optional[Sequence[str]] = None) -> list[tuple[str, np.ndarray, bool]]:
    """The outputs to send: all, or the requested ones; a ``classification`` k turns an output into the top-k
    ``"score:index:label"`` strings (BYTES [batch, k]; the classification extension, labels where recorded)."""
    if req.outputs is None:
        return [(k, v, req.binary_output) for k, v in outs.items()]
    picked = []
    for name, b, k in req.outputs:
        arr = outs[name]
        if k:
            from sai.errors import SaiError
            from sai.runtime.labels import classification_strings

            try:
                arr = classification_strings(arr, k, labels)
            except SaiError as exc:
                raise HTTPError(400, f"output {name!r}: classification: {exc}") from None
        picked.append((name, arr, req.binary_output if b is None else b))
    return picked


def bytes_tensor(arr: np.ndarray) -> bytes:
    """BYTES elements serialised as the protocol's binary form: a 4-byte little-endian length, then the bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in arr.reshape(-1))


def encode_infer_response(model: str, version: str, req: InferRequest, outs: Mapping[str, np.ndarray],
                          labels: Optional[Sequence[str]] = None) -> tuple[bytes, Optional[int]]:
    """``(body, json header length or None)``: JSON, or JSON + raw tensors for outputs sent as binary data."""
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if req.id is not None:
        doc["id"] = req.id
    tensors, blobs = [], []
    for name, arr, binary in selected_outputs(outs, req, labels):
        t: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}
        if arr.dtype == np.dtype(object) and not binary:
            t["data"] = [v.decode("utf-8", "replace") for v in arr.reshape(-1)]
        elif binary:
            raw = bytes_tensor(arr) if arr.dtype == np.dtype(object) else np.ascontiguousarray(arr).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = json_values(arr)
        tensors.append(t)
    doc["outputs"] = tensors
    head = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
