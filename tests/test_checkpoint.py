"""Checkpoints: the official SAI-Det layout built here from the key list of docs/design.md 4, our format,
strict errors naming every key, dense (torchvision-named) initialisation."""

from __future__ import annotations

import pytest
import torch

from sai.errors import SaiError
from sai.models import (
    build_model,
    detect_layout,
    init_from_dense,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

BN = ("weight", "bias", "running_mean", "running_var")


def official_keys(counts=(3, 4, 23, 3), dcn=(False, True, True, True), width=64, neck=256):
    """``{key: shape}`` of an official SAI-Det checkpoint (docs/design.md 4), written from the doc."""
    keys = {"backbone.conv1.weight": (width, 3, 7, 7)}
    keys.update({f"backbone.bn1.{n}": (width,) for n in BN})
    inplanes, outs = width, []
    for i, n in enumerate(counts):
        planes = width * 2 ** i
        for j in range(n):
            p = f"backbone.layer{i + 1}.{j}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            for b, c in (("bn1", planes), ("bn2", planes), ("bn3", 4 * planes)):
                keys.update({f"{p}.{b}.{n_}": (c,) for n_ in BN})
            for m in ("conv1_mask", "conv2_mask"):
                keys[f"{p}.{m}.weight"] = (1, inplanes, 3, 3)
                keys[f"{p}.{m}.bias"] = (1,)
            keys[f"{p}.conv1_sigma"] = ()
            keys[f"{p}.conv2_sigma"] = ()
            keys[f"{p}.conv1_gumbel.cur_T"] = ()
            keys[f"{p}.conv2_gumbel.cur_T"] = ()
            if dcn[i]:
                keys[f"{p}.conv2_offset.weight"] = (18, inplanes, 3, 3)
                keys[f"{p}.conv2_offset.bias"] = (18,)
            if j == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                keys.update({f"{p}.downsample.1.{n_}": (4 * planes,) for n_ in BN})
            inplanes = 4 * planes
        outs.append(inplanes)
    for i, c in enumerate(outs):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (neck, c, 1, 1)
        keys[f"neck.lateral_convs.{i}.conv.bias"] = (neck,)
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (neck, neck, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (neck,)
    return keys


def random_state(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(s, generator=g) + 0.1 for k, s in keys.items()}


@pytest.fixture(scope="module")
def official_101():
    sd = random_state(official_keys())
    sd["rpn_head.rpn_conv.weight"] = torch.zeros(256, 256, 3, 3)  # detector heads: ignored
    sd["bbox_head.fc_cls.weight"] = torch.zeros(81, 1024)
    return {"state_dict": sd, "meta": {"mmdet_version": "0.6.0", "CLASSES": ("person",)}}


def test_official_layout_loads_into_sparse_resnet101_dcn(official_101):
    model = build_model("sparse_resnet101", dcn_stages=(0, 1, 1, 1), head="fpn")
    report = load_checkpoint(model, official_101)
    assert report.layout == "official"
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.ignored) == ["bbox_head.fc_cls.weight", "rpn_head.rpn_conv.weight"]
    sd = official_101["state_dict"]
    own = model.state_dict()
    for k in ("backbone.layer3.22.conv2_offset.weight", "backbone.layer4.2.conv2_sigma",
              "backbone.layer2.0.conv1_gumbel.cur_T", "backbone.layer1.0.downsample.1.running_var",
              "backbone.layer4.0.conv2_mask.bias"):
        assert torch.equal(own[k[len("backbone."):]], sd[k])
    assert torch.equal(own["neck.fpn_convs.3.conv.weight"], sd["neck.fpn_convs.3.conv.weight"])
    info = detect_layout(official_101)
    assert info["arch"] == "sparse_resnet101" and info["layout"] == "official"
    assert info["options"]["dcn_stages"] == (False, True, True, True)
    assert info["options"]["head"] == "fpn" and info["options"]["fpn_out_channels"] == 256


def test_strict_errors_name_every_key(official_101):
    sd = dict(official_101["state_dict"])
    del sd["backbone.layer2.1.conv1_sigma"]
    sd["backbone.layer3.4.extra_thing"] = torch.zeros(3)
    sd["backbone.layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    model = build_model("sparse_resnet101", dcn_stages=(0, 1, 1, 1), head="fpn")
    with pytest.raises(SaiError) as err:
        load_checkpoint(model, {"state_dict": sd})
    msg = str(err.value)
    assert "missing" in msg and "layer2.1.conv1_sigma" in msg
    assert "unexpected" in msg and "layer3.4.extra_thing" in msg
    assert "layer4.1.conv2.weight" in msg and "[512, 512, 1, 1]" in msg and "[512, 512, 3, 3]" in msg
    report = load_checkpoint(model, {"state_dict": sd}, strict=False)
    assert report.missing == ["layer2.1.conv1_sigma"]


@pytest.mark.parametrize("case", ["missing", "extra", "shape"])
def test_each_error_alone(case):
    keys = official_keys(counts=(3, 4, 6, 3), dcn=(False, False, True, True), width=8, neck=16)
    sd = random_state(keys)
    name = "backbone.layer3.2.conv2_mask.weight"
    if case == "missing":
        del sd[name]
    elif case == "extra":
        sd["backbone.layer3.2.conv2_mask.scale"] = torch.ones(1)
    else:
        sd[name] = torch.ones(1, 32, 1, 1)
    model = build_model("sparse_resnet50", base_width=8, dcn_stages=(0, 0, 1, 1), head="fpn", fpn_out_channels=16)
    with pytest.raises(SaiError, match={"missing": "missing", "extra": "unexpected", "shape": "mismatched"}[case]) as e:
        load_checkpoint(model, sd)
    assert "layer3.2.conv2_mask" in str(e.value)


def test_our_format_roundtrip(tmp_path):
    model = build_model("sparse_resnet18", base_width=8, num_classes=5, dcn_stages=(0, 1, 0, 1), seed=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_checkpoint(model, tmp_path / "m.pth", note="test")
    obj = torch.load(path, weights_only=True)
    assert obj["meta"]["arch"] == "sparse_resnet18" and obj["meta"]["note"] == "test"
    assert obj["meta"]["options"]["num_classes"] == 5
    loaded, report = model_from_checkpoint(path)
    assert report.layout == "sai" and not report.missing
    assert loaded.options["dcn_stages"] == (False, True, False, True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
    with pytest.raises(SaiError, match="resnet34"):
        load_checkpoint(build_model("sparse_resnet34", base_width=8, num_classes=5), path)
    with pytest.raises(SaiError, match="does not exist"):
        load_checkpoint(model, tmp_path / "nope.pth")


def test_detect_layout_of_dense_and_cls():
    dense = build_model("resnet34", base_width=8, num_classes=11, dcn_stages=(0, 0, 1, 0))
    info = detect_layout(dense.state_dict())
    assert info["arch"] == "resnet34"
    assert info["options"]["head"] == "cls" and info["options"]["num_classes"] == 11
    assert info["options"]["dcn_stages"] == (False, False, True, False)
    none = build_model("sparse_resnet152", base_width=4, head="none")
    assert detect_layout(none.state_dict())["options"]["head"] == "none"
    assert detect_layout(none.state_dict())["arch"] == "sparse_resnet152"


def test_init_from_torchvision_named_dense_resnet():
    dense = build_model("resnet50", base_width=8, num_classes=1000)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in dense.state_dict().items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # older torchvision files
    sparse = build_model("sparse_resnet50", base_width=8, num_classes=10, dcn_stages=(0, 1, 1, 1))
    mask_before = sparse.layer2[1].conv1_mask.bias.clone()
    report = init_from_dense(sparse, {f"module.{k}": v for k, v in sd.items()})
    own = sparse.state_dict()
    assert torch.equal(own["layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])
    assert torch.equal(own["bn1.running_var"], sd["bn1.running_var"])
    assert torch.equal(sparse.layer2[1].conv1_mask.bias, mask_before)
    assert "layer2.1.conv1_mask.weight" in report.missing and "layer4.2.conv2_sigma" in report.missing
    assert "layer2.0.conv2_offset.weight" in report.missing
    assert any(m.startswith("fc.weight") for m in report.mismatched)  # 1000 vs 10 classes: skipped
    with pytest.raises(SaiError, match="no tensor"):
        init_from_dense(sparse, {"foo.weight": torch.zeros(3)})


def dense_official(offset_from, counts=(3, 4, 23, 3), width=16, neck=32):
    """An official-layout *dense* DCN ResNet: SAI-Det's own (offsets from the block input) or upstream
    mmdetection's (offsets from conv1's output: 18 x planes)."""
    keys = {k: s for k, s in official_keys(counts, (False, True, True, True), width, neck).items()
            if not any(t in k for t in ("_mask.", "_sigma", "_gumbel."))}
    if offset_from == "conv1":
        for k in list(keys):
            if k.endswith("conv2_offset.weight"):
                keys[k] = (18, keys[k.replace("conv2_offset", "conv1")][0], 3, 3)
    return {"state_dict": random_state(keys), "meta": {"mmdet_version": "0.6.0"}}


def test_dense_sai_det_dcn_offsets_load_by_default_and_errors_name_the_option():
    """SAI-Det's dense ResNet predicts DCN offsets from the block input (unlike upstream
    mmdetection): the default build loads it strictly; a shape failure names dcn_offset_from and the fit."""
    opts = dict(dcn_stages=(0, 1, 1, 1), head="fpn", base_width=16, fpn_out_channels=32)
    sai_det, upstream = dense_official("input"), dense_official("conv1")
    model = build_model("resnet101", **opts)
    assert model.options["dcn_offset_from"] == "input"
    report = load_checkpoint(model, sai_det)
    assert report.layout == "official" and not report.mismatched
    assert torch.equal(model.layer3[5].conv2_offset.weight, sai_det["state_dict"]["backbone.layer3.5.conv2_offset.weight"])
    with pytest.raises(SaiError) as err:
        load_checkpoint(build_model("resnet101", **opts), upstream)
    msg = str(err.value)
    assert "30 conv2_offset" in msg and "dcn_offset_from='conv1'" in msg and "upstream mmdetection" in msg
    assert "30 mismatched" in msg  # every key still named
    load_checkpoint(build_model("resnet101", dcn_offset_from="conv1", **opts), upstream)
    with pytest.raises(SaiError, match="build it with dcn_offset_from='input'"):
        load_checkpoint(build_model("resnet101", dcn_offset_from="conv1", **opts), sai_det)
    for ck, fit in ((sai_det, "input"), (upstream, "conv1")):
        assert detect_layout(ck)["options"]["dcn_offset_from"] == fit
        loaded, rep = model_from_checkpoint(ck)
        assert loaded.options["dcn_offset_from"] == fit and not rep.mismatched
    with pytest.raises(SaiError, match="dcn_offset_from"):
        build_model("resnet50", dcn_offset_from="x")


def test_dense_basic_block_offset_source_detected_from_first_blocks():
    """BasicBlocks: only a stage's first block tells the offset source apart (inplanes != planes)."""
    for fit in ("input", "conv1"):
        model = build_model("resnet18", base_width=8, dcn_stages=(0, 1, 1, 0), dcn_offset_from=fit)
        assert detect_layout(model.state_dict())["options"]["dcn_offset_from"] == fit
        other = build_model("resnet18", base_width=8, dcn_stages=(0, 1, 1, 0),
                            dcn_offset_from="conv1" if fit == "input" else "input")
        with pytest.raises(SaiError, match=f"dcn_offset_from={fit!r}"):
            load_checkpoint(other, model.state_dict())
