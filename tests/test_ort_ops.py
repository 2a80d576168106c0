"""libsai_ort_ops.so, the onnxruntime custom-op library of the sai ops (models/csrc/ort/, runtime/ort_ops.py).

Against independent references: the PyTorch reference ops (sai.models.ops, docs/design.md 3.2 / 3.3) and
the portable model's function bodies on plain onnxruntime. Single-op models across the attribute
space, deformable convs, fp16, a whole exported model with and without the library, attributes the
kernels cannot run rejected at session creation with the node and attribute named, run-time shape
errors as errors (not crashes), and the runtime's automatic use of the library.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper  # noqa: E402

from sai.benchmarks.opmodels import (  # noqa: E402
    deform_sparse_sample_conv_model,
    interpolate_model,
    sparse_sample_conv_model,
)
from sai.exporter.functions import DOMAIN  # noqa: E402
from sai.models import ops  # noqa: E402
from sai.runtime import ort_ops  # noqa: E402

LIB, WHY = ort_ops.built_library()
pytestmark = pytest.mark.skipif(LIB is None, reason=f"libsai_ort_ops.so not available: {WHY}")


def session(model, library: bool = True, profile: bool = False, threads: int = 2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if library:
        so.register_custom_ops_library(str(LIB))
    if profile:  # the profile goes to the temp folder, never the working directory
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"sai_ort_ops_profile_{os.getpid()}")
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def soft_mask(rng, shape, density):
    """A sampling mask as the model makes it: 0 or soft values in [0.5, 1] (1 where the grid prior is)."""
    keep = rng.random(shape) < density
    soft = rng.uniform(0.5, 1.0, shape)
    soft[..., ::3, ::3] = 1.0
    return np.where(keep, soft, 0.0).astype(np.float32)


def conv_reference(x, m, w, b, off, stride, pads, dil, group, dg, act):
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    return ops.sparse_sample_conv_reference(t(x), t(m), t(w), t(b), t(off), list(stride), list(pads), list(dil),
                                            group, dg, act).numpy()


def sai_node_ops(sess) -> set:
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    import os

    os.unlink(path)
    return {e["args"].get("op_name") for e in events if e.get("cat") == "Node"}


# ---- SparseSampleConv across the attribute space ---------------------------------------------------

CONV_CASES = [
    # (cin, cout, k, stride, pads, dilation, group, activation, bias, N, H, W, density)
    (4, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "relu", True, 1, 9, 11, 0.4),
    (4, 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, "none", True, 2, 13, 10, 0.3),
    (6, 6, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 3, "relu", False, 2, 12, 9, 0.5),
    (8, 4, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, "none", False, 1, 7, 7, 0.25),
    (8, 16, (1, 1), (2, 1), (0, 0, 0, 0), (1, 1), 2, "relu", True, 3, 8, 6, 0.6),
    (3, 5, (5, 3), (1, 2), (2, 1, 1, 0), (1, 1), 1, "relu", True, 1, 10, 12, 0.5),
    (4, 4, (3, 3), (1, 1), (0, 2, 1, 0), (1, 3), 4, "none", True, 2, 11, 14, 0.7),
    (16, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "relu", True, 1, 17, 23, 0.1),
    (5, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "none", True, 1, 6, 6, 0.0),
    (5, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "relu", True, 1, 6, 6, 1.0),
]


def _out_size(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[2][0]}x{c[2][1]}s{c[3][0]}{c[3][1]}g{c[6]}r{c[12]}")
def test_sparse_sample_conv_matches_reference_and_bodies(case):
    cin, cout, (kh, kw), stride, pads, dil, group, act, with_bias, n, h, w, density = case
    rng = np.random.default_rng(hash(case) % 2**32)
    wt = (rng.standard_normal((cout, cin // group, kh, kw)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if with_bias else None
    model = sparse_sample_conv_model(wt, b, stride=stride, pads=pads, dilation=dil, group=group, activation=act)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    ho, wo = _out_size(h, kh, stride[0], pads[0], pads[2], dil[0]), _out_size(w, kw, stride[1], pads[1], pads[3], dil[1])
    m = soft_mask(rng, (n, 1, ho, wo), density)
    feed = {"X": x, "M": m}
    y = session(model).run(None, feed)[0]
    ref = conv_reference(x, m, wt, b, None, stride, pads, dil, group, 1, act)
    body = session(model, library=False).run(None, feed)[0]
    assert y.shape == ref.shape == (n, cout, ho, wo)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(y, body, atol=1e-4, rtol=1e-4)
    assert np.all(y[np.broadcast_to(m == 0, y.shape)] == 0)  # exactly 0 where M == 0


@pytest.mark.parametrize("group,dg,stride,with_bias", [(1, 1, 1, True), (1, 2, 1, False), (2, 2, 2, True),
                                                       (1, 4, 2, True)])
def test_deformable_sparse_sample_conv(group, dg, stride, with_bias):
    rng = np.random.default_rng(7 + dg * 10 + group)
    cin, cout, h, w, n = 8, 6, 11, 9, 2
    wt = (rng.standard_normal((cout, cin // group, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if with_bias else None
    model = deform_sparse_sample_conv_model(wt, b, stride=(stride, stride), pads=(1, 1, 1, 1), group=group,
                                            deform_groups=dg, activation="relu")
    ho, wo = _out_size(h, 3, stride, 1, 1, 1), _out_size(w, 3, stride, 1, 1, 1)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    off = (rng.standard_normal((n, 2 * dg * 9, ho, wo)) * 2.0).astype(np.float32)
    m = soft_mask(rng, (n, 1, ho, wo), 0.5)
    feed = {"X": x, "M": m, "Offset": off}
    y = session(model).run(None, feed)[0]
    ref = conv_reference(x, m, wt, b if b is not None else np.zeros(cout, np.float32), off, (stride, stride),
                         (1, 1, 1, 1), (1, 1), group, dg, "relu")
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(y, session(model, library=False).run(None, feed)[0], atol=1e-4, rtol=1e-4)


# ---- Interpolate -------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,sigma,kind,shape", [
    (7, 1.3, "soft", (2, 5, 13, 17)), (3, 0.7, "soft", (1, 3, 8, 8)), (7, 2.0, "binary", (1, 4, 20, 9)),
    (5, 1.0, "zeros", (1, 2, 6, 7)), (7, 1.0, "ones", (2, 3, 5, 5)), (1, 1.0, "soft", (1, 2, 4, 4)),
])
def test_interpolate_matches_reference(k, sigma, kind, shape):
    rng = np.random.default_rng(k * 100 + shape[2])
    n, c, h, w = shape
    f = rng.standard_normal(shape).astype(np.float32)
    m = {"soft": lambda: soft_mask(rng, (n, 1, h, w), 0.4),
         "binary": lambda: (rng.random((n, 1, h, w)) < 0.3).astype(np.float32),
         "zeros": lambda: np.zeros((n, 1, h, w), np.float32),
         "ones": lambda: np.ones((n, 1, h, w), np.float32)}[kind]()
    model = interpolate_model(c, sigma, kernel_size=k)
    y = session(model).run(None, {"F": f, "M": m})[0]
    ref = ops.interpolate_reference(torch.from_numpy(f), torch.from_numpy(m), sigma, k, 1e-5).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(y, session(model, library=False).run(None, {"F": f, "M": m})[0], atol=1e-4, rtol=1e-4)


def test_interpolate_ignores_features_where_mask_is_zero():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    m = soft_mask(rng, (1, 1, 9, 9), 0.5)
    model = interpolate_model(3, 1.2)
    y = session(model).run(None, {"F": f, "M": m})[0]
    f2 = f.copy()
    f2[np.broadcast_to(m == 0, f.shape)] = np.nan
    np.testing.assert_array_equal(session(model).run(None, {"F": f2, "M": m})[0], y)


def test_fp16_nodes_run_on_the_library():
    rng = np.random.default_rng(5)
    wt = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    model = sparse_sample_conv_model(wt, None, pads=(1, 1, 1, 1), activation="relu")
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    for init in model.graph.initializer:
        arr = np.frombuffer(init.raw_data, np.float32) if init.raw_data else np.array(init.float_data, np.float32)
        init.CopyFrom(helper.make_tensor(init.name, TensorProto.FLOAT16, list(init.dims),
                                         arr.astype(np.float16).tobytes(), raw=True))
    x = rng.standard_normal((1, 4, 10, 10)).astype(np.float16)
    m = soft_mask(rng, (1, 1, 10, 10), 0.5).astype(np.float16)
    sess = session(model, profile=True)
    y = sess.run(None, {"X": x, "M": m})[0]
    assert y.dtype == np.float16 and "SparseSampleConv" in sai_node_ops(sess)
    ref = conv_reference(x.astype(np.float32), m.astype(np.float32), wt.astype(np.float16).astype(np.float32),
                         None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, "relu")
    np.testing.assert_allclose(y.astype(np.float32), ref, atol=2e-2, rtol=2e-2)


def test_registered_custom_op_takes_precedence_over_the_local_function():
    """With the library the sai node itself runs (one SparseSampleConv kernel in the profile); without it
    onnxruntime inlines the function body (its standard ops, no SparseSampleConv node)."""
    wt = np.ones((4, 4, 3, 3), np.float32)
    model = sparse_sample_conv_model(wt, None, pads=(1, 1, 1, 1))
    feed = {"X": np.ones((1, 4, 6, 6), np.float32), "M": np.ones((1, 1, 6, 6), np.float32)}
    with_lib, without = session(model, profile=True), session(model, library=False, profile=True)
    with_lib.run(None, feed)
    without.run(None, feed)
    assert sai_node_ops(with_lib) == {"SparseSampleConv"}
    ops_without = sai_node_ops(without)
    assert "SparseSampleConv" not in ops_without and "MatMul" in ops_without


# ---- bad input ---------------------------------------------------------------------------------------

def _conv_node_model(name="conv_7", inputs=("X", "M", "W", "B"), offset_channels=18, x_channels=4, **attrs):
    base = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, deform_groups=1, activation="relu")
    base.update(attrs)
    base = {k: v for k, v in base.items() if v is not None}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", x_channels, "H", "W"]),
                    helper.make_tensor_value_info("M", TensorProto.FLOAT, ["N", 1, "H", "W"])]
    if "Offset" in inputs:
        graph_inputs.append(helper.make_tensor_value_info("Offset", TensorProto.FLOAT, ["N", offset_channels, "H", "W"]))
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [8, 4, 3, 3], np.zeros(8 * 36, np.float32).tolist()),
             helper.make_tensor("B", TensorProto.FLOAT, [8], np.zeros(8, np.float32).tolist())]
    node = helper.make_node("SparseSampleConv", list(inputs), ["Y"], name=name, domain=DOMAIN, **base)
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)],
                             ir_version=10)


BAD_CONV = [
    (dict(strides=[0, 1]), "strides"),
    (dict(strides=[1, 1, 1]), "strides"),
    (dict(strides=[1.0, 1.0]), "strides"),
    (dict(pads=[1, 1]), "pads"),
    (dict(pads=[1, -1, 1, 1]), "pads"),
    (dict(dilations=[0, 1]), "dilations"),
    (dict(group=0), "group"),
    (dict(group=3), "group"),
    (dict(group=2), "group"),  # W [8, 4, ...] with group 2 needs 8 input channels, X has 4
    (dict(activation="gelu"), "activation"),
    (dict(activation=3), "activation"),
    (dict(deform_groups=0), "deform_groups"),
    (dict(deform_groups=3), "deform_groups"),
    (dict(inputs=("X", "M", "W", "B", "Offset"), offset_channels=17), "deform_groups"),
]


@pytest.mark.parametrize("attrs,attr", BAD_CONV, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD_CONV)])
def test_bad_conv_attributes_fail_at_session_creation(attrs, attr):
    model = _conv_node_model(**attrs)
    with pytest.raises(Exception) as info:
        session(model)
    msg = str(info.value)
    assert "conv_7" in msg and f"'{attr}'" in msg and "SparseSampleConv" in msg, msg


@pytest.mark.parametrize("attrs,attr", [(dict(kernel_size=4), "kernel_size"), (dict(kernel_size=33), "kernel_size"),
                                        (dict(kernel_size=-1), "kernel_size"), (dict(eps=-1.0), "eps"),
                                        (dict(sigma=float("nan")), "sigma"), (dict(sigma="x"), "sigma")])
def test_bad_interpolate_attributes_fail_at_session_creation(attrs, attr):
    base = dict(kernel_size=7, sigma=1.0, eps=1e-5)
    base.update(attrs)
    node = helper.make_node("Interpolate", ["F", "M"], ["Y"], name="interp_3", domain=DOMAIN, **base)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("F", TensorProto.FLOAT, ["N", 2, "H", "W"]),
                                            helper.make_tensor_value_info("M", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)],
                              ir_version=10)
    with pytest.raises(Exception) as info:
        session(model)
    msg = str(info.value)
    assert "interp_3" in msg and f"'{attr}'" in msg and "Interpolate" in msg, msg


def test_shape_mismatch_at_run_time_is_an_error_naming_the_node():
    model = _conv_node_model(x_channels="C")
    sess = session(model)
    x = np.zeros((1, 4, 6, 6), np.float32)
    assert sess.run(None, {"X": x, "M": np.ones((1, 1, 6, 6), np.float32)})[0].shape == (1, 8, 6, 6)
    for bad in (np.ones((1, 1, 5, 6), np.float32), np.ones((2, 1, 6, 6), np.float32)):
        with pytest.raises(Exception) as info:
            sess.run(None, {"X": x, "M": bad})
        assert "conv_7" in str(info.value) and "M must be" in str(info.value)
    with pytest.raises(Exception) as info:  # X channels that do not fit W
        sess.run(None, {"X": np.zeros((1, 5, 6, 6), np.float32), "M": np.ones((1, 1, 6, 6), np.float32)})
    assert "conv_7" in str(info.value)


def test_empty_batch():
    model = _conv_node_model()
    y = session(model).run(None, {"X": np.zeros((0, 4, 6, 6), np.float32), "M": np.zeros((0, 1, 6, 6), np.float32)})
    assert y[0].shape == (0, 8, 6, 6)


def test_library_exports_only_register_custom_ops():
    out = subprocess.run(["nm", "-D", "--defined-only", str(LIB)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("nm not available")
    names = {ln.split()[-1] for ln in out.stdout.splitlines() if ln.strip()}
    assert names == {"RegisterCustomOps"}, names


# ---- the runtime uses it automatically ------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A sparse_resnet50 (bottlenecks: pointwise convs, a deformable conv2 in stage 2..4) at width 8,
    masks about half sparse, as the portable ONNX with sparse bodies."""
    from runtime_helpers import half_sparse

    from sai.exporter import export_onnx
    from sai.models import build_model

    torch.manual_seed(0)
    model = half_sparse(build_model("sparse_resnet50", base_width=8, num_classes=10, dcn_stages=(0, 1, 1, 1),
                                    seed=0)).eval()
    path = tmp_path_factory.mktemp("ortops") / "m.onnx"
    export_onnx(model, path, input_shape=(1, 3, 64, 64))
    return model, path


def test_whole_model_with_and_without_library_agree(exported, monkeypatch):
    import sai.runtime as rt

    model, path = exported
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    monkeypatch.delenv("SAI_ORT_OPS", raising=False)
    with rt.load(str(path), backend="onnxruntime", threads=2) as eng:  # on by default: every block fuses
        desc = eng.describe()
        assert desc["custom_ops"]["kernels"] == "libsai_ort_ops" and desc["custom_ops"]["library"] == str(LIB)
        assert desc["custom_ops"]["fused_blocks"] == sum(1 for _ in model.sparse_blocks())  # deformable ones too
        got = eng.infer(x)
    monkeypatch.setenv("SAI_ORT_OPS", "0")
    with rt.load(str(path), backend="onnxruntime", threads=2) as eng:
        assert eng.describe()["custom_ops"]["kernels"] == "function bodies"
        portable = eng.infer(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    ref = ref if isinstance(ref, torch.Tensor) else next(iter(ref.values())) if isinstance(ref, dict) else ref[0]
    assert got.keys() == portable.keys()
    for k in got:
        np.testing.assert_allclose(got[k], portable[k], atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(got["logits"], ref.numpy(), atol=1e-3, rtol=1e-3)


def test_missing_library_is_one_log_line_and_the_portable_path(exported, monkeypatch, caplog):
    import sai.runtime as rt

    _, path = exported
    monkeypatch.setenv("SAI_ORT_OPS_LIBRARY", "/nonexistent/libsai_ort_ops.so")
    logger = logging.getLogger("sai")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.INFO, logger="sai.runtime.onnxruntime"):
        with rt.load(str(path), backend="onnxruntime", threads=1) as eng:
            info = eng.describe()["custom_ops"]
            y = eng.infer(np.zeros((1, 3, 64, 64), np.float32))
    assert info["library"] is None and "does not exist" in info["note"] and y["logits"].shape == (1, 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "sai.runtime.onnxruntime"]
    assert len(lines) == 1 and "function bodies" in lines[0], lines


def test_doctor_reports_the_library():
    code = ("import json, sys\nfrom sai.cli.doctor import run_checks\n"
            "print(json.dumps([c.__dict__ for c in run_checks() if 'ort ops' in c.name]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 1 and rows[0]["ok"] and str(LIB) in rows[0]["detail"], out.stdout + out.stderr


def test_bench_ops_onnx_section_has_the_custom_op_case(tmp_path):
    """`sai bench-ops --sections onnx`: per size a custom-op model case beside the portable one (tiny sizes
    here; a benchmark, so only its shape is checked, never its speed)."""
    from sai.benchmarks.opbench import bench_onnx

    cases = bench_onnx(1, "sparse_resnet18", [(64, 64), (64, 96)], 0.3, threads=1, workdir=str(tmp_path),
                       options={"base_width": 8})
    for size in ("64x64", "64x96"):
        portable = [c for c in cases if c.name.startswith("portable sparse_resnet18") and c.name.endswith(size)]
        custom = [c for c in cases if c.name.startswith("custom-op sparse_resnet18") and c.name.endswith(size)]
        assert len(portable) == 1 and len(custom) == 1, [c.name for c in cases]
        c = custom[0]
        assert c.sparse_ms > 0 and c.ratio > 0 and c.extra["vs_portable"] > 0 and not c.note
        assert c.extra["backend"] == "onnxruntime+libsai_ort_ops" and portable[0].extra["backend"] == "onnxruntime"
        assert c.ratio_spread[0] <= c.ratio_spread[1]
