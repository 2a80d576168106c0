"""``export_detector``: the whole SAI-Det detector (``sai.models.SaiDetector``) as one ONNX graph.

Inputs (mmdeploy's split: the resize is per image and stays outside the graph, in
``sai.models.detector.preprocess``): ``input [N, 3, H, W]`` float32, the normalised batch zero-padded to a
common size (a multiple of 32), ``img_shape [N, 2]`` int64 (each image's resized ``(h, w)`` before padding),
``scale_factor [N]`` float32, and in stochastic sampling the backbone's noise inputs. Outputs: ``dets
[N, K, 5]`` (x1, y1, x2, y2, score; by score, zero padded), ``labels [N, K]`` int64 (0-based, -1 padded),
``num_dets [N]`` int64, ``K = max_per_img``; batch and size dynamic.

The backbone, FPN and RPN convolutions are exported by ``sai.exporter.export`` (the same dynamo export,
translations, fusing and ``finalize`` passes as a backbone model, so its ``sai`` nodes carry their function
bodies); the rest is appended as standard ops (docs/design.md 9), with v0.6's ``+1`` conventions exact:

- anchors from the levels' shapes (``Range``), per level ``TopK`` ``nms_pre``, ``delta2bbox`` clipped to each
  image's ``img_shape - 1``, ``NonMaxSuppression`` (IoU 0.7, at most ``nms_post``) on the boxes shifted to
  ``(x1, y1, x2 + 1, y2 + 1)`` (standard IoU of shifted boxes = v0.6's ``+1`` IoU), the top ``max_num`` of the
  kept boxes of all levels (``TopK`` over the levels' kept scores; a padded slot of an image with fewer
  proposals is marked invalid and never detected);
- the level of each RoI: ``floor(log2(t))``, ``t = sqrt((w + 1)(h + 1)) / 56 + 1e-6``, clamped to 0..3, as
  ``(t >= 2) + (t >= 4) + (t >= 8)`` (exact comparisons instead of a ``Log`` whose rounding at powers of 2 is
  not ``log2``'s); each level's RoIs through ``sai::RoiAlignV0`` (``functions/roi_align_v0.py``: ``RoiAlign``
  exact for RoIs of a cell or more, the gather form for smaller ones);
- the box head's FCs as ``Gemm``, ``Softmax``, class-specific ``delta2bbox``, boxes divided by
  ``scale_factor``; ``NonMaxSuppression`` (IoU 0.5, ``score_threshold`` = the config's, its ``>`` as v0.6's)
  with image x class as its batch (each class's own boxes, shifted by +1), and the top ``max_per_img`` kept
  scores of each image by ``TopK``.

``target="tensorrt"`` writes what TensorRT 10/11's ONNX parser maps (docs/design.md 9): the backbone's ``sai``
nodes without bodies (the sai plugins), ``NonMaxSuppression`` -> ``INMSLayer``, ``TopK`` -> ``ITopKLayer``
and ``sai::RoiAlignV0`` inlined into its body: ``RoiAlign`` (-> ``ROIAlign_TRT``, whose ``aligned=0`` math on
the +1-shifted boxes is v0.6's for RoIs of a cell or more) plus the gather form, in standard ops, for the
smaller RoIs. TensorRT's limits are checked against the config (``check_tensorrt_limits``): every ``TopK``'s
K <= 3840 (``nms_pre``, ``max_num``, ``max_per_img``; v0.6's 1000 / 1000 / 100 fit, so the official
configs export unchanged) and at most 5000 boxes per ``INMSLayer`` batch item (the RPN's NMS sees
``min(nms_pre, H*W*A)``, the box head's ``max_num`` per image and class); ``nms_pre = 0`` (every anchor) is
refused. The box head's NMS gets scores at or under ``score_thr`` set to -1 and a threshold of -0.5, so
``INMSLayer``'s score comparison (``>`` or ``>=``) cannot matter.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sai.constants import DEFAULT_OPSET
from sai.errors import SaiError, first_line
from sai.exporter import metadata
from sai.exporter.export import (
    _check,
    _check_opset,
    _noise,
    _torch_export,
    finalize,
    save_atomic,
)
from sai.exporter.functions import DOMAIN, DOMAIN_VERSION, roi_align_v0

OUTPUT_NAMES = ("dets", "labels", "num_dets")
INPUT_NAMES = ("input", "img_shape", "scale_factor")
ROI_ALIGN = roi_align_v0.NAME
TARGETS = ("portable", "tensorrt")
TRT_MAX_TOPK = 3840  # ITopKLayer: K <= 3840 (TensorRT 10 / 11)
TRT_MAX_NMS_BOXES = 5000  # INMSLayer: at most 5000 candidate boxes per batch item (its top-K box limit)


def check_tensorrt_limits(cfg) -> None:
    """SaiError naming the field and the fix when ``cfg`` needs a ``TopK`` of K > 3840 or an NMS over more than
    5000 boxes per image (what TensorRT's ``ITopKLayer`` / ``INMSLayer`` cannot do exactly)."""
    fix = "lower it in the config, or export target='portable' (onnxruntime)"
    if cfg.nms_pre <= 0:
        raise SaiError(f"detector {cfg.name}: nms_pre={cfg.nms_pre} (every anchor into NMS) is not exported for "
                       f"TensorRT, whose INMSLayer considers at most {TRT_MAX_NMS_BOXES} boxes per image; set "
                       f"nms_pre to 1..{TRT_MAX_TOPK}, or export target='portable' (onnxruntime)")
    for what in ("nms_pre", "max_num", "max_per_img"):
        v = int(getattr(cfg, what))
        if v > TRT_MAX_TOPK:
            raise SaiError(f"detector {cfg.name}: {what}={v} needs a TopK of K > {TRT_MAX_TOPK}, TensorRT's limit; "
                           f"{fix}")
    # INMSLayer's batch items then hold at most nms_pre boxes (RPN, a level of an image) and max_num (box head,
    # an image's proposals of one class): both <= 3840 < 5000


def inline_roi_align(proto: onnx.ModelProto) -> None:
    """Replace every ``sai::RoiAlignV0`` node of ``proto`` by its function body (standard ops only) and drop
    the function (the tensorrt target: no TensorRT plugin takes this op)."""
    import onnx.inliner

    if not any(f.domain == DOMAIN and f.name == ROI_ALIGN for f in proto.functions):
        proto.functions.append(roi_align_v0.function(_opset_of(proto)))
    inlined = onnx.inliner.inline_selected_functions(proto, [(DOMAIN, ROI_ALIGN)], exclude=False)
    proto.CopyFrom(inlined)
    keep = [f for f in proto.functions if not (f.domain == DOMAIN and f.name == ROI_ALIGN)]
    del proto.functions[:]
    proto.functions.extend(keep)


def _opset_of(proto: onnx.ModelProto) -> int:
    return next(imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx"))


@dataclass
class DetectorExportResult:
    """What ``export_detector`` wrote."""

    path: Path
    name: str
    sampling: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    op_counts: dict[str, int]
    export_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        ops = ", ".join(f"{k} x{v}" for k, v in self.op_counts.items())
        return f"wrote {self.path} (detector {self.name}, {self.sampling}, opset {self.opset}; {ops}) in " \
               f"{self.export_seconds:.1f} s"


def _features_module(det):
    """backbone + FPN + RPN convolutions: ``(P2..P5, rpn_cls of P2..P6, rpn_reg of P2..P6)``."""
    import torch.nn as nn

    n_roi = len(det.config.featmap_strides)

    class DetectorFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.rpn_head = det.backbone, det.neck, det.rpn_head

        def forward(self, x, *noise):
            feats = self.neck(self.backbone(x, *noise))
            cls, reg = self.rpn_head(feats)
            return (*feats[:n_roi], *cls, *reg)

    return DetectorFeatures().eval()


class _Builder:
    """Appends standard nodes (and constant initializers) to a graph under one name prefix."""

    def __init__(self, prefix: str = "det/"):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, *vals) -> str:
        return self.const(list(vals), np.int64, "i")

    def f32(self, v) -> str:
        return self.const(v, np.float32, "f")

    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", names=None, **attrs):
        outs = list(names) if names else [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._name(f"n_{op_type}"),
                                           domain=domain, **attrs))
        return outs[0] if outputs == 1 and not names else outs

    # small helpers
    def col(self, x: str, j: int, axis: int = -1) -> str:
        """``x[..., j:j + 1]`` along ``axis``."""
        return self.op("Slice", x, self.i64(j), self.i64(j + 1), self.i64(axis))

    def dim(self, x: str, i: int) -> str:
        """``Shape(x)[i:i + 1]`` (int64 [1])."""
        return self.op("Shape", x, start=i, end=i + 1)


def _delta2bbox(b: _Builder, rois: str, deltas: str, means, stds, wmax: str, hmax: str) -> list[str]:
    """v0.6 ``delta2bbox`` on ``rois [..., 4]`` and ``deltas [..., 4]`` (broadcasting), clipped to
    ``[0, wmax]`` / ``[0, hmax]``; returns ``x1, y1, x2, y2`` (each ``[..., 1]``), the same float32 operations in
    the same order as ``sai.models.detector.delta2bbox``."""
    d = b.op("Add", b.op("Mul", deltas, b.f32(list(stds))), b.f32(list(means)))
    dx, dy, dw, dh = (b.col(d, j) for j in range(4))
    r = [b.col(rois, j) for j in range(4)]
    max_ratio = abs(math.log(16 / 1000))
    lo, hi = b.f32(-max_ratio), b.f32(max_ratio)
    dw = b.op("Min", b.op("Max", dw, lo), hi)
    dh = b.op("Min", b.op("Max", dh, lo), hi)
    half, one = b.f32(0.5), b.f32(1.0)
    px = b.op("Mul", b.op("Add", r[0], r[2]), half)
    py = b.op("Mul", b.op("Add", r[1], r[3]), half)
    pw = b.op("Add", b.op("Sub", r[2], r[0]), one)
    ph = b.op("Add", b.op("Sub", r[3], r[1]), one)
    gw = b.op("Mul", pw, b.op("Exp", dw))
    gh = b.op("Mul", ph, b.op("Exp", dh))
    gx = b.op("Add", px, b.op("Mul", pw, dx))
    gy = b.op("Add", py, b.op("Mul", ph, dy))
    x1 = b.op("Add", b.op("Sub", gx, b.op("Mul", gw, half)), half)
    y1 = b.op("Add", b.op("Sub", gy, b.op("Mul", gh, half)), half)
    x2 = b.op("Sub", b.op("Add", gx, b.op("Mul", gw, half)), half)
    y2 = b.op("Sub", b.op("Add", gy, b.op("Mul", gh, half)), half)
    zero = b.f32(0.0)
    return [b.op("Min", b.op("Max", v, zero), m) for v, m in ((x1, wmax), (y1, hmax), (x2, wmax), (y2, hmax))]


def _shift_plus1(b: _Builder, boxes: str) -> str:
    return b.op("Add", boxes, b.f32([0.0, 0.0, 1.0, 1.0]))


def _anchors(b: _Builder, cls: str, base: np.ndarray, stride: int) -> str:
    """All anchors of a level ``[H * W * A, 4]`` (position-major, row by row, then anchor)."""
    zero, one = b.const(0, np.int64), b.const(1, np.int64)
    h = b.op("Squeeze", b.dim(cls, 2), b.i64(0))
    w = b.op("Squeeze", b.dim(cls, 3), b.i64(0))
    s = b.f32(float(stride))
    xs = b.op("Mul", b.op("Cast", b.op("Range", zero, w, one), to=TensorProto.FLOAT), s)
    ys = b.op("Mul", b.op("Cast", b.op("Range", zero, h, one), to=TensorProto.FLOAT), s)
    hw = b.op("Concat", b.dim(cls, 2), b.dim(cls, 3), axis=0)
    xx = b.op("Unsqueeze", b.op("Expand", b.op("Unsqueeze", xs, b.i64(0)), hw), b.i64(-1))
    yy = b.op("Unsqueeze", b.op("Expand", b.op("Unsqueeze", ys, b.i64(1)), hw), b.i64(-1))
    shifts = b.op("Reshape", b.op("Concat", xx, yy, xx, yy, axis=-1), b.i64(-1, 1, 4))
    return b.op("Reshape", b.op("Add", b.const(base[None]), shifts), b.i64(-1, 4))


def _topk_min(b: _Builder, x: str, k: int, axis: int = 1) -> list[str]:
    """``TopK`` of ``min(k, x.shape[axis])`` largest along ``axis``: values, indices."""
    kk = b.op("Min", b.i64(int(k)), b.dim(x, axis))
    return b.op("TopK", x, kk, outputs=2, axis=axis, largest=1, sorted=1)


def _keep_scores(b: _Builder, scores: str, selected: str, fill: float = -1.0) -> str:
    """``scores [B, K]`` where ``NonMaxSuppression``'s ``selected [M, 3]`` kept them, ``fill`` elsewhere."""
    ind = b.op("Concat", b.col(selected, 0), b.col(selected, 2), axis=1)  # [M, 2] (batch, box)
    kept = b.op("GatherND", scores, ind)
    filled = b.op("Expand", b.f32(fill), b.op("Shape", scores))
    return b.op("ScatterND", filled, ind, kept)


def build_postprocess(b: _Builder, det, feats: list[str], cls: list[str], reg: list[str], img_shape: str,
                      scale_factor: str, target: str = "portable") -> tuple[str, str, str]:
    """The RPN proposals, RoI head and detections of ``det``'s config as nodes of ``b``; returns the names of
    ``dets``, ``labels``, ``num_dets``. ``target="tensorrt"``: the box head's NMS takes its score threshold
    from the scores (see the module docstring); ``sai::RoiAlignV0`` nodes either way (inlined later by
    ``inline_roi_align`` for TensorRT)."""
    cfg = det.config
    shape_f = b.op("Cast", img_shape, to=TensorProto.FLOAT)  # [N, 2] (h, w)
    one = b.f32(1.0)
    hmax = b.op("Unsqueeze", b.op("Sub", b.col(shape_f, 0), one), b.i64(2))  # [N, 1, 1]
    wmax = b.op("Unsqueeze", b.op("Sub", b.col(shape_f, 1), one), b.i64(2))
    lvl_scores, lvl_boxes = [], []
    for lvl, (c, r) in enumerate(zip(cls, reg, strict=True)):
        scores = b.op("Sigmoid", b.op("Reshape", b.op("Transpose", c, perm=[0, 2, 3, 1]), b.i64(0, -1)))  # [N, HWA]
        deltas = b.op("Reshape", b.op("Transpose", r, perm=[0, 2, 3, 1]), b.i64(0, -1, 4))  # [N, HWA, 4]
        anchors = _anchors(b, c, det._base[lvl].numpy().astype(np.float32), cfg.anchor_strides[lvl])
        if cfg.nms_pre > 0:
            scores, idx = _topk_min(b, scores, cfg.nms_pre)
            deltas = b.op("GatherND", deltas, b.op("Unsqueeze", idx, b.i64(-1)), batch_dims=1)
            anchors = b.op("Gather", anchors, idx, axis=0)  # [N, K, 4]
        else:
            anchors = b.op("Unsqueeze", anchors, b.i64(0))
        x1, y1, x2, y2 = _delta2bbox(b, anchors, deltas, cfg.rpn_means, cfg.rpn_stds, wmax, hmax)
        boxes = b.op("Concat", x1, y1, x2, y2, axis=-1)  # [N, K, 4]
        if cfg.min_bbox_size > 0:
            mb = b.f32(float(cfg.min_bbox_size))
            ok = b.op("And", b.op("GreaterOrEqual", b.op("Add", b.op("Sub", x2, x1), one), mb),
                      b.op("GreaterOrEqual", b.op("Add", b.op("Sub", y2, y1), one), mb))
            scores = b.op("Where", b.op("Squeeze", ok, b.i64(-1)), scores, b.f32(-1.0))
        sel = b.op("NonMaxSuppression", _shift_plus1(b, boxes), b.op("Unsqueeze", scores, b.i64(1)),
                   b.i64(int(cfg.nms_post)), b.f32([float(cfg.rpn_nms_thr)]), b.f32([-0.5]))
        lvl_scores.append(_keep_scores(b, scores, sel))
        lvl_boxes.append(boxes)
    if cfg.nms_across_levels:
        raise SaiError("nms_across_levels=True is not exported (the official SAI-Det configs set it False)")
    all_s = b.op("Concat", *lvl_scores, axis=1)
    all_b = b.op("Concat", *lvl_boxes, axis=1)
    prop_s, prop_i = _topk_min(b, all_s, cfg.max_num)  # [N, R]
    prop_b = b.op("GatherND", all_b, b.op("Unsqueeze", prop_i, b.i64(-1)), batch_dims=1)  # [N, R, 4]
    prop_ok = b.op("Greater", prop_s, b.f32(-0.5))  # a kept proposal (padded slots hold -1)

    # RoI features
    n_dim, r_dim = b.dim(prop_s, 0), b.dim(prop_s, 1)
    rois = b.op("Reshape", prop_b, b.i64(-1, 4))  # [NR, 4]
    zero_i, one_i = b.const(0, np.int64), b.const(1, np.int64)
    n_sc = b.op("Squeeze", n_dim, b.i64(0))
    batch_idx = b.op("Reshape", b.op("Expand", b.op("Unsqueeze", b.op("Range", zero_i, n_sc, one_i), b.i64(1)),
                                     b.op("Concat", n_dim, r_dim, axis=0)), b.i64(-1))
    bw = b.op("Add", b.op("Sub", b.col(rois, 2), b.col(rois, 0)), one)
    bh = b.op("Add", b.op("Sub", b.col(rois, 3), b.col(rois, 1)), one)
    t = b.op("Add", b.op("Div", b.op("Sqrt", b.op("Mul", bw, bh)), b.f32(float(cfg.finest_scale))), b.f32(1e-6))
    n_lvl = len(cfg.featmap_strides)
    lvl = b.const(0, np.int64)
    for k in range(1, n_lvl):
        lvl = b.op("Add", lvl, b.op("Cast", b.op("GreaterOrEqual", t, b.f32(float(2 ** k))), to=TensorProto.INT64))
    lvl = b.op("Squeeze", lvl, b.i64(1))  # [NR]
    parts, where = [], []
    for i in range(n_lvl):
        sel = b.op("Transpose", b.op("NonZero", b.op("Equal", lvl, b.const(i, np.int64))), perm=[1, 0])  # [Si, 1]
        parts.append(b.op(ROI_ALIGN, feats[i], b.op("GatherND", rois, sel), b.op("GatherND", batch_idx, sel),
                          domain=DOMAIN, spatial_scale=1.0 / cfg.featmap_strides[i], output_size=cfg.roi_out_size,
                          sampling_ratio=cfg.roi_sample_num))
        where.append(sel)
    c_dim = b.dim(feats[0], 1)
    s_dim = b.i64(cfg.roi_out_size, cfg.roi_out_size)
    nr = b.op("Mul", n_dim, r_dim)
    zeros = b.op("Expand", b.f32(0.0), b.op("Concat", nr, c_dim, s_dim, axis=0))
    roi_feats = b.op("ScatterND", zeros, b.op("Concat", *where, axis=0), b.op("Concat", *parts, axis=0))

    # box head
    sd = {k: v.detach().float().numpy() for k, v in det.bbox_head.state_dict().items()}
    x = b.op("Flatten", roi_feats, axis=1)
    for j in range(cfg.num_fcs):
        x = b.op("Relu", b.op("Gemm", x, b.const(sd[f"shared_fcs.{j}.weight"]), b.const(sd[f"shared_fcs.{j}.bias"]),
                              transB=1))
    logits = b.op("Gemm", x, b.const(sd["fc_cls.weight"]), b.const(sd["fc_cls.bias"]), transB=1)
    deltas = b.op("Gemm", x, b.const(sd["fc_reg.weight"]), b.const(sd["fc_reg.bias"]), transB=1)
    scores = b.op("Softmax", logits, axis=1)  # [NR, C+1]
    roi_h = b.op("Gather", hmax, batch_idx, axis=0)  # [NR, 1, 1]
    roi_w = b.op("Gather", wmax, batch_idx, axis=0)
    roi_s = b.op("Unsqueeze", b.op("Gather", scale_factor, batch_idx, axis=0), b.i64(1, 2))
    x1, y1, x2, y2 = _delta2bbox(b, b.op("Unsqueeze", rois, b.i64(1)), b.op("Reshape", deltas, b.i64(0, -1, 4)),
                                 cfg.bbox_means, cfg.bbox_stds, roi_w, roi_h)
    boxes = b.op("Div", b.op("Concat", x1, y1, x2, y2, axis=-1), roi_s)  # [NR, 1 or C+1, 4]
    nc = cfg.num_classes
    boxes = b.op("Expand", boxes, b.op("Concat", nr, b.i64(nc, 4), axis=0))
    # image x class as NMS's batch: [N*(C), R, 4] and [N*(C), 1, R] for classes 1..C
    cls_boxes = b.op("Slice", b.op("Reshape", boxes, b.op("Concat", n_dim, r_dim, b.i64(nc, 4), axis=0)),
                     b.i64(1), b.i64(nc), b.i64(2))  # [N, R, C-1, 4]
    cls_boxes = b.op("Reshape", b.op("Transpose", cls_boxes, perm=[0, 2, 1, 3]), b.op("Concat", b.i64(-1), r_dim,
                                                                                       b.i64(4), axis=0))
    sc = b.op("Slice", b.op("Reshape", scores, b.op("Concat", n_dim, r_dim, b.i64(nc), axis=0)), b.i64(1),
              b.i64(nc), b.i64(2))  # [N, R, C-1]
    sc = b.op("Where", b.op("Unsqueeze", prop_ok, b.i64(2)), sc, b.f32(0.0))
    sc = b.op("Reshape", b.op("Transpose", sc, perm=[0, 2, 1]), b.op("Concat", b.i64(-1), r_dim, axis=0))  # [N*C', R]
    if target == "tensorrt":  # the threshold in the scores: INMSLayer's own comparison never decides
        sc_nms = b.op("Where", b.op("Greater", sc, b.f32(float(cfg.score_thr))), sc, b.f32(-1.0))
        thr = b.f32([-0.5])
    else:
        sc_nms, thr = sc, b.f32([float(cfg.score_thr)])
    sel = b.op("NonMaxSuppression", _shift_plus1(b, cls_boxes), b.op("Unsqueeze", sc_nms, b.i64(1)),
               b.op("Max", r_dim, b.i64(1)), b.f32([float(cfg.nms_thr)]), thr)
    kept = b.op("Reshape", _keep_scores(b, sc, sel), b.op("Concat", n_dim, b.i64(-1), axis=0))  # [N, C'*R]
    top_s, top_i = _topk_min(b, kept, cfg.max_per_img)  # [N, K']
    ok = b.op("Greater", top_s, b.f32(-0.5))
    flat_boxes = b.op("Reshape", cls_boxes, b.op("Concat", n_dim, b.i64(-1, 4), axis=0))  # [N, C'*R, 4]
    top_b = b.op("GatherND", flat_boxes, b.op("Unsqueeze", top_i, b.i64(-1)), batch_dims=1)
    dets = b.op("Concat", top_b, b.op("Unsqueeze", top_s, b.i64(-1)), axis=-1)
    dets = b.op("Where", b.op("Unsqueeze", ok, b.i64(-1)), dets, b.f32(0.0))
    labels = b.op("Where", ok, b.op("Div", top_i, r_dim), b.const(-1, np.int64))
    num = b.op("ReduceSum", b.op("Cast", ok, to=TensorProto.INT64), b.i64(1), keepdims=0)
    # pad K' (fewer when R * classes < max_per_img) to max_per_img
    pad = b.op("Sub", b.i64(cfg.max_per_img), b.dim(top_s, 1))
    z1 = b.i64(0)
    dets = b.op("Pad", dets, b.op("Concat", z1, z1, z1, z1, pad, z1, axis=0), b.f32(0.0),
                names=[OUTPUT_NAMES[0]])[0]
    labels = b.op("Pad", labels, b.op("Concat", z1, z1, z1, pad, axis=0), b.const(-1, np.int64),
                  names=[OUTPUT_NAMES[1]])[0]
    num = b.op("Identity", num, names=[OUTPUT_NAMES[2]])[0]
    return dets, labels, num


def export_detector(
    detector,
    path: Union[str, os.PathLike],
    *,
    input_shape=(1, 3, 128, 192),
    opset: int = DEFAULT_OPSET,
    body: str = "sparse",
    check: bool = True,
    verbose: bool = False,
    target: str = "portable",
    trt_blocks: Optional[str] = None,
) -> DetectorExportResult:
    """Export ``detector`` (a ``SaiDetector``, its weights loaded; fused here if it is not) to one ONNX graph
    at ``path`` (portable target: standard ops + the ``sai`` ops with their function bodies). ``input_shape``
    is the example padded batch traced (batch and size stay dynamic); ``body``: the sai ops' bodies
    (``sparse`` | ``dense``); ``target``: ``portable`` | ``tensorrt`` (what TensorRT's ONNX parser maps: the
    sai ops without bodies, the config checked against TensorRT's TopK / NMS limits); ``trt_blocks`` (target
    tensorrt, as ``export_onnx``'s): ``fused`` (default) one ``sai::SparseBlock`` node per sparse block the
    plugin takes, ``per-op`` the SparseSampleConv / Interpolate nodes only."""
    import torch

    from sai.models.detector import SaiDetector
    from sai.outputs import check_output_file

    t0 = time.perf_counter()
    if not isinstance(detector, SaiDetector):
        raise SaiError(f"export_detector needs a sai.models.SaiDetector, got {type(detector).__name__}; build one "
                       "with sai.models.load_detector(preset, checkpoint)")
    if target not in TARGETS:
        raise SaiError(f"export_detector target must be one of {', '.join(TARGETS)}, got {target!r}")
    if trt_blocks is not None and target != "tensorrt":
        raise SaiError(f"trt_blocks={trt_blocks!r} applies to target='tensorrt' only (this export is {target}); "
                       "drop it or export with target='tensorrt'")
    from sai.exporter import trt_blocks as trt_blocks_module

    blocks_mode = trt_blocks_module.mode(trt_blocks) if target == "tensorrt" else "per-op"
    opset = _check_opset(opset)
    if target == "tensorrt":
        check_tensorrt_limits(detector.config)
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 4 or shape[1] != 3 or min(shape[2:]) < 32 or shape[0] < 1:
        raise SaiError(f"input_shape must be N,3,H,W with H and W at least 32, got {list(input_shape)}")
    check_output_file(path)
    det = detector.eval()
    if not det.fused:
        det.fuse_for_inference()
    feat = _features_module(det)
    noise_specs, noise = _noise(det.backbone, shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    n_roi = len(det.config.featmap_strides)
    n_lvl = len(det.config.anchor_strides)
    feat_names = [f"det/feat{i}" for i in range(n_roi)]
    cls_names = [f"det/rpn_cls{i}" for i in range(n_lvl)]
    reg_names = [f"det/rpn_reg{i}" for i in range(n_lvl)]
    try:
        with torch.no_grad():
            feat(x, *noise)
    except RuntimeError as exc:
        raise SaiError(f"the detector cannot run on input shape {list(shape)}: {first_line(exc)}") from exc
    in_names = ["input"] + [n for n, _ in noise_specs]
    proto = _torch_export(feat, [x, *noise], in_names, feat_names + cls_names + reg_names, {"batch", "hw"},
                          noise_specs, opset, verbose, target, blocks_mode)
    finalize(proto, target=target, precision="fp32", opset=opset, body=body)

    g = proto.graph
    b = _Builder()
    g.input.extend([helper.make_tensor_value_info("img_shape", TensorProto.INT64, ["batch", 2]),
                    helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, ["batch"])])
    dets, labels, num = build_postprocess(b, det, feat_names, cls_names, reg_names, "img_shape", "scale_factor",
                                          target)
    g.node.extend(b.nodes)
    g.initializer.extend(b.inits)
    k = det.config.max_per_img
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(dets, TensorProto.FLOAT, ["batch", k, 5]),
                     helper.make_tensor_value_info(labels, TensorProto.INT64, ["batch", k]),
                     helper.make_tensor_value_info(num, TensorProto.INT64, ["batch"])])
    from sai.exporter import graph

    graph.ensure_opset_import(proto, DOMAIN, DOMAIN_VERSION)
    proto.functions.append(roi_align_v0.function(opset))
    if target == "tensorrt":
        inline_roi_align(proto)
        g = proto.graph
    del g.value_info[:]
    cfg = det.config
    import sai

    counts: dict[str, int] = {}
    for node in g.node:
        if node.domain == DOMAIN:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    sampling = "dense" if not getattr(det.backbone, "is_sparse", False) else str(det.backbone.sampling)
    meta = {
        "model": "detector", "preset": cfg.name, "arch": cfg.arch, "sampling": sampling, "target": target,
        "body": body if target == "portable" else "", **({"trt_blocks": blocks_mode} if target == "tensorrt" else {}),
        "precision": "fp32", "dynamic_axes": ["batch", "hw"],
        "noise_inputs": [[n, s] for n, s in noise_specs], "img_scale": list(cfg.img_scale),
        "size_divisor": cfg.size_divisor, "mean": list(cfg.mean), "std": list(cfg.std), "to_rgb": bool(cfg.to_rgb),
        "max_per_img": k, "example_input_shape": list(shape), "sparse_ops": counts,
        "producer": {"sai": sai.__version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__},
    }
    metadata.write_metadata(proto, meta)
    proto.producer_name = "sai-deploy"
    proto.producer_version = sai.__version__
    if check:
        try:
            _check(proto)
        except Exception as exc:  # a bug in the exporter, not a user error
            raise RuntimeError(f"exported detector {cfg.name} fails the ONNX checks: {exc}") from exc
    out = save_atomic(proto, path)
    return DetectorExportResult(path=out, name=cfg.name, sampling=sampling, opset=opset,
                                input_names=in_names + list(INPUT_NAMES[1:]),
                                output_names=list(OUTPUT_NAMES), op_counts=counts,
                                export_seconds=time.perf_counter() - t0, metadata=meta)


def preprocessed_inputs(metas: list[dict]) -> dict[str, np.ndarray]:
    """The graph's inputs for ``sai.models.detector.preprocess`` results of any sizes: the images zero-padded
    to the largest padded size, ``img_shape`` and ``scale_factor``."""
    hp = max(int(m["img"].shape[1]) for m in metas)
    wp = max(int(m["img"].shape[2]) for m in metas)
    x = np.zeros((len(metas), 3, hp, wp), np.float32)
    for i, m in enumerate(metas):
        img = m["img"].numpy()
        x[i, :, :img.shape[1], :img.shape[2]] = img
    return {"input": x, "img_shape": np.array([m["img_shape"] for m in metas], np.int64),
            "scale_factor": np.array([m["scale_factor"] for m in metas], np.float32)}

