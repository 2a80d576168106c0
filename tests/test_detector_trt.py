"""The detector's tensorrt target (sai.exporter.detector_export, target="tensorrt"): what TensorRT 10/11's ONNX
parser maps, checked without TensorRT.

- structure: onnx.checker; every op in the parser's supported list (onnx-tensorrt docs/operators.md, the rows
  for TensorRT 10), no ``sai`` node in the detector's head (RoiAlignV0 inlined: RoiAlign -> ROIAlign_TRT plus
  standard ops), every TopK's K bounded by 3840 (a constant, or Min of a constant <= 3840 and a shape), the
  NonMaxSuppression inputs of rank 3, and on an input with 10752 P2 anchors, every NMS batch item at most
  5000 boxes and every K at most 3840 when run;
- numbers: on onnxruntime, the head graph of both targets on the same features gives the same outputs, and
  the same detections as the PyTorch detector's per-image path (itself tested against the float64
  reference written from the official code in tests/test_detector.py);
- ROIAlign_TRT: a float64 transcription of TensorRT's roiAlignKernel.cu (aligned=0) on the +1-shifted boxes
  equals v0.6's RoIAlign (tests/test_detector.py: ref_roi_align) for RoIs of a cell or more, and not below:
  why the body keeps its exact path for the small ones;
- the config's limits refused with one line (SaiError) before anything is written.
The whole R101 export (about 2 minutes) is marked slow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_detector import SCALE, assert_same_detections, make_checkpoint, ref_roi_align

from sai.constants import DEFAULT_OPSET
from sai.errors import SaiError
from sai.exporter.detector_export import (
    _Builder,
    build_postprocess,
    check_tensorrt_limits,
    export_detector,
    inline_roi_align,
    preprocessed_inputs,
)
from sai.exporter.functions import roi_align_v0
from sai.models.detector import load_detector, preprocess
from sai.models.detector_presets import preset

ort = pytest.importorskip("onnxruntime")

DENSE = "resnet_101_faster_rcnn_res500"
# onnx-tensorrt docs/operators.md (TensorRT 10): the ops this graph may use, all marked supported there
TRT_OPS = {
    "Add", "And", "Cast", "Concat", "Constant", "Div", "Equal", "Exp", "Expand", "Flatten", "Floor", "Gather",
    "GatherND", "Gemm", "Greater", "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "Max", "Min", "Mul",
    "NonMaxSuppression", "NonZero", "Or", "Pad", "Range", "ReduceSum", "Reshape", "RoiAlign", "ScatterND", "Shape",
    "Sigmoid", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "TopK", "Transpose", "Unsqueeze", "Where",
    # the backbone's standard ops (the per-op sparse masks: Log, Clip, Mod)
    "Conv", "Relu", "MaxPool", "Resize", "BatchNormalization", "Log", "Clip", "Mod",
}
TRT_MAX_K = 3840
TRT_MAX_NMS = 5000


def _session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so)


@pytest.fixture(scope="module")
def det():
    return load_detector(preset(DENSE).with_scale(SCALE), make_checkpoint(DENSE))


@pytest.fixture(scope="module")
def feats(det):
    """The FPN levels and RPN outputs of two images of different sizes padded to 224 x 256 (P2: 56 * 64 * 3 =
    10752 anchors, more than INMSLayer's 5000), as the head graph's feeds."""
    imgs = [np.random.RandomState(3).randint(0, 256, (72, 120, 3)).astype(np.uint8),
            np.random.RandomState(9).randint(0, 256, (90, 52, 3)).astype(np.uint8)]
    feeds = preprocessed_inputs(preprocess(imgs, det.config))
    x = np.zeros((2, 3, 224, 256), np.float32)
    x[:, :, :feeds["input"].shape[2], :feeds["input"].shape[3]] = feeds["input"]
    with torch.no_grad():
        levels = det.extract_feat(torch.from_numpy(x))
        cls, reg = det.rpn_head(levels)
    n_roi = len(det.config.featmap_strides)
    out = {"img_shape": feeds["img_shape"], "scale_factor": feeds["scale_factor"]}
    out.update({f"feat{i}": levels[i].numpy() for i in range(n_roi)})
    out.update({f"cls{i}": c.numpy() for i, c in enumerate(cls)})
    out.update({f"reg{i}": r.numpy() for i, r in enumerate(reg)})
    return out, levels, cls, reg


def head_model(det, target: str, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The RPN proposals, RoI head and detections alone (build_postprocess), from the levels as inputs."""
    cfg = det.config
    n_roi, n_lvl = len(cfg.featmap_strides), len(cfg.anchor_strides)
    f = [f"feat{i}" for i in range(n_roi)]
    c = [f"cls{i}" for i in range(n_lvl)]
    r = [f"reg{i}" for i in range(n_lvl)]
    b = _Builder()
    outs = build_postprocess(b, det, f, c, r, "img_shape", "scale_factor", target)
    vi = helper.make_tensor_value_info
    inputs = [vi(n, TensorProto.FLOAT, ["n", 256 if n.startswith("feat") else ("a" if n.startswith("cls") else "d"),
                                        f"h_{n}", f"w_{n}"]) for n in f + c + r]
    inputs += [vi("img_shape", TensorProto.INT64, ["n", 2]), vi("scale_factor", TensorProto.FLOAT, ["n"])]
    k = cfg.max_per_img
    outputs = [vi(outs[0], TensorProto.FLOAT, ["n", k, 5]), vi(outs[1], TensorProto.INT64, ["n", k]),
               vi(outs[2], TensorProto.INT64, ["n"])]
    g = helper.make_graph(b.nodes, "head", inputs, outputs, b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("sai", 1)],
                          functions=[roi_align_v0.function(opset)])
    m.ir_version = 10
    if target == "tensorrt":
        inline_roi_align(m)
    return m


def _producers(g: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in g.node for o in n.output}


def _const_value(g: onnx.GraphProto, name: str):
    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    p = _producers(g).get(name)
    if p is not None and p.op_type == "Constant":
        return numpy_helper.to_array(p.attribute[0].t)
    return None


def topk_bound(g: onnx.GraphProto, node: onnx.NodeProto) -> int | None:
    """The largest K this TopK can take: its constant K, or Min's constant when K = Min(const, shape)."""
    k = _const_value(g, node.input[1])
    if k is not None:
        return int(np.max(k))
    p = _producers(g).get(node.input[1])
    if p is not None and p.op_type == "Min":
        bounds = [_const_value(g, i) for i in p.input]
        bounds = [int(np.max(v)) for v in bounds if v is not None]
        return min(bounds) if bounds else None
    return None


def assert_trt_structure(m: onnx.ModelProto, allow_sai: frozenset = frozenset(), typed=None) -> None:
    """``typed``: the model to infer the NMS inputs' ranks on (``m`` with the sai bodies attached where ``m``
    has sai nodes, which shape inference cannot see through)."""
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    ops = {n.op_type for n in g.node if n.domain in ("", "ai.onnx")}
    assert ops <= TRT_OPS, f"ops TensorRT's parser does not map: {sorted(ops - TRT_OPS)}"
    custom = {n.op_type for n in g.node if n.domain not in ("", "ai.onnx")}
    assert custom <= allow_sai, custom
    assert not any(f.name == roi_align_v0.NAME for f in m.functions)
    assert "RoiAlign" in ops and "NonMaxSuppression" in ops
    topks = [n for n in g.node if n.op_type == "TopK"]
    assert topks
    for n in topks:
        bound = topk_bound(g, n)
        assert bound is not None and bound <= TRT_MAX_K, (n.name, bound)
        assert next(a.i for a in n.attribute if a.name == "sorted") == 1
    inferred = onnx.shape_inference.infer_shapes(typed if typed is not None else m)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(inferred.graph.value_info) + list(g.input)
             if v.type.tensor_type.HasField("shape")}
    for n in (n for n in g.node if n.op_type == "NonMaxSuppression"):
        assert ranks.get(n.input[0]) == 3 and ranks.get(n.input[1]) == 3, n.name


@pytest.fixture(scope="module")
def heads(det):
    return head_model(det, "portable"), head_model(det, "tensorrt")


def test_head_graph_is_what_tensorrt_parses(heads):
    _, trt = heads
    assert_trt_structure(trt)
    assert trt.opset_import and not trt.functions


def test_head_graph_runs_inside_tensorrt_limits(heads, feats):
    """Every NMS batch item and every K, as run on 10752 P2 anchors, within INMSLayer's / ITopKLayer's limits."""
    _, trt = heads
    feeds, *_ = feats
    m = onnx.ModelProto()
    m.CopyFrom(trt)
    g = m.graph
    nms = [n for n in g.node if n.op_type == "NonMaxSuppression"]
    topk = [n for n in g.node if n.op_type == "TopK"]
    watch = [n.input[0] for n in nms] + [n.input[1] for n in topk] + [n.input[0] for n in topk]
    types = [TensorProto.FLOAT] * len(nms) + [TensorProto.INT64] * len(topk) + [TensorProto.FLOAT] * len(topk)
    g.output.extend([helper.make_tensor_value_info(w, t, None) for w, t in zip(watch, types, strict=True)])
    got = _session(m).run(watch, feeds)
    boxes, ks, xs = got[:len(nms)], got[len(nms):len(nms) + len(topk)], got[len(nms) + len(topk):]
    assert max(b.shape[1] for b in boxes) <= TRT_MAX_NMS
    assert max(int(np.max(k)) for k in ks) <= TRT_MAX_K
    assert max(x.shape[-1] for x in xs) > TRT_MAX_NMS, "the case exists: a TopK over more than 5000 anchors"


def test_head_targets_agree_and_match_torch(heads, feats, det):
    portable, trt = heads
    feeds, levels, cls, reg = feats
    d, lab, n = _session(trt).run(None, feeds)
    pd, plab, pn = _session(portable).run(None, feeds)
    assert n.tolist() == pn.tolist() and int(n.min()) >= 10
    np.testing.assert_array_equal(lab, plab)
    np.testing.assert_allclose(d, pd, rtol=0, atol=1e-5)
    with torch.no_grad():
        for i in range(2):
            shape = tuple(int(v) for v in feeds["img_shape"][i])
            props = det.proposals(cls, reg, i, shape)
            rf = det.roi_features(levels[:len(det.config.featmap_strides)], i, props[:, :4])
            c, r = det.bbox_head(rf)
            td, tl = det.detections(props[:, :4], c, r, shape, float(feeds["scale_factor"][i]))
            k = int(n[i])
            assert k == td.shape[0]
            assert_same_detections(d[i, :k], lab[i, :k], td.numpy(), tl.numpy())


def test_score_threshold_is_in_the_scores(heads):
    """The box head's NMS: scores at or under score_thr set to -1 before it, its own threshold -0.5."""
    _, trt = heads
    g = trt.graph
    nms = [n for n in g.node if n.op_type == "NonMaxSuppression"]
    assert all(float(_const_value(g, n.input[4]).reshape(-1)[0]) == -0.5 for n in nms)


def _trt_roi_align(fmap, box, scale, out=7, n=2):
    """TensorRT's ROIAlign_TRT (plugin/roiAlignPlugin/roiAlignKernel.cu, aligned=0, mode avg) in float64."""
    c, h, w = fmap.shape
    sw, sh, ew, eh = box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale
    rw, rh = max(ew - sw, 1.0), max(eh - sh, 1.0)
    bw, bh = rw / out, rh / out
    res = np.zeros((c, out, out))
    for ph in range(out):
        for pw in range(out):
            acc = np.zeros(c)
            for iy in range(n):
                y = sh + ph * bh + (iy + 0.5) * bh / n
                for ix in range(n):
                    x = sw + pw * bw + (ix + 0.5) * bw / n
                    if y < -1 or y > h or x < -1 or x > w:
                        continue
                    yy, xx = max(y, 0.0), max(x, 0.0)
                    yl, xl = int(yy), int(xx)
                    if yl >= h - 1:
                        yl = yh = h - 1
                        yy = float(yl)
                    else:
                        yh = yl + 1
                    if xl >= w - 1:
                        xl = xh = w - 1
                        xx = float(xl)
                    else:
                        xh = xl + 1
                    ly, lx = yy - yl, xx - xl
                    acc += ((1 - ly) * (1 - lx) * fmap[:, yl, xl] + (1 - ly) * lx * fmap[:, yl, xh]
                            + ly * (1 - lx) * fmap[:, yh, xl] + ly * lx * fmap[:, yh, xh])
            res[:, ph, pw] = acc / (n * n)
    return res


def test_roialign_trt_on_shifted_boxes_is_v06_from_one_cell():
    rng = np.random.RandomState(1)
    fmap = rng.randn(3, 9, 11)
    xy = rng.uniform(-6, 46, (40, 2))
    wh = np.concatenate([rng.uniform(0, 3.5, (20, 2)), rng.uniform(4, 30, (20, 2))])  # P2: a cell is 4 px
    boxes = np.concatenate([xy, xy + wh], 1)
    for k, box in enumerate(boxes):
        ref = ref_roi_align(fmap, box, 0.25)
        trt = _trt_roi_align(fmap, box + np.array([0, 0, 1, 1]), 0.25)
        small = min((box[2] + 1) * 0.25 - box[0] * 0.25, (box[3] + 1) * 0.25 - box[1] * 0.25) < 1
        if small:
            assert np.abs(trt - ref).max() > 1e-6 or not np.abs(ref).any(), k
        else:
            assert np.abs(trt - ref).max() < 1e-9, k


@pytest.mark.parametrize("field,value,match", [
    ("nms_pre", 0, "nms_pre=0"), ("nms_pre", 4000, "nms_pre=4000.*3840"), ("max_num", 3841, "max_num=3841"),
    ("max_per_img", 5000, "max_per_img=5000"),
])
def test_tensorrt_limits_refused_before_writing(det, tmp_path, field, value, match):
    bad = dataclasses.replace(det.config, **{field: value})
    with pytest.raises(SaiError, match=match):
        check_tensorrt_limits(bad)
    old = det.config
    det.config = bad
    try:
        with pytest.raises(SaiError, match=match):
            export_detector(det, tmp_path / "d.onnx", target="tensorrt")
    finally:
        det.config = old
    assert not (tmp_path / "d.onnx").exists()


def test_official_presets_fit_tensorrt():
    from sai.models.detector_presets import _presets

    names = list(_presets())
    assert len(names) == 8
    for name in names:
        check_tensorrt_limits(preset(name))  # v0.6's nms_pre / max_num 1000 and max_per_img 100 fit


def test_unknown_target_refused(det, tmp_path):
    with pytest.raises(SaiError, match="target must be one of portable, tensorrt"):
        export_detector(det, tmp_path / "d.onnx", target="tensorrt-11")
    assert not (tmp_path / "d.onnx").exists()


def test_trt_blocks_only_for_tensorrt(det, tmp_path):
    with pytest.raises(SaiError, match="trt_blocks='fused' applies to target='tensorrt' only"):
        export_detector(det, tmp_path / "d.onnx", trt_blocks="fused")
    with pytest.raises(SaiError, match="trt_blocks must be one of"):
        export_detector(det, tmp_path / "d.onnx", target="tensorrt", trt_blocks="blocks")
    assert not (tmp_path / "d.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("trt_blocks,block_nodes", [("fused", True), ("per-op", False)])
def test_sparse_tensorrt_target_blocks(tmp_path, trt_blocks, block_nodes):
    """A sparse detector for TensorRT: one sai::SparseBlock node per block the plugin takes (the backbone
    exporter's default, base width 64 so every block qualifies), or the per-op nodes; the head as above."""
    name = "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1"
    sdet = load_detector(preset(name).with_scale((64, 40)), make_checkpoint(name, seed=2, scale=(64, 40)))
    res = export_detector(sdet, tmp_path / "s.onnx", input_shape=(1, 3, 64, 64), target="tensorrt",
                          trt_blocks=trt_blocks)
    m = onnx.load(str(tmp_path / "s.onnx"))
    sai_ops = {n.op_type for n in m.graph.node if n.domain == "sai"}
    assert ("SparseBlock" in sai_ops) == block_nodes and res.metadata["trt_blocks"] == trt_blocks
    assert "Interpolate" in sai_ops or block_nodes
    assert res.op_counts.get("SparseBlock", 0) == sum(n.op_type == "SparseBlock" for n in m.graph.node)
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    assert {n.op_type for n in g.node if n.domain in ("", "ai.onnx")} <= TRT_OPS
    assert all(topk_bound(g, n) <= TRT_MAX_K for n in g.node if n.op_type == "TopK")


@pytest.mark.slow
def test_whole_export_tensorrt_target(det, tmp_path):
    """The R101 detector exported for TensorRT: its structure, then on onnxruntime (the backbone's sai bodies
    attached to a copy) the same detections as the PyTorch detector."""
    from sai.exporter import functions

    path = tmp_path / "det_trt.onnx"
    res = export_detector(det, path, input_shape=(1, 3, 128, 192), target="tensorrt")
    m = onnx.load(str(path))
    assert res.metadata["target"] == "tensorrt" and roi_align_v0.NAME not in res.op_counts
    sai_ops = {n.op_type for n in m.graph.node if n.domain == "sai"}
    assert sai_ops and not m.functions
    assert all(any(a.name == "plugin_namespace" and a.s == b"sai" for a in n.attribute)
               for n in m.graph.node if n.domain == "sai")
    typed = onnx.ModelProto()
    typed.CopyFrom(m)
    functions.attach_functions(typed, DEFAULT_OPSET, "sparse")
    assert_trt_structure(m, frozenset(sai_ops), typed)
    m = typed
    imgs = [np.random.RandomState(3).randint(0, 256, (72, 120, 3)).astype(np.uint8),
            np.random.RandomState(9).randint(0, 256, (90, 52, 3)).astype(np.uint8)]
    inp = preprocessed_inputs(preprocess(imgs, det.config))
    d, lab, n = _session(m).run(None, inp)
    with torch.no_grad():
        td, tl, tn = det(torch.from_numpy(inp["input"]), [tuple(int(v) for v in s) for s in inp["img_shape"]],
                         [float(s) for s in inp["scale_factor"]])
    assert n.tolist() == tn.tolist() and int(n.min()) > 0
    for i in range(2):
        k = int(n[i])
        assert_same_detections(d[i, :k], lab[i, :k], td[i, :k].numpy(), tl[i, :k].numpy())
