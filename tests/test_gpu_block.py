"""The fused sparse block of the GPU (sai.kernels.sparse_block) under the Triton interpreter, against docs/design.md
3.1-3.4 composed from the float64 reference ops; the fused model's CUDA code path on CPU tensors
(SAI_KERNELS_ON_CPU=1, TRITON_INTERPRET=1) against the float64 model; its launch counts (issue 24 goals).

The oracle rounds the inputs and weights to the kernel's dtype and computes everything else in float64
(masks from 3.1's formula, convs, Interpolate, the tail), so the tolerance covers only the kernel's own
roundings (fp16/bf16 store conv results between the stages). Shapes are tiny (the interpreter's cost is
per program and op) but odd-sized and batched, with channel counts off the 16-wide tiles."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from runtime_helpers import half_sparse

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

from sai.models import build_model, fuse_for_inference, ops  # noqa: E402
from sai.models.blocks import inference_mask  # noqa: E402
from sai.models.fuse import cast_for_inference  # noqa: E402


@pytest.fixture(autouse=True)
def _cuda_path_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("SAI_KERNELS_ON_CPU", "1")


SB = pytest.importorskip("sai.kernels.sparse_block")

EPS = 1e-5
T_EVAL = 0.03
TOL = {torch.float32: 1e-5, torch.float16: 8 * 2.0**-11, torch.bfloat16: 8 * 2.0**-8}


def _d(t):
    return None if t is None else t.double()


def reference(x, mw, mb, strides, grid, u1, u2, wa, ba, sa, wb, bb, sb, relu_b, wc, tail_bias, wd, bd, ds,
              sigma1, sigma2, k, wo=None, bo=None, so=1):
    """docs/design.md 3.1 (masks) and 3.4 (second form) in float64 with the reference ops of sai.models.ops."""
    x = x.double()
    logits = [F.conv2d(x, mw[i:i + 1].double(), mb[i:i + 1].double(), stride=strides[i], padding=1) for i in (0, 1)]
    m1 = inference_mask(logits[0], T_EVAL, _d(u1), grid)
    m2 = inference_mask(logits[1], T_EVAL, _d(u2), grid)
    pa = wa.shape[-1] // 2
    a = ops.sparse_sample_conv_reference(x, m1, _d(wa), _d(ba), None, [sa] * 2, [pa] * 4, [1, 1], 1, 1, "relu")
    a = ops.interpolate_reference(a, m1, sigma1, k, EPS)
    off = None
    if wo is not None:
        off = ops.sparse_sample_conv_reference(x, m2, _d(wo), _d(bo), None, [so] * 2, [1] * 4, [1, 1], 1, 1, "none")
    b = ops.sparse_sample_conv_reference(a, m2, _d(wb), _d(bb), off, [sb] * 2, [1] * 4, [1, 1], 1, 1,
                                         "relu" if relu_b else "none")
    if wc is not None:
        b = ops.sparse_sample_conv_reference(b, m2, _d(wc), None, None, [1, 1], [0] * 4, [1, 1], 1, 1, "none")
    out = ops.interpolate_reference(b, m2, sigma2, k, EPS)
    if tail_bias is not None:
        out = out + tail_bias.double().reshape(1, -1, 1, 1)
    identity = x if wd is None else F.conv2d(x, _d(wd), _d(bd), stride=ds)
    return torch.relu(out + identity), m1, m2


def _case(kind, dtype, density="half", stoch=False, n=2, h=13, w=19, cin=10, planes=6, k=7, grid=3, seed=0):
    """One block's tensors, the kernel's result and the reference's. ``kind``: bottleneck (downsample, stride 2),
    bottleneck_id (identity, stride 1), bottleneck_dcn, basic (stride 2), basic_dcn."""
    g = torch.Generator().manual_seed(seed)
    basic = kind.startswith("basic")
    dcn = kind.endswith("dcn")
    cout = planes if basic else 4 * planes
    s = 1 if kind == "bottleneck_id" else 2
    if kind == "bottleneck_id":
        cin = cout
    down = kind != "bottleneck_id"
    x = torch.randn(n, cin, h, w, generator=g).to(dtype)
    mw = torch.randn(2, cin, 3, 3, generator=g) * 0.3
    bias0 = {"half": 0.0, "zero": -30.0, "one": 30.0}[density]
    mb = torch.tensor([bias0, bias0 + 0.2])
    if density != "half":
        grid = 0  # the grid prior would put ones into an all-zero mask
    ka = 3 if basic else 1
    sa, sb = (s, 1) if basic else (1, s)
    strides = (s, s) if basic else (1, s)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    wa, ba = rnd(planes, cin, ka, ka, scale=(cin * ka * ka) ** -0.5), rnd(planes, scale=0.1)
    wb, bb = rnd(planes, planes, 3, 3, scale=(planes * 9) ** -0.5), rnd(planes, scale=0.1)
    wc = None if basic else rnd(cout, planes, 1, 1, scale=planes ** -0.5)
    tail_bias = None if basic else rnd(cout, scale=0.1)
    wd, bd = (rnd(cout, cin, 1, 1, scale=cin ** -0.5), rnd(cout, scale=0.1)) if down else (None, None)
    wo, bo = (rnd(18, cin, 3, 3, scale=0.1), rnd(18)) if dcn else (None, None)  # offsets of about a pixel
    shapes = [(n, 2, (h - 1) // st + 1, (w - 1) // st + 1) for st in strides]
    u1, u2 = (torch.rand(shapes[0], generator=g), torch.rand(shapes[1], generator=g)) if stoch else (None, None)
    args = (wa, ba, sa, wb, bb, sb, not basic, wc, tail_bias, wd, bd, s, 0.7, 1.3, k)
    ref, rm1, rm2 = reference(x, mw, mb, strides, grid, u1, u2, *args, wo, bo, s)
    ws = SB.new_workspace(x.device)
    xin = x.contiguous(memory_format=torch.channels_last)
    out, m1, m2 = SB.sparse_block(xin, mw, mb, strides, T_EVAL, grid, u1, u2, *args, EPS, wo, bo, s, workspace=ws)
    assert int(ws.abs().sum()) == 0, "the mask kernel leaves its counters zeroed"
    return out, m1, m2, ref, rm1, rm2


def _check(out, m1, m2, ref, rm1, rm2, dtype):
    for got, want in ((m1, rm1), (m2, rm2)):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert torch.equal(got > 0, want > 0), "mask decisions differ from docs/design.md 3.1"
        assert (got.double() - want).abs().max().item() <= 1e-4
    assert out.dtype == dtype and out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    scale = max(ref.abs().max().item(), 1e-30)
    err = (out.double() - ref).abs().max().item() / scale
    assert err <= TOL[dtype], f"max error {err:.3g} of the largest output, allowed {TOL[dtype]:.3g}"


@pytest.mark.parametrize("kind", ["bottleneck", "bottleneck_id", "bottleneck_dcn", "basic", "basic_dcn"])
def test_block_variants_fp32(kind):
    out, m1, m2, ref, rm1, rm2 = _case(kind, torch.float32)
    assert 0.2 < (rm1 > 0).double().mean() < 0.9 and 0.2 < (rm2 > 0).double().mean() < 0.9
    _check(out, m1, m2, ref, rm1, rm2, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["bottleneck", "basic_dcn"])
def test_block_half_precision(kind, dtype):
    _check(*_case(kind, dtype, h=11, w=9), dtype)


@pytest.mark.parametrize("density", ["zero", "one"])
def test_block_densities_zero_and_one(density):
    out, m1, m2, ref, rm1, rm2 = _case("bottleneck", torch.float32, density=density, h=9, w=12)
    want = 0.0 if density == "zero" else 1.0
    assert float((rm1 > 0).double().mean()) == want and float((rm2 > 0).double().mean()) == want
    _check(out, m1, m2, ref, rm1, rm2, torch.float32)


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_block_stochastic_with_given_noise(kind):
    _check(*_case(kind, torch.float32, stoch=True, seed=3), torch.float32)


def test_block_larger_map_crosses_interp_and_mask_tiles():
    """More rows and columns than one interpolation tile (TH x TW = 8 x 16 under the interpreter), a
    5x5 Gaussian, channel counts past one 64-wide channel block."""
    _check(*_case("bottleneck_id", torch.float32, n=1, h=21, w=35, planes=17, k=5), torch.float32)


def test_block_refuses_mixed_dtypes():
    from sai.errors import SaiError

    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 4, 1, 1, dtype=torch.float16)
    with pytest.raises(SaiError, match="wa is torch.float16 but x is torch.float32"):
        SB.sparse_block(x, torch.zeros(2, 4, 3, 3), torch.zeros(2), (1, 1), T_EVAL, 0, None, None,
                        w, None, 1, w, None, 1, True, None, None, None, None, 1, 1.0, 1.0, 7, EPS)


# ----------------------------------------------------------------------------------------------
# whole models through the CUDA code path on CPU tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,options", [("sparse_resnet18", {}), ("sparse_resnet50", {"dcn_stages": (0, 1, 1, 1)})])
def test_whole_model_cuda_path_on_cpu(arch, options, monkeypatch):
    torch.manual_seed(0)
    model = half_sparse(build_model(arch, base_width=4 if arch.endswith("50") else 8, num_classes=10, seed=0,
                                    **options), offsets=True).eval()
    x = torch.randn(2, 3, 29, 35)
    calls = []
    real = SB.sparse_block
    monkeypatch.setattr(SB, "sparse_block", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    with torch.no_grad():
        want = model.double()(x.double())
        fused = fuse_for_inference(model.float())
        got = fused(x)
    assert len(calls) == len(list(fused.sparse_blocks())), "every sparse block ran sai.kernels.sparse_block"
    scale = want.abs().max().item()
    assert (got.double() - want).abs().max().item() <= 1e-5 * scale
    if arch == "sparse_resnet18":  # the fp16 model (fp32 masks) the same way
        with torch.no_grad():
            got16 = cast_for_inference(fuse_for_inference(model.float()), "fp16")(x[:1].half())
        assert got16.dtype == torch.float16
        assert (got16.double() - want[:1]).abs().max().item() <= 16 * 2.0**-11 * scale


def test_unsupported_dtype_falls_back_with_one_log_line(caplog):
    import sai.models.fuse as fuse_mod

    fuse_mod._fallbacks_logged.clear()
    torch.manual_seed(0)
    model = half_sparse(build_model("sparse_resnet18", base_width=8, num_classes=10, seed=0), offsets=True).eval().double()
    fused = fuse_for_inference(model)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="sai.models.fuse"), torch.no_grad():
        got = fused(x)
        fused(x)
        want = model(x)
    lines = [r.getMessage() for r in caplog.records if "per-op path" in r.getMessage()]
    assert len(lines) == 1 and "torch.float64" in lines[0], lines
    assert (got - want).abs().max().item() <= 1e-9 * want.abs().max().item()


@pytest.mark.parametrize("why", ["autograd", "kernels_off", "mask_fn"])
def test_every_refusal_falls_back_to_the_per_op_path_with_one_log_line(why, caplog, monkeypatch):
    """Each configuration the GPU block cannot take (here: autograd recording, the kernels switched off, a
    substitute mask_fn) runs the per-op path, logs one line naming the reason (once, not per call or block)
    and gives the float64 model's numbers."""
    import sai.models.fuse as fuse_mod

    fuse_mod._fallbacks_logged.clear()
    torch.manual_seed(0)
    model = half_sparse(build_model("sparse_resnet18", base_width=8, num_classes=10, seed=0), offsets=True).eval()
    x = torch.randn(1, 3, 27, 30)
    with torch.no_grad():
        want = model.double()(x.double())
    fused = fuse_for_inference(model.float())
    calls = []
    real = SB.sparse_block
    monkeypatch.setattr(SB, "sparse_block", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    phrase = {"autograd": "autograd is recording", "kernels_off": "SAI_TRITON_KERNELS=0",
              "mask_fn": "a substitute mask_fn is set"}[why]
    if why == "kernels_off":
        monkeypatch.setenv("SAI_TRITON_KERNELS", "0")
    if why == "mask_fn":  # the same formula as a substitute (as the exporter sets one while tracing)
        for _, blk in fused.sparse_blocks():
            blk.mask_fn = inference_mask
    if why == "autograd":
        for prm in fused.parameters():
            prm.requires_grad_(True)
    with caplog.at_level(logging.WARNING, logger="sai.models.fuse"), torch.set_grad_enabled(why == "autograd"):
        got = fused(x)
        fused(x)
    lines = [r.getMessage() for r in caplog.records if "per-op path" in r.getMessage()]
    assert len(lines) == 1 and phrase in lines[0], lines
    assert calls == [], "no block ran sai.kernels.sparse_block"
    assert (got.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_shapes_past_int32_indexing_are_refused_by_name():
    """A map whose per-image elements reach 2^31 (the kernels index within an image in int32) is refused with
    the reason (a broadcast view: no memory behind it; the refusal reads shapes only)."""
    model = fuse_for_inference(build_model("sparse_resnet18", base_width=8, num_classes=10, seed=0).eval())
    blk = next(b for _, b in model.sparse_blocks())
    c = blk.inplanes
    huge = torch.zeros(1, 1, 1, 1).expand(1, c, 2**31 // c // 4096 + 1, 4096)
    with torch.no_grad():
        why = blk._gpu_refusal(huge)
        assert why is not None and "int32" in why and str(list(huge.shape)) in why
        assert blk._gpu_refusal(torch.zeros(1, c, 8, 8)) is None
        assert "4-D" in blk._gpu_refusal(torch.zeros(c, 8, 8))


def test_layouts_all_run_the_gpu_block(monkeypatch):
    """NCHW, channels_last and a strided view all run the GPU block (it reads through strides / converts once),
    with the same numbers: layout is no reason to fall back."""
    torch.manual_seed(0)
    model = half_sparse(build_model("sparse_resnet18", base_width=8, num_classes=10, seed=0), offsets=True).eval()
    fused = fuse_for_inference(model)
    calls = []
    real = SB.sparse_block
    monkeypatch.setattr(SB, "sparse_block", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    big = torch.randn(1, 3, 27, 62)
    outs = []
    with torch.no_grad():
        for x in (big[..., ::2].contiguous(), big[..., ::2].contiguous(memory_format=torch.channels_last),
                  big[..., ::2]):
            outs.append(fused(x))
    assert len(calls) == 3 * len(list(fused.sparse_blocks()))
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-6) and torch.allclose(outs[0], outs[2], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# launch counts of the torch CUDA path (issue 24 goals: <= 8 per Bottleneck, <= dense + 10% per forward)
# ----------------------------------------------------------------------------------------------


def test_launches_per_bottleneck():
    from sai.kernels.launch_count import count_launches

    torch.manual_seed(0)
    model = fuse_for_inference(half_sparse(build_model("sparse_resnet50", base_width=4, num_classes=10, seed=0,
                                                       dcn_stages=(0, 1, 1, 1)), offsets=True).eval())
    model.record_stats = False
    # with downsample; identity; deformable (stage 2)
    for blk, h, w in ((model.layer1[0], 9, 11), (model.layer1[1], 9, 11), (model.layer2[1], 5, 6)):
        inp = torch.randn(1, blk.inplanes, h, w).contiguous(memory_format=torch.channels_last)
        fused = count_launches(blk, inp)
        assert fused.total <= 8, fused.summary()
        assert fused.triton["block_masks_kernel"] == 1 and fused.triton["interp_sep_kernel"] == 2
        per_op = count_launches(blk, inp, per_op=True, execute=False)  # the same sequence, not interpreted
        assert per_op.total > 5 * fused.total, (per_op.summary(), fused.summary())


def test_launches_sparse_resnet101_within_dense_plus_10_percent():
    from sai.kernels.launch_count import count_launches

    counts = {}
    for arch in ("sparse_resnet101", "resnet101"):
        torch.manual_seed(0)
        model = fuse_for_inference(build_model(arch, num_classes=10, seed=0))
        model.record_stats = False
        counts[arch] = count_launches(model, torch.randn(1, 3, 32, 32), execute=False)
    sparse, dense = counts["sparse_resnet101"].total, counts["resnet101"].total
    assert counts["sparse_resnet101"].triton["block_masks_kernel"] == 33  # every block fused
    assert dense >= 33 * 7 and sparse <= 1.1 * dense, (sparse, dense)
