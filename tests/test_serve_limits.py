"""`sai serve` against hostile clients and operators (issue 23): request faults that crashed a handler (500 /
UNKNOWN, counted as successes), disconnects that logged tracebacks, unbounded request heads and stalled bodies,
a drain past Kubernetes' grace period, temporary folders left by ``kill -9``, ports the OS wraps, parameters of
the wrong type, raw and typed gRPC contents together, absolute paths in /v1/model, big-endian .npy bodies.

References: the Open Inference Protocol's status codes (4xx / INVALID_ARGUMENT for a request fault), HTTP's 408 /
431, the process's RSS (/proc), the independent engine's ``infer`` for results. Servers bind 127.0.0.1 on
ephemeral ports; every wait is bounded.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import request

import sai.runtime as rt
from sai.benchmarks.procs import reap
from sai.errors import SaiError
from sai.runtime.serve import InferenceServer

TIMEOUT = 60
MODEL = "sparse_resnet18"


@pytest.fixture(scope="module")
def server(engine):
    srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=0, max_body_bytes=1 << 20, grpc_port=0,
                          max_header_bytes=32 << 10, body_timeout=1.0).start()
    yield srv
    srv.stop(timeout=20)


def _x(seed=0, shape=(1, 3, 32, 32)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _v2(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _counts(srv):
    m = srv.metrics
    return m.nv["nv_inference_request_success"], sum(m.failures.values())


# ---- request faults that crashed a handler ----------------------------------------------------------------


HUGE = 10**309  # a float overflows past 1.8e308: '{:.3g}'.format(HUGE) raised OverflowError in the handler

V2_FAULTS = [
    ("309-digit dim", _v2([{"name": "input", "shape": [HUGE, 3, 32, 32], "datatype": "FP32", "data": [0.0]}]),
     "elements"),
    ("309-digit dim in a 3-dim shape", _v2([{"name": "input", "shape": [HUGE, 3, 32], "datatype": "FP32",
                                             "data": [0.0]}]), "elements"),
    ("uint8 with 33 dims", _v2([{"name": "input", "shape": [1] * 33, "datatype": "UINT8", "data": [7]}]),
     "33 dimensions"),
    ("uint8 with 5 dims", _v2([{"name": "input", "shape": [1, 1, 3, 8, 8], "datatype": "UINT8",
                                "data": [7] * 192}]), "uint8 images must be a batch"),
    ("binary_data_output a string", _v2([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                          "data": _x().ravel().tolist()}], parameters={"binary_data_output": "false"}),
     "binary_data_output must be true or false"),
    ("binary_data a string", _v2([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "data": _x().ravel().tolist()}],
                                 outputs=[{"name": "logits", "parameters": {"binary_data": "false"}}]),
     "binary_data must be true or false"),
]


@pytest.mark.parametrize("name, body, message", V2_FAULTS, ids=[c[0] for c in V2_FAULTS])
def test_v2_faults_are_400_counted_as_failures(server, reference, name, body, message):
    ok0, failed0 = _counts(server)
    status, _, data = request(server, "POST", f"/v2/models/{MODEL}/infer", body)
    assert status == 400, data[:300]
    assert message in json.loads(data)["error"]
    assert _counts(server) == (ok0, failed0 + 1)
    x = _x(1)
    status, _, data = request(server, "POST", f"/v2/models/{MODEL}/infer", _v2([{
        "name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]))
    assert status == 200
    np.testing.assert_allclose(np.array(json.loads(data)["outputs"][0]["data"], np.float32).reshape(1, 10),
                               reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)


def test_v2_boolean_binary_data_output_still_selects_binary(server):
    for flag, binary in ((True, True), (False, False)):
        status, h, _ = request(server, "POST", f"/v2/models/{MODEL}/infer", _v2([{
            "name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": _x().ravel().tolist()}],
            parameters={"binary_data_output": flag}))
        assert status == 200 and ("Inference-Header-Content-Length" in h) == binary


@pytest.mark.parametrize("shape, status, message", [
    (",".join(["1"] * 33), 400, "33 dimensions"), (",".join(["1"] * 5), 400, "5 dimensions"),
    (f"{HUGE},3,32,32", 400, "request batch ~10^309 exceeds"), (f"1,3,{HUGE},32", 400, "maximum"),
    (f"1,{HUGE},32,32", 400, "x float32 needs ~10^312"),
])
def test_v1_x_shape_faults_are_4xx(server, shape, status, message):
    ok0, failed0 = _counts(server)
    got, _, data = request(server, "POST", "/v1/infer", b"\0" * 4, {"Content-Type": "application/octet-stream",
                                                                    "X-Shape": shape})
    assert got == status and message in json.loads(data)["error"], data[:300]
    assert len(data) < 1000
    assert _counts(server) == (ok0, failed0 + 1)


def test_grpc_faults_are_invalid_argument_counted_as_failures(server, reference):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = _x(3)
    cases = []
    r = service_pb2.ModelInferRequest(model_name=MODEL)
    r.inputs.add(name="input", datatype="UINT8", shape=[1] * 33)
    r.raw_input_contents.append(b"\7")
    cases.append(("uint8 with 33 dims", r, "33 dimensions"))
    r = service_pb2.ModelInferRequest(model_name=MODEL)
    t = r.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(np.zeros(x.size).tolist())
    r.raw_input_contents.append(x.tobytes())
    cases.append(("raw and typed contents", r, "send one or the other"))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        for what, req, message in cases:
            ok0, failed0 = _counts(server)
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfer(req, timeout=TIMEOUT)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, exc.value.details())
            assert message in exc.value.details()
            assert _counts(server) == (ok0, failed0 + 1), what
        good = service_pb2.ModelInferRequest(model_name=MODEL)
        good.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        good.raw_input_contents.append(x.tobytes())
        resp = stub.ModelInfer(good, timeout=TIMEOUT)
        np.testing.assert_allclose(np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(1, 10),
                                   reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)


def test_truncated_gzip_body_is_400(server):
    import gzip

    body = gzip.compress(_v2([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                               "data": _x().ravel().tolist()}]))
    status, _, data = request(server, "POST", f"/v2/models/{MODEL}/infer", body[:-4], {"Content-Encoding": "gzip"})
    assert status == 400 and "truncated" in json.loads(data)["error"]


# ---- smaller faults ------------------------------------------------------------------------------------


def test_big_endian_npy_body_gives_the_native_answer(server, reference):
    x = _x(4)
    buf = io.BytesIO()
    np.save(buf, x.astype(">f4"), allow_pickle=False)
    status, h, data = request(server, "POST", "/v1/infer", buf.getvalue(), {"Content-Type": "application/x-npy"})
    assert status == 200, data[:300]
    got = np.load(io.BytesIO(data))
    np.testing.assert_allclose(got, reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)


def test_v1_model_exposes_no_absolute_paths(server, outdir):
    status, _, data = request(server, "GET", "/v1/model")
    assert status == 200
    text = data.decode()
    info = json.loads(text)
    assert info["path"] == "model.onnx" and info["inputs"][0]["name"] == "input"
    assert str(outdir) not in text and not re.search(r'"/[^"\s]*/', text), text[:500]


@pytest.mark.parametrize("flag, value", [("--port", "99999"), ("--port", "-1"), ("--grpc-port", "65536"),
                                         ("--port", "http")])
def test_cli_port_out_of_range_is_a_usage_error(outdir, flag, value):
    proc = subprocess.run([sys.executable, "-m", "sai", "serve", str(outdir), flag, value], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "is not a TCP port" in proc.stderr, proc.stderr[-500:]


def test_server_port_out_of_range_is_refused(engine):
    for kw in ({"port": 99999}, {"port": -1}, {"port": 0, "grpc_port": 70000}):
        with pytest.raises(SaiError, match="is not a TCP port"):
            InferenceServer(engine, "127.0.0.1", **kw)


# ---- resources -------------------------------------------------------------------------------------------


def _flood(port: int, total: int, reply: list) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Flood: " + b"a" * 65000 + b"\r\n"
        sent = 0
        try:
            while sent < total:
                s.sendall(line)
                sent += len(line)
        except OSError:  # the server stopped reading: the reply is waiting
            pass
        try:
            reply.append(s.recv(100))
        except OSError as exc:
            reply.append(repr(exc).encode())
    finally:
        s.close()


def test_header_flood_gets_431_and_leaves_no_memory(server, reference):
    """4 connections x 32 MiB of request headers: each gets 431 (the limit here is 32 KiB) and the process's RSS
    stays where it was (without a limit httptools buffered every byte: +128 MiB)."""
    request(server, "GET", "/healthz")
    rss0 = _rss_mib()
    replies: list = []
    threads = [threading.Thread(target=_flood, args=(server.port, 32 << 20, replies)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(replies) == 4 and all(r.startswith(b"HTTP/1.1 431") for r in replies), replies
    assert _rss_mib() - rss0 < 32, (rss0, _rss_mib())
    # a head that arrives whole and is over the limit: 431 too; one under it is served
    status, _, _ = request(server, "GET", "/healthz", headers={"X-Big": "a" * (40 << 10)})
    assert status == 431
    status, _, _ = request(server, "GET", "/healthz", headers={"X-Ok": "a" * (16 << 10)})
    assert status == 200


def test_stalled_body_gets_408_and_its_connection_closed(server):
    s = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    try:
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
                  b"\r\n{\"inputs\"")
        reply = b""
        while True:  # the server answers after its body timeout (1 s) and closes; recv's timeout bounds the wait
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 1 s" in reply
    assert request(server, "GET", "/healthz")[0] == 200


def test_clients_that_disconnect_mid_upload_log_nothing_and_count_as_canceled(server, caplog):
    canceled0 = server.metrics.failures["CANCELED"]
    with caplog.at_level(logging.DEBUG - 1):
        for _ in range(40):
            s = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
            s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n" + b" " * 1000)
            s.close()
        for _ in range(2000):  # bounded poll until the server has seen all 40 go
            if server.metrics.failures["CANCELED"] - canceled0 >= 40:
                break
            threading.Event().wait(0.005)
    assert server.metrics.failures["CANCELED"] - canceled0 == 40
    noisy = [r for r in caplog.records if r.exc_info or "Disconnect" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage() for r in noisy[:3]]
    assert request(server, "GET", "/healthz")[0] == 200


def _start_cli(outdir, *extra, env=None):
    proc = subprocess.Popen([sys.executable, "-m", "sai", "serve", str(outdir), "--backend", "onnxruntime", "--port",
                             "0", "--grpc-port", "0", "--threads", "1", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    line = proc.stdout.readline()
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError(line + proc.stderr.read())
    return proc, int(m.group(1))


def test_sigterm_drain_is_bounded_with_stalled_uploads_and_exits_0(outdir):
    """20 uploads that stall after half their body: SIGTERM ends the process within --drain-timeout (2 s here,
    25 s by default: below Kubernetes' 30 s grace period) with exit status 0 (the README's rule for serve); the
    stalled clients get a 503 (retry elsewhere) before it. Before, the drain waited for them (60 s and more)."""
    proc, port = _start_cli(outdir, "--drain-timeout", "2", "--body-timeout", "600")
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000"
                      b"\r\n\r\n" + b" " * 1000)
            socks.append(s)
        status, _, _ = request(type("S", (), {"host": "127.0.0.1", "port": port}), "GET", "/healthz")
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0  # bounded wait: without the bound it did not end for 60 s
        err = proc.stderr.read()
        assert "drained and stopped" in err and "Traceback" not in err and "ERROR" not in err, err[-1000:]
        for s in socks:
            assert s.recv(100).startswith(b"HTTP/1.1 503"), "a stalled client got no answer"
    finally:
        for s in socks:
            s.close()
        reap(proc)


def test_mask_metrics_folders_of_killed_servers_are_removed_at_the_next_start(outdir, tmp_path, monkeypatch):
    proc, _ = _start_cli(outdir, "--mask-metrics", env={"TMPDIR": str(tmp_path)})
    try:
        left = sorted(tmp_path.glob("sai-serve-masks-*"))
        assert len(left) == 1 and (left[0] / "model_masks.onnx").is_file()
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
    finally:
        reap(proc)
    assert left[0].exists()  # SIGKILL: nothing could clean up
    foreign = tmp_path / "sai-serve-masks-notours"  # not named by a sai server: never touched
    foreign.mkdir()
    import tempfile

    from sai.runtime.serve_masks import with_mask_outputs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    engine = rt.load(outdir, backend="onnxruntime", threads=1)
    with with_mask_outputs(engine, threads=1) as masked:
        now = sorted(tmp_path.glob("sai-serve-masks-*"))
        assert not left[0].exists() and foreign.is_dir() and len(now) == 2
        assert f"{os.getpid()}@" in next(p for p in now if p != foreign).name
    assert sorted(tmp_path.glob("sai-serve-masks-*")) == [foreign]  # a clean close removes its own
    assert isinstance(masked.outputs, list)


def test_readme_states_the_sigterm_exit_status():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert re.search(r"`sai serve` exits 0 after a graceful drain", text), "README must say how serve exits on SIGTERM"
