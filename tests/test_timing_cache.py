"""`sai convert --timing-cache FILE`: an existing cache is read; it is written back (atomically, with a
``.sai.json`` sidecar) only when sai wrote it or with --force; refusals come before any TensorRT builder call."""

from __future__ import annotations

import hashlib
import json
import os
import types

import pytest

from sai.errors import SaiError
from sai.runtime.build import build_engine, check_timing_cache

PROFILE = ((1, 3, 32, 32), (1, 3, 32, 32), (2, 3, 32, 32))


class FakeTRT:
    """A recording stand-in for the tensorrt module: records every builder call, the bytes given to
    create_timing_cache, and serializes the cache as ``serialized``."""

    def __init__(self, serialized=b"NEW-CACHE-BYTES"):
        self.calls, self.cache_in, self.serialized = [], [], serialized
        fake = self

        class Obj:
            def __init__(self, name):
                object.__setattr__(self, "_name", name)

            def __getattr__(self, attr):
                if attr in ("num_layers", "num_outputs", "num_errors"):
                    return 0

                def f(*a, **k):
                    fake.calls.append(attr)
                    if attr == "create_timing_cache":
                        fake.cache_in.append(bytes(a[0]))
                    return {"parse_from_file": True, "build_serialized_network": b"ENGINE",
                            "serialize": fake.serialized}.get(attr, Obj(attr))
                return f

            def __setattr__(self, k, v):
                fake.calls.append("set:" + k)

        def builder(logger):
            fake.calls.append("Builder")
            return Obj("builder")

        self.module = types.SimpleNamespace(
            __version__="10.9.0", Logger=type("L", (), {"WARNING": 1, "__init__": lambda s, lvl: None}),
            Builder=builder, OnnxParser=lambda net, logger: Obj("parser"),
            BuilderFlag=types.SimpleNamespace(FP16="FP16", VERSION_COMPATIBLE="VC", PREFER_PRECISION_CONSTRAINTS="P"),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"), LayerType=types.SimpleNamespace(PLUGIN_V3="PV3"),
            float32="f32", float16="f16")


def _build(tmp_path, cache, trt, **kw):
    return build_engine(tmp_path / "m.trt.onnx", tmp_path / "model.plan", profile=PROFILE, timing_cache=cache,
                        plugin_library="/p/lib.so", trt=trt.module, **kw)


def _leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp") or ".sai-probe-" in n)


def test_new_cache_is_written_with_a_sidecar_and_no_temporary(tmp_path):
    trt = FakeTRT(b"CACHE-1")
    cache = tmp_path / "tc.bin"
    _build(tmp_path, cache, trt)
    assert trt.cache_in == [b""]  # nothing there yet: TensorRT starts an empty cache
    assert cache.read_bytes() == b"CACHE-1"
    side = json.loads((tmp_path / "tc.bin.sai.json").read_text())
    assert side["sha256"] == hashlib.sha256(b"CACHE-1").hexdigest() and side["bytes"] == 7
    assert _leftovers(tmp_path) == []


def test_cache_sai_wrote_is_read_and_replaced(tmp_path):
    cache = tmp_path / "tc.bin"
    _build(tmp_path, cache, FakeTRT(b"FIRST"))
    trt = FakeTRT(b"SECOND-LONGER")
    _build(tmp_path, cache, trt)
    assert trt.cache_in == [b"FIRST"]  # the earlier cache was given to TensorRT
    assert cache.read_bytes() == b"SECOND-LONGER"
    assert json.loads((tmp_path / "tc.bin.sai.json").read_text())["sha256"] == \
        hashlib.sha256(b"SECOND-LONGER").hexdigest()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["foreign", "edited", "empty"])
def test_cache_sai_did_not_write_is_refused_before_the_build(tmp_path, case):
    cache = tmp_path / "tc.bin"
    if case == "edited":  # sai wrote it, then something else changed it
        _build(tmp_path, cache, FakeTRT(b"SAI"))
        cache.write_bytes(b"USER-EDIT")
    else:
        cache.write_bytes(b"" if case == "empty" else b"a trtexec cache, say")
    before = cache.read_bytes()
    (tmp_path / "model.plan").unlink(missing_ok=True)
    trt = FakeTRT()
    with pytest.raises(SaiError) as e:
        _build(tmp_path, cache, trt)
    msg = str(e.value)
    assert "\n" not in msg and "--force" in msg and "another --timing-cache path" in msg and str(cache) in msg
    assert trt.calls == []  # no Builder, no build_serialized_network
    assert cache.read_bytes() == before
    assert not (tmp_path / "model.plan").exists()


def test_force_reads_and_overwrites_a_foreign_cache(tmp_path, capsys):
    cache = tmp_path / "tc.bin"
    cache.write_bytes(b"FOREIGN")
    trt = FakeTRT(b"MERGED")
    _build(tmp_path, cache, trt, force=True)
    assert trt.cache_in == [b"FOREIGN"] and cache.read_bytes() == b"MERGED"
    assert "will be overwritten" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_symlink_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"TARGET")
    link = tmp_path / "tc.bin"
    link.symlink_to(target)
    trt = FakeTRT()
    with pytest.raises(SaiError, match="symbolic link"):
        _build(tmp_path, link, trt)
    assert trt.calls == [] and target.read_bytes() == b"TARGET" and link.is_symlink()
    # with --force the link is replaced by a file; the file it named is never written
    _build(tmp_path, link, FakeTRT(b"NEW"), force=True)
    assert not link.is_symlink() and link.read_bytes() == b"NEW" and target.read_bytes() == b"TARGET"


def test_folder_missing_parent_and_unwritable_folder_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    with pytest.raises(SaiError, match="is a folder; give a file path") as e:
        check_timing_cache(tmp_path / "d", force=True)
    assert "\n" not in str(e.value)
    with pytest.raises(SaiError, match="does not exist") as e:
        check_timing_cache(tmp_path / "nope" / "tc.bin")
    assert "\n" not in str(e.value)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(SaiError, match="is a file, not a folder") as e:
        check_timing_cache(tmp_path / "f" / "tc.bin")
    assert "\n" not in str(e.value)
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root: the mode does not stop it; the kernel's answer is simulated
            import errno
            import tempfile

            real = tempfile.mkstemp

            def mkstemp(*a, dir=None, **k):
                if dir is not None and os.path.samefile(dir, ro):
                    raise PermissionError(errno.EACCES, "Permission denied", str(ro))
                return real(*a, dir=dir, **k)

            monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        trt = FakeTRT()
        with pytest.raises(SaiError, match="cannot create files in") as e:
            _build(tmp_path, ro / "tc.bin", trt)
        assert "\n" not in str(e.value) and trt.calls == []
    finally:
        os.chmod(ro, 0o700)


def test_foreign_file_at_the_sidecar_path_is_refused(tmp_path):
    side = tmp_path / "tc.bin.sai.json"
    side.write_text('{"mine": true}\n')
    trt = FakeTRT()
    with pytest.raises(SaiError, match="--force") as e:
        _build(tmp_path, tmp_path / "tc.bin", trt)
    assert "\n" not in str(e.value) and trt.calls == []
    assert side.read_text() == '{"mine": true}\n' and not (tmp_path / "tc.bin").exists()


def test_cache_changed_during_the_build_is_not_overwritten(tmp_path):
    cache = tmp_path / "tc.bin"
    _build(tmp_path, cache, FakeTRT(b"SAI"))
    trt = FakeTRT(b"NEW")

    real_builder = trt.module.Builder

    def builder(logger):  # another program writes the cache while TensorRT builds
        cache.write_bytes(b"OTHER PROGRAM")
        return real_builder(logger)

    trt.module.Builder = builder
    with pytest.raises(SaiError, match="changed during the build"):
        _build(tmp_path, cache, trt)
    assert cache.read_bytes() == b"OTHER PROGRAM" and _leftovers(tmp_path) == []


def test_convert_refuses_a_foreign_cache_before_reading_the_checkpoint(tmp_path):
    """The refusal comes before the slow work: here the checkpoint is not even a checkpoint, and the
    error is about the cache; no OUTDIR, the cache's bytes as they were."""
    from sai.runtime.convert import convert

    ck = tmp_path / "model.pth"
    ck.write_bytes(b"not a checkpoint")
    cache = tmp_path / "tc.bin"
    cache.write_bytes(b"someone else's cache")
    with pytest.raises(SaiError, match="not a timing cache sai wrote"):
        convert(ck, None, tmp_path / "out", timing_cache=cache)
    assert cache.read_bytes() == b"someone else's cache" and not (tmp_path / "out").exists()
    with pytest.raises(SaiError) as e:  # --no-engine: the cache is not touched, so not checked
        convert(ck, None, tmp_path / "out", timing_cache=cache, build_engine=False)
    assert "timing cache" not in str(e.value)
