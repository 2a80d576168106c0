"""sai.kernels.roi_align_v0 (the Triton kernel of sai::RoiAlignV0) under the Triton interpreter against the
float64 RoIAlign written from the official v0.6 kernel (tests/test_detector.py: ref_roi_align) and
``sai.models.detector.roi_align_v06``; and compiled ahead of time (``sai.kernels.aot.compile_one``, no GPU)
for sm_75 and sm_90 into a temporary folder, to show that it builds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_detector import ref_roi_align

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

from sai.errors import SaiError  # noqa: E402
from sai.kernels.roi_align_v0 import aot_spec, roi_align_v0  # noqa: E402
from sai.models.detector import roi_align_v06  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield


def _rois(rng, n_small=6, n_big=6):
    xy = rng.uniform(-10, 60, (n_small + n_big, 2))
    wh = np.concatenate([rng.uniform(0, 3.9, (n_small, 2)), rng.uniform(4, 40, (n_big, 2))])
    rois = np.concatenate([xy, xy + wh], 1)
    rois[:5] = [[0, 0, 0, 0], [47, 35, 47, 35], [-3, -3, -2, -2], [10, 10, 10.5, 30], [-20, -20, 100, 100]]
    return torch.from_numpy(rois.astype(np.float32))


@pytest.mark.parametrize("scale,out,n,c", [(0.25, 7, 2, 5), (0.125, 3, 3, 70)])
def test_kernel_is_v06_roialign(scale, out, n, c):
    """Small and large RoIs, points, past the borders; channels crossing the 64-block edge; NHWC strides.
    Few RoIs: the interpreter runs one program per bin and channel block (tens of ms each here)."""
    rng = np.random.RandomState(c)
    x = torch.from_numpy(rng.randn(2, c, 12, 13).astype(np.float32))
    rois = _rois(rng) * (0.25 / scale)
    b = torch.from_numpy(rng.randint(0, 2, len(rois)).astype(np.int64))
    got = roi_align_v0(x, rois, b, scale, out, n).numpy()
    ref = np.stack([ref_roi_align(x[bi].double().numpy(), rois[k].double().numpy(), scale, out=out, n=n)
                    for k, bi in enumerate(b.tolist())])
    assert np.abs(got - ref).max() < 1e-5
    t = torch.cat([roi_align_v06(x[bi], rois[k:k + 1], scale, out, n) for k, bi in enumerate(b.tolist())])
    assert np.abs(got - t.numpy()).max() < 1e-5
    nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the kernel reads through strides
    assert np.abs(roi_align_v0(nhwc, rois[:4], b[:4], scale, out, n).numpy() - got[:4]).max() == 0


def test_no_roi_and_bad_batch_index():
    x = torch.randn(1, 3, 6, 6)
    assert roi_align_v0(x, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 0.25).shape == (0, 3, 7, 7)
    y = roi_align_v0(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([3]), 0.25)
    assert not y.any()  # an index outside 0..N-1 reads nothing
    with pytest.raises(SaiError, match="batch_indices must be int64"):
        roi_align_v0(x, torch.zeros(1, 4), torch.zeros(1, dtype=torch.int32), 0.25)
    with pytest.raises(SaiError, match="sampling_ratio 1..16"):
        roi_align_v0(x, torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64), 0.25, 7, 0)


@pytest.mark.parametrize("cc", [75, 90])
def test_kernel_compiles_ahead_of_time(tmp_path, cc):
    from sai.kernels import aot

    meta = aot.compile_one("roi_align_v0_fp32", aot_spec(), cc, tmp_path)
    cubins = list((tmp_path / f"sm_{cc}").glob("*.cubin"))
    assert len(cubins) == 1 and cubins[0].stat().st_size > 1000
    assert [p["name"] for p in meta["params"]][:4] == ["x_ptr", "r_ptr", "b_ptr", "y_ptr"]
    assert {p["name"]: p["type"] for p in meta["params"]}["b_ptr"] == "*i64"
