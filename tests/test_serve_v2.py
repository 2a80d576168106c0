"""sai serve as a KServe v2 server, driven by the real tritonclient (HTTP and gRPC) on 127.0.0.1, plus the
faults of the old stdlib server (each as a test) and Triton's metric names.

References: a second, independent engine's ``infer`` (results), the Open Inference Protocol's status codes and
bodies, the Prometheus text format. Servers on ephemeral ports, stopped by fixtures; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import request

import sai.runtime as rt
from sai.benchmarks.procs import reap
from sai.runtime.engine import ProfileError
from sai.runtime.serve import InferenceServer

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TIMEOUT = 60
MODEL = "sparse_resnet18"


@pytest.fixture(scope="module")
def server(engine):
    srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=2, max_queue=64, max_body_bytes=1 << 20,
                          grpc_port=0).start()
    yield srv
    srv.stop(timeout=20)


@pytest.fixture
def http_client(server):
    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=TIMEOUT)
    yield c
    c.close()


@pytest.fixture
def grpc_client(server):
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()


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


def v2_json(x, name="input", **extra) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}], **extra}).encode()


# ---- the real tritonclient ---------------------------------------------------------------------


def test_tritonclient_http_health_metadata_and_infer(server, http_client, reference):
    c = http_client
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    assert c.is_model_ready(MODEL, "1") and not c.is_model_ready("nope")
    meta = c.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert c.get_server_metadata()["extensions"][0] == "binary_tensor_data"
    assert c.get_model_config(MODEL)["max_batch_size"] == 8
    x = _x(2, 32, 40, seed=1)
    ref = reference.infer(x)["logits"]
    for binary_in in (False, True):
        for binary_out in (False, True):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            out = httpclient.InferRequestedOutput("logits", binary_data=binary_out)
            res = c.infer(MODEL, [inp], outputs=[out], request_id=f"r-{binary_in}-{binary_out}")
            np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-5, atol=1e-5)
            resp = res.get_response()
            assert resp["id"] == f"r-{binary_in}-{binary_out}" and resp["model_name"] == MODEL
            assert resp["model_version"] == "1"
            assert ("parameters" in resp["outputs"][0]) == binary_out
    res = c.infer(MODEL, [inp], model_version="1")  # no outputs named: all of them
    np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-5, atol=1e-5)


def test_tritonclient_http_compressed_request(server, http_client, reference):
    x = _x(1, seed=2)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for algo in ("gzip", "deflate"):
        res = http_client.infer(MODEL, [inp], request_compression_algorithm=algo)
        np.testing.assert_allclose(res.as_numpy("logits"), reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)


def test_tritonclient_grpc_health_metadata_and_infer(server, grpc_client, reference):
    c = grpc_client
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    meta = c.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "3", "-1", "-1"]}]
    assert c.get_model_config(MODEL, as_json=True)["config"]["max_batch_size"] == 8
    x = _x(3, 33, 47, seed=4)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = c.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("logits")], request_id="g1")
    np.testing.assert_allclose(res.as_numpy("logits"), reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)
    assert res.get_response().id == "g1"
    stats = c.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    assert stats["name"] == MODEL and int(stats["inference_count"]) >= 3


@pytest.mark.parametrize("case, status", [
    ("unknown model", "StatusCode.NOT_FOUND"), ("unknown version", "StatusCode.NOT_FOUND"),
    ("wrong datatype", "StatusCode.INVALID_ARGUMENT"), ("size mismatch", "StatusCode.INVALID_ARGUMENT"),
    ("above profile", "StatusCode.INVALID_ARGUMENT"), ("unknown output", "StatusCode.INVALID_ARGUMENT"),
])
def test_grpc_bad_requests_get_codes_and_server_keeps_serving(server, grpc_client, reference, case, status):
    x = _x(1, seed=5)
    model, version, dt, arr, outputs = MODEL, "", "FP32", x, None
    if case == "unknown model":
        model = "resnet50"
    elif case == "unknown version":
        version = "7"
    elif case == "wrong datatype":
        dt, arr = "FP64", x.astype(np.float64)
    elif case == "above profile":
        arr = _x(1, 128, 32)
    elif case == "unknown output":
        outputs = [grpcclient.InferRequestedOutput("probs")]
    inp = grpcclient.InferInput("input", list(arr.shape), dt)
    inp.set_data_from_numpy(arr)
    if case == "size mismatch":
        inp.set_shape([1, 3, 32, 31])
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.infer(model, [inp], model_version=version, outputs=outputs)
    assert exc.value.status() == status, exc.value.message()
    if case == "above profile":
        assert "maximum [8, 3, 64, 64]" in exc.value.message()
    ok = grpcclient.InferInput("input", list(x.shape), "FP32")
    ok.set_data_from_numpy(x)
    np.testing.assert_allclose(grpc_client.infer(MODEL, [ok]).as_numpy("logits"), reference.infer(x)["logits"],
                               rtol=1e-5, atol=1e-5)


# ---- malformed v2 requests: the right 4xx, a v2 error body, and the server keeps serving ----------


GOOD = _x(1, seed=7)
BIN = GOOD.tobytes()


def _bin_request(inputs, blob: bytes, **extra):
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


V2_BAD = [
    ("malformed json", b"{not json", {}, 400, "malformed JSON"),
    ("not an object", b"[1, 2]", {}, 400, "JSON object"),
    ("no inputs", b'{"outputs": []}', {}, 400, '"inputs"'),
    ("wrong datatype", json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "INT32",
                                               "data": [0] * 3072}]}).encode(), {}, 400, "datatype INT32"),
    ("bytes datatype", json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                               "data": ["a"]}]}).encode(), {}, 400, "BYTES"),
    ("shape size mismatch", json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                                    "data": [0.0] * 100}]}).encode(), {}, 400, "100 values"),
    ("wrong rank", json.dumps({"inputs": [{"name": "input", "shape": [3, 32, 32], "datatype": "FP32",
                                           "data": [0.0] * 3072}]}).encode(), {}, 400, "rank 4"),
    ("shape not ints", json.dumps({"inputs": [{"name": "input", "shape": [1, "3", 32, 32], "datatype": "FP32",
                                               "data": []}]}).encode(), {}, 400, "list of integers"),
    ("strings in data", json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                                "data": ["a", "b", "c"]}]}).encode(), {}, 400, "strings"),
    ("missing input", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32",
                                              "data": [1.0]}]}).encode(), {}, 400, "unknown input 'image'"),
    ("no data", json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32],
                                        "datatype": "FP32"}]}).encode(), {}, 400, "neither data"),
    ("unknown output", v2_json(GOOD, outputs=[{"name": "probs"}]), {}, 400, "unknown output 'probs'"),
    ("nan input", v2_json(np.full((1, 3, 32, 32), np.nan, np.float32)), {}, 400, "NaN"),
    ("binary section too short", *_bin_request([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                                 "parameters": {"binary_data_size": len(BIN)}}], BIN[:-4]), 400,
     "runs past"),
    ("binary size vs shape", *_bin_request([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                             "parameters": {"binary_data_size": 100}}], BIN[:100]), 400, "needs 12288"),
    ("binary bytes left over", *_bin_request([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                               "parameters": {"binary_data_size": len(BIN)}}], BIN + b"x"), 400,
     "the inputs use"),
    ("header length beyond body", v2_json(GOOD), {"Inference-Header-Content-Length": "999999999"}, 400,
     "Inference-Header-Content-Length"),
    ("above profile", *_bin_request([{"name": "input", "shape": [1, 3, 2048, 2048], "datatype": "FP32",
                                      "parameters": {"binary_data_size": 16}}], b"\0" * 16), 400,
     "maximum [8, 3, 64, 64]"),
    ("batch above max", *_bin_request([{"name": "input", "shape": [9, 3, 32, 32], "datatype": "FP32",
                                        "parameters": {"binary_data_size": 9 * len(BIN)}}], BIN * 9), 400, "maximum"),
    ("oversized body", b"{" + b" " * (1 << 20), {}, 413, "exceeds the limit of 1048576"),
    ("deep json", b"[" * 100_000 + b"]" * 100_000, {}, 400, "RecursionError"),
    ("5000-digit int", b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [' + b"9" * 5000
     + b"]}]}", {}, 400, "malformed JSON"),
    ("overflowing shape", json.dumps({"inputs": [{"name": "input", "shape": [2**40, 2**40, 2**40, 2**40],
                                                  "datatype": "FP32", "data": [1.0]}]}).encode(), {}, 400, "elements"),
]


@pytest.mark.parametrize("name, body, headers, status, message", V2_BAD, ids=[c[0] for c in V2_BAD])
def test_v2_bad_request_4xx_with_v2_error_body(server, reference, name, body, headers, status, message):
    got, h, data = request(server, "POST", f"/v2/models/{MODEL}/infer", body, headers)
    assert got == status, data
    assert h["Content-Type"] == "application/json"
    err = json.loads(data)
    assert list(err) == ["error"] and message in err["error"], err
    ok, _, data = request(server, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD))
    assert ok == 200
    np.testing.assert_allclose(np.array(json.loads(data)["outputs"][0]["data"], np.float32).reshape(1, 10),
                               reference.infer(GOOD)["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path, message", [
    ("/v2/models/resnet50/infer", "unknown model 'resnet50'"),
    (f"/v2/models/{MODEL}/versions/2/infer", "unknown version '2'"),
    ("/v2/models/resnet50", "unknown model"),
    (f"/v2/models/{MODEL}/versions/3/ready", "unknown version"),
    ("/v2/nothing/here", "no such v2 endpoint"),
])
def test_v2_unknown_model_version_path_404(server, path, message):
    method = "POST" if path.endswith("/infer") else "GET"
    got, _, data = request(server, method, path, v2_json(GOOD) if method == "POST" else b"")
    assert got == 404 and list(json.loads(data)) == ["error"] and message in json.loads(data)["error"]


def test_v2_versioned_paths_and_request_level_binary_output(server, reference):
    status, h, data = request(server, "POST", f"/v2/models/{MODEL}/versions/1/infer",
                              v2_json(GOOD, id="abc", parameters={"binary_data_output": True}))
    assert status == 200
    n = int(h["Inference-Header-Content-Length"])
    head = json.loads(data[:n])
    assert head["id"] == "abc" and head["outputs"][0]["parameters"] == {"binary_data_size": 40}
    np.testing.assert_allclose(np.frombuffer(data[n:], np.float32).reshape(1, 10), reference.infer(GOOD)["logits"],
                               rtol=1e-5, atol=1e-5)
    assert request(server, "GET", f"/v2/models/{MODEL}/versions/1")[0] == 200
    assert request(server, "GET", f"/v2/models/{MODEL}/versions/1/ready")[0] == 200
    assert json.loads(request(server, "GET", f"/v2/models/{MODEL}/stats")[2])["model_stats"][0]["name"] == MODEL


# ---- faults of the old server, each gone ---------------------------------------------------------


@pytest.mark.parametrize("body, headers, message", [
    (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, "RecursionError"),
    (b'{"inputs": [' + b"7" * 5000 + b"]}", {"Content-Type": "application/json"}, "digits"),
    (b'{"inputs": [[[[' + b"1" + b"0" * 400 + b"]]]]}", {"Content-Type": "application/json"}, "non-numbers"),
    (b"\0" * 16, {"Content-Type": "application/octet-stream", "X-Shape": "1,4294967296,4294967296,4294967296"},
     "needs"),
], ids=["deep json", "5000-digit int", "400-digit int", "overflowing X-Shape"])
def test_v1_hostile_bodies_get_400_and_are_counted(server, body, headers, message):
    before = metrics(server).get('sai_requests_total{path="/v1/infer",status="400"}', 0)
    status, _, data = request(server, "POST", "/v1/infer", body, headers)
    assert status == 400 and message in json.loads(data)["error"]
    assert metrics(server)['sai_requests_total{path="/v1/infer",status="400"}'] == before + 1


def _raw(srv, data: bytes, timeout=10.0) -> bytes:
    """Send raw bytes, read until the server closes or ``timeout``."""
    s = socket.create_connection((srv.host, srv.port), timeout=timeout)
    try:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


def test_content_length_minus_one_gets_400(server):
    reply = _raw(server, b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: -1\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert request(server, "GET", "/healthz")[0] == 200


def test_hundreds_of_idle_connections_do_not_starve_healthz_and_are_closed(engine):
    """500 connections that send nothing (and 20 that stall mid-header) hold no thread: /healthz answers at once;
    after the idle timeout (1 s here) the server closes them."""
    with InferenceServer(engine, "127.0.0.1", 0, idle_timeout=1.0) as server:
        _idle_connections(server)


def _idle_connections(server):
    idle = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(500)]
    slow = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(20)]
    try:
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        assert request(server, "GET", "/healthz")[0] == 200  # answered while 520 connections are open
        closed = 0
        for s in idle[:20] + slow:
            s.settimeout(10)
            closed += s.recv(1) == b""  # EOF: the server closed it (a timeout would raise)
        assert closed == 40
    finally:
        for s in idle + slow:
            s.close()
    assert request(server, "GET", "/healthz")[0] == 200


def test_listen_backlog_sized_for_load(server):
    """The listening socket's accept queue (ss: Send-Q of a LISTEN socket) is 2048, not 5."""
    import shutil
    import subprocess

    if shutil.which("ss") is None:
        pytest.skip("no ss(8) to read the listen backlog")
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, timeout=10).stdout
    fields = out.split()
    assert fields and int(fields[2]) >= min(2048, int(open("/proc/sys/net/core/somaxconn").read())), out


def test_drain_reads_bodies_so_keepalive_bodies_are_not_requests(engine):
    """While draining, an infer request gets 503 + Connection: close after its body is read: a body that looks like
    an HTTP request is never answered as one."""
    srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=1, max_delay_ms=0).start()
    try:
        srv.draining = True
        trap = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 50
        for path in ("/v1/infer", f"/v2/models/{MODEL}/infer"):
            req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(trap)}\r\n\r\n").encode() + trap
            reply = _raw(srv, req + req)  # two pipelined on one connection
            assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
            assert reply.count(b"HTTP/1.1") == 1 and b"connection: close" in reply.lower()
            body = reply.split(b"\r\n\r\n", 1)[1]
            assert "shutting down" in json.loads(body)["error"]
    finally:
        srv.stop(timeout=20)


class NonFinite:
    """The engine, with its logits made NaN/+inf/-inf in the first three columns."""

    def __init__(self, engine):
        self._e = engine

    def __getattr__(self, name):
        return getattr(self._e, name)

    def infer(self, feeds):
        out = self._e.infer(feeds)
        y = out["logits"].copy()
        y[:, 0], y[:, 1], y[:, 2] = np.nan, np.inf, -np.inf
        return {"logits": y}


def _strict_json(data: bytes):
    def bad(token):
        raise AssertionError(f"invalid JSON token {token}")
    return json.loads(data, parse_constant=bad)


def test_non_finite_outputs_are_valid_json(engine, reference):
    srv = InferenceServer(NonFinite(engine), "127.0.0.1", 0, max_batch=1, max_delay_ms=0).start()
    try:
        status, _, data = request(srv, "POST", "/v1/infer", json.dumps({"inputs": GOOD.tolist()}).encode(),
                                  {"Content-Type": "application/json"})
        assert status == 200
        row = _strict_json(data)["outputs"]["logits"][0]
        assert row[:3] == ["NaN", "Infinity", "-Infinity"]
        status, _, data = request(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD))
        assert status == 200
        vals = np.array(_strict_json(data)["outputs"][0]["data"], dtype=np.float32)  # numpy parses the strings
        assert np.isnan(vals[0]) and vals[1] == np.inf and vals[2] == -np.inf
        np.testing.assert_allclose(vals[3:], reference.infer(GOOD)["logits"][0, 3:], rtol=1e-5, atol=1e-5)
        c = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}")
        inp = httpclient.InferInput("input", list(GOOD.shape), "FP32")
        inp.set_data_from_numpy(GOOD)
        got = c.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
        assert np.isnan(got.as_numpy("logits")[0, 0]) and got.as_numpy("logits")[0, 1] == np.inf
        c.close()
    finally:
        srv.stop(timeout=20)


# ---- the engine profile, in the API and the server -------------------------------------------------


def test_engine_profile_enforced_in_the_api(engine):
    assert engine.max_shape == (8, 3, 64, 64) and engine.min_shape == (1, 3, 32, 32)
    for shape, limit, dim in [((9, 3, 32, 32), "maximum [8, 3, 64, 64]", "batch 9"),
                              ((64, 3, 32, 32), "maximum", "batch 64"),
                              ((1, 3, 2048, 2048), "maximum [8, 3, 64, 64]", "height 2048"),
                              ((1, 3, 32, 16), "minimum [1, 3, 32, 32]", "width 16")]:
        with pytest.raises(ProfileError) as exc:
            engine.infer(np.zeros(shape, np.float32))
        assert limit in str(exc.value) and dim in str(exc.value)
        assert exc.value.too_large == ("maximum" in limit)


def test_server_profile_400_before_decoding_and_max_shape_flag(engine, outdir):
    """A shape outside the profile is a 400 naming the accepted ranges (issue 27 item 4: the client learns what to
    send); 413 is only for a body over the byte limit."""
    with rt.load(outdir, backend="onnxruntime", threads=1) as e:
        srv = InferenceServer(e, "127.0.0.1", 0, max_batch=8, max_delay_ms=0, max_shape=(4, 3, 48, 48)).start()
        try:
            big = _x(1, 2048, 2048)
            status, _, data = request(srv, "POST", "/v1/infer", big.tobytes(), {
                "Content-Type": "application/octet-stream", "X-Shape": "1,3,2048,2048"})
            error = json.loads(data)["error"]  # from X-Shape, before the body is decoded
            assert status == 400 and "height 2048 is above the engine profile's maximum [4, 3, 48, 48]" in error
            assert "accepted: batch 1-4, channels 3, height 32-48, width 32-48" in error  # min (1,3,32,32) to max
            assert srv.max_body_bytes < big.nbytes  # the body limit follows the profile too
            mid = _x(1, 600, 600).tobytes()  # over the limit, under 16x it: read, dropped, answered
            status, _, data = request(srv, "POST", "/v1/infer", mid, {"Content-Type": "application/x-npy"})
            assert status == 413 and f"limit of {srv.max_body_bytes} bytes" in json.loads(data)["error"]
            status, _, data = request(srv, "POST", "/v1/infer", _x(1, 56, 48).tobytes(), {
                "Content-Type": "application/octet-stream", "X-Shape": "1,3,56,48"})
            assert status == 400 and "maximum [4, 3, 48, 48]" in json.loads(data)["error"]
            assert srv.max_batch == 4
            assert request(srv, "POST", "/v1/infer", _x(1, 48, 48).tobytes(), {
                "Content-Type": "application/octet-stream", "X-Shape": "1,3,48,48"})[0] == 200
        finally:
            srv.stop(timeout=20)


# ---- Triton metrics --------------------------------------------------------------------------------


def test_triton_metrics_names_labels_and_failures_timed(engine):
    srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=0, model_name="demo").start()
    try:
        for i in range(3):
            assert request(srv, "POST", "/v2/models/demo/infer", v2_json(_x(2, seed=i)))[0] == 200
        m0 = metrics(srv)
        assert request(srv, "POST", "/v2/models/demo/infer", b"{bad")[0] == 400
        m = metrics(srv)
    finally:
        srv.stop(timeout=20)
    lab = '{model="demo",version="1"}'
    assert m[f"nv_inference_request_success{lab}"] == 3
    assert m['nv_inference_request_failure{model="demo",reason="OTHER",version="1"}'] == 1
    assert m['nv_inference_request_failure{model="demo",reason="REJECTED",version="1"}'] == 0
    assert m[f"nv_inference_count{lab}"] == 6 and m[f"nv_inference_exec_count{lab}"] == 3
    for name in ("queue", "compute_infer", "compute_input", "compute_output"):
        assert m[f"nv_inference_{name}_duration_us{lab}"] >= 0
    assert m[f"nv_inference_compute_infer_duration_us{lab}"] > 0
    assert m[f"nv_inference_request_duration_us{lab}"] > m0[f"nv_inference_request_duration_us{lab}"]  # the failure
    assert m[f"nv_inference_request_duration_us{lab}"] >= m[f"nv_inference_compute_infer_duration_us{lab}"]
    assert f"nv_inference_pending_request_count{lab}" in m
    assert m['sai_requests_total{path="/v2/infer",status="200"}'] == 3


def test_v2_overload_is_503_rejected(engine):
    gate, entered = threading.Event(), threading.Event()

    class Gated:
        def __getattr__(self, name):
            return getattr(engine, name)

        def infer(self, feeds):
            entered.set()
            assert gate.wait(TIMEOUT)
            return engine.infer(feeds)

    srv = InferenceServer(Gated(), "127.0.0.1", 0, max_batch=1, max_delay_ms=0, max_queue=1).start()
    try:
        t1 = threading.Thread(target=request, args=(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD)))
        t1.start()
        assert entered.wait(TIMEOUT)
        t2 = threading.Thread(target=request, args=(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD)))
        t2.start()
        for _ in range(2000):
            if srv.metrics.queue_depth == 1:
                break
            time.sleep(0.005)
        status, h, data = request(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD))
        assert status == 503 and h["Retry-After"] == "1" and "queue full" in json.loads(data)["error"]
        gate.set()
        t1.join(TIMEOUT)
        t2.join(TIMEOUT)
        m = metrics(srv)
        assert m[f'nv_inference_request_failure{{model="{MODEL}",reason="REJECTED",version="1"}}'] == 1
        assert m[f'nv_inference_request_success{{model="{MODEL}",version="1"}}'] == 2
    finally:
        gate.set()
        srv.stop(timeout=20)


def test_uint8_image_passed_to_the_engine_with_its_datatype(server):
    """A UINT8 image is passed to the engine with its datatype (the engine normalises it as recorded, or answers
    with a SaiError that becomes a 400): never a silent cast, never a 500."""
    for shape in ([1, 3, 32, 32], [1, 32, 32, 3]):  # NCHW, NHWC
        pix = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
        body, headers = _bin_request([{"name": "input", "shape": shape, "datatype": "UINT8",
                                       "parameters": {"binary_data_size": pix.nbytes}}], pix.tobytes())
        status, _, data = request(server, "POST", f"/v2/models/{MODEL}/infer", body, headers)
        assert status in (200, 400), data
        if status == 400:
            assert "has dtype uint8" in json.loads(data)["error"]
        status, _, data = request(server, "POST", "/v1/infer", pix.tobytes(), {
            "Content-Type": "application/octet-stream", "X-Shape": ",".join(map(str, shape)), "X-Dtype": "uint8"})
        assert status in (200, 400), data
        if status == 400:
            assert "has dtype uint8" in json.loads(data)["error"]


def test_mask_density_per_block_in_metrics(outdir):
    """--mask-metrics: each block's mask densities (from the masks as extra outputs) in /metrics, the masks never
    in a response; the densities equal those of the masks computed by sai.runtime.validate's masked model."""
    from sai.runtime.serve_masks import with_mask_outputs
    from sai.runtime.validate import onnx_with_masks

    engine = with_mask_outputs(rt.load(outdir, backend="onnxruntime", threads=1), threads=1)
    srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=0).start()
    try:
        x = _x(2, seed=9)
        status, _, data = request(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(x))
        assert status == 200 and [o["name"] for o in json.loads(data)["outputs"]] == ["logits"]
        meta = json.loads(request(srv, "GET", f"/v2/models/{MODEL}")[2])
        assert [o["name"] for o in meta["outputs"]] == ["logits"]
        m = metrics(srv)
    finally:
        srv.stop(timeout=20)
        engine.close()
    dens = {k: v for k, v in m.items() if k.startswith("sai_mask_density_sum")}
    assert len(dens) == 16  # 8 blocks x (m1, m2)
    with tempfile.TemporaryDirectory() as tmp:
        names = onnx_with_masks(outdir / "model.onnx", Path(tmp) / "m.onnx")
        with rt.load(Path(tmp) / "m.onnx", threads=1, verify=False) as ref:
            outs = ref.infer(x)
    for name in names:
        block, mask = name[len("mask."):].rsplit(".", 1)
        lab = f'{{block="{block}",mask="{mask}",model="{MODEL}"}}'  # labels in name order (prometheus_client)
        assert m[f"sai_mask_density_count{lab}"] == 2
        assert abs(m[f"sai_mask_density_sum{lab}"] / 2 - float((outs[name] > 0).mean())) < 1e-6


def test_request_timeout_is_504_and_the_batcher_skips_the_abandoned_request(engine):
    gate, entered = threading.Event(), threading.Event()
    calls = []

    class Slow:
        def __getattr__(self, name):
            return getattr(engine, name)

        def infer(self, feeds):
            calls.append(int(feeds["input"].shape[0]))
            entered.set()
            assert gate.wait(TIMEOUT)
            return engine.infer(feeds)

    srv = InferenceServer(Slow(), "127.0.0.1", 0, max_batch=1, max_delay_ms=0, request_timeout=0.5).start()
    try:
        first = threading.Thread(target=request, args=(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD)))
        first.start()
        assert entered.wait(TIMEOUT)
        status, _, data = request(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD))  # queued, then gives up
        assert status == 504 and "did not finish within 0.5 s" in json.loads(data)["error"]
        gate.set()
        first.join(TIMEOUT)
        assert request(srv, "POST", f"/v2/models/{MODEL}/infer", v2_json(GOOD))[0] == 200
        assert calls == [1, 1]  # the abandoned request never ran
    finally:
        gate.set()
        srv.stop(timeout=20)


def test_cli_serve_v2_http_and_grpc_model_name_and_sigterm(outdir):
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gport = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sai", "serve", str(outdir), "--backend", "onnxruntime", "--port",
                             "0", "--grpc-port", str(gport), "--model-name", "demo", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+), gRPC on 127\.0\.0\.1:(\d+) \(model 'demo'", line)
        assert m and int(m.group(2)) == gport, line + (proc.stderr.read() if proc.poll() is not None else "")
        hc = httpclient.InferenceServerClient(f"127.0.0.1:{m.group(1)}")
        gc = grpcclient.InferenceServerClient(f"127.0.0.1:{gport}")
        assert hc.is_model_ready("demo") and gc.is_model_ready("demo") and not hc.is_model_ready(MODEL)
        inp = grpcclient.InferInput("input", list(GOOD.shape), "FP32")
        inp.set_data_from_numpy(GOOD)
        assert gc.infer("demo", [inp]).as_numpy("logits").shape == (1, 10)
        hc.close()
        gc.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0 and "drained and stopped" in proc.stderr.read()
    finally:
        reap(proc)


def test_grpc_typed_contents_and_raw_count_mismatch(server, reference):
    """ModelInfer with typed ``contents`` (fp32_contents) instead of raw_input_contents, through the generated
    stub; and a request whose raw_input_contents do not match its inputs is INVALID_ARGUMENT."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = service_pb2.ModelInferRequest(model_name=MODEL, id="typed")
        t = req.inputs.add(name="input", datatype="FP32", shape=list(GOOD.shape))
        t.contents.fp32_contents.extend(GOOD.ravel().tolist())
        resp = stub.ModelInfer(req, timeout=TIMEOUT)
        assert resp.id == "typed" and resp.outputs[0].name == "logits" and list(resp.outputs[0].shape) == [1, 10]
        np.testing.assert_allclose(np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(1, 10),
                                   reference.infer(GOOD)["logits"], rtol=1e-5, atol=1e-5)
        bad = service_pb2.ModelInferRequest(model_name=MODEL)
        bad.inputs.add(name="input", datatype="FP32", shape=list(GOOD.shape))
        bad.raw_input_contents.extend([GOOD.tobytes(), b"extra"])
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(bad, timeout=TIMEOUT)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one per input" in exc.value.details()


def test_demo_model_uint8_images_in_top_k_labels_out():
    """The shipped demo model (records its preprocessing and class names): raw uint8 NHWC images over HTTP
    (binary) and gRPC come back as the direct engine's logits, and the classification extension gives Triton's
    "score:index:label" strings equal to an independent engine's classify()."""
    from sai.models.train_demo import DEFAULT_OUT

    ck = DEFAULT_OUT / "sparse_resnet18.pth"
    images = np.random.default_rng(4).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    with rt.load(ck, backend="torch", threads=1) as direct:
        want = direct.infer(images)["logits"]
        top = direct.classify(images, k=3)
    with rt.load(ck, backend="torch", threads=1) as served, \
            InferenceServer(served, "127.0.0.1", 0, max_batch=4, max_delay_ms=0, grpc_port=0) as srv:
        model = srv.model_name
        hc = httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}")
        gc = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        try:
            for client, mod in ((hc, httpclient), (gc, grpcclient)):
                inp = mod.InferInput("input", list(images.shape), "UINT8")
                inp.set_data_from_numpy(images)
                got = client.infer(model, [inp]).as_numpy("logits")
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
                for binary in ((True, False) if mod is httpclient else (True,)):
                    kw = {"binary_data": binary} if mod is httpclient else {}
                    res = client.infer(model, [inp], outputs=[mod.InferRequestedOutput("logits", class_count=3, **kw)])
                    strings = res.as_numpy("logits")
                    assert strings.shape == (2, 3)
                    for row, preds in zip(strings, top, strict=True):
                        parts = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in row]
                        assert [int(p[1]) for p in parts] == [p.index for p in preds]
                        assert [p[2] for p in parts] == [p.label for p in preds]
        finally:
            hc.close()
            gc.close()
