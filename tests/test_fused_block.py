"""``sai_cpu::sparse_block``, the fused NHWC CPU kernel of a whole sparse block (models/csrc/sai_cpu_blocks.h),
against docs/design.md 3.2-3.4 composed from the plain-PyTorch reference ops in float64; and the fused model's
use of it (sai.models.fuse.FAST_BLOCKS) against the per-op path."""

import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import sai.models.fuse as fuse_mod
from sai.models import build_model, cpu_kernels, fuse_for_inference, ops


@pytest.fixture(autouse=True)
def _kernels():
    if not cpu_kernels.load():
        if os.environ.get("SAI_REQUIRE_CPU_KERNELS") == "1":
            pytest.fail("the C++ CPU kernels are not built: run make install")
        pytest.skip("C++ CPU kernels not built (python -m sai.models.build_cpu_kernels)")

EPS = 1e-5


def reference_block(x, m1, m2, wa, ba, sa, wb, bb, sb, relu_b, wc, tail_bias, identity, sigma1, sigma2, k,
                    wo=None, bo=None, so=1):
    """docs/design.md 3.4 (second form) with the reference ops, in float64; with ``wo`` conv_b is deformable,
    its offsets the 3x3 conv (``wo``, ``bo``, stride ``so``) of x at m2's positions."""
    d = [None if t is None else t.double() for t in (x, m1, m2, wa, ba, wb, bb, wc, tail_bias, identity, wo, bo)]
    x, m1, m2, wa, ba, wb, bb, wc, tail_bias, identity, wo, bo = d
    pa, pb = wa.shape[-1] // 2, wb.shape[-1] // 2
    a = ops.sparse_sample_conv_reference(x, m1, wa, ba, None, [sa] * 2, [pa] * 4, [1, 1], 1, 1, "relu")
    a = ops.interpolate_reference(a, m1, sigma1, k, EPS)
    off = None
    if wo is not None:
        po = wo.shape[-1] // 2
        off = ops.sparse_sample_conv_reference(x, m2, wo, bo, None, [so] * 2, [po] * 4, [1, 1], 1, 1, "none")
    dg = 1 if wo is None else wo.shape[0] // (2 * wb.shape[-1] ** 2)
    b = ops.sparse_sample_conv_reference(a, m2, wb, bb, off, [sb] * 2, [pb] * 4, [1, 1], 1, dg,
                                         "relu" if relu_b else "none")
    if wc is not None:
        b = ops.sparse_sample_conv_reference(b, m2, wc, None, None, [1, 1], [0] * 4, [1, 1], 1, 1, "none")
    out = ops.interpolate_reference(b, m2, sigma2, k, EPS)
    if tail_bias is not None:
        out = out + tail_bias.reshape(1, -1, 1, 1)
    return torch.relu(out + identity)


def _mask(kind, shape, g):
    if kind == "hard":
        return (torch.rand(shape, generator=g) < 0.3).float()
    if kind == "soft":  # as at inference with soft masks: 0 or in [0.5, 1], exact ones included
        u = torch.rand(shape, generator=g)
        m = u * (u >= 0.5)
        m[u > 0.9] = 1.0
        return m
    if kind == "empty":
        return torch.zeros(shape)
    return torch.ones(shape)


def _run(kind, n, cin, h, w, planes, cout, ka, sa, kb, sb, relu_b, with_c, k=7, seed=0, fmt=torch.contiguous_format,
         down=True, deform_groups=0):
    """One block through sai_cpu::sparse_block vs reference_block; ``down``: a 1x1 downsample conv (stride
    sa * sb) makes the identity, else the identity is x itself (cin == the block's output channels);
    ``deform_groups`` > 0: conv_b is deformable, its offsets (a few pixels, off the grid) from a 3x3 conv
    of x at stride sa * sb."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g).contiguous(memory_format=fmt)
    ho, wo = (h - 1) // sa + 1, (w - 1) // sa + 1
    ho2, wo2 = (ho - 1) // sb + 1, (wo - 1) // sb + 1
    m1, m2 = _mask(kind, (n, 1, ho, wo), g), _mask(kind, (n, 1, ho2, wo2), g)
    wa = torch.randn(planes, cin, ka, ka, generator=g) / (cin * ka * ka) ** 0.5
    wb = torch.randn(planes, planes, kb, kb, generator=g) / (planes * kb * kb) ** 0.5
    wc = torch.randn(cout, planes, 1, 1, generator=g) / planes ** 0.5 if with_c else None
    ba, bb = torch.randn(planes, generator=g) * 0.1, torch.randn(planes, generator=g) * 0.1
    c_out = cout if with_c else planes
    tail_bias = torch.randn(c_out, generator=g) * 0.1 if with_c else None
    ds = sa * sb
    wd = torch.randn(c_out, cin, 1, 1, generator=g) / cin ** 0.5 if down else None
    bd = torch.randn(c_out, generator=g) * 0.1 if down else None
    identity = torch.nn.functional.conv2d(x.double(), wd.double(), bd.double(), stride=ds) if down else x
    wo = bo = None
    if deform_groups:
        wo = torch.randn(2 * deform_groups * kb * kb, cin, 3, 3, generator=g) * (1.5 / (cin * 9) ** 0.5)
        bo = torch.randn(2 * deform_groups * kb * kb, generator=g) * 0.7
    pack = fuse_mod._pack_weight
    got = torch.ops.sai_cpu.sparse_block(
        x, m1, m2, pack(wa), ba, sa, pack(wb), bb, sb, relu_b, None if wc is None else pack(wc), tail_bias,
        pack(wd) if down else None, bd, ds, 0.9, 1.3, k, EPS, None if wo is None else pack(wo), bo, ds)
    want = reference_block(x, m1, m2, wa, ba, sa, wb, bb, sb, relu_b, wc, tail_bias, identity, 0.9, 1.3, k,
                           wo, bo, ds)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    return got, want


@pytest.mark.parametrize("kind", ["hard", "soft", "empty", "full"])
@pytest.mark.parametrize("stride", [1, 2])
def test_bottleneck_form_matches_the_reference(kind, stride):
    # 1x1 -> Interpolate -> 3x3 (stride) -> 1x1 conv3 -> Interpolate + bias + downsampled identity, ReLU;
    # channel counts off the 16-column panels and the 64-channel register block, positions off the
    # 6-row register tile and the 48-position tile
    _run(kind, 2, 24, 13, 19, 20, 40, 1, 1, 3, stride, True, True, seed=stride)


def test_bottleneck_without_downsample_adds_the_input():
    _run("soft", 1, 40, 12, 15, 20, 40, 1, 1, 3, 1, True, True, down=False)


@pytest.mark.parametrize("stride,down", [(2, True), (1, False)])
def test_basic_block_form_matches_the_reference(stride, down):
    # 3x3 (stride) -> Interpolate -> 3x3, bias and no activation -> Interpolate + identity, ReLU; K = 9 * 35
    # spans two K blocks of the GEMM
    _run("hard", 1, 35, 17, 12, 35, 35, 3, stride, 3, 1, False, False, k=5, down=down)


@pytest.mark.parametrize("deform_groups", [0, 1], ids=["regular", "deformable"])
@pytest.mark.parametrize("size", [(6, 7), (48, 40)], ids=["few-positions", "many-positions"])
def test_both_gemm_schedules_match_the_reference(size, deform_groups):
    # few active positions: one im2col on the calling thread and GEMMs split over the weight's panels;
    # many: 48-position tiles, each im2col'd and given both GEMMs of conv_b/conv_c on a pool thread
    _run("hard", 1, 64, *size, 64, 256, 1, 1, 3, 1, True, True, k=3, deform_groups=deform_groups)


@pytest.mark.parametrize("form,deform_groups", [("bottleneck", 1), ("bottleneck", 2), ("basic", 1)])
def test_deformable_conv_b_matches_the_reference(form, deform_groups):
    # DCN v1 conv_b: taps sampled bilinearly at offsets from the 3x3 offset conv of x (at the block's
    # stride) at m2's positions; offsets of a few pixels, many of them off the image
    if form == "bottleneck":
        _run("soft", 1, 24, 13, 11, 20, 40, 1, 1, 3, 2, True, True, deform_groups=deform_groups)
    else:
        _run("hard", 1, 16, 12, 14, 16, 16, 3, 2, 3, 1, False, False, k=5, deform_groups=deform_groups)


def test_nhwc_input_and_kernel_size_one():
    # a channels_last input is read in place; k = 1: Interpolate's window is the position itself
    _run("soft", 1, 32, 9, 9, 32, 64, 1, 1, 3, 1, True, True, k=1, fmt=torch.channels_last)


def test_bad_arguments_are_refused_by_name():
    x = torch.randn(1, 8, 6, 6)
    m = torch.ones(1, 1, 6, 6)
    pack = fuse_mod._pack_weight
    wa, wb = pack(torch.randn(4, 8, 1, 1)), pack(torch.randn(4, 4, 3, 3))
    wd = pack(torch.randn(4, 8, 1, 1))
    with pytest.raises(RuntimeError, match="wa must come from sai_cpu::pack_conv_weight"):
        torch.ops.sai_cpu.sparse_block(x, m, m, torch.randn(8, 4), None, 1, wb, None, 1, True, None, None, wd, None,
                                       1, 1.0, 1.0, 3, EPS)
    with pytest.raises(RuntimeError, match="conv_a's weight does not take 8 input channels"):
        torch.ops.sai_cpu.sparse_block(x, m, m, pack(torch.randn(4, 3, 1, 1)), None, 1, wb, None, 1, True, None,
                                       None, wd, None, 1, 1.0, 1.0, 3, EPS)
    with pytest.raises(RuntimeError, match="mask shapes"):
        torch.ops.sai_cpu.sparse_block(x, m[..., :5], m, wa, None, 1, wb, None, 1, True, None, None, wd, None, 1,
                                       1.0, 1.0, 3, EPS)
    with pytest.raises(RuntimeError, match="without a downsample conv the block's output must have the input's shape"):
        torch.ops.sai_cpu.sparse_block(x, m, m, wa, None, 1, wb, None, 1, True, None, None, None, None, 1,
                                       1.0, 1.0, 3, EPS)
    with pytest.raises(RuntimeError, match="kernel_size must be odd"):
        torch.ops.sai_cpu.sparse_block(x, m, m, wa, None, 1, wb, None, 1, True, None, None, wd, None, 1,
                                       1.0, 1.0, 4, EPS)
    with pytest.raises(RuntimeError, match="k odd"):
        pack(torch.randn(4, 8, 2, 2))


def _calibrated(arch, density=0.3, **options):
    from sai.benchmarks.opbench import calibrate_mask_bias, randomize_masks

    torch.manual_seed(0)
    model = build_model(arch, head="none", base_width=16, **options).eval()
    randomize_masks(model, seed=1)
    calibrate_mask_bias(model, torch.randn(1, 3, 96, 128), density)
    return model


def _fused_calls(model, x):
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        out = model(x)
    return out, sum(1 for e in prof.events() if e.name == "sai_cpu::sparse_block")


def _record_masks(model) -> list:
    """Make the model's blocks record every inference mask they compute (in call order)."""
    from sai.models.blocks import inference_mask

    rec = []

    def fn(logit, temperature, noise, grid):
        rec.append(inference_mask(logit, temperature, noise, grid))
        return rec[-1]

    for _, blk in model.sparse_blocks():
        blk.mask_fn = fn
    return rec


def _replay_masks(model, rec: list) -> None:
    """Make the model's blocks use the recorded masks: a position that sits on the threshold in one
    precision is not flipped by the rounding of the other, so the comparison is of the kernels alone."""
    it = iter(rec)
    for _, blk in model.sparse_blocks():
        blk.mask_fn = lambda logit, *a: next(it).to(logit.dtype)


@pytest.mark.parametrize("arch,options", [("sparse_resnet50", {}), ("sparse_resnet18", {}),
                                          ("sparse_resnet50", {"dcn_stages": (0, 1, 1, 1)})],
                         ids=["r50", "r18", "r50-deformable"])
def test_fused_model_uses_the_block_kernel_and_matches_float64(arch, options, monkeypatch):
    model = _calibrated(arch, **options)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # offsets of about a pixel (zeros would sample the regular grid)
        for _, blk in model.sparse_blocks():
            if blk.with_dcn:
                blk.conv2_offset.weight.copy_(torch.randn(blk.conv2_offset.weight.shape, generator=gen) * 0.02)
                blk.conv2_offset.bias.copy_(torch.randn(blk.conv2_offset.bias.shape, generator=gen))
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    fused.reset_densities()
    rec = _record_masks(fused)
    got, calls = _fused_calls(fused, x)
    dens = fused.densities()
    # every block whose masks are below DENSE_ABOVE (all but the smallest maps' at this size), deformable too
    want_calls = sum(1 for d1, d2 in dens.values() if max(d1, d2) < cpu_kernels.DENSE_ABOVE)
    assert calls == want_calls and want_calls >= len(dens) - 2
    monkeypatch.setattr(fuse_mod, "FAST_BLOCKS", False)
    _replay_masks(fused, rec)
    per_op, calls = _fused_calls(fused, x)
    assert calls == 0
    ref = fuse_for_inference(model.double())
    _replay_masks(ref, rec)
    with torch.no_grad():
        want = ref(x.double())  # the reference ops in float64
    for g, p, w in zip(got, per_op, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=2e-4)
        torch.testing.assert_close(g, p, rtol=1e-4, atol=2e-4)


def test_dense_masks_keep_the_per_op_path():
    model = _calibrated("sparse_resnet50", dcn_stages=(0, 1, 1, 1))
    x = torch.randn(1, 3, 96, 128)
    from sai.benchmarks.opbench import calibrate_mask_bias

    calibrate_mask_bias(model, torch.randn(1, 3, 96, 128), 0.95)
    _, calls = _fused_calls(fuse_for_inference(model), x)
    assert calls == 0  # nearly full masks: the per-op path, whose convs go dense


def test_block_gemm_names_what_runs():
    # `sai doctor` shows it: the AVX2 register tiles on x86-64 with AVX2/FMA (this machine), else the
    # portable C++ loop (tests/test_cpu_gemm.py builds and checks both)
    assert cpu_kernels.block_gemm() in ("avx2+fma 6x16", "portable C++")
