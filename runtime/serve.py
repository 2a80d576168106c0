"""Inference server: the Open Inference Protocol (KServe v2) over HTTP and gRPC, plus sai's own /v1 API.

HTTP is an ASGI app (starlette) on uvicorn (httptools parser, uvloop where installed), run on its own event
loop thread: no thread per connection, an idle timeout for connections that send nothing, a listen backlog
of 2048, and a parser that answers malformed framing (``Content-Length: -1``) with 400. Hostile clients: a
request head over ``max_header_bytes`` gets 431 (never buffered), a body must arrive within ``body_timeout``
(408), a client gone mid-upload is a counted 499 (no traceback), and ``stop`` ends within ``drain_timeout``
(stalled uploads get 503 just before it). gRPC is grpcio's
server with the ``GRPCInferenceService`` of ``sai.runtime.serve_grpc`` (ModelStreamInfer included).

Layout (KServe's): ``sai.runtime.serve_dataplane.DataPlane`` is the model, its batcher, the shared checks and the
metrics; ``serve_http`` and ``serve_grpc`` are front ends that import the data plane and never each other; this
module is the server process around them: ``InferenceServer`` is a data plane with its sockets and front ends,
their start and their bounded drain.

Endpoints: ``/v2/health/{live,ready}``, ``/v2``, ``/v2/models/{name}[/versions/{v}]`` (metadata),
``.../ready``, ``.../config``, ``.../stats`` (and ``/v2/models/stats``), ``POST .../infer`` (JSON tensors or the binary tensor data
extension); ``POST /v1/infer`` (JSON, raw ``application/octet-stream`` with ``X-Shape``/``X-Dtype``, or
``application/x-npy``), ``GET /v1/model``, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text 0.0.4,
Triton's ``nv_inference_*`` names with ``model``/``version`` labels beside the ``sai_*`` ones).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

from sai.errors import SaiError
from sai.runtime.engine import Engine
from sai.runtime.kserve import HTTPError
from sai.runtime.serve_dataplane import DataPlane, QueueFull
from sai.runtime.serve_http import BODY_TIMEOUT_S, MAX_HEADER_BYTES, HttpFrontEnd

DRAIN_TIMEOUT_S = 25.0  # SIGTERM drain bound, below Kubernetes' default 30 s grace period

__all__ = ["HTTPError", "InferenceServer", "QueueFull", "serve_forever", "server_info"]


class InferenceServer(DataPlane):
    """``start()`` serves in background threads: HTTP on ``port`` (0: an ephemeral port, see ``.port``), gRPC on
    ``grpc_port`` (``.grpc_port``; None: no gRPC); ``stop()`` stops accepting, drains queued requests and closes.
    The model, batching and limits are the ``DataPlane``'s (its arguments)."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 8000, *, max_batch: int = 8,
                 max_delay_ms: float = 5.0, max_queue: int = 64, max_body_bytes: Optional[int] = None,
                 request_timeout: float = 60.0, grpc_port: Optional[int] = None, model_name: Optional[str] = None,
                 model_version: str = "1", idle_timeout: float = 5.0, backlog: int = 2048,
                 max_shape: Optional[Sequence[int]] = None, max_header_bytes: int = MAX_HEADER_BYTES,
                 body_timeout: float = BODY_TIMEOUT_S, drain_timeout: float = DRAIN_TIMEOUT_S):
        check_port(port, "port")
        if grpc_port is not None:
            check_port(grpc_port, "grpc_port")
        super().__init__(engine, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
                         max_body_bytes=max_body_bytes, request_timeout=request_timeout, model_name=model_name,
                         model_version=model_version, max_shape=max_shape)
        self.drain_timeout = float(drain_timeout)
        self.http = HttpFrontEnd(self, idle_timeout=idle_timeout, max_header_bytes=max_header_bytes,
                                 body_timeout=body_timeout, drain_timeout=self.drain_timeout)
        self.idle_timeout, self.max_header_bytes = self.http.idle_timeout, self.http.max_header_bytes
        self.body_timeout = self.http.body_timeout
        self.host = host
        self.sock = _listen(host, int(port), backlog)
        self.port = self.sock.getsockname()[1]
        self.grpc_port: Optional[int] = None
        self._grpc = None
        if grpc_port is not None:
            from sai.runtime.serve_grpc import make_grpc_server

            try:
                self._grpc, self.grpc_port = make_grpc_server(self, host, int(grpc_port))
            except BaseException:
                self.sock.close()
                raise
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> InferenceServer:
        self.batcher.start()
        self.http.start(self.sock, self.url)
        if self._grpc is not None:
            self._grpc.start()
        self.ready.set()
        return self

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Graceful: readiness turns false and new requests get 503; queued and running ones finish, within
        ``timeout`` seconds in all (default ``drain_timeout``; what is left then, e.g. uploads that stall, is cut
        off). True when everything finished within the bound."""
        if self._stopped:
            return True
        timeout = self.drain_timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout

        def left(floor: float = 0.0) -> float:
            return max(floor, deadline - time.monotonic())

        clean = self.begin_drain(left())  # requests that arrived before this are drained too
        self.http.cut_body_reads(left() - min(2.0, 0.25 * timeout))  # the rest: answers, close, process exit
        self.batcher.drain_and_stop(left())
        clean = clean and not self.batcher.thread.is_alive()
        while self.metrics.inflight and time.monotonic() < deadline:  # responses being written, bodies being read
            time.sleep(0.01)
        clean = clean and not self.metrics.inflight
        if self._grpc is not None:
            self._grpc.stop(grace=left()).wait(left(0.5))
        self.http.stop(left())  # its own wait for open requests is bounded by what is left of ours
        try:
            self.sock.close()
        except OSError:
            pass
        self._stopped = True
        return clean

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
