"""The settings of the official SAI-Det detectors (mmdetection v0.6 Faster R-CNN + FPN, ResNet-101, DCN v1
in stages 2-4): eight built-in presets named as the official config files, and a reader for such a config
file that parses its literals and never executes it.

A ``DetectorConfig`` holds what the test path of the official code reads: the backbone (dense or sparse,
DCN stages, the sparse blocks' options), the test scale and image normalisation, the RPN's anchors and
proposal settings (``test_cfg.rpn``), the RoI extractor, the box head and ``test_cfg.rcnn``.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

from sai.errors import SaiError


@dataclass(frozen=True)
class DetectorConfig:
    """One official detector's test-time settings (defaults: the official configs' values)."""

    name: str = "custom"
    sparse: bool = True
    depth: int = 101
    dcn_stages: tuple = (False, True, True, True)
    backbone_options: dict = field(default_factory=dict)  # sai build_model options of the sparse blocks
    # test pipeline (ImageTransform, keep_ratio=True): img_scale = (long edge, short edge) limits
    img_scale: tuple = (1667, 1000)
    mean: tuple = (123.675, 116.28, 103.53)
    std: tuple = (58.395, 57.12, 57.375)
    to_rgb: bool = True
    size_divisor: int = 32
    # FPN
    fpn_in_channels: tuple = (256, 512, 1024, 2048)
    fpn_out_channels: int = 256
    num_outs: int = 5
    # RPN head
    feat_channels: int = 256
    anchor_scales: tuple = (8,)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    anchor_strides: tuple = (4, 8, 16, 32, 64)
    rpn_means: tuple = (0.0, 0.0, 0.0, 0.0)
    rpn_stds: tuple = (1.0, 1.0, 1.0, 1.0)
    # test_cfg.rpn
    nms_across_levels: bool = False
    nms_pre: int = 1000
    nms_post: int = 1000
    max_num: int = 1000
    rpn_nms_thr: float = 0.7
    min_bbox_size: float = 0
    # RoI extractor
    roi_out_size: int = 7
    roi_sample_num: int = 2
    featmap_strides: tuple = (4, 8, 16, 32)
    finest_scale: int = 56
    # box head (SharedFCBBoxHead)
    num_fcs: int = 2
    fc_out_channels: int = 1024
    num_classes: int = 81  # background at 0
    bbox_means: tuple = (0.0, 0.0, 0.0, 0.0)
    bbox_stds: tuple = (0.1, 0.1, 0.2, 0.2)
    reg_class_agnostic: bool = False
    # test_cfg.rcnn
    score_thr: float = 0.05
    nms_thr: float = 0.5
    max_per_img: int = 100

    @property
    def arch(self) -> str:
        return f"{'sparse_' if self.sparse else ''}resnet{self.depth}"

    def with_scale(self, img_scale: tuple) -> DetectorConfig:
        """The same detector tested at another ``img_scale`` (long, short)."""
        return replace(self, img_scale=_scale(img_scale, "img_scale"))


_SPARSE_DEFAULTS = {"grid_prior_interval": 11, "gaussian_kernel": 7, "max_T": 1.0, "decay_alpha": 0.99998}
_DENSE_SCALES = {500: (833, 500), 600: (1000, 600), 800: (1333, 800), 1000: (1667, 1000)}
_SPARSE_WEIGHTS = {"0_02": 0.02, "0_05": 0.05, "0_1": 0.1, "0_2": 0.2}


def _presets() -> dict[str, DetectorConfig]:
    out = {}
    for res, scale in _DENSE_SCALES.items():
        name = f"resnet_101_faster_rcnn_res{res}"
        out[name] = DetectorConfig(name=name, sparse=False, img_scale=scale,
                                   backbone_options={"frozen_stages": 0, "norm_eval": True})
    for tag, w in _SPARSE_WEIGHTS.items():
        name = f"sparse_resnet_101_faster_rcnn_sparse_loss_weight_{tag}"
        opts = dict(_SPARSE_DEFAULTS, sparse_loss_weight=w, frozen_stages=0, norm_eval=True)
        out[name] = DetectorConfig(name=name, sparse=True, img_scale=(1667, 1000), backbone_options=opts)
    return out


PRESETS: dict[str, DetectorConfig] = _presets()


def preset(name: str) -> DetectorConfig:
    """The built-in preset named as an official config file (``.py`` and folders tolerated)."""
    if isinstance(name, DetectorConfig):
        return name
    key = os.path.basename(str(name))
    key = key[:-3] if key.endswith(".py") else key
    if key not in PRESETS:
        raise SaiError(f"unknown detector preset {name!r}; valid presets: {', '.join(PRESETS)} (or give an "
                       "official config file path)")
    return PRESETS[key]


def resolve(preset_or_config: Union[str, os.PathLike, DetectorConfig]) -> DetectorConfig:
    """A ``DetectorConfig`` from itself, a preset name or an official config file (``*.py`` that exists)."""
    if isinstance(preset_or_config, DetectorConfig):
        return preset_or_config
    p = Path(str(preset_or_config))
    if p.suffix == ".py" and p.is_file():
        return read_config_file(p)
    return preset(str(preset_or_config))


# ----------------------------------------------------------------------------------------------
# official config files, read as literals
# ----------------------------------------------------------------------------------------------

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}


class _Refused(Exception):
    def __init__(self, node: ast.AST, what: str):
        super().__init__(f"line {getattr(node, 'lineno', '?')}: {what}")


def _literal(node: ast.AST, env: dict) -> Any:
    """The value of ``node`` built from literals, ``dict(...)`` calls, names assigned earlier in the file,
    f-strings of those, and + - * / of numbers or strings. Anything else is refused (never evaluated)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        vals = [_literal(e, env) for e in node.elts]
        return vals if isinstance(node, ast.List) else tuple(vals)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _Refused(node, "a ** expansion in a dict")
        return {_literal(k, env): _literal(v, env) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Name):
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        if node.id not in env:
            raise _Refused(node, f"the name {node.id!r} is not assigned before it is used")
        return env[node.id]
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id == "dict") or node.args:
            raise _Refused(node, "a function call (only dict(key=value, ...) is read)")
        if any(k.arg is None for k in node.keywords):
            raise _Refused(node, "a ** expansion in dict(...)")
        return {k.arg: _literal(k.value, env) for k in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, env)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise _Refused(node, "a sign on a non-number")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _literal(node.left, env), _literal(node.right, env)
        nums = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        strs = isinstance(node.op, ast.Add) and all(isinstance(v, str) for v in (a, b))
        if not (nums or strs) or (isinstance(node.op, ast.Div) and b == 0):
            raise _Refused(node, "arithmetic on values other than numbers (or + of strings)")
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue) and v.conversion == -1 and v.format_spec is None:
                val = _literal(v.value, env)
                if not isinstance(val, (str, int, float)):
                    raise _Refused(node, "an f-string of a non-scalar value")
                parts.append(str(val))
            else:
                raise _Refused(node, "an f-string with a conversion or format spec")
        return "".join(parts)
    raise _Refused(node, f"code ({type(node).__name__}), not a literal")


def parse_config_text(text: str, source: str = "the config") -> dict:
    """The top-level assignments of an mmdetection config file as plain values, without executing it."""
    try:
        tree = ast.parse(text, filename=source)
    except SyntaxError as exc:
        raise SaiError(f"{source} is not valid Python (line {exc.lineno}: {exc.msg}); give an official "
                       "SAI-Det config file") from None
    env: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise SaiError(f"{source} line {stmt.lineno}: {type(stmt).__name__} is code, and sai reads config files "
                           "without running them (only name = literal/dict(...) assignments); remove it or use a "
                           "built-in preset")
        try:
            env[stmt.targets[0].id] = _literal(stmt.value, env)
        except _Refused as exc:
            raise SaiError(f"{source} {exc}; sai reads config files without running them (only literals, "
                           "dict(...) and earlier names); remove it or use a built-in preset") from None
    return env


def _get(d: Any, path: str, source: str, default: Any = ...):
    cur = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if default is not ...:
                return default
            raise SaiError(f"{source} has no {path}; an official SAI-Det Faster R-CNN config sets it")
        cur = cur[part]
    return cur


def _scale(v: Any, what: str) -> tuple:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)):
        raise SaiError(f"{what} must be two positive ints (long edge, short edge), got {v!r}")
    return tuple(v)


def config_from_dict(cfg: dict, name: str = "custom", source: str = "the config") -> DetectorConfig:
    """A ``DetectorConfig`` from a parsed official config (``model``, ``test_cfg``, ``data.test``)."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise SaiError(f"{source}: {what}; sai runs the official SAI-Det Faster R-CNN + FPN configs")

    model = _get(cfg, "model", source)
    need(_get(model, "type", source) == "FasterRCNN", f"model.type is {model.get('type')!r}, not 'FasterRCNN'")
    bb = _get(model, "backbone", source)
    need(bb.get("type") in ("ResNet", "SparseResNet"), f"backbone.type {bb.get('type')!r} is not (Sparse)ResNet")
    depth = bb.get("depth", 101)
    need(depth in (18, 34, 50, 101, 152), f"backbone.depth {depth!r} is not a ResNet depth")
    dcn = bb.get("dcn")
    stages = tuple(bool(s) for s in bb.get("stage_with_dcn", (False,) * 4)) if dcn else (False,) * 4
    need(len(stages) == 4, "backbone.stage_with_dcn must have 4 entries")
    if dcn:
        need(not dcn.get("modulated", False), "modulated DCN (v2) is not supported, only DCN v1")
        need(dcn.get("deformable_groups", 1) == 1, "deformable_groups must be 1")
    need(tuple(bb.get("out_indices", (0, 1, 2, 3))) == (0, 1, 2, 3), "backbone.out_indices must be (0, 1, 2, 3)")
    sparse = bb["type"] == "SparseResNet"
    opts: dict = {"frozen_stages": int(bb.get("frozen_stages", -1)), "norm_eval": bool(bb.get("norm_eval", True))}
    if sparse:
        g = bb.get("gumbel_cfg", {}) or {}
        opts.update(grid_prior_interval=bb.get("grid_prior_interval", 11), gaussian_kernel=bb.get("gaussian_kernel", 7),
                    max_T=g.get("max_T", 1.0), decay_alpha=g.get("decay_alpha", 0.99998),
                    sparse_loss_weight=bb.get("sparse_loss_weight", 0.1))
    neck = _get(model, "neck", source)
    need(neck.get("type") == "FPN" and neck.get("num_outs", 5) == 5 and not neck.get("add_extra_convs", False),
         "neck must be FPN with num_outs=5 and no extra convs")
    rpn = _get(model, "rpn_head", source)
    need(rpn.get("type") == "RPNHead", "rpn_head.type must be 'RPNHead'")
    need(_get(rpn, "loss_cls.use_sigmoid", source, True) is True, "the RPN must use sigmoid scores")
    roi = _get(model, "bbox_roi_extractor", source)
    need(roi.get("type") == "SingleRoIExtractor" and _get(roi, "roi_layer.type", source) == "RoIAlign",
         "bbox_roi_extractor must be SingleRoIExtractor with RoIAlign")
    bh = _get(model, "bbox_head", source)
    need(bh.get("type") == "SharedFCBBoxHead", "bbox_head.type must be 'SharedFCBBoxHead'")
    need(not bh.get("with_avg_pool", False), "bbox_head.with_avg_pool is not supported")
    need(_get(bh, "loss_cls.use_sigmoid", source, False) is False, "the box head must use softmax scores")
    trpn = _get(cfg, "test_cfg.rpn", source)
    rcnn = _get(cfg, "test_cfg.rcnn", source)
    nms = rcnn.get("nms", {})
    need(nms.get("type", "nms") == "nms", f"test_cfg.rcnn.nms.type {nms.get('type')!r}: only 'nms' is supported")
    test = _get(cfg, "data.test", source)
    norm = _get(test, "img_norm_cfg", source)
    need(test.get("resize_keep_ratio", True) is True, "data.test.resize_keep_ratio must be True")
    scale = test.get("img_scale")
    need(isinstance(scale, (list, tuple)) and len(scale) == 2, f"data.test.img_scale {scale!r} is not one scale")
    try:
        return DetectorConfig(
            name=name, sparse=sparse, depth=int(depth), dcn_stages=stages, backbone_options=opts,
            img_scale=_scale(tuple(scale), "data.test.img_scale"), mean=tuple(float(v) for v in norm["mean"]),
            std=tuple(float(v) for v in norm["std"]), to_rgb=bool(norm.get("to_rgb", True)),
            size_divisor=int(test.get("size_divisor") or 1),
            fpn_in_channels=tuple(int(c) for c in neck["in_channels"]), fpn_out_channels=int(neck["out_channels"]),
            feat_channels=int(rpn.get("feat_channels", 256)),
            anchor_scales=tuple(rpn.get("anchor_scales", (8, 16, 32))),
            anchor_ratios=tuple(float(r) for r in rpn.get("anchor_ratios", (0.5, 1.0, 2.0))),
            anchor_strides=tuple(int(s) for s in rpn.get("anchor_strides", (4, 8, 16, 32, 64))),
            rpn_means=tuple(float(v) for v in rpn.get("target_means", (0.0,) * 4)),
            rpn_stds=tuple(float(v) for v in rpn.get("target_stds", (1.0,) * 4)),
            nms_across_levels=bool(trpn.get("nms_across_levels", False)), nms_pre=int(trpn["nms_pre"]),
            nms_post=int(trpn["nms_post"]), max_num=int(trpn["max_num"]), rpn_nms_thr=float(trpn["nms_thr"]),
            min_bbox_size=float(trpn.get("min_bbox_size", 0)),
            roi_out_size=int(_get(roi, "roi_layer.out_size", source)),
            roi_sample_num=int(_get(roi, "roi_layer.sample_num", source, 0)),
            featmap_strides=tuple(int(s) for s in roi["featmap_strides"]),
            finest_scale=int(roi.get("finest_scale", 56)),
            num_fcs=int(bh.get("num_fcs", 2)), fc_out_channels=int(bh.get("fc_out_channels", 1024)),
            num_classes=int(bh.get("num_classes", 81)),
            bbox_means=tuple(float(v) for v in bh.get("target_means", (0.0,) * 4)),
            bbox_stds=tuple(float(v) for v in bh.get("target_stds", (0.1, 0.1, 0.2, 0.2))),
            reg_class_agnostic=bool(bh.get("reg_class_agnostic", False)),
            score_thr=float(rcnn["score_thr"]), nms_thr=float(nms["iou_thr"]), max_per_img=int(rcnn["max_per_img"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SaiError(f"{source}: a test setting is missing or not a number ({type(exc).__name__}: {exc}); "
                       "compare it with an official SAI-Det config") from None


def read_config_file(path: Union[str, os.PathLike]) -> DetectorConfig:
    """A ``DetectorConfig`` from an official config file, parsed as literals (never executed)."""
    path = Path(path)
    if not path.is_file():
        raise SaiError(f"config file {path} does not exist; give an official SAI-Det config (.py) or a preset "
                       f"name ({', '.join(PRESETS)})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SaiError(f"cannot read config file {path}: {exc}; check the file") from None
    return config_from_dict(parse_config_text(text, str(path)), name=path.stem, source=str(path))
