"""The fused CPU model on disk (issue 27 item 1): `sai convert` writes model.cpu-fused.onnx (sai::SparseBlock nodes
for libsai_ort_ops.so) and records it; `sai.runtime` loads it as is; `sai export-triton` ships it with the library,
named in the onnxruntime config's `model_operations { op_library_filename }`.

References: plain onnxruntime (`SessionOptions.register_custom_ops_library` for the fused model; no library, i.e.
the ONNX function bodies, for the portable model.onnx), onnx's parser, Triton's own ModelConfig schema
(tritonclient's model_config_pb2 with protobuf text_format), hashlib over the bytes on the disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from runtime_helpers import tiny_outdir

import sai.runtime as rt
from sai.cli.main import main
from sai.errors import SaiError
from sai.runtime import ort_ops

ort = pytest.importorskip("onnxruntime")
LIB, WHY = ort_ops.built_library()
needs_library = pytest.mark.skipif(LIB is None, reason=f"libsai_ort_ops.so is not built here: {WHY}")
FUSED = "model.cpu-fused.onnx"
SHAPES = [(2, 3, 32, 32), (1, 3, 48, 40)]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    src, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0, info
    return src


@pytest.fixture
def copy(out, tmp_path):
    dest = tmp_path / "out"
    shutil.copytree(out, dest)
    return dest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _portable(path: Path, x: np.ndarray) -> np.ndarray:
    """The reference: plain onnxruntime on the portable model, no custom-op library (the function bodies)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _with_library(path: Path, library: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _inputs():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _ops(path: Path) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" for n in onnx.load(str(path)).graph.node)


# ---- sai convert --------------------------------------------------------------------------------------


def test_convert_writes_and_records_the_fused_model(out):
    fused = out / FUSED
    manifest = json.loads((out / "manifest.json").read_text())
    blocks = _ops(fused)["sai::SparseBlock"]
    assert blocks == 8 and _ops(out / "model.onnx")["sai::SparseBlock"] == 0  # every block of sparse_resnet18
    assert manifest["files"][FUSED] == {"sha256": _sha(fused), "bytes": fused.stat().st_size}
    assert manifest["fused"]["file"] == FUSED and manifest["fused"]["blocks"] == blocks
    assert manifest["fused"]["library"] == "libsai_ort_ops.so"
    assert manifest["fused"]["from"] == "model.onnx" and manifest["fused"]["from_sha256"] == _sha(out / "model.onnx")
    marker = json.loads((out / ".sai-output.json").read_text())
    assert marker["entries"][FUSED] == {"type": "file", "bytes": fused.stat().st_size, "sha256": _sha(fused)}
    meta = {p.key: p.value for p in onnx.load(str(fused)).metadata_props}
    assert meta["sai.fused_blocks"] == str(blocks) and meta["sai.custom_op_library"] == "libsai_ort_ops.so"


def test_fused_model_needs_the_library_in_plain_onnxruntime(out):
    with pytest.raises(Exception, match="SparseBlock"):
        ort.InferenceSession(str(out / FUSED), providers=["CPUExecutionProvider"])


@needs_library
def test_fused_model_in_plain_onnxruntime_matches_the_portable_model(out):
    for x in _inputs():
        np.testing.assert_allclose(_with_library(out / FUSED, LIB, x), _portable(out / "model.onnx", x),
                                   atol=2e-4, rtol=1e-4)


# ---- sai.runtime ------------------------------------------------------------------------------------------


@needs_library
def test_runtime_loads_the_fused_file_as_is(out, monkeypatch):
    import sai.runtime.ort_fuse as ort_fuse

    def no_rewrite(model):
        raise AssertionError("the model was rewritten in memory although the fused file is there")

    monkeypatch.setattr(ort_fuse, "fuse_sparse_blocks", no_rewrite)
    monkeypatch.delenv("SAI_ORT_OPS", raising=False)
    monkeypatch.delenv("SAI_ORT_OPS_LIBRARY", raising=False)
    for path in (out, out / "model.onnx", out / FUSED):
        with rt.load(path, backend="onnxruntime", device="cpu", threads=1) as e:
            ops = e.describe()["custom_ops"]
            assert ops["fused_file"] == str(out / FUSED) and ops["fused_blocks"] == 8, ops
            for x in _inputs():
                np.testing.assert_allclose(e.infer({"input": x})["logits"], _portable(out / "model.onnx", x),
                                           atol=2e-4, rtol=1e-4)


@needs_library
def test_a_replaced_model_onnx_is_not_run_from_the_old_fused_file(copy):
    from runtime_helpers import record_files

    model = onnx.load(str(copy / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = onnx.numpy_helper.to_array(init) * np.float32(1.5)
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(copy / "model.onnx"))
    record_files(copy, "model.onnx")  # a consistent OUTDIR of another model: the fused file is stale
    x = _inputs()[0]
    with rt.load(copy, backend="onnxruntime", device="cpu", threads=1) as e:
        assert "fused_file" not in e.describe()["custom_ops"]
        np.testing.assert_allclose(e.infer({"input": x})["logits"], _portable(copy / "model.onnx", x),
                                   atol=2e-4, rtol=1e-4)


def test_the_fused_file_without_the_library_is_one_clear_error(out, monkeypatch):
    monkeypatch.setenv("SAI_ORT_OPS", "0")
    with pytest.raises(SaiError) as err:
        rt.load(out / FUSED, threads=1)
    msg = str(err.value)
    assert "libsai_ort_ops.so" in msg and "model.onnx" in msg and "SAI_ORT_OPS=0" in msg and "\n" not in msg
    with rt.load(out, backend="onnxruntime", device="cpu", threads=1) as e:  # the OUTDIR: the portable model
        assert e.describe()["custom_ops"]["kernels"] == "function bodies"


# ---- sai export-triton --------------------------------------------------------------------------------

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] provides Triton's model-config schema")


def _config(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _export(capsys, src: Path, repo: Path, *extra) -> str:
    rc = main(["export-triton", str(src), "-o", str(repo), *map(str, extra)])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    return cap.out


@needs_library
def test_export_triton_ships_the_fused_model_and_names_the_library(out, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SAI_ORT_OPS", raising=False)
    monkeypatch.delenv("SAI_ORT_OPS_LIBRARY", raising=False)
    repo = tmp_path / "repo"
    stdout = _export(capsys, out, repo)
    assert "onnxruntime model: fused CPU model (8 blocks)" in stdout
    model_dir = repo / "sparse_resnet18_onnx"
    cfg = _config(model_dir / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    libs = list(cfg.model_operations.op_library_filename)
    assert libs == [str(model_dir / "libsai_ort_ops.so")]
    assert Path(libs[0]).read_bytes() == LIB.read_bytes()
    assert (model_dir / "1" / "model.onnx").read_bytes() == (out / FUSED).read_bytes()
    for x in _inputs():  # what Triton's onnxruntime backend does: register the named library, load the model
        np.testing.assert_allclose(_with_library(model_dir / "1" / "model.onnx", Path(libs[0]), x),
                                   _portable(out / "model.onnx", x), atol=2e-4, rtol=1e-4)
    marker = json.loads((repo / ".sai-output.json").read_text())["entries"]
    shipped = [p for p in model_dir.iterdir() if p.is_file()]
    assert {p.name for p in shipped} >= {"libsai_ort_ops.so", "libscipy_openblas.so", "config.pbtxt"}
    for p in [*shipped, model_dir / "1" / "model.onnx"]:
        rel = p.relative_to(repo).as_posix()
        assert marker[rel] == {"type": "file", "bytes": p.stat().st_size, "sha256": _sha(p)}, rel
    readme = (repo / "README.md").read_text()
    assert "model_operations" in readme and libs[0] in readme


@needs_library
def test_export_triton_repository_path_portable_and_gpus(out, tmp_path, capsys):
    repo = tmp_path / "repo"
    _export(capsys, out, repo, "--repository-path", "/models/")
    cfg = _config(repo / "sparse_resnet18_onnx" / "config.pbtxt")
    assert list(cfg.model_operations.op_library_filename) == ["/models/sparse_resnet18_onnx/libsai_ort_ops.so"]
    for extra in (["--portable-onnx"], ["--gpus", "0"]):
        _export(capsys, out, repo, *extra)  # its own earlier output: replaced
        model_dir = repo / "sparse_resnet18_onnx"
        assert not _config(model_dir / "config.pbtxt").HasField("model_operations"), extra
        assert (model_dir / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
        assert not (model_dir / "libsai_ort_ops.so").exists()
    rc = main(["export-triton", str(out), "-o", str(tmp_path / "r2"), "--repository-path", "models"])
    err = capsys.readouterr().err
    assert rc == 2 and "--repository-path 'models' must be an absolute path" in err and not (tmp_path / "r2").exists()


@needs_library
def test_export_triton_fuses_an_outdir_without_the_fused_file(copy, tmp_path, capsys):
    """An OUTDIR of a sai before model.cpu-fused.onnx: the repository still gets the fused model."""
    (copy / FUSED).unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"][FUSED], manifest["fused"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    repo = tmp_path / "repo"
    _export(capsys, copy, repo)
    model = repo / "sparse_resnet18_onnx" / "1" / "model.onnx"
    assert _ops(model)["sai::SparseBlock"] == 8
    x = _inputs()[0]
    np.testing.assert_allclose(_with_library(model, LIB, x), _portable(copy / "model.onnx", x), atol=2e-4, rtol=1e-4)


def test_info_names_the_fused_model(out, capsys):
    assert main(["info", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("fused cpu"))
    assert FUSED in line and f"{_ops(out / FUSED)['sai::SparseBlock']} sai::SparseBlock nodes" in line
