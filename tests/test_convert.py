"""sai convert: exit codes, atomic replacement of OUTDIR, argument errors. The export itself is
stubbed here by copying the session's real export (the full path runs once in runtime_helpers)."""

from __future__ import annotations

import json
import shutil
import types

import pytest
from runtime_helpers import ARCH, tiny_checkpoint, tiny_outdir

import sai.exporter.export as export_mod
from sai.cli.main import main
from sai.errors import SaiError
from sai.runtime.convert import resolve_profile


@pytest.fixture
def fake_export(tmp_path_factory, monkeypatch):
    outdir, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0
    manifest = json.loads((outdir / "manifest.json").read_text())
    calls = []

    def fake(arch, path, **kw):
        calls.append(kw)
        if kw.get("sampling") == "boom":
            raise SaiError("export failed on purpose")
        shutil.copy(outdir / "model.onnx", path)
        return types.SimpleNamespace(noise_inputs=[], sampling="deterministic", opset=21, input_names=["input"],
                                     output_names=["logits"], metadata=manifest["metadata"])

    monkeypatch.setattr(export_mod, "export_onnx", fake)
    return calls


def test_require_engine_exits_nonzero_with_reason(fake_export, tmp_path, capsys):
    ck = tiny_checkpoint(tmp_path)
    rc = main(["convert", str(ck), "-o", str(tmp_path / "out"), "--require-engine", "-q"])
    cap = capsys.readouterr()
    assert rc == 2 and "--require-engine: no engine was built" in cap.err
    assert cap.out.count("engine skipped:") == 1
    assert main(["convert", str(ck), "-o", str(tmp_path / "out2")]) == 0
    cap = capsys.readouterr()  # with progress lines: the reason is printed once, in the summary (issue 27)
    reason = cap.out.split("engine skipped: ", 1)[1].split(";", 1)[0]
    assert reason and (cap.out + cap.err).count(reason) == 1, (cap.out, cap.err)
    assert "[3/4] TensorRT engine: skipped" in cap.err


def test_failed_convert_leaves_previous_outdir_intact(fake_export, tmp_path):
    from sai.runtime.convert import convert

    ck = tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    convert(ck, ARCH, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SaiError, match="on purpose"):
        convert(ck, ARCH, out, sampling="boom")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    convert(ck, ARCH, out, opt_shape="2,3,64,64")  # replacing a previous OUTDIR works
    assert json.loads((out / "manifest.json").read_text())["shapes"]["input"]["opt"] == [2, 3, 64, 64]
    assert fake_export[-1]["input_shape"] == (2, 3, 64, 64)


def test_refuses_to_replace_foreign_directory(fake_export, tmp_path):
    from sai.runtime.convert import convert

    ck = tiny_checkpoint(tmp_path)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(SaiError, match="is not written by sai convert"):
        convert(ck, ARCH, foreign)
    assert (foreign / "cat.jpg").read_bytes() == b"meow"


def test_arch_mismatch_and_missing_checkpoint(tmp_path, capsys):
    ck = tiny_checkpoint(tmp_path)
    assert main(["convert", str(ck), "--arch", "sparse_resnet50", "-o", str(tmp_path / "o")]) == 2
    assert "does not match the checkpoint, whose weights are sparse_resnet18" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "none.pth"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_profile_defaults_and_errors():
    assert resolve_profile(None, "2,3,64,64", None) == ((1, 3, 64, 64), (2, 3, 64, 64), (8, 3, 64, 64))
    with pytest.raises(SaiError, match="min-shape <= --shape <= --max-shape"):
        resolve_profile("4,3,64,64", "2,3,64,64", None)
    with pytest.raises(SaiError, match="channels differ"):
        resolve_profile("1,1,64,64", "2,3,64,64", None)
    with pytest.raises(SaiError, match="--max-shape"):
        resolve_profile(None, None, "1,3,x,64")


def test_convert_reads_the_checkpoint_file_once(tmp_path, monkeypatch):
    """Layout, export (options, weights, preprocessing) and the manifest's sha256 all come from one read."""
    import builtins
    import io
    import os

    import sai.models.checkpoint as ckmod
    from sai.runtime.convert import convert

    ck = tiny_checkpoint(tmp_path)
    loads, opens = [], []
    real_load, real_open = ckmod.load_file, io.open

    def counting_load(source, **kw):
        loads.append(source)
        return real_load(source, **kw)

    def counting_open(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == str(ck.resolve()):
            opens.append(file)
        return real_open(file, *a, **kw)

    monkeypatch.setattr(ckmod, "load_file", counting_load)
    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    res = convert(ck, ARCH, tmp_path / "out", opt_shape="1,3,32,32", build_engine=False)
    monkeypatch.undo()
    assert len(loads) == 1 and len(opens) == 1, (loads, opens)
    import hashlib

    assert res.manifest["checkpoint"]["sha256"] == hashlib.sha256(ck.read_bytes()).hexdigest()
    assert res.manifest["metadata"]["input_norm"]["source"] == "assumed"  # the meta came through the one read
