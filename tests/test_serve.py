"""sai serve over real HTTP on 127.0.0.1 (ephemeral ports), onnxruntime backend, tiny converted model.

References: the engine's direct ``infer`` (results), the HTTP status codes of the spec, the
Prometheus text format, the process's RSS. Every server is stopped by a fixture finalizer or a
``with`` block; every wait is bounded.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import sai.runtime as rt
from sai.benchmarks.procs import reap
from sai.runtime.serve import InferenceServer

TIMEOUT = 60


@pytest.fixture(scope="module")
def reference(outdir):
    """A second, independent engine for the expected results (verified, profile kept: overrides conftest's)."""
    with rt.load(outdir / "model.onnx", threads=1) as e:
        yield e


@pytest.fixture
def server(engine):
    srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=20, max_queue=64,
                          max_body_bytes=1 << 20).start()
    yield srv
    srv.stop(timeout=20)


def connect(srv) -> http.client.HTTPConnection:
    c = http.client.HTTPConnection(srv.host, srv.port, timeout=TIMEOUT)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # http.client sends headers and body apart
    return c


def request(srv, method, path, body=b"", headers=None, conn=None):
    c = conn or connect(srv)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, r.headers, data  # case-insensitive (header names arrive lower-case)
    finally:
        if conn is None:
            c.close()


def post_json(srv, x, conn=None):
    body = json.dumps({"inputs": {"input": x.tolist()}}).encode()
    return request(srv, "POST", "/v1/infer", body, {"Content-Type": "application/json"}, conn)


def _x(n=1, h=32, w=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def metrics(srv) -> dict[str, float]:
    status, headers, body = request(srv, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (-?[0-9.eE+-]+|\+Inf|NaN)', line)
        assert m, f"not Prometheus text format: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


# ---- results ---------------------------------------------------------------------------------


def test_json_raw_and_npy_bodies_equal_direct_inference(server, reference):
    x = _x(2, 32, 40, seed=1)
    ref = reference.infer(x)["logits"]
    status, _, body = post_json(server, x)
    assert status == 200
    doc = json.loads(body)
    assert doc["shapes"] == {"logits": [2, 10]} and doc["dtypes"] == {"logits": "float32"}
    np.testing.assert_allclose(np.array(doc["outputs"]["logits"], np.float32), ref, rtol=1e-5, atol=1e-5)

    status, headers, body = request(server, "POST", "/v1/infer", x.tobytes(), {
        "Content-Type": "application/octet-stream", "X-Shape": "2,3,32,40", "X-Dtype": "float32"})
    assert status == 200 and headers["X-Shape"] == "2,10" and headers["X-Output-Name"] == "logits"
    np.testing.assert_allclose(np.frombuffer(body, np.float32).reshape(2, 10), ref, rtol=1e-5, atol=1e-5)

    buf = io.BytesIO()
    np.save(buf, x)
    status, headers, body = request(server, "POST", "/v1/infer", buf.getvalue(), {"Content-Type": "application/x-npy"})
    assert status == 200 and headers["Content-Type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(body)), ref, rtol=1e-5, atol=1e-5)


def test_health_ready_model_endpoints(server):
    assert request(server, "GET", "/healthz")[0] == 200
    status, _, body = request(server, "GET", "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, _, body = request(server, "GET", "/v1/model")
    info = json.loads(body)
    assert status == 200 and info["backend"] == "onnxruntime" and info["inputs"][0]["name"] == "input"
    m = metrics(server)
    assert m['sai_requests_total{path="/healthz",status="200"}'] == 1
    assert "sai_queue_depth" in m and 'sai_batch_size_bucket{le="+Inf"}' in m


def test_dynamic_batching_observed_in_metrics(engine, reference):
    """Hold the engine on the first request, queue 15 more, release: the batcher must run them as
    batches of max-batch (8, then 7), concatenated along N, each result routed to its request."""
    n = 16
    xs = [_x(1, seed=100 + i) for i in range(n)]
    gated = Gated(engine)
    srv = InferenceServer(gated, "127.0.0.1", 0, max_batch=8, max_delay_ms=0, max_queue=64).start()
    pool = ThreadPoolExecutor(n)
    try:
        futs = [pool.submit(post_json, srv, xs[0])]
        assert gated.entered.wait(TIMEOUT)
        futs += [pool.submit(post_json, srv, x) for x in xs[1:]]
        for _ in range(4000):  # bounded poll until the other 15 wait in the queue
            if srv.metrics.queue_depth == n - 1:
                break
            threading.Event().wait(0.005)
        assert srv.metrics.queue_depth == n - 1
        gated.gate.set()
        results = [f.result(TIMEOUT) for f in futs]
        m = metrics(srv)
    finally:
        gated.gate.set()
        srv.stop(timeout=20)
        pool.shutdown(wait=True)
    for x, (status, _, body) in zip(xs, results, strict=True):
        assert status == 200
        np.testing.assert_allclose(np.array(json.loads(body)["outputs"]["logits"], np.float32),
                                   reference.infer(x)["logits"], rtol=1e-4, atol=1e-4)
    assert m["sai_batch_size_count"] == 3 and m["sai_batch_size_sum"] == n
    assert m['sai_batch_size_bucket{le="1"}'] == 1 and m['sai_batch_size_bucket{le="4"}'] == 1
    assert m['sai_batch_size_bucket{le="8"}'] == 3


class Gated:
    """The engine behind a gate: ``infer`` blocks until ``gate`` is set (to fill the queue on purpose)."""

    def __init__(self, engine):
        self._e, self.gate, self.entered = engine, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._e, name)

    def infer(self, feeds):
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        return self._e.infer(feeds)


def test_overload_burst_gets_503_then_queue_drains(engine):
    gated = Gated(engine)
    srv = InferenceServer(gated, "127.0.0.1", 0, max_batch=1, max_delay_ms=0, max_queue=2).start()
    pool = ThreadPoolExecutor(4)
    try:
        first = pool.submit(post_json, srv, _x(seed=1))
        assert gated.entered.wait(TIMEOUT)
        queued = [pool.submit(post_json, srv, _x(seed=2 + i)) for i in range(2)]
        for _ in range(2000):  # poll (bounded) until both wait in the queue
            if srv.metrics.queue_depth == 2:
                break
            threading.Event().wait(0.005)
        assert srv.metrics.queue_depth == 2
        burst = [post_json(srv, _x(seed=10 + i)) for i in range(5)]
        for status, headers, body in burst:
            assert status == 503 and headers["Retry-After"] == "1"
            assert "queue full" in json.loads(body)["error"]
        gated.gate.set()
        assert [f.result(TIMEOUT)[0] for f in [first, *queued]] == [200, 200, 200]
        m = metrics(srv)
        assert m['sai_requests_total{path="/v1/infer",status="503"}'] == 5
    finally:
        gated.gate.set()
        srv.stop(timeout=20)
        pool.shutdown(wait=True)


GOOD = _x(1, seed=7)
BAD_CASES = [
    ("malformed json", b"{not json", {"Content-Type": "application/json"}, 400, "malformed JSON"),
    ("no inputs key", b'{"x": 1}', {"Content-Type": "application/json"}, 400, "inputs"),
    ("ragged", b'{"inputs": [[1, 2], [3]]}', {"Content-Type": "application/json"}, 400, "rectangular"),
    ("wrong rank", json.dumps({"inputs": _x(1)[0].tolist()}).encode(), {"Content-Type": "application/json"}, 400,
     "shape"),
    ("wrong channels", _x(1)[:, :2].tobytes(), {"Content-Type": "application/octet-stream", "X-Shape": "1,2,32,32"},
     400, "expected"),
    ("wrong dtype", np.zeros((1, 3, 32, 32)).tobytes(), {"Content-Type": "application/octet-stream",
                                                          "X-Shape": "1,3,32,32", "X-Dtype": "float64"}, 400, "dtype"),
    ("byte count", b"\0" * 100, {"Content-Type": "application/octet-stream", "X-Shape": "1,3,32,32"}, 400, "bytes"),
    ("no shape header", GOOD.tobytes(), {"Content-Type": "application/octet-stream"}, 400, "X-Shape"),
    ("bad shape header", GOOD.tobytes(), {"Content-Type": "application/octet-stream", "X-Shape": "a,b"}, 400,
     "X-Shape"),
    ("unknown dtype", GOOD.tobytes(), {"Content-Type": "application/octet-stream", "X-Shape": "1,3,32,32",
                                       "X-Dtype": "complex64"}, 400, "X-Dtype"),
    ("content type", b"abc", {"Content-Type": "text/plain"}, 415, "Content-Type"),
    ("bad npy", b"\x93NUMPYgarbage", {"Content-Type": "application/x-npy"}, 400, ".npy"),
    ("nan", json.dumps({"inputs": np.full((1, 3, 32, 32), np.nan).tolist()}).replace("NaN", "NaN").encode(),
     {"Content-Type": "application/json"}, 400, "NaN"),
    ("too big batch", _x(9).tobytes(), {"Content-Type": "application/octet-stream", "X-Shape": "9,3,32,32"}, 400,
     "max-batch"),
    ("oversized", b"\0" * ((1 << 20) + 1), {"Content-Type": "application/octet-stream", "X-Shape": "1,3,32,32"},
     413, "exceeds the limit"),
    ("unknown input", json.dumps({"inputs": {"image": GOOD.tolist()}}).encode(), {"Content-Type": "application/json"},
     400, "unknown input"),
    ("wrong path", b"{}", {"Content-Type": "application/json"}, 404, "/v1/infer"),
]


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


PIXELS = np.random.default_rng(3).integers(0, 256, (1, 3, 32, 32)).astype(np.uint8)
DTYPE_MSG = "input 'input' has dtype {}, but the model takes float32"
BAD_CASES += [  # dtypes the model does not declare: 400 naming given/expected dtype and the fix, never a cast
    ("uint8 raw pixels", PIXELS.tobytes(), {"Content-Type": "application/octet-stream", "X-Shape": "1,3,32,32",
                                            "X-Dtype": "uint8"}, 400, DTYPE_MSG.format("uint8") + " (raw pixels"),
    ("uint8 npy", _npy(PIXELS), {"Content-Type": "application/x-npy"}, 400, "normalise it as the model's input_norm"),
    ("int64 npy", _npy(PIXELS.astype(np.int64)), {"Content-Type": "application/x-npy"}, 400, DTYPE_MSG.format("int64")),
    ("bool npy", _npy(PIXELS > 100), {"Content-Type": "application/x-npy"}, 400, DTYPE_MSG.format("bool")),
    ("json booleans", json.dumps({"inputs": (PIXELS > 100).tolist()}).encode(), {"Content-Type": "application/json"},
     400, "booleans"),
]


@pytest.mark.parametrize("name, body, headers, status, message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_request_4xx_and_server_keeps_serving(server, reference, name, body, headers, status, message):
    path = "/v1/nope" if name == "wrong path" else "/v1/infer"
    got, h, data = request(server, "POST", path, body, headers)
    assert got == status, data
    assert h["Content-Type"] == "application/json"
    err = json.loads(data)
    assert err["status"] == status and message in err["error"], err
    ok, _, data = post_json(server, GOOD)
    assert ok == 200
    np.testing.assert_allclose(np.array(json.loads(data)["outputs"]["logits"], np.float32),
                               reference.infer(GOOD)["logits"], rtol=1e-5, atol=1e-5)


def test_missing_content_length_is_411(server):
    c = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
    try:
        c.putrequest("POST", "/v1/infer")
        c.putheader("Content-Type", "application/json")
        c.endheaders()
        r = c.getresponse()
        assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]
    finally:
        c.close()
    assert post_json(server, GOOD)[0] == 200


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_soak_2000_requests_zero_errors_no_memory_growth(engine, reference):
    x = _x(1, seed=3)
    body = x.tobytes()
    headers = {"Content-Type": "application/octet-stream", "X-Shape": "1,3,32,32", "X-Dtype": "float32"}
    ref = reference.infer(x)["logits"]
    clients, per_client = 4, 500
    with InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=2, max_queue=64) as srv:

        def worker(count):
            conn = connect(srv)
            bad = 0
            try:
                for _ in range(count):
                    status, _, data = request(srv, "POST", "/v1/infer", body, headers, conn)
                    if status != 200 or not np.allclose(np.frombuffer(data, np.float32), ref.ravel(), atol=1e-5):
                        bad += 1
            finally:
                conn.close()
            return bad

        with ThreadPoolExecutor(clients) as pool:
            assert sum(pool.map(worker, [50] * clients)) == 0  # warm-up: allocator, buffers, threads
            rss0 = _rss_bytes()
            assert sum(pool.map(worker, [per_client] * clients)) == 0
            rss1 = _rss_bytes()
        m = metrics(srv)
    assert m['sai_requests_total{path="/v1/infer",status="200"}'] == clients * (50 + per_client)
    assert not any(k.startswith("sai_requests_total") and 'status="200"' not in k and "/v1/infer" in k for k in m)
    growth = rss1 - rss0
    print(f"soak: {clients * per_client} requests, RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB")
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over {clients * per_client} requests"


# ---- the CLI process: SIGTERM drains in-flight requests --------------------------------------


def test_cli_serve_sigterm_drains_inflight(outdir, reference):
    proc = subprocess.Popen(
        [sys.executable, "-m", "sai", "serve", str(outdir), "--backend", "onnxruntime", "--port", "0",
         "--max-batch", "8", "--max-delay-ms", "10000", "--threads", "1", "--grpc-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line

        class Srv:
            host, port = "127.0.0.1", int(m.group(1))

        xs = [_x(1, seed=20 + i) for i in range(3)]
        pool = ThreadPoolExecutor(3)
        futs = [pool.submit(post_json, Srv, x) for x in xs]
        for _ in range(2000):  # bounded poll until all three wait in the batcher's delay window
            if metrics(Srv).get("sai_inflight_requests") == 3:
                break
            threading.Event().wait(0.005)
        assert metrics(Srv)["sai_inflight_requests"] == 3
        proc.send_signal(signal.SIGTERM)
        for x, f in zip(xs, futs, strict=True):
            status, _, body = f.result(TIMEOUT)
            assert status == 200
            np.testing.assert_allclose(np.array(json.loads(body)["outputs"]["logits"], np.float32),
                                       reference.infer(x)["logits"], rtol=1e-4, atol=1e-4)
        pool.shutdown(wait=True)
        assert proc.wait(TIMEOUT) == 0
        assert "drained and stopped" in proc.stderr.read()
    finally:
        reap(proc)


def test_stochastic_model_noise_filled_from_seed(tmp_path):
    """A stochastic model served without noise in the requests: the server's engine draws it from its
    seed, so a direct engine with the same seed, fed the same request sequence, gives the same outputs."""
    from runtime_helpers import tiny_model

    from sai.models import save_checkpoint

    ck = save_checkpoint(tiny_model(), tmp_path / "m.pth")
    served = rt.load(ck, sampling="stochastic", seed=11)
    direct = rt.load(ck, sampling="stochastic", seed=11)
    assert len(served.noise_inputs) == 16
    try:
        with InferenceServer(served, "127.0.0.1", 0, max_batch=1, max_delay_ms=0, max_queue=4) as srv:
            info = json.loads(request(srv, "GET", "/v1/model")[2])
            assert info["sampling"] == "stochastic" and len(info["noise_inputs"]) == 16
            outs = []
            for i in range(3):
                status, _, body = post_json(srv, _x(1, 40, 40, seed=i))
                assert status == 200
                outs.append(np.array(json.loads(body)["outputs"]["logits"], np.float32))
        for i, got in enumerate(outs):
            np.testing.assert_allclose(got, direct.infer(_x(1, 40, 40, seed=i))["logits"], rtol=1e-5, atol=1e-5)
        assert not np.allclose(outs[0], direct.infer(_x(1, 40, 40, seed=0))["logits"], atol=1e-6)  # fresh noise
    finally:
        served.close()
        direct.close()
