"""sai.runtime: load(), the Engine interface on onnxruntime and torch, noise, and sai convert's OUTDIR.

References: the PyTorch model run directly (fused and unfused), ``sai.models.noise_shapes``, the
files' own bytes (hashes), and the ONNX graph read back with onnx.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from runtime_helpers import ARCH, OPTIONS, tiny_checkpoint, tiny_model, tiny_outdir

import sai.runtime as rt
from sai.errors import SaiError


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    out, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0, info
    _MODEL["ck"] = tiny_checkpoint(out.parent)
    return out


@pytest.fixture(scope="module")
def torch_engine(outdir):
    with rt.load(outdir, backend="torch") as e:
        yield e


_MODEL = {}


def _direct(x: np.ndarray) -> np.ndarray:
    """The unfused model of the checkpoint's weights, run directly (independent of the runtime)."""
    if "m" not in _MODEL:
        from sai.models import build_model, load_checkpoint

        model = build_model(ARCH, **OPTIONS)
        load_checkpoint(model, str(_MODEL["ck"]))
        _MODEL["m"] = model.eval()
    with torch.no_grad():
        return _MODEL["m"](torch.from_numpy(x)).numpy()


# ---- convert OUTDIR --------------------------------------------------------------------------


def test_convert_outdir_files_manifest_and_skip_line(outdir, tmp_path_factory):
    _, info = tiny_outdir(tmp_path_factory)
    lines = [ln for ln in info["stdout"].splitlines() if ln.startswith("engine skipped")]
    assert len(lines) == 1 and "model.plan not written" in lines[0]
    assert "[1/4]" in info["stderr"] and "[4/4]" in info["stderr"]
    assert sorted(p.name for p in outdir.iterdir()) == [".sai-output.json", "manifest.json", "model.cpu-fused.onnx",
                                                        "model.onnx", "model.trt.onnx"]
    man = json.loads((outdir / "manifest.json").read_text())
    for name, entry in man["files"].items():
        data = (outdir / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert man["arch"] == ARCH and man["engine"]["built"] is False and man["engine"]["skip_reason"]
    assert man["shapes"]["input"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [8, 3, 64, 64]}
    ck = tiny_checkpoint(outdir.parent)
    assert man["checkpoint"]["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert not list(outdir.parent.glob(".out.tmp-*")), "temporary directory left behind"


def test_tensorrt_onnx_has_custom_nodes_no_functions_same_weights(outdir, tmp_path):
    import onnx

    from sai.exporter.metadata import read_metadata
    from sai.runtime.convert import write_tensorrt_onnx

    portable, trt_model = onnx.load(str(outdir / "model.onnx")), onnx.load(str(outdir / "model.trt.onnx"))
    assert any(f.domain == "sai" for f in portable.functions)
    assert not any(f.domain == "sai" for f in trt_model.functions)
    assert read_metadata(trt_model)["target"] == "tensorrt" and read_metadata(portable)["target"] == "portable"
    # the default model.trt.onnx: one SparseBlock node per block whose channel counts are multiples of 16 (the
    # plugin's tiles); sparse_resnet18 at base width 8 has blocks (in, planes) = (8,8) x2, (8,16), (16,16),
    # (16,32), (32,32), (32,64), (64,64): five take the plugin, three stay per-op
    blocks = [(8, 8), (8, 8), (8, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64)]
    fused = sum(1 for i, p in blocks if i % 16 == 0 and p % 16 == 0)
    ops = [n.op_type for n in trt_model.graph.node if n.domain == "sai"]
    assert ops.count("SparseBlock") == fused == 5
    assert set(ops) == {"SparseBlock", "SparseSampleConv", "Interpolate"}
    manifest = json.loads((outdir / "manifest.json").read_text())
    assert manifest["tensorrt_onnx"]["trt_blocks"] == "fused" and manifest["tensorrt_onnx"]["sparse_blocks"] == 5
    # --trt-blocks per-op: the portable graph with the functions stripped, the same weights
    write_tensorrt_onnx(outdir / "model.onnx", tmp_path / "per-op.onnx", "per-op")
    per_op = onnx.load(str(tmp_path / "per-op.onnx"))
    assert not any(f.domain == "sai" for f in per_op.functions) and any(n.domain == "sai" for n in per_op.graph.node)
    w1 = {i.name: onnx.numpy_helper.to_array(i) for i in portable.graph.initializer}
    w2 = {i.name: onnx.numpy_helper.to_array(i) for i in per_op.graph.initializer}
    assert w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)


# ---- engines ---------------------------------------------------------------------------------


def test_specs(ort_engine, torch_engine):
    for e in (ort_engine, torch_engine):
        assert [s.name for s in e.inputs] == ["input"]
        (spec,) = e.inputs
        assert spec.dtype == np.float32 and spec.shape[1] == 3 and spec.is_dynamic
        assert not isinstance(spec.shape[0], int) and not isinstance(spec.shape[2], int)
        assert [s.name for s in e.outputs] == ["logits"] and e.outputs[0].shape[1] == OPTIONS["num_classes"]
    assert ort_engine.backend == "onnxruntime" and torch_engine.backend == "torch"
    assert ort_engine.metadata["arch"] == ARCH and ort_engine.describe()["sampling"] == "deterministic"


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 32, 32), (2, 3, 40, 56), (1, 3, 33, 47)])
def test_backends_match_direct_inference(ort_engine, torch_engine, shape):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    ref = _direct(x)
    for e in (ort_engine, torch_engine):
        out = e.infer(x)
        assert list(out) == ["logits"] and out["logits"].shape == ref.shape
        np.testing.assert_allclose(out["logits"], ref, rtol=1e-4, atol=1e-4, err_msg=e.backend)


def test_dict_feeds_float64_cast_and_async(ort_engine):
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    ref = _direct(x.astype(np.float32))
    np.testing.assert_allclose(ort_engine.infer({"input": x})["logits"], ref, rtol=1e-4, atol=1e-4)
    xs = [np.random.default_rng(i).standard_normal((1 + i % 3, 3, 32, 32)).astype(np.float32) for i in range(6)]
    futures = [ort_engine.infer_async(v) for v in xs]
    for v, f in zip(xs, futures, strict=True):
        np.testing.assert_allclose(f.result(timeout=60)["logits"], _direct(v), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("feeds, message", [
    (np.zeros((3, 32, 32), np.float32), "shape"),
    (np.zeros((1, 4, 32, 32), np.float32), "expected"),
    ({"image": np.zeros((1, 3, 32, 32), np.float32)}, "unknown input"),
    (np.array([["a"]]), "dtype"),
    (np.zeros((0, 3, 32, 32), np.float32), "empty"),
    ({}, "missing input"),
])
def test_bad_feeds_raise_input_error(ort_engine, feeds, message):
    with pytest.raises(rt.InputError, match=message):
        ort_engine.infer(feeds)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, np.int8, np.bool_])
def test_undeclared_dtype_rejected_with_the_fix(request, backend, dtype):
    """Raw pixels (uint8), ints and bools were cast to float32 silently; now an InputError names the input,
    the dtype given, the dtype expected and how to normalise (the export's input_norm)."""
    engine = request.getfixturevalue("ort_engine" if backend == "onnxruntime" else "torch_engine")
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32)).astype(dtype)
    with pytest.raises(rt.InputError) as exc:
        engine.infer(x)
    msg = str(exc.value)
    assert f"input 'input' has dtype {np.dtype(dtype).name}, but the model takes float32" in msg
    assert "convert it to float32 and normalise it as the model's input_norm says" in msg
    assert "mean [123.675, 116.28, 103.53]" in msg and "\n" not in msg
    with pytest.raises(rt.InputError, match="has dtype"):
        engine.infer_async({"input": x}).result(timeout=60)


def test_noise_of_undeclared_dtype_rejected(tmp_path):
    from sai.models import save_checkpoint

    ck = save_checkpoint(tiny_model(), tmp_path / "m.pth")
    with rt.load(ck, sampling="stochastic", seed=0) as e:
        x = np.zeros((1, 3, 32, 32), np.float32)
        noise = {k: (v * 255).astype(np.uint8) for k, v in e.noise_for(x.shape).items()}
        with pytest.raises(rt.InputError, match="noise.*has dtype uint8, but the model takes float32; pass uniform"):
            e.infer({"input": x, **noise})


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_infer_async_after_close_raises_sai_error(outdir, backend):
    x = np.zeros((1, 3, 32, 32), np.float32)
    used = rt.load(outdir, backend=backend, threads=1)
    used.infer_async(x).result(timeout=60)  # the worker pool exists, then is shut down
    fresh = rt.load(outdir, backend=backend, threads=1)  # no pool yet
    for e in (used, fresh):
        e.close()
        with pytest.raises(SaiError, match="engine is closed; load the model again"):
            e.infer_async(x)
        with pytest.raises(SaiError, match="engine is closed"):
            e.infer(x)


# ---- noise -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sparse_resnet18", "sparse_resnet50"])
@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (64, 100), (97, 31)])
def test_noise_shape_matches_model_rule(arch, hw):
    from sai.models import build_model, noise_shapes

    model = build_model(arch, base_width=8, sampling="stochastic")
    shape = (2, 3, *hw)
    ref = dict(noise_shapes(model, shape))
    specs = model.noise_specs()
    assert [n for n, _ in specs] == list(ref)
    for name, stride in specs:
        assert rt.noise_shape(shape, stride) == tuple(ref[name]), name


def test_stochastic_torch_engine_seeded_noise(tmp_path):
    from sai.models import save_checkpoint

    model = tiny_model()
    ck = save_checkpoint(model, tmp_path / "m.pth")
    x = np.random.default_rng(3).standard_normal((2, 3, 40, 40)).astype(np.float32)
    a, b = rt.load(ck, sampling="stochastic", seed=7), rt.load(ck, sampling="stochastic", seed=7)
    c = rt.load(ck, sampling="stochastic", seed=8)
    assert len(a.noise_inputs) == 16 and len(a.inputs) == 17
    ya, yb, yc = a.infer(x)["logits"], b.infer(x)["logits"], c.infer(x)["logits"]
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    # explicit noise: equals the unfused model run with the same uniforms
    noise = a.noise_for(x.shape)
    out = a.infer({"input": x, **noise})["logits"]
    from sai.models import set_sampling

    set_sampling(model, "stochastic")
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x), *[torch.from_numpy(noise[n]) for n, _ in a.noise_inputs]).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    bad = dict(noise)
    bad[a.noise_inputs[0][0]] = noise[a.noise_inputs[0][0]][:, :, :-1]
    with pytest.raises(rt.InputError, match="noise input"):
        a.infer({"input": x, **bad})


# ---- load / resolve --------------------------------------------------------------------------


def test_resolve_paths(outdir, tmp_path):
    assert rt.resolve(outdir).backend == "onnxruntime"
    assert rt.resolve(outdir, "torch").file.name == "tiny.pth"
    assert rt.resolve(outdir / "model.onnx").backend == "onnxruntime"
    with pytest.raises(SaiError, match="no model.plan"):
        rt.resolve(outdir, "tensorrt")
    with pytest.raises(SaiError, match="backend must be one of"):
        rt.resolve(outdir, "tvm")
    with pytest.raises(SaiError, match="does not exist"):
        rt.load(tmp_path / "nope.onnx")
    (tmp_path / "x.bin2").write_bytes(b"")
    with pytest.raises(SaiError, match="suffix"):
        rt.resolve(tmp_path / "x.bin2")
    with pytest.raises(SaiError, match="cannot run an ONNX file"):
        rt.resolve(outdir / "model.onnx", "torch")


def test_ort_providers():
    from sai.runtime.ort_backend import providers_for

    assert providers_for("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(SaiError, match="onnxruntime-gpu"):
        providers_for("cuda", ["CPUExecutionProvider"])
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    p = providers_for("tensorrt", avail, "/x/libsai_trt_plugins.so")
    assert p[0] == ("TensorrtExecutionProvider", {"trt_extra_plugin_lib_paths": "/x/libsai_trt_plugins.so"})
    with pytest.raises(SaiError, match="make plugins"):
        providers_for("tensorrt", avail, None)
