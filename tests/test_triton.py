"""sai export-triton: repository layout, config.pbtxt parsed by Triton's own ModelConfig protobuf schema
(tritonclient), inputs/outputs checked against onnxruntime's view of the model."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from runtime_helpers import record_files, tiny_outdir

from sai.cli.main import main
from sai.errors import SaiError
from sai.runtime.triton import export_triton

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] provides Triton's model-config schema")
from google.protobuf import text_format  # noqa: E402


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def outdir_with_plan(tmp_path_factory):
    src, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0
    dest = tmp_path_factory.mktemp("triton") / "out"
    shutil.copytree(src, dest)
    (dest / "model.plan").write_bytes(b"not a real engine; export-triton only copies it")
    record_files(dest, "model.plan")  # as sai convert records an engine it built
    return dest


def test_repository_configs_valid_against_triton_schema(outdir_with_plan, tmp_path):
    import onnxruntime as ort

    lib = tmp_path / "libsai_trt_plugins.so"
    lib.write_bytes(b"\x7fELF fake")
    res = export_triton(outdir_with_plan, tmp_path / "repo", instances=1, plugin_library=str(lib))
    repo = tmp_path / "repo"
    assert res["models"] == {"sparse_resnet18_onnx": "onnxruntime_onnx", "sparse_resnet18_trt": "tensorrt_plan"}
    onnx_cfg, trt_cfg = parse(repo / "sparse_resnet18_onnx/config.pbtxt"), parse(repo / "sparse_resnet18_trt/config.pbtxt")
    assert onnx_cfg.platform == "onnxruntime_onnx" and trt_cfg.platform == "tensorrt_plan"
    assert onnx_cfg.name == "sparse_resnet18_onnx" and trt_cfg.name == "sparse_resnet18_trt"
    manifest = json.loads((outdir_with_plan / "manifest.json").read_text())
    assert trt_cfg.max_batch_size == manifest["shapes"]["input"]["max"][0] == 8
    assert trt_cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert trt_cfg.instance_group[0].count >= 2 and list(trt_cfg.instance_group[0].gpus) == [0]
    assert onnx_cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    for cfg in (onnx_cfg, trt_cfg):
        assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 5000
        assert max(cfg.dynamic_batching.preferred_batch_size) <= cfg.max_batch_size
    sess = ort.InferenceSession(str(repo / "sparse_resnet18_onnx/1/model.onnx"), providers=["CPUExecutionProvider"])
    for cfg in (onnx_cfg, trt_cfg):
        for spec, cfg_io in ((sess.get_inputs(), cfg.input), (sess.get_outputs(), cfg.output)):
            assert [i.name for i in spec] == [c.name for c in cfg_io]
            for i, c in zip(spec, cfg_io, strict=True):
                assert c.data_type == model_config_pb2.TYPE_FP32 and i.type == "tensor(float)"
                assert list(c.dims) == [d if isinstance(d, int) else -1 for d in i.shape[1:]]
    data = (repo / "sparse_resnet18_onnx/1/model.onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["files"]["model.onnx"]["sha256"]
    assert (repo / "sparse_resnet18_trt/1/model.plan").read_bytes() == (outdir_with_plan / "model.plan").read_bytes()
    assert (repo / "plugins/libsai_trt_plugins.so").read_bytes() == lib.read_bytes()
    readme = (repo / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=$PWD/plugins/libsai_trt_plugins.so" in readme
    assert "LD_PRELOAD=$PWD/plugins/libsai_trt_plugins.so" in readme


def test_schema_check_can_fail():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nplatform: "tensorrt_plan"\nmax_batch: 8\n', model_config_pb2.ModelConfig())


def test_without_plan_writes_onnx_model_and_says_so(tmp_path_factory, tmp_path, capsys, monkeypatch):
    src, _ = tiny_outdir(tmp_path_factory)
    monkeypatch.setenv("SAI_TRT_PLUGIN_LIBRARY", str(tmp_path / "missing.so"))
    rc = main(["export-triton", str(src), "-o", str(tmp_path / "repo"), "--max-batch", "4", "--max-delay-ms", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "tensorrt model skipped: no model.plan" in out and "plugin library not found" in out
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["README.md", "sparse_resnet18_onnx"]
    cfg = parse(tmp_path / "repo/sparse_resnet18_onnx/config.pbtxt")
    assert cfg.max_batch_size == 4 and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert "make plugins" in (tmp_path / "repo/README.md").read_text()


def test_refuses_foreign_directory_and_non_outdir(tmp_path_factory, tmp_path):
    src, _ = tiny_outdir(tmp_path_factory)
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(SaiError, match="is not written by sai export-triton"):
        export_triton(src, foreign, plugin_library=None)
    assert (foreign / "keep.txt").read_text() == "x"
    with pytest.raises(SaiError, match="not a sai convert OUTDIR"):
        export_triton(tmp_path, tmp_path / "r")
