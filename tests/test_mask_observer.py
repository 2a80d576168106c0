"""The sparse blocks' explicit extension points: mask observers, the statistics switch, the training
options and the fused blocks' ``mask_fn``; each against docs/design.md 3.1 written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sai.errors import SaiError
from sai.models import build_model, fuse_for_inference
from sai.models.train_demo import interpolate_matmul

D = 1e-8


def design_mask(logit, temperature, grid, noise_u=None, hard=True):
    """docs/design.md 3.1, written independently of sai.models.blocks."""
    p = torch.sigmoid(logit).clamp(0, 1)
    z = torch.log(p + D) - torch.log(1 - p + D)
    if noise_u is not None:
        g = -torch.log(-torch.log(noise_u.clamp(0, 1) + D) + D)
        z = z + g[:, 0:1] - g[:, 1:2]
    s = torch.sigmoid(z / (temperature + D))
    if grid > 0:
        s = s.clone()
        s[:, :, ::grid, ::grid] = 1
    return s * (s >= 0.5) if hard else s


def _model(arch="sparse_resnet18", seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model(arch, base_width=8, num_classes=5, grid_prior_interval=3, **kw).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # mask predictors with intermediate densities
        for name, p in model.named_parameters():
            if "_mask." in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if name.endswith("bias") else 0.08))
    return model.eval()


X = torch.randn(2, 3, 45, 38, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _block_inputs(model, x):
    """Every sparse block's input, captured with torch's public forward pre-hooks."""
    inputs = {}
    hooks = [blk.register_forward_pre_hook(lambda m, a, _n=name: inputs.__setitem__(_n, a[0]))
             for name, blk in model.sparse_blocks()]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return inputs, out


def _expected_masks(model, inputs):
    """m1, m2 of each block from its input by the design formula (mask conv 3x3, pad 1, the mask's stride)."""
    want = {}
    for name, blk in model.sparse_blocks():
        x = inputs[name]
        if blk.fused:
            params = [(blk.mask1_weight, blk.mask1_bias), (blk.mask2_weight, blk.mask2_bias)]
        else:
            params = [(blk.conv1_mask.weight, blk.conv1_mask.bias), (blk.conv2_mask.weight, blk.conv2_mask.bias)]
        for which, (w, b), s in zip(("m1", "m2"), params, blk.mask_strides, strict=True):
            logit = F.conv2d(x, w, b, stride=s, padding=1)
            want[(name, which)] = design_mask(logit, blk.T_eval, blk.grid_prior_interval)
    return want


@pytest.mark.parametrize("arch", ["sparse_resnet18", "sparse_resnet50"])
@pytest.mark.parametrize("fused", [False, True])
def test_observer_sees_every_blocks_masks_as_the_design_formula(arch, fused):
    model = _model(arch)
    if fused:
        model = fuse_for_inference(model)
    seen = {}
    with model.add_mask_observer(lambda n, w, m: seen.__setitem__((n, w), m.clone())) as handle:
        inputs, out = _block_inputs(model, X)
    names = [n for n, _ in model.sparse_blocks()]
    assert handle.names == names
    assert list(seen) == [(n, w) for n in names for w in ("m1", "m2")]  # forward order, both masks
    want = _expected_masks(model, inputs)
    for key, m in seen.items():
        assert m.shape == want[key].shape, key
        assert torch.equal(m > 0, want[key] > 0), key
        torch.testing.assert_close(m, want[key], atol=1e-9, rtol=0)
    assert any(0 < float((m > 0).double().mean()) < 1 for m in seen.values())  # not trivially all / none
    with torch.no_grad():
        torch.testing.assert_close(model(X), out, atol=0, rtol=0)  # the observer changed nothing


def test_observed_masks_are_the_ones_the_fused_block_used():
    """The block's output recomputed by the design formulas from the observed masks equals the block's own."""
    from sai.models.ops import interpolate_reference

    model = fuse_for_inference(_model())
    name, blk = next(iter(model.sparse_blocks()))
    x = torch.randn(1, blk.inplanes, 13, 11, dtype=torch.float64)
    seen = {}
    with torch.no_grad(), blk.add_mask_observer(lambda n, w, m: seen.__setitem__(w, m)):
        y = blk(x)
    m1, m2 = seen["m1"], seen["m2"]
    s = blk.stride  # BasicBlock (docs/design.md 3.4, our variant): conv, interpolate, conv, interpolate
    a = F.relu(F.conv2d(x, blk.conv1_weight, blk.conv1_bias, stride=s, padding=1)) * (m1 > 0)
    a = interpolate_reference(a, m1, blk.sigma1, blk.gaussian_kernel, 1e-5)
    b = F.conv2d(a, blk.conv2_weight, blk.conv2_bias, padding=1) * (m2 > 0)
    b = interpolate_reference(b, m2, blk.sigma2, blk.gaussian_kernel, 1e-5)
    torch.testing.assert_close(y, F.relu(b + blk._identity(x)), atol=1e-9, rtol=1e-9)


def test_remove_and_context_manager_and_two_observers():
    model = fuse_for_inference(_model())
    a, b = [], []
    ha = model.add_mask_observer(lambda n, w, m: a.append(n))
    with model.add_mask_observer(lambda n, w, m: b.append(n)):
        with torch.no_grad():
            model(X)
    assert len(a) == len(b) == 16
    with torch.no_grad():
        model(X)
    assert len(a) == 32 and len(b) == 16  # the context manager removed b only
    ha.remove()
    ha.remove()  # idempotent
    with torch.no_grad():
        model(X)
    assert len(a) == 32
    assert all(not blk._mask_observers for _, blk in model.sparse_blocks())


def test_observers_stay_with_their_model_not_its_fused_copy():
    model = _model()
    seen = []
    handle = model.add_mask_observer(lambda n, w, m: seen.append(n))
    fused = fuse_for_inference(model)
    again = fuse_for_inference(fused)  # a deep copy of a fused model
    with torch.no_grad():
        fused(X)
        again(X)
    assert seen == []
    handle.remove()


def test_observers_not_called_while_exporting():
    model = fuse_for_inference(_model().float())
    seen = []
    with model.add_mask_observer(lambda n, w, m: seen.append(n)):
        torch.export.export(model, (X[:1].float(),))
    assert seen == []


@pytest.mark.parametrize("fused", [False, True])
def test_record_stats_off_keeps_no_statistics_but_observers_still_run(fused):
    model = _model()
    if fused:
        model = fuse_for_inference(model)
    model.reset_densities()
    with torch.no_grad():
        model(X)
    assert len(model.mask_stats()) == 8 and model.record_stats
    model.record_stats = False
    assert not model.record_stats and all(not b.record_stats for _, b in model.sparse_blocks())
    model.reset_densities()
    seen = []
    with torch.no_grad(), model.add_mask_observer(lambda n, w, m: seen.append(n)):
        model(X)
    assert model.mask_stats() == {} and model.densities() == {}
    assert all(b.mask_stats() is None for _, b in model.sparse_blocks())
    assert len(seen) == 16
    if not fused:  # the switch carries over to the fused copy
        assert not fuse_for_inference(model).record_stats
    model.record_stats = True
    with torch.no_grad():
        model(X)
    assert len(model.mask_stats()) == 8


def test_record_stats_on_a_single_block():
    blk = next(b for _, b in fuse_for_inference(_model()).sparse_blocks())
    blk.record_stats = False
    with torch.no_grad():
        blk(torch.randn(1, blk.inplanes, 9, 9, dtype=torch.float64))
    assert blk.mask_stats() is None


# -- training options ------------------------------------------------------------------------------


def test_training_masks_inference_is_the_hard_noise_free_mask_at_the_training_temperature():
    model = _model().train()
    seen = {}
    with model.training_options(training_masks="inference"), \
            model.add_mask_observer(lambda n, w, m: seen.__setitem__((n, w), m.detach().clone())):
        temps = {n: float(b.conv1_gumbel.cur_T) for n, b in model.sparse_blocks()}
        inputs = {}
        hooks = [b.register_forward_pre_hook(lambda m, a, _n=n: inputs.__setitem__(_n, a[0].detach()))
                 for n, b in model.sparse_blocks()]
        rng = torch.get_rng_state()
        model(X)
        assert torch.equal(torch.get_rng_state(), rng)  # no Gumbel noise drawn
        for h in hooks:
            h.remove()
    for name, blk in model.sparse_blocks():
        w = blk.conv1_mask.weight.detach()
        logit = F.conv2d(inputs[name], w, blk.conv1_mask.bias.detach(), stride=blk.mask_strides[0], padding=1)
        torch.testing.assert_close(seen[(name, "m1")], design_mask(logit, temps[name], blk.grid_prior_interval),
                                   atol=1e-9, rtol=0)
    assert all(b.training_masks == "gumbel" for _, b in model.sparse_blocks())  # restored on exit


def test_training_masks_default_is_the_soft_gumbel_mask():
    model = _model().train()
    seen = {}
    with model.add_mask_observer(lambda n, w, m: seen.__setitem__((n, w), m.detach())):
        rng = torch.get_rng_state()
        model(X)
        assert not torch.equal(torch.get_rng_state(), rng)  # noise drawn from torch's global RNG
    assert any(((m > 0) & (m < 0.5)).any() for m in seen.values())  # soft: no threshold


def test_interpolate_fn_is_used_and_restored():
    model = _model().train()
    calls = []

    def fn(f, m, sigma, k):
        calls.append(k)
        return interpolate_matmul(f, m, sigma, k)

    with model.training_options(interpolate_fn=fn):
        model.set_training_options(training_masks="inference")  # set inside: also undone on exit
        model(X)
        assert calls == [7] * 16
        with torch.no_grad():
            y_fn = model.eval()(X)  # the option holds in evaluation forwards too
    assert all(b.interpolate_fn is None and b.training_masks == "gumbel" for _, b in model.sparse_blocks())
    with torch.no_grad():
        y_ref = model(X)  # the reference interpolate: the same formula
    torch.testing.assert_close(y_fn, y_ref, atol=1e-9, rtol=1e-9)


def test_training_options_checked():
    model = _model()
    with pytest.raises(SaiError, match="training_masks must be one of"):
        model.set_training_options(training_masks="hard")
    with pytest.raises(SaiError, match="not to a fused one"):
        fuse_for_inference(model).set_training_options(interpolate_fn=interpolate_matmul)


# -- the fused blocks' mask_fn ---------------------------------------------------------------------


def test_mask_fn_is_called_with_the_design_arguments():
    model = fuse_for_inference(_model())
    calls = []
    _, blk = next(iter(model.sparse_blocks()))

    def fn(logit, temperature, noise_u, grid):
        calls.append((temperature, noise_u, grid))
        return design_mask(logit, temperature, grid, noise_u)

    with torch.no_grad():
        y0 = model(X)
        blk.mask_fn = fn
        y1 = model(X)
        blk.mask_fn = None
    assert calls == [(0.03, None, 3)] * 2
    torch.testing.assert_close(y1, y0, atol=1e-9, rtol=0)
    assert math.isclose(blk.T_eval, 0.03)


# -- the runtime's users of the observer ---------------------------------------------------------------


def test_torch_engine_mask_outputs_come_from_the_observer_and_go_with_close():
    import numpy as np

    from sai.runtime.serve_masks import with_mask_outputs
    from sai.runtime.torch_backend import TorchEngine
    from sai.runtime.validate import record_torch_masks

    model = fuse_for_inference(_model().float())
    engine = record_torch_masks(TorchEngine(model=model))
    assert engine.mask_names == [f"mask.{n}.{w}" for n, _ in model.sparse_blocks() for w in ("m1", "m2")]
    x = X[:1].float()
    out = engine.infer({"input": x.numpy()})
    inputs, logits = _block_inputs(engine.model, x)
    want = _expected_masks(engine.model, inputs)
    assert set(out) == {"logits", *engine.mask_names}
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-5)
    for (name, which), m in want.items():
        np.testing.assert_array_equal(out[f"mask.{name}.{which}"] > 0, m.numpy() > 0)
    blocks = [b for _, b in engine.model.sparse_blocks()]
    engine.close()
    assert all(not b._mask_observers for b in blocks)  # the observer went with the engine

    with pytest.raises(SaiError, match="no sparse blocks"):
        with_mask_outputs(TorchEngine(model=build_model("resnet18", base_width=8, num_classes=5)))
    metered = with_mask_outputs(TorchEngine(model=fuse_for_inference(_model().float())))
    seen = []
    metered.observer = lambda dens, n: seen.append((dens, n))
    assert set(metered.infer({"input": x.numpy()})) == {"logits"}
    assert len(seen[0][0]) == 16 and seen[0][1] == 1
    metered.close()


def test_demo_report_block_masks_match_the_design_formula():
    from sai.demo.report import block_masks

    model = fuse_for_inference(_model())
    logits, masks = block_masks(model, X)
    inputs, want_logits = _block_inputs(model, X)
    torch.testing.assert_close(logits, want_logits, atol=0, rtol=0)
    want = _expected_masks(model, inputs)
    assert list(masks) == [n for n, _ in model.sparse_blocks()]
    for name, (m1, m2) in masks.items():
        torch.testing.assert_close(m1, want[(name, "m1")], atol=1e-9, rtol=0)
        torch.testing.assert_close(m2, want[(name, "m2")], atol=1e-9, rtol=0)
    assert all(not b._mask_observers for _, b in model.sparse_blocks())
    with pytest.raises(SaiError, match="fuse_for_inference"):
        block_masks(_model(), X)
