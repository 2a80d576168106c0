"""The demo detector (sai train-demo --task detection): v0.6's training rules against hand-written formulas, the
shipped pair (strict load, boxes found, MACs saved) and the demo's detection pictures. About 1 minute on 2 cores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sai.models import detector_train as dt
from sai.models.detector import SaiDetector, delta2bbox

ZOO = dt.DEFAULT_DET_OUT


def iou_ref(a, b) -> float:
    """IoU of two boxes with v0.6's ``+1`` widths, in plain Python."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0.0, iw) * max(0.0, ih)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def assign_ref(boxes, gts, pos_thr, neg_thr, min_pos):
    """v0.6 MaxIoUAssigner's rules one box and one ground truth at a time (gt_max_assign_all)."""
    ov = [[iou_ref(g, b) for b in boxes] for g in gts]
    out = []
    for j in range(len(boxes)):
        col = [ov[i][j] for i in range(len(gts))]
        m = max(col)
        arg = col.index(m)
        out.append(arg + 1 if m >= pos_thr else (0 if m < neg_thr else -1))
    for i in range(len(gts)):
        best = max(ov[i])
        if best >= min_pos:
            for j in range(len(boxes)):
                if ov[i][j] == best:
                    out[j] = i + 1
    return out


def random_boxes(n, gen, size=100.0):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = 4 + torch.rand(n, 2, generator=gen) * size / 2
    return torch.cat([xy, xy + wh], 1).round()


@pytest.mark.parametrize("thr", [(0.7, 0.3, 0.3), (0.5, 0.5, 0.5)])
def test_assign_max_iou_follows_v06_rules(thr):
    gen = torch.Generator().manual_seed(1)
    gts = random_boxes(4, gen)
    boxes = torch.cat([random_boxes(60, gen), gts[:2] + 1, gts[2:3]])  # near-copies and an exact copy
    got, _ = dt.assign_max_iou(boxes, gts, *thr)
    assert got.tolist() == assign_ref(boxes.tolist(), gts.tolist(), *thr)
    assert (got > 0).any() and (got == 0).any()


def test_bbox2delta_is_v06s_formula_and_delta2bbox_inverts_it():
    p = torch.tensor([[10.0, 20.0, 29.0, 59.0]])  # w 20, h 40, centre (19.5, 39.5)
    g = torch.tensor([[12.0, 18.0, 51.0, 57.0]])  # w 40, h 40, centre (31.5, 37.5)
    d = dt.bbox2delta(p, g, (0.0,) * 4, (0.1, 0.1, 0.2, 0.2))
    want = [(31.5 - 19.5) / 20 / 0.1, (37.5 - 39.5) / 40 / 0.1, math.log(40 / 20) / 0.2, math.log(1.0) / 0.2]
    assert d[0].tolist() == pytest.approx(want, abs=1e-6)
    back = delta2bbox(p, d, (0.0,) * 4, (0.1, 0.1, 0.2, 0.2), None)
    assert back[0].tolist() == pytest.approx(g[0].tolist(), abs=1e-4)


def test_sample_random_keeps_the_positive_fraction():
    assigned = torch.tensor([1] * 50 + [0] * 500 + [-1] * 30)
    gen = torch.Generator().manual_seed(0)
    pos, neg = dt.sample_random(assigned, 256, 0.5, gen)
    assert pos.numel() == 50 and neg.numel() == 206  # fewer positives than half: negatives fill up
    assert bool((assigned[pos] > 0).all()) and bool((assigned[neg] == 0).all())
    assert len(set(pos.tolist()) | set(neg.tolist())) == 256
    pos, neg = dt.sample_random(assigned, 64, 0.25, gen)
    assert pos.numel() == 16 and neg.numel() == 48


def tiny_detector(sparse=False):
    torch.manual_seed(0)
    return SaiDetector(dt.demo_detector_config(sparse, base_width=8, fpn_channels=8, fc_channels=16, image_size=64))


def test_rpn_loss_is_bce_and_smooth_l1_over_the_sampled_anchors(one_thread):
    """Every non-ignored anchor inside the image sampled (num large, fraction 1): the loss is the mean BCE over
    them and the sum of smooth L1 (beta 1/9) over the positives' deltas divided by the same count."""
    det = tiny_detector()
    x = torch.randn(1, 3, 64, 64)
    gt = torch.tensor([[10.0, 12.0, 40.0, 35.0], [44.0, 40.0, 60.0, 62.0]])
    with torch.no_grad():
        cls, reg = det.rpn_head(det.extract_feat(x))
    ts = dt.TargetSettings(rpn_num=10 ** 6, rpn_pos_fraction=1.0)
    got = dt.rpn_loss(det, cls, reg, [gt], [(64, 64)], ts, torch.Generator().manual_seed(0))
    anchors = torch.cat(dt.anchors_of(det, cls)).tolist()
    logits = torch.cat([c[0].permute(1, 2, 0).reshape(-1) for c in cls]).tolist()
    deltas = torch.cat([r[0].permute(1, 2, 0).reshape(-1, 4) for r in reg]).tolist()
    inside = [i for i, a in enumerate(anchors) if a[0] >= 0 and a[1] >= 0 and a[2] < 64 and a[3] < 64]
    lab = assign_ref([anchors[i] for i in inside], gt.tolist(), 0.7, 0.3, 0.3)
    bce, sl1, count = 0.0, 0.0, 0
    for i, a in zip(inside, lab, strict=True):
        if a < 0:
            continue
        count += 1
        p = 1 / (1 + math.exp(-logits[i]))
        bce += -math.log(p) if a > 0 else -math.log(1 - p)
        if a > 0:
            an, g = anchors[i], gt.tolist()[a - 1]
            pw, ph, gw, gh = an[2] - an[0] + 1, an[3] - an[1] + 1, g[2] - g[0] + 1, g[3] - g[1] + 1
            t = [((g[0] + g[2]) - (an[0] + an[2])) / 2 / pw, ((g[1] + g[3]) - (an[1] + an[3])) / 2 / ph,
                 math.log(gw / pw), math.log(gh / ph)]
            for dv, tv in zip(deltas[i], t, strict=True):
                e = abs(dv - tv)
                sl1 += 0.5 * e * e * 9 if e < 1 / 9 else e - 0.5 / 9
    assert any(a > 0 for a in lab)
    assert float(got["rpn_cls"]) == pytest.approx(bce / count, rel=1e-4)
    assert float(got["rpn_bbox"]) == pytest.approx(sl1 / count, rel=1e-4)


def test_training_steps_are_reproducible_and_learn(one_thread):
    train = dt.make_det_split(5, "train", 8, 64)
    cfg = dt.DetDemoConfig(seed=5, batch_size=4, image_size=64, base_width=8, fpn_channels=8, fc_channels=16,
                           log_every=1)
    logs = [[], []]
    dets = [dt.train_detector(cfg, True, train, logs[k].append, lambda m: None, steps=3, lr=1e-3, phase="t")
            for k in range(2)]
    sa, sb = dets[0].state_dict(), dets[1].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    strip = [[{k: v for k, v in r.items() if k != "elapsed_s"} for r in log] for log in logs]
    assert strip[0] == strip[1] and len(strip[0]) == 3
    assert all(math.isfinite(r["loss"]) for r in logs[0])
    assert "sparse_loss" in logs[0][0] and "rpn_cls" in logs[0][0]


def test_render_det_boxes_hold_their_shapes():
    """Deterministic; boxes inside the image, of an object's size, not overlapping; labels in range."""
    img, boxes, labels = dt.render_det(0, "test", 3)
    img2, boxes2, _ = dt.render_det(0, "test", 3)
    assert np.array_equal(img, img2) and np.array_equal(boxes, boxes2)
    assert img.shape == (dt.DET_IMAGE_SIZE,) * 2 + (3,) and 1 <= len(boxes) <= dt.DET_MAX_OBJECTS
    assert labels.min() >= 0 and labels.max() < len(dt.DET_CLASSES)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= dt.DET_IMAGE_SIZE - 1).all()
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    assert (w >= 0.1 * dt.DET_IMAGE_SIZE).all() and (h >= 0.1 * dt.DET_IMAGE_SIZE).all()
    for i in range(len(boxes)):  # no two objects overlap
        for j in range(i + 1, len(boxes)):
            assert iou_ref(boxes[i].tolist(), boxes[j].tolist()) < 0.2


def test_coco_map_of_perfect_and_of_half_missing_detections():
    _, boxes, labels = dt.make_det_split(0, "test", 6)
    gt = dt.coco_ground_truth(boxes, labels, dt.DET_IMAGE_SIZE)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    assert dt.coco_map(gt, perfect)["mAP"] == pytest.approx(100.0)
    half = perfect[::2]
    assert dt.coco_map(gt, half)["mAP"] < 80.0


# -- the shipped pair ----------------------------------------------------------------------------------


def shipped():
    if not (ZOO / dt.SPARSE_DET_FILE).is_file():
        pytest.fail(f"the demo detector is not shipped in {ZOO}; train it with sai train-demo --task detection")
    return dt.load_demo_detector(ZOO / dt.SPARSE_DET_FILE, fuse=True), \
        dt.load_demo_detector(ZOO / dt.DENSE_DET_FILE, fuse=True)


def test_shipped_detectors_load_strictly_and_are_small():
    from sai.models.checkpoint import read_checkpoint
    from sai.models.detector import load_detector_state

    for f, sparse in ((dt.SPARSE_DET_FILE, True), (dt.DENSE_DET_FILE, False)):
        assert (ZOO / f).stat().st_size < 6 * 2 ** 20
        sd, meta = read_checkpoint(ZOO / f)
        cfg = dt.config_from_meta(meta)
        assert cfg.sparse is sparse and cfg.depth == 18 and cfg.num_classes == len(dt.DET_CLASSES) + 1
        rep = load_detector_state(SaiDetector(cfg), ZOO / f, strict=True)
        assert not rep.missing and not rep.unexpected and not rep.mismatched
    m = json.loads((ZOO / "metrics.json").read_text())
    assert m["files"] == {"sparse": dt.SPARSE_DET_FILE, "dense": dt.DENSE_DET_FILE}
    assert "sai train-demo --task detection" in (ZOO / "README.md").read_text()


def matched(out, boxes, labels, n) -> float:
    """Fraction of ground truths with a detection of score >= 0.3, the right label and IoU >= 0.5."""
    hit = total = 0
    for i in range(n):
        k = int(out["num_dets"][i])
        dets = [(d[:4], int(c)) for d, c in zip(out["dets"][i, :k].tolist(), out["labels"][i, :k].tolist(),
                                                strict=True) if d[4] >= 0.3]
        for g, c in zip(boxes[i].tolist(), labels[i].tolist(), strict=True):
            total += 1
            hit += any(dc == c and iou_ref(db, g) >= 0.5 for db, dc in dets)
    return hit / total


@pytest.fixture
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores one thread is several times faster than two
    yield
    torch.set_num_threads(prev)


def test_shipped_pair_finds_the_shapes_at_a_mac_saving(one_thread):
    sparse, dense = shipped()
    images, boxes, labels = dt.make_det_split(0, "test", 12)
    sparse.backbone.sampling = "deterministic"
    sparse.backbone.reset_densities()
    with torch.no_grad():
        out_s = sparse.detect(images, layout="NHWC")
        out_d = dense.detect(images, layout="NHWC")
    assert matched(out_s, boxes, labels, 12) >= 0.7
    assert matched(out_d, boxes, labels, 12) >= 0.7
    stats = sparse.backbone.mask_stats()
    mean = np.mean([d for v in stats.values() for d in (v["d1"], v["d2"])])
    assert 0.0 < mean < 0.8
    fl = dt.flops_table(sparse.config, dense.config, stats)
    assert fl["sparse"]["backbone"] < fl["dense"]["backbone"] and fl["ratio"] < 1.0
    assert fl["sparse"]["roi_head"] == fl["dense"]["roi_head"]  # the heads are dense in both


def test_demo_writes_the_detection_pictures(tmp_path):
    from PIL import Image

    from sai.demo.detection import run_detection

    shipped()
    res = run_detection(tmp_path, ZOO, n_images=2, eval_size=6)
    files = sorted(p.name for p in (tmp_path / "det").iterdir())
    assert files == ["det0.png", "det1.png"]
    im = Image.open(tmp_path / "det" / "det0.png")
    assert im.size[1] == 2 * dt.DET_IMAGE_SIZE and im.size[0] > 5 * 2 * dt.DET_IMAGE_SIZE  # 2 boxes + 4 masks
    assert "det/det0.png" in res["html"] and "mAP" in res["html"]
    assert 0 <= res["map"]["sparse"]["mAP"] <= 100 and res["flops"]["ratio"] < 1.0


def test_demo_refuses_a_det_zoo_without_checkpoints(tmp_path):
    from sai.demo.detection import resolve_zoo
    from sai.errors import SaiError

    with pytest.raises(SaiError, match="--det-zoo .* lacks sparse_det_r18.pth"):
        resolve_zoo(str(tmp_path))
    assert resolve_zoo(str(tmp_path), skip=True) is None


def test_train_demo_refuses_flags_of_the_other_task(capsys):
    from sai.cli.main import main

    assert main(["train-demo", "--task", "detection", "--epochs", "3", "--out", "/nonexistent/x"]) != 0
    assert "--epochs is not a setting of --task detection" in capsys.readouterr().err
    assert main(["train-demo", "--steps", "3", "--out", "/nonexistent/x"]) != 0
    assert "--steps is not a setting of --task classification" in capsys.readouterr().err
