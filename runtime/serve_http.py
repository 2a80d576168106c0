"""The HTTP front end of `sai serve`: a starlette app (KServe v2 + sai's /v1) and the uvicorn protocol it runs on.

Bodies are read with a limit (413 naming it; a moderately oversized body is read and dropped so the client sees
the answer and the connection stays in step, a huge one is answered and the connection closed), decoded on a
worker thread, then queued on the server's batcher; the handler awaits the batcher's Future. While the server drains, a request's body is read before its 503 is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Optional

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from sai.runtime import kserve
from sai.runtime.kserve import HEADER_LENGTH, HTTPError
from sai.runtime.serve import (
    INFER_PATHS,
    SERVER_NAME,
    InferenceServer,
    _v1_json,
    await_result,
    check_declared_v1,
    check_request,
    decode_request,
    decompress,
    internal_error,
)

JSON = "application/json"
CLOSE_AFTER = (408, 411, 413)
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"()]+/)+([^\s/'\"()]+)")  # /a/b/c.onnx -> c.onnx (also in a note)  # the connection is out of step (or stalled): answer and close
DISCARD_BYTES = 256 << 20
INLINE_OUTPUT_BYTES = 16 << 10


HEADER_431 = json.dumps({"error": "request header fields too large"}).encode()
LINGER_S = 1.0  # after a 431, input is read and dropped this long before the close (so the client sees the 431)


def protocol_class(idle_timeout: float, max_header_bytes: int = 64 << 10, on_refused=None):
    """uvicorn's httptools protocol (h11 where httptools is missing: its own head limit applies) that also
    closes a connection which has not sent a whole request head within ``idle_timeout`` seconds of opening or
    of its last response (idle clients and slow-header clients hold no thread, and now no socket for long
    either), and answers a request head over ``max_header_bytes`` with 431 and closes the connection (httptools
    itself buffers a header of any size)."""
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

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._heads += 1
            self._head_bytes = 0
            size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            if size <= max_header_bytes:
                super().on_headers_complete()
                return
            if on_refused is not None:  # a head that arrived whole: answered 431 (by the app below) and closed
                on_refused()
            app, self.app = self.app, _refuse_431
            try:
                super().on_headers_complete()
            finally:
                self.app = app

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
    """The ASGI app a request whose head is over the limit gets instead of the server's."""
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


async def _read_body(server: InferenceServer, request: Request) -> bytes:
    """The body within ``server.max_body_bytes``; 411 without a length or chunked framing, 413 above it, 408 when
    it has not all arrived within ``server.body_timeout`` seconds, 499 when the client went away."""
    limit = server.max_body_bytes
    length = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if length is None and not chunked:
        raise HTTPError(411, "Content-Length is required")
    declared = int(length) if length is not None else None  # the parser has checked it is a non-negative int
    if declared is not None and declared > limit:
        if declared <= max(DISCARD_BYTES, 16 * limit):
            await _discard_body(server, request)
        raise HTTPError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    async with _body_deadline(server):
        async for chunk in request.stream():
            total += len(chunk)
            server.body_bytes += len(chunk)
            if total > limit:
                raise HTTPError(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    body = b"".join(chunks)
    return decompress(body, request.headers.get("content-encoding"), limit)


async def _discard_body(server: InferenceServer, request: Request) -> None:
    """Read and drop a request's body (up to DISCARD_BYTES, streamed: no memory), so the client reads the answer,
    not a reset; beyond that the connection is closed after the answer. Bounded by ``server.body_timeout``."""
    total = 0
    async with _body_deadline(server):
        async for chunk in request.stream():
            total += len(chunk)
            if total > max(DISCARD_BYTES, 16 * server.max_body_bytes):
                break


@contextlib.asynccontextmanager
async def _body_deadline(server: InferenceServer):
    """The time a body may take: ``server.body_timeout`` (408 after it), cut short by a drain (``stop`` moves every
    pending deadline to just before its own bound: 503, and the drain ends in time). A client that disconnects
    mid-upload (starlette's ClientDisconnect) is a 499: counted, never a logged traceback."""
    loop = asyncio.get_running_loop()
    server.loop = loop
    when = loop.time() + server.body_timeout
    if server.body_cutoff is not None:
        when = min(when, server.body_cutoff)
    try:
        async with asyncio.timeout_at(when) as deadline:
            server.body_reads.add(deadline)
            try:
                yield
            finally:
                server.body_reads.discard(deadline)
                if not server.body_reads:
                    server.bodies_done()
    except ClientDisconnect:
        raise HTTPError(CLIENT_GONE, "the client disconnected before its request body arrived") from None
    except TimeoutError:
        if server.draining:
            raise HTTPError(503, "server is shutting down; the request body did not arrive before the drain "
                                 "ended; retry") from None
        raise HTTPError(408, f"the request body did not arrive within {server.body_timeout:g} s") from None


async def _encode(server: InferenceServer, fn, outs, *args):
    """Small outputs (a classifier's logits) are encoded on the loop, saving a thread hop; large ones on a thread."""
    if sum(v.nbytes for v in outs.values()) <= INLINE_OUTPUT_BYTES:
        return fn(*args)
    return await _in_thread(server, fn, *args)


async def _in_thread(server: InferenceServer, fn, *args):
    """Decoding and checks run on the server's worker threads (a plain executor, lighter than anyio's): the event
    loop only moves bytes, so it keeps answering /healthz under any body, and requests are decoded in parallel
    (serve_bench: decoding on the loop formed smaller dynamic batches and gave less throughput)."""
    return await asyncio.get_running_loop().run_in_executor(server.decode_pool, fn, *args)


def make_app(server: InferenceServer):
    metrics = server.metrics

    def ready() -> bool:
        return server.ready.is_set() and not server.draining

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
        return Response(metrics.render().encode(), 200, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def v1_model(request: Request) -> Response:
        metrics.request("/v1/model", 200)
        info = public_description(server.engine.describe())
        info.update(max_batch=server.max_batch, max_queue=server.batcher.max_queue, model_name=server.model_name,
                    model_version=server.model_version)
        return _json(200, info)

    async def v1_infer(request: Request) -> Response:
        t0 = time.perf_counter()
        with metrics.lock:
            metrics.inflight += 1
        close = False
        try:
            try:
                try:
                    check_declared_v1(request.headers, server.engine, server.max_batch)
                except HTTPError:
                    await _discard_body(server, request)
                    raise
                body = await _read_body(server, request)
            except HTTPError as exc:
                close = exc.status in CLOSE_AFTER
                raise
            ctype = request.headers.get("content-type", JSON)
            binary = not ctype.lower().startswith(JSON)

            def decode():
                feeds = decode_request(ctype, request.headers, body, server.engine, server.max_batch)
                return check_request(feeds, server.engine, server.max_batch, strict_dtype=binary)

            with server.admitted():
                feeds = await _in_thread(server, decode)
                fut = server.submit(feeds)
            outs = await await_result(server, fut)
            resp = await _encode(server, _v1_response, outs, request, ctype, binary, outs)
            status = 200
        except HTTPError as exc:
            resp, status = _v1_error(exc, close or server.draining), exc.status
        except Exception as exc:  # a bug: a 500 naming it, counted as a failure, one log line
            resp, status = _v1_error(internal_error(exc, "/v1/infer"), True), 500
        finally:
            with metrics.lock:
                metrics.inflight -= 1
        metrics.inference_request("/v1/infer", status, time.perf_counter() - t0)
        return resp

    def _v1_response(request: Request, ctype: str, binary: bool, outs) -> Response:
        import io

        import numpy as np

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
        from sai import __version__

        metrics.request("/v2", 200)
        return _json(200, {"name": SERVER_NAME, "version": __version__, "extensions": list(kserve.PROTOCOL_EXTENSIONS)})

    def _model(request: Request, path: str) -> None:
        try:
            server.check_model(request.path_params["name"], request.path_params.get("version"))
        except HTTPError:
            metrics.request(path, 404)
            raise

    async def v2_model(request: Request) -> Response:
        try:
            _model(request, "/v2/models")
        except HTTPError as exc:
            return _v2_error(exc)
        metrics.request("/v2/models", 200)
        return _json(200, kserve.model_metadata(server.engine, server.model_name, server.model_version))

    async def v2_model_ready(request: Request) -> Response:
        try:
            _model(request, "/v2/models/ready")
        except HTTPError as exc:
            return _v2_error(exc)
        ok = ready()
        metrics.request("/v2/models/ready", 200 if ok else 400)
        return _json(200 if ok else 400, {"name": server.model_name, "ready": ok})

    async def v2_model_config(request: Request) -> Response:
        try:
            _model(request, "/v2/models/config")
        except HTTPError as exc:
            return _v2_error(exc)
        metrics.request("/v2/models/config", 200)
        return _json(200, kserve.model_config(server.engine, server.model_name, server.max_batch))

    async def v2_model_stats(request: Request) -> Response:
        try:
            _model(request, "/v2/models/stats")
        except HTTPError as exc:
            return _v2_error(exc)
        metrics.request("/v2/models/stats", 200)
        return _json(200, {"model_stats": [metrics.statistics()]})

    async def v2_all_stats(request: Request) -> Response:  # every model's (this server has one)
        metrics.request("/v2/models/stats", 200)
        return _json(200, {"model_stats": [metrics.statistics()]})

    async def v2_infer(request: Request) -> Response:
        t0 = time.perf_counter()
        with metrics.lock:
            metrics.inflight += 1
        counted = False
        try:
            _model(request, "/v2/infer")
            counted = True
            body = await _read_body(server, request)

            def decode():
                doc, tail = kserve.split_http_body(body, request.headers.get(HEADER_LENGTH.lower()))
                return server.infer_v2(doc, tail)

            with server.admitted():
                req, fut = await _in_thread(server, decode)
            outs = await await_result(server, fut)
            payload, header_len = await _encode(server, kserve.encode_infer_response, outs, server.model_name,
                                                server.model_version, req, outs, server.labels)
            if header_len is None:
                resp = Response(payload, 200, media_type=JSON)
            else:
                resp = Response(payload, 200, media_type="application/octet-stream",
                                headers={HEADER_LENGTH: str(header_len)})
            status = 200
        except HTTPError as exc:
            resp, status = _v2_error(exc), exc.status
            if server.draining or status in CLOSE_AFTER:
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
        try:
            await app(scope, receive, send)
        except asyncio.CancelledError:
            if not server.draining:
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

