"""`sai serve` of a detector OUTDIR: KServe v2 over HTTP and gRPC, driven by the real tritonclient.

Reference: a second ``sai.runtime.load`` of the same OUTDIR in this process (``DetectorEngine.infer`` on the same
pixels; encoded images decoded here with Pillow, independently of the server), the COCO class names the OUTDIR's
manifest records, and the Open Inference Protocol's status codes. A bad request is followed by a good one on the
same server, which must still answer.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from detector_helpers import detector_images, tiny_detector_outdir
from runtime_helpers import request

import sai.runtime as rt
from sai.runtime.serve import InferenceServer

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
Image = pytest.importorskip("PIL.Image")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_HW = 200


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tiny_detector_outdir(tmp_path_factory.mktemp("serve_det"))


@pytest.fixture(scope="module")
def reference(outdir):
    with rt.load(outdir) as eng:
        yield eng


@pytest.fixture(scope="module")
def server(outdir):
    eng = rt.load(outdir)
    srv = InferenceServer(eng, "127.0.0.1", 0, max_batch=4, max_delay_ms=2, grpc_port=0,
                          max_shape=(4, 3, MAX_HW, MAX_HW)).start()
    yield srv
    srv.stop(timeout=20)
    eng.close()


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def _same(got: dict, want: dict) -> None:
    np.testing.assert_array_equal(got["num_dets"], want["num_dets"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["dets"], want["dets"], rtol=0, atol=1e-4)
    assert want["num_dets"].min() > 0  # the test detector detects: the comparison is not of empty outputs


def _v2(srv, doc: dict):
    status, _, body = request(srv, "POST", f"/v2/models/{srv.model_name}/infer", json.dumps(doc).encode())
    return status, json.loads(body)


def test_metadata_and_config_name_the_detector_and_its_classes(server, outdir):
    manifest = json.loads((outdir / "manifest.json").read_text())
    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert server.model_name == "tiny_serve_dense"  # the preset, not the backbone's arch
    meta = c.get_model_metadata(server.model_name)
    assert {t["name"] for t in meta["inputs"]} == {"images", "images_encoded"}
    assert [t["name"] for t in meta["outputs"]] == ["dets", "labels", "num_dets", "label_names"]
    assert meta["outputs"][0]["shape"] == [-1, 100, 5]
    cfg = c.get_model_config(server.model_name)
    assert cfg["parameters"]["sai_class_names"]["string_value"].split(",") == manifest["classes"]
    assert cfg["parameters"]["sai_max_image_hw"]["string_value"] == f"{MAX_HW},{MAX_HW}"
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    gcfg = g.get_model_config(server.model_name, as_json=True)["config"]
    assert gcfg["parameters"]["sai_class_names"]["string_value"].split(",") == manifest["classes"]
    c.close()
    g.close()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_http_uint8_batch_matches_the_runtime(server, reference, layout):
    imgs = detector_images()
    batch = np.stack([imgs[0], imgs[0][::-1].copy()])  # two images of one size
    sent = batch if layout == "NHWC" else batch.transpose(0, 3, 1, 2).copy()
    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = httpclient.InferInput("images", list(sent.shape), "UINT8")
    inp.set_data_from_numpy(sent, binary_data=True)
    res = c.infer(server.model_name, [inp])
    got = {k: res.as_numpy(k) for k in ("dets", "labels", "num_dets")}
    assert res.as_numpy("label_names") is None  # only on request
    _same(got, reference.infer(batch))
    c.close()


def test_grpc_encoded_images_of_two_sizes_match_the_runtime_with_class_names(server, reference):
    imgs = detector_images()  # 72x120 and 90x52: one request, two sizes
    files = [_encode(imgs[0], "PNG"), _encode(imgs[1], "JPEG")]
    decoded = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files]
    np.testing.assert_array_equal(decoded[0], imgs[0])  # PNG is lossless
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inp = grpcclient.InferInput("images_encoded", [2], "BYTES")
    inp.set_data_from_numpy(np.array(files, dtype=object))
    res = g.infer(server.model_name, [inp], parameters={"class_names": True})
    want = reference.infer(decoded)
    _same({k: res.as_numpy(k) for k in ("dets", "labels", "num_dets")}, want)
    names = res.as_numpy("label_names")
    assert names.shape == (2, 100)
    for i in range(2):
        n = int(want["num_dets"][i])
        assert [v.decode() for v in names[i, :n]] == [reference.classes[j] for j in want["labels"][i, :n]]
        assert all(v == b"" for v in names[i, n:])
    g.close()


def test_http_json_base64_and_http_binary_bytes(server, reference):
    img = detector_images()[1]
    png = _encode(img, "PNG")
    status, doc = _v2(server, {"inputs": [{"name": "images_encoded", "shape": [1], "datatype": "BYTES",
                                           "data": [base64.b64encode(png).decode()]}],
                               "parameters": {"class_names": True}})
    assert status == 200, doc
    out = {o["name"]: o for o in doc["outputs"]}
    want = reference.infer(img)
    n = int(want["num_dets"][0])
    assert out["num_dets"]["data"] == [n]
    np.testing.assert_allclose(np.array(out["dets"]["data"]).reshape(1, 100, 5), want["dets"], atol=1e-4)
    assert out["label_names"]["data"][:n] == [reference.classes[j] for j in want["labels"][0, :n]]
    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = httpclient.InferInput("images_encoded", [1], "BYTES")
    inp.set_data_from_numpy(np.array([png], dtype=object), binary_data=True)
    res = c.infer(server.model_name, [inp], outputs=[httpclient.InferRequestedOutput("num_dets"),
                                                     httpclient.InferRequestedOutput("label_names")])
    assert res.as_numpy("num_dets").tolist() == [n] and res.as_numpy("dets") is None
    assert [v.decode() for v in res.as_numpy("label_names")[0, :n]] == out["label_names"]["data"][:n]
    c.close()


BAD = [
    ({"inputs": [{"name": "images_encoded", "shape": [1], "datatype": "BYTES",
                  "data": [base64.b64encode(b"not an image at all").decode()]}]}, "does not decode"),
    ({"inputs": [{"name": "images", "shape": [1, MAX_HW + 50, 60, 3], "datatype": "UINT8",
                  "data": [0] * ((MAX_HW + 50) * 60 * 3)}]}, "larger than this server takes"),
    ({"inputs": [{"name": "images_encoded", "shape": [1], "datatype": "BYTES",
                  "data": ["PNG"]}]}, "does not decode|not base64"),
    ({"inputs": [{"name": "images", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}],
      "outputs": [{"name": "labels", "parameters": {"classification": 3}}]}, "classification"),
    ({"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]},
     "unknown input 'input'"),
    ({"inputs": [{"name": "images", "shape": [5, 8, 8, 3], "datatype": "UINT8", "data": [0] * 960}]},
     "5 images; this server takes at most 4"),
]


@pytest.mark.parametrize("doc,match", BAD, ids=["undecodable", "too-large", "bad-base64", "top-k", "tensor", "too-many"])
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, doc, match):
    import re

    status, body = _v2(server, doc)
    assert 400 <= status < 500 and re.search(match, body["error"]), body
    img = detector_images()[0][None]
    status, body = _v2(server, {"inputs": [{"name": "images", "shape": list(img.shape), "datatype": "UINT8",
                                            "data": img.ravel().tolist()}]})
    assert status == 200 and body["outputs"][2]["name"] == "num_dets"


def test_encoded_image_over_the_limit_is_refused_over_grpc_then_a_good_one_answers(server, reference):
    big = np.zeros((MAX_HW + 1, 40, 3), np.uint8)
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    inp = grpcclient.InferInput("images_encoded", [1], "BYTES")
    inp.set_data_from_numpy(np.array([_encode(big, "PNG")], dtype=object))
    with pytest.raises(InferenceServerException, match=f"{MAX_HW + 1}x40 pixels is larger"):
        g.infer(server.model_name, [inp])
    inp = grpcclient.InferInput("images_encoded", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"\x89PNG\r\n\x1a\n truncated"], dtype=object))
    with pytest.raises(InferenceServerException, match="does not decode"):
        g.infer(server.model_name, [inp])
    img = detector_images()[1]
    inp = grpcclient.InferInput("images", [1, *img.shape], "UINT8")
    inp.set_data_from_numpy(img[None])
    _same({k: g.infer(server.model_name, [inp]).as_numpy(k) for k in ("dets", "labels", "num_dets")},
          reference.infer(img))
    g.close()


def test_v1_classify_is_refused_for_a_detector(server):
    status, _, body = request(server, "POST", "/v1/infer", json.dumps({"inputs": [[0.0]]}).encode(),
                              {"Content-Type": "application/json"})
    assert status == 400 and "serves a detector" in json.loads(body)["error"]
    status, _, body = request(server, "GET", "/v1/model")
    assert status == 200 and json.loads(body)["kind"] == "detector"


def test_cli_sai_serve_detector_answers_and_drains(outdir, reference):
    """`sai serve OUT` on a detector OUTDIR as a process: the info line, one JPEG request (its detections are the
    runtime's on the pixels Pillow decodes here), SIGTERM exits 0."""
    import os
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "sai", "serve", str(outdir), "--port", "0", "--grpc-port", "0",
                             "--threads", "1", "--max-shape", "2x3x300x300"],  # gRPC port 0: HTTP alone
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+) \(model 'tiny_serve_dense', .*max batch 2,", line)
        assert m, line + (proc.stderr.read() if proc.poll() is not None else "")
        jpeg = _encode(detector_images()[0], "JPEG")
        c = httpclient.InferenceServerClient(f"127.0.0.1:{m.group(1)}")
        inp = httpclient.InferInput("images_encoded", [1], "BYTES")
        inp.set_data_from_numpy(np.array([jpeg], dtype=object), binary_data=True)
        res = c.infer("tiny_serve_dense", [inp])
        want = reference.infer(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))
        _same({k: res.as_numpy(k) for k in ("dets", "labels", "num_dets")}, want)
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def test_cli_sai_serve_refuses_mask_metrics_for_a_detector(outdir, capsys):
    from sai.cli.main import main

    assert main(["serve", str(outdir), "--port", "0", "--grpc-port", "0", "--mask-metrics"]) != 0
    err = capsys.readouterr().err
    assert "--mask-metrics is not available for a detector" in err and "Traceback" not in err
