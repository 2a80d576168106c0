"""Triton configs as ModelConfig protobufs: built with tritonclient's model_config_pb2, written
in text format and parsed back; the python-backend preprocessing model run with a stand-in for Triton's
``triton_python_backend_utils`` against the training normalisation (``demo_data.normalize``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sai.errors import SaiError
from sai.models import checkpoint_meta as metadata
from sai.models import demo_data

m = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                        reason="tritonclient[grpc] provides Triton's model-config schema")
from google.protobuf import json_format, text_format  # noqa: E402

from sai.runtime import triton_config as tc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NORM = metadata.canonical_input_norm({"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}, "checkpoint")


def _model(**kw):
    args = dict(max_batch_size=8, kind="KIND_GPU", instances=2, max_queue_delay_us=5000, preferred=[2, 4, 8, 16],
                gpus=[0, 1], warmup_shapes={"input": [3, 64, 64]}, labels_file="labels.txt",
                parameters={"sai.arch": "sparse_resnet18", "sai.input_norm": NORM})
    args.update(kw)
    return tc.inference_config("m_trt", "tensorrt_plan", [tc.Tensor("input", "TYPE_FP32", [3, -1, -1])],
                               [tc.Tensor("logits", "TYPE_FP32", [10])], **args)


def test_inference_config_round_trips_with_warmup_labels_parameters():
    cfg = _model()
    text = tc.to_text(cfg)
    back = text_format.Parse(text, m.ModelConfig())  # Triton's own schema
    assert back == cfg and back.platform == "tensorrt_plan" and back.max_batch_size == 8
    assert list(back.input[0].dims) == [3, -1, -1] and back.input[0].data_type == m.TYPE_FP32
    assert back.output[0].label_filename == "labels.txt"
    assert list(back.dynamic_batching.preferred_batch_size) == [2, 4, 8]  # 16 is above max_batch_size
    assert back.dynamic_batching.max_queue_delay_microseconds == 5000
    g = back.instance_group[0]
    assert g.count == 2 and g.kind == m.ModelInstanceGroup.KIND_GPU and list(g.gpus) == [0, 1]
    w = back.model_warmup[0]
    assert w.batch_size == 1 and list(w.inputs["input"].dims) == [3, 64, 64] and w.inputs["input"].random_data
    assert json.loads(back.parameters["sai.input_norm"].string_value) == NORM
    assert back.parameters["sai.arch"].string_value == "sparse_resnet18"
    assert back.version_policy.latest.num_versions == 1


def test_no_batching_puts_the_batch_dim_back():
    cfg = _model(max_batch_size=0)
    assert list(cfg.input[0].dims) == [-1, 3, -1, -1] and not cfg.HasField("dynamic_batching")
    assert cfg.model_warmup[0].batch_size == 0 and list(cfg.model_warmup[0].inputs["input"].dims) == [1, 3, 64, 64]


def test_names_are_escaped_not_interpolated():
    cfg = tc.inference_config("m", "onnxruntime_onnx", [tc.Tensor('in"put\\x', "TYPE_FP32", [3])],
                              [tc.Tensor("y", "TYPE_FP32", [1])], max_batch_size=1, kind="KIND_CPU", instances=1,
                              max_queue_delay_us=0, preferred=[])
    assert tc.parse(tc.to_text(cfg)).input[0].name == 'in"put\\x'
    with pytest.raises(SaiError, match="control characters"):
        tc.inference_config("m", "onnxruntime_onnx", [tc.Tensor("a\nb", "TYPE_FP32", [3])], [], max_batch_size=1,
                            kind="KIND_CPU", instances=1, max_queue_delay_us=0, preferred=[])
    with pytest.raises(SaiError, match="instance count must be an integer >= 1"):
        _model(instances=0)
    with pytest.raises(SaiError, match="warmup dims"):
        _model(warmup_shapes={"input": [3, -1, 64]})
    with pytest.raises(SaiError, match="not a valid Triton model config"):
        tc.parse('name: "x"\nmax_batch: 8\n')


def test_ensemble_wires_images_through_the_preprocessing():
    pre = tc.preprocess_config("m_preprocess", 3, NORM, max_batch_size=8)
    assert pre.backend == "python" and pre.input[0].data_type == m.TYPE_UINT8
    assert list(pre.output[0].dims) == [3, -1, -1] and json.loads(pre.parameters["input_norm"].string_value) == NORM
    ens = tc.ensemble_config("m", "m_preprocess", "m_onnx", [tc.Tensor("logits", "TYPE_FP32", [10])],
                             max_batch_size=8, labels_file="labels.txt")
    back = tc.parse(tc.to_text(ens))
    assert back.platform == "ensemble" and back.input[0].name == "images" and back.output[0].label_filename
    s1, s2 = back.ensemble_scheduling.step
    assert (s1.model_name, s2.model_name) == ("m_preprocess", "m_onnx")
    assert s1.input_map["images"] == "images" and s1.output_map["input"] == s2.input_map["input"]
    assert s2.output_map["logits"] == "logits"
    assert tc.parse(tc.to_text(pre)) == pre


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


def test_python_backend_model_normalises_like_training(tmp_path, monkeypatch):
    version = tmp_path / "m_preprocess" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(tc.PYTHON_MODEL)
    shutil.copy(ROOT / "runtime" / "preprocess.py", version / "sai_preprocess.py")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakePbUtils("triton_python_backend_utils"))
    monkeypatch.setitem(sys.modules, "sai", None)  # as in Triton's python backend: no sai installed
    spec = importlib.util.spec_from_file_location("triton_model", version / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.delitem(sys.modules, "sai")
    cfg = tc.preprocess_config("m_preprocess", 3, NORM, max_batch_size=8)
    model = mod.TritonPythonModel()
    model.initialize({"model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True)})
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 40, 48)).astype(np.uint8)
    ref = demo_data.normalize(torch.from_numpy(x)).numpy()
    nhwc = _FakePbUtils.Tensor("images", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    nchw = _FakePbUtils.Tensor("images", x)
    bad = _FakePbUtils.Tensor("images", np.zeros((1, 5, 8, 8), np.uint8))
    r1, r2, r3 = model.execute([{"images": nhwc}, {"images": nchw}, {"images": bad}])
    for r in (r1, r2):
        (out,) = r.output_tensors
        assert out.name == "input" and out.array.dtype == np.float32
        np.testing.assert_allclose(out.array, ref, rtol=0, atol=1e-6)
    assert r3.error is not None and "channels" in r3.error.msg


def test_export_triton_demo_repository_images_labels_warmup(tmp_path_factory, tmp_path, monkeypatch):
    """The demo model (preprocessing and class names recorded): the repository has the preprocessing model and
    the ensemble, labels files, warmup and parameters; the python model's output fed to the ONNX model gives the
    logits engine.infer gives for the same uint8 images."""
    from runtime_helpers import demo_outdir

    import sai.runtime as rt
    from sai.runtime.triton import export_triton

    out = demo_outdir(tmp_path_factory)
    repo = tmp_path / "repo"
    res = export_triton(out, repo, plugin_library=None)
    base = "sparse_resnet18"
    assert res["models"] == {f"{base}_onnx": "onnxruntime_onnx", f"{base}_preprocess": "python", base: "ensemble"}
    onnx_cfg = tc.parse((repo / f"{base}_onnx/config.pbtxt").read_text())
    assert onnx_cfg.output[0].label_filename == "labels.txt"
    assert (repo / f"{base}_onnx/labels.txt").read_text().splitlines() == list(demo_data.CLASSES)
    w = onnx_cfg.model_warmup[0]
    assert list(w.inputs["input"].dims) == [3, 64, 64] and w.batch_size == 1
    assert json.loads(onnx_cfg.parameters["sai.input_norm"].string_value)["mean"] == [0.5] * 3
    ens = tc.parse((repo / f"{base}/config.pbtxt").read_text())
    assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == [
        f"{base}_preprocess", f"{base}_onnx"]
    assert ens.max_batch_size == onnx_cfg.max_batch_size == 16 and (repo / base / "1").is_dir()
    assert (repo / base / "labels.txt").is_file()
    pre_dir = repo / f"{base}_preprocess"
    assert (pre_dir / "1" / "sai_preprocess.py").read_text() == (ROOT / "runtime" / "preprocess.py").read_text()
    readme = (repo / "README.md").read_text()
    assert "## Images in" in readme and "class_count=5" in readme

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakePbUtils("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("triton_model_demo", pre_dir / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    pre_cfg = tc.parse((pre_dir / "config.pbtxt").read_text())
    model.initialize({"model_config": json_format.MessageToJson(pre_cfg, preserving_proto_field_name=True)})
    images, _ = demo_data.make_split(0, "test", 3)
    nhwc = np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1))
    (resp,) = model.execute([{"images": _FakePbUtils.Tensor("images", nhwc)}])
    with rt.load(out, backend="onnxruntime", threads=1) as e:
        np.testing.assert_allclose(e.infer(resp.output_tensors[0].array)["logits"], e.infer(nhwc)["logits"],
                                   rtol=1e-5, atol=1e-5)


def test_export_triton_without_trusted_preprocessing_says_why(tmp_path_factory, tmp_path):
    from runtime_helpers import tiny_outdir

    from sai.runtime.triton import export_triton

    out, _ = tiny_outdir(tmp_path_factory)
    export_triton(out, tmp_path / "repo", plugin_library=None)
    assert "No uint8-image ensemble: its checkpoint records no preprocessing" in (tmp_path / "repo/README.md").read_text()
    cfg = tc.parse((tmp_path / "repo/sparse_resnet18_onnx/config.pbtxt").read_text())
    assert not cfg.output[0].label_filename and cfg.model_warmup[0].inputs["input"].random_data
