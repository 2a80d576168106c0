"""KServe v2 / Triton extensions of sai serve a client hits first, driven by the real tritonclient (HTTP and gRPC):
the statistics extension (``GET /v2/models/stats`` and per model, gRPC ``ModelStatistics``), gRPC
``ModelStreamInfer`` (results and errors through the stream callback), metadata/config that state the shapes the
server accepts, and the platform names.

References: the requests this test sent (counts, batch sizes, failures), the shape profile recorded in the
model's ``manifest.json``, a second engine's ``infer`` (results). Each server here is this module's own, so its
counters start at zero; every wait is bounded.
"""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest

import sai.runtime as rt
from sai.runtime.serve import InferenceServer

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TIMEOUT = 60
MODEL = "sparse_resnet18"


def _x(n=1, h=32, w=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def _profile(outdir) -> tuple[list[int], list[int]]:
    """(min, max) of the image input as the model's manifest records them."""
    shapes = json.loads((outdir / "manifest.json").read_text())["shapes"]["input"]
    return [int(d) for d in shapes["min"]], [int(d) for d in shapes["max"]]


@pytest.fixture(scope="module")
def reference(outdir):
    with rt.load(outdir / "model.onnx", threads=1, verify=False) as e:
        e.set_profile(None, None)
        yield e


@pytest.fixture
def server(outdir):
    with rt.load(outdir, backend="onnxruntime", threads=1) as engine:
        srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=1, max_queue=16, grpc_port=0).start()
        try:
            yield srv
        finally:
            srv.stop(timeout=20)


def _http(srv):
    return httpclient.InferenceServerClient(f"127.0.0.1:{srv.port}", network_timeout=TIMEOUT)


def _grpc(srv):
    return grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")


def _http_input(x, datatype="FP32"):
    inp = httpclient.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=True)
    return inp


def _grpc_input(x, datatype="FP32"):
    inp = grpcclient.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def _check_stats(st: dict, images: list[int], failures: int) -> None:
    """``st`` (one model's statistics, HTTP JSON or gRPC as_json: int64 as strings) after sequential requests
    of ``images`` images each (one engine run apiece) and ``failures`` refused requests."""
    assert st["name"] == MODEL and st["version"] == "1"
    assert int(st["inference_count"]) == sum(images)
    assert int(st["execution_count"]) == len(images)
    inf = st["inference_stats"]
    assert int(inf["success"]["count"]) == len(images) and int(inf["success"]["ns"]) > 0
    assert int(inf["fail"]["count"]) == failures and (int(inf["fail"]["ns"]) > 0) == (failures > 0)
    for k in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(inf[k]["count"]) == len(images)
    assert int(inf["compute_infer"]["ns"]) > 0
    assert int(inf["compute_infer"]["ns"]) <= int(inf["success"]["ns"])  # a part of each request's time
    got = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in st["batch_stats"]}
    assert got == {n: images.count(n) for n in set(images)}
    assert int(st["last_inference"]) > 0


def _check_metrics(srv, images: list[int], failures: int) -> None:
    """/metrics, read by a Prometheus text parser, holds the same counts under Triton's and sai's names."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{srv.url}/metrics", timeout=TIMEOUT) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            samples.setdefault(smp.name, []).append((smp.labels, smp.value))
    one = {"model": MODEL, "version": "1"}
    assert samples["nv_inference_request_success"] == [(one, len(images))]
    assert samples["nv_inference_count"] == [(one, sum(images))]
    assert samples["nv_inference_exec_count"] == [(one, len(images))]
    assert sum(v for _, v in samples["nv_inference_request_failure"]) == failures
    assert samples["sai_batch_size_count"] == [({}, len(images))]
    assert samples["sai_batch_size_sum"] == [({}, sum(images))]
    assert ({"path": "/v2/infer", "status": "200"}, 3) in \
        samples["sai_requests_total"]  # the three HTTP requests (the fourth is gRPC)


def test_statistics_over_http_and_grpc_count_what_was_sent(server, reference):
    http, grpc = _http(server), _grpc(server)
    try:
        zero = http.get_inference_statistics()["model_stats"]  # GET /v2/models/stats: every model
        assert len(zero) == 1 and int(zero[0]["inference_count"]) == 0 and int(zero[0]["execution_count"]) == 0
        images = []
        for n, seed in ((1, 1), (3, 2), (2, 3)):  # sequential: one engine run per request
            x = _x(n, seed=seed)
            res = http.infer(MODEL, [_http_input(x)])
            np.testing.assert_allclose(res.as_numpy("logits"), reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)
            images.append(n)
        x = _x(2, seed=4)
        res = grpc.infer(MODEL, [_grpc_input(x)])
        np.testing.assert_allclose(res.as_numpy("logits"), reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)
        images.append(2)
        with pytest.raises(InferenceServerException):  # a refused request: a failure, not an inference
            http.infer(MODEL, [_http_input(_x(1).astype(np.float64), "FP64")])
        with pytest.raises(InferenceServerException):
            grpc.infer(MODEL, [_grpc_input(_x(1, 16, 16))])  # below the profile's minimum
        for st in (http.get_inference_statistics()["model_stats"][0],
                   http.get_inference_statistics(MODEL)["model_stats"][0],
                   http.get_inference_statistics(MODEL, "1")["model_stats"][0],
                   grpc.get_inference_statistics(as_json=True)["model_stats"][0],
                   grpc.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]):
            _check_stats(st, images, failures=2)
        _check_metrics(server, images, failures=2)
        for call in (lambda: http.get_inference_statistics("nope"), lambda: grpc.get_inference_statistics("nope"),
                     lambda: http.get_inference_statistics(MODEL, "7")):
            with pytest.raises(InferenceServerException, match="unknown"):
                call()
    finally:
        http.close()
        grpc.close()


def test_grpc_stream_infer_answers_through_the_callback(server, reference):
    results: queue.Queue = queue.Queue()
    c = _grpc(server)
    try:
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        xs = [_x(1, seed=10), _x(2, 40, 48, seed=11)]
        for i, x in enumerate(xs):
            c.async_stream_infer(MODEL, [_grpc_input(x)], request_id=f"s{i}")
        c.async_stream_infer(MODEL, [_grpc_input(xs[0].astype(np.float64), "FP64")], request_id="bad")
        c.async_stream_infer("nope", [_grpc_input(xs[0])], request_id="nomodel")
        c.async_stream_infer(MODEL, [_grpc_input(xs[1])], request_id="s2")  # the stream goes on after errors
        got = [results.get(timeout=TIMEOUT) for _ in range(5)]
        c.stop_stream()
    finally:
        c.close()
    ok = [(r, e) for r, e in got if e is None]
    errors = [str(e) for r, e in got if e is not None]
    assert [r.get_response().id for r, _ in ok] == ["s0", "s1", "s2"]  # answered in order
    for (r, _), x in zip(ok, [xs[0], xs[1], xs[1]], strict=True):
        np.testing.assert_allclose(r.as_numpy("logits"), reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)
    assert len(errors) == 2 and "FP64" in errors[0] and "unknown model 'nope'" in errors[1]
    st = _http(server).get_inference_statistics(MODEL)["model_stats"][0]
    assert int(st["inference_count"]) == 1 + 2 + 2 and int(st["inference_stats"]["fail"]["count"]) == 1


@pytest.mark.parametrize("pin", [False, True])
def test_metadata_and_config_state_the_accepted_shapes(outdir, pin):
    lo, hi = _profile(outdir)
    assert lo != hi  # the test model's profile is a range
    with rt.load(outdir, backend="onnxruntime", threads=1) as engine:
        if pin:  # a profile that fixes H and W (as a TensorRT engine built for one size has)
            lo, hi = [lo[0], lo[1], 48, 40], [hi[0], hi[1], 48, 40]
            engine.set_profile(lo, hi)
        expected = [lo_d if lo_d == hi_d else -1 for lo_d, hi_d in zip(lo, hi, strict=True)]
        with InferenceServer(engine, "127.0.0.1", 0, max_batch=4, grpc_port=0) as srv:
            http, grpc = _http(srv), _grpc(srv)
            try:
                assert http.get_model_metadata(MODEL)["inputs"][0]["shape"] == expected
                assert [int(d) for d in grpc.get_model_metadata(MODEL, as_json=True)["inputs"][0]["shape"]] == expected
                params = {"sai_profile_input": "input", "sai_min_shape": ",".join(map(str, lo)),
                          "sai_max_shape": ",".join(map(str, hi))}
                cfg = http.get_model_config(MODEL)
                assert cfg["input"][0]["dims"] == expected[1:]
                assert {k: v["string_value"] for k, v in cfg["parameters"].items()} == params
                gcfg = grpc.get_model_config(MODEL, as_json=True)["config"]
                assert [int(d) for d in gcfg["input"][0]["dims"]] == expected[1:]
                assert {k: v["string_value"] for k, v in gcfg["parameters"].items()} == params
                # what the config states is what the server takes: its minimum works, one pixel less does not
                x = _x(lo[0], lo[2], lo[3])
                assert http.infer(MODEL, [_http_input(x)]).as_numpy("logits").shape[0] == lo[0]
                with pytest.raises(InferenceServerException, match="minimum|expected"):
                    http.infer(MODEL, [_http_input(_x(lo[0], lo[2] - 1, lo[3]))])
                if pin:
                    with pytest.raises(InferenceServerException):
                        grpc.infer(MODEL, [_grpc_input(_x(1, 48, 48))])
            finally:
                http.close()
                grpc.close()


def test_platform_names(outdir):
    """Triton's names for what it can run; torch is an eager module here, not TorchScript (pytorch_libtorch)."""
    for backend, platform in (("onnxruntime", "onnxruntime_onnx"), ("torch", "pytorch_eager")):
        with rt.load(outdir, backend=backend, threads=1) as engine, \
                InferenceServer(engine, "127.0.0.1", 0, grpc_port=None) as srv:
            c = _http(srv)
            try:
                assert c.get_model_metadata(MODEL)["platform"] == platform
                cfg = c.get_model_config(MODEL)
                assert cfg["platform"] == platform and cfg["backend"] == backend
            finally:
                c.close()


def test_grpc_stream_requests_in_flight_are_batched_together(outdir, reference):
    """Four 1-image requests sent on one stream before any answer: with a batch window far longer than sending
    takes, the batcher sees them all at once (one engine run of 4 images); answered one by one, each would wait
    out the window alone and run alone."""
    results: queue.Queue = queue.Queue()
    xs = [_x(1, seed=20 + i) for i in range(4)]
    with rt.load(outdir, backend="onnxruntime", threads=1) as engine, \
            InferenceServer(engine, "127.0.0.1", 0, max_batch=4, max_delay_ms=20_000, grpc_port=0) as srv:
        c = _grpc(srv)
        try:
            c.start_stream(callback=lambda result, error: results.put((result, error)))
            for i, x in enumerate(xs):
                c.async_stream_infer(MODEL, [_grpc_input(x)], request_id=f"b{i}")
            got = [results.get(timeout=TIMEOUT) for _ in xs]
            c.stop_stream()
            st = c.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        finally:
            c.close()
    assert [e for _, e in got] == [None] * 4
    assert [r.get_response().id for r, _ in got] == ["b0", "b1", "b2", "b3"]
    for (r, _), x in zip(got, xs, strict=True):
        np.testing.assert_allclose(r.as_numpy("logits"), reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)
    assert int(st["inference_count"]) == 4 and int(st["execution_count"]) == 1
    assert [(int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in st["batch_stats"]] == [(4, 1)]
