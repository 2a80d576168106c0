"""One-line errors and no leftovers: the CLI's error handler, unreadable
checkpoints, unwritable outputs checked before the slow work, oversized shapes, temporary folders of
validate/bench/convert (stale ones of dead processes too), Ctrl-C/SIGTERM, empty models, NaN weights.

Every case here fails for root too (a file where a folder must be, /proc and /sys, a path under a
regular file); the permission-bit cases are skipped as root, who ignores them."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from runtime_helpers import ARCH, tiny_checkpoint, tiny_outdir

import sai.exporter.export as export_mod
import sai.outputs as outputs
from sai.cli.main import EXIT_INTERNAL, main
from sai.errors import SaiError

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # exactly one line
    return err


def _tiny_onnx(path: Path) -> None:
    """A valid one-node ONNX model (what the stubbed export writes)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


@pytest.fixture
def stub_export(monkeypatch):
    """convert's export step replaced by a tiny ONNX write; ``hooks[name]`` runs at that step."""
    hooks: dict = {}

    def fake(arch, path, **kw):
        if "export" in hooks:
            hooks["export"]()
        _tiny_onnx(Path(path))
        return types.SimpleNamespace(noise_inputs=[], sampling="deterministic", opset=21, input_names=["input"],
                                     output_names=["logits"], metadata={"arch": arch})

    monkeypatch.setattr(export_mod, "export_onnx", fake)
    return hooks


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old-" in p.name)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------------------------
# item 7: the CLI's error handler cannot crash
# ----------------------------------------------------------------------------------------------


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str for you")


@pytest.mark.parametrize("exc, code, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/model.onnx"), 2,
     ["/data/out/model.onnx", "No space left on device", "free space"]),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/x"), 2, ["/srv/x", "Permission denied", "choose"]),
    (MemoryError(), 2, ["out of memory", "smaller"]),
    (RuntimeError("boom\nsecond line"), EXIT_INTERNAL, ["internal error: RuntimeError: boom", "sai -v info"]),
    (IndexError(), EXIT_INTERNAL, ["IndexError", "for the traceback"]),
    (_Unprintable(), EXIT_INTERNAL, ["_Unprintable", "for the traceback"]),
    (SaiError(""), 2, ["error: SaiError"]),
])
def test_error_handler_prints_one_line_for_every_exception(monkeypatch, capsys, exc, code, words):
    import sai.cli.info as info

    def run(args):
        raise exc

    monkeypatch.setattr(info, "run", run)
    assert main(["info", "x.onnx"]) == code
    err = _err(capsys)
    assert err.startswith("sai info: ")
    for w in words:
        assert w in err, err
    with pytest.raises(type(exc)):  # -v still shows the traceback
        main(["-v", "info", "x.onnx"])


def test_closed_stdout_is_quiet_exit_141(tmp_path):
    """`sai ... | head`: the reader went away; no error line, no 'Exception ignored' at exit."""
    code = ("import sys, sai.cli.info as info\n"
            "def run(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "info.run = run\nfrom sai.cli.main import main\nsys.exit(main(['info', 'x.onnx']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 141 and out.stderr == "", out.stderr


def test_sigterm_runs_cleanup_and_exits_143(monkeypatch, capsys):
    import sai.cli.info as info

    cleaned = []

    def run(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(True)

    monkeypatch.setattr(info, "run", run)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["info", "x.onnx"]) == 143
    assert cleaned == [True] and "terminated" in _err(capsys)
    assert signal.getsignal(signal.SIGTERM) == before


# ----------------------------------------------------------------------------------------------
# item 8 (and 7's empty checkpoint): what is wrong with a checkpoint, and what to do
# ----------------------------------------------------------------------------------------------


def _bad_checkpoints(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    good = tiny_checkpoint(tmp).read_bytes()
    cases = {}
    (tmp / "empty.pth").write_bytes(b"")
    cases["empty"] = (tmp / "empty.pth", ["empty (0 bytes)"])
    (tmp / "trunc.pth").write_bytes(good[: len(good) // 3])
    cases["truncated"] = (tmp / "trunc.pth", ["truncated or corrupt zip archive"])
    flipped = bytearray(good)
    start = good.index(b"data.pkl") + 200
    flipped[start:start + 64] = bytes(b ^ 0xFF for b in flipped[start:start + 64])
    (tmp / "flip.pth").write_bytes(bytes(flipped))
    cases["corrupt"] = (tmp / "flip.pth", ["corrupt"])
    (tmp / "notes.pth").write_text("hello, not a checkpoint\n")
    cases["text"] = (tmp / "notes.pth", ["not a torch checkpoint"])
    (tmp / "ckdir").mkdir(exist_ok=True)
    cases["directory"] = (tmp / "ckdir", ["is a directory", "inside it"])
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp / "module.pth")
    cases["pickled module"] = (tmp / "module.pth", ["Python objects besides tensors", "state_dict()"])
    return cases


@pytest.mark.parametrize("case", ["empty", "truncated", "corrupt", "text", "directory", "pickled module"])
def test_unreadable_checkpoint_says_what_is_wrong(tmp_path, capsys, case):
    path, words = _bad_checkpoints(tmp_path)[case]
    for argv in (["convert", str(path), "-o", str(tmp_path / "out")],
                 ["export", "--checkpoint", str(path), "-o", str(tmp_path / "m.onnx")]):
        assert main(argv) == 2
        err = _err(capsys)
        assert str(path) in err and "weights_only" not in err and "does not exist" not in err, err
        for w in words:
            assert w in err, err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# item 7: outputs checked before the slow work
# ----------------------------------------------------------------------------------------------


def _odd_outputs(tmp: Path) -> dict[str, Path]:
    (tmp / "afile").write_text("x")
    return {"a file": tmp / "afile", "under a file": tmp / "afile" / "out", "proc": Path("/proc/sai-out"),
            "sys": Path("/sys/kernel/sai-out")}


@pytest.mark.parametrize("case, words", [
    ("a file", ["exists and is a file", "folder"]),
    ("under a file", ["is a file, not a folder"]),
    ("proc", ["cannot create files in /proc"]),
    ("sys", ["cannot create files in /sys/kernel"]),
])
def test_convert_refuses_odd_output_before_reading_the_checkpoint(tmp_path, capsys, monkeypatch, case, words):
    import sai.models as models

    def never(*a, **k):
        raise AssertionError("the checkpoint was read before the output was checked")

    monkeypatch.setattr(models, "detect_layout", never)
    out = _odd_outputs(tmp_path)[case]
    assert main(["convert", str(tiny_checkpoint(tmp_path)), "-o", str(out)]) == 2
    err = _err(capsys)
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("case, words", [
    ("folder", ["is a folder", "file path"]),
    ("under a file", ["is a file, not a folder"]),
    ("proc", ["cannot create files in /proc"]),
    ("sys", ["cannot create files in /sys"]),
])
def test_export_refuses_odd_output_before_exporting(tmp_path, capsys, monkeypatch, case, words):
    def never(*a, **k):
        raise AssertionError("the model was prepared before the output was checked")

    monkeypatch.setattr(export_mod, "prepare_model", never)
    (tmp_path / "afile").write_text("x")
    out = {"folder": tmp_path, "under a file": tmp_path / "afile" / "m.onnx", "proc": Path("/proc/m.onnx"),
           "sys": Path("/sys/m.onnx")}[case]
    assert main(["export", "--checkpoint", str(tiny_checkpoint(tmp_path)), "-o", str(out)]) == 2
    err = _err(capsys)
    for w in words:
        assert w in err, err


def test_train_demo_checks_its_output_before_training(tmp_path, capsys, monkeypatch):
    import sai.models.train_demo as td

    def never(*a, **k):
        raise AssertionError("training started before the output was checked")

    monkeypatch.setattr(td, "train_demo", never)
    (tmp_path / "afile").write_text("x")
    for out, words in ((tmp_path / "afile", "exists and is a file"), (tmp_path / "afile" / "d", "is a file, not"),
                       (Path("/proc/sai-demo"), "cannot create files in /proc")):
        assert main(["train-demo", "--out", str(out), "-q"]) == 2
        assert words in _err(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_output_folder(tmp_path, capsys, stub_export):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["convert", str(tiny_checkpoint(tmp_path)), "-o", str(ro / "out")]) == 2
        assert "Permission denied" in _err(capsys)
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "manifest.json").write_text("{}")
        outputs.write_marker(tmp_path / "mine", "sai convert")
        (tmp_path / "mine").chmod(0o500)  # an earlier result that is not writable any more
        assert main(["convert", str(tiny_checkpoint(tmp_path)), "-o", str(tmp_path / "mine")]) == 2
        assert "Permission denied" in _err(capsys)
        (tmp_path / "mine").chmod(0o700)
        assert main(["export", "--arch", ARCH, "-o", str(ro / "m.onnx")]) == 2
        assert "Permission denied" in _err(capsys)
    finally:
        ro.chmod(0o700)


def _chattr(path: Path, flag: str) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def test_immutable_output_folder_refused_before_the_work(tmp_path, capsys, stub_export, monkeypatch):
    """chattr +i stops root too; skipped where chattr is missing or not permitted."""
    import sai.models as models

    ck = tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", str(ck), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if not _chattr(out, "+i"):
        pytest.skip("chattr +i is not available or not permitted here")
    try:
        assert _chattr(frozen, "+i")

        def never(*a, **k):
            raise AssertionError("the checkpoint was read before the output was checked")

        monkeypatch.setattr(models, "detect_layout", never)
        assert main(["convert", str(ck), "-o", str(out)]) == 2
        assert f"cannot create files in {out}: Operation not permitted" in _err(capsys)
        assert main(["export", "--arch", ARCH, "-o", str(frozen / "m.onnx")]) == 2
        assert f"cannot create files in {frozen}" in _err(capsys)
    finally:
        _chattr(out, "-i")
        _chattr(frozen, "-i")
    assert (out / "manifest.json").is_file() and _leftovers(tmp_path) == []


def test_write_atomic_full_disk_keeps_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")

    def full(fd, data):
        os.write(fd, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "_write_all", full)
    with pytest.raises(SaiError, match=r"cannot write .*model.onnx: No space left on device; the filesystem is full"):
        outputs.write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_write_atomic_removes_temporaries_of_dead_writers(tmp_path):
    host = outputs.owner_tag().split("@", 1)[1]
    stale = tmp_path / f".model.onnx.{_dead_pid()}@{host}abc.tmp"
    stale.write_bytes(b"half")
    outputs.write_atomic(tmp_path / "model.onnx", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_convert_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, stub_export):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".out.tmp-x" / "model.onnx"))

    stub_export["export"] = full
    out = tmp_path / "out"
    assert main(["convert", str(tiny_checkpoint(tmp_path)), "-o", str(out), "-q"]) == 2
    err = _err(capsys)
    assert f"cannot write {out}: No space left on device" in err and "free space" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_export_input_shape_bounded_before_allocating(tmp_path, capsys, monkeypatch):
    ck = tiny_checkpoint(tmp_path)
    assert main(["export", "--checkpoint", str(ck), "--shape", "1,3,100000,100000",
                 "-o", str(tmp_path / "m.onnx")]) == 2
    assert "more than 2^31-1" in _err(capsys)
    with pytest.raises(SaiError, match="max-shape.*more than 2"):
        from sai.runtime.convert import resolve_profile

        resolve_profile(None, None, "64,3,8192,8192")
    monkeypatch.setattr(export_mod, "available_memory", lambda: 1 << 30)  # 1 GiB free
    assert main(["export", "--checkpoint", str(ck), "--shape", "1,3,4096,4096",
                 "-o", str(tmp_path / "m.onnx")]) == 2
    err = _err(capsys)
    assert "GB to run sparse_resnet18 once" in err and "smaller --shape" in err
    assert not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------------------------
# item 9: no leftovers; Ctrl-C publishes nothing
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The system temp folder, redirected to an empty folder of this test."""
    t = tmp_path / "systmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def _ours(folder: Path) -> list[str]:
    """Entries of ``folder`` except torch's persistent compile cache (shared by every run, not a leak)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_"))


def test_validate_and_compare_dense_leave_nothing_in_tmp(tmp_path_factory, private_tmp, capsys):
    outdir, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0
    assert main(["validate", str(outdir), "--iterations", "1", "--threads", "1"]) == 0
    assert "validate: PASSED" in capsys.readouterr().out
    assert _ours(private_tmp) == []
    assert main(["bench", str(outdir), "--backend", "onnxruntime", "--iterations", "2", "--warmup", "0",
                 "--compare-dense", "--threads", "1"]) == 0
    assert "dense twin" in capsys.readouterr().out
    assert _ours(private_tmp) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, stub_export):
    dead, tag = _dead_pid(), outputs.owner_tag().split("@", 1)[1]
    stale = tmp_path / f".out.tmp-{dead}@{tag}abc"
    live = tmp_path / f".out.tmp-1@{tag}abc"  # pid 1 is alive
    other_host = tmp_path / f".out.tmp-{dead}@elsewhere-abc"
    for p in (stale, live, other_host):
        p.mkdir()
        (p / "model.onnx").write_bytes(b"half")
    from sai.runtime.convert import convert

    convert(tiny_checkpoint(tmp_path), ARCH, tmp_path / "out")
    assert not stale.exists() and live.exists() and other_host.exists()
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_untagged_temporaries_of_older_versions_go_after_a_day(private_tmp):
    old, fresh = private_tmp / "sai-validate-ab_cd123", private_tmp / "sai-validate-xy_zw789"
    for p in (old, fresh):
        p.mkdir()
        (p / "model.masks.onnx").write_bytes(b"x" * 10)
    day_ago = time.time() - outputs.LEGACY_AGE_S - 60
    os.utime(old, (day_ago, day_ago))
    with outputs.tempdir("sai-validate-") as tmp:
        assert tmp.is_dir()
    assert not old.exists() and fresh.exists() and _ours(private_tmp) == [fresh.name]


def test_previous_result_parked_by_a_killed_publish_comes_back(tmp_path, stub_export):
    from sai.runtime.convert import convert, recover_interrupted

    out = tmp_path / "out"
    convert(tiny_checkpoint(tmp_path), ARCH, out)
    parked = tmp_path / f".out.old-{_dead_pid()}@{outputs.owner_tag().split('@', 1)[1]}"
    os.replace(out, parked)  # killed between the two renames
    recover_interrupted(out)
    assert (out / "manifest.json").is_file() and not parked.exists()


@pytest.mark.parametrize("step", ["[2/4]", "[3/4]", "[4/4]"])
def test_ctrl_c_during_convert_publishes_nothing(tmp_path, capsys, stub_export, monkeypatch, step):
    import sai.runtime.convert as conv

    ck = tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", str(ck), "-o", str(out), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    real = conv.convert

    def progress_interrupt(*a, **kw):
        def progress(msg):
            if msg.startswith(step):
                raise KeyboardInterrupt

        kw["progress"] = progress
        return real(*a, **kw)

    monkeypatch.setattr(conv, "convert", progress_interrupt)
    assert main(["convert", str(ck), "-o", str(out), "--shape", "2,3,32,32"]) == 130
    assert "interrupted" in _err(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _leftovers(tmp_path) == []
    assert main(["convert", str(ck), "-o", str(tmp_path / "new"), "--shape", "2,3,32,32"]) == 130
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_ctrl_c_swallowed_by_a_library_still_publishes_nothing(tmp_path, capsys, stub_export):
    """A KeyboardInterrupt raised inside a Python callback that C++ code called is printed and dropped by
    the binding (or a library catches it); convert must notice the Ctrl-C anyway."""

    def swallowing_library():
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what the binding does with it

    stub_export["export"] = swallowing_library
    out = tmp_path / "out"
    assert main(["convert", str(tiny_checkpoint(tmp_path)), "-o", str(out), "-q"]) == 130
    assert "interrupted" in _err(capsys)
    assert not out.exists() and _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("existing", [False, True])
def test_signal_during_publish_rolls_back(tmp_path, monkeypatch, existing):
    import sai.runtime.convert as conv

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "manifest.json").write_text("old")
        outputs.write_marker(out, "sai convert")  # an earlier output of sai convert
    tmp = tmp_path / ".out.tmp-x"
    tmp.mkdir()
    (tmp / "manifest.json").write_text("new")
    real = os.replace
    calls = []

    def replace(a, b):
        real(a, b)
        if Path(a) in (out, tmp):  # the folder renames (not the marker's own atomic write)
            calls.append((a, b))
            if len(calls) == 1:
                signal.raise_signal(signal.SIGINT)  # Ctrl-C between the renames

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        conv.publish_dir(tmp, out, "sai convert")
    monkeypatch.setattr(os, "replace", real)
    assert (tmp / "manifest.json").read_text() == "new"  # left for the caller to remove
    if existing:
        assert (out / "manifest.json").read_text() == "old"
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.tmp-x"] + (["out"] if existing else []))


# ----------------------------------------------------------------------------------------------
# items 7 and 10: validate's arguments and report; empty models; non-finite weights
# ----------------------------------------------------------------------------------------------


def test_validate_checks_arguments_and_report_path_first(tmp_path_factory, tmp_path, capsys, monkeypatch):
    import sai.runtime.validate as val

    def never(*a, **k):
        raise AssertionError("backends were loaded before the arguments were checked")

    monkeypatch.setattr(val, "load_backends", never)
    outdir = tmp_path / "anything"
    (tmp_path / "afile").write_text("x")
    for argv, words in (
        (["--iterations", "0"], "--iterations must be at least 1"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--backends", ","], "--backends is empty"),
        (["-o", str(tmp_path / "afile" / "r.json")], "is a file, not a folder"),
        (["-o", str(tmp_path)], "-o"),
        (["-o", "/proc/r.json"], "cannot create files in /proc"),
    ):
        assert main(["validate", str(outdir), *argv]) == 2
        captured = capsys.readouterr()
        assert "validate:" not in captured.out and captured.err.count("\n") == 1, captured
        assert words in captured.err, captured.err


def test_info_on_an_empty_or_graphless_file_is_an_error(tmp_path, capsys):
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert main(["info", str(tmp_path / "empty.onnx")]) == 2
    assert f"{tmp_path / 'empty.onnx'} is empty (0 bytes)" in _err(capsys)
    (tmp_path / "nograph.onnx").write_bytes(b"\x08\x07")  # parses as a ModelProto with ir_version 7 only
    assert main(["info", str(tmp_path / "nograph.onnx")]) == 2
    assert "holds no graph" in _err(capsys)


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, capsys):
    obj = torch.load(tiny_checkpoint(tmp_path), weights_only=True)
    obj["state_dict"]["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    obj["state_dict"]["fc.bias"][1] = float("inf")
    bad = tmp_path / "diverged.pth"
    torch.save(obj, bad)
    t = time.perf_counter()
    assert main(["convert", str(bad), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = _err(capsys)
    assert "non-finite weights: layer2.0.conv1.weight (1 NaN of" in err and "fc.bias (1 inf of 10)" in err
    assert str(bad) in err and not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    assert main(["export", "--checkpoint", str(bad), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "layer2.0.conv1.weight" in _err(capsys) and not (tmp_path / "m.onnx").exists()
    assert time.perf_counter() - t < 60  # refused at load, before the export
