"""Images in, labels out: the recorded preprocessing and class names, applied to raw uint8 images.

References: the shipped demo checkpoint's own meta and the training code's normalisation
(``sai.models.demo_data.normalize``), the formula in float64, numpy's argsort, the held-out labels.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sai.runtime as rt
from sai.errors import SaiError
from sai.exporter.metadata import read_metadata
from sai.models import checkpoint_meta as metadata
from sai.models import demo_data, model_from_checkpoint
from sai.runtime import labels as labels_mod
from sai.runtime import preprocess as pre

ZOO = Path(demo_data.__file__).parent / "zoo" / "sai_demo_r18"
DEMO = ZOO / "sparse_resnet18.pth"


def _ck_meta() -> dict:
    return torch.load(DEMO, map_location="cpu", weights_only=True)["meta"]


@pytest.fixture(scope="module")
def demo_outdir(tmp_path_factory):
    from runtime_helpers import demo_outdir

    return demo_outdir(tmp_path_factory)


@pytest.fixture(scope="module")
def engines(demo_outdir):
    with rt.load(demo_outdir, backend="onnxruntime", threads=1) as ort_e, rt.load(demo_outdir, backend="torch") as t_e:
        yield {"onnxruntime": ort_e, "torch": t_e}


@pytest.fixture(scope="module")
def test_images():
    images, labels = demo_data.make_split(0, "test", 16)  # uint8 [N,3,64,64], as the model was evaluated on
    return images.numpy(), labels.numpy()


# ---- the record, against the checkpoint --------------------------------------------------------


def test_record_matches_the_demo_checkpoint():
    ck = _ck_meta()
    norm = metadata.input_norm_from_checkpoint(ck)
    assert norm["source"] == "checkpoint" and norm["color"] == ck["input"]["channels"] == "RGB"
    assert norm["layout"] == ck["input"]["layout"] == "NCHW"
    assert norm["scale"] == pytest.approx(1 / 255) and norm["mean"] == list(demo_data.MEAN) == [0.5] * 3
    assert norm["std"] == list(demo_data.STD) == [0.25] * 3
    assert metadata.classes_from_checkpoint(ck, 10) == list(demo_data.CLASSES)
    assert metadata.classes_from_checkpoint(ck, 9) is None  # not one name per logit: no labels
    assert metadata.checkpoint_meta(str(DEMO))["input"] == ck["input"]


def test_onnx_manifest_and_info_record_the_checkpoint_preprocessing(demo_outdir):
    import onnx

    from sai.cli.info import describe

    ck = _ck_meta()
    man = json.loads((demo_outdir / "manifest.json").read_text())
    for meta in (read_metadata(onnx.load(str(demo_outdir / "model.onnx"))), man["metadata"],
                 describe(str(demo_outdir / "model.onnx"))["metadata"]):
        n = meta["input_norm"]
        assert n["source"] == "checkpoint" and n["mean"] == ck["input"]["mean"] and n["std"] == ck["input"]["std"]
        assert n["scale"] == pytest.approx(ck["input"]["scale"]) and n["color"] == "RGB"
        assert meta["classes"] == ck["classes"]
    from sai.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["info", str(demo_outdir)]) == 0
    text = buf.getvalue()
    assert "x = (pixel * 0.00392157 - mean [0.5, 0.5, 0.5]) / std [0.25, 0.25, 0.25]" in text
    assert "from the checkpoint" in text and "123.675" not in text
    assert "classes     10: circle, ring, square" in text


def test_mmdetection_config_and_default_records():
    cfg = "img_norm_cfg = dict(\n    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)\n"
    n = metadata.input_norm_from_checkpoint({"config": cfg, "CLASSES": ["a", "b"]})
    assert n["source"] == "mmdetection config" and n["mean"] == [123.675, 116.28, 103.53] and n["scale"] == 1.0
    bgr = metadata.input_norm_from_checkpoint({"config": cfg.replace("True", "False")})
    assert bgr["color"] == "BGR"
    assert metadata.input_norm_from_checkpoint({})["source"] == "assumed"
    assert metadata.classes_from_checkpoint({"CLASSES": ["a", "b"]}, 2) == ["a", "b"]
    with pytest.raises(SaiError, match="std must not be 0"):
        metadata.canonical_input_norm({"mean": [0, 0, 0], "std": [1, 0, 1]}, "given")
    with pytest.raises(SaiError, match="3 finite numbers"):
        metadata.canonical_input_norm({"mean": [0, 0], "std": 1}, "given")


# ---- preprocessing -----------------------------------------------------------------------------


def test_pixel_table_is_the_formula_correctly_rounded():
    norm = metadata.input_norm_from_checkpoint(_ck_meta())
    table = pre.pixel_table(norm, 3)
    v = np.arange(256, dtype=np.float64)
    for c in range(3):
        want = ((v * (1 / 255) - norm["mean"][c]) / norm["std"][c]).astype(np.float32)
        np.testing.assert_array_equal(table[c], want)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (3, 3, 33, 47)])
def test_preprocess_matches_the_training_normalisation(layout, shape):
    norm = metadata.input_norm_from_checkpoint(_ck_meta())
    x = np.random.default_rng(sum(shape)).integers(0, 256, shape).astype(np.uint8)
    ref = demo_data.normalize(torch.from_numpy(x)).numpy()  # what the model was trained on
    given = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got = pre.preprocess(given, norm, 3)  # layout told by the channel dim
    assert got.shape == x.shape and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pre.preprocess(given, norm, 3, layout=layout), got)
    bgr = given[:, ::-1] if layout == "NCHW" else given[..., ::-1]
    np.testing.assert_array_equal(pre.preprocess(bgr, norm, 3, color="BGR"), got)


def test_preprocess_errors_name_the_fix():
    norm = metadata.input_norm_from_checkpoint(_ck_meta())
    with pytest.raises(rt.InputError, match=r"add a batch axis"):
        pre.preprocess(np.zeros((64, 64, 3), np.uint8), norm, 3)
    with pytest.raises(rt.InputError, match="neither at dim 1"):
        pre.preprocess(np.zeros((1, 4, 64, 64), np.uint8), norm, 3)
    with pytest.raises(rt.InputError, match="not NHWC"):
        pre.preprocess(np.zeros((1, 3, 64, 64), np.uint8), norm, 3, layout="NHWC")
    with pytest.raises(SaiError, match="layout must be"):
        pre.preprocess(np.zeros((1, 3, 64, 64), np.uint8), norm, 3, layout="HWC")
    with pytest.raises(SaiError, match="color must be"):
        pre.preprocess(np.zeros((1, 3, 64, 64), np.uint8), norm, 3, color="YUV")
    # ambiguous (3 at dims 1 and 3): the recorded layout
    assert pre.image_layout((2, 3, 40, 3), 3) == "NCHW"
    assert pre.usable_norm(metadata.DEFAULT_INPUT_NORM) is None  # assumed: never applied to raw pixels
    legacy = {k: v for k, v in metadata.DEFAULT_INPUT_NORM.items() if k != "source"}
    assert pre.usable_norm(legacy) is None and "re-run sai convert" in pre.why_not_applied(legacy)


# ---- engines: uint8 in, labels out ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_uint8_images_give_the_logits_of_the_normalised_input(engines, test_images, backend):
    e = engines[backend]
    images, _ = test_images
    x = images[:4]
    ref = e.infer(demo_data.normalize(torch.from_numpy(x)).numpy())["logits"]  # float input: unchanged path
    np.testing.assert_allclose(e.infer(x)["logits"], ref, rtol=1e-4, atol=1e-4)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(e.infer(nhwc)["logits"], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e.infer({"input": torch.from_numpy(nhwc)})["logits"], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e.infer_async(nhwc, layout="NHWC").result(timeout=60)["logits"], ref,
                               rtol=1e-4, atol=1e-4)
    # a float NHWC batch that is already normalised: layout="NHWC" transposes it, nothing else
    xf = demo_data.normalize(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(e.infer(np.ascontiguousarray(xf.transpose(0, 2, 3, 1)), layout="NHWC")["logits"],
                               ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_classify_names_the_right_classes(engines, test_images, backend):
    e = engines[backend]
    images, truth = test_images
    assert e.labels == list(demo_data.CLASSES) and e.describe()["labels"] == e.labels
    assert e.describe()["input_norm"]["source"] == "checkpoint"
    preds = e.classify(images, k=3)
    assert len(preds) == len(images) and all(len(p) == 3 for p in preds)
    correct = sum(p[0].index == int(t) and p[0].label == demo_data.CLASSES[int(t)] for p, t in zip(preds, truth, strict=True))
    assert correct >= len(images) - 1, correct  # the model is 98.4% accurate on this split
    logits = e.infer(images)["logits"]
    np.testing.assert_array_equal([[q.index for q in p] for p in preds], np.argsort(-logits, axis=1)[:, :3])
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    assert preds[0][0].score == pytest.approx(prob[0].max(), rel=1e-6)


def test_int_and_bool_images_still_rejected_with_the_fix(engines):
    e = engines["onnxruntime"]
    x = np.zeros((1, 3, 64, 64), np.int64)
    with pytest.raises(rt.InputError, match="has dtype int64, but the model takes float32; pass images as uint8"):
        e.infer(x)
    with pytest.raises(rt.InputError, match="has dtype bool"):
        e.infer(x.astype(bool))


def test_tiny_model_without_recorded_preprocessing_refuses_pixels(tmp_path):
    from runtime_helpers import tiny_model

    from sai.models import save_checkpoint

    ck = save_checkpoint(tiny_model(), tmp_path / "m.pth")  # records no preprocessing, no classes
    with rt.load(ck) as e:
        assert e.labels is None and e.input_norm is None
        with pytest.raises(rt.InputError, match=r"raw pixels are not accepted: its checkpoint records no prep"):
            e.infer(np.zeros((1, 3, 32, 32), np.uint8))
        preds = e.classify(np.zeros((2, 3, 32, 32), np.float32), k=2)
        assert [p.label for p in preds[0]] == [None, None]
    norm = {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}
    ck2 = save_checkpoint(tiny_model(), tmp_path / "m2.pth", input=norm, classes=[f"c{i}" for i in range(10)])
    with rt.load(ck2) as e:
        assert e.input_norm["source"] == "checkpoint" and e.labels[3] == "c3"
        x = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32)).astype(np.uint8)
        np.testing.assert_allclose(e.infer(x)["logits"], e.infer(demo_data.normalize(torch.from_numpy(x)).numpy())[
            "logits"], rtol=1e-4, atol=1e-4)


def test_model_without_a_classifier_cannot_classify(tmp_path):
    from sai.models import build_model, save_checkpoint

    ck = save_checkpoint(build_model("sparse_resnet18", base_width=8, head="none"), tmp_path / "b.pth")
    with rt.load(ck) as e, pytest.raises(SaiError, match="classify needs a classifier output"):
        e.classify(np.zeros((1, 3, 32, 32), np.float32))


# ---- top-k ---------------------------------------------------------------------------------------


def test_topk_against_numpy():
    logits = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    logits[1, 2] = logits[1, 5] = 9.0  # a tie: the lower index first
    names = [f"n{i}" for i in range(7)]
    got = labels_mod.topk(logits, 4, names)
    ref = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, :4]
    assert [[p.index for p in row] for row in got] == ref.tolist()
    assert got[1][0].index == 2 and got[1][1].index == 5 and got[1][0].label == "n2"
    assert sum(p.score for p in labels_mod.topk(logits, 7)[0]) == pytest.approx(1.0)
    assert len(labels_mod.topk(logits, 50)[0]) == 7
    strings = labels_mod.classification_strings(logits, 2, names)
    assert strings.shape == (5, 2) and strings[1, 0] == b"9:2:n2"
    assert labels_mod.classification_strings(logits, 1)[1, 0] == b"9:2"
    with pytest.raises(SaiError, match="NaN"):
        labels_mod.topk(np.full((1, 3), np.nan), 1)
    with pytest.raises(SaiError, match="k must be a positive"):
        labels_mod.topk(logits, 0)
    with pytest.raises(SaiError, match="6 class names for 7"):
        labels_mod.topk(logits, 1, names[:6])
    assert got[0][0].to_dict().keys() == {"index", "label", "score", "logit"}


def test_demo_model_direct_reference(test_images):
    """The model run directly on the training normalisation agrees with the recorded-preprocessing path."""
    model, _ = model_from_checkpoint(DEMO)
    images, _ = test_images
    norm = metadata.input_norm_from_checkpoint(_ck_meta())
    with torch.no_grad():
        ref = model.eval()(demo_data.normalize(torch.from_numpy(images[:2]))).numpy()
        got = model(torch.from_numpy(pre.preprocess(images[:2], norm, 3))).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout, color", [("NCHW", None), ("NHWC", None), ("NHWC", "BGR")])
def test_torch_preprocessing_is_the_same_table(layout, color):
    """The path for uint8 images already on the GPU (torch gathers the same tables), here on CPU tensors."""
    norm = metadata.input_norm_from_checkpoint(_ck_meta())
    shape = (2, 3, 20, 24) if layout == "NCHW" else (2, 20, 24, 3)
    x = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    got = pre.preprocess_torch(torch.from_numpy(x), norm, 3, color=color)
    assert got.dtype == torch.float32 and got.is_contiguous() and tuple(got.shape) == (2, 3, 20, 24)
    np.testing.assert_array_equal(got.numpy(), pre.preprocess(x, norm, 3, color=color))
    with pytest.raises(rt.InputError, match="must be uint8"):
        pre.preprocess_torch(torch.zeros(shape), norm, 3)


def test_given_input_norm_is_recorded_and_applied(tmp_path):
    """export_onnx(input_norm=...) for a model whose checkpoint records none: recorded as 'given', applied."""
    from runtime_helpers import tiny_model

    from sai.exporter import export_onnx, read_metadata

    path = tmp_path / "m.onnx"
    given = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": 0.25, "color": "BGR"}
    res = export_onnx(tiny_model(), path, input_shape=(1, 3, 32, 32), input_norm=given)
    import onnx

    norm = read_metadata(onnx.load(str(path)))["input_norm"]
    assert res.metadata["input_norm"] == norm and norm["source"] == "given" and norm["std"] == [0.25] * 3
    assert norm["color"] == "BGR"
    with rt.load(path, threads=1) as e:
        x = np.random.default_rng(2).integers(0, 256, (1, 3, 32, 32)).astype(np.uint8)
        ref = e.infer(demo_data.normalize(torch.from_numpy(x)).numpy())["logits"]
        np.testing.assert_allclose(e.infer(x)["logits"], ref, rtol=1e-4, atol=1e-4)
        # RGB pixels for a BGR model: flipped on the way in
        np.testing.assert_allclose(e.infer(x[:, ::-1], color="RGB")["logits"], ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(SaiError, match="input_norm needs mean and std"):
        export_onnx(tiny_model(), tmp_path / "bad.onnx", input_shape=(1, 3, 32, 32), input_norm={"scale": 1.0})
