"""Non-finite numbers never turn into a confident answer (issue 23).

Generators, not single cases: NaN / +inf / -inf at random positions and in random counts (seeded) in a
model's tensors (conv weights, BatchNorm parameters and statistics, mask predictors, DCN offsets, the
classifier) and in the inputs of every backend that runs here. Weights: the checkpoint loader, BN folding
and the ONNX writer refuse them naming the tensor, and nothing is written; ``sai validate`` fails on a model
that holds them. Inputs: ``Engine.infer`` raises InputError on torch (fused and per-op), onnxruntime with
libsai_ort_ops and with the portable function bodies, and TensorRT (through the fakes of test_runtime_trt).
The reference is numpy's ``isfinite`` and float64 arithmetic, not the code under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from runtime_helpers import record_files

import sai.runtime as rt
from sai.cli.main import main
from sai.errors import SaiError
from sai.exporter.export import export_onnx, save_atomic
from sai.models import build_model, fuse_for_inference, load_checkpoint
from sai.runtime.engine import InputError

BAD_VALUES = (float("nan"), float("inf"), float("-inf"))
SEEDS = range(8)


def _small_model(seed: int = 0):
    """A sparse ResNet-18 (width 8) with deformable stages 2 and 4: every kind of tensor a checkpoint holds."""
    return build_model("sparse_resnet18", base_width=8, num_classes=10, dcn_stages=(0, 1, 0, 1), seed=seed).eval()


def _kind(name: str) -> str:
    if "running_" in name or ".bn" in name or name.startswith("bn1.") or "downsample.1." in name:
        return "bn"
    return "conv" if name.endswith("weight") else "other"


def _poison(t: torch.Tensor, rng: np.random.Generator) -> int:
    """Put 1-5 values of NaN/+inf/-inf at random positions of ``t`` (in place); returns how many."""
    flat = t.view(-1)
    count = int(rng.integers(1, min(flat.numel(), 5) + 1))
    for pos in rng.choice(flat.numel(), size=count, replace=False):
        flat[int(pos)] = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
    return count


def _pick(model, rng: np.random.Generator) -> str:
    """A random float tensor of the state dict: a BatchNorm tensor or a conv weight half the time each."""
    names = [k for k, v in model.state_dict().items() if v.is_floating_point() and v.dim() > 0]
    kind = ("bn", "conv", "other")[int(rng.choice(3, p=[0.45, 0.45, 0.1]))]
    pool = [k for k in names if _kind(k) == kind] or names
    return pool[int(rng.integers(len(pool)))]


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_random_nonfinite_weights_are_refused_naming_the_tensor(seed, tmp_path):
    rng = np.random.default_rng(seed)
    model = _small_model()
    name = _pick(model, rng)
    with torch.no_grad():
        _poison(model.state_dict()[name], rng)
    assert not bool(torch.isfinite(model.state_dict()[name]).all())
    # the checkpoint loader
    with pytest.raises(SaiError, match=name.replace(".", r"\.")):
        load_checkpoint(_small_model(), model.state_dict())
    # BN folding on a model that holds them (no checkpoint involved)
    with pytest.raises(SaiError, match=name.replace(".", r"\.")):
        fuse_for_inference(model)
    # the exporter: nothing written
    out = tmp_path / "m.onnx"
    with pytest.raises(SaiError, match="non-finite"):
        export_onnx(model, out, input_shape=(1, 3, 32, 32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_random_negative_running_var_is_refused(seed, tmp_path):
    rng = np.random.default_rng(100 + seed)
    model = _small_model()
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_name = bns[int(rng.integers(len(bns)))]
    bn = model.get_submodule(bn_name)
    chans = rng.choice(bn.num_features, size=int(rng.integers(1, 4)), replace=False)
    with torch.no_grad():
        for c in chans:  # running_var + eps <= 0 there (float64 check of the premise below)
            bn.running_var[int(c)] = -float(rng.uniform(2 * bn.eps, 2.0))
    assert (bn.running_var.double() + bn.eps <= 0).sum() == len(chans)
    key = f"{bn_name}.running_var"
    with pytest.raises(SaiError, match=key.replace(".", r"\.")):
        load_checkpoint(_small_model(), model.state_dict())
    with pytest.raises(SaiError, match=key.replace(".", r"\.") + r" \+ eps <= 0"):
        fuse_for_inference(model)
    with pytest.raises(SaiError, match="running_var"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_fold_overflow_is_refused():
    """Finite statistics whose folded weight overflows float32: gamma / sqrt(var + eps) * w > 3.4e38."""
    model = _small_model()
    blk = model.layer2[1]
    with torch.no_grad():
        blk.conv1.weight[0].fill_(1e36)
        blk.bn1.weight[0] = 1e3
        blk.bn1.running_var[0] = 0.0
    folded = 1e36 * 1e3 / np.sqrt(0.0 + blk.bn1.eps)  # float64 reference
    assert folded > np.finfo(np.float32).max
    with pytest.raises(SaiError, match=r"layer2\.1\.bn1.*non-finite|layer2\.1\.bn1.*inf"):
        fuse_for_inference(model)


def test_checkpoint_with_negative_running_var_exports_nothing(tmp_path, capsys):
    """The probe's case: an official-layout checkpoint with a negative running_var; `sai export` exits
    non-zero with one line naming the checkpoint's key, and writes no file."""
    from test_checkpoint import official_keys
    from test_models import randomize

    model = randomize(build_model("sparse_resnet50", base_width=8, dcn_stages=(0, 1, 1, 1), head="fpn",
                                  fpn_out_channels=16))
    keys = official_keys(counts=(3, 4, 6, 3), width=8, neck=16)
    sd = model.state_dict()
    official = {k: sd[k[len("backbone."):] if k.startswith("backbone.") else k].clone() for k in keys}
    official["backbone.layer1.0.bn1.running_var"][3] = -0.5
    ck = tmp_path / "bad.pth"
    torch.save({"state_dict": official, "meta": {"mmdet_version": "0.6.0"}}, ck)
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["export", "--checkpoint", str(ck), "-o", str(out / "model.onnx"), "--shape", "1,3,64,64"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "backbone.layer1.0.bn1.running_var" in err and "Traceback" not in err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("seed", range(4))
def test_onnx_writer_refuses_nonfinite_initializers(seed, tmp_path):
    rng = np.random.default_rng(200 + seed)
    from onnx import TensorProto, helper, numpy_helper

    w = rng.standard_normal((4, 4)).astype(np.float32)
    _poison(torch.from_numpy(w), rng)  # shares the buffer
    assert not np.isfinite(w).all()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "layer3.0.conv1_weight"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "layer3.0.conv1_weight")])
    model = helper.make_model(graph)
    with pytest.raises(SaiError, match=r"layer3\.0\.conv1_weight"):
        save_atomic(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("value, size, refused", [(-np.inf, 1, False), (np.inf, 1, False), (np.nan, 1, True),
                                                  (-np.inf, 3, True)])
def test_onnx_writer_constant_nodes(value, size, refused, tmp_path):
    """A one-value Constant node holding +-inf is an op constant (the onnx-native target inlines the function
    bodies' "no clamp" bounds), not a weight; NaN, or inf in a larger Constant, is refused."""
    from onnx import TensorProto, helper, numpy_helper

    c = np.full((size,), value, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c")),
         helper.make_node("Max", ["x", "c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])])
    model = helper.make_model(graph)
    if refused:
        with pytest.raises(SaiError, match="non-finite"):
            save_atomic(model, tmp_path / "m.onnx")
        assert list(tmp_path.iterdir()) == []
    else:
        save_atomic(model, tmp_path / "m.onnx")
        assert (tmp_path / "m.onnx").is_file()

@pytest.fixture(scope="module")
def poisoned_outdirs(outdir, tmp_path_factory):
    """Copies of the tiny OUTDIR, each with NaN/inf at random places of one random float initializer
    (recorded in the manifest, so only the values are wrong)."""
    from onnx import numpy_helper

    dirs = []
    for seed in range(3):
        rng = np.random.default_rng(300 + seed)
        dest = tmp_path_factory.mktemp(f"poisoned{seed}") / "out"
        shutil.copytree(outdir, dest)
        model = onnx.load(str(dest / "model.onnx"))
        floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1]
        init = floats[int(rng.integers(len(floats)))]
        arr = numpy_helper.to_array(init).copy()
        _poison(torch.from_numpy(arr), rng)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(model, str(dest / "model.onnx"))
        record_files(dest, "model.onnx")
        dirs.append((dest, init.name))
    return dirs


def test_validate_fails_on_nonfinite_onnx_weights(poisoned_outdirs, capsys):
    for dest, name in poisoned_outdirs:
        rc = main(["validate", str(dest), "--threads", "1", "--iterations", "1"])
        cap = capsys.readouterr()
        assert rc != 0, cap.out
        assert name in cap.err and "non-finite" in cap.err and "Traceback" not in cap.err
        assert "validate: PASSED" not in cap.out


def test_validate_fails_on_nonfinite_outputs():
    """Two backends that agree on a NaN and an inf: agreement is no pass."""
    from sai.runtime.engine import Engine, TensorSpec
    from sai.runtime.validate import validate

    class Fixed(Engine):
        backend = "fixed"

        def __init__(self):
            super().__init__()
            self.inputs = [TensorSpec("input", np.dtype(np.float32), ("batch", 3, 4, 4))]
            self.outputs = [TensorSpec("logits", np.dtype(np.float32), ("batch", 3))]

        def _run(self, feeds):
            y = feeds["input"].sum((2, 3))
            y[0, 1], y[0, 2] = np.nan, np.inf
            return {"logits": y}

    feeds = [{"input": np.ones((1, 3, 4, 4), np.float32)}]
    report = validate({"a": Fixed(), "b": Fixed()}, feeds, atol={"": 1e-4}, rtol={"": 1e-3})
    assert not report.passed
    assert {(o["backend"], o["output"], o["count"]) for o in report.nonfinite} == {("a", "logits", 2),
                                                                                 ("b", "logits", 2)}
    assert "NaN or inf" in report.text() and report.text().endswith("validate: FAILED")


# ----------------------------------------------------------------------------------------------
# inputs, on every backend
# ----------------------------------------------------------------------------------------------


def _trt_engine(tmp_path):
    from test_runtime_trt import FakeCudart, fake_trt

    from sai.runtime.trt_backend import TensorRTEngine

    cudart = FakeCudart()
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    return TensorRTEngine(str(plan), plugin_library="/fake/libsai_trt_plugins.so", streams=2, trt=fake_trt(cudart),
                          cudart=cudart)


BACKENDS = ("torch-fused", "torch-per-op", "onnxruntime-libsai_ort_ops", "onnxruntime-portable", "tensorrt-fake")


@pytest.fixture(params=BACKENDS)
def engine(request, outdir, tmp_path, monkeypatch):
    kind = request.param
    ck = json.loads((outdir / "manifest.json").read_text())["checkpoint"]["path"]
    if kind.startswith("torch"):
        if kind == "torch-per-op":
            monkeypatch.setattr("sai.models.fuse.FAST_BLOCKS", False)
        eng = rt.load(ck, backend="torch", threads=1, verify=False)
    elif kind.startswith("onnxruntime"):
        lib = kind.endswith("libsai_ort_ops")
        if lib:
            from sai.runtime.ort_ops import built_library

            if built_library()[0] is None:
                pytest.skip("libsai_ort_ops.so is not built (make install)")
        monkeypatch.setenv("SAI_ORT_OPS", "1" if lib else "0")
        eng = rt.load(outdir / "model.onnx", backend="onnxruntime", threads=1, verify=False)
        assert eng.custom_ops["kernels"] == ("libsai_ort_ops" if lib else "function bodies")
    else:
        eng = _trt_engine(tmp_path)
    yield eng
    eng.close()


def _image(rng, shape=(2, 3, 32, 32)):
    return rng.standard_normal(shape).astype(np.float32)


def test_random_nonfinite_inputs_are_refused(engine):
    finite = _image(np.random.default_rng(0))
    ok = engine.infer(finite)
    assert all(np.isfinite(v).all() for v in ok.values())
    for seed in range(6):
        rng = np.random.default_rng(400 + seed)
        x = finite.copy()
        n = _poison(torch.from_numpy(x), rng)
        assert (~np.isfinite(x)).sum() == n
        with pytest.raises(InputError, match=f"NaN or infinity: {n} of {x.size} values"):
            engine.infer(x)
    with pytest.raises(InputError, match="NaN or infinity"):
        engine.infer(np.full_like(finite, np.nan))  # an all-NaN image is not classified
    with pytest.raises(InputError, match="beyond the model's dtype"):
        engine.infer(finite.astype(np.float64) * 1e300)  # finite in float64, inf in float32
    again = engine.infer(finite)  # the engine still serves
    for k in ok:
        np.testing.assert_array_equal(again[k], ok[k])


def test_nonfinite_noise_inputs_are_refused(outdir):
    """A stochastic model's noise inputs are checked like the image."""
    ck = json.loads((outdir / "manifest.json").read_text())["checkpoint"]["path"]
    with rt.load(ck, backend="torch", threads=1, verify=False, sampling="stochastic") as eng:
        assert eng.noise_inputs
        x = _image(np.random.default_rng(1))
        for seed in range(3):
            rng = np.random.default_rng(500 + seed)
            noise = eng.noise_for(x.shape)
            name = sorted(noise)[int(rng.integers(len(noise)))]
            _poison(torch.from_numpy(noise[name]), rng)
            with pytest.raises(InputError, match=f"input '{name}' contains NaN or infinity"):
                eng.infer({"input": x, **noise})


def test_infer_cli_and_classify_refuse_a_nan_pixel(outdir, tmp_path):
    """The same refusal through the public ``classify`` (in a fresh process: no state shared with the tests)."""
    code = ("import numpy as np, sai.runtime as rt\n"
            "from sai.runtime.engine import InputError\n"
            f"e = rt.load({str(outdir)!r}, backend='onnxruntime', verify=False)\n"
            "x = np.zeros((1, 3, 32, 32), np.float32); x[0, 2, 7, 9] = np.nan\n"
            "try:\n    e.classify(x)\nexcept InputError as exc:\n    print('REFUSED', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "REFUSED input 'input' contains NaN or infinity: 1 of 3072 values, first at index [0, 2, 7, 9]" in out.stdout, \
        out.stderr
