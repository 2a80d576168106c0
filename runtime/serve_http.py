"""The HTTP front end of `sai serve`: a starlette app (KServe v2 + sai's /v1) over a ``DataPlane``
(``sai.runtime.serve_dataplane``), on uvicorn (httptools parser, uvloop where installed) in its own thread.

Bodies are read with a limit (413 naming it; a moderately oversized body is read and dropped so the client sees
the answer and the connection stays in step, a huge one is answered and the connection closed), decoded on a
worker thread, then queued on the data plane's batcher; the handler awaits the batcher's Future. While the server
drains, a request's body is read before its 503 is sent. /v1 bodies (JSON, raw tensors with X-Shape/X-Dtype,
.npy) are decoded here: /v1 is HTTP only. This module imports the data plane, never the gRPC front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from sai.errors import SaiError
from sai.runtime import kserve
from sai.runtime.engine import Engine, ProfileError, check_profile
from sai.runtime.kserve import HEADER_LENGTH, HTTPError
from sai.runtime.serve_dataplane import DataPlane, internal_error

JSON = "application/json"
INFER_PATHS = ("/v1/infer", "/infer")
V1_DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8")
MAX_HEADER_BYTES = 64 << 10  # a request head (request line + headers) beyond this gets 431 and the connection closes
BODY_TIMEOUT_S = 30.0  # a request body must arrive within this (408 otherwise): stalled uploads hold no connection
TRIM_AFTER_BYTES = 32 << 20  # bodies read since the last heap trim (see HttpFrontEnd.bodies_done)
CLOSE_AFTER = (408, 411, 413)
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"()]+/)+([^\s/'\"()]+)")  # /a/b/c.onnx -> c.onnx (also in a note)  # the connection is out of step (or stalled): answer and close
DISCARD_BYTES = 256 << 20
INLINE_OUTPUT_BYTES = 16 << 10


HEADER_431 = json.dumps({"error": "request header fields too large"}).encode()
LINGER_S = 1.0  # after a 431, input is read and dropped this long before the close (so the client sees the 431)


def protocol_class(idle_timeout: float, max_header_bytes: int = MAX_HEADER_BYTES, on_refused=None):
    """uvicorn's httptools protocol (h11 where httptools is missing: its own head limit applies) with the two
    things uvicorn has no setting for (docs/design.md, "sai serve"): it closes a connection which has not sent a
    whole request head within ``idle_timeout`` seconds of opening or of its last response (uvicorn's keep-alive
    timer starts only after a response and stops at the first byte, so slow-header clients would hold sockets),
    and it answers a head still arriving past ``max_header_bytes`` with 431 and closes the connection (httptools
    buffers a head of any size; ``h11_max_incomplete_event_size`` binds h11 only). A head that arrives whole is
    measured by the app (``head_size``), not here."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
        counted = True
    except ImportError:  # pragma: no cover
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base
        counted = False  # h11 has no head callbacks; uvicorn's h11_max_incomplete_event_size bounds the head

    class Protocol(Base):
        _in_head = True  # the next bytes belong to a request head
        _head_bytes = 0
        _refused = False
        _heads = 0  # request heads completed on this connection

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_idle()

        def data_received(self, data: bytes) -> None:
            if self._refused:  # after a 431: dropped until the close
                return
            started_in_head, heads = self._in_head, self._heads
            super().data_received(data)
            if counted and self._in_head and started_in_head and self._heads == heads:  # a chunk wholly inside one head (a
                self._head_bytes += len(data)  # lower bound: a chunk that ends a head or a body and starts the
                #                                next head is not counted)
                if self._head_bytes > max_header_bytes:
                    self._refuse_head()

        def _refuse_head(self) -> None:
            self._refused = True
            if on_refused is not None:
                on_refused()
            if self.cycle is not None and not self.cycle.response_complete:  # a pipelined request still answers:
                self.transport.close()  # no 431 in the middle of its response
                return
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: " + str(len(HEADER_431)).encode() + b"\r\n\r\n"
                                 + HEADER_431)
            self.loop.call_later(LINGER_S, self.transport.close)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_headers_complete(self) -> None:  # bookkeeping only: a whole head's size is the app's check
            self._in_head = False
            self._heads += 1
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True
            self._head_bytes = 0

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_idle()

        def _arm_idle(self) -> None:
            self.loop.call_later(idle_timeout, self._idle_check, self.cycle)

        def _idle_check(self, cycle) -> None:
            if self.cycle is cycle and (cycle is None or cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return Protocol


async def _refuse_431(scope, receive, send) -> None:
    """The answer to a request whose head is over the limit (the connection closes after it)."""
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", b"application/json"), (b"connection", b"close"),
        (b"content-length", str(len(HEADER_431)).encode())]})
    await send({"type": "http.response.body", "body": HEADER_431})


def _json(status: int, doc, headers: Optional[dict] = None) -> Response:
    return Response(json.dumps(doc).encode(), status, headers=headers, media_type=JSON)


def _v2_error(exc: HTTPError) -> Response:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return Response(kserve.error_body(str(exc)), exc.status, headers=headers, media_type=JSON)


def _v1_error(exc: HTTPError, close: bool = False) -> Response:
    headers = {"Retry-After": "1"} if exc.status == 503 else {}
    if close:
        headers["Connection"] = "close"
    return Response(json.dumps({"error": str(exc), "status": exc.status}).encode(), exc.status, headers=headers,
                    media_type=JSON)


CLIENT_GONE = 499  # nginx's "client closed request": counted as a CANCELED failure, never answered or logged


async def _read_body(front: HttpFrontEnd, request: Request) -> bytes:
    """The body within ``front.max_body_bytes``; 411 without a length or chunked framing, 413 above it, 408 when
    it has not all arrived within ``front.body_timeout`` seconds, 499 when the client went away."""
    limit = front.max_body_bytes
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if length is None and not chunked:
        raise HTTPError(411, "Content-Length is required")
    declared = int(length) if length is not None else None  # the parser has checked it is a non-negative int
    if declared is not None and declared > limit:
        if declared <= max(DISCARD_BYTES, 16 * limit):
            await _discard_body(front, request)
        raise HTTPError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    async with _body_deadline(front):
        async for chunk in request.stream():
            total += len(chunk)
            front.body_bytes += len(chunk)
            if total > limit:
                raise HTTPError(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    body = b"".join(chunks)
    return decompress(body, request.headers.get("content-encoding"), limit)


async def _discard_body(front: HttpFrontEnd, request: Request) -> None:
    """Read and drop a request's body (up to DISCARD_BYTES, streamed: no memory), so the client reads the answer,
    not a reset; beyond that the connection is closed after the answer. Bounded by ``front.body_timeout``."""
    total = 0
    async with _body_deadline(front):
        async for chunk in request.stream():
            total += len(chunk)
            if total > max(DISCARD_BYTES, 16 * front.max_body_bytes):
                break


@contextlib.asynccontextmanager
async def _body_deadline(front: HttpFrontEnd):
    """The time a body may take: ``front.body_timeout`` (408 after it), cut short by a drain (``stop`` moves every
    pending deadline to just before its own bound: 503, and the drain ends in time). A client that disconnects
    mid-upload (starlette's ClientDisconnect) is a 499: counted, never a logged traceback."""
    loop = asyncio.get_running_loop()
    front.loop = loop
    when = loop.time() + front.body_timeout
    if front.body_cutoff is not None:
        when = min(when, front.body_cutoff)
    try:
        async with asyncio.timeout_at(when) as deadline:
            front.body_reads.add(deadline)
            try:
                yield
            finally:
                front.body_reads.discard(deadline)
                if not front.body_reads:
                    front.bodies_done()
    except ClientDisconnect:
        raise HTTPError(CLIENT_GONE, "the client disconnected before its request body arrived") from None
    except TimeoutError:
        if front.draining:
            raise HTTPError(503, "server is shutting down; the request body did not arrive before the drain "
                                 "ended; retry") from None
        raise HTTPError(408, f"the request body did not arrive within {front.body_timeout:g} s") from None


async def _encode(front: HttpFrontEnd, fn, outs, *args):
    """Small outputs (a classifier's logits) are encoded on the loop, saving a thread hop; large ones on a thread."""
    if sum(v.nbytes for v in outs.values()) <= INLINE_OUTPUT_BYTES:
        return fn(*args)
    return await _in_thread(front, fn, *args)


async def _in_thread(front: HttpFrontEnd, fn, *args):
    """Decoding and checks run on the server's worker threads (a plain executor, lighter than anyio's): the event
    loop only moves bytes, so it keeps answering /healthz under any body, and requests are decoded in parallel
    (serve_bench: decoding on the loop formed smaller dynamic batches and gave less throughput)."""
    return await asyncio.get_running_loop().run_in_executor(front.decode_pool, fn, *args)


class HttpFrontEnd:
    """The HTTP front end of one ``DataPlane``: the ASGI app on a uvicorn server in its own thread, and what only
    HTTP has (request heads, bodies being read and their deadlines, the decoding threads)."""

    def __init__(self, plane: DataPlane, *, idle_timeout: float = 5.0, max_header_bytes: int = MAX_HEADER_BYTES,
                 body_timeout: float = BODY_TIMEOUT_S, drain_timeout: float = 25.0):
        self.plane = plane
        self.idle_timeout = float(idle_timeout)
        self.max_header_bytes = max(1024, int(max_header_bytes))
        self.body_timeout = float(body_timeout)
        self.drain_timeout = float(drain_timeout)
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # the HTTP loop (set by the first body read)
        self.body_reads: set = set()  # the asyncio.Timeout of every body being read (loop thread only)
        self.body_cutoff: Optional[float] = None  # loop time by which body reads end once the drain began
        self.body_bytes = 0  # bytes of bodies read since the heap was last trimmed (loop thread only)
        self.decode_pool = ThreadPoolExecutor(8, thread_name_prefix="sai-decode")  # request decoding
        self._uvicorn = None
        self._thread: Optional[threading.Thread] = None

    @property
    def max_body_bytes(self) -> int:
        return self.plane.max_body_bytes

    @property
    def draining(self) -> bool:
        return self.plane.draining

    def start(self, sock, url: str) -> None:
        """Serve on the listening socket ``sock`` (returns once uvicorn has started)."""
        import uvicorn

        config = uvicorn.Config(make_app(self), log_level="warning", access_log=False, lifespan="off",
                                http=protocol_class(self.idle_timeout, self.max_header_bytes, self.header_refused),
                                timeout_keep_alive=max(1, round(self.idle_timeout)), server_header=False,
                                timeout_graceful_shutdown=self.drain_timeout,
                                h11_max_incomplete_event_size=self.max_header_bytes)
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]}, name="sai-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._uvicorn.started:
            raise SaiError(f"the HTTP server on {url} did not start")

    def stop(self, seconds: float) -> None:
        """Stop accepting and close, waiting at most ``seconds`` for open requests (uvicorn's own graceful wait)."""
        if self._uvicorn is not None:
            self._uvicorn.config.timeout_graceful_shutdown = max(0.1, seconds)
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(max(1.0, seconds) + 1.0)
        self.decode_pool.shutdown(wait=False)

    def cut_body_reads(self, seconds: float) -> None:
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

    def header_refused(self) -> None:
        """A request head over ``max_header_bytes`` (answered 431, the connection closes)."""
        self.plane.metrics.request("header", 431)


def head_size(scope) -> int:
    """A request head's size as received: the target (path and query) and each header line."""
    query = scope.get("query_string") or b""
    return len(scope.get("raw_path") or b"") + (len(query) + 1 if query else 0) + \
        sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))


def make_app(front: HttpFrontEnd):
    """The ASGI app: the routes over ``front.plane``, behind the head-size check."""
    plane = front.plane
    metrics = plane.metrics

    def ready() -> bool:
        return plane.is_ready()

    # -- sai's own endpoints -----------------------------------------------------------------------
    async def healthz(request: Request) -> Response:
        metrics.request("/healthz", 200)
        return Response(b'{"status":"ok"}', 200, media_type=JSON)

    async def readyz(request: Request) -> Response:
        ok = ready()
        metrics.request("/readyz", 200 if ok else 503)
        return _json(200 if ok else 503, {"ready": ok})

    async def metrics_page(request: Request) -> Response:
        metrics.request("/metrics", 200)
        return Response(metrics.render(), 200, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def v1_model(request: Request) -> Response:
        metrics.request("/v1/model", 200)
        info = public_description(plane.engine.describe())
        info.update(max_batch=plane.max_batch, max_queue=plane.batcher.max_queue, model_name=plane.model_name,
                    model_version=plane.model_version)
        return _json(200, info)

    async def v1_infer(request: Request) -> Response:
        t0 = time.perf_counter()
        with metrics.lock:
            metrics.inflight += 1
        close = False
        try:
            try:
                try:
                    plane.refuse_v1()
                    check_declared_v1(request.headers, plane.engine, plane.max_batch)
                except HTTPError:
                    close = True  # the body is dropped unread (or only partly): answer, then close
                    await _discard_body(front, request)
                    raise
                body = await _read_body(front, request)
            except HTTPError as exc:
                close = close or exc.status in CLOSE_AFTER
                raise
            ctype = request.headers.get("content-type", JSON)
            binary = not ctype.lower().startswith(JSON)

            def decode():
                feeds = decode_request(ctype, request.headers, body, plane.engine, plane.max_batch)
                return plane.check(feeds, strict_dtype=binary)

            with plane.admitted():
                feeds = await _in_thread(front, decode)
                fut = plane.submit(feeds)
            outs = await await_result(plane, fut)
            resp = await _encode(front, _v1_response, outs, request, ctype, binary, outs)
            status = 200
        except HTTPError as exc:
            resp, status = _v1_error(exc, close or plane.draining), exc.status
        except Exception as exc:  # a bug: a 500 naming it, counted as a failure, one log line
            resp, status = _v1_error(internal_error(exc, "/v1/infer"), True), 500
        finally:
            with metrics.lock:
                metrics.inflight -= 1
        metrics.inference_request("/v1/infer", status, time.perf_counter() - t0)
        return resp

    def _v1_response(request: Request, ctype: str, binary: bool, outs) -> Response:
        accept = request.headers.get("accept", "")
        if binary and JSON not in accept:
            name = request.headers.get("x-output") or next(iter(outs))
            if name not in outs:
                raise HTTPError(400, f"X-Output {name[:60]!r} is not an output; outputs: {', '.join(outs)}")
            arr = np.ascontiguousarray(outs[name])
            if ctype.lower().startswith(("application/x-npy", "application/npy")):
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                return Response(buf.getvalue(), 200, headers={"X-Output-Name": name}, media_type="application/x-npy")
            return Response(arr.tobytes(), 200, media_type="application/octet-stream", headers={
                "X-Output-Name": name, "X-Shape": ",".join(map(str, arr.shape)), "X-Dtype": arr.dtype.name})
        return Response(_v1_json(outs), 200, media_type=JSON)

    async def v1_not_found(request: Request) -> Response:
        metrics.request("other", 404)
        return _v1_error(HTTPError(404, f"no such path {request.url.path[:100]}; POST to /v1/infer, or use the v2 "
                                        "API under /v2"), close=request.method == "POST")

    # -- KServe v2 ---------------------------------------------------------------------------------
    async def v2_live(request: Request) -> Response:
        metrics.request("/v2/health/live", 200)
        return _json(200, {"live": True})

    async def v2_ready(request: Request) -> Response:
        ok = ready()
        metrics.request("/v2/health/ready", 200 if ok else 400)
        return _json(200 if ok else 400, {"ready": ok})

    async def v2_server(request: Request) -> Response:
        metrics.request("/v2", 200)
        return _json(200, plane.server_metadata())

    def _model(request: Request, path: str) -> None:
        try:
            plane.check_model(request.path_params["name"], request.path_params.get("version"))
        except HTTPError:
            metrics.request(path, 404)
            raise

    def model_route(path: str, answer):
        """A GET of one model's resource: 404 (counted under ``path``) for an unknown model or version, else
        ``answer()`` -> ``(status, document)``."""
        async def handler(request: Request) -> Response:
            try:
                _model(request, path)
            except HTTPError as exc:
                return _v2_error(exc)
            status, doc = answer()
            metrics.request(path, status)
            return _json(status, doc)

        return handler

    v2_model = model_route("/v2/models", lambda: (200, plane.metadata()))
    def model_ready():
        ok = ready()
        return 200 if ok else 400, {"name": plane.model_name, "ready": ok}

    v2_model_ready = model_route("/v2/models/ready", model_ready)
    v2_model_config = model_route("/v2/models/config", lambda: (200, plane.config()))
    v2_model_stats = model_route("/v2/models/stats", lambda: (200, {"model_stats": [plane.statistics()]}))

    async def v2_all_stats(request: Request) -> Response:  # every model's (this server has one)
        metrics.request("/v2/models/stats", 200)
        return _json(200, {"model_stats": [plane.statistics()]})

    async def v2_infer(request: Request) -> Response:
        t0 = time.perf_counter()
        with metrics.lock:
            metrics.inflight += 1
        counted = False
        try:
            _model(request, "/v2/infer")
            counted = True
            body = await _read_body(front, request)

            def decode():
                doc, tail = kserve.split_http_body(body, request.headers.get(HEADER_LENGTH.lower()))
                return plane.infer_v2(doc, tail)

            with plane.admitted():
                req, fut = await _in_thread(front, decode)
            outs = plane.outputs(req, await await_result(plane, fut))
            payload, header_len = await _encode(front, kserve.encode_infer_response, outs, plane.model_name,
                                                plane.model_version, req, outs, plane.labels)
            if header_len is None:
                resp = Response(payload, 200, media_type=JSON)
            else:
                resp = Response(payload, 200, media_type="application/octet-stream",
                                headers={HEADER_LENGTH: str(header_len)})
            status = 200
        except HTTPError as exc:
            resp, status = _v2_error(exc), exc.status
            if plane.draining or status in CLOSE_AFTER:
                resp.headers["Connection"] = "close"
        except Exception as exc:  # a bug: a 500 naming it, counted as a failure, one log line
            resp, status = _v2_error(internal_error(exc, "/v2/infer")), 500
            resp.headers["Connection"] = "close"
        finally:
            with metrics.lock:
                metrics.inflight -= 1
        if counted:
            metrics.inference_request("/v2/infer", status, time.perf_counter() - t0)
        return resp

    async def v2_not_found(request: Request) -> Response:
        metrics.request("other", 404)
        return _v2_error(HTTPError(404, f"no such v2 endpoint {request.method} {request.url.path[:100]}"))

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]), Route("/v1/model", v1_model, methods=["GET"]),
        *[Route(p, v1_infer, methods=["POST"]) for p in INFER_PATHS],
        Route("/v2", v2_server, methods=["GET"]),
        Route("/v2/health/live", v2_live, methods=["GET"]), Route("/v2/health/ready", v2_ready, methods=["GET"]),
        Route("/v2/models/stats", v2_all_stats, methods=["GET"]),  # before /v2/models/{name}
    ]
    for base in (model, version):
        routes += [Route(base, v2_model, methods=["GET"]), Route(base + "/ready", v2_model_ready, methods=["GET"]),
                   Route(base + "/config", v2_model_config, methods=["GET"]),
                   Route(base + "/stats", v2_model_stats, methods=["GET"]),
                   Route(base + "/infer", v2_infer, methods=["POST"])]
    routes += [Route("/v2/{rest:path}", v2_not_found, methods=["GET", "POST", "PUT", "DELETE"]),
               Route("/{rest:path}", v1_not_found, methods=["GET", "POST", "PUT", "DELETE", "HEAD"])]
    app = Starlette(routes=routes)

    async def asgi(scope, receive, send) -> None:
        if scope["type"] == "http" and head_size(scope) > front.max_header_bytes:  # a head that arrived whole
            front.header_refused()
            await _refuse_431(scope, receive, send)
            return
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if not plane.draining:
                raise
            # cut off at the end of the drain bound (stop() says so once): a 503 where no answer began, no traceback
            with contextlib.suppress(Exception):
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"application/json"), (b"connection", b"close"), (b"retry-after", b"1")]})
                await send({"type": "http.response.body", "body": kserve.error_body("server is shutting down")})

    return asgi


def public_description(info: dict) -> dict:
    """``engine.describe()`` for clients: file paths (the model's, a custom-op library's) by their base name
    only, so /v1/model does not expose the server's file system."""
    def scrub(v):
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [scrub(x) for x in v]
        if isinstance(v, str):
            return _ABS_PATH.sub(r"\1", v)
        return v

    return scrub(info)


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
        if dtype_h not in V1_DTYPES:
            raise HTTPError(400, f"X-Dtype {dtype_h[:20]!r} is not supported; use one of {', '.join(V1_DTYPES)}")
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
            raise HTTPError(400, f"request batch {kserve.count_text(shape[0])} exceeds the server's --max-batch "
                                 f"{max_batch} (accepted: batch 1-{max_batch}); split it")
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
    """Before the body is read: a raw tensor's X-Shape against --max-batch and the engine profile (400)."""
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
        raise HTTPError(400, f"request batch {kserve.count_text(shape[0])} exceeds the server's --max-batch "
                             f"{max_batch} (accepted: batch 1-{max_batch}); split it")
    if headers.get("X-Dtype", "float32") == np.dtype(engine.primary_input.dtype).name:
        try:
            check_profile(engine.primary_input.name, shape, engine.min_shape, engine.max_shape)
        except ProfileError as exc:
            raise HTTPError(400, str(exc)) from None



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


async def await_result(plane: DataPlane, fut: Future) -> dict[str, np.ndarray]:
    """The batcher's result; 504 after ``request_timeout`` (the request is cancelled, so it never runs late).
    A timer instead of ``asyncio.wait_for``: no extra task per request."""
    loop = asyncio.get_running_loop()
    waiter = asyncio.wrap_future(fut, loop=loop)
    timed_out = []

    def expire():
        timed_out.append(True)
        waiter.cancel()

    timer = loop.call_later(plane.request_timeout, expire)
    try:
        return await waiter
    except asyncio.CancelledError:
        if timed_out:
            raise HTTPError(504, f"inference did not finish within {plane.request_timeout:g} s") from None
        raise
    except Exception as exc:
        raise plane.engine_error(exc) from None
    finally:
        timer.cancel()



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
