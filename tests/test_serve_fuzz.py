"""Generated hostile requests against `sai serve` (HTTP JSON, HTTP binary extension, gRPC): random shape, datatype,
size, header and body mutations of a valid v2 request, each invalid by construction
(``sai.benchmarks.serve_fuzz``). The reference is the Open Inference Protocol's rule: a request fault is a 4xx
(HTTP) or INVALID_ARGUMENT / NOT_FOUND (gRPC), never a 5xx / UNKNOWN / INTERNAL, and the server keeps serving
(valid requests in between still get the independent engine's answer). Seeded and bounded (a few hundred);
``python -m sai.benchmarks.serve_fuzz OUTDIR`` runs 10,000.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sai.benchmarks.serve_fuzz import (
    GRPC_REFUSALS,
    HttpCase,
    grpc_mutations,
    http_mutations,
    http_request,
    send_grpc,
    send_http,
    v2_doc,
    valid_input,
)
from sai.runtime.serve import InferenceServer

pytest.importorskip("tritonclient.grpc")
MODEL = "sparse_resnet18"
PATH = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def server(engine):
    srv = InferenceServer(engine, "127.0.0.1", 0, max_batch=8, max_delay_ms=0, max_queue=64, max_body_bytes=1 << 20,
                          grpc_port=0, max_header_bytes=16 << 10).start()
    yield srv
    srv.stop(timeout=20)


def _failures(srv) -> float:
    return sum(srv.metrics.failures.values())


def _check_valid(srv, reference, seed: int) -> None:
    x = valid_input(np.random.default_rng(seed))
    status, data = send_http(srv.host, srv.port, PATH, HttpCase("valid", *http_request(v2_doc(x, False))))
    assert status == 200, data[:300]
    got = np.array(json.loads(data)["outputs"][0]["data"], np.float32).reshape(1, 10)
    np.testing.assert_allclose(got, reference.infer(x)["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2])
def test_http_mutations_get_4xx_and_the_server_keeps_serving(server, reference, seed):
    rng = np.random.default_rng(seed)
    seen, failures0, bad = {}, _failures(server), []
    cases = list(http_mutations(rng, 150, server.max_batch, header_limit=server.max_header_bytes))
    for i, case in enumerate(cases):
        status, data = send_http(server.host, server.port, PATH, case)
        seen[status] = seen.get(status, 0) + 1
        if not 400 <= status < 500:
            bad.append(f"{case.what}: {status} {data[:200]!r}")
        elif status != 431:  # a refused head never reaches the handler: not an inference request
            assert list(json.loads(data)) == ["error"], (case.what, data[:200])
        if i % 25 == 0:
            _check_valid(server, reference, seed * 1000 + i)
    assert not bad, bad[:10]
    assert len(seen) >= 3, seen  # the generator reached several refusal kinds (400, 413, 415, 431)
    # every refused inference request is counted as a failure, none as a success (431s are not inferences)
    assert _failures(server) - failures0 == len(cases) - seen.get(431, 0)
    _check_valid(server, reference, seed)


@pytest.mark.parametrize("seed", [3])
def test_grpc_mutations_get_invalid_argument_and_the_server_keeps_serving(server, reference, seed):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rng = np.random.default_rng(seed)
    codes, bad = {}, []
    success0 = server.metrics.nv["nv_inference_request_success"]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        for i, case in enumerate(grpc_mutations(rng, 150, MODEL, server.max_batch)):
            code = send_grpc(stub, service_pb2, case)
            codes[code] = codes.get(code, 0) + 1
            if code not in GRPC_REFUSALS:
                bad.append(f"{case.what}: {code}")
            if i % 25 == 0:
                _check_valid(server, reference, seed * 1000 + i)
    assert not bad, bad[:10]
    assert set(codes) == set(GRPC_REFUSALS), codes
    assert server.metrics.nv["nv_inference_request_success"] - success0 == 150 // 25  # only the valid ones
