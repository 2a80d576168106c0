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


def reference_block(x, m1, m2, wa, ba, sa, wb, bb, sb, relu_b, wc, tail_bias, identity, sigma1, sigma2, k):
    """docs/design.md 3.4 (second form) with the reference ops, in float64."""
    d = [None if t is None else t.double() for t in (x, m1, m2, wa, ba, wb, bb, wc, tail_bias, identity)]
    x, m1, m2, wa, ba, wb, bb, wc, tail_bias, identity = d
    pa, pb = wa.shape[-1] // 2, wb.shape[-1] // 2
    a = ops.sparse_sample_conv_reference(x, m1, wa, ba, None, [sa] * 2, [pa] * 4, [1, 1], 1, 1, "relu")
    a = ops.interpolate_reference(a, m1, sigma1, k, EPS)
    b = ops.sparse_sample_conv_reference(a, m2, wb, bb, None, [sb] * 2, [pb] * 4, [1, 1], 1, 1,
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


def _run(kind, n, cin, h, w, planes, cout, ka, sa, kb, sb, relu_b, with_c, k=7, seed=0, fmt=torch.contiguous_format):
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
    identity = torch.randn(n, c_out, ho2, wo2, generator=g)
    got = torch.ops.sai_cpu.sparse_block(
        x, m1, m2, fuse_mod._pack_weight(wa), ba, ka, sa, fuse_mod._pack_weight(wb), bb, kb, sb, relu_b,
        None if wc is None else fuse_mod._pack_weight(wc), tail_bias, identity, 0.9, 1.3, k, EPS)
    want = reference_block(x, m1, m2, wa, ba, sa, wb, bb, sb, relu_b, wc, tail_bias, identity, 0.9, 1.3, k)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    return got, want


@pytest.mark.parametrize("kind", ["hard", "soft", "empty", "full"])
@pytest.mark.parametrize("stride", [1, 2])
def test_bottleneck_form_matches_the_reference(kind, stride):
    # 1x1 -> Interpolate -> 3x3 (stride) -> 1x1 conv3 -> Interpolate + bias + identity, ReLU; channel counts
    # that are not multiples of the 32-channel register block; positions not a multiple of the 32-row tile
    _run(kind, 2, 24, 13, 19, 20, 40, 1, 1, 3, stride, True, True, seed=stride)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_basic_block_form_matches_the_reference(kind):
    # 3x3 stride 2 -> Interpolate -> 3x3, bias and no activation -> Interpolate + identity, ReLU
    _run(kind, 1, 16, 17, 12, 35, 35, 3, 2, 3, 1, False, False, k=5)


def test_large_weights_take_the_chunked_gemm_path():
    # kh*kw*C*Cout*4 bytes above the tile budget (640 KiB): im2col chunks and at::mm instead of the tiles,
    # for conv_b and for conv3; the same values
    _run("hard", 1, 64, 11, 14, 192, 1024, 1, 1, 3, 1, True, True, k=3)


def test_nhwc_input_and_kernel_size_one():
    # a channels_last input is read in place; k = 1: Interpolate's window is the position itself
    _run("soft", 1, 32, 9, 9, 32, 64, 1, 1, 3, 1, True, True, k=1, fmt=torch.channels_last)


def test_bad_arguments_are_refused_by_name():
    x = torch.randn(1, 8, 6, 6)
    m = torch.ones(1, 1, 6, 6)
    wa = torch.randn(8, 4)
    wb = torch.randn(36, 4)
    idn = torch.randn(1, 4, 6, 6)
    with pytest.raises(RuntimeError, match="wa must be a float32 \\[8, Cout\\]"):
        torch.ops.sai_cpu.sparse_block(x, m, m, torch.randn(9, 4), None, 1, 1, wb, None, 3, 1, True, None, None,
                                       idn, 1.0, 1.0, 3, EPS)
    with pytest.raises(RuntimeError, match="mask shapes"):
        torch.ops.sai_cpu.sparse_block(x, m[..., :5], m, wa, None, 1, 1, wb, None, 3, 1, True, None, None, idn,
                                       1.0, 1.0, 3, EPS)
    with pytest.raises(RuntimeError, match="identity must be"):
        torch.ops.sai_cpu.sparse_block(x, m, m, wa, None, 1, 1, wb, None, 3, 1, True, None, None, idn[:, :3],
                                       1.0, 1.0, 3, EPS)
    with pytest.raises(RuntimeError, match="kernel_size must be odd"):
        torch.ops.sai_cpu.sparse_block(x, m, m, wa, None, 1, 1, wb, None, 3, 1, True, None, None, idn,
                                       1.0, 1.0, 4, EPS)


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


@pytest.mark.parametrize("arch", ["sparse_resnet50", "sparse_resnet18"])
def test_fused_model_uses_the_block_kernel_and_matches_float64(arch, monkeypatch):
    model = _calibrated(arch)
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    fused.reset_densities()
    rec = _record_masks(fused)
    got, calls = _fused_calls(fused, x)
    dens = fused.densities()
    # every block whose masks are below DENSE_ABOVE (all but the smallest maps' at this size)
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


def test_dense_masks_and_deformable_blocks_keep_the_per_op_path():
    model = _calibrated("sparse_resnet50", dcn_stages=(0, 1, 1, 1))
    fused = fuse_for_inference(model)
    x = torch.randn(1, 3, 96, 128)
    _, calls = _fused_calls(fused, x)
    assert calls == len(fused.layer1)  # stage 1 only: stages 2-4 are deformable
    from sai.benchmarks.opbench import calibrate_mask_bias

    calibrate_mask_bias(model, torch.randn(1, 3, 96, 128), 0.95)
    _, calls = _fused_calls(fuse_for_inference(model), x)
    assert calls == 0  # nearly full masks: the per-op path, whose convs go dense


def test_without_the_brgemm_microkernel_the_tiles_use_at_mm():
    """SAI_CPU_BRGEMM=0 (what a machine whose ATen has no brgemm gets): the same values through at::mm."""
    import subprocess
    import sys

    code = ("import torch, sys; sys.path.insert(0, 'tests'); import test_fused_block as t; "
            "from sai.models import cpu_kernels; assert cpu_kernels.load(); "
            "assert cpu_kernels.block_gemm() == 'at::mm', cpu_kernels.block_gemm(); "
            "t._run('soft', 2, 24, 13, 19, 20, 40, 1, 1, 3, 2, True, True); print('ok')")
    env = dict(os.environ, SAI_CPU_BRGEMM="0")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    assert cpu_kernels.block_gemm() in ("brgemm", "at::mm")
