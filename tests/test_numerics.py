"""No silent wrong answers: NaN-free masks and interpolation in every formulation and precision.

References are independent of the code under test: the sampling-mask formula of docs/design.md 3.1
evaluated in float64 with numpy, and the fused PyTorch model (float32, the official formula) for
whole models. What is checked:
- logits across [-40, 40] (and the values where onnxruntime's CPU Sigmoid rounds to 1.0000001)
  through torch's ``mask_from_logit`` and, op by op in onnxruntime, the ONNX translation of the mask;
- whole exported models whose mask logits sit at those values, on every ONNX variant onnxruntime
  runs here (portable sparse body, dense body, onnx-native, fp16) and in both sampling modes;
- the shipped trained demo model in fp16 on the held-out split (the random-weight fp16 tests of
  test_export cannot see Gaussian weights that underflow);
- the same seed giving the same noise and outputs on the torch and onnxruntime backends.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

onnxruntime = pytest.importorskip("onnxruntime")

from sai.exporter import attach_functions, export_onnx, prepare_model  # noqa: E402
from sai.exporter.functions import inline_functions  # noqa: E402
from sai.models import noise_shapes  # noqa: E402
from sai.models.blocks import mask_from_logit  # noqa: E402

D = 1e-8  # docs/design.md 3.1
T_EVAL = 0.03
ORT_ROUNDS_UP = 17.844  # onnxruntime 1.31's CPU Sigmoid returns 1.0000001 here
ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo" / "sai_demo_r18"


def reference_mask(logit: np.ndarray, noise_u: np.ndarray | None, temperature: float) -> np.ndarray:
    """docs/design.md 3.1 in float64 (no grid prior), from the formula, not from sai code."""
    lg = logit.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-lg))
    z = np.log(p + D) - np.log(1.0 - p + D)
    if noise_u is not None:
        u = noise_u.astype(np.float64)
        g = -np.log(-np.log(u + D) + D)
        z = z + (g[:, 0:1] - g[:, 1:2])
    s = 1.0 / (1.0 + np.exp(-z / (temperature + D)))
    return s * (s >= 0.5)


def sweep_logits() -> np.ndarray:
    """[1, 1, 1, L] float32: a dense sweep of [-40, 40] plus the values around the rounding point."""
    dense = np.linspace(-40.0, 40.0, 160_001, dtype=np.float64)
    near = ORT_ROUNDS_UP + np.arange(-2000, 2001) * 1e-5
    x = np.concatenate([dense, near, [ORT_ROUNDS_UP, 88.0, -88.0, 0.0]]).astype(np.float32)
    return x.reshape(1, 1, 1, -1)


def sweep_noise(n: int) -> np.ndarray:
    """[1, 2, 1, n] uniforms with the ends of [0, 1) and 1 itself among them."""
    rng = np.random.default_rng(0)
    u = rng.random((1, 2, 1, n), dtype=np.float32)
    u[0, :, 0, :4] = np.array([[0.0, np.nextafter(np.float32(1), np.float32(0)), 1.0, 0.5]] * 2, np.float32)
    return u


def assert_mask_close(name: str, got: np.ndarray, ref: np.ndarray, logit: np.ndarray, noise) -> None:
    assert np.isfinite(got).all(), f"{name}: {int((~np.isfinite(got)).sum())} non-finite mask values"
    # hard decisions may differ from float64 only where z/(T+d) is within float32 rounding of 0
    diff = np.abs(got.astype(np.float64) - ref)
    bad = diff > 1e-5
    frac = bad.mean()
    assert frac <= 1e-4, f"{name}: {int(bad.sum())} of {bad.size} mask values off the float64 formula"
    if noise is None:  # deterministic: only at the threshold itself (logit ~ 0)
        assert np.all(np.abs(np.broadcast_to(logit, bad.shape)[bad]) < 1e-3), name


@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "stochastic"])
def test_mask_formulations_sweep_logits(stochastic):
    from sai.exporter.maskop import translate_sampling_mask

    logit = sweep_logits()
    noise = sweep_noise(logit.shape[-1]) if stochastic else None
    ref = reference_mask(logit, noise, T_EVAL)

    got_torch = mask_from_logit(torch.from_numpy(logit), T_EVAL, None if noise is None else torch.from_numpy(noise),
                                0, hard=True)[0].numpy()
    assert_mask_close("torch", got_torch, ref, logit, noise)

    # the ONNX translation, each op executed by onnxruntime (onnxscript's eager evaluator)
    got_ort = translate_sampling_mask(logit, noise, T_EVAL, 0).value
    assert_mask_close("onnx/onnxruntime", got_ort, ref, logit, noise)


def test_onnxruntime_sigmoid_still_rounds_past_one():
    """Guards the test above: if onnxruntime's Sigmoid ever stops rounding past 1, the sweep no longer
    exercises the clamp and ORT_ROUNDS_UP must be looked up again."""
    from onnxscript import opset18 as op

    y = op.Sigmoid(np.array([ORT_ROUNDS_UP], np.float32)).value
    assert y[0] > 1.0, "onnxruntime's Sigmoid no longer exceeds 1 at this logit; find another one"


def test_fed_noise_slightly_above_one_is_clamped():
    from sai.exporter.maskop import translate_sampling_mask

    logit = np.zeros((1, 1, 1, 3), np.float32)
    u = np.full((1, 2, 1, 3), np.float32(1.0000001))
    assert np.isfinite(translate_sampling_mask(logit, u, T_EVAL, 0).value).all()
    assert np.isfinite(mask_from_logit(torch.from_numpy(logit), T_EVAL, torch.from_numpy(u), 0, True)[0]).all()


# ---- whole models at extreme logits -----------------------------------------------------------

MASK_BIASES = [ORT_ROUNDS_UP, -40.0, 40.0, 17.8, 16.0, -17.844, 30.0, 0.3, -0.3, ORT_ROUNDS_UP,
               25.0, -25.0, 18.5, 3.0, -3.0, ORT_ROUNDS_UP]


def extreme_logit_model(sampling: str):
    """sparse_resnet18 (width 8) whose mask logits are constants across [-40, 40] (weights 0, so the
    logit *is* the bias, ORT_ROUNDS_UP among them), BN statistics random so features are not flat."""
    torch.manual_seed(0)
    model, _ = prepare_model("sparse_resnet18", base_width=8, num_classes=10, sampling=sampling, seed=0, fuse=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.3 + 0.2)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        convs = [c for _, blk in model.sparse_blocks() for c in (blk.conv1_mask, blk.conv2_mask)]
        assert len(convs) == len(MASK_BIASES)
        for conv, b in zip(convs, MASK_BIASES, strict=True):
            conv.weight.zero_()
            conv.bias.fill_(b)
    fused, _ = prepare_model(model)
    return fused


@pytest.fixture(scope="module")
def extreme_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("extreme")
    out = {}
    for sampling in ("deterministic", "stochastic"):
        model = extreme_logit_model(sampling)
        targets = [("portable", "fp32"), ("onnx-native", "fp32"), ("portable", "fp16")]
        if sampling == "stochastic":
            targets = [("portable", "fp32")]
        for target, precision in targets:
            path = root / f"{sampling}_{target}_{precision}.onnx"
            export_onnx(model, path, input_shape=(1, 3, 64, 64), target=target, precision=precision)
            out[(sampling, target, precision, "sparse")] = (model, path)
            if target == "portable" and precision == "fp32":
                dense = onnx.load(str(path))
                attach_functions(dense, 21, "dense")
                dpath = path.with_name(path.stem + "_densebody.onnx")
                dpath.write_bytes(dense.SerializeToString())
                out[(sampling, target, precision, "dense")] = (model, dpath)
    return out


def _feeds(model, shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    feeds = {"input": torch.randn(shape, generator=g).numpy() * 3}
    for name, s in noise_shapes(model, shape):
        feeds[name] = torch.rand(s, generator=g).numpy()
    return feeds


def test_extreme_logits_every_onnx_variant(extreme_exports):
    shape = (2, 3, 64, 96)
    for (sampling, target, precision, body), (model, path) in extreme_exports.items():
        sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = _feeds(model, shape)
        names = [i.name for i in sess.get_inputs()]
        got = sess.run(None, {n: feeds[n] for n in names})[0]
        with torch.no_grad():
            ref = model(*(torch.from_numpy(feeds[n]) for n in names)).numpy()
        key = f"{sampling}/{target}/{precision}/{body}"
        assert np.isfinite(ref).all(), f"torch reference not finite ({key})"
        assert np.isfinite(got).all(), f"{key}: {int((~np.isfinite(got)).sum())} non-finite logits"
        tol = 2e-2 if precision == "fp16" else 1e-4
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
        assert err <= tol, (key, err)


@pytest.mark.parametrize("trt_blocks", ["per-op", "fused"])
def test_tensorrt_target_mask_has_the_clamp(tmp_path, trt_blocks):
    """The tensorrt target (TensorRT's parser, cannot run here): every Sigmoid of a mask in the graph is clamped.
    per-op: all 16 masks are graph ops. fused (the default): at width 8 the three blocks with 8-channel convs
    (layer1.0, layer1.1, layer2.0) stay per-op, so 6 masks are graph ops; the other 5 blocks are SparseBlock
    nodes whose plugin computes (and clamps) both masks from MW/MB, which carry those blocks' extreme biases."""
    model = extreme_logit_model("deterministic")
    path = tmp_path / "trt.onnx"
    export_onnx(model, path, input_shape=(1, 3, 64, 64), target="tensorrt", trt_blocks=trt_blocks)
    g = onnx.load(str(path)).graph
    kept = len(MASK_BIASES) if trt_blocks == "per-op" else 6
    blocks = [n for n in g.node if n.op_type == "SparseBlock"]
    assert len(blocks) == (len(MASK_BIASES) - kept) // 2
    inits = {t.name: t for t in g.initializer}
    got = [float(v) for n in blocks for v in onnx.numpy_helper.to_array(inits[n.input[2]])]
    np.testing.assert_allclose(got, MASK_BIASES[kept:], rtol=1e-6)  # each fused block's two mask biases, in order
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    sig = [n for n in g.node if n.op_type == "Sigmoid"]
    first = [n for n in sig if not any(c.op_type == "Div" for c in g.node if n.input[0] in c.output)]
    assert len(first) == kept, len(first)  # p = sigmoid(logit), one per mask of a per-op block
    for n in first:
        uses = consumers[n.output[0]]
        assert [u.op_type for u in uses] == ["Clip"], (n.name, [u.op_type for u in uses])


# ---- fp16 on the trained demo model ----------------------------------------------------------


def _demo_split():
    from sai.models import demo_data

    metrics = json.loads((ZOO / "metrics.json").read_text())
    n = metrics["config"]["test_size"]
    images, labels = demo_data.make_split(metrics["dataset"]["seed"], "test", n, metrics["input"]["height"])
    x = demo_data.normalize(images, metrics["input"]["mean"], metrics["input"]["std"]).numpy()
    return x, labels.numpy()


def _run_with_masks(path: Path, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and the mask inputs of the sai nodes (or, inlined, of the masks' threshold Mul)."""
    m = onnx.load(str(path))
    masks = [n.input[1] for n in m.graph.node if n.domain == "sai"]
    m.graph.output.extend(onnx.ValueInfoProto(name=name) for name in masks)
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = onnxruntime.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x})
    return out[0], [o.astype(np.float32) for o in out[1:]]


def test_fp16_trained_demo_model_on_heldout_split(tmp_path):
    ck = ZOO / "sparse_resnet18.pth"
    x, labels = _demo_split()
    paths = {}
    for precision in ("fp32", "fp16"):
        paths[precision] = tmp_path / f"demo_{precision}.onnx"
        export_onnx("sparse_resnet18", paths[precision], checkpoint=ck, input_shape=(1, 3, 64, 64),
                    precision=precision)
    dense16 = onnx.load(str(paths["fp16"]))
    attach_functions(dense16, 21, "dense")
    paths["fp16-densebody"] = tmp_path / "demo_fp16_dense.onnx"
    paths["fp16-densebody"].write_bytes(dense16.SerializeToString())
    native = tmp_path / "demo_fp16_native.onnx"  # what --target onnx-native writes: bodies inlined
    inlined = onnx.load(str(paths["fp16"]))
    inline_functions(inlined)
    assert not any(n.domain == "sai" for n in inlined.graph.node)
    native.write_bytes(inlined.SerializeToString())

    logits32, masks32 = _run_with_masks(paths["fp32"], x)
    acc32 = float((logits32.argmax(1) == labels).mean())
    assert acc32 > 0.95, acc32  # the shipped model (98.4% in metrics.json)
    for key in ("fp16", "fp16-densebody"):
        logits, masks = _run_with_masks(paths[key], x)
        assert np.isfinite(logits).all(), f"{key}: {int((~np.isfinite(logits)).sum())} non-finite logits"
        acc = float((logits.argmax(1) == labels).mean())
        assert abs(acc - acc32) <= 0.005, (key, acc, acc32)
        assert len(masks) == len(masks32) == 32
        agree = np.mean([((a > 0) == (b > 0)).mean() for a, b in zip(masks, masks32, strict=True)])
        assert agree >= 0.999, (key, agree)
        print(f"{key}: accuracy {acc:.4f} vs fp32 {acc32:.4f}, mask agreement {agree:.5f}")
    sess = onnxruntime.InferenceSession(str(native), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    assert np.isfinite(logits).all()
    acc = float((logits.argmax(1) == labels).mean())
    assert abs(acc - acc32) <= 0.005, ("onnx-native fp16", acc, acc32)


# ---- stochastic sampling: same seed, same noise, every backend -------------------------------


def test_same_seed_same_outputs_torch_and_onnxruntime(tmp_path):
    from runtime_helpers import tiny_model

    import sai.runtime as rt
    from sai.models import save_checkpoint

    ck = save_checkpoint(tiny_model(), tmp_path / "m.pth")
    path = tmp_path / "m.onnx"
    export_onnx("sparse_resnet18", path, checkpoint=ck, input_shape=(1, 3, 32, 32), sampling="stochastic")
    x = np.random.default_rng(3).standard_normal((2, 3, 40, 40)).astype(np.float32)
    with rt.load(ck, backend="torch", sampling="stochastic", seed=5) as te, \
            rt.load(path, backend="onnxruntime", seed=5) as oe:
        assert [n for n, _ in te.noise_inputs] == [n for n, _ in oe.noise_inputs]
        for _ in range(3):  # the streams stay in step call after call
            a, b = te.infer(x)["logits"], oe.infer(x)["logits"]
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
            assert (a.argmax(1) == b.argmax(1)).all()


def test_interpolate_reference_half_precision_rounds_once():
    """fp16/bf16 in, the normaliser in float32: the only error left is the output's own rounding
    (fp16 arithmetic inside was 5x off and, where den fell to eps, overflowed to NaN)."""
    from sai.models.ops import interpolate_reference

    for dtype, rtol in ((torch.float16, 1e-3), (torch.bfloat16, 8e-3)):
        for seed in range(3):
            g = torch.Generator().manual_seed(seed)
            f = (torch.randn(2, 8, 23, 23, generator=g) * 4).to(dtype)
            m = (torch.rand(2, 1, 23, 23, generator=g) < 0.1).to(dtype)
            ref = interpolate_reference(f.double(), m.double(), 3.0, 7, 1e-5)  # same rounded inputs
            got = interpolate_reference(f, m, 3.0, 7, 1e-5)
            assert got.dtype == dtype and torch.isfinite(got).all(), dtype
            torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=1e-4)
