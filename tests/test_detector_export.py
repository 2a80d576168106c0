"""The whole detector as one ONNX graph (sai.exporter.detector_export) on onnxruntime, against the PyTorch
detector on identical inputs (the padded batch, img_shape, scale_factor), and sai::RoiAlignV0 against the
float64 RoIAlign written from the official kernel (tests/test_detector.py: ref_roi_align).

Dense config: the same detections (label, IoU >= 0.999, boxes within 1e-2 px, scores within 1e-4). Sparse
config: at least 90% of the PyTorch detections matched by label at IoU >= 0.9, on the portable model and
with libsai_ort_ops.so's fused blocks. Random-initialised official-layout R101 detectors at a small scale.
Marked slow: each R101 export takes about 2 minutes here and onnxruntime about 1-2 minutes to optimise
the portable graph; the RoiAlignV0 and bad-input tests take seconds.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_detector import SCALE, assert_same_detections, iou, make_checkpoint, ref_roi_align

from sai.errors import SaiError
from sai.exporter.detector_export import export_detector, preprocessed_inputs
from sai.exporter.functions import roi_align_v0
from sai.models.detector import load_detector, preprocess
from sai.models.detector_presets import preset

ort = pytest.importorskip("onnxruntime")

DENSE = "resnet_101_faster_rcnn_res500"
SPARSE = "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1"
SPARSE_SCALE = (64, 40)


def _session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so)


def _torch_run(det, feeds):
    with torch.no_grad():
        d, lab, n = det(torch.from_numpy(feeds["input"]), [tuple(int(v) for v in s) for s in feeds["img_shape"]],
                        [float(s) for s in feeds["scale_factor"]])
    return d.numpy(), lab.numpy(), n.numpy()


def _padded(feeds, hp, wp):
    """The batch zero-padded further to hp x wp (still identical inputs for both sides)."""
    x = np.zeros((feeds["input"].shape[0], 3, hp, wp), np.float32)
    x[:, :, :feeds["input"].shape[2], :feeds["input"].shape[3]] = feeds["input"]
    return dict(feeds, input=x)


def matched_share(dets, labels, ref_dets, ref_labels, thr=0.9) -> float:
    """Share of the reference detections matched one to one by label and IoU >= thr."""
    if len(ref_dets) == 0:
        return 1.0 if len(dets) == 0 else 0.0
    used, hit = set(), 0
    for rd, rl in zip(ref_dets, ref_labels, strict=True):
        best = max(((iou(dets[j], rd), j) for j in range(len(dets)) if j not in used and labels[j] == rl),
                   default=(0.0, -1))
        if best[0] >= thr:
            used.add(best[1])
            hit += 1
    return hit / len(ref_dets)


@pytest.fixture(scope="module")
def images():
    return [np.random.RandomState(3).randint(0, 256, (72, 120, 3)).astype(np.uint8),
            np.random.RandomState(9).randint(0, 256, (90, 52, 3)).astype(np.uint8)]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    det = load_detector(preset(DENSE).with_scale(SCALE), make_checkpoint(DENSE))
    path = tmp_path_factory.mktemp("det") / "dense.onnx"
    res = export_detector(det, path, input_shape=(1, 3, 128, 192))
    return det, path, res, _session(path)  # one session: onnxruntime takes a minute to optimise the graph


@pytest.fixture(scope="module")
def dense_out(dense, images):
    """Both images (different sizes), padded to 224 x 256 (P2 then has 56 * 64 * 3 = 10752 > 5000 anchors)."""
    det, _, _, sess = dense
    feeds = _padded(preprocessed_inputs(preprocess(images, det.config)), 224, 256)
    return feeds, sess.run(None, feeds), _torch_run(det, feeds)


@pytest.mark.slow
def test_graph_is_one_portable_model(dense):
    _, path, res, _ = dense
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"NonMaxSuppression", "TopK", "Gemm"} <= ops
    assert res.op_counts[roi_align_v0.NAME] == 4 and res.op_counts["SparseSampleConv"] > 0
    assert {(f.domain, f.name) for f in model.functions} >= {("sai", "RoiAlignV0"), ("sai", "SparseSampleConv")}
    assert [o.name for o in model.graph.output] == ["dets", "labels", "num_dets"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims[0][0] == "batch" and all(isinstance(v, str) for v in dims[0][2:])  # dynamic batch and size


@pytest.mark.slow
def test_dense_batch_of_two_sizes_matches_torch(dense_out):
    feeds, (d, lab, n), (td, tl, tn) = dense_out
    assert feeds["input"].shape == (2, 3, 224, 256) and tuple(feeds["img_shape"][0]) != tuple(feeds["img_shape"][1])
    assert d.shape == (2, 100, 5) and lab.shape == (2, 100) and n.shape == (2,)
    assert n.tolist() == tn.tolist() and int(n.min()) >= 24, "dozens of detections per image"
    for i in range(2):
        k = int(n[i])
        assert_same_detections(d[i, :k], lab[i, :k], td[i, :k], tl[i, :k])
        assert not d[i, k:].any() and (lab[i, k:] == -1).all()
        assert (d[i, :k - 1, 4] >= d[i, 1:k, 4]).all()
    assert np.isfinite(d).all()


@pytest.mark.slow
def test_dense_single_image_at_its_own_size(dense, images):
    """Batch 1 at another size than traced (dynamic H, W)."""
    det, _, _, sess = dense
    feeds = preprocessed_inputs(preprocess(images[1:], det.config))
    d, lab, n = sess.run(None, feeds)
    td, tl, tn = _torch_run(det, feeds)
    assert int(n[0]) == int(tn[0]) > 0
    assert_same_detections(d[0, :n[0]], lab[0, :n[0]], td[0, :tn[0]], tl[0, :tn[0]])


@pytest.mark.slow
def test_zero_detections(dense, images):
    """The same model with fc_cls's background bias at 100: every RoI is background, no detection."""
    det, path, _, _ = dense
    model = onnx.load(str(path))
    bias = det.bbox_head.fc_cls.bias.detach().numpy()
    hits = [t for t in model.graph.initializer if tuple(t.dims) == bias.shape
            and np.array_equal(numpy_helper.to_array(t), bias)]
    assert len(hits) == 1
    new = bias.copy()
    new[0] = 100.0
    hits[0].CopyFrom(numpy_helper.from_array(new, hits[0].name))
    feeds = preprocessed_inputs(preprocess(images[:1], det.config))
    d, lab, n = _session(model.SerializeToString()).run(None, feeds)
    assert n.tolist() == [0] and d.shape == (1, 100, 5) and not d.any() and (lab == -1).all()


def _roi_model(opset=21):
    node = helper.make_node(roi_align_v0.NAME, ["X", "rois", "b"], ["Y"], domain="sai", spatial_scale=0.25,
                            output_size=7, sampling_ratio=2)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", "c", "h", "w"]),
                                        helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["r", 4]),
                                        helper.make_tensor_value_info("b", TensorProto.INT64, ["r"])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["r", "c", 7, 7])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("sai", 1)],
                          functions=[roi_align_v0.function(opset)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    return m


def test_roi_align_v0_is_v06_for_rois_under_4_px():
    """RoIs of 0..3 px (under one P2 cell), at the borders and outside, and larger ones: the function body
    against the float64 reference; the standard RoiAlign alone differs on the small ones."""
    rng = np.random.RandomState(0)
    x = rng.randn(2, 5, 9, 11).astype(np.float32)
    xy = rng.uniform(-6, 46, (60, 2))
    wh = np.concatenate([rng.uniform(0, 3.5, (30, 2)), rng.uniform(4, 30, (30, 2))])
    rois = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    rois[:4] = [[0, 0, 0, 0], [43, 35, 43, 35], [-3, -3, -2, -2], [10, 10, 10.5, 30]]  # points, corners, a line
    b = rng.randint(0, 2, len(rois)).astype(np.int64)
    sess = _session(_roi_model().SerializeToString())
    got = sess.run(None, {"X": x, "rois": rois, "b": b})[0]
    ref = np.stack([ref_roi_align(x[bi].astype(np.float64), rois[k].astype(np.float64), 0.25)
                    for k, bi in enumerate(b)])
    err = np.abs(got - ref).max()
    assert err < 1e-5, err
    # the case exists: ONNX RoiAlign on the +1-shifted boxes alone is off on the small RoIs
    node = helper.make_node("RoiAlign", ["X", "rois", "b"], ["Y"], spatial_scale=0.25, output_height=7,
                            output_width=7, sampling_ratio=2, coordinate_transformation_mode="output_half_pixel")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, None) for n, t in
                                        (("X", TensorProto.FLOAT), ("rois", TensorProto.FLOAT), ("b", TensorProto.INT64))],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    plain_model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    plain_model.ir_version = 10
    std = _session(plain_model.SerializeToString())
    plain = std.run(None, {"X": x, "rois": rois + np.float32([0, 0, 1, 1]), "b": b})[0]
    assert np.abs(plain[:30] - ref[:30]).max() > 1e-2
    assert np.abs(plain[30:] - ref[30:]).max() < 1e-5
    # no RoI, and no small RoI
    assert sess.run(None, {"X": x, "rois": rois[:0], "b": b[:0]})[0].shape == (0, 5, 7, 7)
    big = sess.run(None, {"X": x, "rois": rois[30:], "b": b[30:]})[0]
    assert np.abs(big - ref[30:]).max() < 1e-5


def test_export_refuses_what_is_not_a_detector(tmp_path):
    with pytest.raises(SaiError, match="SaiDetector"):
        export_detector(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def sparse(tmp_path_factory, images):
    """A sparse detector whose mask logits spread over several units: make_checkpoint's masks (weights of
    1e-3) put nearly every logit at the threshold, where float rounding alone flips them (13% of image 0's
    detections matched with those, the masks' rounding travelling through 33 blocks at this tiny size)."""
    cfg = preset(SPARSE).with_scale(SPARSE_SCALE)
    ckpt = make_checkpoint(SPARSE, seed=2, scale=SPARSE_SCALE)
    for k, v in ckpt["state_dict"].items():
        if k.endswith("_mask.weight"):
            v.mul_(100.0)
    det = load_detector(cfg, ckpt)
    with torch.no_grad():
        det.extract_feat(preprocess(images[0], cfg)[0]["img"][None])
    assert 0.1 < np.mean([d for d, _ in det.backbone.densities().values()]) < 0.9  # masks neither all on nor off
    path = tmp_path_factory.mktemp("det") / "sparse.onnx"
    export_detector(det, path, input_shape=(1, 3, 64, 64))
    feeds = preprocessed_inputs(preprocess(images, det.config))
    return det, path, feeds, _torch_run(det, feeds)


def _assert_matched(out, ref, share=0.9):
    d, lab, n = out
    td, tl, tn = ref
    assert int(tn.min()) > 0
    for i in range(len(tn)):
        s = matched_share(d[i, :n[i]], lab[i, :n[i]], td[i, :tn[i]], tl[i, :tn[i]])
        assert s >= share, f"image {i}: {s:.2%} of {int(tn[i])} detections matched"


@pytest.mark.slow
def test_sparse_portable_matches_torch(sparse):
    det, path, feeds, ref = sparse
    _assert_matched(_session(path).run(None, feeds), ref)


@pytest.mark.slow
def test_sparse_with_fused_blocks_matches_torch(sparse):
    """libsai_ort_ops.so with the backbone's sparse blocks fused (sai.runtime.ort_fuse), as sai.runtime runs it."""
    from sai.runtime import ort_ops

    lib, why = ort_ops.built_library()
    if lib is None:
        pytest.skip(f"libsai_ort_ops.so is not built: {why}")
    det, path, feeds, ref = sparse
    model, fused, why_not = ort_ops.fused_model(str(path))
    assert fused > 0, why_not
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.register_custom_ops_library(str(lib))
    _assert_matched(ort.InferenceSession(model, so).run(None, feeds), ref)
