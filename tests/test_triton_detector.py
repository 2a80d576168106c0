"""`sai export-triton` of a detector OUTDIR: the repository's configs parse as Triton's ModelConfig (tritonclient's
model_config_pb2) and chain (ensemble -> python preprocessing -> onnxruntime model), and the python model, run with
a fake ``triton_python_backend_utils`` and without sai importable, feeds the repository's ONNX file (run by
onnxruntime here) to the detections ``sai.runtime.load(OUT).infer`` gives for the same uint8 images.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
from detector_helpers import detector_images, tiny_detector_outdir

import sai.runtime as rt

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="export-triton builds Triton's configs")
from google.protobuf import json_format  # noqa: E402

from sai.runtime import triton_config as tc  # noqa: E402


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tiny_detector_outdir(tmp_path_factory.mktemp("triton_det"))


@pytest.fixture(scope="module")
def repo(outdir, tmp_path_factory):
    from sai.cli.main import main

    dest = tmp_path_factory.mktemp("triton_det_repo") / "repo"
    assert main(["export-triton", str(outdir), "-o", str(dest), "--name", "det", "--max-batch", "4"]) == 0
    return dest


class _FakePbUtils(types.ModuleType):
    """The parts of Triton's triton_python_backend_utils that the model uses."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    class TritonError:
        def __init__(self, msg):
            self.msg = msg

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request[name]


def _config(repo, model):
    return tc.parse((repo / model / "config.pbtxt").read_text())


def test_repository_configs_parse_and_chain(repo, outdir):
    import json

    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["det", "det_onnx", "det_preprocess"]
    ens, pre, onnx = _config(repo, "det"), _config(repo, "det_preprocess"), _config(repo, "det_onnx")
    assert ens.platform == "ensemble" and onnx.platform == "onnxruntime_onnx" and pre.backend == "python"
    assert ens.max_batch_size == pre.max_batch_size == onnx.max_batch_size == 4
    assert [(t.name, list(t.dims)) for t in ens.input] == [("images", [-1, -1, 3])]
    assert [(t.name, list(t.dims)) for t in ens.output] == [("dets", [100, 5]), ("labels", [100]),
                                                            ("num_dets", [1])]
    assert ens.output[2].HasField("reshape") and list(ens.output[2].reshape.shape) == []
    ins = {t.name: t for t in onnx.input}
    assert list(ins["scale_factor"].dims) == [1] and ins["scale_factor"].HasField("reshape")
    assert list(ins["input"].dims) == [3, -1, -1] and list(ins["img_shape"].dims) == [2]
    s1, s2 = ens.ensemble_scheduling.step
    assert (s1.model_name, s2.model_name) == ("det_preprocess", "det_onnx")
    assert {s1.output_map[k] for k in ins} == {s2.input_map[k] for k in ins}  # every graph input is fed
    assert {t.name for t in pre.output} == set(ins) and [t.name for t in pre.input] == ["images"]
    assert not onnx.model_operations.op_library_filename  # the tiny dense detector has no fused file
    classes = json.loads((outdir / "manifest.json").read_text())["classes"]
    assert (repo / "det" / "labels.txt").read_text().splitlines() == classes
    assert ens.parameters["sai.class_names"].string_value.split(",") == classes
    assert (repo / "det_onnx" / "1" / "model.onnx").read_bytes() == (outdir / "model.onnx").read_bytes()


def test_python_model_and_onnx_model_give_the_runtime_detections(repo, outdir, monkeypatch):
    import onnxruntime as ort

    version = repo / "det_preprocess" / "1"
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakePbUtils("triton_python_backend_utils"))
    monkeypatch.setitem(sys.modules, "sai", None)  # as in Triton's python backend: no sai installed
    spec = importlib.util.spec_from_file_location("triton_det_model", version / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.delitem(sys.modules, "sai")
    cfg = _config(repo, "det_preprocess")
    model = mod.TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True)})
    imgs = detector_images()
    batch = np.stack([imgs[0], imgs[0][:, ::-1]])
    single = imgs[1][None]
    bad = np.zeros((1, 8, 8, 4), np.uint8)
    r1, r2, r3 = model.execute([{"images": _FakePbUtils.Tensor("images", batch)},
                                {"images": _FakePbUtils.Tensor("images", single)},
                                {"images": _FakePbUtils.Tensor("images", bad)}])
    assert r3.error is not None and "uint8 RGB [N, H, W, 3]" in r3.error.msg
    sess = ort.InferenceSession(str(repo / "det_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    with rt.load(outdir) as eng:
        for r, images in ((r1, batch), (r2, single)):
            feeds = {t.name: t.array for t in r.output_tensors}
            assert feeds["input"].dtype == np.float32 and feeds["img_shape"].dtype == np.int64
            dets, labels, num = sess.run(["dets", "labels", "num_dets"], feeds)
            want = eng.infer(images)
            assert want["num_dets"].min() > 0
            np.testing.assert_array_equal(num, want["num_dets"])
            np.testing.assert_array_equal(labels, want["labels"])
            np.testing.assert_allclose(dets, want["dets"], rtol=0, atol=1e-4)


def test_fused_detector_names_the_op_library(outdir, tmp_path, monkeypatch):
    """Where the OUTDIR has a fused CPU detector and the library is built, the onnxruntime model is the fused file
    and its config names libsai_ort_ops.so in model_operations (the classifier's layout)."""
    from sai.runtime import ort_ops
    from sai.runtime.triton import export_triton

    lib, why = ort_ops.find_library()
    if lib is None:
        pytest.skip(f"libsai_ort_ops.so not built: {why}")
    fake = tmp_path / "fused.onnx"
    fake.write_bytes((outdir / "model.onnx").read_bytes())
    monkeypatch.setattr(ort_ops, "on_disk_fused", lambda p: (fake, 3))
    res = export_triton(outdir, tmp_path / "repo", name="det", repository_path="/models")
    onnx = _config(tmp_path / "repo", "det_onnx")
    assert list(onnx.model_operations.op_library_filename) == ["/models/det_onnx/libsai_ort_ops.so"]
    assert (tmp_path / "repo" / "det_onnx" / "libsai_ort_ops.so").is_file()
    assert res["ort_ops"]["fused_blocks"] == 3


def test_bad_settings_are_refused_before_writing(outdir, tmp_path):
    from sai.errors import SaiError
    from sai.runtime.triton import export_triton

    with pytest.raises(SaiError, match="--max-batch must be an integer >= 1"):
        export_triton(outdir, tmp_path / "r", max_batch=0)
    assert not (tmp_path / "r").exists()
