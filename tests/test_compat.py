"""sai.compat: every private API sai uses is still where sai.compat looks for it (the failure message says
what moved and what to update), and each public fallback gives the same result as the private path."""

from __future__ import annotations

import importlib

import pytest
import torch

from sai import compat


@pytest.mark.parametrize("key", sorted(compat.PRIVATE_APIS))
def test_private_api_is_where_compat_expects_it(key):
    assert compat.private_api(key) is not None, compat.moved_message(key)


def test_moved_message_names_the_attribute_and_the_fix():
    msg = compat.moved_message("torch_onnx_decompose")
    assert "torch.onnx._internal.exporter._fx_passes.decompose_with_registry" in msg
    assert "sai/compat.py" in msg and "slower" in msg


def test_no_private_api_outside_compat():
    """The modules that used private hooks now go through sai.compat or public API."""
    import inspect

    from sai.exporter import export, maskop
    from sai.models import fuse, network, train_demo

    for mod in (export, maskop, fuse, network, train_demo):
        src = inspect.getsource(mod)
        for needle in ("_internal.exporter", "_constant_folding", "_BatchNorm", "fuse.mask_from_logit ="):
            assert needle not in src, f"{mod.__name__} uses {needle}; route it through sai.compat"


def test_decomposition_skip_and_its_fallback_give_the_same_model(tmp_path, monkeypatch):
    """sai export with the private hook, and as where torch has moved it (the public path), compute the same."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from sai.exporter.export import export_onnx
    from sai.models import build_model

    fx_passes = importlib.import_module(compat.PRIVATE_APIS["torch_onnx_decompose"][0])
    original = fx_passes.decompose_with_registry
    torch.manual_seed(0)
    model = build_model("sparse_resnet18", base_width=4, num_classes=3)
    export_onnx(model, tmp_path / "fast.onnx", input_shape=(1, 3, 40, 40))
    assert fx_passes.decompose_with_registry is original  # restored after the export
    module, _, effect = compat.PRIVATE_APIS["torch_onnx_decompose"]
    monkeypatch.setitem(compat.PRIVATE_APIS, "torch_onnx_decompose", (module, "moved_in_a_future_torch", effect))
    with compat.skip_noop_onnx_decomposition() as active:
        assert not active  # the fallback: nothing swapped
        assert fx_passes.decompose_with_registry is original
    export_onnx(model, tmp_path / "slow.onnx", input_shape=(1, 3, 40, 40))
    protos = [onnx.load(str(tmp_path / f"{k}.onnx")) for k in ("fast", "slow")]
    ops = [sorted((n.domain, n.op_type) for n in p.graph.node) for p in protos]
    assert [o for o in ops[0] if o[0] == "sai"] == [o for o in ops[1] if o[0] == "sai"]
    runs = [ort.InferenceSession(str(tmp_path / f"{k}.onnx"), providers=["CPUExecutionProvider"])
            for k in ("fast", "slow")]
    for shape in ((1, 3, 40, 40), (2, 3, 33, 47)):
        feed = {runs[0].get_inputs()[0].name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
        a, b = (r.run(None, feed)[0] for r in runs)
        np.testing.assert_array_equal(a, b)


def test_skip_still_decomposes_graphs_that_need_it():
    """A graph with an op outside ONNX's implemented set goes through the original decomposition."""
    fx_passes = importlib.import_module(compat.PRIVATE_APIS["torch_onnx_decompose"][0])
    calls = []
    original = fx_passes.decompose_with_registry

    def spy(ep, registry):
        calls.append(1)
        return original(ep, registry)

    class M(torch.nn.Module):
        def forward(self, x):
            y = x.clone()
            y.add_(1)  # a mutating op: must be decomposed (functionalised)
            return y

    fx_passes.decompose_with_registry = spy
    try:
        with compat.skip_noop_onnx_decomposition():
            torch.onnx.export(M(), (torch.randn(2, 3),), dynamo=True, optimize=False, verbose=False)
    finally:
        fx_passes.decompose_with_registry = original
    assert calls  # the skip handed this graph to the original decomposition


def test_is_batchnorm_private_and_public_agree():
    mods = [torch.nn.BatchNorm1d(3), torch.nn.BatchNorm2d(3), torch.nn.BatchNorm3d(3), torch.nn.SyncBatchNorm(3),
            torch.nn.LazyBatchNorm2d(), torch.nn.InstanceNorm2d(3), torch.nn.LayerNorm(3), torch.nn.Conv2d(1, 1, 1),
            torch.nn.GroupNorm(1, 3)]
    for m in mods:
        assert compat.is_batchnorm(m) == compat.is_batchnorm(m, private=False), type(m).__name__
    assert [compat.is_batchnorm(m) for m in mods] == [True] * 5 + [False] * 4


def test_the_decomposition_hook_is_still_needed(monkeypatch):
    """The reason for the private hook in this torch (sai/compat.py, pinned torch 2.13): torch.onnx.export re-traces
    (``ExportedProgram.run_decompositions``) even a graph it would leave unchanged. This fails when a torch no longer
    does (then drop ``skip_noop_onnx_decomposition`` and its PRIVATE_APIS entries) or when the hook stops skipping."""
    calls = []
    original = torch.export.ExportedProgram.run_decompositions

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counted)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = (torch.randn(1, 3, 8, 8),)
    torch.onnx.export(model, x, dynamo=True, optimize=False, verbose=False)
    plain = len(calls)
    assert plain > 0, (f"torch {torch.__version__} no longer re-traces a graph with nothing to decompose: "
                       "sai.compat.skip_noop_onnx_decomposition is not needed any more; remove it")
    calls.clear()
    with compat.skip_noop_onnx_decomposition() as active:
        torch.onnx.export(model, x, dynamo=True, optimize=False, verbose=False)
    assert active and len(calls) < plain, "the hook no longer skips the re-trace"


def test_export_sets_the_fused_blocks_mask_hook_and_sets_it_back():
    """sai.exporter.maskop goes through the fused blocks' public ``mask_fn`` hook: the one-node mask while the
    block is active, each block's own value afterwards, also when the export inside fails."""
    from sai.exporter.maskop import mask_as_one_node, one_node_mask
    from sai.models import build_model, fuse_for_inference

    model = fuse_for_inference(build_model("sparse_resnet18", base_width=4, num_classes=3).eval())
    blocks = [m for m in model.modules() if getattr(m, "fused", False) and getattr(m, "sparse", False)]
    assert len(blocks) == 8

    def own(logit, temperature, noise_u, grid_interval):
        raise AssertionError("not called here")

    blocks[0].mask_fn = own
    with pytest.raises(RuntimeError, match="export failed"), mask_as_one_node(model):
        assert all(b.mask_fn is one_node_mask for b in blocks)
        raise RuntimeError("export failed")
    assert blocks[0].mask_fn is own and all(b.mask_fn is None for b in blocks[1:])
