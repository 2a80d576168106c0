"""Loading a `sai convert` OUTDIR refuses anything in it that its manifest does not list (issue 23: the README says
an unlisted file is refused; it was accepted unless it was one of the model files about to be read): a file or a
folder of someone else's, named in a one-line message with the fix; manifest.json and `.sai-output.json` are
sai's own; --no-verify / verify=False skips the check.

References: the folder's listing on the disk and the manifest's JSON (read here), the CLI's exit status and stderr.
"""

from __future__ import annotations

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
    shutil.copytree(src, dest, symlinks=True)
    return dest


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_only_listed_files_the_manifest_and_the_marker_are_there(out):
    listed = set(json.loads((out / "manifest.json").read_text())["files"])
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json", ".sai-output.json"}
    with rt.load(out, backend="onnxruntime", threads=1):
        pass


EXTRAS = {
    "notes.txt": lambda p: p.write_text("mine\n"),
    "model.onnx.bak": lambda p: p.write_bytes(b"an older model"),
    ".hidden": lambda p: p.write_text(""),
    "sub": lambda p: (p.mkdir(), (p / "x").write_text("x")),
    "link.onnx": lambda p: p.symlink_to(p.parent / "model.onnx"),
}


@pytest.mark.parametrize("name", list(EXTRAS))
def test_unlisted_entry_refused_by_load(out, name):
    EXTRAS[name](out / name)
    with pytest.raises(SaiError) as err:
        rt.load(out, backend="onnxruntime", threads=1)
    msg = str(err.value)
    assert f"{out / name} is not listed in {out / 'manifest.json'}" in msg
    assert "move it out of" in msg and "--no-verify" in msg and "\n" not in msg
    with pytest.raises(SaiError, match="is not listed in"):  # a model file inside the OUTDIR: the same folder check
        rt.load(out / "model.onnx", threads=1)
    rt.load(out, backend="onnxruntime", threads=1, verify=False).close()


@pytest.mark.parametrize("verb", ["info", "bench", "export-triton"])
def test_unlisted_file_refused_by_the_verbs(out, tmp_path, capsys, verb):
    if verb == "export-triton":
        pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="export-triton builds Triton's configs")
    (out / "notes.txt").write_text("mine\n")
    argv = {"info": ["info", out], "bench": ["bench", out, "--iterations", "1", "--warmup", "0", "--threads", "1"],
            "export-triton": ["export-triton", out, "-o", tmp_path / "repo"]}[verb]
    rc, _, err = _cli(capsys, *argv)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{out / 'notes.txt'} is not listed in" in err
    assert not (tmp_path / "repo").exists() and (out / "notes.txt").read_text() == "mine\n"
