"""Integrity of a `sai convert` OUTDIR: every verb that loads it (bench, info, serve, validate, export-triton and
``sai.runtime.load``) checks the manifest's sha256 of every file it lists, refuses a mismatch naming the file and
the fix, and ``--no-verify`` / ``verify=False`` skips the check; a manifest of the wrong shape is one line too.

References: the files' own bytes (hashlib here, not the code under test) and the CLI's exit status and stderr.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from runtime_helpers import tiny_outdir

import sai.runtime as rt
from sai.cli.main import main
from sai.errors import SaiError


@pytest.fixture
def out(tmp_path_factory, tmp_path):
    src, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0, info
    dest = tmp_path / "out"
    shutil.copytree(src, dest)
    return dest


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def _write_manifest(out, doc):
    (out / "manifest.json").write_text(json.dumps(doc))


def _flip(path, count=4000):
    """Flip ``count`` bytes in the middle of ``path`` (size unchanged)."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - count // 2)
    for i in range(start, min(len(data), start + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


VERBS = {  # every verb that loads an OUTDIR, with arguments that make it quick
    "bench": lambda o, tmp: ["bench", o, "--iterations", "1", "--warmup", "0", "--threads", "1"],
    "info": lambda o, tmp: ["info", o],
    "validate": lambda o, tmp: ["validate", o, "--iterations", "1", "--threads", "1"],
    "export-triton": lambda o, tmp: ["export-triton", o, "-o", tmp / "repo"],
    "serve": lambda o, tmp: ["serve", o, "--port", "0"],  # refused before it listens
}


def test_intact_outdir_hashes_are_the_files_bytes(out):
    for name, entry in _manifest(out)["files"].items():
        data = (out / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with rt.load(out, backend="onnxruntime", threads=1) as e:  # verify=True by default
        assert e.infer(e.example_feeds((1, 3, 32, 32)))["logits"].shape == (1, 10)


@pytest.mark.parametrize("verb", list(VERBS))
def test_flipped_bytes_refused_by_every_verb(out, tmp_path, capsys, verb):
    _flip(out / "model.onnx")
    rc, stdout, err = _cli(capsys, *VERBS[verb](out, tmp_path))
    assert rc == 2, (stdout, err)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"sai {verb}: error: {out / 'model.onnx'} does not match its sha256 in {out / 'manifest.json'}" in err
    assert "re-run sai convert" in err and "--no-verify" in err
    assert not (tmp_path / "repo").exists()


def test_flipped_bytes_refused_by_load_and_resolve(out):
    _flip(out / "model.onnx")
    for backend in ("auto", "onnxruntime", "torch"):
        with pytest.raises(SaiError, match="model.onnx does not match its sha256"):
            rt.load(out, backend=backend)
    with pytest.raises(SaiError, match="model.onnx does not match its sha256"):
        rt.load(out / "model.onnx")  # a model file inside an OUTDIR is checked too
    with pytest.raises(SaiError, match="does not match"):
        rt.resolve(out, verify=True)
    assert rt.resolve(out).file == out / "model.onnx"  # resolve alone only picks the file


def test_other_listed_file_changed_refused(out):
    _flip(out / "model.trt.onnx", 100)  # every file the manifest lists, not only the one loaded
    with pytest.raises(SaiError, match="model.trt.onnx does not match its sha256"):
        rt.load(out, backend="onnxruntime")


def test_truncated_file_refused_by_size(out):
    data = (out / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(SaiError, match=f"model.onnx does not match .*: {len(data) // 2} bytes, the manifest says "
                                       f"{len(data)}"):
        rt.load(out)


@pytest.mark.parametrize("bad", ["0" * 64, "", "not-a-hash", "A" * 64, None, 42, "missing"])
def test_zeroed_or_malformed_hash_is_a_failure(out, capsys, bad):
    doc = _manifest(out)
    if bad == "missing":
        del doc["files"]["model.onnx"]["sha256"]
    else:
        doc["files"]["model.onnx"]["sha256"] = bad
    _write_manifest(out, doc)
    with pytest.raises(SaiError, match="records no valid sha256 for model.onnx"):
        rt.load(out)
    rc, _, err = _cli(capsys, "info", out)
    assert rc == 2 and "records no valid sha256" in err and "--no-verify" in err


def test_no_files_listed_is_a_failure(out):
    doc = _manifest(out)
    doc["files"] = {}
    _write_manifest(out, doc)
    with pytest.raises(SaiError, match="lists no files with their sha256"):
        rt.load(out)


def test_swapped_model_caught_by_the_hash(out, capsys, tmp_path_factory):
    """Another valid model dropped in is refused: one of another size (the TensorRT-target graph), and one of
    the same size whose classifier weights differ (only the hash tells it apart)."""
    import numpy as np
    import onnx

    shutil.copy(out / "model.trt.onnx", out / "model.onnx")
    rc, _, err = _cli(capsys, *VERBS["bench"](out, None))
    assert rc == 2 and f"{out / 'model.onnx'} does not match {out / 'manifest.json'}" in err
    shutil.copy(tiny_outdir(tmp_path_factory)[0] / "model.onnx", out / "model.onnx")
    rt.load(out).close()  # the original is back
    model = onnx.load(str(out / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * np.float32(1.01), init.name))
    before = (out / "model.onnx").stat().st_size
    onnx.save(model, str(out / "model.onnx"))
    assert (out / "model.onnx").stat().st_size == before
    rc, _, err = _cli(capsys, *VERBS["bench"](out, None))
    assert rc == 2 and "model.onnx does not match its sha256" in err


def test_unlisted_engine_and_missing_file_refused(out):
    (out / "model.plan").write_bytes(b"an engine nobody converted")
    with pytest.raises(SaiError, match="model.plan is not listed in"):
        rt.load(out, backend="onnxruntime")
    (out / "model.plan").unlink()
    (out / "model.trt.onnx").unlink()
    with pytest.raises(SaiError, match="model.trt.onnx is listed in .* but missing"):
        rt.load(out)


def test_changed_checkpoint_refused_for_torch(out, tmp_path):
    ck = tmp_path / "copy.pth"
    doc = _manifest(out)
    shutil.copy(doc["checkpoint"]["path"], ck)  # the session's checkpoint stays untouched
    doc["checkpoint"]["path"] = str(ck)
    _write_manifest(out, doc)
    with rt.load(out, backend="torch"):
        pass
    ck.write_bytes(ck.read_bytes() + b"\0")
    with pytest.raises(SaiError, match="copy.pth does not match its sha256"):
        rt.load(out, backend="torch")
    rt.load(out, backend="torch", verify=False).close()


@pytest.mark.parametrize("verb", ["bench", "info", "validate", "export-triton"])
def test_no_verify_skips_the_check(out, tmp_path, capsys, verb):
    doc = _manifest(out)
    doc["files"]["model.onnx"]["sha256"] = "0" * 64  # files intact, hash zeroed
    _write_manifest(out, doc)
    rc, _, err = _cli(capsys, *VERBS[verb](out, tmp_path))
    assert rc == 2 and "no valid sha256" in err
    rc, stdout, err = _cli(capsys, *VERBS[verb](out, tmp_path), "--no-verify")
    assert rc == 0, (stdout, err)


def test_no_verify_for_load_and_serve(out):
    from sai.cli.main import build_parser

    _flip(out / "model.trt.onnx", 100)
    with rt.load(out, backend="onnxruntime", threads=1, verify=False) as e:
        assert e.infer(e.example_feeds((1, 3, 32, 32)))["logits"].shape == (1, 10)
    assert build_parser().parse_args(["serve", str(out), "--no-verify"]).no_verify


# ---- the manifest's shape -------------------------------------------------------------------


@pytest.mark.parametrize("doc, message", [
    ([1, 2], "holds a list, not a sai convert manifest"),
    ("text", "holds a string"),
    ({"files": [1]}, "field 'files' must be an object, got a list"),
    ({"shapes": "big"}, "field 'shapes' must be an object"),
    ({"metadata": 3}, "field 'metadata' must be an object, got an integer"),
    ({"shapes": {"input": {"max": ["8", 3, 64, 64]}}}, "field 'shapes.input.max' must be a list of positive integers"),
    ({"shapes": {"input": {"max": [0, 3, 64, 64]}}}, "shapes.input.max"),
    ({"files": {"model.onnx": "abc"}}, "field 'files.model.onnx' must be an object"),
    ({"files": {"model.onnx": {"sha256": "0" * 64, "bytes": "12"}}}, "files.model.onnx.bytes"),
    ({"checkpoint": {"path": 7}}, "checkpoint.path"),
    ({"metadata": {"example_input_shape": [1, 3]}}, "metadata.example_input_shape"),
    ({"arch": ["x"]}, "field 'arch' must be a string"),
])
@pytest.mark.parametrize("verb", ["bench", "export-triton", "validate"])
def test_malformed_manifest_is_one_line(out, tmp_path, capsys, doc, message, verb):
    if isinstance(doc, dict):
        full = _manifest(out)
        for key, value in doc.items():
            if isinstance(value, dict) and isinstance(full.get(key), dict):
                full[key].update(value)
            else:
                full[key] = value
        doc = full
    _write_manifest(out, doc)
    rc, _, err = _cli(capsys, *VERBS[verb](out, tmp_path), "--no-verify")
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err and "re-run sai convert" in err


def test_truncated_onnx_in_validate_is_one_line(out, capsys):
    data = (out / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(data[: len(data) // 3])
    rc, _, err = _cli(capsys, *VERBS["validate"](out, None))
    assert rc == 2 and "model.onnx does not match" in err
    rc, _, err = _cli(capsys, *VERBS["validate"](out, None), "--no-verify")  # past the hash: protobuf DecodeError
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "is not a readable ONNX model" in err and "re-run sai convert" in err


def test_files_outside_an_outdir_need_no_manifest(out, tmp_path, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(out / "model.onnx", loose / "model.onnx")
    with rt.load(loose / "model.onnx", threads=1):  # a bare .onnx: nothing to check it against
        pass
    assert _cli(capsys, "info", loose / "model.onnx")[0] == 0
    with pytest.raises(SaiError, match="has no manifest.json, so its files cannot be checked"):
        rt.load(loose)  # a folder is loaded as an OUTDIR only with its manifest (or --no-verify)
    rt.load(loose, verify=False).close()
