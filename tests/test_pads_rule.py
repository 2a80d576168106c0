"""One rule for SparseSampleConv's pads on every face (issue 23, docs/design.md 3.2): pads are the ONNX
4-value form [top, left, bottom, right], asymmetric ones included, and the output is ``[N, Cout, Ho, Wo]`` with
``Ho = (H + top + bottom - dh*(kh-1) - 1) / sh + 1``; a mask (or offset) of another size is refused. The
portable function bodies took Ho/Wo from the mask and so ignored a bottom/right pad that libsai_ort_ops
and the PyTorch reference refuse.

Random asymmetric pads, strides and sizes (seeded); the reference is the size formula above and the
PyTorch reference op (``sai.models.ops``), which computes the convolution with F.conv2d on the padded input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from sai.benchmarks.opmodels import deform_sparse_sample_conv_model, sparse_sample_conv_model  # noqa: E402
from sai.errors import SaiError  # noqa: E402
from sai.models import ops  # noqa: E402
from sai.runtime import ort_ops  # noqa: E402

LIB, _ = ort_ops.built_library()


def _session(model, library: bool):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 4
    if library:
        so.register_custom_ops_library(str(LIB))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _faces(model):
    faces = {"sparse body": _session(model, False)}
    if LIB is not None:
        faces["libsai_ort_ops"] = _session(model, True)
    return faces


def _out(size, k, s, p0, p1):
    return (size + p0 + p1 - (k - 1) - 1) // s + 1


def _case(seed):
    rng = np.random.default_rng(seed)
    pads = [int(v) for v in rng.integers(0, 3, 4)]
    while pads[0] == pads[2] and pads[1] == pads[3]:  # asymmetric in at least one axis
        pads = [int(v) for v in rng.integers(0, 3, 4)]
    if seed == 0:
        pads = [1, 1, 1, 2]  # the probe's case
    stride = int(rng.integers(1, 3))
    h, w = int(rng.integers(5, 10)), int(rng.integers(5, 10))
    return rng, pads, stride, h, w


def _mask(rng, shape):
    m = np.where(rng.random(shape) < 0.6, rng.uniform(0.5, 1.0, shape), 0.0).astype(np.float32)
    m.reshape(-1)[0] = 1.0
    return m


@pytest.mark.parametrize("seed", range(6))
def test_asymmetric_pads_computed_alike_and_a_wrong_mask_refused(seed):
    rng, pads, stride, h, w = _case(seed)
    cin, cout = 4, 6
    wt = (rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    model = sparse_sample_conv_model(wt, b, stride=(stride, stride), pads=pads, activation="relu")
    ho, wo = _out(h, 3, stride, pads[0], pads[2]), _out(w, 3, stride, pads[1], pads[3])
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    m = _mask(rng, (2, 1, ho, wo))
    ref = ops.sparse_sample_conv_reference(torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(wt),
                                           torch.from_numpy(b), None, [stride] * 2, pads, [1, 1], 1, 1,
                                           "relu").numpy()
    assert ref.shape == (2, cout, ho, wo)
    for face, sess in _faces(model).items():
        y = sess.run(None, {"X": x, "M": m})[0]
        assert y.shape == ref.shape, face
        np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4, err_msg=face)
    # the mask of the symmetric-pads size (bottom/right pads ignored): refused by every face
    sym = (2, 1, _out(h, 3, stride, pads[0], pads[0]), _out(w, 3, stride, pads[1], pads[1]))
    if sym != m.shape:
        wrong = _mask(rng, sym)
        with pytest.raises(SaiError, match="mask must have shape"):
            ops.sparse_sample_conv(torch.from_numpy(x), torch.from_numpy(wrong), torch.from_numpy(wt),
                                   torch.from_numpy(b), stride=stride, padding=pads, activation="relu")
        for sess in _faces(model).values():
            with pytest.raises(Exception, match=r"M must be|requested shape"):  # the body: a failing Reshape
                sess.run(None, {"X": x, "M": wrong})


@pytest.mark.parametrize("seed", range(3))
def test_deformable_asymmetric_pads_and_wrong_offsets_refused(seed):
    rng, pads, stride, h, w = _case(10 + seed)
    cin, cout = 4, 4
    wt = (rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    model = deform_sparse_sample_conv_model(wt, b, stride=(stride, stride), pads=pads, activation="none")
    ho, wo = _out(h, 3, stride, pads[0], pads[2]), _out(w, 3, stride, pads[1], pads[3])
    x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    off = (rng.standard_normal((1, 18, ho, wo)) * 1.5).astype(np.float32)
    m = _mask(rng, (1, 1, ho, wo))
    ref = ops.sparse_sample_conv_reference(torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(wt),
                                           torch.from_numpy(b), torch.from_numpy(off), [stride] * 2, pads, [1, 1],
                                           1, 1, "none").numpy()
    for face, sess in _faces(model).items():
        np.testing.assert_allclose(sess.run(None, {"X": x, "M": m, "Offset": off})[0], ref, atol=1e-4, rtol=1e-4,
                                   err_msg=face)
        bigger = np.zeros((1, 18, ho + 1, wo), np.float32)  # an offset map of another size
        with pytest.raises(Exception, match=r"Offset must be|requested shape|cannot be reshaped"):
            sess.run(None, {"X": x, "M": m, "Offset": bigger})
        smaller = _mask(rng, (1, 1, ho, max(wo - 1, 1)))
        with pytest.raises(Exception, match=r"M must be|requested shape|cannot be reshaped"):
            sess.run(None, {"X": x, "M": smaller, "Offset": off[..., :smaller.shape[3]]})
