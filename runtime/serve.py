"""HTTP inference server: standard library only (``http.server.ThreadingHTTPServer``).

Why the standard library: the server's work is one inference thread fed by a queue; HTTP parsing is
not the bottleneck, and no dependency means `sai serve` runs wherever the runtime does. A handler
thread per connection parses and validates the request, puts it on a bounded queue (503 when full)
and waits on a Future; one batcher thread takes up to ``max_batch`` images (waiting at most
``max_delay_ms`` after the first), concatenates same-shaped requests along the batch axis, runs the
engine once and splits the outputs.

Endpoints: ``POST /v1/infer`` (JSON, raw tensor ``application/octet-stream`` with ``X-Shape`` /
``X-Dtype`` headers, or ``application/x-npy``), ``GET /v1/model``, ``/healthz``, ``/readyz``,
``/metrics`` (Prometheus text format 0.0.4).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import numpy as np

from sai.errors import SaiError
from sai.runtime.engine import Engine, InputError

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8")
INFER_PATHS = ("/v1/infer", "/infer")


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.batch = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS)
        self.queue_depth = 0
        self.inflight = 0

    def request(self, path: str, status: int, seconds: Optional[float] = None) -> None:
        with self.lock:
            key = (path, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if seconds is not None:
                self.latency.observe(seconds)

    def render(self) -> str:
        with self.lock:
            out = ["# HELP sai_requests_total HTTP requests by path and status code.",
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
            while not self.queue:
                if self.stopping:
                    return None
                self.cond.wait(0.5)
            first = self.queue.popleft()
            batch, total = [first], first.n
            deadline = time.monotonic() + self.max_delay
            while total < self.max_batch:
                match = next((r for r in self.queue if r.key == first.key and total + r.n <= self.max_batch), None)
                if match is not None:
                    self.queue.remove(match)
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
        try:
            feeds = {k: (batch[0].feeds[k] if len(batch) == 1 else np.concatenate([r.feeds[k] for r in batch]))
                     for k in names}
            t = time.perf_counter()
            outs = self.engine.infer(feeds)
            dt = time.perf_counter() - t
        except BaseException as exc:  # every waiter gets the error; the loop keeps serving
            for r in batch:
                r.future.set_exception(exc)
            return
        with self.metrics.lock:
            self.metrics.batch.observe(sum(r.n for r in batch))
            self.metrics.inference.observe(dt)
        start = 0
        for r in batch:
            r.future.set_result({k: v[start:start + r.n] for k, v in outs.items()})
            start += r.n

    def drain_and_stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish everything queued, stop the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)


# ----------------------------------------------------------------------------------------------
# request decoding
# ----------------------------------------------------------------------------------------------


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise HTTPError(400, f"X-Shape must be comma-separated integers, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise HTTPError(400, f"X-Shape must be positive integers, got {text!r}")
    return shape


def decode_request(ctype: str, headers, body: bytes, engine: Engine) -> dict[str, np.ndarray]:
    """Body -> feeds (not yet checked against the model). HTTPError(400/415) for what cannot be decoded."""
    ctype = (ctype or "").split(";")[0].strip().lower()
    primary = engine.primary_input
    if ctype in ("application/json", ""):
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"malformed JSON body: {exc}") from None
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
                if arr.dtype.kind not in "iuf":  # JSON numbers only: no true/false, strings or nulls
                    raise TypeError(f"it holds {'booleans' if arr.dtype.kind == 'b' else 'non-numbers'}")
                arr = arr.astype(np.dtype(spec.dtype))
            except (ValueError, TypeError) as exc:
                raise HTTPError(400, f"input {name!r} is not a rectangular numeric array: {str(exc)[:200]}") from None
            feeds[name] = arr
        return feeds
    if ctype == "application/octet-stream":
        shape_h, dtype_h = headers.get("X-Shape"), headers.get("X-Dtype", "float32")
        if not shape_h:
            raise HTTPError(400, "raw tensor bodies need an X-Shape header (e.g. X-Shape: 1,3,224,224)")
        shape = _parse_shape(shape_h)
        if dtype_h not in DTYPES:
            raise HTTPError(400, f"X-Dtype {dtype_h!r} is not supported; use one of {', '.join(DTYPES)}")
        dtype = np.dtype(dtype_h)
        want = int(np.prod(shape)) * dtype.itemsize
        if len(body) != want:
            raise HTTPError(400, f"body has {len(body)} bytes but X-Shape {list(shape)} x {dtype.name} needs {want}")
        return {headers.get("X-Input", primary.name): np.frombuffer(body, dtype=dtype).reshape(shape)}
    if ctype in ("application/x-npy", "application/npy"):
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as exc:
            raise HTTPError(400, f"malformed .npy body: {str(exc)[:200]}") from None
        if not isinstance(arr, np.ndarray):
            raise HTTPError(400, "the .npy body must hold one array")
        return {headers.get("X-Input", primary.name): arr}
    raise HTTPError(415, f"unsupported Content-Type {ctype!r}; use application/json, application/octet-stream "
                         "(with X-Shape/X-Dtype) or application/x-npy")


def check_request(feeds: dict[str, np.ndarray], engine: Engine, max_batch: int, strict_dtype: bool) -> dict:
    """Model-level checks with 400 errors naming the problem (dtype strict for binary bodies)."""
    specs = engine.input_specs
    for name, arr in feeds.items():
        if name not in specs:
            raise HTTPError(400, f"unknown input {name!r}; the model takes {', '.join(specs)}")
        if strict_dtype and arr.dtype != np.dtype(specs[name].dtype):
            raise HTTPError(400, engine.dtype_error(specs[name], arr.dtype))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise HTTPError(400, f"input {name!r} contains NaN or infinity")
    try:
        feeds = engine.check_feeds(feeds)
    except InputError as exc:
        raise HTTPError(400, str(exc)) from None
    n = int(feeds[engine.primary_input.name].shape[0])
    if n > max_batch:
        raise HTTPError(413, f"request batch {n} exceeds the server's --max-batch {max_batch}; split it")
    return feeds  # noise inputs of stochastic models are now filled (seeded, per request)


# ----------------------------------------------------------------------------------------------
# the server
# ----------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client that went away is not a server error
        super().handle_error(request, client_address)


class InferenceServer:
    """``start()`` binds (port 0: an ephemeral port, see ``.port``) and serves in background threads;
    ``stop()`` stops accepting, drains queued requests and closes."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 8,
                 max_delay_ms: float = 5.0, max_queue: int = 64, max_body_bytes: int = 64 << 20,
                 request_timeout: float = 60.0):
        self.engine, self.metrics = engine, Metrics()
        self.max_batch = max(1, int(max_batch))
        if engine.max_batch is not None:
            self.max_batch = min(self.max_batch, int(engine.max_batch))
        self.max_body_bytes, self.request_timeout = int(max_body_bytes), float(request_timeout)
        self.batcher = Batcher(engine, self.metrics, self.max_batch, max_delay_ms, max_queue)
        self.ready = threading.Event()
        self.draining = False
        self.httpd = _HTTPServer((host, int(port)), _make_handler(self))
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> InferenceServer:
        self.batcher.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="sai-http", daemon=True)
        self._thread.start()
        self.ready.set()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: /readyz turns 503 and new requests get 503; queued and running ones finish."""
        if self._stopped.is_set():
            return
        self.draining = True
        self.ready.clear()
        self.batcher.drain_and_stop(timeout)
        deadline = time.monotonic() + timeout
        while self.metrics.inflight and time.monotonic() < deadline:  # responses being written
            time.sleep(0.01)
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopped.set()

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _to_json(outputs: dict[str, np.ndarray]) -> bytes:
    return json.dumps({"outputs": {k: v.tolist() for k, v in outputs.items()},
                       "shapes": {k: list(v.shape) for k, v in outputs.items()},
                       "dtypes": {k: v.dtype.name for k, v in outputs.items()}}).encode()


def _make_handler(server: InferenceServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "sai-serve"
        disable_nagle_algorithm = True  # small responses must not wait for delayed ACKs (40 ms stalls)

        def log_message(self, fmt, *args):  # quiet; metrics carry the counts
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: Optional[dict] = None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self._headers_buffer.append(b"\r\n")
            self._headers_buffer.append(body)  # headers and body in one write
            self.flush_headers()

        def _error(self, status: int, message: str, path: str, headers: Optional[dict] = None):
            server.metrics.request(path, status)
            self._send(status, json.dumps({"error": message, "status": status}).encode(), headers=headers)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/healthz":
                server.metrics.request(path, 200)
                return self._send(200, b'{"status":"ok"}')
            if path == "/readyz":
                ok = server.ready.is_set() and not server.draining
                server.metrics.request(path, 200 if ok else 503)
                return self._send(200 if ok else 503, json.dumps({"ready": ok}).encode())
            if path == "/metrics":
                server.metrics.request(path, 200)
                return self._send(200, server.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
            if path == "/v1/model":
                server.metrics.request(path, 200)
                info = server.engine.describe()
                info.update(max_batch=server.max_batch, max_queue=server.batcher.max_queue)
                return self._send(200, json.dumps(info).encode())
            return self._error(404, f"no such path {path}; try POST /v1/infer, /healthz, /readyz, /metrics", "other")

        def do_POST(self):
            path = self.path.split("?")[0]
            if path not in INFER_PATHS:
                self.close_connection = True
                return self._error(404, f"no such path {path}; POST to /v1/infer", "other")
            t0 = time.perf_counter()
            with server.metrics.lock:
                server.metrics.inflight += 1
            try:
                status, body, ctype, headers = self._infer()
            except HTTPError as exc:
                status, body, ctype = exc.status, json.dumps({"error": str(exc), "status": exc.status}).encode(), \
                    "application/json"
                headers = {"Retry-After": "1"} if exc.status == 503 else {}
            finally:
                with server.metrics.lock:
                    server.metrics.inflight -= 1
            server.metrics.request("/v1/infer", status, time.perf_counter() - t0 if status == 200 else None)
            self._send(status, body, ctype, headers)

        def _infer(self):
            if server.draining:
                raise HTTPError(503, "server is shutting down")
            length = self.headers.get("Content-Length")
            if length is None:
                self.close_connection = True
                raise HTTPError(411, "Content-Length is required")
            try:
                length = int(length)
            except ValueError:
                self.close_connection = True
                raise HTTPError(400, f"bad Content-Length {length!r}") from None
            if length > server.max_body_bytes:
                # read and drop a moderately oversized body so the client sees the 413 (not a broken pipe)
                # and the connection stays usable; beyond that, answer and close without reading
                if length <= 16 * server.max_body_bytes:
                    left = length
                    while left > 0:
                        chunk = self.rfile.read(min(left, 1 << 20))
                        if not chunk:
                            break
                        left -= len(chunk)
                else:
                    self.close_connection = True
                raise HTTPError(413, f"body of {length} bytes exceeds the limit of {server.max_body_bytes} bytes")
            body = self.rfile.read(length)
            ctype = self.headers.get("Content-Type", "application/json")
            binary = not ctype.lower().startswith("application/json")
            feeds = decode_request(ctype, self.headers, body, server.engine)
            feeds = check_request(feeds, server.engine, server.max_batch, strict_dtype=binary)
            try:
                fut = server.batcher.submit(feeds)
            except QueueFull as exc:
                raise HTTPError(503, f"overloaded: {exc}; retry later") from None
            try:
                outs = fut.result(timeout=server.request_timeout)
            except TimeoutError:
                raise HTTPError(504, f"inference did not finish within {server.request_timeout:g} s") from None
            except SaiError as exc:
                raise HTTPError(400 if isinstance(exc, InputError) else 500, str(exc)) from None
            except Exception as exc:
                raise HTTPError(500, f"inference failed: {type(exc).__name__}: {exc}") from None
            accept = self.headers.get("Accept", "")
            if binary and "application/json" not in accept:
                name = self.headers.get("X-Output") or next(iter(outs))
                if name not in outs:
                    raise HTTPError(400, f"X-Output {name!r} is not an output; outputs: {', '.join(outs)}")
                arr = np.ascontiguousarray(outs[name])
                if ctype.lower().startswith(("application/x-npy", "application/npy")):
                    buf = io.BytesIO()
                    np.save(buf, arr, allow_pickle=False)
                    return 200, buf.getvalue(), "application/x-npy", {"X-Output-Name": name}
                return 200, arr.tobytes(), "application/octet-stream", {
                    "X-Output-Name": name, "X-Shape": ",".join(map(str, arr.shape)), "X-Dtype": arr.dtype.name}
            return 200, _to_json(outs), "application/json", {}

    return Handler


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
    server.stop()
    return 0


def server_info(server: InferenceServer) -> dict[str, Any]:
    return {"url": server.url, "max_batch": server.max_batch, "max_queue": server.batcher.max_queue,
            "max_delay_ms": server.batcher.max_delay * 1e3, **server.engine.describe()}
