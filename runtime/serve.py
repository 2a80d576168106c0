"""Inference server: the Open Inference Protocol (KServe v2) over HTTP and gRPC, plus sai's own /v1 API.

HTTP is an ASGI app (starlette) on uvicorn (httptools parser, uvloop where installed), run on its own event
loop thread: no thread per connection, an idle timeout for connections that send nothing, a listen backlog
of 2048, and a parser that answers malformed framing (``Content-Length: -1``) with 400. Hostile clients: a
request head over ``max_header_bytes`` gets 431 (never buffered), a body must arrive within ``body_timeout``
(408), a client gone mid-upload is a counted 499 (no traceback), and ``stop`` ends within ``drain_timeout``
(stalled uploads get 503 just before it). gRPC is grpcio's
server with the ``GRPCInferenceService`` of ``sai.runtime.serve_grpc`` (ModelStreamInfer included). Both feed one ``Batcher``: a bounded
queue (503 / UNAVAILABLE when full) and one thread that takes up to ``max_batch`` images (waiting at most
``max_delay_ms`` after the first), concatenates same-shaped requests along the batch axis, runs the engine
once and splits the outputs.

Endpoints: ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/{name}[/versions/{v}]`` (metadata),
``.../ready``, ``.../config``, ``.../stats`` (and ``/v2/models/stats``), ``POST .../infer`` (JSON tensors or the binary tensor data
extension); ``POST /v1/infer`` (JSON, raw ``application/octet-stream`` with ``X-Shape``/``X-Dtype``, or
``application/x-npy``), ``GET /v1/model``, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text 0.0.4,
Triton's ``nv_inference_*`` names with ``model``/``version`` labels beside the ``sai_*`` ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from sai.errors import SaiError
from sai.runtime import kserve
from sai.runtime.engine import Engine, InputError, ProfileError, check_profile
from sai.runtime.kserve import HTTPError

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8")
INFER_PATHS = ("/v1/infer", "/infer")
SERVER_NAME = "sai-serve"
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")  # Triton's nv_inference_request_failure reasons
MAX_HEADER_BYTES = 64 << 10  # a request head (request line + headers) beyond this gets 431 and the connection closes
BODY_TIMEOUT_S = 30.0  # a request body must arrive within this (408 otherwise): stalled uploads hold no connection
TRIM_AFTER_BYTES = 32 << 20  # bodies read since the last heap trim (see InferenceServer.bodies_done)
DRAIN_TIMEOUT_S = 25.0  # SIGTERM drain bound, below Kubernetes' default 30 s grace period

log = logging.getLogger("sai.serve")

__all__ = ["HTTPError", "InferenceServer", "QueueFull", "serve_forever", "server_info"]


class QueueFull(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, v: float) -> None:
        i = next((k for k, b in enumerate(self.buckets) if v <= b), len(self.buckets))
        self.counts[i] += 1
        self.sum += v
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            lines.append(f'{name}_bucket{{le="{b:g}"}} {acc}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.sum:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


TRITON_COUNTERS = (  # (name, help): cumulative, per model and version, as Triton's /metrics
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_count", "Number of inferences performed (a batch of n images counts n)"),
    ("nv_inference_exec_count", "Number of model executions performed (dynamic batches)"),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds (failures too)"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds"),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds"),
)


class Metrics:
    """Counters behind ``/metrics``: Triton's per-model ``nv_inference_*`` and sai's own ``sai_*``."""

    def __init__(self, model: str = "model", version: str = "1"):
        self.lock = threading.Lock()
        self.model, self.version = model, version
        self.requests: dict[tuple[str, int], int] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.queue_depth = 0
        self.inflight = 0
        self.nv = {name: 0.0 for name, _ in TRITON_COUNTERS}
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.success_us = self.fail_us = 0.0  # the statistics extension's success / fail durations
        self.last_inference_ms = 0  # wall-clock time of the last finished inference request (ms since the epoch)
        self.batch_stats: dict[int, list[float]] = {}  # images -> [executions, input s, infer s, output s]
        self.mask_density: dict[str, list[float]] = {}  # "<block>.m1" -> [sum over images, images]

    def masks(self, densities: dict[str, float], n_images: int) -> None:
        """One batch's mask densities (``sai.runtime.serve_masks``), weighted by its images."""
        with self.lock:
            for k, d in densities.items():
                acc = self.mask_density.setdefault(k, [0.0, 0])
                acc[0] += d * n_images
                acc[1] += n_images

    def request(self, path: str, status: int, seconds: Optional[float] = None) -> None:
        with self.lock:
            key = (path, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if seconds is not None and status == 200:
                self.latency.observe(seconds)

    def inference_request(self, path: str, status: int, seconds: float, n: int = 0) -> None:
        """One inference request of the model, finished with ``status`` after ``seconds`` (all protocols)."""
        with self.lock:
            key = (path, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.nv["nv_inference_request_duration_us"] += seconds * 1e6
            self.last_inference_ms = int(time.time() * 1e3)
            if status == 200:
                self.latency.observe(seconds)
                self.nv["nv_inference_request_success"] += 1
                self.success_us += seconds * 1e6
            else:
                self.fail_us += seconds * 1e6
                reason = "REJECTED" if status == 503 else "BACKEND" if status == 500 else \
                    "CANCELED" if status == 499 else "OTHER"
                self.failures[reason] += 1

    def execution(self, n_images: int, seconds: float, input_s: float, output_s: float,
                  queue_s: Sequence[float]) -> None:
        """One engine run of ``n_images`` images for ``len(queue_s)`` requests (their queue waits)."""
        with self.lock:
            self.batch.observe(n_images)
            self.inference.observe(seconds)
            k = len(queue_s)
            self.nv["nv_inference_count"] += n_images
            self.nv["nv_inference_exec_count"] += 1
            self.nv["nv_inference_queue_duration_us"] += sum(queue_s) * 1e6
            self.nv["nv_inference_compute_input_duration_us"] += input_s * 1e6 * k
            self.nv["nv_inference_compute_infer_duration_us"] += seconds * 1e6 * k  # Triton: per request
            self.nv["nv_inference_compute_output_duration_us"] += output_s * 1e6 * k
            acc = self.batch_stats.setdefault(int(n_images), [0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += input_s
            acc[2] += seconds
            acc[3] += output_s

    def statistics(self) -> dict:
        """The model's statistics in the v2 statistics extension's layout (Triton's ``ModelStatistics``): counts
        and cumulative nanoseconds. ``success`` / ``fail``: requests that ended with / without an answer (any
        protocol; a refused request counts as a failure, as in ``nv_inference_request_failure``); ``queue`` and
        ``compute_*``: per successful request; ``batch_stats``: per engine run, by its number of images."""
        with self.lock:
            nv, n_fail = dict(self.nv), sum(self.failures.values())
            success_us, fail_us, last = self.success_us, self.fail_us, self.last_inference_ms
            batches = {n: list(v) for n, v in self.batch_stats.items()}

        def d(count, us):
            return {"count": int(count), "ns": int(round(us * 1e3))}

        n_ok = nv["nv_inference_request_success"]
        return {"name": self.model, "version": self.version, "last_inference": last,
                "inference_count": int(nv["nv_inference_count"]), "execution_count": int(nv["nv_inference_exec_count"]),
                "inference_stats": {"success": d(n_ok, success_us), "fail": d(n_fail, fail_us),
                                    "queue": d(n_ok, nv["nv_inference_queue_duration_us"]),
                                    "compute_input": d(n_ok, nv["nv_inference_compute_input_duration_us"]),
                                    "compute_infer": d(n_ok, nv["nv_inference_compute_infer_duration_us"]),
                                    "compute_output": d(n_ok, nv["nv_inference_compute_output_duration_us"]),
                                    "cache_hit": d(0, 0), "cache_miss": d(0, 0)},
                "batch_stats": [{"batch_size": n, "compute_input": d(c, i * 1e6), "compute_infer": d(c, f * 1e6),
                                 "compute_output": d(c, o * 1e6)} for n, (c, i, f, o) in sorted(batches.items())]}

    def render(self) -> str:
        with self.lock:
            lab = f'model="{self.model}",version="{self.version}"'
            out = []
            for name, help_ in TRITON_COUNTERS[:1]:
                out += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name}{{{lab}}} {self.nv[name]:.0f}"]
            out += ["# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes",
                    "# TYPE nv_inference_request_failure counter"]
            for reason, n in self.failures.items():
                out.append(f'nv_inference_request_failure{{model="{self.model}",reason="{reason}",'
                           f'version="{self.version}"}} {n}')
            for name, help_ in TRITON_COUNTERS[1:]:
                out += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name}{{{lab}}} {self.nv[name]:.0f}"]
            out += ["# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting "
                    "execution per-model.", "# TYPE nv_inference_pending_request_count gauge",
                    f"nv_inference_pending_request_count{{{lab}}} {self.queue_depth}"]
            out += ["# HELP sai_requests_total HTTP/gRPC requests by path and status code.",
                    "# TYPE sai_requests_total counter"]
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'sai_requests_total{{path="{path}",status="{status}"}} {n}')
            out += ["# HELP sai_batch_size Images per engine run (dynamic batching).", "# TYPE sai_batch_size histogram"]
            out += self.batch.render("sai_batch_size")
            out += ["# HELP sai_request_latency_seconds Inference request latency, receipt to response.",
                    "# TYPE sai_request_latency_seconds histogram"]
            out += self.latency.render("sai_request_latency_seconds")
            out += ["# HELP sai_inference_seconds Engine run time per batch.", "# TYPE sai_inference_seconds histogram"]
            out += self.inference.render("sai_inference_seconds")
            out += ["# HELP sai_queue_depth Requests waiting for the batcher.", "# TYPE sai_queue_depth gauge",
                    f"sai_queue_depth {self.queue_depth}",
                    "# HELP sai_inflight_requests Inference requests being handled.",
                    "# TYPE sai_inflight_requests gauge", f"sai_inflight_requests {self.inflight}"]
            if self.mask_density:
                out += ["# HELP sai_mask_density Fraction of positions a block's sparse conv computes (mask m1: "
                        "conv1, m2: conv2), per image; _sum / _count is the mean.", "# TYPE sai_mask_density summary"]
                for key, (total, n) in sorted(self.mask_density.items()):
                    block, mask = key.rsplit(".", 1)
                    lab = f'model="{self.model}",block="{block}",mask="{mask}"'
                    out += [f"sai_mask_density_sum{{{lab}}} {total:.6f}", f"sai_mask_density_count{{{lab}}} {n}"]
            return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# batching
# ----------------------------------------------------------------------------------------------


@dataclass
class _Request:
    feeds: dict[str, np.ndarray]
    n: int
    key: tuple
    future: Future = field(default_factory=Future)
    t_submit: float = field(default_factory=time.perf_counter)


class Batcher:
    """One thread running the engine on batches of queued requests (same non-batch shapes and dtypes)."""

    def __init__(self, engine: Engine, metrics: Metrics, max_batch: int, max_delay_ms: float, max_queue: int):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_delay = max(1, int(max_batch)), max(0.0, float(max_delay_ms)) / 1e3
        self.max_queue = max(1, int(max_queue))
        self.queue: deque[_Request] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="sai-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, feeds: dict[str, np.ndarray]) -> Future:
        n = int(next(iter(feeds.values())).shape[0])
        key = tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items()))
        req = _Request(feeds, n, key)
        with self.cond:
            if self.stopping:
                raise QueueFull("server is shutting down")
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"queue full ({self.max_queue} requests waiting)")
            self.queue.append(req)
            self.metrics.queue_depth = len(self.queue)
            self.cond.notify()
        return req.future

    def _take(self) -> Optional[list[_Request]]:
        with self.cond:
            while True:
                while not self.queue:
                    if self.stopping:
                        return None
                    self.cond.wait(0.5)
                first = self.queue.popleft()
                if first.future.set_running_or_notify_cancel():  # False: its client gave up (timeout)
                    break
            batch, total = [first], first.n
            deadline = time.monotonic() + self.max_delay
            while total < self.max_batch:
                match = next((r for r in self.queue if r.key == first.key and total + r.n <= self.max_batch), None)
                if match is not None:
                    self.queue.remove(match)
                    if match.future.set_running_or_notify_cancel():
                        batch.append(match)
                        total += match.n
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self.stopping:
                    break
                self.cond.wait(left)
            self.metrics.queue_depth = len(self.queue)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        names = list(batch[0].feeds)
        t0 = time.perf_counter()
        queue_s = [t0 - r.t_submit for r in batch]
        try:
            feeds = {k: (batch[0].feeds[k] if len(batch) == 1 else np.concatenate([r.feeds[k] for r in batch]))
                     for k in names}
            t1 = time.perf_counter()
            outs = self.engine.infer(feeds)
            t2 = time.perf_counter()
        except BaseException as exc:  # every waiter gets the error; the loop keeps serving
            for r in batch:
                _settle(r.future, exc=exc)
            return
        start, parts = 0, []
        for r in batch:
            parts.append({k: v[start:start + r.n] for k, v in outs.items()})
            start += r.n
        t3 = time.perf_counter()
        self.metrics.execution(sum(r.n for r in batch), t2 - t1, t1 - t0, t3 - t2, queue_s)
        for r, part in zip(batch, parts, strict=True):
            _settle(r.future, result=part)

    def drain_and_stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish everything queued, stop the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)


def _settle(fut: Future, result=None, exc: Optional[BaseException] = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except InvalidStateError:  # cancelled by a client that timed out
        pass


# ----------------------------------------------------------------------------------------------
# /v1 request decoding
# ----------------------------------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, ...]:
    from sai.shapes import parse_shape

    try:
        return parse_shape(text, "X-Shape", lengths=None)
    except SaiError as exc:
        raise HTTPError(400, str(exc)) from None


def decode_request(ctype: str, headers, body: bytes, engine: Engine, max_batch: Optional[int] = None
                   ) -> dict[str, np.ndarray]:
    """/v1 body -> feeds (not yet checked against the model). HTTPError(400/413/415) for what cannot be decoded;
    a raw tensor's declared X-Shape is checked against ``max_batch`` and the profile before it is decoded."""
    ctype = (ctype or "").split(";")[0].strip().lower()
    primary = engine.primary_input
    if ctype in ("application/json", ""):
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, 5,000-digit ints, 100k-deep nesting
            raise HTTPError(400, f"malformed JSON body: {type(exc).__name__}: {str(exc)[:160]}") from None
        if not isinstance(doc, dict) or "inputs" not in doc:
            raise HTTPError(400, 'JSON body must be an object {"inputs": {NAME: nested list}} or {"inputs": nested list}')
        inputs = doc["inputs"]
        if not isinstance(inputs, dict):
            inputs = {primary.name: inputs}
        feeds = {}
        specs = engine.input_specs
        for name, value in inputs.items():
            spec = specs.get(name)
            if spec is None:
                raise HTTPError(400, f"unknown input {name!r}; the model takes {', '.join(specs)}")
            try:
                arr = np.array(value)
                if arr.dtype.kind not in "iuf":  # JSON numbers only: no true/false, strings, nulls or huge ints
                    raise TypeError(f"it holds {'booleans' if arr.dtype.kind == 'b' else 'non-numbers'}")
                with np.errstate(over="ignore"):
                    arr = arr.astype(np.dtype(spec.dtype))
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                raise HTTPError(400, f"input {name!r} is not a rectangular numeric array: {str(exc)[:200]}") from None
            feeds[name] = arr
        return feeds
    if ctype == "application/octet-stream":
        shape_h, dtype_h = headers.get("X-Shape"), headers.get("X-Dtype", "float32")
        if not shape_h:
            raise HTTPError(400, "raw tensor bodies need an X-Shape header (e.g. X-Shape: 1,3,224,224)")
        shape = _parse_shape(shape_h)
        if dtype_h not in DTYPES:
            raise HTTPError(400, f"X-Dtype {dtype_h[:20]!r} is not supported; use one of {', '.join(DTYPES)}")
        dtype = np.dtype(dtype_h)
        name = headers.get("X-Input", primary.name)
        spec = engine.input_specs.get(name)
        if spec is None:
            raise HTTPError(400, f"unknown input {name[:60]!r} (X-Input); the model takes "
                                 f"{', '.join(engine.input_specs)}")
        if len(shape) != len(spec.shape):
            raise HTTPError(400, f"X-Shape {kserve.shape_text(shape)} has {len(shape)} dimensions; input {name!r} "
                                 f"has {len(spec.shape)}")
        want = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if len(body) != want:
            raise HTTPError(400, f"body has {len(body)} bytes but X-Shape {kserve.shape_text(shape)} x {dtype.name} "
                                 f"needs {kserve.count_text(want)}")
        if max_batch is not None and name == primary.name and shape[0] > max_batch:
            raise HTTPError(413, f"request batch {kserve.count_text(shape[0])} exceeds the server's --max-batch "
                                 f"{max_batch}; split it")
        return {name: np.frombuffer(body, dtype=dtype).reshape(shape)}
    if ctype in ("application/x-npy", "application/npy"):
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as exc:
            raise HTTPError(400, f"malformed .npy body: {str(exc)[:200]}") from None
        if not isinstance(arr, np.ndarray):
            raise HTTPError(400, "the .npy body must hold one array")
        if arr.dtype.byteorder not in "=|":  # a big-endian .npy: the same values in this machine's byte order
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return {headers.get("X-Input", primary.name): arr}
    raise HTTPError(415, f"unsupported Content-Type {ctype[:60]!r}; use application/json, application/octet-stream "
                         "(with X-Shape/X-Dtype) or application/x-npy")


def check_declared_v1(headers, engine: Engine, max_batch: int) -> None:
    """Before the body is read: a raw tensor's X-Shape against --max-batch and the engine profile (413)."""
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    shape_h = headers.get("X-Shape")
    if ctype != "application/octet-stream" or not shape_h or headers.get("X-Input", engine.primary_input.name) != \
            engine.primary_input.name:
        return
    shape = _parse_shape(shape_h)
    spec = engine.primary_input
    if len(shape) != len(spec.shape) or any(isinstance(w, int) and w != h for w, h in zip(spec.shape, shape,
                                                                                          strict=True)):
        return  # the decoder names the rank/dim fault
    if shape[0] > max_batch:
        raise HTTPError(413, f"request batch {kserve.count_text(shape[0])} exceeds the server's --max-batch "
                             f"{max_batch}; split it")
    if headers.get("X-Dtype", "float32") == np.dtype(engine.primary_input.dtype).name:
        try:
            check_profile(engine.primary_input.name, shape, engine.min_shape, engine.max_shape)
        except ProfileError as exc:
            raise HTTPError(413 if exc.too_large else 400, str(exc)) from None


def check_request(feeds: dict[str, np.ndarray], engine: Engine, max_batch: int, strict_dtype: bool) -> dict:
    """Model-level checks with 4xx errors naming the problem (dtype strict for binary bodies): the server's
    --max-batch first (413), then the engine's checks (names, ranks, dtypes, profile: 413 above its maximum)."""
    specs, primary = engine.input_specs, engine.primary_input.name
    for name, arr in feeds.items():
        if name not in specs:
            raise HTTPError(400, f"unknown input {name!r}; the model takes {', '.join(specs)}")
        raw_image = name == primary and arr.dtype == np.uint8  # the engine normalises it or says why not
        if strict_dtype and arr.dtype != np.dtype(specs[name].dtype) and not raw_image:
            raise HTTPError(400, engine.dtype_error(specs[name], arr.dtype))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise HTTPError(400, f"input {name!r} contains NaN or infinity")
    x = feeds.get(engine.primary_input.name)
    if x is not None and x.ndim and int(x.shape[0]) > max_batch:
        raise HTTPError(413, f"request batch {int(x.shape[0])} exceeds the server's --max-batch {max_batch}; split it")
    try:
        feeds = engine.check_feeds(feeds)
    except ProfileError as exc:
        raise HTTPError(413 if exc.too_large else 400, str(exc)) from None
    except InputError as exc:
        raise HTTPError(400, str(exc)) from None
    return feeds  # noise inputs of stochastic models are now filled (seeded, per request)


def _v1_json(outputs: dict[str, np.ndarray]) -> bytes:
    return json.dumps({"outputs": {k: _nested(v) for k, v in outputs.items()},
                       "shapes": {k: list(v.shape) for k, v in outputs.items()},
                       "dtypes": {k: v.dtype.name for k, v in outputs.items()}}, allow_nan=False).encode()


def _nested(arr: np.ndarray) -> list:
    """Nested lists of ``arr`` (the /v1 JSON layout), non-finite floats as strings (see sai.runtime.kserve)."""
    if arr.dtype.kind != "f" or np.isfinite(arr).all():
        return arr.tolist()
    flat = kserve.json_values(arr)
    for d in reversed(arr.shape[1:]):
        flat = [flat[i:i + d] for i in range(0, len(flat), d)]
    return flat


# ----------------------------------------------------------------------------------------------
# the server
# ----------------------------------------------------------------------------------------------


def _auto_body_limit(engine: Engine, max_batch: int) -> int:
    """Default body limit: what the largest request the profile admits can take as JSON (about 24 bytes a
    value), at least 1 MiB, at most 64 MiB."""
    if engine.max_shape is None:
        return 64 << 20
    n = math.prod(engine.max_shape[1:]) * max_batch
    return int(min(64 << 20, max(1 << 20, 24 * n + (64 << 10))))


class InferenceServer:
    """``start()`` binds (port 0: an ephemeral port, see ``.port`` / ``.grpc_port``) and serves in background
    threads; ``stop()`` stops accepting, drains queued requests and closes. ``grpc_port=None``: no gRPC.
    ``max_body_bytes=None``: sized from the engine profile (``_auto_body_limit``); ``max_shape`` tightens or sets
    the profile's maximum (engines loaded without a manifest have none)."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 8,
                 max_delay_ms: float = 5.0, max_queue: int = 64, max_body_bytes: Optional[int] = None,
                 request_timeout: float = 60.0, grpc_port: Optional[int] = None, model_name: Optional[str] = None,
                 model_version: str = "1", idle_timeout: float = 5.0, backlog: int = 2048,
                 max_shape: Optional[Sequence[int]] = None, max_header_bytes: int = MAX_HEADER_BYTES,
                 body_timeout: float = BODY_TIMEOUT_S, drain_timeout: float = DRAIN_TIMEOUT_S):
        check_port(port, "port")
        if grpc_port is not None:
            check_port(grpc_port, "grpc_port")
        if max_shape is not None:
            engine.set_profile(max_shape=max_shape)
        self.engine = engine
        self.model_name = model_name or engine.metadata.get("arch") or "model"
        self.model_version = str(model_version)
        self.labels = getattr(engine, "labels", None)  # class names for the classification extension
        self.metrics = Metrics(self.model_name, self.model_version)
        if hasattr(engine, "observer") and engine.observer is None:  # a serve_masks.MaskMetricsEngine
            engine.observer = self.metrics.masks
        self.max_batch = max(1, int(max_batch))
        if engine.max_batch is not None:
            self.max_batch = min(self.max_batch, int(engine.max_batch))
        if engine.max_shape is not None:
            self.max_batch = min(self.max_batch, int(engine.max_shape[0]))
        self.max_body_bytes = int(max_body_bytes) if max_body_bytes else _auto_body_limit(engine, self.max_batch)
        self.request_timeout = float(request_timeout)
        self.idle_timeout = float(idle_timeout)
        self.max_header_bytes = max(1024, int(max_header_bytes))
        self.body_timeout = float(body_timeout)
        self.drain_timeout = float(drain_timeout)
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # the HTTP loop (set by the first body read)
        self.body_reads: set = set()  # the asyncio.Timeout of every body being read (loop thread only)
        self.body_cutoff: Optional[float] = None  # loop time by which body reads end once the drain began
        self.body_bytes = 0  # bytes of bodies read since the heap was last trimmed (loop thread only)
        self.batcher = Batcher(engine, self.metrics, self.max_batch, max_delay_ms, max_queue)
        self.ready = threading.Event()
        self.draining = False
        self._admit = threading.Condition()  # requests admitted before the drain, not yet queued
        self._admitted = 0
        self.host = host
        self.sock = _listen(host, int(port), backlog)
        self.port = self.sock.getsockname()[1]
        self.grpc_port: Optional[int] = None
        self._grpc = None
        if grpc_port is not None:
            from sai.runtime.serve_grpc import make_grpc_server

            self._grpc, self.grpc_port = make_grpc_server(self, host, int(grpc_port))
        from concurrent.futures import ThreadPoolExecutor

        self.decode_pool = ThreadPoolExecutor(8, thread_name_prefix="sai-decode")  # HTTP request decoding
        self._uvicorn = None
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> InferenceServer:
        import uvicorn

        from sai.runtime.serve_http import make_app, protocol_class

        self.batcher.start()
        config = uvicorn.Config(make_app(self), log_level="warning", access_log=False, lifespan="off",
                                http=protocol_class(self.idle_timeout, self.max_header_bytes, self._header_refused),
                                timeout_keep_alive=max(1, round(self.idle_timeout)), server_header=False,
                                timeout_graceful_shutdown=self.drain_timeout,
                                h11_max_incomplete_event_size=self.max_header_bytes)
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self.sock]}, name="sai-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._uvicorn.started:
            raise SaiError(f"the HTTP server on {self.url} did not start")
        if self._grpc is not None:
            self._grpc.start()
        self.ready.set()
        return self

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Graceful: readiness turns false and new requests get 503; queued and running ones finish, within
        ``timeout`` seconds in all (default ``drain_timeout``; what is left then, e.g. uploads that stall, is cut
        off). True when everything finished within the bound."""
        if self._stopped.is_set():
            return True
        timeout = self.drain_timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout

        def left(floor: float = 0.0) -> float:
            return max(floor, deadline - time.monotonic())

        with self._admit:  # requests that arrived before this are drained too: wait until they are queued
            self.draining = True
            self.ready.clear()
            clean = self._admit.wait_for(lambda: self._admitted == 0, left())
        self._cut_body_reads(left() - min(2.0, 0.25 * timeout))  # the rest: answers, close, process exit
        self.batcher.drain_and_stop(left())
        clean = clean and not self.batcher.thread.is_alive()
        while self.metrics.inflight and time.monotonic() < deadline:  # responses being written, bodies being read
            time.sleep(0.01)
        clean = clean and not self.metrics.inflight
        if self._grpc is not None:
            self._grpc.stop(grace=left()).wait(left(0.5))
        if self._uvicorn is not None:  # its own wait for open requests is bounded by what is left of ours
            self._uvicorn.config.timeout_graceful_shutdown = left(0.1)
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(left(1.0) + 1.0)
        try:
            self.sock.close()
        except OSError:
            pass
        self.decode_pool.shutdown(wait=False)
        self._stopped.set()
        return clean

    def _cut_body_reads(self, seconds: float) -> None:
        """Bodies still being read ``seconds`` from now get a 503 then (uploads that stall cannot hold the drain)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def cut():
            self.body_cutoff = loop.time() + max(0.0, seconds)
            for deadline in list(self.body_reads):
                if deadline.when() is None or deadline.when() > self.body_cutoff:
                    deadline.reschedule(self.body_cutoff)

        with contextlib.suppress(RuntimeError):  # the loop has just closed
            loop.call_soon_threadsafe(cut)

    def bodies_done(self) -> None:
        """No body is being read now: after a burst of them (a flood of large or stalled uploads), give the freed
        heap back to the OS (glibc keeps it otherwise: +80 MB of RSS after 200 stalled 1 MiB uploads)."""
        if self.body_bytes >= TRIM_AFTER_BYTES:
            self.body_bytes = 0
            self.decode_pool.submit(_trim_heap)

    def _header_refused(self) -> None:
        """A request head over ``max_header_bytes`` (the protocol answered 431 and closes the connection)."""
        self.metrics.request("header", 431)

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the inference path both front ends share --------------------------------------------------
    @contextlib.contextmanager
    def admitted(self):
        """Admit a request that has arrived (503 once the drain began) for the time it is decoded and queued;
        ``stop`` waits for admitted requests to reach the queue, so they are drained, not refused."""
        with self._admit:
            if self.draining:
                raise HTTPError(503, "server is shutting down")
            self._admitted += 1
        try:
            yield
        finally:
            with self._admit:
                self._admitted -= 1
                self._admit.notify_all()

    def submit(self, feeds: dict[str, np.ndarray]) -> Future:
        try:
            return self.batcher.submit(feeds)
        except QueueFull as exc:
            raise HTTPError(503, f"overloaded: {exc}; retry later") from None

    def check_model(self, name: str, version: Optional[str]) -> None:
        if name != self.model_name:
            raise HTTPError(404, f"unknown model {name[:80]!r}; this server serves {self.model_name!r}")
        if version not in (None, "", self.model_version):
            raise HTTPError(404, f"unknown version {version[:20]!r} of model {name!r}; it has version "
                                 f"{self.model_version}")

    def infer_v2(self, doc, tail) -> tuple[kserve.InferRequest, Future]:
        """Decode a v2 request (JSON, binary tail), check it, queue it."""
        req = kserve.parse_infer_request(doc, tail, self.engine)
        req.feeds = check_request(req.feeds, self.engine, self.max_batch, strict_dtype=False)
        return req, self.submit(req.feeds)

    @staticmethod
    def engine_error(exc: BaseException) -> HTTPError:
        if isinstance(exc, HTTPError):
            return exc
        if isinstance(exc, ProfileError):
            return HTTPError(413 if exc.too_large else 400, str(exc))
        if isinstance(exc, InputError):
            return HTTPError(400, str(exc))
        if isinstance(exc, SaiError):
            return HTTPError(500, str(exc))
        return HTTPError(500, f"inference failed: {type(exc).__name__}: {str(exc)[:300]}")


def internal_error(exc: BaseException, where: str) -> HTTPError:
    """An unexpected exception in a handler (a bug): one log line (the traceback at debug level) and a 500 that
    names it, never a crashed handler."""
    log.error("sai serve: internal error in %s: %s: %s", where, type(exc).__name__, str(exc)[:200])
    log.debug("traceback", exc_info=exc)
    return HTTPError(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")


def _trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: return free heap pages to the OS (nothing elsewhere)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def check_port(port: Any, what: str = "port") -> int:
    """A TCP port number, 0 (any free port) to 65535; SaiError otherwise (the OS would wrap 99999 to 34463)."""
    if type(port) is not int or not 0 <= port <= 65535:
        raise SaiError(f"{what} {port!r} is not a TCP port; use 1 to 65535, or 0 for any free port")
    return port


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def read_body_limit(body_len: Optional[int], limit: int) -> None:
    if body_len is not None and body_len > limit:
        raise HTTPError(413, f"body of {body_len} bytes exceeds the limit of {limit} bytes")


def decompress(body: bytes, encoding: Optional[str], limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient's request_compression_algorithm), bounded by ``limit``."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "deflate"):
        raise HTTPError(415, f"Content-Encoding {enc[:20]!r} is not supported; use gzip, deflate or none")
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPError(400, f"the {enc} body does not decompress: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise HTTPError(413, f"the decompressed body exceeds the limit of {limit} bytes")
    if not d.eof:
        raise HTTPError(400, f"the {enc} body is truncated (its stream does not end); send the whole stream")
    return out


async def await_result(server: InferenceServer, fut: Future) -> dict[str, np.ndarray]:
    """The batcher's result; 504 after ``request_timeout`` (the request is cancelled, so it never runs late).
    A timer instead of ``asyncio.wait_for``: no extra task per request."""
    loop = asyncio.get_running_loop()
    waiter = asyncio.wrap_future(fut, loop=loop)
    timed_out = []

    def expire():
        timed_out.append(True)
        waiter.cancel()

    timer = loop.call_later(server.request_timeout, expire)
    try:
        return await waiter
    except asyncio.CancelledError:
        if timed_out:
            raise HTTPError(504, f"inference did not finish within {server.request_timeout:g} s") from None
        raise
    except Exception as exc:
        raise server.engine_error(exc) from None
    finally:
        timer.cancel()


def serve_forever(server: InferenceServer, on_ready=None, install_signals: bool = True) -> int:
    """Run until SIGTERM/SIGINT, then drain and stop (graceful). Returns the exit code."""
    import signal

    stop = threading.Event()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    server.start()
    if on_ready:
        on_ready(server)
    while not stop.wait(0.5):
        pass
    if not server.stop():
        import sys

        print(f"sai serve: the drain reached its bound of {server.drain_timeout:g} s (--drain-timeout); requests "
              "still open then were cut off", file=sys.stderr, flush=True)
    return 0


def server_info(server: InferenceServer) -> dict[str, Any]:
    return {"url": server.url, "grpc_port": server.grpc_port, "model_name": server.model_name,
            "model_version": server.model_version, "max_batch": server.max_batch,
            "max_queue": server.batcher.max_queue, "max_delay_ms": server.batcher.max_delay * 1e3,
            "max_body_bytes": server.max_body_bytes, **server.engine.describe()}

