"""`sai validate` on real inputs and on dense models (issue 27): ``--load-inputs`` (Polygraphy's input JSON, read
with Polygraphy's loader), ``--images DIR`` (PNG/JPEG, resized and normalised as the model's input_norm), and a
warning when every mask is dense (a random-initialised checkpoint samples every position)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from runtime_helpers import ARCH, OPTIONS, demo_outdir, tiny_checkpoint


def _main(*argv) -> tuple[int, str, str]:
    from sai.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _torch_pair(ck):
    import sai.runtime as rt
    from sai.runtime.validate import record_torch_masks

    return {name: record_torch_masks(rt.load(ck, backend="torch", verify=False)) for name in ("torch", "torch2")}


def _validate_pair(ck) -> object:
    from sai.runtime.validate import validate

    engines = _torch_pair(ck)
    try:
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        return validate(engines, [{"input": x}], atol={"": 1e-4}, rtol={"": 1e-3})
    finally:
        for e in engines.values():
            e.close()


def test_dense_masks_warn(tmp_path):
    import torch

    from sai.models import build_model, save_checkpoint

    torch.manual_seed(0)
    ck = save_checkpoint(build_model(ARCH, **OPTIONS), tmp_path / "random.pth")  # default init: every mask all ones
    report = _validate_pair(ck)
    assert report.densities["deterministic"]["mean"] == [1.0, 1.0]
    assert len(report.warnings) == 1 and "dense" in report.warnings[0] and "saving will not show" in report.warnings[0]
    assert "WARNING: the masks are dense" in report.text()


def test_sparse_masks_do_not_warn(tmp_path):
    report = _validate_pair(tiny_checkpoint(tmp_path))
    assert report.densities["deterministic"]["mean"][0] < 0.9
    assert report.warnings == []
    assert "WARNING" not in report.text()


def test_load_inputs_polygraphy_json(outdir, tmp_path):
    from polygraphy.json import save_json

    rng = np.random.default_rng(5)
    feeds = [{"input": rng.standard_normal((3, 3, 32, 32)).astype(np.float32)},
             {"input": rng.standard_normal((1, 3, 40, 24)).astype(np.float32)}]
    save_json(feeds, str(tmp_path / "in.json"))  # what polygraphy run --save-inputs writes
    rc, out, err = _main("validate", outdir, "--backends", "onnxruntime,torch", "--load-inputs", tmp_path / "in.json",
                         "--report", tmp_path / "r.json")
    assert rc == 0, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["inputs"] == [[3, 3, 32, 32], [1, 3, 40, 24]]

    bad = [{"input": feeds[0]["input"].copy()}]
    bad[0]["input"][0, 0, 3, 4] = np.nan  # the file's values reach the engines: a NaN is refused as such
    save_json(bad, str(tmp_path / "nan.json"))
    rc, out, err = _main("validate", outdir, "--backends", "onnxruntime,torch", "--load-inputs", tmp_path / "nan.json")
    assert rc != 0 and "NaN" in out + err


@pytest.mark.parametrize("content, match", [
    ('[{"image": {"array": "x"}}]', "not a Polygraphy input file|does not take"),
    ("not json", "not a Polygraphy input file"),
    ("[]", "holds no feeds"),
])
def test_load_inputs_bad_files(outdir, tmp_path, content, match):
    import re

    path = tmp_path / "in.json"
    path.write_text(content)
    rc, out, err = _main("validate", outdir, "--backends", "onnxruntime,torch", "--load-inputs", path)
    assert rc != 0
    assert re.search(match, err), err
    assert "Traceback" not in err


def test_images_folder(tmp_path_factory, tmp_path):
    from PIL import Image

    import sai.runtime as rt
    from sai.runtime.validate import load_image_batches

    out = demo_outdir(tmp_path_factory)
    rng = np.random.default_rng(1)
    pics = tmp_path / "pics"
    pics.mkdir()
    raw = []
    for i, size in enumerate([(80, 70), (64, 64), (50, 90)]):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        raw.append(arr)
        Image.fromarray(arr).save(pics / (f"{i}.png" if i != 1 else f"{i}.jpg"), quality=95)
    (pics / "notes.txt").write_text("not an image")
    with rt.load(out) as engine:
        norm = engine.input_norm
        batches = load_image_batches(pics, engine, [2, 3, 64, 64])
    assert [list(b["input"].shape) for b in batches] == [[2, 3, 64, 64], [1, 3, 64, 64]]
    # independent: PIL's bilinear resize of the file as decoded, then (pixel * scale - mean) / std per channel
    with Image.open(pics / "0.png") as im:
        px = np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float64).transpose(2, 0, 1)
    mean, std = np.array(norm["mean"])[:, None, None], np.array(norm["std"])[:, None, None]
    np.testing.assert_allclose(batches[0]["input"][0], (px * norm["scale"] - mean) / std, rtol=1e-6, atol=1e-6)

    rc, stdout, err = _main("validate", out, "--backends", "onnxruntime,torch", "--images", pics, "--shape", "64,64",
                            "--batch", "2", "--report", tmp_path / "r.json")
    assert rc == 0, stdout + err
    assert json.loads((tmp_path / "r.json").read_text())["inputs"] == [[2, 3, 64, 64], [1, 3, 64, 64]]
    rc, _, err = _main("validate", out, "--images", tmp_path / "nowhere")
    assert rc != 0 and "--images" in err and "Traceback" not in err
