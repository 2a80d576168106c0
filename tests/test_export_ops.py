"""Function bodies of the sai ops in onnxruntime vs the docs/design.md 3.2/3.3 formulas.

Each body (sparse: NonZero/GatherND/MatMul/ScatterND and a depthwise or separable Gaussian; dense:
Conv then mask, 1-channel Gaussian conv) runs as a one-node model. The reference is PyTorch's
dense conv and the interpolation formula (``sai.models.ops`` reference functions).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnxruntime = pytest.importorskip("onnxruntime")

from op_helpers import make_mask, ort_session  # noqa: E402

from sai.benchmarks.opmodels import interpolate_model, sparse_sample_conv_model  # noqa: E402

BODIES = ["sparse", "dense"]


def _conv_ref(x, m, w, b, stride, pads, dil, group, act):
    xp = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    y = F.conv2d(xp, w, b, stride=stride, dilation=dil, groups=group)
    if act == "relu":
        y = torch.relu(y)
    return torch.where(m > 0, y, torch.zeros(()))


# (cin, cout, k, stride, pads, dilation, group, activation, bias)
CONVS = [
    (8, 16, 3, 1, (1, 1, 1, 1), 1, 1, "relu", True),
    (8, 12, 3, 2, (1, 1, 1, 1), 1, 1, "none", True),
    (8, 16, 1, 1, (0, 0, 0, 0), 1, 1, "none", False),  # conv1 / the reordered conv3: no bias (pointwise)
    (8, 16, 1, 2, (0, 0, 0, 0), 1, 1, "relu", True),  # strided pointwise
    (8, 8, 5, 2, (2, 1, 3, 2), 2, 2, "relu", True),  # grouped, dilated, asymmetric pads
    (6, 6, 3, 1, (1, 1, 1, 1), 1, 6, "none", True),  # depthwise
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"k{c[2]}s{c[3]}g{c[6]}{c[7]}")
def test_sparse_sample_conv_body(body, conv):
    cin, cout, k, s, pads, d, group, act, with_bias = conv
    g = torch.Generator().manual_seed(k * 7 + s)
    w = torch.randn(cout, cin // group, k, k, generator=g) * 0.2
    b = torch.randn(cout, generator=g) if with_bias else None
    sess = ort_session(sparse_sample_conv_model(
        w.numpy(), None if b is None else b.numpy(), stride=(s, s), pads=pads, dilation=(d, d), group=group,
        activation=act, body=body))
    for n, h, wd in ((1, 9, 13), (3, 16, 11)):  # batch 1 and 3, odd sizes
        x = torch.randn(n, cin, h, wd, generator=g)
        ho = (h + pads[0] + pads[2] - d * (k - 1) - 1) // s + 1
        wo = (wd + pads[1] + pads[3] - d * (k - 1) - 1) // s + 1
        for kind in ("empty", "full", "random"):
            m = make_mask(kind, n, ho, wo, g)
            ref = _conv_ref(x, m, w, b, (s, s), pads, (d, d), group, act).numpy()
            out = sess.run(None, {"X": x.numpy(), "M": m.numpy()})[0]
            assert out.shape == ref.shape
            scale = max(float(np.abs(ref).max()), 1e-6)
            assert float(np.abs(out - ref).max()) <= 1e-5 * scale + 1e-7, (kind, n, h, wd)
            assert np.all(out[np.broadcast_to(m.numpy() == 0, out.shape)] == 0)  # exactly 0 off-mask


def _interp_ref(f, m, sigma, k, eps):
    from sai.models.ops import gaussian_kernel

    c, r = f.shape[1], (k - 1) // 2
    kern = gaussian_kernel(sigma, k, dtype=torch.float64)
    f, m = f.double(), m.double()
    num = F.conv2d(f * m, kern.expand(c, 1, k, k), padding=r, groups=c)
    den = F.conv2d(m, kern.reshape(1, 1, k, k), padding=r) + eps
    return (m * f + (1 - m) * num / den).numpy()


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("kernel_size, sigma", [(7, 2.3), (5, 0.8), (3, 3.0)])
def test_interpolate_body(body, kernel_size, sigma):
    g = torch.Generator().manual_seed(kernel_size)
    c = 5
    sess = ort_session(interpolate_model(c, sigma, kernel_size=kernel_size, body=body))
    for n, h, w in ((1, 9, 13), (3, 16, 11)):
        f = torch.randn(n, c, h, w, generator=g)
        for kind in ("empty", "full", "random"):
            m = make_mask(kind, n, h, w, g)
            ref = _interp_ref(f, m, sigma, kernel_size, 1e-5)
            out = sess.run(None, {"F": f.numpy(), "M": m.numpy()})[0]
            assert float(np.abs(out - ref).max()) <= 1e-5 * max(float(np.abs(ref).max()), 1e-6), (kind, n)


def test_interpolate_separable_without_channels():
    """Nodes without the ``channels`` hint get the separable body (still exact)."""
    import onnx

    from sai.exporter import attach_functions

    model = interpolate_model(4, 1.5, body="dense")
    node = model.graph.node[0]
    keep = [a for a in node.attribute if a.name != "channels"]
    del node.attribute[:]
    node.attribute.extend(keep)
    attach_functions(model, 21, "sparse")
    assert any(n.op_type == "Conv" and any(a.name == "auto_pad" for a in n.attribute)
               for n in model.functions[0].node)
    onnx.checker.check_model(model, full_check=True)
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 4, 11, 7, generator=g)
    m = make_mask("random", 2, 11, 7, g)
    ref = _interp_ref(f, m, 1.5, 7, 1e-5)
    out = sess.run(None, {"F": f.numpy(), "M": m.numpy()})[0]
    assert float(np.abs(out - ref).max()) <= 1e-5 * float(np.abs(ref).max())
