"""FLOPs: the paper's numbers, the docs/design.md 4 formula written here, and our kernel count checked
against MACs counted from the ops the fused model actually calls."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import sai.models.fuse as fuse_mod
from sai.cli.main import main
from sai.models import build_model, fuse_for_inference, kernel_flops, official_flops


@pytest.mark.parametrize("res,gflops", [(500, 70.03), (600, 100.20), (800, 184.06), (1000, 289.47)])
def test_official_dense_resnet101_dcn(res, gflops):
    assert round(official_flops(101, res, (0, 1, 1, 1)) / 1e9, 2) == gflops


def design_formula(res, dens, counts=(3, 4, 23, 3), dcn=(0, 1, 1, 1)):
    """docs/design.md section 4, written out for the sparse Bottleneck model."""
    h, w = (res // 32) * 32, int(res * 5 / 3 // 32) * 32

    def cost(k, cin, cout, s):
        return k * k * cin * cout * (h // s) * (w // s)

    total = cost(7, 3, 64, 2)
    cin = 64
    for i, n in enumerate(counts):
        planes, s = 64 * 2 ** i, 4 * 2 ** i
        total += cost(1, cin, 4 * planes, s)  # downsample
        for j in range(n):
            d1, d2 = dens(i, j)
            s1 = s // 2 if (i > 0 and j == 0) else s
            total += cost(1, cin, planes, s1) * d1 + cost(3, planes, planes, s) * d2
            total += cost(1, planes, 4 * planes, s) * d2
            total += cost(3, cin, 1, s1) + cost(3, cin, 1, s)
            total += cost(7, planes, 1, s1) * d1 * (1 - d1) + cost(7, 4 * planes, 1, s) * d2 * (1 - d2)
            if dcn[i]:
                total += cost(3, cin, 18, s) * d2
            cin = 4 * planes
    return total


def test_official_sparse_matches_design_formula():
    assert official_flops(101, 800, (0, 1, 1, 1), 0.3) == pytest.approx(design_formula(800, lambda i, j: (0.3, 0.3)))
    per_block = {}
    for i, n in enumerate((3, 4, 23, 3)):
        for j in range(n):
            per_block[f"layer{i + 1}.{j}"] = (0.1 + 0.02 * j, 0.5 - 0.01 * i)
    got = official_flops(101, 1000, (0, 1, 1, 1), per_block)
    assert got == pytest.approx(design_formula(1000, lambda i, j: per_block[f"layer{i + 1}.{j}"]))


def conv_macs_by_hooks(model, x):
    """MACs of every nn.Conv2d / nn.Linear as executed, counted from output shapes."""
    total = [0]

    def hook(m, i, o):
        if isinstance(m, torch.nn.Conv2d):
            total[0] += o.numel() // o.shape[0] * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total[0]


@pytest.mark.parametrize("arch,head", [("resnet50", "cls"), ("resnet18", "fpn")])
def test_kernel_count_dense_matches_executed_convs(arch, head):
    model = build_model(arch, base_width=8, head=head, num_classes=10, fpn_out_channels=16).eval()
    x = torch.randn(1, 3, 96, 131)
    got = kernel_flops(arch, (96, 131), None, base_width=8, head=head, num_classes=10, fpn_out_channels=16)
    assert got["total"] == conv_macs_by_hooks(model, x)


def test_kernel_count_sparse_matches_what_the_fused_model_runs(monkeypatch):
    model = build_model("sparse_resnet50", base_width=8, dcn_stages=(0, 1, 1, 1), head="none").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # masks with intermediate densities, non-trivial offsets
        for name, p in model.named_parameters():
            if "_mask" in name or "_offset" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.endswith("bias") else 0.08))
    fused = fuse_for_inference(model)
    count = {"mac": 0.0}
    real_ssc, real_interp = fuse_mod.sparse_sample_conv, fuse_mod.interpolate

    def ssc(x, mask, weight, bias=None, **kw):
        cout, cin_g, kh, kw_ = weight.shape
        count["mac"] += float((mask > 0).sum()) * cin_g * cout * kh * kw_
        if kw.get("offset") is not None:
            count["mac"] += float((mask > 0).sum()) * 4 * kh * kw_ * x.shape[1]
        return real_ssc(x, mask, weight, bias, **kw)

    def interp(f, m, sigma, k=7, eps=1e-5):
        count["mac"] += float((m < 1).sum()) * (f.shape[1] + 1) * k * k
        return real_interp(f, m, sigma, k, eps)

    class CountingF:  # the dense convs the fused blocks call (mask predictors, downsample)
        def __getattr__(self, name):
            return getattr(F, name)

        @staticmethod
        def conv2d(x, weight, bias=None, stride=1, padding=0, *a, **kw):
            out = F.conv2d(x, weight, bias, stride, padding, *a, **kw)
            count["mac"] += out.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
            return out

    monkeypatch.setattr(fuse_mod, "FAST_MASK_LOGITS", False)  # count the plain 3x3 mask convs
    monkeypatch.setattr(fuse_mod, "FAST_BLOCKS", False)  # count the ops of the per-op path
    monkeypatch.setattr(fuse_mod, "sparse_sample_conv", ssc)
    monkeypatch.setattr(fuse_mod, "interpolate", interp)
    monkeypatch.setattr(fuse_mod, "F", CountingF())
    x = torch.randn(1, 3, 97, 130)
    stem = conv_macs_by_hooks(torch.nn.Sequential(fused.conv1), x)
    with torch.no_grad():
        fused(x)
    monkeypatch.undo()
    executed = count["mac"] + stem
    got = kernel_flops("sparse_resnet50", (97, 130), fused.mask_stats(), (0, 1, 1, 1), base_width=8)
    assert got["backbone"] == pytest.approx(executed, rel=1e-6)
    dens = fused.densities()
    assert 0.05 < sum(d for v in dens.values() for d in v) / (2 * len(dens)) < 0.95


def test_cli_flops_prints_both(capsys):
    assert main(["flops", "--arch", "resnet101", "--res", "1000", "--dcn-stages", "0,1,1,1"]) == 0
    out = capsys.readouterr().out
    assert "289.47" in out and "our kernels" in out
    assert main(["flops", "--arch", "sparse_resnet101", "--res", "600", "--dcn-stages", "0,1,1,1",
                 "--density", "0.3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["official_gflops"] == round(official_flops(101, 600, (0, 1, 1, 1), 0.3) / 1e9, 2)
    assert res["kernel_gflops"] > 0
    assert main(["flops", "--arch", "sparse_resnet18", "--res", "500", "--base-width", "8", "--measure", "64"]) == 0
    assert "measured" in capsys.readouterr().out
    assert main(["flops", "--arch", "resnet50", "--res", "500", "--density", "0.5"]) == 2
    assert "dense baseline" in capsys.readouterr().err


def test_res_224_uses_the_official_classification_input():
    """The official calculator (SAI-Det mmdet/utils/flops.py) takes h = w = 224 at res 224 and
    the detection rule otherwise; --input picks one explicitly and the output names the h x w used."""
    from sai.models.flops import official_input_size

    assert official_input_size(224) == (224, 224)
    assert official_input_size(224, "detection") == (224, 352)
    assert official_input_size(1000) == (992, 1664) and official_input_size(256, "classification") == (256, 256)

    def formula_at(h, w, counts=(3, 4, 6, 3)):  # docs/design.md 4, dense, any h x w
        def cost(k, cin, cout, s):
            return k * k * cin * cout * (h // s) * (w // s)
        total, cin = cost(7, 3, 64, 2), 64
        for i, n in enumerate(counts):
            planes, s = 64 * 2 ** i, 4 * 2 ** i
            total += cost(1, cin, 4 * planes, s)
            for j in range(n):
                s1 = s // 2 if (i > 0 and j == 0) else s
                total += cost(1, cin, planes, s1) + cost(3, planes, planes, s) + cost(1, planes, 4 * planes, s)
                if i > 0:
                    total += cost(3, cin, 18, s)
                cin = 4 * planes
        return total

    assert official_flops(50, 224, (0, 1, 1, 1)) == formula_at(224, 224)
    assert official_flops(50, 224, (0, 1, 1, 1), input="detection") == formula_at(224, 352)
    with pytest.raises(Exception, match="input must be one of"):
        official_input_size(224, "square")


def test_cli_flops_labels_the_input_rule(capsys):
    assert main(["flops", "--arch", "resnet50", "--res", "224", "--dcn-stages", "0,1,1,1"]) == 0
    out = capsys.readouterr().out
    assert "input 224x224 (classification rule" in out
    assert main(["flops", "--arch", "resnet50", "--res", "224", "--input", "detection", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["input_hw"] == [224, 352] and res["input_rule"] == "detection"
    assert main(["flops", "--arch", "resnet50", "--res", "800"]) == 0
    assert "input 800x1312 (detection rule" in capsys.readouterr().out


def test_cli_flops_measure_reports_both_sampling_modes(capsys):
    """Official inference is stochastic, ours deterministic by default: --measure shows both."""
    argv = ["flops", "--arch", "sparse_resnet18", "--res", "500", "--base-width", "8", "--measure", "64"]
    assert main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    det, sto = res["measured"]["deterministic"], res["measured"]["stochastic"]
    assert sto["seed"] == 0 and "stochastic" in res["note"]
    assert len(det["blocks"]) == len(sto["blocks"]) == 8
    assert res["mean_density"] == pytest.approx(det["mean_density"])
    # random init: mask bias 3 -> p = 0.95: deterministic samples everything, stochastic about 95%
    assert det["mean_density"] == pytest.approx([1.0, 1.0])
    assert 0.85 < sto["mean_density"][0] < 0.999 and sto["official_gflops"] <= det["official_gflops"]
    assert main(argv + ["--sampling", "stochastic", "--json"]) == 0
    res2 = json.loads(capsys.readouterr().out)
    assert res2["mean_density"] == pytest.approx(sto["mean_density"])  # same seed, same noise
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "deterministic (sai default" in out and "stochastic (seed 0; official SAI-Det eval)" in out
