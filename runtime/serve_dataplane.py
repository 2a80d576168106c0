"""The data plane of `sai serve`: the model (its engine, name and version), the dynamic batcher, the checks
every protocol shares, admission while draining, and the metrics (``/metrics`` through ``prometheus_client``, the
same counters as the v2 statistics extension).

The front ends (``sai.runtime.serve_http``: HTTP/ASGI, ``sai.runtime.serve_grpc``: gRPC) call a ``DataPlane``
and never each other; ``sai.runtime.serve.InferenceServer`` is a data plane with its listening sockets and front
ends (KServe's layout: one data plane, thin REST and gRPC layers). Request faults are ``HTTPError`` statuses
(``sai.runtime.kserve``); each front end maps them to its protocol.

The batcher is a bounded queue (503 / UNAVAILABLE when full) and one thread that takes up to ``max_batch`` images
(waiting at most ``max_delay_ms`` after the first), concatenates same-shaped requests along the batch axis, runs
the engine once and splits the outputs.

Metric names: Triton's ``nv_inference_*`` (prometheus-cpp's names, without the ``_total`` suffix
``prometheus_client`` puts on every counter it exposes, so they are exposed as untyped series: the names Triton
dashboards query), ``sai_requests_total`` (a counter), histograms, gauges and the mask-density summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from sai.errors import SaiError
from sai.runtime import kserve
from sai.runtime.engine import Engine, InputError, ProfileError
from sai.runtime.kserve import HTTPError

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SERVER_NAME = "sai-serve"
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")  # Triton's nv_inference_request_failure reasons

log = logging.getLogger("sai.serve")


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

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of values <= le)`` per bucket, ``+Inf`` last (Prometheus histogram buckets)."""
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append((f"{b:g}", acc))
        out.append(("+Inf", self.count))
        return out


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

    def render(self) -> bytes:
        """The Prometheus text exposition (format 0.0.4) of these counters, written by ``prometheus_client``."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)

    def families(self) -> list:
        """The metric families at this moment (one consistent snapshot, taken under the lock)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            SummaryMetricFamily,
            UnknownMetricFamily,
        )

        lab, vals = ["model", "version"], [self.model, self.version]
        with self.lock:
            out = []
            for name, help_ in TRITON_COUNTERS[:1]:
                out.append(UnknownMetricFamily(name, help_, labels=lab))
                out[-1].add_metric(vals, self.nv[name])
            fail = UnknownMetricFamily("nv_inference_request_failure", "Number of failed inference requests, all "
                                       "batch sizes", labels=["model", "reason", "version"])
            for reason, n in self.failures.items():
                fail.add_metric([self.model, reason, self.version], n)
            out.append(fail)
            for name, help_ in TRITON_COUNTERS[1:]:
                out.append(UnknownMetricFamily(name, help_, labels=lab))
                out[-1].add_metric(vals, self.nv[name])
            out.append(GaugeMetricFamily("nv_inference_pending_request_count", "Instantaneous number of pending "
                                         "requests awaiting execution per-model.", labels=lab))
            out[-1].add_metric(vals, self.queue_depth)
            requests = CounterMetricFamily("sai_requests", "HTTP/gRPC requests by path and status code.",
                                           labels=["path", "status"])
            for (path, status), n in sorted(self.requests.items()):
                requests.add_metric([path, str(status)], n)
            out.append(requests)
            for name, help_, hist in (("sai_batch_size", "Images per engine run (dynamic batching).", self.batch),
                                      ("sai_request_latency_seconds", "Inference request latency, receipt to "
                                       "response.", self.latency),
                                      ("sai_inference_seconds", "Engine run time per batch.", self.inference)):
                out.append(HistogramMetricFamily(name, help_, buckets=hist.cumulative(), sum_value=hist.sum))
            out.append(GaugeMetricFamily("sai_queue_depth", "Requests waiting for the batcher.", self.queue_depth))
            out.append(GaugeMetricFamily("sai_inflight_requests", "Inference requests being handled.", self.inflight))
            if self.mask_density:
                masks = SummaryMetricFamily("sai_mask_density", "Fraction of positions a block's sparse conv computes "
                                            "(mask m1: conv1, m2: conv2), per image; _sum / _count is the mean.",
                                            labels=["model", "block", "mask"])
                for key, (total, n) in sorted(self.mask_density.items()):
                    block, mask = key.rsplit(".", 1)
                    masks.add_metric([self.model, block, mask], count_value=n, sum_value=total)
                out.append(masks)
            return out


class _Collector:
    """A ``prometheus_client`` collector over one ``Metrics`` (read at scrape time)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        return self.metrics.families()


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
# checks
# ----------------------------------------------------------------------------------------------


def check_request(feeds: dict[str, np.ndarray], engine: Engine, max_batch: int, strict_dtype: bool) -> dict:
    """Model-level checks with 4xx errors naming the problem (dtype strict for binary bodies): the server's
    --max-batch first, then the engine's checks (names, ranks, dtypes, the profile): 400 naming what is accepted."""
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
        raise HTTPError(400, f"request batch {int(x.shape[0])} exceeds the server's --max-batch {max_batch} (accepted: "
                             f"batch 1-{max_batch}); split it")
    try:
        feeds = engine.check_feeds(feeds)
    except ProfileError as exc:
        raise HTTPError(400, str(exc)) from None
    except InputError as exc:
        raise HTTPError(400, str(exc)) from None
    return feeds  # noise inputs of stochastic models are now filled (seeded, per request)



def _auto_body_limit(engine: Engine, max_batch: int) -> int:
    """Default body limit: what the largest request the profile admits can take as JSON (about 24 bytes a
    value), at least 1 MiB, at most 64 MiB."""
    if engine.max_shape is None:
        return 64 << 20
    n = math.prod(engine.max_shape[1:]) * max_batch
    return int(min(64 << 20, max(1 << 20, 24 * n + (64 << 10))))




def internal_error(exc: BaseException, where: str) -> HTTPError:
    """An unexpected exception in a handler (a bug): one log line (the traceback at debug level) and a 500 that
    names it, never a crashed handler."""
    log.error("sai serve: internal error in %s: %s: %s", where, type(exc).__name__, str(exc)[:200])
    log.debug("traceback", exc_info=exc)
    return HTTPError(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")



# ----------------------------------------------------------------------------------------------
# the data plane
# ----------------------------------------------------------------------------------------------


class DataPlane:
    """One model behind every protocol: ``check_model``, ``admitted`` + ``submit`` (queue a checked request),
    ``infer_v2`` (decode + check + queue a v2 request), metadata, config and statistics, the metrics.
    ``max_body_bytes=None``: sized from the engine profile (``_auto_body_limit``); ``max_shape`` tightens or sets
    the profile's maximum (engines loaded without a manifest have none)."""

    def __init__(self, engine: Engine, *, max_batch: int = 8, max_delay_ms: float = 5.0, max_queue: int = 64,
                 max_body_bytes: Optional[int] = None, request_timeout: float = 60.0,
                 model_name: Optional[str] = None, model_version: str = "1",
                 max_shape: Optional[Sequence[int]] = None):
        from sai.runtime.serve_detector import DetectorServing, is_detector

        self.detector: Optional[DetectorServing] = None
        if is_detector(engine):  # a detector OUTDIR: images in, detections out (sai.runtime.serve_detector)
            engine = self.detector = DetectorServing(engine, max_shape)
        elif max_shape is not None:
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
        self.batcher = Batcher(engine, self.metrics, self.max_batch, max_delay_ms, max_queue)
        self.ready = threading.Event()
        self.draining = False
        self._admit = threading.Condition()  # requests admitted before the drain, not yet queued
        self._admitted = 0

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self.draining

    def begin_drain(self, timeout: float) -> bool:
        """Readiness turns false and new requests get 503; waits (at most ``timeout`` s) until the requests admitted
        before are queued, so they are drained, not refused. True when they all were."""
        with self._admit:
            self.draining = True
            self.ready.clear()
            return self._admit.wait_for(lambda: self._admitted == 0, max(0.0, timeout))

    @contextlib.contextmanager
    def admitted(self):
        """Admit a request that has arrived (503 once the drain began) for the time it is decoded and queued."""
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

    @contextlib.contextmanager
    def inflight(self):
        """An inference request being handled (``sai_inflight_requests``; the drain waits for them)."""
        with self.metrics.lock:
            self.metrics.inflight += 1
        try:
            yield
        finally:
            with self.metrics.lock:
                self.metrics.inflight -= 1

    def submit(self, feeds: dict[str, np.ndarray]) -> Future:
        try:
            return self.batcher.submit(feeds)
        except QueueFull as exc:
            raise HTTPError(503, f"overloaded: {exc}; retry later") from None

    def result(self, fut: Future) -> dict[str, np.ndarray]:
        """A queued request's outputs, waiting in this thread (504 after ``request_timeout``: it is cancelled, so
        it never runs late; engine faults as their HTTPError)."""
        try:
            return fut.result(timeout=self.request_timeout)
        except TimeoutError:
            fut.cancel()
            raise HTTPError(504, f"inference did not finish within {self.request_timeout:g} s") from None
        except Exception as exc:
            raise self.engine_error(exc) from None

    def check_model(self, name: str, version: Optional[str]) -> None:
        if name != self.model_name:
            raise HTTPError(404, f"unknown model {name[:80]!r}; this server serves {self.model_name!r}")
        if version not in (None, "", self.model_version):
            raise HTTPError(404, f"unknown version {version[:20]!r} of model {name!r}; it has version "
                                 f"{self.model_version}")

    def check(self, feeds: dict[str, np.ndarray], strict_dtype: bool = False) -> dict[str, np.ndarray]:
        return check_request(feeds, self.engine, self.max_batch, strict_dtype=strict_dtype)

    def infer_v2(self, doc, tail) -> tuple[kserve.InferRequest, Future]:
        """Decode a v2 request (JSON, binary tail), check it, queue it."""
        if self.detector is not None:
            from sai.runtime.serve_detector import parse_v2

            req, req.class_names = parse_v2(self.detector, doc, tail, self.max_batch)
            return req, self.submit(req.feeds)
        req = kserve.parse_infer_request(doc, tail, self.engine)
        req.feeds = self.check(req.feeds)
        return req, self.submit(req.feeds)

    def infer_detector_grpc(self, request) -> tuple[kserve.InferRequest, Future]:
        """Decode a detector's gRPC ``ModelInferRequest`` (``sai.runtime.serve_detector``), check it, queue it."""
        from sai.runtime.serve_detector import parse_grpc

        req, req.class_names = parse_grpc(self.detector, request, self.max_batch)
        return req, self.submit(req.feeds)

    def outputs(self, req: kserve.InferRequest, outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A request's outputs as answered: a detector's with ``label_names`` where the request asked for them."""
        if self.detector is not None and getattr(req, "class_names", False):
            return self.detector.with_names(outs)
        return outs

    def refuse_v1(self) -> None:
        """``/v1/infer`` classifies tensors: a detector refuses it (400 naming the v2 request it takes)."""
        if self.detector is not None:
            from sai.runtime.serve_detector import NOT_A_CLASSIFIER

            raise HTTPError(400, f"/v1/infer is not available: {NOT_A_CLASSIFIER}")

    def metadata(self) -> dict:
        if self.detector is not None:
            return self.detector.model_metadata(self.model_name, self.model_version)
        return kserve.model_metadata(self.engine, self.model_name, self.model_version)

    def config(self) -> dict:
        if self.detector is not None:
            return self.detector.model_config(self.model_name, self.max_batch)
        return kserve.model_config(self.engine, self.model_name, self.max_batch)

    def statistics(self) -> dict:
        return self.metrics.statistics()

    def server_metadata(self) -> dict:
        from sai import __version__

        return {"name": SERVER_NAME, "version": __version__, "extensions": list(kserve.PROTOCOL_EXTENSIONS)}

    @staticmethod
    def engine_error(exc: BaseException) -> HTTPError:
        if isinstance(exc, HTTPError):
            return exc
        if isinstance(exc, ProfileError):
            return HTTPError(400, str(exc))
        if isinstance(exc, InputError):
            return HTTPError(400, str(exc))
        if isinstance(exc, SaiError):
            return HTTPError(500, str(exc))
        return HTTPError(500, f"inference failed: {type(exc).__name__}: {str(exc)[:300]}")
