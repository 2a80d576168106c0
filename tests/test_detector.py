"""The whole SAI-Det detector (sai.models.detector) against an independent float64 reference written here
from the official code's semantics (mmdetection v0.6: AnchorGenerator, delta2bbox, the +1 NMS of its CUDA
kernel, SingleRoIExtractor.map_roi_levels, the non-aligned RoIAlign kernel, SharedFCBBoxHead,
get_det_bboxes + multiclass_nms), compared per stage on identical inputs, and end to end.

The checkpoints are random-initialised official-layout ResNet-101 detectors (DCN in stages 2-4) whose heads
are scaled so that small images give dozens of detections; images are small so the tests take seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import official_keys

from sai.errors import SaiError
from sai.models.detector import SaiDetector, detector_flops, load_detector, load_detector_state, preprocess
from sai.models.detector_presets import PRESETS, parse_config_text, preset, read_config_file

SCALE = (192, 120)  # (long, short) test scale: keeps R101 fast; the pipeline is the official one otherwise
STRIDES = (4, 8, 16, 32, 64)


# ----------------------------------------------------------------------------------------------
# the reference (float64, plain loops), from the official code
# ----------------------------------------------------------------------------------------------


def ref_anchors(stride, feat_h, feat_w, scales=(8,), ratios=(0.5, 1.0, 2.0)):
    """AnchorGenerator: base anchors from float32 torch.Tensor math, rounded; shifted row by row."""
    base = []
    for r in ratios:  # scale_major: ratio outer, scale inner
        for s in scales:
            h_ratio = np.sqrt(np.float32(r))
            w_ratio = np.float32(1) / h_ratio
            ws = np.float32(stride) * w_ratio * np.float32(s)
            hs = np.float32(stride) * h_ratio * np.float32(s)
            ctr = np.float32(0.5 * (stride - 1))
            half = np.float32(0.5)
            base.append([np.round(ctr - half * (ws - 1)), np.round(ctr - half * (hs - 1)),
                         np.round(ctr + half * (ws - 1)), np.round(ctr + half * (hs - 1))])
    out = []
    for y in range(feat_h):
        for x in range(feat_w):
            for b in base:
                out.append([b[0] + x * stride, b[1] + y * stride, b[2] + x * stride, b[3] + y * stride])
    return np.array(out, dtype=np.float64)


def ref_delta2bbox(rois, deltas, means, stds, max_shape):
    out = np.zeros_like(deltas)
    max_ratio = abs(math.log(16 / 1000))
    px, py = (rois[:, 0] + rois[:, 2]) * 0.5, (rois[:, 1] + rois[:, 3]) * 0.5
    pw, ph = rois[:, 2] - rois[:, 0] + 1.0, rois[:, 3] - rois[:, 1] + 1.0
    for k in range(deltas.shape[1] // 4):
        dx, dy, dw, dh = (deltas[:, 4 * k + j] * stds[j] + means[j] for j in range(4))
        dw, dh = np.clip(dw, -max_ratio, max_ratio), np.clip(dh, -max_ratio, max_ratio)
        gw, gh = pw * np.exp(dw), ph * np.exp(dh)
        gx, gy = px + pw * dx, py + ph * dy
        box = [gx - gw * 0.5 + 0.5, gy - gh * 0.5 + 0.5, gx + gw * 0.5 - 0.5, gy + gh * 0.5 - 0.5]
        if max_shape is not None:
            lim = [max_shape[1] - 1, max_shape[0] - 1] * 2
            box = [np.clip(v, 0.0, m) for v, m in zip(box, lim, strict=True)]
        out[:, 4 * k:4 * k + 4] = np.stack(box, axis=1)
    return out


def ref_nms(boxes, scores, thr):
    """Sort by score; keep a box unless its +1 IoU with a kept box is > thr. Kept indices in score order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if keep:
            k = boxes[keep]
            iw = np.maximum(np.minimum(k[:, 2], boxes[i, 2]) - np.maximum(k[:, 0], boxes[i, 0]) + 1, 0.0)
            ih = np.maximum(np.minimum(k[:, 3], boxes[i, 3]) - np.maximum(k[:, 1], boxes[i, 1]) + 1, 0.0)
            inter = iw * ih
            area_k = (k[:, 2] - k[:, 0] + 1) * (k[:, 3] - k[:, 1] + 1)
            area_i = (boxes[i, 2] - boxes[i, 0] + 1) * (boxes[i, 3] - boxes[i, 1] + 1)
            if (inter / (area_k + area_i - inter) > thr).any():
                continue
        keep.append(i)
    return keep


def ref_proposals(cls_scores, bbox_preds, img_shape, nms_pre=1000, nms_post=1000, max_num=1000, thr=0.7):
    """RPNHead.get_bboxes_single for one image: cls [A, H, W], reg [4A, H, W] per level (float64)."""
    levels = []
    for lvl, (cs, bp) in enumerate(zip(cls_scores, bbox_preds, strict=True)):
        a, h, w = cs.shape
        anchors = ref_anchors(STRIDES[lvl], h, w)
        scores = 1 / (1 + np.exp(-cs.transpose(1, 2, 0).reshape(-1)))
        deltas = bp.transpose(1, 2, 0).reshape(-1, 4)
        if scores.shape[0] > nms_pre:
            idx = np.argsort(-scores, kind="stable")[:nms_pre]
            scores, deltas, anchors = scores[idx], deltas[idx], anchors[idx]
        boxes = ref_delta2bbox(anchors, deltas, [0] * 4, [1] * 4, img_shape)
        keep = ref_nms(boxes, scores, thr)[:nms_post]
        levels.append(np.concatenate([boxes[keep], scores[keep, None]], axis=1))
    props = np.concatenate(levels)
    idx = np.argsort(-props[:, 4], kind="stable")[:min(max_num, props.shape[0])]
    return props[idx]


def ref_level(box, finest=56, n=4):
    scale = math.sqrt((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
    return int(min(max(math.floor(math.log2(scale / finest + 1e-6)), 0), n - 1))


def ref_bilinear(fmap, y, x):
    """The CUDA kernel's bilinear_interpolate (fmap [C, H, W]) at sample arrays y, x (same shape), rule by
    rule: 0 outside [-1, H] x [-1, W]; negative coordinates to 0; at or past the last row/column the
    sample snaps to it."""
    _, height, width = fmap.shape
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y, x = np.maximum(y, 0.0), np.maximum(x, 0.0)
    y_low, x_low = y.astype(np.int64), x.astype(np.int64)  # (int) of a non-negative value
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = np.where(y_edge, height - 1, y_low), np.where(x_edge, width - 1, x_low)
    y_high, x_high = np.where(y_edge, y_low, y_low + 1), np.where(x_edge, x_low, x_low + 1)
    y, x = np.where(y_edge, y_low, y), np.where(x_edge, x_low, x)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    val = (hy * hx * fmap[:, y_low, x_low] + hy * lx * fmap[:, y_low, x_high]
           + ly * hx * fmap[:, y_high, x_low] + ly * lx * fmap[:, y_high, x_high])
    return np.where(outside, 0.0, val)


def ref_roi_align(fmap, box, scale, out=7, n=2):
    """One RoI: bin (ph, pw) averages the n x n samples start + p * bin + (i + 0.5) * bin / n."""
    x0, y0 = box[0] * scale, box[1] * scale
    x1, y1 = (box[2] + 1) * scale, (box[3] + 1) * scale
    bw, bh = max(x1 - x0, 0.0) / out, max(y1 - y0, 0.0) / out
    ys = np.array([y0 + p * bh + (i + 0.5) * bh / n for p in range(out) for i in range(n)])
    xs = np.array([x0 + p * bw + (i + 0.5) * bw / n for p in range(out) for i in range(n)])
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    vals = ref_bilinear(fmap, yy, xx)  # [C, out*n, out*n]
    return vals.reshape(-1, out, n, out, n).sum(axis=(2, 4)) / (n * n)


def ref_roi_features(feats, boxes):
    """SingleRoIExtractor: each box from the level it maps to (feats: 4 maps [C, H, W], float64)."""
    out = np.zeros((len(boxes), feats[0].shape[0], 7, 7))
    for i, b in enumerate(boxes):
        lvl = ref_level(b)
        out[i] = ref_roi_align(feats[lvl], b, 1.0 / STRIDES[lvl])
    return out


def ref_head(roi_feats, sd):
    """SharedFCBBoxHead in float64: flatten, fc + ReLU twice, fc_cls, fc_reg."""
    x = roi_feats.reshape(roi_feats.shape[0], -1)
    for i in range(2):
        x = np.maximum(x @ sd[f"bbox_head.shared_fcs.{i}.weight"].T + sd[f"bbox_head.shared_fcs.{i}.bias"], 0)
    return x @ sd["bbox_head.fc_cls.weight"].T + sd["bbox_head.fc_cls.bias"], \
        x @ sd["bbox_head.fc_reg.weight"].T + sd["bbox_head.fc_reg.bias"]


def ref_detections(boxes, cls, reg, img_shape, scale_factor, score_thr=0.05, thr=0.5, max_num=100):
    """get_det_bboxes(rescale=True) + multiclass_nms: softmax, per-class delta2bbox, / scale_factor,
    per class score > thr and +1 NMS, top max_num by score. Returns dets [k, 5], labels [k] (0-based)."""
    e = np.exp(cls - cls.max(axis=1, keepdims=True))
    scores = e / e.sum(axis=1, keepdims=True)
    bboxes = ref_delta2bbox(boxes, reg, [0] * 4, [0.1, 0.1, 0.2, 0.2], img_shape) / scale_factor
    dets, labels = [], []
    for c in range(1, scores.shape[1]):
        idx = np.nonzero(scores[:, c] > score_thr)[0]
        if idx.size == 0:
            continue
        b, s = bboxes[idx, 4 * c:4 * c + 4], scores[idx, c]
        for k in ref_nms(b, s, thr):
            dets.append([*b[k], s[k]])
            labels.append(c - 1)
    if not dets:
        return np.zeros((0, 5)), np.zeros(0, dtype=np.int64)
    dets, labels = np.array(dets), np.array(labels)
    order = np.argsort(-dets[:, 4], kind="stable")[:max_num]
    return dets[order], labels[order]


def ref_rpn_head(feats, sd):
    """RPN head convs in float64 (the conv arithmetic itself by torch's float64 conv2d)."""
    t = {k: torch.as_tensor(v) for k, v in sd.items() if k.startswith("rpn_head.")}
    cls, reg = [], []
    for f in feats:
        x = F.relu(F.conv2d(torch.as_tensor(f)[None], t["rpn_head.rpn_conv.weight"], t["rpn_head.rpn_conv.bias"],
                            padding=1))
        cls.append(F.conv2d(x, t["rpn_head.rpn_cls.weight"], t["rpn_head.rpn_cls.bias"])[0].numpy())
        reg.append(F.conv2d(x, t["rpn_head.rpn_reg.weight"], t["rpn_head.rpn_reg.bias"])[0].numpy())
    return cls, reg


def ref_detect_from_feats(feats, sd, img_shape, scale_factor):
    """The whole head path in float64 from one image's FPN levels (numpy [C, H, W] each)."""
    cls, reg = ref_rpn_head(feats, sd)
    props = ref_proposals(cls, reg, img_shape)
    rf = ref_roi_features(feats[:4], props[:, :4])
    c, r = ref_head(rf, sd)
    return ref_detections(props[:, :4], c, r, img_shape, scale_factor)


def iou(a, b):
    """IoU in v0.6's convention (a box covers x1..x2 inclusive: width x2 - x1 + 1)."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def assert_same_detections(dets, labels, ref_dets, ref_labels, box_tol=1e-2, score_tol=1e-4):
    """Same count; every reference detection matched one to one by label, IoU >= 0.999, boxes within
    box_tol px and scores within score_tol."""
    dets, labels = np.asarray(dets, np.float64), np.asarray(labels)
    assert len(dets) == len(ref_dets), f"{len(dets)} detections vs the reference's {len(ref_dets)}"
    used = set()
    for rd, rl in zip(ref_dets, ref_labels, strict=True):
        cands = [j for j in range(len(dets)) if j not in used and labels[j] == rl
                 and iou(dets[j], rd) >= 0.999 and np.abs(dets[j, :4] - rd[:4]).max() <= box_tol
                 and abs(dets[j, 4] - rd[4]) <= score_tol]
        assert cands, f"reference detection {rd.round(3).tolist()} (label {rl}) has no match"
        used.add(cands[0])


# ----------------------------------------------------------------------------------------------
# fixtures: random official-layout R101 detectors
# ----------------------------------------------------------------------------------------------

HEAD_KEYS = {  # the official head layout (RPNHead, SharedFCBBoxHead of the configs), written from the code
    "rpn_head.rpn_conv.weight": (256, 256, 3, 3), "rpn_head.rpn_conv.bias": (256,),
    "rpn_head.rpn_cls.weight": (3, 256, 1, 1), "rpn_head.rpn_cls.bias": (3,),
    "rpn_head.rpn_reg.weight": (12, 256, 1, 1), "rpn_head.rpn_reg.bias": (12,),
    "bbox_head.shared_fcs.0.weight": (1024, 256 * 49), "bbox_head.shared_fcs.0.bias": (1024,),
    "bbox_head.shared_fcs.1.weight": (1024, 1024), "bbox_head.shared_fcs.1.bias": (1024,),
    "bbox_head.fc_cls.weight": (81, 1024), "bbox_head.fc_cls.bias": (81,),
    "bbox_head.fc_reg.weight": (324, 1024), "bbox_head.fc_reg.bias": (324,),
}
SPARSE_ONLY = ("_mask.", "_sigma", "_gumbel.")


def layout(sparse: bool) -> dict:
    keys = {k: v for k, v in official_keys().items() if sparse or not any(t in k for t in SPARSE_ONLY)}
    keys.update(HEAD_KEYS)
    return keys


def make_checkpoint(name: str, seed: int = 0, scale=SCALE) -> dict:
    """An official-layout checkpoint: a randomly initialised detector whose heads are scaled (from its own
    outputs on a random image) so that RPN logits spread over a few units and the box head gives dozens of
    detections."""
    torch.manual_seed(seed)
    det = SaiDetector(preset(name).with_scale(scale))
    img = torch.randint(0, 256, (72, 120, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    with torch.no_grad():
        meta = preprocess(img, det.config)[0]
        feats = det.extract_feat(meta["img"][None])
        cls, _ = det.rpn_head(feats)
        det.rpn_head.rpn_cls.weight.mul_(2.0 / float(torch.cat([c.flatten() for c in cls]).std()))
        fcs = det.bbox_head
        x = torch.randn(64, 256 * 49) * float(feats[0].std())
        for fc in fcs.shared_fcs:
            x = F.relu(fc(x))
        fcs.fc_cls.weight.mul_(2.5 / float(fcs.fc_cls(x).std()))
        fcs.fc_reg.weight.mul_(0.5 / float(fcs.fc_reg(x).std()))
    sd = {k: v.clone() for k, v in det.state_dict().items() if not k.endswith("num_batches_tracked")}
    g = torch.Generator().manual_seed(seed)
    for k in sd:  # sparse masks neither all on nor all off; DCN offsets that move the taps
        if k.endswith(("_mask.bias", "_offset.bias")):
            sd[k].zero_()
        elif k.endswith(("_mask.weight", "_offset.weight")):
            sd[k] = torch.randn(sd[k].shape, generator=g) * 1e-3
    return {"state_dict": sd, "meta": {"mmdet_version": "0.6.0"}}


@pytest.fixture(scope="module")
def dense_ckpt():
    return make_checkpoint("resnet_101_faster_rcnn_res500")


@pytest.fixture(scope="module")
def dense_det(dense_ckpt):
    return load_detector(preset("resnet_101_faster_rcnn_res500").with_scale(SCALE), dense_ckpt)


@pytest.fixture(scope="module")
def image():
    return np.random.RandomState(3).randint(0, 256, (72, 120, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def other():
    return np.random.RandomState(9).randint(0, 256, (90, 52, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def batch_out(dense_det, image, other):
    """detect() of a list of two images of different sizes."""
    return dense_det.detect([image, other])


def small_forward(det, images, scale=(64, 40)):
    """The detector's forward on images preprocessed at a small scale (fast), one image at a time."""
    cfg = det.config.with_scale(scale)
    outs = [det(m["img"][None], [m["img_shape"]], [m["scale_factor"]]) for m in preprocess(images, cfg)]
    return [torch.cat(t) for t in zip(*outs, strict=True)]


@pytest.fixture(scope="module")
def stages(dense_det, image):
    """One forward's intermediate results (float32 model) for the per-stage comparisons."""
    meta = preprocess(image, dense_det.config)[0]
    with torch.no_grad():
        feats = dense_det.extract_feat(meta["img"][None])
        cls, reg = dense_det.rpn_head(feats)
        props = dense_det.proposals(cls, reg, 0, meta["img_shape"])
        rf = dense_det.roi_features(feats[:4], 0, props[:, :4])
        c, r = dense_det.bbox_head(rf)
        dets, labels = dense_det.detections(props[:, :4], c, r, meta["img_shape"], meta["scale_factor"])
    return dict(meta=meta, feats=feats, cls=cls, reg=reg, props=props, rf=rf, c=c, r=r, dets=dets, labels=labels)


def f64(t):
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------------------------
# layout, presets, configs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet_101_faster_rcnn_res800", "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1"])
def test_state_dict_is_the_official_layout(name):
    det = SaiDetector(name)
    own = {k: tuple(v.shape) for k, v in det.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert own == layout(name.startswith("sparse"))


def test_presets_are_the_official_configs():
    assert sorted(PRESETS) == sorted(
        [f"resnet_101_faster_rcnn_res{r}" for r in (500, 600, 800, 1000)]
        + [f"sparse_resnet_101_faster_rcnn_sparse_loss_weight_{w}" for w in ("0_02", "0_05", "0_1", "0_2")])
    scales = {500: (833, 500), 600: (1000, 600), 800: (1333, 800), 1000: (1667, 1000)}
    for r, s in scales.items():
        c = preset(f"resnet_101_faster_rcnn_res{r}")
        assert (c.img_scale, c.sparse, c.dcn_stages) == (s, False, (False, True, True, True))
    for w, v in (("0_02", 0.02), ("0_05", 0.05), ("0_1", 0.1), ("0_2", 0.2)):
        c = preset(f"sparse_resnet_101_faster_rcnn_sparse_loss_weight_{w}")
        assert (c.img_scale, c.sparse, c.backbone_options["sparse_loss_weight"]) == ((1667, 1000), True, v)
    c = preset("resnet_101_faster_rcnn_res800")
    assert (c.nms_pre, c.nms_post, c.max_num, c.rpn_nms_thr, c.nms_across_levels) == (1000, 1000, 1000, 0.7, False)
    assert (c.score_thr, c.nms_thr, c.max_per_img, c.roi_out_size, c.roi_sample_num) == (0.05, 0.5, 100, 7, 2)
    assert (c.num_classes, c.bbox_stds, c.mean, c.std) == (81, (0.1, 0.1, 0.2, 0.2), (123.675, 116.28, 103.53),
                                                             (58.395, 57.12, 57.375))


# A config in the official files' form (written here: names, f-strings, dict(...), 1.0 / 9.0).
CONFIG = """
res = (1333, 800)
name = 'sparse_0_05'
work_dir = f'work_dirs/{name}' + '/'
model = dict(
    type='FasterRCNN',
    backbone=dict(type='SparseResNet', depth=101, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=0,
                  style='pytorch', dcn=dict(modulated=False, deformable_groups=1, fallback_on_stride=False),
                  stage_with_dcn=(False, True, True, True), gumbel_cfg=dict(max_T=1., decay_alpha=0.99998),
                  gaussian_kernel=7, grid_prior_interval=11, sparse_loss_weight=0.05),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5),
    rpn_head=dict(type='RPNHead', in_channels=256, feat_channels=256, anchor_scales=[8],
                  anchor_ratios=[0.5, 1.0, 2.0], anchor_strides=[4, 8, 16, 32, 64],
                  target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0],
                  loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
                  loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    bbox_roi_extractor=dict(type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', out_size=7, sample_num=2),
                            out_channels=256, featmap_strides=[4, 8, 16, 32]),
    bbox_head=dict(type='SharedFCBBoxHead', num_fcs=2, in_channels=256, fc_out_channels=1024, roi_feat_size=7,
                   num_classes=81, target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2],
                   reg_class_agnostic=False,
                   loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
test_cfg = dict(
    rpn=dict(nms_across_levels=False, nms_pre=1000, nms_post=1000, max_num=1000, nms_thr=0.7, min_bbox_size=0),
    rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_thr=0.5), max_per_img=100))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
data = dict(test=dict(type='CocoDataset', img_scale=res, img_norm_cfg=img_norm_cfg, size_divisor=32,
                      flip_ratio=0, test_mode=True))
"""


def test_config_file_is_read_as_literals(tmp_path):
    path = tmp_path / "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_05.py"
    path.write_text(CONFIG)
    cfg = read_config_file(path)
    want = preset("sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_05").with_scale((1333, 800))
    assert cfg == want
    assert parse_config_text(CONFIG)["work_dir"] == "work_dirs/sparse_0_05/"


@pytest.mark.parametrize("code", [
    "import os\n",
    "x = __import__('os').system('touch {marker}')\n",
    "x = open('{marker}', 'w')\n",
    "x = [i for i in range(3)]\n",
    "x = dict(**y)\n",
    "def f():\n    pass\n",
])
def test_config_with_code_is_refused_and_not_run(tmp_path, code):
    marker = tmp_path / "ran"
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG + code.format(marker=marker))
    with pytest.raises(SaiError) as err:
        read_config_file(path)
    msg = str(err.value)
    assert "\n" not in msg and "without running" in msg
    assert not marker.exists()


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(SaiError, match="unknown detector preset 'faster_rcnn_r50'.*resnet_101_faster_rcnn_res500"):
        SaiDetector("faster_rcnn_r50")


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------


def test_strict_load_names_every_bad_key(dense_ckpt):
    sd = dict(dense_ckpt["state_dict"])
    del sd["rpn_head.rpn_reg.bias"]
    del sd["backbone.layer3.7.bn2.running_var"]
    sd["bbox_head.fc_mask.weight"] = torch.zeros(3)
    sd["bbox_head.fc_cls.weight"] = torch.zeros(91, 1024)
    sd["backbone.layer1.0.conv1_mask.weight"] = torch.zeros(1, 64, 3, 3)  # a sparse key in a dense preset
    cfg = preset("resnet_101_faster_rcnn_res500")
    with pytest.raises(SaiError) as err:
        load_detector(cfg, {"state_dict": sd})
    msg = str(err.value)
    assert "\n" not in msg
    for k in ("rpn_head.rpn_reg.bias", "backbone.layer3.7.bn2.running_var", "bbox_head.fc_mask.weight",
              "backbone.layer1.0.conv1_mask.weight",
              "bbox_head.fc_cls.weight: checkpoint [91, 1024] vs model [81, 1024]"):
        assert k in msg


def test_checkpoint_without_heads_is_refused(dense_ckpt, tmp_path):
    sd = {k: v for k, v in dense_ckpt["state_dict"].items() if not k.startswith(("rpn_head.", "bbox_head."))}
    path = tmp_path / "backbone_only.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(SaiError) as err:
        load_detector("resnet_101_faster_rcnn_res500", str(path))
    msg = str(err.value)
    assert "\n" not in msg and "no detector heads" in msg and "backbone_only.pth" in msg


def test_load_roundtrip_is_exact(dense_ckpt, dense_det):
    own = dense_det.state_dict()
    for k, v in dense_ckpt["state_dict"].items():
        assert torch.equal(own[k], v), k


# ----------------------------------------------------------------------------------------------
# per stage, identical inputs
# ----------------------------------------------------------------------------------------------


def test_anchors_match_the_reference(dense_det):
    for lvl, s in enumerate(STRIDES):
        got = dense_det.anchors(lvl, 3, 5).numpy()
        np.testing.assert_array_equal(got, ref_anchors(s, 3, 5))
    # the well-known v0.6 base anchors of stride 4 (ratios 0.5, 1, 2, scale 8)
    np.testing.assert_array_equal(dense_det.anchors(0, 1, 1).numpy(),
                                  [[-21, -9, 24, 12], [-14, -14, 17, 17], [-9, -21, 12, 24]])


@pytest.mark.parametrize("scale", [(200, 150), (100, 45)])  # up and down
def test_preprocess_matches_the_official_pipeline(image, scale):
    cfg = preset("resnet_101_faster_rcnn_res800").with_scale(scale)
    meta = preprocess(image, cfg)[0]
    h, w = image.shape[:2]
    s = min(max(scale) / max(h, w), min(scale) / min(h, w))
    nh, nw = int(h * s + 0.5), int(w * s + 0.5)
    assert meta["img_shape"] == (nh, nw) and meta["scale_factor"] == s
    assert meta["img"].shape == (3, -(-nh // 32) * 32, -(-nw // 32) * 32)
    # bilinear with half-pixel centres (cv2.INTER_LINEAR), rounded to uint8, written with loops
    src = image.astype(np.float64)
    ys, xs = [(i + 0.5) * h / nh - 0.5 for i in range(nh)], [(j + 0.5) * w / nw - 0.5 for j in range(nw)]
    rows = np.zeros((nh, nw, 3))
    for i, y in enumerate(ys):
        y = max(y, 0.0)
        y0 = min(int(y), h - 1)
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j, x in enumerate(xs):
            x = max(x, 0.0)
            x0 = min(int(x), w - 1)
            x1, fx = min(x0 + 1, w - 1), x - x0
            rows[i, j] = ((1 - fy) * ((1 - fx) * src[y0, x0] + fx * src[y0, x1])
                          + fy * ((1 - fx) * src[y1, x0] + fx * src[y1, x1]))
    resized = np.clip(np.floor(rows + 0.5), 0, 255)
    want = (resized - np.array(cfg.mean)) / np.array(cfg.std)
    got = meta["img"].numpy().transpose(1, 2, 0)
    # within one grey level of the exact float resize (rounding ties), zero padding beyond img_shape
    assert np.abs(got[:nh, :nw] - want).max() <= 1.0 / 57.0 + 1e-4
    assert np.mean(np.abs(got[:nh, :nw] - want) > 1e-4) < 0.01
    assert not got[nh:].any() and not got[:, nw:].any()


def test_proposals_match_the_reference(stages):
    m = stages
    cls = [f64(c[0]) for c in m["cls"]]
    reg = [f64(r[0]) for r in m["reg"]]
    ref = ref_proposals(cls, reg, m["meta"]["img_shape"])
    got = f64(m["props"])
    assert got.shape == ref.shape and len(ref) >= 300
    np.testing.assert_allclose(got[:, :4], ref[:, :4], atol=2e-3, rtol=0)
    np.testing.assert_allclose(got[:, 4], ref[:, 4], atol=1e-6, rtol=0)


def test_roi_features_match_the_reference(stages):
    m = stages
    props = f64(m["props"])[:, :4]
    feats = [f64(f[0]) for f in m["feats"][:4]]
    levels = [ref_level(b) for b in props]
    assert len(set(levels)) >= 2, "the test image should map RoIs to several levels"
    sel = np.random.RandomState(0).choice(len(props), 120, replace=False)
    ref = ref_roi_features(feats, props[sel])
    got = f64(m["rf"])[sel]
    scale = max(np.abs(f).max() for f in feats)
    np.testing.assert_allclose(got, ref, atol=2e-6 * scale, rtol=0)


def test_small_and_odd_rois_match_the_reference():
    """RoIs under 4 px, of zero or negative size, and crossing or beyond the map's borders."""
    from sai.models.detector import map_roi_levels, roi_align_v06

    g = torch.Generator().manual_seed(5)
    fmap = torch.randn(8, 9, 13, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[3.0, 4.0, 5.5, 6.0], [10.2, 11.7, 10.2, 11.7], [0.0, 0.0, 1.0, 1.0],
                          [20.0, 10.0, 18.0, 9.0], [-6.0, -5.0, 3.0, 2.0], [44.0, 30.0, 60.0, 40.0],
                          [49.0, 33.0, 52.0, 36.0], [51.9, 35.9, 80.0, 70.0], [1.0, 2.0, 52.0, 35.0]],
                         dtype=torch.float64)
    for scale in (0.25, 0.5):
        got = roi_align_v06(fmap, boxes, scale).numpy()
        for i, b in enumerate(boxes.numpy()):
            np.testing.assert_allclose(got[i], ref_roi_align(fmap.numpy(), b, scale), atol=1e-12, rtol=0)
    tiny = torch.tensor([[0.0, 0.0, 2.0, 1.0], [5, 5, 5 + 111, 5 + 111], [0, 0, 111.0, 111.0], [0, 0, 900.0, 900]])
    assert map_roi_levels(tiny, 4).tolist() == [ref_level(b) for b in tiny.numpy()] == [0, 1, 1, 3]


def test_nms_plus_one_matches_the_reference():
    from sai.models.detector import nms_v06

    rs = np.random.RandomState(1)
    xy = rs.uniform(0, 60, (300, 2))
    boxes = np.concatenate([xy, xy + rs.uniform(0, 25, (300, 2))], 1)
    boxes[:20, 2:] = boxes[:20, :2]  # zero-size boxes: area 1 under the +1 rule
    scores = rs.uniform(0, 1, 300)
    for thr in (0.3, 0.5, 0.7):
        got = nms_v06(torch.tensor(boxes), torch.tensor(scores), thr).tolist()
        assert got == ref_nms(boxes, scores, thr)
    # the +1: [0, 0, 1, 1] and [1, 1, 2, 2] overlap by 1 px of 4 each: IoU 1/7 (0 without the +1)
    two = torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]])
    assert nms_v06(two, torch.tensor([0.9, 0.8]), 0.1).tolist() == [0]
    assert nms_v06(two, torch.tensor([0.9, 0.8]), 0.15).tolist() == [0, 1]


def test_detections_match_the_reference(stages, dense_ckpt):
    m = stages
    sd = {k: f64(v) for k, v in dense_ckpt["state_dict"].items() if k.startswith("bbox_head.")}
    c, r = ref_head(f64(m["rf"]), sd)
    np.testing.assert_allclose(f64(m["c"]), c, atol=1e-4 * np.abs(c).max(), rtol=0)
    ref_dets, ref_labels = ref_detections(f64(m["props"])[:, :4], c, r, m["meta"]["img_shape"],
                                          m["meta"]["scale_factor"])
    assert len(ref_dets) >= 24, "the scaled heads should give dozens of detections"
    assert_same_detections(f64(m["dets"]), m["labels"].numpy(), ref_dets, ref_labels)


def test_end_to_end_matches_the_reference(batch_out, dense_ckpt, stages, image):
    """detect() on the raw image against the float64 reference run from the same FPN levels."""
    out = batch_out
    n = int(out["num_dets"][0])
    m = stages
    sd = {k: f64(v) for k, v in dense_ckpt["state_dict"].items()}
    ref_dets, ref_labels = ref_detect_from_feats([f64(f[0]) for f in m["feats"]], sd, m["meta"]["img_shape"],
                                                 m["meta"]["scale_factor"])
    assert len(ref_dets) >= 24
    assert_same_detections(f64(out["dets"][0, :n]), out["labels"][0, :n].numpy(), ref_dets, ref_labels)
    assert (out["labels"][0, n:] == -1).all() and not out["dets"][0, n:].any()
    scores = out["dets"][0, :n, 4]
    assert (scores[:-1] >= scores[1:]).all()
    d = out["dets"][0, :n]  # boxes lie in the original image (v0.6: up to size - 1, divided by the scale)
    assert (d[:, :4] >= 0).all() and (d[:, 2] <= image.shape[1]).all() and (d[:, 3] <= image.shape[0]).all()


def test_batch_of_two_sizes(batch_out, dense_det, dense_ckpt, other):
    """The second image of a two-size batch gets the reference's detections of its own run."""
    meta = preprocess(other, dense_det.config)[0]
    with torch.no_grad():
        feats = dense_det.extract_feat(meta["img"][None])
    sd = {k: f64(v) for k, v in dense_ckpt["state_dict"].items()}
    ref = ref_detect_from_feats([f64(f[0]) for f in feats], sd, meta["img_shape"], meta["scale_factor"])
    n = int(batch_out["num_dets"][1])
    assert n > 0
    assert_same_detections(f64(batch_out["dets"][1, :n]), batch_out["labels"][1, :n].numpy(), *ref)


def test_layouts_give_the_same_input(dense_det, image, other):
    cfg = dense_det.config
    pair = np.stack([image, image[::-1].copy()])
    ref = [m["img"] for m in preprocess([image, image[::-1].copy()], cfg)]
    for x, lay in ((pair, None), (pair, "NHWC"), (torch.from_numpy(pair).permute(0, 3, 1, 2), None),
                   (np.ascontiguousarray(pair.transpose(0, 3, 1, 2)), "NCHW"), (pair.astype(np.float32), None)):
        got = preprocess(x, cfg, lay)
        assert len(got) == 2 and all(torch.equal(g["img"], r) for g, r in zip(got, ref, strict=True))


def test_fused_detector_gives_the_same_detections(dense_ckpt, image, other):
    """BN folded and the fused block kernels: the same detections as the unfused detector."""
    cfg = preset("sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1").with_scale((64, 40))
    ckpt = make_checkpoint(cfg.name, seed=2, scale=(64, 40))
    det = load_detector(cfg, ckpt)
    a = det.detect([image, other])
    det.fuse_for_inference()
    assert det.fused
    with pytest.raises(SaiError, match="unfused detector"):
        load_detector_state(det, ckpt)
    b = det.detect([image, other])
    assert int(a["num_dets"].min()) > 0
    for i in range(2):
        n = int(a["num_dets"][i])
        assert_same_detections(f64(b["dets"][i, :int(b["num_dets"][i])]), b["labels"][i, :int(b["num_dets"][i])],
                               f64(a["dets"][i, :n]), a["labels"][i, :n].numpy(), box_tol=2e-2, score_tol=2e-4)


def test_detector_flops_count_what_runs(dense_det, image):
    """detector_flops' neck, RPN and RoI head against MACs counted by hooks on every conv and linear layer
    during a forward (bias adds not counted), with the RoIs that forward made."""
    counts = {"neck": 0, "rpn_head": 0, "bbox_head": 0}
    rois = []

    def hook(part):
        def fn(mod, inp, out):
            if isinstance(mod, torch.nn.Conv2d):
                counts[part] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            else:
                counts[part] += out.numel() * mod.in_features
                if mod is dense_det.bbox_head.fc_cls:
                    rois.append(out.shape[0])
        return fn

    handles = [m.register_forward_hook(hook(part)) for part in counts
               for m in getattr(dense_det, part).modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        meta = preprocess(image, dense_det.config.with_scale((64, 40)))[0]
        dense_det(meta["img"][None], [meta["img_shape"]], [meta["scale_factor"]])
    finally:
        for h in handles:
            h.remove()
    fl = detector_flops(dense_det.config, tuple(meta["img"].shape[1:]), num_rois=rois[0])
    assert fl["neck"] == counts["neck"] and fl["rpn"] == counts["rpn_head"]
    assert fl["roi_head"] == counts["bbox_head"] + rois[0] * 4 * 256 * 49 * 4  # + RoIAlign's bilinear taps
    assert fl["total"] == fl["backbone"] + fl["neck"] + fl["rpn"] + fl["roi_head"]
    # the default input: a landscape image at the scale, padded; sparse densities lower only the backbone
    sp = "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1"
    dense, half = detector_flops(sp), detector_flops(sp, densities=0.3)
    assert dense["input_hw"] == (1024, 1696) and half["backbone"] < dense["backbone"]
    assert half["dense_parts"] == dense["dense_parts"]


def test_zero_detections(dense_det, image):
    bias = dense_det.bbox_head.fc_cls.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[0] = 100.0  # every RoI is background
        dets, labels, num = small_forward(dense_det, image)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert num.tolist() == [0]
    assert dets.shape == (1, 100, 5) and not dets.any() and (labels == -1).all()


def test_sparse_detector_runs_and_is_finite():
    """A sparse preset end to end (random official-layout weights), on extreme but finite images."""
    name = "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1"
    det = load_detector(preset(name).with_scale((64, 40)), make_checkpoint(name, seed=1, scale=(64, 40)))
    imgs = [np.full((40, 70, 3), 255, np.uint8), np.random.RandomState(2).randint(0, 256, (40, 70, 3)).astype(np.uint8)]
    out = det.detect(np.stack(imgs))
    assert torch.isfinite(out["dets"]).all()
    assert out["dets"].shape == (2, 100, 5) and int(out["num_dets"].max()) > 0
    assert 0 < np.mean([d1 for d1, _ in det.backbone.densities().values()]) < 1


def test_no_nan_in_dets_for_extreme_finite_images(dense_det):
    imgs = [np.zeros((50, 50, 3), np.uint8), np.full((2, 200, 3), 255, np.uint8),
            np.random.RandomState(4).uniform(0, 255, (33, 17, 3)).astype(np.float32)]
    dets, _, num = small_forward(dense_det, imgs)
    assert torch.isfinite(dets).all() and int(num.max()) > 0


# ----------------------------------------------------------------------------------------------
# bad input: one line naming the problem and the fix
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("images, layout, match", [
    (np.zeros((2, 1, 20, 30, 3), np.uint8), None, "rank 4"),
    (np.zeros((20,), np.uint8), None, "rank 4"),
    (np.zeros((20, 30, 3), np.int64), None, "dtype int64"),
    (np.zeros((20, 30, 3), bool), None, "dtype bool"),
    (np.zeros((20, 30, 4), np.uint8), None, "3 channels"),
    (np.zeros((1, 20, 30, 1), np.uint8), None, "3 channels"),
    (np.zeros((3, 20, 3), np.uint8), None, "layout='NHWC'"),
    (np.zeros((0, 30, 3), np.uint8), None, "zero size"),
    (np.zeros((1, 400, 3), np.uint8), None, "rescales to 0x192"),
    (np.zeros((0, 20, 30, 3), np.uint8), None, "no images"),
    (np.full((20, 30, 3), np.nan, np.float32), None, "NaN"),
    ([], None, "no images"),
    ("image.jpg", None, "numpy arrays or torch tensors"),
    (np.zeros((20, 30, 3), np.uint8), "HWC", "layout must be"),
    (np.zeros((1, 20, 30, 3), np.uint8), "NCHW", "3 channels"),
])
def test_bad_images_get_one_line(dense_det, images, layout, match):
    with pytest.raises(SaiError, match=match) as err:
        dense_det.detect(images, layout=layout)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# groundwork for the portable export: v0.6's +1 conventions through standard ONNX ops (onnxruntime)
# ----------------------------------------------------------------------------------------------


def _ort_run(node, inputs, outputs, feeds, opset=16):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import helper

    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_onnx_nms_on_boxes_shifted_by_one_is_v06_nms():
    """NonMaxSuppression on (x1, y1, x2 + 1, y2 + 1) keeps what v0.6's +1 NMS keeps."""
    from onnx import TensorProto, helper

    from sai.models.detector import nms_v06

    rs = np.random.RandomState(7)
    xy = rs.uniform(0, 60, (400, 2))
    boxes = np.concatenate([xy, xy + rs.uniform(0, 20, (400, 2))], 1).astype(np.float32)
    boxes[:30, 2:] = boxes[:30, :2]
    scores = rs.uniform(0, 1, 400).astype(np.float32)
    shifted = boxes.copy()
    shifted[:, 2:] += 1
    corners = shifted[:, [1, 0, 3, 2]][None]  # ONNX's [y1, x1, y2, x2]
    for thr in (0.3, 0.5, 0.7):
        node = helper.make_node("NonMaxSuppression", ["b", "s", "k", "t"], ["i"])
        inputs = [("b", TensorProto.FLOAT, [1, 400, 4]), ("s", TensorProto.FLOAT, [1, 1, 400]),
                  ("k", TensorProto.INT64, [1]), ("t", TensorProto.FLOAT, [1])]
        (sel,) = _ort_run(node, inputs, [("i", TensorProto.INT64, ["k", 3])],
                          {"b": corners, "s": scores[None, None], "k": np.array([400], np.int64),
                           "t": np.array([thr], np.float32)})
        assert sel[:, 2].tolist() == nms_v06(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()


def test_onnx_roialign_is_v06_only_for_rois_of_a_cell_or_more():
    """RoiAlign (output_half_pixel, sampling_ratio 2) on (x1, y1, x2 + 1, y2 + 1) equals v0.6's RoIAlign
    where the RoI spans at least one feature cell; smaller RoIs differ (ONNX clamps the size at 1, v0.6 at
    0), so a portable export needs its own RoIAlign for them (e.g. a level-0 RoI under 4 px)."""
    from onnx import TensorProto, helper

    g = torch.Generator().manual_seed(8)
    fmap = torch.randn(1, 4, 12, 15, generator=g)
    big = torch.tensor([[3.0, 4.0, 30.5, 20.0], [0, 0, 59, 47], [10.3, 2.2, 40.9, 44.4], [50, 40, 70, 60]])
    small = torch.tensor([[3.0, 4.0, 4.5, 5.0], [20.2, 11.7, 20.2, 11.7]])
    rois = torch.cat([big, small])
    shifted = rois.clone()
    shifted[:, 2:] += 1
    node = helper.make_node("RoiAlign", ["x", "r", "i"], ["y"], mode="avg", output_height=7, output_width=7,
                            sampling_ratio=2, spatial_scale=0.25, coordinate_transformation_mode="output_half_pixel")
    inputs = [("x", TensorProto.FLOAT, [1, 4, 12, 15]), ("r", TensorProto.FLOAT, [6, 4]), ("i", TensorProto.INT64, [6])]
    (y,) = _ort_run(node, inputs, [("y", TensorProto.FLOAT, [6, 4, 7, 7])],
                    {"x": fmap.numpy(), "r": shifted.numpy(), "i": np.zeros(6, np.int64)})
    ref = np.stack([ref_roi_align(fmap[0].double().numpy(), b, 0.25) for b in rois.double().numpy()])
    np.testing.assert_allclose(y[:4], ref[:4], atol=1e-5, rtol=0)
    assert np.abs(y[4:] - ref[4:]).max() > 1e-2
