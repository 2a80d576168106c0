"""The one atomic file write (sai.outputs.write_atomic / atomic_path): all or nothing, flushed to the disk,
no temporary left on any error, Ctrl-C included."""

from __future__ import annotations

import os
import stat

import pytest

import sai.outputs as outputs
from sai.errors import SaiError


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_atomic_replaces_the_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    outputs.write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and _names(tmp_path) == ["report.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("exc", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_writer_that_raises_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, exc):
    target = tmp_path / "model.plan"
    target.write_bytes(b"old engine")
    with pytest.raises(type(exc)):
        with outputs.atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise exc
    assert target.read_bytes() == b"old engine" and _names(tmp_path) == ["model.plan"]


def test_interrupt_during_the_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"

    def interrupted(fd, data):
        os.write(fd, data[:2])
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomic(target, b"complete model")
    assert _names(tmp_path) == []


def test_the_file_and_its_folder_are_flushed_before_and_after_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    synced, real_fsync, real_replace = [], os.fsync, os.replace
    events = []

    def fsync(fd):
        st = os.fstat(fd)
        synced.append("dir" if stat.S_ISDIR(st.st_mode) else "file")
        events.append(synced[-1])
        real_fsync(fd)

    def replace(a, b):
        events.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    outputs.write_atomic(target, b"bytes")
    assert events == ["file", "rename", "dir"], events
    assert target.read_bytes() == b"bytes"


def test_os_error_becomes_one_sai_error_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"

    def refuse(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(SaiError, match=r"cannot write .*m\.onnx: No space left on device"):
        outputs.write_atomic(target, b"x")
    assert _names(tmp_path) == []


def test_refuses_a_folder_or_a_missing_parent(tmp_path):
    with pytest.raises(SaiError, match="is a folder"):
        outputs.write_atomic(tmp_path, b"x")
    with pytest.raises(SaiError, match="does not exist"):
        outputs.write_atomic(tmp_path / "no" / "f.json", b"x")


def test_a_directory_that_cannot_be_synced_is_not_an_error(tmp_path, monkeypatch):
    real = os.fsync

    def einval_on_dirs(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", einval_on_dirs)
    outputs.write_atomic(tmp_path / "f", b"x")
    assert (tmp_path / "f").read_bytes() == b"x"
