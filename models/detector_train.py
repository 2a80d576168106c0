"""Train the demo detector pair: a small SAI-Det Faster R-CNN + FPN (sparse ResNet-18 backbone) and its
dense twin on a procedural detection task (``sai train-demo --task detection``).

The test path is ``sai.models.detector`` (mmdetection v0.6); this module adds what training needs and the
test path lacks, with v0.6's rules (``mmdet/core/bbox``, ``anchor_target``, ``RPNHead.loss``,
``BBoxHead.loss``):

- ``assign_max_iou``: ``MaxIoUAssigner`` (``+1`` IoU; negatives ``0 <= max IoU < neg_iou_thr``, positives
  ``>= pos_iou_thr``, then every ground truth also takes all boxes of its own highest IoU when that is
  ``>= min_pos_iou``, ``gt_max_assign_all``); ``sample_random``: ``RandomSampler`` (``pos_fraction`` of
  ``num`` positives at most, the rest negatives);
- ``bbox2delta`` (``+1`` widths, means/stds), the RPN's anchor targets (anchors inside the image,
  ``allowed_border`` 0), sigmoid BCE + smooth L1 (beta 1/9) averaged over the sampled anchors;
- proposals of the test path's ``RPNHead.get_bboxes`` (detached), ground truths added as proposals, the
  box head's softmax CE + class-specific smooth L1 (beta 1) averaged over the sampled RoIs;
- the sparse backbone's loss on its mask densities, ``SaiResNet.sparse_loss(target=...)`` (the set point
  falls from 1 to ``target_density`` over ``density_warmup`` of fine-tuning, as the classification demo).

Recipe (as the official one, shortened to minutes on a CPU): the backbone starts from the dense demo
classifier (models/zoo/sai_demo_r18, trained on the same shapes), BN statistics frozen (``norm_eval``);
phase 1 trains the dense detector; phase 2 fine-tunes from it, with the same data order and schedule,
the dense twin and the sparse detector (``init_from_dense`` semantics: every key of the dense detector
loaded, the mask predictors keep their init). Everything is seeded; one torch thread by default.

The data: ``render_det(seed, split, i)`` is a pure function of its arguments (numpy ``default_rng``), an
RGB image with 1-5 non-overlapping shapes of ``DET_CLASSES`` on the classification demo's backgrounds,
their boxes in v0.6's inclusive pixel convention (``x2 - x1 + 1`` is the width) and 0-based labels.
Evaluation is COCO box mAP (pycocotools' ``COCOeval``) on the held-out split.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sai.errors import SaiError
from sai.models import demo_data
from sai.models.detector import SaiDetector, iou_plus1, load_detector
from sai.models.detector_presets import DetectorConfig

DET_CLASSES = ("circle", "ring", "square", "triangle", "plus", "star")
DET_IMAGE_SIZE = 128
DET_RADIUS = (0.07, 0.18)  # object radius as a fraction of the image size
DET_MAX_OBJECTS = 5
SPARSE_DET_FILE = "sparse_det_r18.pth"
DENSE_DET_FILE = "det_r18.pth"
DEFAULT_DET_OUT = Path(__file__).resolve().parent / "zoo" / "sai_demo_det_r18"
DEFAULT_INIT = Path(__file__).resolve().parent / "zoo" / "sai_demo_r18" / "resnet18.pth"
# the demo classifier's input normalisation ((x / 255 - 0.5) / 0.25) in the detector's pixel units
PIXEL_MEAN = tuple(255.0 * m for m in demo_data.MEAN)
PIXEL_STD = tuple(255.0 * s for s in demo_data.STD)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def render_det(seed: int, split: str, index: int, size: int = DET_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """One image ``[size, size, 3]`` uint8, its boxes ``[n, 4]`` float32 (x1, y1, x2, y2; inclusive pixels:
    ``x2 - x1 + 1`` is the width) and labels ``[n]`` int64 (0-based ``DET_CLASSES``)."""
    if split not in demo_data.SPLITS:
        raise SaiError(f"unknown split {split!r}; valid: {', '.join(demo_data.SPLITS)}")
    ss = demo_data.SUPERSAMPLE
    rng = np.random.default_rng([int(seed), 100 + demo_data.SPLITS[split], int(index)])
    bg = demo_data._background(rng, size, *np.mgrid[0:size, 0:size].astype(np.float64))
    img = np.repeat(np.repeat(bg, ss, 0), ss, 1)
    bg_mean = bg.mean(axis=(0, 1))
    for _ in range(int(rng.integers(2, 9))):  # distractors: specks smaller than any object
        cy, cx = rng.uniform(0, size, 2)
        rad = rng.uniform(0.6, 1.8)
        sl, yy, xx = demo_data._window(cy, cx, rad + 1, size)
        img[sl][np.hypot(yy - cy, xx - cx) < rad] = rng.uniform(0, 1, 3)
    n = int(rng.integers(1, DET_MAX_OBJECTS + 1))
    placed: list[tuple[float, float, float]] = []
    boxes, labels = [], []
    for _ in range(n):
        for _try in range(30):
            radius = rng.uniform(*DET_RADIUS) * size
            margin = radius * 1.05
            cy, cx = rng.uniform(margin, size - margin, 2)
            if all(math.hypot(cy - py, cx - px) > 1.1 * (radius + pr) for py, px, pr in placed):
                break
        else:
            continue
        label = int(rng.integers(0, len(DET_CLASSES)))
        a = rng.uniform(0, 2 * math.pi)
        sl, yy, xx = demo_data._window(cy, cx, radius * 1.2, size)
        dx, dy = (xx - cx) / radius, (yy - cy) / radius
        u = dx * math.cos(a) + dy * math.sin(a)
        v = -dx * math.sin(a) + dy * math.cos(a)
        m = demo_data.shape_mask(demo_data.CLASSES.index(DET_CLASSES[label]), u, v)
        if not m.any():
            continue
        img[sl][m] = demo_data._colour_apart(rng, bg_mean)
        rows, cols = np.nonzero(m)
        # the shape covers supersampled pixels [c0, c1] -> image x in [c0 / ss, (c1 + 1) / ss)
        x1, x2 = (sl[1].start + cols.min()) / ss, (sl[1].start + cols.max() + 1) / ss - 1
        y1, y2 = (sl[0].start + rows.min()) / ss, (sl[0].start + rows.max() + 1) / ss - 1
        boxes.append((x1, y1, x2, y2))
        labels.append(label)
        placed.append((cy, cx, radius))
    img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    img += rng.normal(0, 0.02, img.shape)
    out = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def make_det_split(seed: int, split: str, n: int, size: int = DET_IMAGE_SIZE, start: int = 0
                   ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Images ``[n, size, size, 3]`` uint8 (NHWC, what ``SaiDetector.detect`` takes), boxes and labels per image."""
    imgs = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes, labels = [], []
    for k in range(n):
        imgs[k], b, lab = render_det(seed, split, start + k, size)
        boxes.append(torch.from_numpy(b))
        labels.append(torch.from_numpy(lab))
    return torch.from_numpy(imgs), boxes, labels


# ----------------------------------------------------------------------------------------------
# the demo detector's settings
# ----------------------------------------------------------------------------------------------


def demo_detector_config(sparse: bool, base_width: int = 16, fpn_channels: int = 32, fc_channels: int = 128,
                         image_size: int = DET_IMAGE_SIZE, backbone_options: Optional[dict] = None
                         ) -> DetectorConfig:
    """The demo detector: Faster R-CNN + FPN of v0.6 on a ResNet-18 of ``base_width`` channels, no DCN, FPN
    and RPN of ``fpn_channels``, a 2-FC box head of ``fc_channels``, anchors 16..256 px, 100 proposals."""
    opts = {"base_width": int(base_width), "frozen_stages": -1, "norm_eval": True}
    if sparse:
        opts.update(grid_prior_interval=11, gaussian_kernel=7, max_T=1.0, decay_alpha=0.99998,
                    sparse_loss_weight=1.0, mask_bias_init=1.0)
    opts.update(backbone_options or {})
    bw = int(base_width)
    return DetectorConfig(
        name=f"sai_demo_det_r18{'_sparse' if sparse else ''}", sparse=sparse, depth=18,
        dcn_stages=(False, False, False, False), backbone_options=opts, img_scale=(image_size, image_size),
        mean=PIXEL_MEAN, std=PIXEL_STD, fpn_in_channels=(bw, 2 * bw, 4 * bw, 8 * bw), fpn_out_channels=fpn_channels,
        feat_channels=fpn_channels, anchor_scales=(4,), nms_pre=300, nms_post=100, max_num=100,
        num_fcs=2, fc_out_channels=fc_channels, num_classes=len(DET_CLASSES) + 1, score_thr=0.05, nms_thr=0.5,
        max_per_img=20)


def config_to_meta(cfg: DetectorConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def config_from_meta(meta: dict) -> DetectorConfig:
    """The ``DetectorConfig`` a demo detector checkpoint records (``meta["detector_config"]``)."""
    d = meta.get("detector_config") if isinstance(meta, dict) else None
    if not isinstance(d, dict):
        raise SaiError("the checkpoint has no meta.detector_config: it is not a sai train-demo --task detection "
                       "checkpoint; retrain it with sai train-demo --task detection")
    known = set(DetectorConfig.__dataclass_fields__)
    vals = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
    return DetectorConfig(**vals)


def load_demo_detector(path, fuse: bool = False) -> SaiDetector:
    """A shipped demo detector checkpoint (its config is in its meta), loaded strictly."""
    from sai.models.checkpoint import read_checkpoint_file

    ck = read_checkpoint_file(path)
    return load_detector(config_from_meta(ck["meta"]), ck, strict=True, fuse=fuse)


# ----------------------------------------------------------------------------------------------
# v0.6 training targets and losses
# ----------------------------------------------------------------------------------------------


def bbox2delta(proposals: Tensor, gt: Tensor, means: Sequence[float] = (0.0,) * 4,
               stds: Sequence[float] = (1.0,) * 4) -> Tensor:
    """v0.6 ``bbox2delta``: ``(dx, dy, dw, dh)`` with ``+1`` widths, then ``(d - means) / stds``."""
    px, py = (proposals[:, 0] + proposals[:, 2]) * 0.5, (proposals[:, 1] + proposals[:, 3]) * 0.5
    pw, ph = proposals[:, 2] - proposals[:, 0] + 1.0, proposals[:, 3] - proposals[:, 1] + 1.0
    gx, gy = (gt[:, 0] + gt[:, 2]) * 0.5, (gt[:, 1] + gt[:, 3]) * 0.5
    gw, gh = gt[:, 2] - gt[:, 0] + 1.0, gt[:, 3] - gt[:, 1] + 1.0
    d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return (d - d.new_tensor(list(means))) / d.new_tensor(list(stds))


def assign_max_iou(boxes: Tensor, gt: Tensor, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float
                   ) -> tuple[Tensor, Tensor]:
    """v0.6 ``MaxIoUAssigner.assign`` (``gt_max_assign_all=True``, no ignored boxes): per box ``-1`` (ignore),
    ``0`` (negative) or ``i + 1`` (ground truth ``i``), and its max IoU."""
    n = boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long)
    if gt.shape[0] == 0 or n == 0:
        assigned[:] = 0
        return assigned, boxes.new_zeros(n)
    overlaps = iou_plus1(gt, boxes)  # [k, n]
    max_ov, argmax = overlaps.max(dim=0)
    assigned[(max_ov >= 0) & (max_ov < neg_iou_thr)] = 0
    pos = max_ov >= pos_iou_thr
    assigned[pos] = argmax[pos] + 1
    gt_max = overlaps.max(dim=1).values
    for i in range(gt.shape[0]):
        if gt_max[i] >= min_pos_iou:
            assigned[overlaps[i] == gt_max[i]] = i + 1
    return assigned, max_ov


def sample_random(assigned: Tensor, num: int, pos_fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """v0.6 ``RandomSampler``: at most ``int(num * pos_fraction)`` positives, then negatives to ``num``
    (random subsets); returns the positive and negative indices."""
    pos = (assigned > 0).nonzero().reshape(-1)
    neg = (assigned == 0).nonzero().reshape(-1)
    n_pos = min(int(num * pos_fraction), pos.numel())
    pos = pos[torch.randperm(pos.numel(), generator=gen)[:n_pos]]
    n_neg = min(num - n_pos, neg.numel())
    neg = neg[torch.randperm(neg.numel(), generator=gen)[:n_neg]]
    return pos, neg


def smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Elementwise v0.6 ``smooth_l1_loss``: ``0.5 d^2 / beta`` below ``beta``, ``d - 0.5 beta`` above."""
    d = (pred - target).abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


@dataclass
class TargetSettings:
    """v0.6 ``train_cfg`` of the demo detector (``rpn``, ``rpn_proposal``, ``rcnn``)."""

    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_num: int = 256
    rpn_pos_fraction: float = 0.5
    allowed_border: int = 0
    proposal_nms_pre: int = 200
    proposal_max_num: int = 150
    rcnn_iou: float = 0.5
    rcnn_num: int = 128
    rcnn_pos_fraction: float = 0.25


def anchors_of(det: SaiDetector, cls_scores: Sequence[Tensor]) -> list[Tensor]:
    return [det.anchors(lvl, cs.shape[-2], cs.shape[-1]) for lvl, cs in enumerate(cls_scores)]


def rpn_loss(det: SaiDetector, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], gt_boxes: Sequence[Tensor],
             img_shapes: Sequence[tuple[int, int]], ts: TargetSettings, gen: torch.Generator) -> dict:
    """v0.6 ``anchor_target`` + ``RPNHead.loss`` over the batch: BCE and smooth L1 (beta 1/9), each summed
    over the sampled anchors of all images and divided by their number."""
    anchors = torch.cat(anchors_of(det, cls_scores))
    cfg = det.config
    n = cls_scores[0].shape[0]
    logits = torch.cat([cs.permute(0, 2, 3, 1).reshape(n, -1) for cs in cls_scores], 1)
    deltas = torch.cat([bp.permute(0, 2, 3, 1).reshape(n, -1, 4) for bp in bbox_preds], 1)
    cls_l, reg_l, total = logits.new_zeros(()), logits.new_zeros(()), 0
    for i in range(n):
        h, w = img_shapes[i]
        b = ts.allowed_border
        inside = ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < w + b)
                  & (anchors[:, 3] < h + b)).nonzero().reshape(-1)
        assigned, _ = assign_max_iou(anchors[inside], gt_boxes[i], ts.rpn_pos_iou, ts.rpn_neg_iou, ts.rpn_min_pos_iou)
        pos, neg = sample_random(assigned, ts.rpn_num, ts.rpn_pos_fraction, gen)
        sel = torch.cat([pos, neg])
        target = torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())])
        cls_l = cls_l + F.binary_cross_entropy_with_logits(logits[i, inside[sel]], target, reduction="sum")
        if pos.numel():
            t = bbox2delta(anchors[inside[pos]], gt_boxes[i][assigned[pos] - 1], cfg.rpn_means, cfg.rpn_stds)
            reg_l = reg_l + smooth_l1(deltas[i, inside[pos]], t, 1.0 / 9.0).sum()
        total += sel.numel()
    total = max(total, 1)
    return {"rpn_cls": cls_l / total, "rpn_bbox": reg_l / total}


def rcnn_targets(props: Tensor, gt: Tensor, gt_labels: Tensor, ts: TargetSettings, num_classes: int,
                 means: Sequence[float], stds: Sequence[float], gen: torch.Generator
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The sampled RoIs of one image (ground truths added as proposals, v0.6 ``add_gt_as_proposals``), their
    labels (0 background, ``gt_label + 1``), class-specific delta targets ``[R, 4 * num_classes]`` and weights."""
    rois = torch.cat([gt, props], 0) if gt.numel() else props
    assigned, _ = assign_max_iou(rois, gt, ts.rcnn_iou, ts.rcnn_iou, ts.rcnn_iou)
    pos, neg = sample_random(assigned, ts.rcnn_num, ts.rcnn_pos_fraction, gen)
    sel = torch.cat([pos, neg])
    r = sel.numel()
    labels = torch.zeros(r, dtype=torch.long)
    targets = rois.new_zeros(r, 4 * num_classes)
    weights = rois.new_zeros(r, 4 * num_classes)
    if pos.numel():
        g = assigned[pos] - 1
        labels[:pos.numel()] = gt_labels[g] + 1
        d = bbox2delta(rois[pos], gt[g], means, stds)
        for j in range(pos.numel()):
            c = int(labels[j])
            targets[j, 4 * c:4 * c + 4] = d[j]
            weights[j, 4 * c:4 * c + 4] = 1.0
    return rois[sel], labels, targets, weights


def detector_losses(det: SaiDetector, x: Tensor, gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                    img_shapes: Sequence[tuple[int, int]], ts: TargetSettings, gen: torch.Generator) -> dict:
    """The four Faster R-CNN losses of one training batch (the backbone in training mode)."""
    cfg = det.config
    feats = det.extract_feat(x)
    cls_scores, bbox_preds = det.rpn_head(feats)
    losses = rpn_loss(det, cls_scores, bbox_preds, gt_boxes, img_shapes, ts, gen)
    prop_cfg = replace(cfg, nms_pre=ts.proposal_nms_pre, nms_post=ts.proposal_max_num, max_num=ts.proposal_max_num)
    saved, det.config = det.config, prop_cfg
    try:
        with torch.no_grad():
            props = [det.proposals([c.detach() for c in cls_scores], [b.detach() for b in bbox_preds], i,
                                   tuple(img_shapes[i]))[:, :4] for i in range(x.shape[0])]
    finally:
        det.config = saved
    roi_feats, labels, targets, weights = [], [], [], []
    levels = feats[:len(cfg.featmap_strides)]
    for i in range(x.shape[0]):
        rois, lab, t, w = rcnn_targets(props[i], gt_boxes[i], gt_labels[i], ts, cfg.num_classes, cfg.bbox_means,
                                       cfg.bbox_stds, gen)
        roi_feats.append(det.roi_features(levels, i, rois))
        labels.append(lab)
        targets.append(t)
        weights.append(w)
    cls, reg = det.bbox_head(torch.cat(roi_feats))
    labels_t, targets_t, weights_t = torch.cat(labels), torch.cat(targets), torch.cat(weights)
    losses["rcnn_cls"] = F.cross_entropy(cls, labels_t)
    losses["rcnn_bbox"] = (smooth_l1(reg, targets_t, 1.0) * weights_t).sum() / max(1, labels_t.numel())
    losses["rcnn_acc"] = (cls.argmax(1) == labels_t).float().mean().detach()
    return losses


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


def coco_ground_truth(boxes: Sequence[Tensor], labels: Sequence[Tensor], size: int) -> dict:
    """A COCO-format ground truth of the split (bbox ``[x1, y1, w, h]`` with v0.6's ``+1`` widths)."""
    images, anns = [], []
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        images.append({"id": i, "width": size, "height": size})
        for bb, c in zip(b.tolist(), lab.tolist(), strict=True):
            w, h = bb[2] - bb[0] + 1, bb[3] - bb[1] + 1
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "bbox": [bb[0], bb[1], w, h],
                         "area": w * h, "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(DET_CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_map(gt: dict, results: list[dict]) -> dict:
    """pycocotools ``COCOeval`` (bbox): ``{"mAP": AP@[.5:.95], "AP50", "AP75"}`` in percent."""
    import contextlib
    import io

    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise SaiError("the detection mAP needs pycocotools; install it with pip install 'sai-deploy[demo]'") \
            from None
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        if not results:
            return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"mAP": 100 * float(s[0]), "AP50": 100 * float(s[1]), "AP75": 100 * float(s[2])}


@torch.no_grad()
def evaluate_detector(det: SaiDetector, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                      batch: int = 25) -> dict:
    """COCO mAP of ``det`` (fused or not; deterministic masks) on the split, and for a sparse backbone its
    measured mask stats (the official counter) and mean density."""
    det.eval()
    bb = det.backbone
    if bb.is_sparse:
        bb.sampling = "deterministic"
        bb.reset_densities()
    results = []
    for s in range(0, images.shape[0], batch):
        out = det.detect(images[s:s + batch], layout="NHWC")
        for j in range(out["dets"].shape[0]):
            for k in range(int(out["num_dets"][j])):
                x1, y1, x2, y2, sc = out["dets"][j, k].tolist()
                results.append({"image_id": s + j, "category_id": int(out["labels"][j, k]) + 1,
                                "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1], "score": sc})
    res = coco_map(coco_ground_truth(boxes, labels, images.shape[1]), results)
    res["n"] = int(images.shape[0])
    res["num_dets"] = len(results)
    if bb.is_sparse:
        st = bb.mask_stats()
        res["mask_stats"] = {k: dict(v) for k, v in st.items()}
        ds = [d for v in st.values() for d in (v["d1"], v["d2"])]
        res["mean_density"] = sum(ds) / max(1, len(ds))
    return res


def flops_table(cfg_sparse: DetectorConfig, cfg_dense: DetectorConfig, mask_stats: dict) -> dict:
    """``detector_flops`` of the pair at the demo's input (the sparse one at the measured densities)."""
    from sai.models.detector import detector_flops

    hw = (cfg_sparse.img_scale[0], cfg_sparse.img_scale[1])
    sp = detector_flops(cfg_sparse, hw, densities=mask_stats)
    de = detector_flops(cfg_dense, hw, densities=None)
    keys = ("backbone", "neck", "rpn", "roi_head", "total")
    return {"input_hw": list(hw), "num_rois": sp["num_rois"], "sparse": {k: sp[k] for k in keys},
            "dense": {k: de[k] for k in keys}, "ratio": sp["total"] / de["total"],
            "backbone_ratio": sp["backbone"] / de["backbone"]}


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

DET_CLI_SETTINGS = ("seed", "pretrain_steps", "steps", "train_size", "test_size", "batch_size", "target_density",
                    "sparse_loss_weight", "lr", "finetune_lr", "threads", "density_warmup", "deterministic_tail")


@dataclass
class DetDemoConfig:
    """Everything that decides the demo detectors' weights (recorded in metrics.json and the checkpoints)."""

    seed: int = 0
    pretrain_steps: int = 500  # phase 1: the dense detector from the classifier's backbone
    steps: int = 350  # phase 2: dense twin and sparse detector, each
    train_size: int = 4000
    test_size: int = 300
    batch_size: int = 8
    image_size: int = DET_IMAGE_SIZE
    base_width: int = 16
    fpn_channels: int = 32
    fc_channels: int = 128
    target_density: float = 0.3
    sparse_loss_weight: float = 4.0
    density_warmup: float = 0.3
    # the last fraction of the sparse fine-tuning trains with the inference masks (no noise, hard threshold;
    # ``training_masks="inference"``): the masks it learns to live with are those it will run with
    deterministic_tail: float = 0.0
    mask_lr_mult: float = 10.0
    max_T: float = 1.0
    final_T: float = 0.1
    lr: float = 2e-3
    finetune_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    threads: int = 1
    log_every: int = 10
    init: str = "sai_demo_r18/resnet18.pth"  # the backbone's start, relative to models/zoo
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        bad = []

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                where = f"--{name.replace('_', '-')}" if name in DET_CLI_SETTINGS else f"DetDemoConfig.{name}"
                bad.append(f"{name} = {getattr(self, name)!r} ({where}): {rule}")

        for name in ("seed", "pretrain_steps"):
            need(int(getattr(self, name)) >= 0, name, "must be >= 0")
        for name in ("steps", "train_size", "test_size", "batch_size", "threads", "log_every", "base_width",
                     "fpn_channels", "fc_channels"):
            need(int(getattr(self, name)) >= 1, name, "must be >= 1")
        need(self.image_size >= 64 and self.image_size % 32 == 0, "image_size", "must be a multiple of 32, >= 64")
        need(0.0 < self.target_density <= 1.0, "target_density", "must be in (0, 1]")
        for name in ("density_warmup", "deterministic_tail"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "must be a fraction of fine-tuning in [0, 1]")
        for name in ("sparse_loss_weight", "weight_decay", "warmup_frac"):
            need(getattr(self, name) >= 0.0, name, "must be >= 0")
        for name in ("lr", "finetune_lr", "max_T", "final_T", "mask_lr_mult"):
            need(getattr(self, name) > 0.0, name, "must be > 0")
        if bad:
            raise SaiError("train-demo --task detection settings out of range: " + "; ".join(bad))

    def decay_alpha(self) -> float:
        return (self.final_T / self.max_T) ** (1.0 / max(1, self.steps))

    def detector_config(self, sparse: bool) -> DetectorConfig:
        opts = {"seed": self.seed}
        if sparse:
            opts.update(max_T=self.max_T, decay_alpha=self.decay_alpha(), sparse_loss_weight=self.sparse_loss_weight)
        return demo_detector_config(sparse, self.base_width, self.fpn_channels, self.fc_channels, self.image_size,
                                    opts)


def _lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _param_groups(det: SaiDetector, cfg: DetDemoConfig) -> list[dict]:
    mask, decay, no_decay = [], [], []
    for name, p in det.named_parameters():
        if not p.requires_grad:
            continue
        if "_mask." in name or name.endswith("_sigma"):
            mask.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if mask:
        groups.append({"params": mask, "weight_decay": 0.0, "lr_mult": cfg.mask_lr_mult})
    return groups


def _init_backbone(det: SaiDetector, path: Path) -> None:
    from sai.models.checkpoint import init_from_dense

    rep = init_from_dense(det.backbone, path)
    loaded = len(det.backbone.state_dict()) - len(rep.missing)
    if loaded < 10:
        raise SaiError(f"the backbone init {path} loaded only {loaded} tensors into {det.config.arch}; give the "
                       "dense demo classifier (models/zoo/sai_demo_r18/resnet18.pth)")


def train_detector(cfg: DetDemoConfig, sparse: bool, train, log: Callable[[dict], None],
                   progress: Callable[[str], None], *, steps: int, lr: float, phase: str,
                   init_state: Optional[dict] = None, init_backbone: Optional[Path] = None) -> SaiDetector:
    """Train one detector for ``steps`` batches from ``init_state`` (a detector state dict) or, without one,
    from the backbone checkpoint ``init_backbone``."""
    from sai.models.train_demo import interpolate_matmul

    torch.manual_seed(cfg.seed)
    det = SaiDetector(cfg.detector_config(sparse))
    if init_state is not None:
        own = det.state_dict()
        missing = [k for k in own if k not in init_state]
        det.load_state_dict(init_state, strict=False)
        if any("_mask" not in k and "sigma" not in k and "gumbel" not in k for k in missing):
            raise SaiError(f"phase-2 init lacks detector weights: {missing[:5]}")
    elif init_backbone is not None:
        _init_backbone(det, init_backbone)
    det.train()
    bb = det.backbone
    opt = torch.optim.AdamW(_param_groups(det, cfg), lr=lr)
    images, boxes, labels = train
    n = images.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    order_gen = torch.Generator().manual_seed(cfg.seed + 1)
    ts = TargetSettings()
    size = cfg.image_size
    mean = torch.tensor(det.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(det.config.std).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    ctx = bb.training_options(interpolate_fn=interpolate_matmul) if sparse else None
    if ctx is not None:
        ctx.__enter__()
    try:
        perm = torch.randperm(n, generator=order_gen)
        pos = 0
        for step in range(steps):
            if pos + cfg.batch_size > n:
                perm, pos = torch.randperm(n, generator=order_gen), 0
            idx = perm[pos:pos + cfg.batch_size]
            pos += cfg.batch_size
            x = (images[idx].permute(0, 3, 1, 2).float() - mean) / std
            cur = _lr_at(step, steps, lr, cfg.warmup_frac)
            for g in opt.param_groups:
                g["lr"] = cur * g["lr_mult"]
            if sparse:
                bb.reset_densities()
                if step == steps - int(round(cfg.deterministic_tail * steps)):
                    bb.set_training_options(training_masks="inference")  # undone by the context's exit
                    progress(f"  {phase} {det.config.arch}: inference masks (no noise, hard threshold) from step "
                             f"{step + 1}")
            losses = detector_losses(det, x, [boxes[i] for i in idx], [labels[i] for i in idx],
                                     [(size, size)] * len(idx), ts, gen)
            task = losses["rpn_cls"] + losses["rpn_bbox"] + losses["rcnn_cls"] + losses["rcnn_bbox"]
            sl = torch.zeros(())
            if sparse:
                warm = cfg.density_warmup * steps
                target = cfg.target_density if warm <= 0 or step >= warm else \
                    1.0 + (cfg.target_density - 1.0) * step / warm
                sl = bb.sparse_loss(target=target)
            loss = task + sl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % cfg.log_every == 0 or step == steps - 1:
                rec = {"model": det.config.arch, "phase": phase, "step": step, "lr": cur, "loss": float(loss.detach()),
                       **{k: round(float(v.detach()), 5) for k, v in losses.items()},
                       "elapsed_s": round(time.perf_counter() - t0, 2)}
                if sparse:
                    ds = [d for v in bb.densities().values() for d in v]
                    rec.update(sparse_loss=float(sl.detach()), train_density=sum(ds) / len(ds))
                log(rec)
                progress(f"  {phase} {det.config.arch} step {step + 1}/{steps} loss {rec['loss']:.3f} "
                         f"(rpn {rec['rpn_cls']:.3f}+{rec['rpn_bbox']:.3f}, rcnn {rec['rcnn_cls']:.3f}+"
                         f"{rec['rcnn_bbox']:.3f}, acc {rec['rcnn_acc']:.2f})"
                         + (f" density {rec['train_density']:.2f}" if sparse else "")
                         + f" {rec['elapsed_s']:.0f} s")
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    if sparse:
        bb.reset_densities()
    return det.eval()


def save_detector(det: SaiDetector, path: Path, **meta) -> None:
    """The official detector layout (``backbone.*``, ``neck.*``, ``rpn_head.*``, ``bbox_head.*``) in sai's
    checkpoint format, the ``DetectorConfig`` in ``meta.detector_config``."""
    from sai import __version__
    from sai.models.checkpoint import FORMAT
    from sai.outputs import atomic_path

    m = {"format": FORMAT, "arch": det.config.arch, "detector_config": config_to_meta(det.config),
         "sai_version": __version__, "torch_version": str(torch.__version__)}
    m.update(meta)
    with atomic_path(path, flag="--out") as tmp:
        torch.save({"format": FORMAT, "state_dict": det.state_dict(), "meta": m}, tmp)


def train_det_demo(out: Optional[os.PathLike] = None, cfg: Optional[DetDemoConfig] = None,
                   progress: Callable[[str], None] = print) -> dict:
    """Generate the data, train the dense detector, then its dense twin and the sparse detector from it,
    evaluate both (COCO mAP, densities, MACs) and write the checkpoints, metrics.json and train_log.jsonl."""
    from sai.outputs import atomic_path, write_atomic

    cfg = cfg or DetDemoConfig()
    cfg.validate()
    out = Path(out) if out is not None else DEFAULT_DET_OUT
    out.mkdir(parents=True, exist_ok=True)
    init = Path(__file__).resolve().parent / "zoo" / cfg.init
    if not init.is_file():
        raise SaiError(f"the backbone init {init} is missing; train the classifier first (sai train-demo)")
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    try:
        progress(f"train-demo detection: data (seed {cfg.seed}: {cfg.train_size} train, {cfg.test_size} test, "
                 f"{cfg.image_size}x{cfg.image_size})")
        train = make_det_split(cfg.seed, "train", cfg.train_size, cfg.image_size)
        test = make_det_split(cfg.seed, "test", cfg.test_size, cfg.image_size)
        timings = {"data_s": round(time.perf_counter() - t_start, 1)}
        with atomic_path(out / "train_log.jsonl", flag="--out") as log_tmp, open(log_tmp, "w") as fh:
            def log(rec: dict) -> None:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()

            t = time.perf_counter()
            progress(f"phase 1: dense detector from {cfg.init} ({cfg.pretrain_steps} steps)")
            base = train_detector(cfg, False, train, log, progress, steps=cfg.pretrain_steps, lr=cfg.lr,
                                  phase="pretrain", init_backbone=init)
            timings["pretrain_s"] = round(time.perf_counter() - t, 1)
            state = {k: v.clone() for k, v in base.state_dict().items()}
            t = time.perf_counter()
            progress(f"phase 2: dense twin ({cfg.steps} steps)")
            dense = train_detector(cfg, False, train, log, progress, steps=cfg.steps, lr=cfg.finetune_lr,
                                   phase="finetune", init_state=state)
            timings["dense_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            progress(f"phase 2: sparse detector ({cfg.steps} steps, target density {cfg.target_density})")
            sparse = train_detector(cfg, True, train, log, progress, steps=cfg.steps, lr=cfg.finetune_lr,
                                    phase="finetune", init_state=state)
            timings["sparse_s"] = round(time.perf_counter() - t, 1)
        meta = {"classes": list(DET_CLASSES), "task": "sai demo detection shapes (sai.models.detector_train)",
                "dataset": {"generator": "sai.models.detector_train.render_det", "seed": cfg.seed,
                            "image_size": cfg.image_size, "splits": {"train": [0, cfg.train_size],
                                                                     "test": [0, cfg.test_size]}},
                "input": {"layout": "NHWC", "channels": "RGB", "dtype": "uint8", "height": cfg.image_size,
                          "width": cfg.image_size},
                "demo_config": asdict(cfg)}
        save_detector(sparse, out / SPARSE_DET_FILE, **meta)
        save_detector(dense, out / DENSE_DET_FILE, **meta)
        progress("evaluating (COCO mAP on the test split)")
        metrics = evaluate_pair(out, test, cfg)
        metrics["timings_s"] = timings
        metrics["train_wall_s"] = round(time.perf_counter() - t_start, 1)
        metrics["config"] = asdict(cfg)
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=1), flag="--out")
        return metrics
    finally:
        torch.set_num_threads(prev)


def evaluate_pair(out: Path, test, cfg: DetDemoConfig) -> dict:
    """Both shipped checkpoints loaded strictly and fused, evaluated on ``test``."""
    sp = load_demo_detector(out / SPARSE_DET_FILE, fuse=True)
    de = load_demo_detector(out / DENSE_DET_FILE, fuse=True)
    ev_s = evaluate_detector(sp, *test)
    ev_d = evaluate_detector(de, *test)
    flops = flops_table(sp.config, de.config, ev_s["mask_stats"])
    return {"files": {"sparse": SPARSE_DET_FILE, "dense": DENSE_DET_FILE}, "classes": list(DET_CLASSES),
            "map": {"sparse": ev_s, "dense": ev_d, "gap_points": ev_d["mAP"] - ev_s["mAP"]},
            "mean_density": ev_s["mean_density"], "flops": flops, "test_size": cfg.test_size, "seed": cfg.seed}
