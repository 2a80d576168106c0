"""SparseResNet models against an independent reference written here from docs/design.md 3.1-3.4 and
the official SAI-Det code (literal order: dense convs, BN, 2-way Gumbel softmax, grid prior by slice
assignment, interpolation, conv3; deformable conv through F.grid_sample)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sai.errors import SaiError
from sai.models import build_model, fuse_for_inference, noise_shapes, set_sampling

D = 1e-8
BLOCKS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


# ----------------------------------------------------------------------------------------------
# independent reference
# ----------------------------------------------------------------------------------------------


def ref_bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                        sd[p + ".bias"], False, 0.0, 1e-5)


def ref_deform(x, offset, weight, stride, pad):
    """DCN v1 via grid_sample (bilinear, zeros outside), offset channel 2k = dy, 2k+1 = dx."""
    n, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[2], offset.shape[3]
    ys = (torch.arange(ho, dtype=x.dtype) * stride - pad).view(1, ho, 1)
    xs = (torch.arange(wo, dtype=x.dtype) * stride - pad).view(1, 1, wo)
    cols = []
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        py = ys + i + offset[:, 2 * k]
        px = xs + j + offset[:, 2 * k + 1]
        grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)
        cols.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True))
    cols = torch.stack(cols, 2)  # [N, C, K, Ho, Wo]
    return torch.einsum("ock,nckhw->nohw", weight.reshape(cout, c, kh * kw), cols)


def ref_mask(x, sd, p, stride, noise, T, g):
    """Official GumbelSigmoid (2-way softmax), grid prior by slice assignment, hard threshold."""
    prob = torch.sigmoid(F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], stride=stride, padding=1))
    a, r = torch.log(prob + D), torch.log(1 - prob + D)
    if noise is not None:
        a = a - torch.log(-torch.log(noise[:, 0:1] + D) + D)
        r = r - torch.log(-torch.log(noise[:, 1:2] + D) + D)
    s = torch.softmax(torch.cat([a / (T + D), r / (T + D)], 1), dim=1)[:, :1].clone()
    s[:, :, ::g, ::g] = 1.0
    return s * (s >= 0.5).float()


def ref_interp(f, m, sigma, k=7):
    r = k // 2
    ii = torch.arange(-r, r + 1, dtype=f.dtype)
    kern = sigma ** 2 / (2 * math.pi) * torch.exp(-(sigma ** 2) / 2 * (ii[:, None] ** 2 + ii[None, :] ** 2))
    c = f.shape[1]
    num = F.conv2d(f * m, kern.expand(c, 1, k, k), padding=r, groups=c)
    den = F.conv2d(m, kern.view(1, 1, k, k), padding=r) + 1e-5
    return m * f + (1 - m) * num / den


def ref_forward(sd, depth, x, mode, dcn=(0, 0, 0, 0), noise=None, head="cls", g=11, T=0.03):
    """The whole network, literal official order, from a state dict."""
    kind, counts = BLOCKS[depth]
    noise = list(noise or [])
    x = F.max_pool2d(F.relu(ref_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1")), 3, 2, 1)
    feats = []
    for i, n in enumerate(counts):
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            s = 2 if (i > 0 and j == 0) else 1
            idn = x
            if p + ".downsample.0.weight" in sd:
                idn = ref_bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=s), sd, p + ".downsample.1")
            sparse = mode != "dense"
            if sparse:
                n1 = noise.pop(0) if mode == "stochastic" else None
                n2 = noise.pop(0) if mode == "stochastic" else None
                s1 = 1 if kind == "bottleneck" else s
                m1 = ref_mask(x, sd, p + ".conv1_mask", s1, n1, T, g)
                m2 = ref_mask(x, sd, p + ".conv2_mask", s, n2, T, g)
            if kind == "bottleneck":
                a = F.relu(ref_bn(F.conv2d(x, sd[p + ".conv1.weight"]), sd, p + ".bn1"))
            else:
                a = F.relu(ref_bn(F.conv2d(x, sd[p + ".conv1.weight"], stride=s, padding=1), sd, p + ".bn1"))
            if sparse:
                a = ref_interp(a, m1, float(sd[p + ".conv1_sigma"]))
            s2 = s if kind == "bottleneck" else 1
            if dcn[i]:
                off = F.conv2d(x, sd[p + ".conv2_offset.weight"], sd[p + ".conv2_offset.bias"], stride=s, padding=1)
                b = ref_deform(a, off, sd[p + ".conv2.weight"], s2, 1)
            else:
                b = F.conv2d(a, sd[p + ".conv2.weight"], stride=s2, padding=1)
            b = ref_bn(b, sd, p + ".bn2")
            if kind == "bottleneck":
                b = F.relu(b)
                if sparse:
                    b = ref_interp(b, m2, float(sd[p + ".conv2_sigma"]))
                b = ref_bn(F.conv2d(b, sd[p + ".conv3.weight"]), sd, p + ".bn3")
            elif sparse:
                b = ref_interp(b, m2, float(sd[p + ".conv2_sigma"]))
            x = F.relu(b + idn)
        feats.append(x)
    if head == "cls":
        return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])
    if head == "fpn":
        lat = [F.conv2d(f, sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"])
               for i, f in enumerate(feats)]
        for i in range(3, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2, mode="nearest")
        outs = [F.conv2d(v, sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"], padding=1)
                for i, v in enumerate(lat)]
        return tuple(outs) + (F.max_pool2d(outs[-1], 1, stride=2),)
    return tuple(feats)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def randomize(model, seed=0, mask_scale=0.08, offset_scale=0.05):
    """Random BN statistics, mask predictors giving intermediate densities, offsets ~ +-1 px."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or t.dim() == 0 and "cur_T" in name:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif ".bn" in name or name.startswith("bn1") or "downsample.1" in name:
                if name.endswith("weight"):
                    t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif "_mask.weight" in name:
                t.copy_(torch.randn(t.shape, generator=g) * mask_scale)
            elif "_mask.bias" in name:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            elif "_offset" in name:
                t.copy_(torch.randn(t.shape, generator=g) * offset_scale)
            elif name.endswith("_sigma"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.7)
    return model


def rel_err(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    assert len(a) == len(b)
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item() for x, y in zip(a, b, strict=True))


def small(arch, **kw):
    kw.setdefault("base_width", 8)
    kw.setdefault("num_classes", 7)
    return build_model(arch, **kw)


X = torch.randn(2, 3, 67, 93, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("dcn", [(0, 0, 0, 0), (0, 1, 1, 1)])
def test_dense_mode_equals_plain_resnet(depth, dcn):
    sparse = randomize(small(f"sparse_resnet{depth}", dcn_stages=dcn, sampling="dense")).eval()
    plain = small(f"resnet{depth}", dcn_stages=dcn, dcn_offset_from="input").eval()
    report = plain.load_state_dict(sparse.state_dict(), strict=False)
    assert not report.missing_keys
    assert all(("_mask" in k or "_sigma" in k or "_gumbel" in k) for k in report.unexpected_keys)
    with torch.no_grad():
        ref = ref_forward(sparse.state_dict(), depth, X, "dense", dcn)
        a, b = sparse(X), plain(X)
        c = fuse_for_inference(sparse)(X)
    assert rel_err(a, ref) < 1e-5
    assert rel_err(b, ref) < 1e-5
    assert rel_err(c, ref) < 1e-5


@pytest.mark.parametrize("depth,dcn,head", [
    (18, (0, 0, 0, 0), "cls"), (18, (0, 1, 1, 1), "fpn"), (50, (0, 0, 0, 0), "none"),
    (50, (0, 1, 1, 1), "cls"), (50, (0, 1, 1, 1), "fpn"),
])
def test_fused_equals_literal_official_order(depth, dcn, head):
    model = randomize(small(f"sparse_resnet{depth}", dcn_stages=dcn, head=head)).eval()
    x = X if head != "fpn" else X[:, :, :64, :96]  # mmdet's scale_factor=2 upsampling needs even sizes
    with torch.no_grad():
        ref = ref_forward(model.state_dict(), depth, x, "deterministic", dcn, head=head)
        lit = model(x)
        fused = fuse_for_inference(model)
        out = fused(x)
    assert rel_err(lit, ref) < 1e-5
    assert rel_err(out, ref) < 1e-5
    d = fused.densities()
    assert list(d) == [name for name, _ in model.sparse_blocks()]
    mean = sum(v[0] + v[1] for v in d.values()) / (2 * len(d))
    assert 0.1 < mean < 0.9, f"masks should be genuinely sparse in this test, mean density {mean}"
    # the fused model's parameters are plain conv weights: no BatchNorm left
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(isinstance(b.sigma1, float) and isinstance(b.sigma2, float) for _, b in fused.sparse_blocks())


@pytest.mark.parametrize("depth", [18, 50])
def test_stochastic_reproducible_and_explicit_noise(depth):
    dcn = (0, 0, 1, 1)
    X = torch.randn(1, 3, 45, 61, generator=torch.Generator().manual_seed(2))
    a = randomize(small(f"sparse_resnet{depth}", dcn_stages=dcn, sampling="stochastic", seed=5)).eval()
    b = small(f"sparse_resnet{depth}", dcn_stages=dcn, sampling="stochastic", seed=5).eval()
    b.load_state_dict(a.state_dict())
    shapes = noise_shapes(a, X.shape)
    assert [n for n, _ in shapes] == [n for n, _ in a.noise_specs()]
    assert len(shapes) == 2 * len(list(a.sparse_blocks()))
    assert shapes[0][0] == "noise.layer1.0.mask1"
    g = torch.Generator().manual_seed(5)
    noise = [torch.rand(s, generator=g) for _, s in shapes]  # what the seeded model draws, in order
    with torch.no_grad():
        ya, yb = a(X), b(X)
        ref = ref_forward(a.state_dict(), depth, X, "stochastic", dcn, noise=noise)
        explicit = a(X, *noise)
        fused = fuse_for_inference(a)
        fused.reseed(5)
        yf = fused(X)
        yf_explicit = fused(X, *noise)
        a.reseed(5)
        again = a(X)
        other = a(X)  # the generator moved on: different samples
        set_sampling(a, "deterministic")
        det = a(X)
    assert torch.equal(ya, yb)
    assert torch.equal(ya, again)
    assert rel_err(ya, ref) < 1e-5
    assert rel_err(explicit, ref) < 1e-5
    assert rel_err(yf, ref) < 1e-5 and rel_err(yf_explicit, ref) < 1e-5
    assert not torch.allclose(other, ya)
    assert not torch.allclose(det, ya)
    assert a.noise_specs() == [] and noise_shapes(a, X.shape) == []
    with pytest.raises(SaiError, match="noise"):
        set_sampling(a, "stochastic")
        a(X, *noise[:-1])


def test_noise_shapes_match_mask_shapes():
    model = small("sparse_resnet50", sampling="stochastic", seed=0).eval()
    seen = []
    for _, blk in model.sparse_blocks():
        for conv in (blk.conv1_mask, blk.conv2_mask):
            conv.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    x = torch.randn(1, 3, 71, 45)
    with torch.no_grad():
        model(x)
    shapes = noise_shapes(model, x.shape)
    assert [(s[0], s[2], s[3]) for _, s in shapes] == [(o[0], o[2], o[3]) for o in seen]
    assert all(s[1] == 2 for _, s in shapes)


@pytest.mark.parametrize("arch", ["sparse_resnet50", "sparse_resnet18"])
def test_masks_at_grid_points_are_one(arch):
    model = randomize(small(arch, dcn_stages=(0, 1, 1, 1))).eval()
    for _, blk in model.sparse_blocks():
        for conv in (blk.conv1_mask, blk.conv2_mask):
            torch.nn.init.constant_(conv.bias, -30.0)  # nothing sampled but the grid prior
            torch.nn.init.zeros_(conv.weight)
    fused = fuse_for_inference(model)
    x = torch.randn(1, 3, 256, 200)
    with torch.no_grad():
        for _, blk in fused.sparse_blocks():
            for m in blk.masks(x.new_zeros(1, blk.inplanes, 40, 23)):
                expect = torch.zeros_like(m)
                expect[:, :, ::11, ::11] = 1
                assert torch.equal(m, expect)
        fused(x)
    lit_masks = []
    for _, blk in model.sparse_blocks():
        with torch.no_grad():
            lit_masks += list(blk._masks(torch.randn(1, blk.inplanes, 29, 35), None, None))
    for m in lit_masks:
        assert torch.all(m[:, :, ::11, ::11] == 1)
        assert m.sum() == m[:, :, ::11, ::11].numel()


def test_training_step_reaches_masks_and_sigmas():
    torch.manual_seed(0)
    model = small("sparse_resnet50", dcn_stages=(0, 1, 1, 1), seed=3)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    t0 = float(model.layer1[0].conv1_gumbel.cur_T)
    logits = model(x)
    loss = F.cross_entropy(logits, torch.tensor([1, 2])) + model.sparse_loss()
    loss = loss + model.sparse_loss(target=0.5)
    loss.backward()
    assert float(model.layer1[0].conv1_gumbel.cur_T) == pytest.approx(t0 * 0.99998)
    for name, blk in model.sparse_blocks():
        for p in (blk.conv1_mask.weight, blk.conv2_mask.weight, blk.conv1_sigma, blk.conv2_sigma):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert blk.conv1_mask.weight.grad.abs().sum() > 0, name
    assert any(blk.conv1_sigma.grad.abs() > 0 for _, blk in model.sparse_blocks())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    opt.step()


def test_sparse_loss_is_the_official_formula():
    model = randomize(small("sparse_resnet50", sparse_loss_weight=0.2)).train()
    probs = []
    for _, blk in model.sparse_blocks():
        for conv in (blk.conv1_mask, blk.conv2_mask):
            conv.register_forward_hook(lambda m, i, o: probs.append(torch.sigmoid(o)))
    model(X)
    per_block = [0.25 * probs[i].mean() + 0.75 * probs[i + 1].mean() for i in range(0, len(probs), 2)]
    expect = 0.2 * sum(per_block) / len(per_block)
    assert model.sparse_loss().item() == pytest.approx(expect.item(), rel=1e-6)


def test_build_model_errors_name_the_valid_choices():
    with pytest.raises(SaiError, match="sparse_resnet101"):
        build_model("sparse_resnet77")
    with pytest.raises(SaiError, match="valid options"):
        build_model("resnet50", colour="blue")
    with pytest.raises(SaiError, match="stochastic"):
        build_model("sparse_resnet50", sampling="random")
    with pytest.raises(SaiError, match="head"):
        build_model("resnet18", head="det")
    with pytest.raises(SaiError, match="dcn_stages"):
        build_model("resnet18", dcn_stages=(1, 1))
    m = build_model("sparse_resnet18", width=0.25, num_classes=3)
    assert m.options["base_width"] == 16 and m.arch == "sparse_resnet18" and m.sampling == "deterministic"


def test_fused_model_torch_exports_with_sai_ops():
    model = randomize(small("sparse_resnet18", dcn_stages=(0, 0, 1, 1), sampling="stochastic", seed=1)).eval()
    fused = fuse_for_inference(model)
    x = torch.randn(1, 3, 64, 72)
    noise = [torch.rand(s) for _, s in noise_shapes(fused, x.shape)]
    ep = torch.export.export(fused, (x, *noise), strict=False)
    assert any("sai.sparse_sample_conv" in str(n.target) for n in ep.graph.nodes)
    assert any("sai.interpolate" in str(n.target) for n in ep.graph.nodes)
    with torch.no_grad():
        assert rel_err(ep.module()(x, *noise), fused(x, *noise)) < 1e-6


@pytest.mark.parametrize("depth,dcn", [(50, (0, 1, 1, 1)), (18, (0, 0, 1, 1))])
def test_fuse_float64_model(depth, dcn):
    """The fused stem conv is built in the model's dtype (float64 here), not the default."""
    model = randomize(small(f"sparse_resnet{depth}", dcn_stages=dcn)).double().eval()
    dense = small(f"resnet{depth}", dcn_stages=dcn).double().eval()
    x = X.double()
    with torch.no_grad():
        ref = ref_forward(model.state_dict(), depth, x, "deterministic", dcn)
        fused = fuse_for_inference(model)
        out = fused(x)
        dense_out = fuse_for_inference(dense)(x)
        dense_ref = dense(x)
    assert fused.conv1.weight.dtype == torch.float64 and out.dtype == torch.float64
    assert rel_err(out, ref) < 1e-12
    assert rel_err(dense_out, dense_ref) < 1e-12


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("arch", ["sparse_resnet50", "resnet18"])
def test_norm_eval_keeps_bn_running_stats(arch):
    """norm_eval (mmdet ResNet): every BN stays in eval mode in train(); affine still learns."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    plain = small(arch).train()
    before = _bn_state(plain)
    plain(x)
    assert any(not torch.equal(before[k], v) for k, v in _bn_state(plain).items())  # the control: stats move
    model = small(arch, norm_eval=True).train()
    assert model.training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = _bn_state(model)
    out = model(x)
    loss = out.square().mean() + (model.sparse_loss() if model.is_sparse else 0)
    loss.backward()
    after = _bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in bns[-3:])
    if model.is_sparse:  # sparse blocks themselves still train (soft masks, temperature decay)
        assert all(blk.training for _, blk in model.sparse_blocks())
    model.train()  # a second train() keeps the rule
    assert not any(m.training for m in bns)
    model.eval()
    assert not model.training


@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_frozen_stages_get_no_grad_and_stay_in_eval(frozen):
    """frozen_stages (mmdet ResNet): the stem (0) and layer1..N get requires_grad=False and eval
    mode even after train(); their BN stats do not move; the rest trains; sparse_loss still counts every block."""
    model = randomize(small("sparse_resnet50", dcn_stages=(0, 1, 1, 1), frozen_stages=frozen)).train()
    frozen_mods = [model.conv1, model.bn1] + [getattr(model, f"layer{i}") for i in range(1, frozen + 1)]
    frozen_names = ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, frozen + 1))
    assert all(not m.training for fm in frozen_mods for m in fm.modules())
    assert all(m.training for m in model.layer3.modules())
    probs = []
    for _, blk in model.sparse_blocks():
        for conv in (blk.conv1_mask, blk.conv2_mask):
            conv.register_forward_hook(lambda m, i, o: probs.append(torch.sigmoid(o)))
    before = _bn_state(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    (model(x).square().mean() + model.sparse_loss()).backward()
    for name, p in model.named_parameters():
        is_frozen = name.startswith(frozen_names)
        assert p.requires_grad != is_frozen, name
        if is_frozen:
            assert p.grad is None, name
    assert model.layer3[0].conv1.weight.grad.abs().sum() > 0
    after = _bn_state(model)
    for k in before:
        assert torch.equal(before[k], after[k]) == k.startswith(frozen_names), k
    # the official loss averages over every block, frozen ones included
    per_block = [0.25 * probs[i].mean() + 0.75 * probs[i + 1].mean() for i in range(0, len(probs), 2)]
    expect = 0.1 * sum(per_block) / len(per_block)
    assert model.sparse_loss().item() == pytest.approx(expect.item(), rel=1e-6)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    w0 = model.conv1.weight.clone()
    opt.step()
    assert torch.equal(model.conv1.weight, w0)
    with pytest.raises(SaiError, match="frozen_stages"):
        small("sparse_resnet50", frozen_stages=5)
    with pytest.raises(SaiError, match="norm_eval"):
        small("resnet50", norm_eval="yes")


def test_densities_are_averaged_per_forward_as_the_official_counters():
    """The official counter adds each forward's ``binary.mean()`` (over its whole batch) and
    divides by the number of forwards; ``average="image"`` weights every image once."""
    model = randomize(small("sparse_resnet50")).eval()
    fused = fuse_for_inference(model)
    seen = {}

    def observe(name, which, m):
        if which == "m1":
            seen.setdefault(name, []).append([(m > 0).float()])
        else:
            seen[name][-1].append((m > 0).float())

    xs = [torch.randn(3, 3, 48, 64, generator=torch.Generator().manual_seed(5)), X[:1, :, :48, :64]]
    fused.reset_densities()
    with torch.no_grad(), fused.add_mask_observer(observe):
        for x in xs:
            fused(x)
    per_forward, per_image = fused.densities(), fused.densities(average="image")
    assert fused.densities() == fused.densities("forward")
    for name, forwards in seen.items():
        for k in range(2):
            official = sum(f[k].sum() / f[k].numel() for f in forwards) / len(forwards)
            images = torch.cat([f[k] for f in forwards]).mean()  # same size images: each counts once
            assert per_forward[name][k] == pytest.approx(float(official), abs=1e-6)
            assert per_image[name][k] == pytest.approx(float(images), abs=1e-6)
    assert any(abs(per_forward[n][0] - per_image[n][0]) > 1e-4 for n in seen)  # they do differ here
    with pytest.raises(ValueError, match="forward"):
        fused.densities(average="batch")
