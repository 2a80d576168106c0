"""The sai ops against an independent implementation of docs/design.md section 3 written here in numpy
(explicit tap loops, no torch conv), and against ONNX Runtime's DeformConv for deformable conv."""

import math
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from sai.errors import SaiError
from sai.models import cpu_kernels, ops

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ independent references


def np_conv(x, w, b, stride, pads, dil, groups):
    """Direct convolution: one strided slice of the padded input per kernel tap."""
    n, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, cout, ho, wo), dtype=np.float64)
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[:, g * cin_g:(g + 1) * cin_g]
        for i in range(kh):
            for j in range(kw):
                y0, x0 = i * dil[0], j * dil[1]
                patch = xs[:, :, y0:y0 + stride[0] * (ho - 1) + 1:stride[0], x0:x0 + stride[1] * (wo - 1) + 1:stride[1]]
                out[:, g * cout_g:(g + 1) * cout_g] += np.einsum(
                    "nchw,oc->nohw", patch, w[g * cout_g:(g + 1) * cout_g, :, i, j]
                )
    if b is not None:
        out += b[None, :, None, None]
    return out


def np_interpolate(f, m, sigma, k, eps):
    r = (k - 1) // 2
    kern = np.array(
        [[sigma**2 / (2 * math.pi) * math.exp(-(sigma**2) / 2 * (i * i + j * j)) for j in range(-r, r + 1)]
         for i in range(-r, r + 1)]
    )
    fm = np.pad(f * m, ((0, 0), (0, 0), (r, r), (r, r)))
    mp = np.pad(m, ((0, 0), (0, 0), (r, r), (r, r)))
    h, w = f.shape[2:]
    num = np.zeros_like(f, dtype=np.float64)
    den = np.zeros_like(m, dtype=np.float64)
    for a in range(k):
        for b in range(k):
            num += kern[a, b] * fm[:, :, a:a + h, b:b + w]
            den += kern[a, b] * mp[:, :, a:a + h, b:b + w]
    return m * f + (1 - m) * num / (den + eps)


def ort_deform_conv(x, w, offset, b, stride, pads, dil, groups, dg):
    nodes = [helper.make_node(
        "DeformConv", ["X", "W", "O", "B"], ["Y"], strides=stride, pads=pads, dilations=dil,
        group=groups, offset_group=dg, kernel_shape=list(w.shape[2:]),
    )]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("X", "W", "O", "B")]
    graph = helper.make_graph(nodes, "dc", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"X": x, "W": w, "O": offset, "B": b if b is not None else np.zeros(w.shape[0], np.float32)}
    return sess.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})[0].astype(np.float64)


# Every implementation of the ops is checked against the same independent references:
#   "op"        the custom op through the public wrapper (whatever the CPU dispatch is)
#   "reference" the pure-PyTorch reference in ops.py (the fallback and test oracle)
#   "cpp"       the C++ CPU kernels, sparse path forced; "cpp-dense" their dense fallback path;
#   "cpp-nhwc"  the C++ kernels on channels_last inputs (their NHWC gather)
IMPLS = ["op", "reference", "cpp", "cpp-dense", "cpp-nhwc"]


@pytest.fixture(params=IMPLS)
def impl(request):
    if request.param.startswith("cpp") and not cpu_kernels.active():
        if os.environ.get("SAI_REQUIRE_CPU_KERNELS") == "1":
            pytest.fail("the C++ CPU kernels are not built: run make install")
        pytest.skip("C++ CPU kernels not built (python -m sai.models.build_cpu_kernels)")
    return request.param


def run_ssc(impl, x, m, w, b=None, stride=1, pads=0, dil=1, groups=1, act="none", offset=None, dg=1):
    t = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in (x, m, w, b, offset)]
    s2, p4, d2 = [stride] * 2, ops.normalize_pads(pads), [dil] * 2
    if impl == "op":
        y = ops.sparse_sample_conv(t[0], t[1], t[2], t[3], stride=stride, padding=pads, dilation=dil,
                                   groups=groups, activation=act, offset=t[4], deform_groups=dg)
    elif impl == "reference":
        y = ops.sparse_sample_conv_reference(*t[:3], t[3], t[4], s2, p4, d2, groups, dg, act)
    else:
        dense_above = 0.0 if impl == "cpp-dense" else 2.0
        if impl == "cpp-nhwc":
            t[0] = t[0].contiguous(memory_format=torch.channels_last)
        y = torch.ops.sai_cpu.sparse_sample_conv(*t[:3], t[3], t[4], s2, p4, d2, groups, dg, act, dense_above)
        if impl == "cpp-nhwc":
            assert y.is_contiguous(memory_format=torch.channels_last)
    return y.contiguous().numpy()


def run_interp(impl, f, m, sigma, k):
    f, m = torch.from_numpy(f), torch.from_numpy(m)
    if impl == "op":
        return ops.interpolate(f, m, sigma, kernel_size=k).numpy()
    if impl == "reference":
        return ops.interpolate_reference(f, m, sigma, k, 1e-5).numpy()
    if impl == "cpp-nhwc":
        f = f.contiguous(memory_format=torch.channels_last)
    return torch.ops.sai_cpu.interpolate(f, m, sigma, k, 1e-5).contiguous().numpy()


def make_mask(kind, shape):
    if kind == "empty":
        return np.zeros(shape, np.float32)
    if kind == "full":
        return np.ones(shape, np.float32)
    s = RNG.uniform(0, 1, size=shape).astype(np.float32)
    if kind == "hard":
        return (s > 0.6).astype(np.float32)
    return (s * (s >= 0.5)).astype(np.float32)  # soft, as at inference: in [0.5, 1] or 0


def out_size(h, k, s, p0, p1, d):
    return (h + p0 + p1 - d * (k - 1) - 1) // s + 1


CONV_CASES = [
    # n, cin, cout, h, w, k, stride, pads, dil, groups
    (1, 4, 6, 9, 7, 3, 1, [1, 1, 1, 1], 1, 1),
    (3, 4, 6, 11, 10, 3, 2, [1, 1, 1, 1], 1, 1),
    (2, 6, 9, 13, 12, 3, 1, [2, 2, 2, 2], 2, 3),
    (1, 4, 4, 15, 13, 5, 2, [2, 1, 2, 3], 1, 2),
    (3, 3, 5, 17, 16, 7, 1, [3, 3, 3, 3], 1, 1),
    (1, 8, 8, 12, 9, 5, 2, [4, 4, 4, 4], 2, 8),
    (2, 16, 8, 7, 7, 1, 1, [0, 0, 0, 0], 1, 1),
    (1, 16, 8, 8, 9, 1, 2, [0, 0, 0, 0], 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "n{}c{}-{}_{}x{}_k{}s{}d{}g{}".format(*c[:7], c[8], c[9]))
@pytest.mark.parametrize("mask_kind", ["soft", "hard", "empty", "full"])
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_sparse_sample_conv_matches_direct_conv(impl, case, mask_kind, activation):
    n, cin, cout, h, w, k, s, pads, d, g = case
    x = RNG.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = RNG.standard_normal((cout, cin // g, k, k)).astype(np.float32)
    b = RNG.standard_normal(cout).astype(np.float32)
    ho, wo = out_size(h, k, s, pads[0], pads[2], d), out_size(w, k, s, pads[1], pads[3], d)
    m = make_mask(mask_kind, (n, 1, ho, wo))
    want = np_conv(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), [s, s], pads, [d, d], g)
    if activation == "relu":
        want = np.maximum(want, 0)
    want = np.where(m > 0, want, 0.0)
    got = run_ssc(impl, x, m, wt, b, s, pads, d, g, activation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert np.all(got[np.broadcast_to(m == 0, got.shape)] == 0.0), "must be exactly 0 where M == 0"


def test_sparse_sample_conv_without_bias(impl):
    x = RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)
    wt = RNG.standard_normal((5, 4, 3, 3)).astype(np.float32)
    m = make_mask("hard", (2, 1, 8, 8))
    want = np.where(m > 0, np_conv(x, wt, None, [1, 1], [1] * 4, [1, 1], 1), 0)
    got = run_ssc(impl, x, m, wt, None, pads=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


DEFORM_CASES = [
    # n, cin, cout, h, w, k, stride, pad, dil, groups, deform_groups
    (1, 4, 6, 9, 8, 3, 1, 1, 1, 1, 1),
    (3, 4, 6, 11, 10, 3, 2, 1, 1, 2, 2),
    (2, 6, 4, 10, 13, 3, 1, 2, 2, 1, 3),
    (1, 4, 4, 12, 9, 5, 2, 2, 1, 1, 1),
]


@pytest.mark.parametrize("case", DEFORM_CASES)
@pytest.mark.parametrize("mask_kind", ["soft", "hard", "full"])
def test_deformable_matches_onnxruntime_deformconv(impl, case, mask_kind):
    n, cin, cout, h, w, k, s, p, d, g, dg = case
    x = RNG.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = RNG.standard_normal((cout, cin // g, k, k)).astype(np.float32)
    b = RNG.standard_normal(cout).astype(np.float32)
    ho, wo = out_size(h, k, s, p, p, d), out_size(w, k, s, p, p, d)
    # offsets up to +-3 pixels, so taps land between pixels and outside the image
    off = (RNG.standard_normal((n, 2 * dg * k * k, ho, wo)) * 2).astype(np.float32)
    m = make_mask(mask_kind, (n, 1, ho, wo))
    want = ort_deform_conv(x, wt, off, b, [s, s], [p] * 4, [d, d], g, dg)
    want = np.where(m > 0, np.maximum(want, 0), 0)
    got = run_ssc(impl, x, m, wt, b, s, p, d, g, "relu", offset=off, dg=dg)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_deformable_zero_offset_equals_plain_conv(impl):
    x = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32)
    wt = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    m = make_mask("full", (2, 1, 9, 9))
    want = np_conv(x, wt, None, [1, 1], [1] * 4, [1, 1], 1)
    got = run_ssc(impl, x, m, wt, None, pads=1, offset=np.zeros((2, 18, 9, 9), np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


INTERP_CASES = [(1, 3, 9, 7, 7, 1.0), (3, 5, 12, 13, 7, 0.6), (2, 4, 8, 11, 3, 2.0), (1, 2, 16, 5, 5, 0.9)]


@pytest.mark.parametrize("case", INTERP_CASES)
@pytest.mark.parametrize("mask_kind", ["soft", "hard", "empty", "full"])
def test_interpolate_matches_formula(impl, case, mask_kind):
    n, c, h, w, k, sigma = case
    f = RNG.standard_normal((n, c, h, w)).astype(np.float32)
    m = make_mask(mask_kind, (n, 1, h, w))
    want = np_interpolate(f.astype(np.float64), m.astype(np.float64), sigma, k, 1e-5)
    got = run_interp(impl, f, m, sigma, k)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    full = np.broadcast_to(m == 1, f.shape)
    np.testing.assert_array_equal(got[full], f[full])  # sampled positions keep their value


def test_interpolate_ignores_values_at_unsampled_positions():
    f = torch.randn(1, 3, 10, 10)
    m = torch.from_numpy(make_mask("hard", (1, 1, 10, 10)))
    g = f.clone()
    g[(m == 0).expand_as(g)] = 1e3
    torch.testing.assert_close(ops.interpolate(f, m, 1.0), ops.interpolate(g, m, 1.0))


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    off = (torch.randn(1, 18, 6, 5, dtype=torch.float64) * 0.7).requires_grad_(True)
    m = torch.from_numpy(make_mask("hard", (1, 1, 6, 5))).double()
    assert torch.autograd.gradcheck(
        lambda x, w, b, o: ops.sparse_sample_conv(x, m, w, b, padding=1, offset=o), (x, w, b, off),
        fast_mode=True,
    )
    f = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    ms = torch.rand(1, 1, 7, 6, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, ms: ops.interpolate(f, ms, 0.8, 5), (f, ms), fast_mode=True)
    sigma = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: ops.interpolate(f.detach(), ms.detach(), s, 5), (sigma,))


def test_custom_ops_pass_opcheck():
    x = torch.randn(2, 4, 8, 8)
    m = torch.from_numpy(make_mask("soft", (2, 1, 4, 4)))
    w = torch.randn(6, 4, 3, 3)
    args = (x, m, w, torch.randn(6), None, [2, 2], [1, 1, 1, 1], [1, 1], 1, 1, "relu")
    torch.library.opcheck(torch.ops.sai.sparse_sample_conv.default, args)
    f = torch.randn(2, 3, 8, 8)
    torch.library.opcheck(torch.ops.sai.interpolate.default, (f, torch.rand(2, 1, 8, 8), 1.0, 7, 1e-5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask=torch.ones(1, 1, 5, 5)), "mask must have shape"),
        (dict(activation="gelu"), "activation must be one of"),
        (dict(groups=3), "groups=3"),
        (dict(stride=0), "stride/dilation must be >= 1"),
        (dict(bias=torch.zeros(5)), "bias must have shape"),
        (dict(offset=torch.zeros(1, 17, 8, 8)), "offset must have shape"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    args = dict(x=torch.randn(1, 4, 8, 8), mask=torch.ones(1, 1, 8, 8), weight=torch.randn(6, 4, 3, 3), padding=1)
    args.update(kwargs)
    with pytest.raises(SaiError, match=match):
        ops.sparse_sample_conv(**args)


def test_interpolate_rejects_even_kernel():
    with pytest.raises(SaiError, match="odd"):
        ops.interpolate(torch.randn(1, 1, 4, 4), torch.ones(1, 1, 4, 4), 1.0, kernel_size=6)


@pytest.mark.parametrize("pads", [1, (0, 1, 2, 1)])
def test_nan_and_non_positive_mask_positions_are_exactly_zero(impl, pads):
    """docs/design.md 3.2: only M > 0 is computed; a NaN, zero or negative mask value gives exactly 0 on every
    path (the C++ dense fallback used to keep the conv value where the mask was NaN)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 7, 6, generator=g).numpy()
    w = torch.randn(5, 4, 3, 3, generator=g).numpy()
    p4 = ops.normalize_pads(pads)
    ho, wo = out_size(7, 3, 1, p4[0], p4[2], 1), out_size(6, 3, 1, p4[1], p4[3], 1)
    m = torch.rand(1, 1, ho, wo, generator=g) + 0.1
    m[0, 0, 1, 1], m[0, 0, 2, 2], m[0, 0, 3, 3] = float("nan"), 0.0, -1.0
    got = run_ssc(impl, x, m.numpy(), w, pads=pads, act="relu")
    for yx in ((1, 1), (2, 2), (3, 3)):
        assert (got[0, :, yx[0], yx[1]] == 0).all()
    want = ops.sparse_sample_conv_reference(torch.from_numpy(x).double(), m.double(), torch.from_numpy(w).double(),
                                            None, None, [1, 1], p4, [1, 1], 1, 1, "relu").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
