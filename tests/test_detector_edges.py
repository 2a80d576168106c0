"""Edge cases of the whole detector (issue 25, item 5) on PyTorch and ONNX Runtime, against the float64
reference of tests/test_detector.py (written from mmdetection v0.6: the +1 NMS, delta2bbox, the non-aligned
RoIAlign, get_det_bboxes + multiclass_nms) and ONNX Runtime against PyTorch on identical inputs:

- more than 5000 candidates entering one RPN NMS (``nms_pre`` 6000 on a P2 of more than 6000 anchors; what
  TensorRT's INMSLayer would cut), with ``max_num`` 2000, and a padded batch of two images of different sizes;
- RoIs under 4 px (under one P2 cell) end to end: RoIAlign's sub-cell path, level 0, the +1 IoU of tiny boxes;
- zero proposals (``min_bbox_size`` above the image) and so zero RoIs and zero detections;
- stochastic sampling: the same noise gives the same detections on torch, portable ORT and fused ORT;
- no NaN or Inf in ``dets`` for any finite image, extreme float pixels included;
- ``sai flops --detector``: parts, totals and the bound the dense parts put on the saving.

Small custom ``DetectorConfig``s (ResNet-18 at width 16 with DCN in stages 2-4, FPN 32, 11 classes) where the
property does not need R101: an export takes about 25 s here, the whole file a few minutes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_detector import (
    assert_same_detections,
    ref_detections,
    ref_head,
    ref_proposals,
    ref_roi_features,
    ref_rpn_head,
)
from test_detector_export import matched_share

from sai.cli.main import main
from sai.errors import SaiError
from sai.exporter.detector_export import export_detector, preprocessed_inputs
from sai.models.detector import SaiDetector, detector_flops, preprocess
from sai.models.detector_presets import DetectorConfig, read_config_file
from sai.models.network import noise_shapes

ort = pytest.importorskip("onnxruntime")

SCALE = (224, 160)  # (long, short): a 160x224 image stays 160x224; its P2 has 40 * 56 * 3 = 6720 anchors


def small_config(sparse: bool = False, **kw) -> DetectorConfig:
    return DetectorConfig(name=f"small-{'sparse' if sparse else 'dense'}", sparse=sparse, depth=18,
                          dcn_stages=(False, True, True, True), img_scale=SCALE,
                          backbone_options={"base_width": 16, **kw.pop("backbone_options", {})},
                          fpn_in_channels=(16, 32, 64, 128), fpn_out_channels=32, feat_channels=32,
                          fc_out_channels=64, num_classes=11, **kw)


def images():
    rs = np.random.RandomState(11)
    return [rs.randint(0, 256, (160, 224, 3)).astype(np.uint8), rs.randint(0, 256, (100, 90, 3)).astype(np.uint8)]


@torch.no_grad()
def make_detector(cfg: DetectorConfig, seed: int = 0, tiny_rois: bool = False, **overrides) -> SaiDetector:
    """A random detector whose heads are scaled (from its own features) so that images give dozens of
    detections; sparse masks with logits spread over several units (off the threshold); DCN offsets that
    move the taps. ``tiny_rois``: RPN width/height deltas near v0.6's clamp, so most proposals are under 4 px."""
    torch.manual_seed(seed)
    det = SaiDetector(cfg, **overrides)
    g = torch.Generator().manual_seed(seed)
    for name, p in det.backbone.named_parameters():
        if "_mask" in name or "_offset" in name:
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "_mask" in name else 1e-2))
    x = preprocess(images()[0], cfg)[0]["img"][None]
    feats = det.extract_feat(x)
    cls, reg = det.rpn_head(feats)
    det.rpn_head.rpn_cls.weight.mul_(2.0 / float(torch.cat([c.flatten() for c in cls]).std()))
    if tiny_rois:
        det.rpn_head.rpn_reg.weight.mul_(0.3 / float(torch.cat([r.flatten() for r in reg]).std()))
        det.rpn_head.rpn_reg.bias[2::4] = -4.0
        det.rpn_head.rpn_reg.bias[3::4] = -4.0
    head = det.bbox_head
    z = torch.randn(64, head.shared_fcs[0].in_features, generator=g) * float(feats[0].std())
    for fc in head.shared_fcs:
        z = F.relu(fc(z))
    head.fc_cls.weight.mul_(2.5 / float(head.fc_cls(z).std()))
    head.fc_reg.weight.mul_(0.5 / float(head.fc_reg(z).std()))
    return det.eval()


def f64(t):
    return t.detach().double().numpy()


def _session(model, lib=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


def _fused_session(path):
    from sai.runtime import ort_ops

    lib, why = ort_ops.built_library()
    if lib is None:
        pytest.skip(f"libsai_ort_ops.so is not built: {why}")
    model, fused, why_not = ort_ops.fused_model(str(path))
    assert fused > 0, why_not
    return _session(model, lib)


def _torch_run(det, feeds, noise=()):
    with torch.no_grad():
        d, lab, n = det(torch.from_numpy(feeds["input"]), [tuple(int(v) for v in s) for s in feeds["img_shape"]],
                        [float(s) for s in feeds["scale_factor"]], *noise)
    return d.numpy(), lab.numpy(), n.numpy()


def ref_from_feats(feats, sd, cfg, img_shape, scale_factor):
    """The float64 reference of the whole head path of one image from its FPN levels, at ``cfg``'s settings."""
    cls, reg = ref_rpn_head(feats, sd)
    props = ref_proposals(cls, reg, img_shape, cfg.nms_pre, cfg.nms_post, cfg.max_num, cfg.rpn_nms_thr)
    rf = ref_roi_features(feats[:4], props[:, :4])
    c, r = ref_head(rf, sd)
    dets, labels = ref_detections(props[:, :4], c, r, img_shape, scale_factor, cfg.score_thr, cfg.nms_thr,
                                  cfg.max_per_img)
    return props, dets, labels


def assert_same_rows(got, ref, box_tol=2e-3, score_tol=1e-6):
    """The same proposals ``[P, 5]`` one to one, up to the order of scores equal in float32."""
    assert got.shape == ref.shape
    free = np.ones(len(got), bool)
    for s in range(0, len(ref), 200):
        r = ref[s:s + 200]
        ok = (np.abs(got[None, :, :4] - r[:, None, :4]).max(-1) <= box_tol) & (
            np.abs(got[None, :, 4] - r[:, None, 4]) <= score_tol)
        for i, row in enumerate(ok):
            j = np.flatnonzero(row & free)
            assert j.size, f"reference proposal {r[i].round(3).tolist()} has no match"
            free[j[0]] = False


def _export(det, tmp_path_factory, name, shape=(1, 3, 64, 96)):
    path = tmp_path_factory.mktemp("edges") / f"{name}.onnx"
    export_detector(det, path, input_shape=shape)
    return path


def _same(out, ref, box_tol=1e-2, score_tol=1e-4):
    d, lab, n = out
    td, tl, tn = ref
    assert n.tolist() == tn.tolist()
    for i in range(len(tn)):
        k = int(tn[i])
        assert_same_detections(d[i, :k], lab[i, :k], td[i, :k], tl[i, :k], box_tol, score_tol)
        assert not d[i, k:].any() and (lab[i, k:] == -1).all()


# ----------------------------------------------------------------------------------------------
# more than 5000 candidates, a padded batch of two sizes
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """nms_pre 6000 (one level's NMS sees more than 5000 boxes), nms_post and max_num 2000; the two images
    padded together (160x224 and 178x160 -> a 192x224 batch: 8064 anchors on P2)."""
    cfg = small_config(nms_pre=6000, nms_post=2000, max_num=2000)
    det = make_detector(cfg, seed=1)
    feeds = preprocessed_inputs(preprocess(images(), cfg))
    return det, _export(det, tmp_path_factory, "big"), feeds


def test_more_than_5000_candidates_and_batch_of_two_sizes(big):
    det, path, feeds = big
    cfg = det.config
    assert feeds["input"].shape == (2, 3, 192, 224) and feeds["img_shape"].tolist() == [[160, 224], [178, 160]]
    x = torch.from_numpy(feeds["input"])
    with torch.no_grad():
        feats = det.extract_feat(x)
        cls, reg = det.rpn_head(feats)
    assert cls[0].shape[1:].numel() > 6000  # P2's anchors: nms_pre keeps 6000 of them for one NMS
    sd = {k: f64(v) for k, v in det.state_dict().items() if k.startswith(("rpn_head.", "bbox_head."))}
    out = _torch_run(det, feeds)
    for i in range(2):
        shape, sf = tuple(feeds["img_shape"][i]), float(feeds["scale_factor"][i])
        props, ref_d, ref_l = ref_from_feats([f64(f[i]) for f in feats], sd, cfg, shape, sf)
        got = f64(det.proposals(cls, reg, i, shape))
        assert got.shape == props.shape and len(props) > 1000, "more proposals than the official max_num 1000"
        assert_same_rows(got, props)
        n = int(out[2][i])
        assert n == len(ref_d) >= 20
        assert_same_detections(out[0][i, :n], out[1][i, :n], ref_d, ref_l)
    _same(_session(path).run(None, feeds), out)


# ----------------------------------------------------------------------------------------------
# RoIs under 4 px
# ----------------------------------------------------------------------------------------------


def test_rois_under_4_px_end_to_end(tmp_path_factory):
    cfg = small_config()
    det = make_detector(cfg, seed=2, tiny_rois=True)
    feeds = preprocessed_inputs(preprocess(images()[:1], cfg))
    x = torch.from_numpy(feeds["input"])
    shape, sf = tuple(feeds["img_shape"][0]), float(feeds["scale_factor"][0])
    with torch.no_grad():
        feats = det.extract_feat(x)
    sd = {k: f64(v) for k, v in det.state_dict().items() if k.startswith(("rpn_head.", "bbox_head."))}
    props, ref_d, ref_l = ref_from_feats([f64(f[0]) for f in feats], sd, cfg, shape, sf)
    w, h = props[:, 2] - props[:, 0] + 1, props[:, 3] - props[:, 1] + 1
    assert np.mean((w < 4) & (h < 4)) > 0.5 and (w < 1).any(), "most RoIs under 4 px, some under 1 px"
    out = _torch_run(det, feeds)
    n = int(out[2][0])
    assert n == len(ref_d) >= 20
    assert_same_detections(out[0][0, :n], out[1][0, :n], ref_d, ref_l)
    dw = (out[0][0, :n, 2] - out[0][0, :n, 0]) * sf + 1
    assert (dw < 4).sum() >= 10, "detections of tiny boxes (+1 IoU NMS on them)"
    _same(_session(_export(det, tmp_path_factory, "tiny")).run(None, feeds), out)


# ----------------------------------------------------------------------------------------------
# zero proposals -> zero RoIs -> zero detections
# ----------------------------------------------------------------------------------------------


def test_zero_proposals_give_zero_detections(tmp_path_factory):
    """min_bbox_size 1000 (v0.6: keep boxes with x2 - x1 + 1 and y2 - y1 + 1 >= it) removes every proposal of
    a 224 px image: no RoI reaches the box head, and every runtime returns zero padded outputs."""
    cfg = small_config(min_bbox_size=1000)
    det = make_detector(cfg, seed=3)
    feeds = preprocessed_inputs(preprocess(images(), cfg))
    x = torch.from_numpy(feeds["input"])
    with torch.no_grad():
        cls, reg = det.rpn_head(det.extract_feat(x))
        assert det.proposals(cls, reg, 0, tuple(feeds["img_shape"][0])).shape == (0, 5)
    for d, lab, n in (_torch_run(det, feeds), _session(_export(det, tmp_path_factory, "zero")).run(None, feeds)):
        assert n.tolist() == [0, 0] and d.shape == (2, 100, 5) and lab.shape == (2, 100)
        assert not d.any() and (lab == -1).all()


# ----------------------------------------------------------------------------------------------
# stochastic sampling with the same noise
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stochastic(tmp_path_factory):
    cfg = small_config(sparse=True)
    det = make_detector(cfg, seed=4, sampling="stochastic")
    path = _export(det, tmp_path_factory, "stochastic")  # fuses det as the export does
    feeds = preprocessed_inputs(preprocess(images(), cfg))
    return det, path, feeds


def _noise(det, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [(name, torch.rand(s, generator=g)) for name, s in noise_shapes(det.backbone, shape)]


def test_stochastic_same_noise_same_detections(stochastic):
    det, path, feeds = stochastic
    noise = _noise(det, feeds["input"].shape, seed=5)
    assert len(noise) > 0
    sess = _session(path)
    assert {i.name for i in sess.get_inputs()} >= {n for n, _ in noise}
    nfeeds = dict(feeds, **{n: t.numpy() for n, t in noise})
    det.backbone.reset_densities()
    ref = _torch_run(det, feeds, [t for _, t in noise])
    dens = [d for pair in det.backbone.densities().values() for d in pair]
    assert 0.1 < np.mean(dens) < 0.9, "masks neither all on nor off"
    assert int(ref[2].min()) >= 20
    runs = {"portable": sess.run(None, nfeeds), "fused": _fused_session(path).run(None, nfeeds)}
    for name, (d, lab, n) in runs.items():
        assert n.tolist() == ref[2].tolist(), name
        for i in range(2):
            k = int(n[i])
            assert matched_share(d[i, :k], lab[i, :k], ref[0][i, :k], ref[1][i, :k], thr=0.999) == 1.0, name
    # other noise: other masks, other detections (the noise inputs are used, not ignored)
    other = _noise(det, feeds["input"].shape, seed=6)
    d2, lab2, n2 = sess.run(None, dict(feeds, **{n: t.numpy() for n, t in other}))
    share = min(matched_share(d2[i, :n2[i]], lab2[i, :n2[i]], ref[0][i, :ref[2][i]], ref[1][i, :ref[2][i]],
                              thr=0.999) for i in range(2))
    assert share < 1.0 or n2.tolist() != ref[2].tolist()


# ----------------------------------------------------------------------------------------------
# no NaN or Inf for any finite image
# ----------------------------------------------------------------------------------------------


def extreme_images():
    big = np.finfo(np.float32).max
    alt = np.where((np.arange(224)[None, :, None] % 2) == 0, big, -big) * np.ones((160, 224, 3))
    return [
        alt.astype(np.float32),  # at the scale already: no resize, the pixels reach the network as given
        (alt[:100, :90] * 1e260).astype(np.float64),  # finite in float64, inf once cast to float32
        np.full((160, 224, 3), big, np.float32),
        np.full((37, 300, 3), -1e30, np.float32),
        np.full((160, 224, 3), 1e-45, np.float32),  # denormal
        np.zeros((50, 50, 3), np.uint8), np.full((4, 250, 3), 255, np.uint8),
    ]


def test_no_nan_or_inf_for_extreme_finite_images(stochastic, big):
    """Float pixels are saturated to 0..255 (as a conversion to uint8 would); every runtime's dets stay finite."""
    det_d, path_d, _ = big
    det_s, path_s, _ = stochastic
    imgs = extreme_images()
    for img in imgs:
        for m in preprocess(img, det_d.config):
            assert torch.isfinite(m["img"]).all() and float(m["img"].abs().max()) < 3
    feeds = [preprocessed_inputs(preprocess([img], det_d.config)) for img in imgs]
    outs = [det_d.detect(imgs), det_s.detect(imgs)]
    dense_sess, fused_sess = _session(path_d), _fused_session(path_s)
    for f in feeds:
        outs.append(dict(zip(("dets", "labels", "num_dets"), dense_sess.run(None, f), strict=True)))
        noise = {n: t.numpy() for n, t in _noise(det_s, f["input"].shape, seed=7)}
        outs.append(dict(zip(("dets", "labels", "num_dets"), fused_sess.run(None, dict(f, **noise)), strict=True)))
    for o in outs:
        assert np.isfinite(np.asarray(o["dets"])).all()
        assert (np.asarray(o["num_dets"]) >= 0).all()
    with pytest.raises(SaiError, match="NaN or inf"):
        preprocess(np.full((20, 30, 3), np.inf, np.float32), det_d.config)


# ----------------------------------------------------------------------------------------------
# sai flops --detector
# ----------------------------------------------------------------------------------------------


def test_cli_flops_detector_parts_and_bound(capsys):
    name = "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1"
    assert main(["flops", "--detector", name, "--density", "0.3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    dense, at = res["dense_gmacs"], res["gmacs"]
    for g in (dense, at):
        assert g["total"] == pytest.approx(g["backbone"] + g["neck"] + g["rpn"] + g["roi_head"], abs=0.02)
    assert at["backbone"] < dense["backbone"] and all(at[k] == dense[k] for k in ("neck", "rpn", "roi_head"))
    fixed = dense["neck"] + dense["rpn"] + dense["roi_head"]
    assert res["saving_bound"] == pytest.approx(dense["total"] / fixed, rel=1e-3)
    assert res["saving"] == pytest.approx(dense["total"] / at["total"], rel=1e-3) and res["saving"] < res["saving_bound"]
    assert res["input_hw"] == [1024, 1696] and "stay dense" in res["note"]
    fl = detector_flops(name, densities=0.3)  # the RPN alone: 3x3 conv + both 1x1 on P2..P6 (256 x 424 ... 16 x 27)
    sizes = [(256, 424), (128, 212), (64, 106), (32, 53), (16, 27)]
    assert fl["rpn"] == sum(h * w * (9 * 256 * 256 + 256 * 15) for h, w in sizes)
    assert main(["flops", "--detector", name]) == 0
    text = capsys.readouterr().out
    assert "RoI head" in text and "bounded" in text
    assert main(["flops", "--detector", name, "--arch", "resnet50"]) == 2
    assert "drop --arch" in capsys.readouterr().err
    assert main(["flops", "--detector", "resnet_101_faster_rcnn_res800", "--density", "0.3"]) == 2
    assert main(["flops"]) == 2
    assert "--detector" in capsys.readouterr().err


def test_cli_flops_detector_measures_at_the_preprocessed_size(tmp_path, capsys):
    """--measure HxW: a random image of that size through the config's preprocessing (an official config
    file at a small test scale), the MACs counted at the padded input it gives, both sampling modes."""
    from test_detector import CONFIG

    path = tmp_path / "tiny_sparse.py"
    path.write_text(CONFIG.replace("res = (1333, 800)", "res = (96, 64)"))
    assert main(["flops", "--detector", str(path), "--measure", "60x90", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["input_hw"] == [64, 96]  # 60x90 scaled by min(96 / 90, 64 / 60), padded to 32
    assert set(res["measured"]) == {"deterministic", "stochastic"}
    for m in res["measured"].values():
        assert all(0.0 <= d <= 1.0 for d in m["mean_density"])
    want = detector_flops(read_config_file(path), (64, 96), None)
    assert res["dense_gmacs"]["rpn"] == round(want["rpn"] / 1e9, 2) and "random-init" in res["densities"]
    assert main(["flops", "--detector", str(path), "--checkpoint", "x.pth"]) == 2
    assert "--measure" in capsys.readouterr().err
