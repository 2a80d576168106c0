"""Eager-CPU fast paths of the fused model against the plain PyTorch computation they replace."""

import pytest
import torch
import torch.nn.functional as F

from sai.models import fuse


@pytest.mark.parametrize("shape", [(1, 16, 9, 7), (3, 32, 16, 15), (2, 8, 1, 5)])
@pytest.mark.parametrize("strides", [(1, 1), (1, 2), (2, 2)])
def test_mask_logits_match_3x3_conv(shape, strides):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    w = torch.randn(2, shape[1], 3, 3, generator=g)
    b = torch.randn(2, generator=g)
    got = fuse.mask_logits(x, w, b, strides)
    for i, s in enumerate(strides):
        want = F.conv2d(x, w[i:i + 1], b[i:i + 1], stride=s, padding=1)
        assert got[i].shape == want.shape
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)
