"""sai.runtime.ort_fuse + libsai_ort_ops.so's SparseBlock op: whole sparse blocks as one node on onnxruntime.

The fused sessions are checked against independent references: the portable model's function bodies on
plain onnxruntime (the onnxscript bodies, no library) and the PyTorch model, on the same exported
models; the rewrite's structure (which blocks fuse, which are left alone); the SparseBlock op's
attribute and input checks at session creation (naming the node and what is wrong) and its run-time
shape errors; and the runtime's automatic use (``sai.runtime.load``, ``SAI_ORT_OPS``).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sai.constants import DOMAIN, SPARSE_BLOCK  # noqa: E402
from sai.runtime import ort_ops  # noqa: E402
from sai.runtime.ort_fuse import fuse_sparse_blocks  # noqa: E402

LIB, WHY = ort_ops.built_library()
pytestmark = pytest.mark.skipif(LIB is None, reason=f"libsai_ort_ops.so not available: {WHY}")


def session(model, library: bool = True, threads: int = 2):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if library:
        so.register_custom_ops_library(str(LIB))
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _model(arch, **options):
    """A sparse model with random mask predictors, about 30-60% of the positions active, and offsets of
    about a pixel in its deformable blocks."""
    from runtime_helpers import half_sparse

    from sai.models import build_model

    torch.manual_seed(0)
    return half_sparse(build_model(arch, seed=0, **options), offsets=True).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (torch model, portable ONNX path)}: Bottlenecks (sparse_resnet50, detection outputs c2..c5,
    no head), BasicBlocks (sparse_resnet18 with a classifier), and sparse_resnet50 with deformable stages
    2-4."""
    from sai.exporter import export_onnx

    d = tmp_path_factory.mktemp("ortfuse")
    out = {}
    for name, arch, opts in [("r50", "sparse_resnet50", dict(base_width=16, head="none")),
                             ("r18", "sparse_resnet18", dict(base_width=16, num_classes=10)),
                             ("r50dcn", "sparse_resnet50", dict(base_width=8, head="none", dcn_stages=(0, 1, 1, 1)))]:
        model = _model(arch, **opts)
        path = d / f"{name}.onnx"
        export_onnx(model, path, input_shape=(1, 3, 64, 96), check=False)
        out[name] = (model, path)
    return out


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _check_against_references(model, path, fused: onnx.ModelProto, x, atol=2e-4):
    got = session(fused).run(None, {"input": x})
    portable = session(str(path), library=False).run(None, {"input": x})  # the function bodies
    per_op = session(str(path)).run(None, {"input": x})  # the library's per-op kernels
    assert len(got) == len(portable)
    for g, p, q in zip(got, portable, per_op, strict=True):
        assert g.shape == p.shape and np.isfinite(g).all()
        np.testing.assert_allclose(g, p, atol=atol, rtol=1e-4)
        np.testing.assert_allclose(g, q, atol=atol, rtol=1e-4)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    ref = list(ref.values()) if isinstance(ref, dict) else [ref] if isinstance(ref, torch.Tensor) else list(ref)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["r50", "r18"])
def test_every_block_fuses_and_matches_the_function_bodies(exported, name):
    model, path = exported[name]
    fused = onnx.load(str(path))
    n = fuse_sparse_blocks(fused)
    blocks = sum(1 for _ in model.sparse_blocks())
    assert n == blocks
    ops = _ops(fused)
    assert ops[SPARSE_BLOCK] == blocks and ops["SparseSampleConv"] == 0 and ops["Interpolate"] == 0
    # between two fused blocks no Transpose: only the first block reads a transposed input, and no
    # Transpose undoes another one
    made = {o: node for node in fused.graph.node for o in node.output}
    x_inputs = [made.get(node.input[0]) for node in fused.graph.node if node.op_type == SPARSE_BLOCK]
    assert sum(1 for p in x_inputs if p is not None and p.op_type == "Transpose") == 1
    assert not any(node.op_type == "Transpose" and getattr(made.get(node.input[0]), "op_type", "") == "Transpose"
                   for node in fused.graph.node)
    rng = np.random.default_rng(0)
    # batch 2 at the export size, and another size through the same dynamic-H/W model
    for shape in [(2, 3, 64, 96), (1, 3, 80, 72)]:
        _check_against_references(model, path, fused, rng.standard_normal(shape).astype(np.float32))


def test_deformable_blocks_fuse_with_their_offset_conv(exported):
    model, path = exported["r50dcn"]
    fused = onnx.load(str(path))
    assert fuse_sparse_blocks(fused) == sum(1 for _ in model.sparse_blocks())  # stages 2-4: deformable conv2
    ops = _ops(fused)
    assert ops["SparseSampleConv"] == 0 and ops["Interpolate"] == 0
    offset_inputs = [n.input[11] for n in fused.graph.node if n.op_type == SPARSE_BLOCK]
    assert sum(1 for i in offset_inputs if i != "sai_fuse.empty") == sum(1 for _, b in model.sparse_blocks() if b.with_dcn)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    _check_against_references(model, path, fused, x)


def test_a_model_without_sparse_blocks_is_unchanged(tmp_path):
    from sai.exporter import export_onnx
    from sai.models import build_model

    path = tmp_path / "dense.onnx"
    export_onnx(build_model("resnet18", base_width=8, head="none").eval(), path, input_shape=(1, 3, 32, 32),
                check=False)
    m = onnx.load(str(path))
    before = m.SerializeToString()
    assert fuse_sparse_blocks(m) == 0 and m.SerializeToString() == before


# ---- the SparseBlock op's checks ----------------------------------------------------------------

def _block_model(attrs=None, wa_shape=(8, 16, 1, 1), x_channels=16, constant_wa=True, name="blk_3", ba_size=8,
                 wc_cout=16):
    """One SparseBlock node: a Bottleneck 16 -> 8 -> 8 -> 16 without downsample on an NHWC input."""
    rng = np.random.default_rng(0)
    inits = {
        "WA": rng.standard_normal(wa_shape).astype(np.float32), "BA": np.zeros(ba_size, np.float32),
        "WB": rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "BB": np.zeros(8, np.float32),
        "WC": rng.standard_normal((wc_cout, 8, 1, 1)).astype(np.float32), "TB": np.zeros(wc_cout, np.float32),
        "E": np.zeros(0, np.float32),
    }
    a = dict(stride_a=1, stride_b=1, relu_b=1, down_stride=1, offset_stride=1, sigma1=1.0, sigma2=1.0, kernel_size=7,
             eps=1e-5)
    a.update(attrs or {})
    inputs = ["X", "M1", "M2", "WA", "BA", "WB", "BB", "WC", "TB", "E", "E", "E", "E"]
    node = helper.make_node(SPARSE_BLOCK, inputs, ["Y"], name=name, domain=DOMAIN, **a)
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 6, 7, x_channels]),
                    helper.make_tensor_value_info("M1", TensorProto.FLOAT, [1, 1, 6, 7]),
                    helper.make_tensor_value_info("M2", TensorProto.FLOAT, [1, 1, 6, 7])]
    if not constant_wa:
        graph_inputs.append(helper.make_tensor_value_info("WA", TensorProto.FLOAT, list(wa_shape)))
        del inits["WA"]
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                             ir_version=9)


def _nchw_reference(model: onnx.ModelProto, x_nhwc, m1, m2):
    """The node's formula (docs/design.md 3.4) from the PyTorch reference ops in float64."""
    from sai.models import ops

    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()).double() for t in model.graph.initializer}
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).double()
    m1t, m2t = torch.from_numpy(m1).double(), torch.from_numpy(m2).double()
    a = ops.sparse_sample_conv_reference(x, m1t, w["WA"], w["BA"], None, [1, 1], [0] * 4, [1, 1], 1, 1, "relu")
    a = ops.interpolate_reference(a, m1t, 1.0, 7, 1e-5)
    b = ops.sparse_sample_conv_reference(a, m2t, w["WB"], w["BB"], None, [1, 1], [1] * 4, [1, 1], 1, 1, "relu")
    b = ops.sparse_sample_conv_reference(b, m2t, w["WC"], None, None, [1, 1], [0] * 4, [1, 1], 1, 1, "none")
    out = torch.relu(ops.interpolate_reference(b, m2t, 1.0, 7, 1e-5) + x)
    return out.permute(0, 2, 3, 1).numpy()


def test_one_node_matches_the_reference_formula():
    m = _block_model()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 6, 7, 16)).astype(np.float32)
    m1 = np.where(rng.random((1, 1, 6, 7)) < 0.4, rng.uniform(0.5, 1, (1, 1, 6, 7)), 0).astype(np.float32)
    m2 = np.where(rng.random((1, 1, 6, 7)) < 0.4, 1.0, 0).astype(np.float32)
    (y,) = session(m).run(None, {"X": x, "M1": m1, "M2": m2})
    np.testing.assert_allclose(y, _nchw_reference(m, x, m1, m2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attrs,what", [
    (dict(stride_a=0), "attribute 'stride_a' must be >= 1"),
    (dict(down_stride=-1), "attribute 'down_stride' must be >= 1"),
    (dict(relu_b=2), "attribute 'relu_b' must be 0 or 1"),
    (dict(kernel_size=4), "attribute 'kernel_size' must be odd"),
    (dict(sigma1=float("nan")), "attribute 'sigma1' must be finite"),
    (dict(eps=-1.0), "'eps' finite and >= 0"),
])
def test_bad_attributes_fail_at_session_creation_naming_node_and_attribute(attrs, what):
    with pytest.raises(Exception) as info:
        session(_block_model(attrs))
    msg = str(info.value)
    assert "sai::SparseBlock node 'blk_3'" in msg and what in msg, msg


@pytest.mark.parametrize("kwargs,what", [
    (dict(constant_wa=False), "input 3 (WA) must be a constant initializer"),
    (dict(wa_shape=(8, 16, 2, 2)), "input 3 (WA) must be a conv weight [Cout, Cin, k, k] with k odd"),
    (dict(wa_shape=(4, 16, 1, 1)), "WB takes 8 channels, WA gives 4"),
    (dict(x_channels=12), "input X has 12 channels (NHWC), WA takes 16"),
    (dict(ba_size=5), "input 4 (BA) must have 8 values (or none), got 5"),
    (dict(wc_cout=12), "without WD the identity is X: the block must give X's 16 channels, it gives 12"),
])
def test_bad_inputs_fail_at_session_creation_naming_the_input(kwargs, what):
    with pytest.raises(Exception) as info:
        session(_block_model(**kwargs))
    msg = str(info.value)
    assert "sai::SparseBlock node 'blk_3'" in msg and what in msg, msg


def test_shape_mismatch_at_run_time_is_an_error_naming_the_node():
    m = _block_model()
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "C"  # not known when the session is made
    m.graph.input[2].type.tensor_type.shape.dim[3].dim_param = "W"
    s = session(m)
    x = np.zeros((1, 6, 7, 12), np.float32)
    mk = np.ones((1, 1, 6, 7), np.float32)
    with pytest.raises(Exception, match=r"sai::SparseBlock node 'blk_3': X must be NHWC \[N,H,W,16\]"):
        s.run(None, {"X": x, "M1": mk, "M2": mk})
    with pytest.raises(Exception, match=r"M2 must be \[1, 1, 6, 7\]"):
        s.run(None, {"X": np.zeros((1, 6, 7, 16), np.float32), "M1": mk, "M2": mk[..., :5]})


# ---- the runtime uses it ------------------------------------------------------------------------

def test_runtime_fuses_by_default_and_says_so(exported, monkeypatch, caplog):
    import sai.runtime as rt

    model, path = exported["r50"]
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 96)).astype(np.float32)
    monkeypatch.delenv("SAI_ORT_OPS", raising=False)
    monkeypatch.delenv("SAI_ORT_OPS_LIBRARY", raising=False)
    monkeypatch.setattr(logging.getLogger("sai"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="sai.runtime.onnxruntime"):
        with rt.load(str(path), backend="onnxruntime", threads=2) as eng:
            info = eng.describe()["custom_ops"]
            got = eng.infer(x)
    blocks = sum(1 for _ in model.sparse_blocks())
    assert info["kernels"] == "libsai_ort_ops" and info["fused_blocks"] == blocks and "model" not in info
    lines = [r.getMessage() for r in caplog.records if r.name == "sai.runtime.onnxruntime"]
    assert len(lines) == 1 and f"{blocks} sparse block(s) fused" in lines[0], lines
    monkeypatch.setenv("SAI_ORT_OPS", "0")
    with rt.load(str(path), backend="onnxruntime", threads=2) as eng:
        assert eng.describe()["custom_ops"]["kernels"] == "function bodies"
        portable = eng.infer(x)
    for k in got:
        np.testing.assert_allclose(got[k], portable[k], atol=2e-4, rtol=1e-4)


def test_runtime_keeps_the_bodies_when_nothing_fuses_unless_asked(tmp_path, monkeypatch):
    import sai.runtime as rt
    from sai.exporter import export_onnx

    path = tmp_path / "fp16.onnx"  # fp16 weights: SparseBlock is float32 only
    export_onnx(_model("sparse_resnet18", base_width=8, head="none"), path, input_shape=(1, 3, 32, 32),
                precision="fp16", check=False)
    monkeypatch.delenv("SAI_ORT_OPS", raising=False)
    monkeypatch.delenv("SAI_ORT_OPS_LIBRARY", raising=False)
    with rt.load(str(path), backend="onnxruntime", threads=1) as eng:
        info = eng.describe()["custom_ops"]
    assert info["kernels"] == "function bodies" and "no sparse block matched" in info["note"]
    monkeypatch.setenv("SAI_ORT_OPS", "1")
    with rt.load(str(path), backend="onnxruntime", threads=1) as eng:
        info = eng.describe()["custom_ops"]
    assert info["kernels"] == "libsai_ort_ops" and info["fused_blocks"] == 0
