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
    (tmp_path / "libsai_trt_plugins_autoload.so").write_bytes(b"\x7fELF fake autoload")
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
    so = ort.SessionOptions()
    for op_library in onnx_cfg.model_operations.op_library_filename:  # the fused model: as Triton's backend does
        so.register_custom_ops_library(op_library)
    sess = ort.InferenceSession(str(repo / "sparse_resnet18_onnx/1/model.onnx"), so, providers=["CPUExecutionProvider"])
    for cfg in (onnx_cfg, trt_cfg):
        for spec, cfg_io in ((sess.get_inputs(), cfg.input), (sess.get_outputs(), cfg.output)):
            assert [i.name for i in spec] == [c.name for c in cfg_io]
            for i, c in zip(spec, cfg_io, strict=True):
                assert c.data_type == model_config_pb2.TYPE_FP32 and i.type == "tensor(float)"
                assert list(c.dims) == [d if isinstance(d, int) else -1 for d in i.shape[1:]]
    data = (repo / "sparse_resnet18_onnx/1/model.onnx").read_bytes()  # the fused CPU model where the library is built
    shipped = "model.cpu-fused.onnx" if onnx_cfg.model_operations.op_library_filename else "model.onnx"
    assert hashlib.sha256(data).hexdigest() == manifest["files"][shipped]["sha256"]
    assert (repo / "sparse_resnet18_trt/1/model.plan").read_bytes() == (outdir_with_plan / "model.plan").read_bytes()
    assert (repo / "plugins/libsai_trt_plugins.so").read_bytes() == lib.read_bytes()
    readme = (repo / "README.md").read_text()
    assert "--backend-config=tensorrt,plugins=$PWD/plugins/libsai_trt_plugins.so" in readme
    assert "LD_PRELOAD=$PWD/plugins/libsai_trt_plugins_autoload.so" in readme  # the main library alone finds no TensorRT
    assert (repo / "plugins/libsai_trt_plugins_autoload.so").read_bytes() == b"\x7fELF fake autoload"
    assert "--backend-config=tensorrt,version-compatible=true" in readme


def test_schema_check_can_fail():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nplatform: "tensorrt_plan"\nmax_batch: 8\n', model_config_pb2.ModelConfig())


def test_without_plan_writes_onnx_model_and_says_so(tmp_path_factory, tmp_path, capsys, monkeypatch):
    src, _ = tiny_outdir(tmp_path_factory)
    monkeypatch.setenv("SAI_TRT_PLUGIN_LIBRARY", str(tmp_path / "missing.so"))
    rc = main(["export-triton", str(src), "-o", str(tmp_path / "repo"), "--max-batch", "4", "--max-delay-ms", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "tensorrt model skipped: no model.plan" in out and "plugin library not found" in out
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [".sai-output.json", "README.md",
                                                                     "sparse_resnet18_onnx"]
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


# ---- names, numbers, the ONNX file, confined and atomic writes --------------


def _run(capsys, *argv):
    rc = main(["export-triton", *[str(a) for a in argv]])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line_error(rc, err, *needles):
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def _leftovers(root):
    return sorted(p.name for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("name", ["../../escape", "a/b", "/abs", 'x"y', "x'y", "..", "a..b", "", ".hidden", "a\\b",
                                  "x y", "-dash", "na\u00efve", "tab\tname", "a" * 101, 'x"\nplatform: "evil'])
def test_unsafe_name_refused_before_any_write(outdir_with_plan, tmp_path, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    rc, _, err = _run(capsys, outdir_with_plan, "-o", work / "repo", f"--name={name}")
    _one_line_error(rc, err, "--name", "is not a valid Triton model name; use letters, digits, '_', '-' and '.'")
    assert list(work.iterdir()) == [] and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("name", ["resnet", "sai_r18.v2", "A-1", "_x"])
def test_safe_names_accepted(outdir_with_plan, tmp_path, name):
    res = export_triton(outdir_with_plan, tmp_path / "repo", name=name, plugin_library=None)
    assert sorted(res["models"]) == [f"{name}_onnx", f"{name}_trt"]
    assert parse(tmp_path / "repo" / f"{name}_onnx" / "config.pbtxt").name == f"{name}_onnx"


def test_unsafe_arch_in_manifest_needs_name(outdir_with_plan, tmp_path, capsys):
    doc = json.loads((outdir_with_plan / "manifest.json").read_text())
    bad = tmp_path / "bad"
    shutil.copytree(outdir_with_plan, bad)
    doc["arch"] = "../../escape"
    (bad / "manifest.json").write_text(json.dumps(doc))
    rc, _, err = _run(capsys, bad, "-o", tmp_path / "repo")
    _one_line_error(rc, err, "the manifest's arch (pass --name) '../../escape' is not a valid Triton model name")
    assert _run(capsys, bad, "-o", tmp_path / "repo", "--name", "ok")[0] == 0


@pytest.mark.parametrize("args, needle", [
    (["--max-batch", "-1"], "--max-batch must be an integer >= 0, got -1"),
    (["--instances", "0"], "--instances must be an integer >= 1, got 0"),
    (["--instances", "-3"], "--instances must be an integer >= 1, got -3"),
    (["--max-delay-ms", "-1"], "--max-delay-ms must be a finite number >= 0, got -1.0"),
    (["--max-delay-ms", "nan"], "--max-delay-ms must be a finite number >= 0, got nan"),
    (["--max-delay-ms", "inf"], "--max-delay-ms must be a finite number >= 0"),
    (["--gpus", "a,b"], "--gpus must be comma-separated GPU ids (non-negative integers, e.g. 0,1), got 'a,b'"),
    (["--gpus", "0,,1"], "--gpus must be comma-separated GPU ids"),
    (["--gpus", "-1"], "--gpus must be comma-separated GPU ids"),
    (["--gpus", "1.5"], "--gpus must be comma-separated GPU ids"),
    (["--gpus", "0,0"], "--gpus lists GPU 0 twice"),
])
def test_bad_numbers_refused_before_any_write(outdir_with_plan, tmp_path, capsys, args, needle):
    rc, _, err = _run(capsys, outdir_with_plan, "-o", tmp_path / "repo", *args)
    _one_line_error(rc, err, needle)
    assert not (tmp_path / "repo").exists() and _leftovers(tmp_path) == []


def test_gpus_list_parsed(outdir_with_plan, tmp_path, capsys):
    rc, _, err = _run(capsys, outdir_with_plan, "-o", tmp_path / "repo", "--gpus", " 0, 3 ", "--max-delay-ms", "0")
    assert rc == 0, err
    for model in ("sparse_resnet18_onnx", "sparse_resnet18_trt"):
        cfg = parse(tmp_path / "repo" / model / "config.pbtxt")
        assert list(cfg.instance_group[0].gpus) == [0, 3]
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 0


def test_max_batch_zero_means_no_batching(outdir_with_plan, tmp_path, capsys):
    """Triton's max_batch_size 0: the model does not batch, so no dynamic_batching and dims carry the batch dim
    (before, 0 silently became the profile's 8)."""
    import onnxruntime as ort

    rc, _, err = _run(capsys, outdir_with_plan, "-o", tmp_path / "repo", "--max-batch", "0")
    assert rc == 0, err
    sess = ort.InferenceSession(str(outdir_with_plan / "model.onnx"), providers=["CPUExecutionProvider"])
    for model in ("sparse_resnet18_onnx", "sparse_resnet18_trt"):
        cfg = parse(tmp_path / "repo" / model / "config.pbtxt")
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        for spec, cfg_io in ((sess.get_inputs(), cfg.input), (sess.get_outputs(), cfg.output)):
            for i, c in zip(spec, cfg_io, strict=True):
                assert list(c.dims) == [d if isinstance(d, int) else -1 for d in i.shape]
    assert "Triton does not batch them" in (tmp_path / "repo/README.md").read_text()


def test_max_batch_one_and_above_profile(outdir_with_plan, tmp_path):
    export_triton(outdir_with_plan, tmp_path / "r1", max_batch=1, plugin_library=None)
    cfg = parse(tmp_path / "r1/sparse_resnet18_onnx/config.pbtxt")
    assert cfg.max_batch_size == 1 and list(cfg.dynamic_batching.preferred_batch_size) == [1]
    export_triton(outdir_with_plan, tmp_path / "r32", max_batch=32, plugin_library=None)
    assert parse(tmp_path / "r32/sparse_resnet18_onnx/config.pbtxt").max_batch_size == 32
    assert parse(tmp_path / "r32/sparse_resnet18_trt/config.pbtxt").max_batch_size == 8  # the engine profile's


@pytest.mark.parametrize("content, needle", [
    (b"", "holds no model (no graph inputs, outputs or nodes"),
    (None, "is not a readable ONNX model (DecodeError"),  # truncated
    (b"\x08\x07garbage\xff\xff", "is not a readable ONNX model"),
])
def test_empty_or_truncated_onnx_is_one_line(outdir_with_plan, tmp_path, capsys, content, needle):
    bad = tmp_path / "bad"
    shutil.copytree(outdir_with_plan, bad)
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[: len(data) // 3] if content is None else content)
    rc, _, err = _run(capsys, bad, "-o", tmp_path / "repo")  # the hash check catches it first
    _one_line_error(rc, err, "model.onnx does not match")
    rc, _, err = _run(capsys, bad, "-o", tmp_path / "repo", "--no-verify")  # and without it, the ONNX check
    _one_line_error(rc, err, needle, "re-run sai convert")
    assert not (tmp_path / "repo").exists() and _leftovers(tmp_path) == []


def test_tensor_names_quoted_in_config():
    from sai.runtime.triton import IOSpec, model_config

    text = model_config("m", "onnxruntime_onnx", [IOSpec('in"put\\x', "TYPE_FP32", [3, -1, -1])],
                        [IOSpec("logits", "TYPE_FP32", [10])], max_batch_size=4, kind="KIND_CPU", instances=1,
                        max_queue_delay_us=0, preferred=[2, 4])
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.input[0].name == 'in"put\\x' and cfg.name == "m" and len(cfg.input) == len(cfg.output) == 1
    with pytest.raises(SaiError, match="control characters"):
        model_config("m", "onnxruntime_onnx", [IOSpec("a\nb", "TYPE_FP32", [3])], [], max_batch_size=1,
                     kind="KIND_CPU", instances=1, max_queue_delay_us=0, preferred=[])
    with pytest.raises(SaiError, match="instance count must be an integer >= 1"):
        model_config("m", "onnxruntime_onnx", [], [], max_batch_size=1, kind="KIND_CPU", instances=0,
                     max_queue_delay_us=0, preferred=[])


def test_output_overlapping_outdir_refused(outdir_with_plan, tmp_path, capsys):
    copy = tmp_path / "out"
    shutil.copytree(outdir_with_plan, copy)
    before = sorted(p.name for p in copy.iterdir())
    for target in (copy, copy / "repo", tmp_path):
        rc, _, err = _run(capsys, copy, "-o", target)
        _one_line_error(rc, err, "overlaps the OUTDIR")
    assert sorted(p.name for p in copy.iterdir()) == before
    (tmp_path / "file").write_text("x")
    rc, _, err = _run(capsys, copy, "-o", tmp_path / "file")
    _one_line_error(rc, err, "exists and is not a directory")


def test_failure_midway_publishes_nothing(outdir_with_plan, tmp_path, monkeypatch):
    """All files go to a temporary sibling renamed at the end (convert's publish_dir): a failure while copying
    leaves neither a half repository nor the temporary folder, and an existing repository untouched."""
    import sai.runtime.triton as triton

    export_triton(outdir_with_plan, tmp_path / "repo", plugin_library=None)
    old = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "repo").rglob("*"))
    real = shutil.copy2

    def failing(src, dst, *a, **k):
        if str(dst).endswith("model.plan"):
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(triton.shutil, "copy2", failing)
    with pytest.raises(SaiError, match="cannot write the repository .*: No space left on device; free space"):
        export_triton(outdir_with_plan, tmp_path / "repo", name="other", plugin_library=None)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "repo").rglob("*")) == old
    assert _leftovers(tmp_path) == []


def test_missing_plugin_library_named(outdir_with_plan, tmp_path):
    with pytest.raises(SaiError, match="plugin library .*missing.so does not exist; build it with `make plugins`"):
        export_triton(outdir_with_plan, tmp_path / "repo", plugin_library=str(tmp_path / "missing.so"))
    assert not (tmp_path / "repo").exists()
