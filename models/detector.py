"""The whole SAI-Det detector: mmdetection v0.6's Faster R-CNN + FPN test path on sai's (Sparse)ResNet.

Image in, boxes out, with the official code's conventions (docs/design.md 9):

- preprocessing as the test pipeline: keep-ratio resize to ``img_scale`` (size ``int(w * s + 0.5)``,
  bilinear with half-pixel centres, rounded to uint8 as the official uint8 resize), ``(x - mean) / std``
  in RGB, zero padding to a multiple of 32; ``img_shape`` and ``scale_factor`` per image;
- RPN: anchors of v0.6 (rounded base anchors centred at ``0.5 * (base - 1)``), per level the top
  ``nms_pre`` sigmoid scores, ``delta2bbox`` (widths ``x2 - x1 + 1``, ``wh_ratio_clip`` 16/1000, clipped
  to ``img_shape - 1``), NMS with v0.6's ``+1`` IoU, ``nms_post``; then the top ``max_num`` of all levels;
- RoIAlign ``7x7``, ``sample_num`` 2, v0.6's non-aligned rules (roi end ``(x2 + 1) * scale``, widths
  clamped at 0, samples outside ``[-1, size]`` give 0, others clamped to the map), level
  ``floor(log2(sqrt((w + 1)(h + 1)) / 56 + 1e-6))`` clamped to 0..3;
- shared 2-FC box head, softmax, class-specific ``delta2bbox`` (stds 0.1/0.1/0.2/0.2), boxes divided by
  ``scale_factor``, then per class (1..80) scores ``> score_thr`` and NMS 0.5 (``+1`` IoU, on the rescaled
  boxes as the official code), at most ``max_per_img`` by score.

Outputs (mmdeploy's convention): ``dets [N, K, 5]`` (x1, y1, x2, y2, score; sorted by score, padded
with zeros), ``labels [N, K]`` (0-based class, -1 where padded), ``num_dets [N]``; ``K = max_per_img``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sai.errors import SaiError
from sai.models.detector_presets import DetectorConfig, resolve
from sai.models.network import FPN, SaiResNet

HEAD_PREFIXES = ("rpn_head.", "bbox_head.")


# ----------------------------------------------------------------------------------------------
# box math of mmdetection v0.6
# ----------------------------------------------------------------------------------------------


def base_anchors(base_size: int, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """v0.6 ``AnchorGenerator.gen_base_anchors`` (scale-major order, float32, rounded half to even)."""
    w = h = float(base_size)
    ctr = 0.5 * (w - 1)
    r = torch.tensor(list(ratios), dtype=torch.float32)
    s = torch.tensor(list(scales), dtype=torch.float32)
    h_ratios = torch.sqrt(r)
    w_ratios = 1 / h_ratios
    ws = (w * w_ratios[:, None] * s[None, :]).reshape(-1)
    hs = (h * h_ratios[:, None] * s[None, :]).reshape(-1)
    return torch.stack([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)],
                       dim=-1).round()


def grid_anchors(base: Tensor, feat_h: int, feat_w: int, stride: int) -> Tensor:
    """All anchors of a level, position-major (row by row) then anchor: ``[H * W * A, 4]``."""
    sx = torch.arange(feat_w, dtype=torch.float32) * stride
    sy = torch.arange(feat_h, dtype=torch.float32) * stride
    yy, xx = torch.meshgrid(sy, sx, indexing="ij")
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
    return (base.to(shifts)[None] + shifts).reshape(-1, 4)


def delta2bbox(rois: Tensor, deltas: Tensor, means: Sequence[float], stds: Sequence[float],
               max_shape: Optional[tuple[int, int]], wh_ratio_clip: float = 16 / 1000) -> Tensor:
    """v0.6 ``delta2bbox``: ``rois [R, 4]``, ``deltas [R, 4k]`` -> boxes ``[R, 4k]``, clipped to
    ``max_shape - 1`` ((h, w)) when given."""
    k = deltas.shape[1] // 4
    means_t = deltas.new_tensor(list(means)).repeat(k)
    stds_t = deltas.new_tensor(list(stds)).repeat(k)
    d = deltas * stds_t + means_t
    dx, dy, dw, dh = d[:, 0::4], d[:, 1::4], d[:, 2::4], d[:, 3::4]
    max_ratio = abs(math.log(wh_ratio_clip))
    dw = dw.clamp(min=-max_ratio, max=max_ratio)
    dh = dh.clamp(min=-max_ratio, max=max_ratio)
    px = ((rois[:, 0] + rois[:, 2]) * 0.5)[:, None]
    py = ((rois[:, 1] + rois[:, 3]) * 0.5)[:, None]
    pw = (rois[:, 2] - rois[:, 0] + 1.0)[:, None]
    ph = (rois[:, 3] - rois[:, 1] + 1.0)[:, None]
    gw = pw * dw.exp()
    gh = ph * dh.exp()
    gx = px + pw * dx
    gy = py + ph * dy
    x1 = gx - gw * 0.5 + 0.5
    y1 = gy - gh * 0.5 + 0.5
    x2 = gx + gw * 0.5 - 0.5
    y2 = gy + gh * 0.5 - 0.5
    if max_shape is not None:
        hmax, wmax = float(max_shape[0] - 1), float(max_shape[1] - 1)
        x1, x2 = x1.clamp(min=0, max=wmax), x2.clamp(min=0, max=wmax)
        y1, y2 = y1.clamp(min=0, max=hmax), y2.clamp(min=0, max=hmax)
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(deltas.shape)


def iou_plus1(a: Tensor, b: Tensor) -> Tensor:
    """v0.6's IoU matrix ``[len(a), len(b)]`` with ``+1`` widths and heights."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_v06(boxes: Tensor, scores: Tensor, iou_thr: float) -> Tensor:
    """Greedy NMS of v0.6 (its CUDA kernel: sort by score, drop a box whose ``+1`` IoU with a kept one is
    ``> iou_thr``). Returns the kept indices, highest score first."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    over = torch.triu(iou_plus1(b, b) > iou_thr, diagonal=1).cpu().numpy()
    keep = []
    alive = np.arange(n)
    while alive.size:  # one step per kept box
        i = alive[0]
        keep.append(i)
        alive = alive[1:][~over[i, alive[1:]]]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: int = 56) -> Tensor:
    """v0.6 ``SingleRoIExtractor.map_roi_levels`` for boxes ``[R, 4]`` (x1, y1, x2, y2)."""
    scale = torch.sqrt((rois[:, 2] - rois[:, 0] + 1) * (rois[:, 3] - rois[:, 1] + 1))
    lvl = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return lvl.clamp(min=0, max=num_levels - 1).long()


def roi_align_v06(feat: Tensor, rois: Tensor, spatial_scale: float, out_size: int = 7, sample_num: int = 2,
                  chunk: int = 256) -> Tensor:
    """v0.6's (non-aligned) RoIAlign of one image's map ``feat [C, H, W]`` over boxes ``rois [R, 4]`` ->
    ``[R, C, out, out]``: roi end ``(x2 + 1) * scale``, sizes clamped at 0, ``sample_num^2`` samples per bin
    averaged; a sample outside ``[-1, H] x [-1, W]`` is 0, others are clamped into the map."""
    if sample_num <= 0:
        raise SaiError("roi_sample_num must be > 0 (the adaptive count of sample_num=0 is not supported)")
    c, h, w = feat.shape
    r = rois.shape[0]
    if r == 0:
        return feat.new_zeros(0, c, out_size, out_size)
    flat = feat.reshape(c, h * w).t()  # [HW, C]
    outs = []
    grid = (torch.arange(out_size, dtype=feat.dtype, device=feat.device)[:, None],
            (torch.arange(sample_num, dtype=feat.dtype, device=feat.device)[None, :] + 0.5))
    for s in range(0, r, chunk):
        rr = rois[s:s + chunk].to(feat.dtype)
        k = rr.shape[0]
        x0, y0 = rr[:, 0] * spatial_scale, rr[:, 1] * spatial_scale
        x1, y1 = (rr[:, 2] + 1) * spatial_scale, (rr[:, 3] + 1) * spatial_scale
        bw = (x1 - x0).clamp(min=0) / out_size
        bh = (y1 - y0).clamp(min=0) / out_size
        # sample coordinates: start + p * bin + (i + 0.5) * bin / n  -> [k, out, n]
        xs = x0[:, None, None] + grid[0] * bw[:, None, None] + grid[1] * bw[:, None, None] / sample_num
        ys = y0[:, None, None] + grid[0] * bh[:, None, None] + grid[1] * bh[:, None, None] / sample_num
        xs, ys = xs.reshape(k, 1, -1), ys.reshape(k, -1, 1)  # [k, 1, S] and [k, S, 1]
        valid = ((ys >= -1) & (ys <= h)) & ((xs >= -1) & (xs <= w))  # [k, S, S]
        yc, xc = ys.clamp(min=0), xs.clamp(min=0)
        ylo, xlo = yc.floor(), xc.floor()
        yedge, xedge = ylo >= h - 1, xlo >= w - 1
        ylo = torch.where(yedge, torch.full_like(ylo, h - 1), ylo)
        xlo = torch.where(xedge, torch.full_like(xlo, w - 1), xlo)
        yc = torch.where(yedge, ylo, yc)
        xc = torch.where(xedge, xlo, xc)
        yhi = torch.where(yedge, ylo, ylo + 1)
        xhi = torch.where(xedge, xlo, xlo + 1)
        ly, lx = yc - ylo, xc - xlo
        hy, hx = 1 - ly, 1 - lx
        ylo, yhi, xlo, xhi = (t.long() for t in (ylo, yhi, xlo, xhi))
        # the 4 taps of each of the n*n samples of a bin, weights / n^2: one weighted sum per bin
        idx = torch.stack([yi * w + xi for yi in (ylo, yhi) for xi in (xlo, xhi)], dim=-1)  # [k, S, S, 4]
        wgt = torch.stack([wy * wx * valid for wy in (hy, ly) for wx in (hx, lx)], dim=-1) / float(sample_num ** 2)
        idx = idx.reshape(k, out_size, sample_num, out_size, sample_num, 4).permute(0, 1, 3, 2, 4, 5)
        wgt = wgt.reshape(k, out_size, sample_num, out_size, sample_num, 4).permute(0, 1, 3, 2, 4, 5)
        bins = F.embedding_bag(idx.reshape(k * out_size * out_size, -1), flat, mode="sum",
                               per_sample_weights=wgt.reshape(k * out_size * out_size, -1))  # [k*out*out, C]
        outs.append(bins.reshape(k, out_size, out_size, c).permute(0, 3, 1, 2))
    return torch.cat(outs, 0).contiguous()


# ----------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------


class RPNHead(nn.Module):
    """``rpn_conv`` 3x3 + ReLU, ``rpn_cls`` (A sigmoid scores) and ``rpn_reg`` (4A deltas), shared by levels."""

    def __init__(self, in_channels: int = 256, feat_channels: int = 256, num_anchors: int = 3):
        super().__init__()
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * 4, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cls, reg = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            cls.append(self.rpn_cls(x))
            reg.append(self.rpn_reg(x))
        return cls, reg


class SharedFCBBoxHead(nn.Module):
    """``shared_fcs`` (ReLU after each), ``fc_cls`` (num_classes, background 0) and ``fc_reg``."""

    def __init__(self, in_channels: int = 256, roi_size: int = 7, num_fcs: int = 2, fc_out: int = 1024,
                 num_classes: int = 81, class_agnostic: bool = False):
        super().__init__()
        dims = [in_channels * roi_size * roi_size] + [fc_out] * num_fcs
        self.shared_fcs = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(num_fcs))
        self.fc_cls = nn.Linear(dims[-1], num_classes)
        self.fc_reg = nn.Linear(dims[-1], 4 if class_agnostic else 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, 0, 0.01)
        nn.init.normal_(self.fc_reg.weight, 0, 0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)  # (reshape(0, -1) is ambiguous for zero RoIs)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


# ----------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------


def rescale_size(h: int, w: int, img_scale: tuple) -> tuple[int, int, float]:
    """mmcv ``imrescale`` with a (long, short) scale: ``(new_h, new_w, scale_factor)``, sizes rounded as
    v0.6 (``int(w * s + 0.5)``)."""
    long_edge, short_edge = max(img_scale), min(img_scale)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * float(s) + 0.5), int(w * float(s) + 0.5), float(s)


def _as_tensor(img) -> Tensor:
    if isinstance(img, Tensor):
        return img.detach().cpu()
    if isinstance(img, np.ndarray):
        if img.dtype == object:
            raise SaiError("images must be numeric arrays (uint8 RGB), got an object array")
        return torch.from_numpy(np.ascontiguousarray(img))
    raise SaiError(f"images must be numpy arrays or torch tensors (uint8 RGB), got {type(img).__name__}")


def _image_list(images, layout: Optional[str]) -> list[Tensor]:
    """``images`` (a batch [N, H, W, 3] / [N, 3, H, W], one image [H, W, 3] / [3, H, W], or a list of
    images) -> a list of float32 ``[3, H, W]`` RGB pixel tensors (0..255; float pixels saturated to it)."""
    if layout is not None and layout not in ("NHWC", "NCHW"):
        raise SaiError(f"layout must be 'NHWC' or 'NCHW' (or None to infer it), got {layout!r}")
    if isinstance(images, (list, tuple)):
        if not images:
            raise SaiError("no images given; pass an [N, H, W, 3] uint8 batch or a list of [H, W, 3] images")
        items = [_as_tensor(im) for im in images]
        for t in items:
            if t.dim() != 3:
                raise SaiError(f"each image of a list must have 3 dims ([H, W, 3] or [3, H, W]), got shape "
                               f"{list(t.shape)}")
    else:
        t = _as_tensor(images)
        if t.dim() == 3:
            items = [t]
        elif t.dim() == 4:
            if t.shape[0] == 0:
                raise SaiError("the batch holds no images (N = 0); pass at least one image")
            items = list(t.unbind(0))
        else:
            raise SaiError(f"images must have rank 4 ([N, H, W, 3] or [N, 3, H, W]) or 3 (one image), got rank "
                           f"{t.dim()} (shape {list(t.shape)})")
    out = []
    for t in items:
        if t.dtype == torch.bool or not (t.dtype == torch.uint8 or t.is_floating_point()):
            raise SaiError(f"images must be uint8 RGB (0..255) or float pixels of that range, got dtype "
                           f"{str(t.dtype).replace('torch.', '')}; convert with .astype(np.uint8)")
        lay = layout
        if lay is None:
            last3, first3 = t.shape[-1] == 3, t.shape[0] == 3
            if last3 and first3:
                raise SaiError(f"cannot tell the layout of an image of shape {list(t.shape)} (3 both first and "
                               "last); pass layout='NHWC' or layout='NCHW'")
            if not (last3 or first3):
                raise SaiError(f"images must have 3 channels (RGB), as [H, W, 3] or [3, H, W]; got shape "
                               f"{list(t.shape)}; convert grey or RGBA images to RGB first")
            lay = "NHWC" if last3 else "NCHW"
        chw = t.permute(2, 0, 1) if lay == "NHWC" else t
        if chw.shape[0] != 3:
            raise SaiError(f"images must have 3 channels (RGB) in layout {lay}, got shape {list(t.shape)}")
        if chw.shape[1] == 0 or chw.shape[2] == 0:
            raise SaiError(f"an image has zero size ({chw.shape[1]}x{chw.shape[2]} pixels); pass non-empty images")
        if t.is_floating_point():
            if not bool(torch.isfinite(chw).all()):
                raise SaiError("an image holds NaN or inf pixels; pass finite RGB values in 0..255")
            chw = chw.clamp(0, 255)  # saturated as a conversion to uint8 would: any finite image gives finite dets
        chw = chw.to(torch.float32)
        out.append(chw)
    return out


def resize_bilinear(img: Tensor, new_h: int, new_w: int) -> Tensor:
    """Bilinear resize of ``[3, H, W]`` pixels with half-pixel centres (OpenCV's INTER_LINEAR rule),
    rounded and saturated to 0..255 as the official uint8 resize."""
    if (new_h, new_w) == tuple(img.shape[1:]):
        return img
    out = F.interpolate(img[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    return torch.floor(out + 0.5).clamp(0, 255)


def preprocess(images, cfg: DetectorConfig, layout: Optional[str] = None) -> list[dict]:
    """The official test pipeline per image: ``{"img": [3, Hp, Wp] normalised and padded, "img_shape": (h, w),
    "scale_factor": s, "ori_shape": (H, W)}``."""
    mean = torch.tensor(cfg.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32)[:, None, None]
    metas = []
    for img in _image_list(images, layout):
        h, w = img.shape[1:]
        nh, nw, s = rescale_size(h, w, cfg.img_scale)
        if nh < 1 or nw < 1:
            raise SaiError(f"an image of {h}x{w} pixels rescales to {nh}x{nw} at img_scale {cfg.img_scale}; "
                           "pass images of a less extreme aspect ratio")
        x = resize_bilinear(img, nh, nw)
        if not cfg.to_rgb:  # a BGR-trained model: the official pipeline would not swap the channels
            x = x.flip(0)
        x = (x - mean) / std
        d = cfg.size_divisor
        ph, pw = -(-nh // d) * d, -(-nw // d) * d
        x = F.pad(x, (0, pw - nw, 0, ph - nh))
        metas.append({"img": x, "img_shape": (nh, nw), "scale_factor": s, "ori_shape": (h, w)})
    return metas


# ----------------------------------------------------------------------------------------------
# the detector
# ----------------------------------------------------------------------------------------------


class SaiDetector(nn.Module):
    """Faster R-CNN + FPN of SAI-Det; its state dict is the official layout (``backbone.*``, ``neck.*``,
    ``rpn_head.*``, ``bbox_head.*``)."""

    def __init__(self, config: Union[str, os.PathLike, DetectorConfig], **backbone_overrides):
        super().__init__()
        cfg = resolve(config)
        self.config = cfg
        opts = dict(cfg.backbone_options)
        opts.update(backbone_overrides)
        self.backbone = SaiResNet(cfg.arch, head="none", dcn_stages=cfg.dcn_stages, **opts)
        self.neck = FPN(list(cfg.fpn_in_channels), cfg.fpn_out_channels, cfg.num_outs)
        num_anchors = len(cfg.anchor_scales) * len(cfg.anchor_ratios)
        self.rpn_head = RPNHead(cfg.fpn_out_channels, cfg.feat_channels, num_anchors)
        self.bbox_head = SharedFCBBoxHead(cfg.fpn_out_channels, cfg.roi_out_size, cfg.num_fcs, cfg.fc_out_channels,
                                          cfg.num_classes, cfg.reg_class_agnostic)
        self._base = [base_anchors(s, cfg.anchor_scales, cfg.anchor_ratios) for s in cfg.anchor_strides]
        self.eval()

    @property
    def fused(self) -> bool:
        return bool(getattr(self.backbone, "fused", False))

    def fuse_for_inference(self) -> SaiDetector:
        """Fuse the backbone in place (``sai.models.fuse_for_inference``: BN folded, the fused sparse
        block kernels on the CPU); the heads are unchanged. Load checkpoints before fusing."""
        from sai.models.fuse import fuse_for_inference

        if not self.fused:
            self.backbone = fuse_for_inference(self.backbone)
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    # -- stages --------------------------------------------------------------------------------
    def extract_feat(self, x: Tensor, *noise: Tensor) -> tuple[Tensor, ...]:
        """The FPN levels P2..P6 of a normalised, padded batch ``[N, 3, H, W]``."""
        return self.neck(self.backbone(x, *noise))

    def anchors(self, level: int, feat_h: int, feat_w: int) -> Tensor:
        return grid_anchors(self._base[level], feat_h, feat_w, self.config.anchor_strides[level])

    def proposals(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], img_id: int,
                  img_shape: tuple[int, int]) -> Tensor:
        """v0.6 ``RPNHead.get_bboxes_single`` for image ``img_id``: ``[P, 5]`` (x1, y1, x2, y2, score)."""
        cfg = self.config
        per_level = []
        for lvl, (cs, bp) in enumerate(zip(cls_scores, bbox_preds, strict=True)):
            h, w = cs.shape[-2:]
            anchors = self.anchors(lvl, h, w).to(cs)
            scores = cs[img_id].permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = bp[img_id].permute(1, 2, 0).reshape(-1, 4)
            if 0 < cfg.nms_pre < scores.shape[0]:
                scores, idx = scores.topk(cfg.nms_pre)
                deltas, anchors = deltas[idx], anchors[idx]
            boxes = delta2bbox(anchors, deltas, cfg.rpn_means, cfg.rpn_stds, img_shape)
            if cfg.min_bbox_size > 0:
                ok = ((boxes[:, 2] - boxes[:, 0] + 1) >= cfg.min_bbox_size) & (
                    (boxes[:, 3] - boxes[:, 1] + 1) >= cfg.min_bbox_size)
                boxes, scores = boxes[ok], scores[ok]
            keep = nms_v06(boxes, scores, cfg.rpn_nms_thr)[:cfg.nms_post]
            per_level.append(torch.cat([boxes[keep], scores[keep, None]], dim=1))
        props = torch.cat(per_level, 0)
        if cfg.nms_across_levels:
            keep = nms_v06(props[:, :4], props[:, 4], cfg.rpn_nms_thr)[:cfg.max_num]
            return props[keep]
        num = min(cfg.max_num, props.shape[0])
        return props[props[:, 4].topk(num).indices]

    def roi_features(self, feats: Sequence[Tensor], img_id: int, boxes: Tensor) -> Tensor:
        """RoIAlign features ``[R, C, 7, 7]`` of one image's boxes ``[R, 4]`` from the level each maps to."""
        cfg = self.config
        n_lvl = len(cfg.featmap_strides)
        c = feats[0].shape[1]
        out = feats[0].new_zeros(boxes.shape[0], c, cfg.roi_out_size, cfg.roi_out_size)
        if boxes.shape[0] == 0:
            return out
        lvls = map_roi_levels(boxes, n_lvl, cfg.finest_scale)
        for i in range(n_lvl):
            sel = (lvls == i).nonzero().reshape(-1)
            if sel.numel():
                out[sel] = roi_align_v06(feats[i][img_id], boxes[sel], 1.0 / cfg.featmap_strides[i],
                                         cfg.roi_out_size, cfg.roi_sample_num)
        return out

    def detections(self, boxes: Tensor, cls_score: Tensor, bbox_pred: Tensor, img_shape: tuple[int, int],
                   scale_factor: float) -> tuple[Tensor, Tensor]:
        """v0.6 ``get_det_bboxes`` + ``multiclass_nms``: ``(dets [k, 5], labels [k])``, k <= max_per_img,
        sorted by score (labels 0-based: class i of the head is label i - 1)."""
        cfg = self.config
        scores = F.softmax(cls_score, dim=1)
        bboxes = delta2bbox(boxes, bbox_pred, cfg.bbox_means, cfg.bbox_stds, img_shape)
        bboxes = bboxes / scale_factor
        dets, labels = [], []
        for i in range(1, scores.shape[1]):
            sel = (scores[:, i] > cfg.score_thr).nonzero().reshape(-1)
            if sel.numel() == 0:
                continue
            b = bboxes[sel] if bboxes.shape[1] == 4 else bboxes[sel, i * 4:(i + 1) * 4]
            s = scores[sel, i]
            keep = nms_v06(b, s, cfg.nms_thr)
            dets.append(torch.cat([b[keep], s[keep, None]], dim=1))
            labels.append(torch.full((keep.numel(),), i - 1, dtype=torch.long, device=b.device))
        if not dets:
            return bboxes.new_zeros(0, 5), torch.zeros(0, dtype=torch.long, device=bboxes.device)
        d, lab = torch.cat(dets), torch.cat(labels)
        order = torch.sort(d[:, 4], descending=True, stable=True).indices[:cfg.max_per_img]
        return d[order], lab[order]

    # -- whole path ----------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: Tensor, img_shapes: Sequence[tuple[int, int]], scale_factors: Sequence[float],
                *noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A normalised, padded batch ``[N, 3, H, W]`` with each image's ``img_shape`` and ``scale_factor``
        -> ``dets [N, K, 5]``, ``labels [N, K]``, ``num_dets [N]``."""
        feats = self.extract_feat(x, *noise)
        cls_scores, bbox_preds = self.rpn_head(feats)
        k = self.config.max_per_img
        n = x.shape[0]
        dets = x.new_zeros(n, k, 5)
        labels = torch.full((n, k), -1, dtype=torch.long, device=x.device)
        num = torch.zeros(n, dtype=torch.long, device=x.device)
        roi_feats_levels = feats[:len(self.config.featmap_strides)]
        for i in range(n):
            props = self.proposals(cls_scores, bbox_preds, i, tuple(img_shapes[i]))
            rf = self.roi_features(roi_feats_levels, i, props[:, :4])
            cls, reg = self.bbox_head(rf)
            d, lab = self.detections(props[:, :4], cls, reg, tuple(img_shapes[i]), float(scale_factors[i]))
            m = d.shape[0]
            dets[i, :m], labels[i, :m], num[i] = d, lab, m
        return dets, labels, num

    @torch.no_grad()
    def detect(self, images, layout: Optional[str] = None) -> dict[str, Tensor]:
        """Raw uint8 RGB images (a batch NHWC/NCHW, one image, or a list of images of any sizes) ->
        ``{"dets", "labels", "num_dets"}`` in the original images' pixels. Images are preprocessed one by
        one and run in groups of equal padded size (each image as the official test, ``imgs_per_gpu=1``)."""
        if self.training:
            self.eval()
        metas = preprocess(images, self.config, layout)
        dev = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        k = self.config.max_per_img
        n = len(metas)
        dets = torch.zeros(n, k, 5, dtype=dtype)
        labels = torch.full((n, k), -1, dtype=torch.long)
        num = torch.zeros(n, dtype=torch.long)
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(metas):
            groups.setdefault(tuple(m["img"].shape), []).append(i)
        for idx in groups.values():
            x = torch.stack([metas[i]["img"] for i in idx]).to(device=dev, dtype=dtype)
            d, lab, nd = self.forward(x, [metas[i]["img_shape"] for i in idx], [metas[i]["scale_factor"] for i in idx])
            for j, i in enumerate(idx):
                dets[i], labels[i], num[i] = d[j].cpu(), lab[j].cpu(), nd[j].cpu()
        return {"dets": dets, "labels": labels, "num_dets": num}


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------


def _mapped_state(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    from sai.models.checkpoint import _strip_module

    return _strip_module(sd)


def _check_heads(checkpoint, src: Optional[str] = None) -> None:
    """SaiError unless the checkpoint holds the detector heads and the backbone in the official layout."""
    from sai.models.checkpoint import LoadedCheckpoint, describe_source, read_checkpoint

    if src is None:
        src = describe_source(checkpoint) if isinstance(checkpoint, (str, os.PathLike, LoadedCheckpoint)) else \
            "the given state dict"
    sd = _mapped_state(read_checkpoint(checkpoint)[0])
    if not any(k.startswith(HEAD_PREFIXES) for k in sd):
        raise SaiError(f"{src} has no detector heads (no rpn_head.* / bbox_head.* keys): it holds a backbone"
                       f"{' and neck' if any(k.startswith('neck.') for k in sd) else ''} only, which gives "
                       "features, not boxes; give the full official SAI-Det detector checkpoint, or use "
                       "sai.models.model_from_checkpoint for FPN features")
    if not any(k.startswith("backbone.") for k in sd):
        raise SaiError(f"{src} is not in the official detector layout (no backbone.* keys); give the mmdetection "
                       "checkpoint of an official SAI-Det config")


def load_detector_state(det: SaiDetector, checkpoint, strict: bool = True):
    """Load the full official layout into ``det``; a strict load names every missing, unexpected and
    mis-shaped key. Returns a ``LoadReport``."""
    from sai.models.checkpoint import (
        TOLERATED_MISSING,
        LoadedCheckpoint,
        LoadReport,
        check_finite,
        describe_source,
        read_checkpoint,
    )

    if det.fused:
        raise SaiError("load checkpoints into the unfused detector, then call fuse_for_inference()")
    sd, meta = read_checkpoint(checkpoint)
    src = describe_source(checkpoint) if isinstance(checkpoint, (str, os.PathLike, LoadedCheckpoint)) else \
        "the given state dict"
    sd = _mapped_state(sd)
    _check_heads({"state_dict": sd}, src)
    check_finite(sd, src)
    own = det.state_dict()
    report = LoadReport(layout="official-detector", meta=meta)
    usable = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append(f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}")
        else:
            usable[k] = v
    report.missing = [k for k in own if k not in sd and not k.endswith(TOLERATED_MISSING)]
    if strict and (report.missing or report.unexpected or report.mismatched):
        parts = []
        for name, why in (("missing", "the checkpoint lacks them"), ("unexpected", "the detector has no such keys"),
                          ("mismatched", "shapes differ")):
            vals = getattr(report, name)
            if vals:
                parts.append(f"{len(vals)} {name} key(s) ({why}): {', '.join(vals)}")
        raise SaiError(f"{src} does not match the detector {det.config.name} ({det.config.arch}, DCN stages "
                       f"{tuple(int(s) for s in det.config.dcn_stages)}): {'; '.join(parts)}. Pick the preset "
                       "or config the checkpoint was trained with")
    det.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


def load_detector(config: Union[str, os.PathLike, DetectorConfig], checkpoint=None, strict: bool = True,
                  fuse: bool = False, **backbone_overrides) -> SaiDetector:
    """Build the detector of a preset name, an official config file or a ``DetectorConfig`` and load an
    official checkpoint (a path, a read checkpoint or a state dict) strictly. Without a checkpoint the
    detector keeps its random initialisation. ``fuse=True``: ``fuse_for_inference()`` after the load."""
    cfg = resolve(config)  # a bad preset name or config file fails before the checkpoint is read
    if checkpoint is not None:
        from sai.models.checkpoint import read_checkpoint_file

        if isinstance(checkpoint, (str, os.PathLike)):  # read once; heads are checked before building
            checkpoint = read_checkpoint_file(checkpoint)
        _check_heads(checkpoint)
    det = SaiDetector(cfg, **backbone_overrides)
    if checkpoint is not None:
        load_detector_state(det, checkpoint, strict=strict)
    return det.fuse_for_inference() if fuse else det.eval()


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------


def detector_flops(config: Union[str, os.PathLike, DetectorConfig], input_hw: Optional[tuple[int, int]] = None,
                   densities=None, num_rois: Optional[int] = None) -> dict:
    """Multiply-accumulates of the whole detector for a padded input ``input_hw`` (default: a landscape
    image at the config's scale, padded to 32), itemised: ``backbone`` (``kernel_flops``, at
    ``densities`` for a sparse backbone), ``neck`` (FPN), ``rpn`` (3x3 conv + both 1x1 on P2..P6),
    ``roi_head`` (RoIAlign's 4 taps per sample and channel, the FCs) for ``num_rois`` RoIs (default
    ``max_num``, the most the RPN gives), ``total`` and ``dense_parts`` (neck + RPN + RoI head: what no
    mask makes cheaper, so the detector's saving is bounded by their share)."""
    from sai.models.flops import kernel_flops
    from sai.models.ops import conv_output_size

    cfg = resolve(config)
    if input_hw is None:
        d = cfg.size_divisor
        input_hw = (-(-min(cfg.img_scale) // d) * d, -(-max(cfg.img_scale) // d) * d)
    h, w = (int(v) for v in input_hw)
    if h <= 0 or w <= 0:
        raise SaiError(f"input_hw must be two positive ints, got {input_hw!r}")
    k = kernel_flops(cfg.arch, (h, w), densities, cfg.dcn_stages, head="fpn",
                     base_width=int(cfg.backbone_options.get("base_width", 64)),
                     fpn_out_channels=cfg.fpn_out_channels,
                     gaussian_kernel=cfg.backbone_options.get("gaussian_kernel", 7))
    # level sizes: the stem (7x7 s2, 3x3 s2 pool), then strides 1, 2, 2, 2; P6 = max_pool(P5, 1, stride 2)
    fh, fw = conv_output_size(h, 7, 2, 3, 3, 1), conv_output_size(w, 7, 2, 3, 3, 1)
    fh, fw = conv_output_size(fh, 3, 2, 1, 1, 1), conv_output_size(fw, 3, 2, 1, 1, 1)
    sizes = []
    for s in (1, 2, 2, 2):
        fh, fw = conv_output_size(fh, 3, s, 1, 1, 1), conv_output_size(fw, 3, s, 1, 1, 1)
        sizes.append((fh, fw))
    sizes.append(((sizes[-1][0] - 1) // 2 + 1, (sizes[-1][1] - 1) // 2 + 1))
    c, f = cfg.fpn_out_channels, cfg.feat_channels
    a = len(cfg.anchor_scales) * len(cfg.anchor_ratios)
    rpn = float(sum(hh * ww * (9 * c * f + f * a * 5) for hh, ww in sizes))
    r = cfg.max_num if num_rois is None else int(num_rois)
    s2 = cfg.roi_out_size ** 2
    dims = [c * s2] + [cfg.fc_out_channels] * cfg.num_fcs
    fcs = sum(dims[i] * dims[i + 1] for i in range(cfg.num_fcs))
    reg = 4 if cfg.reg_class_agnostic else 4 * cfg.num_classes
    roi = float(r * (4 * c * s2 * cfg.roi_sample_num ** 2 + fcs + dims[-1] * (cfg.num_classes + reg)))
    out = {"backbone": k["backbone"], "neck": k["head"], "rpn": rpn, "roi_head": roi, "num_rois": r,
           "input_hw": (h, w)}
    out["dense_parts"] = out["neck"] + rpn + roi
    out["total"] = out["backbone"] + out["dense_parts"]
    return out
