"""The detector through the user's path: ``sai convert CKPT --config FILE`` (and the Python ``convert_detector``),
then ``sai.runtime.load(OUT, backend=...).infer(images)`` on torch, onnxruntime (portable) and onnxruntime with
libsai_ort_ops.so's fused blocks, against ``sai.models.detector`` (``load_detector(...).detect``, which runs
without the runtime: its own preprocessing in torch, its own grouping).

Dense detector: the same detections on every backend (label, IoU >= 0.999, boxes within 1e-2 px, scores within
1e-4; tests/test_detector.py's ``assert_same_detections``). Sparse detector: torch exact, onnxruntime at least 90%
of the reference's detections matched by label at IoU >= 0.9 (float rounding flips mask positions at the 0.5
threshold: docs/design.md 9). Tiny detectors (ResNet-18, 32-channel FPN, 64-wide FCs, img_scale (96, 64)) keep
the two exports (about a minute each on 2 idle cores) and sessions to a few minutes in all; the tests that use
them are marked slow.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_detector import assert_same_detections
from test_detector_export import matched_share

from sai.errors import InputError, SaiError
from sai.models.detector import SaiDetector, load_detector
from sai.models.detector import preprocess as model_preprocess
from sai.models.detector_presets import DetectorConfig, read_config_file

pytest.importorskip("onnxruntime")

SCALE = (96, 64)
SPARSE_OPTS = {"grid_prior_interval": 11, "gaussian_kernel": 7, "max_T": 1.0, "decay_alpha": 0.99998,
               "sparse_loss_weight": 0.1, "frozen_stages": 0, "norm_eval": True}

# an official-style config file (mmdetection v0.6 keys), shrunk: parsed as literals by sai convert --config
CONFIG_TEXT = textwrap.dedent("""\
    model = dict(
        type='FasterRCNN',
        backbone=dict(type='SparseResNet', depth=18, out_indices=(0, 1, 2, 3), frozen_stages=0, norm_eval=True,
                      grid_prior_interval=11, gaussian_kernel=7, sparse_loss_weight=0.1,
                      gumbel_cfg=dict(max_T=1.0, decay_alpha=0.99998)),
        neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=32, num_outs=5),
        rpn_head=dict(type='RPNHead', in_channels=32, feat_channels=32, anchor_scales=[8],
                      anchor_ratios=[0.5, 1.0, 2.0], anchor_strides=[4, 8, 16, 32, 64],
                      target_means=[.0, .0, .0, .0], target_stds=[1.0, 1.0, 1.0, 1.0],
                      loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
        bbox_roi_extractor=dict(type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', out_size=7, sample_num=2),
                                out_channels=32, featmap_strides=[4, 8, 16, 32]),
        bbox_head=dict(type='SharedFCBBoxHead', num_fcs=2, in_channels=32, fc_out_channels=64, roi_feat_size=7,
                       num_classes=81, target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2],
                       reg_class_agnostic=False,
                       loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
    test_cfg = dict(
        rpn=dict(nms_across_levels=False, nms_pre=1000, nms_post=1000, max_num=1000, nms_thr=0.7, min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_thr=0.5), max_per_img=100))
    img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
    data = dict(test=dict(img_scale=(96, 64), img_norm_cfg=img_norm_cfg, size_divisor=32, resize_keep_ratio=True))
    """)


def tiny_config(sparse: bool) -> DetectorConfig:
    return DetectorConfig(name=f"tiny_{'sparse' if sparse else 'dense'}", sparse=sparse, depth=18,
                          fpn_in_channels=(64, 128, 256, 512), fpn_out_channels=32, feat_channels=32,
                          fc_out_channels=64, img_scale=SCALE,
                          backbone_options=dict(SPARSE_OPTS) if sparse else {"frozen_stages": 0, "norm_eval": True})


def tiny_checkpoint(cfg: DetectorConfig, seed: int) -> dict:
    """A random official-layout detector whose heads are scaled (from its own outputs on a random image) so that
    images give dozens of detections, and whose mask logits spread over several units (masks neither all on
    nor off, few positions at the threshold)."""
    torch.manual_seed(seed)
    det = SaiDetector(cfg)
    img = torch.randint(0, 256, (72, 120, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    with torch.no_grad():
        meta = model_preprocess(img, cfg)[0]
        feats = det.extract_feat(meta["img"][None])
        cls, reg = det.rpn_head(feats)
        det.rpn_head.rpn_cls.weight.mul_(2.0 / float(torch.cat([c.flatten() for c in cls]).std()))
        cls, reg = det.rpn_head(feats)
        props = det.proposals(cls, reg, 0, meta["img_shape"])
        x = det.roi_features(feats[:4], 0, props[:, :4]).flatten(1)  # the RoIs' own features
        head = det.bbox_head
        for fc in head.shared_fcs:
            x = F.relu(fc(x))
        logits = head.fc_cls(x)  # centred per class, spread 2.5 over the RoIs
        head.fc_cls.weight.mul_(2.5 / float((logits - logits.mean(0)).std()))
        head.fc_cls.bias.copy_(-(head.fc_cls.weight @ x.mean(0)))
        head.fc_cls.weight[0] = 0.0  # the background logit is its bias alone: mostly background, so dozens of
        head.fc_cls.bias[0] = 12.0  # detections per image, not max_per_img
        head.fc_reg.weight.mul_(0.5 / float(head.fc_reg(x).std()))
    sd = {k: v.clone() for k, v in det.state_dict().items() if not k.endswith("num_batches_tracked")}
    g = torch.Generator().manual_seed(seed)
    for k in sd:
        if k.endswith(("_mask.bias", "_offset.bias")):
            sd[k].zero_()
        elif k.endswith("_mask.weight"):
            sd[k] = torch.randn(sd[k].shape, generator=g) * 0.1
        elif k.endswith("_offset.weight"):
            sd[k] = torch.randn(sd[k].shape, generator=g) * 1e-3
    return {"state_dict": sd, "meta": {"mmdet_version": "0.6.0"}}


@pytest.fixture(scope="module")
def images():
    rs = np.random.RandomState(5)
    return [rs.randint(0, 256, (72, 120, 3)).astype(np.uint8), rs.randint(0, 256, (90, 52, 3)).astype(np.uint8),
            rs.randint(0, 256, (70, 118, 3)).astype(np.uint8)]  # the first and last share a padded size


@pytest.fixture(scope="module")
def sparse_out(tmp_path_factory):
    """``sai convert CKPT --config FILE -o OUT`` through the CLI, for the tiny sparse detector."""
    from sai.cli.main import main

    tmp = tmp_path_factory.mktemp("detrt")
    cfg_file = tmp / "tiny_sparse_faster_rcnn.py"
    cfg_file.write_text(CONFIG_TEXT)
    cfg = read_config_file(cfg_file)
    ck = tmp / "sparse.pth"
    torch.save(tiny_checkpoint(cfg, seed=1), ck)
    out = tmp / "out"
    assert main(["convert", str(ck), "--config", str(cfg_file), "-o", str(out), "--quiet"]) == 0
    return cfg, ck, out


@pytest.fixture(scope="module")
def dense_out(tmp_path_factory):
    """The Python API (``convert_detector``) with a ``DetectorConfig``, for the tiny dense detector."""
    from sai.runtime import convert as conv

    tmp = tmp_path_factory.mktemp("detrt_dense")
    cfg = tiny_config(sparse=False)
    ck = tmp / "dense.pth"
    torch.save(tiny_checkpoint(cfg, seed=2), ck)
    with pytest.MonkeyPatch.context() as mp:  # one export instead of two: the tensorrt target is tested above
        mp.setattr(conv, "_tensorrt_detector_target", lambda *a: {"file": None, "reason": "skipped by the test"})
        conv.convert_detector(ck, cfg, tmp / "out")
    return cfg, ck, tmp / "out"


def _reference(cfg, ck, images, threads=2):
    """The sai.models detector's detections, computed on ``threads`` torch threads: the engines under test run
    with threads=2, and an exact comparison needs the same summation order (a thread count another test left
    behind changes float rounding, and a box at a score or NMS boundary then flips)."""
    det = load_detector(cfg, str(ck))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = det.detect(images)
    finally:
        torch.set_num_threads(prev)
    return {k: v.numpy() for k, v in out.items()}


def _library():
    from sai.runtime import ort_ops

    return ort_ops.built_library()[0]


# ----------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_convert_writes_the_detector_outdir(sparse_out):
    from sai.outputs import MARKER_NAME

    cfg, ck, out = sparse_out
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "detector" and m["preset"] == "tiny_sparse_faster_rcnn" and m["arch"] == "sparse_resnet18"
    assert m["preprocessing"]["img_scale"] == [96, 64] and m["preprocessing"]["size_divisor"] == 32
    assert m["preprocessing"]["mean"] == [123.675, 116.28, 103.53] and m["preprocessing"]["to_rgb"] is True
    assert m["preprocessing"]["std"] == [58.395, 57.12, 57.375]
    names = m["classes"]  # mmdetection v0.6 coco_classes(): 80, underscores, this order
    assert len(names) == 80 == len(set(names)) and names[0] == "person" and names[9] == "traffic_light"
    assert names[39] == "bottle" and names[62] == "tv" and names[-1] == "toothbrush"
    assert m["export"]["output_names"] == ["dets", "labels", "num_dets"]
    assert m["checkpoint"]["sha256"] and m["config"]["depth"] == 18
    assert (out / "model.onnx").is_file() and (out / MARKER_NAME).is_file()
    assert set(m["files"]) <= {p.name for p in out.iterdir()}
    if _library() is not None:
        assert m["fused"]["file"] == "model.cpu-fused.onnx" and m["fused"]["blocks"] > 0
    trt = m["export"]["tensorrt_target"]
    assert (trt["file"] == "model.trt.onnx") == (out / "model.trt.onnx").is_file()
    assert trt["file"] or trt["reason"]


@pytest.mark.slow
def test_convert_output_folder_safety(sparse_out, tmp_path):
    """A folder holding a file sai did not write is refused before any work, naming --force."""
    from sai.runtime.convert import convert_detector

    cfg, ck, _ = sparse_out
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SaiError, match="--force"):
        convert_detector(ck, cfg, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_checkpoint_without_heads_is_refused_in_one_line(sparse_out, tmp_path, capsys):
    from sai.cli.main import main

    cfg, ck, _ = sparse_out
    sd = torch.load(ck, weights_only=True)["state_dict"]
    bare = tmp_path / "backbone.pth"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith(("rpn_head.", "bbox_head."))}}, bare)
    assert main(["convert", str(bare), "--preset", "resnet_101_faster_rcnn_res800", "-o", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert "no detector heads" in err and "--preset" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_unknown_preset_and_backbone_options_are_refused(sparse_out, tmp_path, capsys):
    from sai.cli.main import main

    _, ck, _ = sparse_out
    assert main(["convert", str(ck), "--preset", "faster_rcnn_nope", "-o", str(tmp_path / "o")]) != 0
    assert "valid presets" in capsys.readouterr().err
    assert main(["convert", str(ck), "--preset", "resnet_101_faster_rcnn_res800", "--precision", "fp16",
                 "-o", str(tmp_path / "o")]) != 0
    assert "do not apply to a detector" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------
# the runtime against sai.models.detector
# ----------------------------------------------------------------------------------------------


def test_runtime_preprocessing_is_the_models(images):
    """The runtime's numpy pipeline against sai.models.detector.preprocess (torch): same sizes, img_shape and
    scale factor; pixels equal but for float rounding at the uint8 rounding boundary (a few at most)."""
    from sai.runtime.detector_engine import check_preprocessing, preprocess

    cfg = tiny_config(True)
    pre = check_preprocessing({"img_scale": list(cfg.img_scale), "mean": list(cfg.mean), "std": list(cfg.std),
                               "to_rgb": True, "size_divisor": 32}, "test")
    for img in images + [np.random.RandomState(0).randint(0, 256, (31, 200, 3)).astype(np.uint8)]:
        ours, ref = preprocess(img, pre)[0], model_preprocess(img, cfg)[0]
        assert ours["img_shape"] == ref["img_shape"] and ours["scale_factor"] == ref["scale_factor"]
        diff = np.abs(ours["img"] - ref["img"].numpy())
        assert ours["img"].shape == tuple(ref["img"].shape)
        assert (diff > 1e-5).sum() <= 3 and diff.max() < 1.1 / 57.0, diff.max()


@pytest.mark.slow
@pytest.mark.parametrize("backend,fused", [("torch", None), ("onnxruntime", False), ("onnxruntime", True)])
def test_dense_detector_is_exact_on_every_backend(dense_out, images, backend, fused):
    import sai.runtime as rt

    cfg, ck, out = dense_out
    if fused and _library() is None:
        pytest.skip("libsai_ort_ops.so is not built")
    opts = {} if fused is None else {"fused": fused}
    if fused and not json.loads((out / "manifest.json").read_text())["fused"]["file"]:
        with pytest.raises(SaiError, match="fused=False"):
            rt.load(out, backend=backend, **opts)
        return
    ref = _reference(cfg, ck, images)
    with rt.load(out, backend=backend, threads=2, **opts) as eng:
        got = eng.infer(images)
    assert got["dets"].shape == (3, 100, 5) and got["labels"].dtype == np.int64
    assert got["num_dets"].tolist() == ref["num_dets"].tolist() and ref["num_dets"].min() >= 10
    for i, n in enumerate(ref["num_dets"]):
        assert_same_detections(got["dets"][i, :n], got["labels"][i, :n], ref["dets"][i, :n], ref["labels"][i, :n])
        assert not got["dets"][i, n:].any() and (got["labels"][i, n:] == -1).all()
        # original image coordinates: every box inside the image it came from
        h, w = images[i].shape[:2]
        assert (got["dets"][i, :n, 2] <= w).all() and (got["dets"][i, :n, 3] <= h).all()


@pytest.mark.slow
@pytest.mark.parametrize("backend,fused", [("torch", None), ("onnxruntime", False), ("onnxruntime", True)])
def test_sparse_detector_matches_on_every_backend(sparse_out, images, backend, fused):
    import sai.runtime as rt

    cfg, ck, out = sparse_out
    if fused and _library() is None:
        pytest.skip("libsai_ort_ops.so is not built")
    ref = _reference(cfg, ck, images)
    with rt.load(out, backend=backend, threads=2, **({} if fused is None else {"fused": fused})) as eng:
        assert eng.variant == {None: "sai-kernels", False: "portable", True: "fused"}[fused]
        got = eng.infer(images)
    assert ref["num_dets"].min() >= 10
    for i, n in enumerate(ref["num_dets"]):
        k = int(got["num_dets"][i])
        if backend == "torch":  # the same code on the same input: exact
            assert k == n
            assert_same_detections(got["dets"][i, :k], got["labels"][i, :k], ref["dets"][i, :n], ref["labels"][i, :n])
        else:
            share = matched_share(got["dets"][i, :k], got["labels"][i, :k], ref["dets"][i, :n], ref["labels"][i, :n])
            assert share >= 0.9, f"image {i}: {share:.0%} of {n} detections matched"


@pytest.mark.slow
def test_layouts_batches_and_lists_agree(sparse_out, images):
    """An NHWC batch, the same batch as NCHW, a list and one image alone give the same detections."""
    import sai.runtime as rt

    _, _, out = sparse_out
    with rt.load(out, backend="onnxruntime", threads=2) as eng:
        pair = np.stack([images[0], images[0][::-1].copy()])
        nhwc = eng.infer(pair)
        nchw = eng.infer(pair.transpose(0, 3, 1, 2))
        lst = eng.infer([pair[0], pair[1]])
        one = eng.infer(pair[1])
    for o in (nchw, lst):
        assert np.array_equal(o["num_dets"], nhwc["num_dets"]) and np.allclose(o["dets"], nhwc["dets"], atol=1e-4)
    n = int(one["num_dets"][0])
    assert n == int(nhwc["num_dets"][1])
    assert_same_detections(one["dets"][0, :n], one["labels"][0, :n], nhwc["dets"][1, :n], nhwc["labels"][1, :n])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 5), np.uint8), "rank"),
    (np.zeros((40, 50, 3), np.float32), "uint8"),
    (np.zeros((40, 50, 4), np.uint8), "3 channels"),
    (np.zeros((0, 50, 3), np.uint8), "zero size"),
    (np.zeros((0, 40, 50, 3), np.uint8), "no images"),
    ([], "no images"),
    ("image.jpg", "numpy arrays"),
])
@pytest.mark.slow
def test_bad_images_get_one_line(sparse_out, bad, match):
    import sai.runtime as rt

    _, _, out = sparse_out
    with rt.load(out, backend="torch") as eng:
        with pytest.raises(InputError, match=match) as exc:
            eng.infer(bad)
    assert len(str(exc.value).splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# sai validate on a detector
# ----------------------------------------------------------------------------------------------


def test_match_detections_by_label_and_iou():
    """Hand-made boxes with known IoUs (v0.6's +1 convention): a shifted box of IoU 0.81 does not match at 0.9,
    a box of another label never does, the matched pair's errors are the ones put in."""
    from sai.runtime.validate import match_detections

    ref = np.array([[0, 0, 9, 9, 0.9], [20, 20, 29, 29, 0.8], [40, 40, 49, 49, 0.7]], np.float32)
    ref_lab = np.array([1, 2, 3])
    got = np.array([[0, 0, 9, 9.25, 0.89], [21, 20, 30, 29, 0.8], [40, 40, 49, 49, 0.7]], np.float32)
    m = match_detections(got, np.array([1, 2, 4]), ref, ref_lab)
    # box 2 shifted by 1 px: inter 9 x 10 = 90, union 200 - 90 = 110 -> IoU 0.818 < 0.9; box 3: other label
    assert m["matched"] == 1 and m["reference"] == 3 and abs(m["share"] - 1 / 3) < 1e-9
    assert abs(m["max_box_err"] - 0.25) < 1e-6 and abs(m["max_score_err"] - 0.01) < 1e-6
    assert match_detections(got, np.array([1, 2, 4]), ref, ref_lab, iou=0.8)["matched"] == 2
    assert match_detections(got[:0], ref_lab[:0], ref[:0], ref_lab[:0])["share"] == 1.0
    assert match_detections(got[:0], ref_lab[:0], ref, ref_lab)["share"] == 0.0


class _FakeDetector:
    """A stand-in engine for validate_detector's own logic: fixed outputs and masks."""

    def __init__(self, dets, labels, masks, sampling="deterministic"):
        self.out = {"dets": dets, "labels": labels, "num_dets": np.array([len(labels[0])]), **masks}
        self.metadata = {"sampling": sampling}

    def run_batch(self, feeds):
        return dict(self.out)


def test_validate_detector_fails_on_moved_boxes_and_warns_on_dense_masks():
    from sai.runtime.validate import validate_detector

    dets = np.array([[[0, 0, 9, 9, 0.9], [20, 20, 29, 29, 0.8]]], np.float32)
    lab = np.array([[1, 2]])
    ones = {"mask.layer1.0.m1": np.ones((1, 1, 4, 4), np.float32), "mask.layer1.0.m2": np.ones((1, 1, 4, 4))}
    moved = dets.copy()
    moved[0, 1, :4] += 2
    feeds = [{"input": np.zeros((1, 3, 32, 32), np.float32)}]
    ok = validate_detector({"a": _FakeDetector(dets, lab, ones), "b": _FakeDetector(dets, lab, ones)}, feeds)
    assert ok.passed and ok.images[0]["share"] == 1.0 and any("dense" in w for w in ok.warnings)
    assert [m["agreement"] for m in ok.masks] == [1.0, 1.0]
    bad = validate_detector({"a": _FakeDetector(dets, lab, ones), "b": _FakeDetector(moved, lab, ones)}, feeds)
    assert not bad.passed and bad.images[0]["share"] == 0.5 and "FAIL a vs b" in bad.text()


@pytest.mark.slow
def test_sai_validate_compares_detector_runtimes(sparse_out, tmp_path, capsys):
    """torch vs onnxruntime (portable, masks recorded) vs onnxruntime with the fused blocks, on random images."""
    from sai.cli.main import main

    _, _, out = sparse_out
    report = tmp_path / "report.json"
    rc = main(["validate", str(out), "--iterations", "1", "--batch", "2", "--threads", "2", "--report", str(report)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rep = json.loads(report.read_text())
    assert rep["kind"] == "detector" and rep["backends"][:2] == ["torch", "onnxruntime"]
    assert rep["images"] and all(r["share"] >= 0.9 for r in rep["images"])
    assert sum(r["reference"] for r in rep["images"] if r["pair"] == "torch vs onnxruntime") >= 10
    # one agreement per padded batch, sparse block and mask (ResNet-18: 8 blocks x m1, m2), from both sides' masks
    tm = [m for m in rep["masks"] if m["pair"] == "torch vs onnxruntime"]
    assert len({m["mask"] for m in tm}) == 16 and min(m["agreement"] for m in tm) > 0.9
    assert 0.05 < rep["densities"]["exported"]["mean"][0] < 0.95 and not rep["warnings"]
    assert "detections matched" in text and "validate: PASSED" in text


@pytest.mark.slow
def test_sai_validate_detector_on_images_and_saved_inputs(sparse_out, tmp_path, capsys):
    from PIL import Image
    from polygraphy.json import save_json

    import sai.runtime as rt
    from sai.cli.main import main

    _, _, out = sparse_out
    folder = tmp_path / "imgs"
    folder.mkdir()
    rs = np.random.RandomState(11)
    for i, hw in enumerate([(60, 100), (90, 64)]):
        Image.fromarray(rs.randint(0, 256, (*hw, 3)).astype(np.uint8)).save(folder / f"{i}.png")
    rc = main(["validate", str(out), "--backends", "torch,onnxruntime", "--images", str(folder), "--no-masks"])
    text = capsys.readouterr().out
    assert rc == 0 and "validate (detector): torch vs onnxruntime" in text and "[[1, 3, 64, 96], [1, 3, 96, 64]]" in text
    with rt.load(out, backend="onnxruntime", fused=False) as eng:
        feeds = [f for _, f in eng.batches([rs.randint(0, 256, (50, 80, 3)).astype(np.uint8)])]
    save_json(feeds, str(tmp_path / "in.json"))
    rc = main(["validate", str(out), "--backends", "torch,onnxruntime", "--load-inputs", str(tmp_path / "in.json")])
    assert rc == 0, capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps([{"input": [[1.0]]}]))
    assert main(["validate", str(out), "--backends", "torch,onnxruntime", "--load-inputs",
                 str(tmp_path / "bad.json")]) != 0
    assert "img_shape" in capsys.readouterr().err


@pytest.mark.slow
def test_sai_bench_detector_compare_dense(sparse_out, capsys):
    """End-to-end percentiles of the sparse detector and its dense twin (torch), the backbone's share of each."""
    from sai.cli.main import main

    _, _, out = sparse_out
    rc = main(["bench", str(out), "--backend", "torch", "--threads", "2", "--iterations", "2", "--warmup", "0",
               "--batch", "1", "--compare-dense", "--json", "--quiet"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["kind"] == "detector" and len(rep["results"]) == 2
    sparse, dense = rep["results"]
    assert sparse["variant"] == "sai-kernels" and dense["variant"] == "dense-twin"
    for r in (sparse, dense):
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and 0.0 < r["backbone_share"] < 1.0
    assert rep["sparse_over_dense_p50"] == pytest.approx(sparse["p50_ms"] / dense["p50_ms"])


@pytest.mark.slow
def test_stochastic_detector_same_noise_same_detections(tmp_path):
    """Stochastic sampling: the noise inputs are drawn once per batch and given to every runtime, which then agree
    (torch, portable onnxruntime, fused onnxruntime); the same seed reproduces a run."""
    import sai.runtime as rt
    from sai.runtime import convert as conv
    from sai.runtime.loader import read_manifest
    from sai.runtime.validate import detector_image_feeds, load_detector_backends, validate_detector

    cfg = tiny_config(sparse=True)
    torch.save(tiny_checkpoint(cfg, seed=1), tmp_path / "st.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv, "_tensorrt_detector_target", lambda *a: {"file": None, "reason": "skipped by the test"})
        conv.convert_detector(tmp_path / "st.pth", cfg, tmp_path / "out", sampling="stochastic")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["export"]["sampling"] == "stochastic" and manifest["metadata"]["noise_inputs"]
    engines, _ = load_detector_backends(tmp_path / "out", manifest, ["auto"], threads=2)
    try:
        img = np.random.RandomState(3).randint(0, 256, (70, 110, 3)).astype(np.uint8)
        feeds = detector_image_feeds(engines["torch"], [img])
        assert any(k.startswith("noise.") for k in feeds[0])
        rep = validate_detector(engines, feeds)
        assert rep.passed and rep.images[0]["reference"] > 0
        assert all(r["share"] == 1.0 and r["max_box_err"] < 1e-2 for r in rep.images)
    finally:
        for e in engines.values():
            e.close()
    with rt.load(tmp_path / "out", backend="torch", seed=0) as a, rt.load(tmp_path / "out", backend="torch",
                                                                          seed=0) as b:
        assert np.array_equal(a.infer(img)["dets"], b.infer(img)["dets"])  # a seed reproduces a run
