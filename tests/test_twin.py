"""sai.models.dense_twin, the one dense-twin builder: from a sparse model or a checkpoint (path or read
once), the plain ResNet whose output equals the sparse model's with every position sampled."""

from __future__ import annotations

import pytest
import torch
from runtime_helpers import tiny_checkpoint, tiny_model

from sai.errors import SaiError
from sai.models import dense_twin, model_from_checkpoint, set_sampling
from sai.models.checkpoint import read_checkpoint_file


def _x():
    return torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))


def test_from_a_model_equals_it_in_dense_sampling():
    sparse = tiny_model().eval()
    twin = dense_twin(sparse)
    assert twin.arch == "resnet18" and not twin.training
    set_sampling(sparse, "dense")
    with torch.no_grad():
        torch.testing.assert_close(twin(_x()), sparse(_x()), rtol=1e-4, atol=1e-4)


def test_from_a_path_and_from_one_read_agree(tmp_path):
    ck = tiny_checkpoint(tmp_path)
    a, b = dense_twin(ck), dense_twin(read_checkpoint_file(ck))
    sparse, _ = model_from_checkpoint(str(ck), sampling="dense")
    with torch.no_grad():
        ref = sparse.eval()(_x())
        torch.testing.assert_close(a(_x()), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b(_x()), ref, rtol=1e-4, atol=1e-4)


def test_head_override_drops_the_head_and_keeps_the_trunk():
    sparse = tiny_model().eval()
    twin = dense_twin(sparse, head="none")
    assert twin.head == "none"
    assert all(torch.equal(v, sparse.state_dict()[k]) for k, v in twin.state_dict().items())


def test_a_checkpoint_missing_dense_weights_is_refused():
    sd = {k: v for k, v in tiny_model().state_dict().items() if not k.startswith("layer4.1.conv2")}
    with pytest.raises(SaiError, match=r"does not fit resnet18: missing \['layer4\.1\.conv2\.weight'"):
        dense_twin({"state_dict": sd}, num_classes=10)
    with pytest.raises(SaiError, match="needs a SaiResNet"):
        dense_twin(torch.nn.Conv2d(3, 3, 1))
