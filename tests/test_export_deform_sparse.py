"""The sparse ONNX body of the deformable SparseSampleConv (overload ``deform``) in onnxruntime.

References (never the body under test): ``sai.models.ops.deform_conv2d_reference`` (docs/design.md 3.2,
deformable conv v1) + activation + masking, and onnxruntime's own ``DeformConv`` (the dense body).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnxruntime = pytest.importorskip("onnxruntime")

from op_helpers import make_mask, ort_session  # noqa: E402

from sai.benchmarks.opmodels import deform_sparse_sample_conv_model  # noqa: E402
from sai.exporter.functions import all_functions  # noqa: E402
from sai.models.ops import deform_conv2d_reference  # noqa: E402


def _offsets(kind: str, shape, g: torch.Generator) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros(shape)
    if kind == "integer":  # exact integers (and halves): the corner cases of floor, far corners of weight 0
        return torch.round(torch.randn(shape, generator=g) * 4) / torch.randint(1, 3, shape, generator=g)
    return torch.randn(shape, generator=g) * 3.0  # large: many samples and corners fall outside the image


def _check(out: np.ndarray, ref: np.ndarray, m: np.ndarray, what) -> None:
    assert out.shape == ref.shape, what
    scale = float(np.abs(ref).max())
    assert float(np.abs(out - ref).max()) <= 1e-5 * scale + 1e-7, (what, float(np.abs(out - ref).max()), scale)
    assert np.all(out[np.broadcast_to(m == 0, out.shape)] == 0), what  # exactly 0 off-mask


# (cin, cout, k, stride, pads, dilation, group, deform_groups, activation, bias)
CONVS = [
    (8, 16, 3, 1, (1, 1, 1, 1), 1, 1, 1, "relu", True),
    (8, 12, 3, 2, (1, 1, 1, 1), 1, 1, 2, "none", True),
    (8, 16, 1, 1, (0, 0, 0, 0), 1, 1, 1, "none", False),
    (8, 8, 1, 2, (0, 0, 0, 0), 1, 1, 2, "relu", True),  # strided 1x1
    (8, 8, 3, 1, (2, 1, 3, 2), 2, 1, 2, "relu", True),  # dilated, asymmetric pads
    (12, 8, 5, 2, (2, 0, 1, 3), 2, 2, 3, "none", True),  # group 2 and deform_groups 3: independent splits
    (6, 6, 3, 1, (1, 1, 1, 1), 1, 6, 2, "relu", True),  # depthwise
    (8, 8, 3, 2, (0, 1, 0, 1), 1, 4, 4, "none", True),  # group == deform_groups, pads on one side only
]


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"k{c[2]}s{c[3]}d{c[5]}g{c[6]}dg{c[7]}{c[8]}")
def test_deform_sparse_body(conv):
    cin, cout, k, s, pads, d, group, dgs, act, with_bias = conv
    g = torch.Generator().manual_seed(k * 7 + s * 3 + group + dgs)
    w = torch.randn(cout, cin // group, k, k, generator=g) * 0.2
    b = torch.randn(cout, generator=g) if with_bias else None
    kw = dict(stride=(s, s), pads=pads, dilation=(d, d), group=group, deform_groups=dgs, activation=act)
    args = (w.numpy(), None if b is None else b.numpy())
    sparse = ort_session(deform_sparse_sample_conv_model(*args, **kw, deform_body="sparse"))
    dense = ort_session(deform_sparse_sample_conv_model(*args, **kw, deform_body="dense"))
    for n, h, wd in ((1, 9, 13), (3, 16, 11)):  # batch 1 and 3, odd sizes
        x = torch.randn(n, cin, h, wd, generator=g)
        ho = (h + pads[0] + pads[2] - d * (k - 1) - 1) // s + 1
        wo = (wd + pads[1] + pads[3] - d * (k - 1) - 1) // s + 1
        for off_kind in ("zero", "integer", "random"):
            off = _offsets(off_kind, (n, 2 * dgs * k * k, ho, wo), g)
            y = deform_conv2d_reference(x, off, w, b, (s, s), pads, (d, d), group, dgs)
            if act == "relu":
                y = torch.relu(y)
            for kind in ("empty", "full", "random"):
                m = make_mask(kind, n, ho, wo, g)
                ref = torch.where(m > 0, y, torch.zeros(())).numpy()
                feed = {"X": x.numpy(), "M": m.numpy(), "Offset": off.numpy()}
                out = sparse.run(None, feed)[0]
                _check(out, ref, m.numpy(), (kind, off_kind, n, "reference"))
                _check(out, dense.run(None, feed)[0], m.numpy(), (kind, off_kind, n, "DeformConv"))


def test_samples_outside_the_image():
    """Sample points pushed (partly) off the image, on every side: corners outside contribute 0."""
    g = torch.Generator().manual_seed(5)
    cin, cout, k = 4, 5, 3
    w = torch.randn(cout, cin, k, k, generator=g)
    b = torch.randn(cout, generator=g)
    sess = ort_session(deform_sparse_sample_conv_model(w.numpy(), b.numpy(), pads=(1, 1, 1, 1), deform_groups=2))
    n, h, wd = 2, 7, 6
    x = torch.randn(n, cin, h, wd, generator=g)
    m = torch.ones(n, 1, h, wd)
    for shift in (-1.0, -0.5, -1e-3, h - 1.0, h - 0.5, float(h), 40.0, -40.0):
        off = torch.full((n, 2 * 2 * k * k, h, wd), shift) + torch.rand(n, 2 * 2 * k * k, h, wd, generator=g) * 0.25
        ref = deform_conv2d_reference(x, off, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1, 2).numpy()
        out = sess.run(None, {"X": x.numpy(), "M": m.numpy(), "Offset": off.numpy()})[0]
        _check(out, ref, m.numpy(), shift)


def test_selection():
    """The sparse deform body is selectable on either body kind; unknown names are refused."""
    for body in ("sparse", "dense"):
        fns = {f.overload: f for f in all_functions(21, body, deform_body="sparse")}
        assert "NonZero" in {n.op_type for n in fns["deform"].node}
        assert "DeformConv" not in {n.op_type for n in fns["deform"].node}
        fns = {f.overload: f for f in all_functions(21, body, deform_body="dense")}
        assert "DeformConv" in {n.op_type for n in fns["deform"].node}
    with pytest.raises(ValueError, match="deform_body"):
        all_functions(21, "sparse", deform_body="nope")
