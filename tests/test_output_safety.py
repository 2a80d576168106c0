"""Output folders of `sai convert` and `sai export-triton` (issue 23): a folder is replaced only when it is
provably an earlier output of the same command; anything else is refused before the work, every user file
untouched byte for byte, and `--force` does what its help says (the folder is replaced; symbolic links are
removed, never followed; never a folder holding an input). A signal after the output was published does not
fail the run.

The exports are the real CLI on the shipped demo checkpoint; where a test runs many cases, convert's export
step copies the session's real export (as tests/test_convert.py does), since the folder checks do not
depend on it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from runtime_helpers import demo_outdir

import sai.exporter.export as export_mod
from sai.cli.main import main
from sai.models import demo_data
from sai.outputs import MARKER_NAME, foreign_reason, write_marker

CKPT = Path(demo_data.__file__).parent / "zoo" / "sai_demo_r18" / "sparse_resnet18.pth"
SHAPE = ["--shape", "1,3,64,64", "--max-shape", "16,3,64,64"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A real `sai convert` OUTDIR of the shipped checkpoint (session-cached)."""
    return demo_outdir(tmp_path_factory)


@pytest.fixture
def fast_export(converted, monkeypatch):
    """convert's export step copies the real export of ``converted`` (the folder logic is what is tested)."""
    manifest = json.loads((converted / "manifest.json").read_text())

    def fake(arch, path, **kw):
        shutil.copy(converted / "model.onnx", path)
        return types.SimpleNamespace(noise_inputs=[], sampling="deterministic", opset=manifest["export"]["opset"],
                                     input_names=["input"], output_names=["logits"], metadata=manifest["metadata"])

    monkeypatch.setattr(export_mod, "export_onnx", fake)


def snapshot(root: Path) -> dict:
    """Everything under ``root`` as it is on the disk, links not followed: files by content, links by target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o777)
    return out


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_refused(rc: int, err: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "is not written by" in err and "--force" in err, err


# ---- the issue's reproducer, through the real CLI (no stubs) ----------------------------------------


def test_issue_reproducer_convert_refuses_a_folder_with_a_foreign_manifest(tmp_path, capsys):
    w = tmp_path / "w"
    (w / "src").mkdir(parents=True)
    (w / "manifest.json").write_text('{"name":"pwa"}\n')
    (w / "src" / "app.js").write_text("x\n")
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", w, *SHAPE)
    assert_refused(rc, err)
    assert "src" in err
    assert (w / "src" / "app.js").read_text() == "x\n" and (w / "manifest.json").read_text() == '{"name":"pwa"}\n'
    assert sorted(p.name for p in w.iterdir()) == ["manifest.json", "src"] and leftovers(tmp_path) == []


def test_issue_reproducer_export_triton_refuses_a_folder_with_a_foreign_readme(converted, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="export-triton builds Triton's configs")
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "README.md").write_text("# my project\n")
    (repo / "docs" / "notes.md").write_text("keep me\n")
    before = snapshot(repo)
    rc, _, err = run_cli(capsys, "export-triton", converted, "-o", repo)
    assert_refused(rc, err)
    assert snapshot(repo) == before and leftovers(tmp_path) == []


# ---- a generator of existing folder contents --------------------------------------------------------

NAMES = ["manifest.json", "README.md", MARKER_NAME, "model.onnx", "model.trt.onnx", "model.plan", "config.pbtxt",
         "sparse_resnet18_onnx", "plugins", "1", "notes.txt", ".hidden", "data.bin", "src", "ünïcode name",
         ".sai-output.json.bak", ".out.old-1@host-x", "labels.txt"]


def _content(rng: random.Random) -> bytes:
    return rng.choice([b"", b"{}", b'{"name": "pwa"}', b'{"format": "sai-output/1"}', bytes(rng.randbytes(64)),
                       b"# Triton model repository for sparse_resnet18\n"])


def populate(folder: Path, outside: Path, rng: random.Random, command: str) -> str:
    """Random contents that are NOT provably an earlier output of ``command``; returns how they were made."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = []
    for _ in range(rng.randint(1, 6)):
        parent = folder
        for _ in range(rng.randint(0, 2)):  # nested folders
            parent = parent / rng.choice(NAMES)
            if parent.exists() and not parent.is_dir() or parent.is_symlink():
                break
            parent.mkdir(exist_ok=True)
        else:
            name = parent / rng.choice(NAMES)
            if name.exists() or name.is_symlink():
                continue
            roll = rng.random()
            if roll < 0.15:  # a link to a file outside (deleting through it would lose the user's data)
                target = outside / f"target{rng.randint(0, 10**6)}"
                target.write_bytes(b"outside " + rng.randbytes(8))
                name.symlink_to(target)
                kinds.append("link-file")
            elif roll < 0.25:
                target = outside / f"dir{rng.randint(0, 10**6)}"
                target.mkdir(exist_ok=True)
                (target / "inner.txt").write_text("outside dir")
                name.symlink_to(target, target_is_directory=True)
                kinds.append("link-dir")
            elif roll < 0.3:
                name.symlink_to(folder / "does-not-exist")
                kinds.append("dangling")
            else:
                name.write_bytes(_content(rng))
                kinds.append("file")
    if not any(folder.iterdir()):
        (folder / "user.txt").write_text("mine")
    marker = folder / MARKER_NAME
    can_mark = not marker.is_symlink() and not marker.is_dir()
    roll = rng.random()
    if roll < 0.3 and can_mark:
        # a forged marker of the right command that lists fewer entries than the folder holds
        marker.unlink(missing_ok=True)
        listed = sorted(p.name for p in folder.iterdir())[:-1]
        write_marker(folder, command, names=listed)
        if foreign_reason(folder, command) is None:  # everything listed (one entry only): add an unlisted one
            (folder / "unlisted.txt").write_text("user data")
        kinds.append("forged-marker")
    elif roll < 0.4 and can_mark:
        marker.unlink(missing_ok=True)
        write_marker(folder, "sai some-other-command")
        kinds.append("other-command-marker")
    elif roll < 0.5 and can_mark:
        marker.unlink(missing_ok=True)
        write_marker(folder, command)  # a genuine marker, then the user edits a listed file
        files = [Path(d) / f for d, _, names in os.walk(folder) for f in names
                 if not (Path(d) / f).is_symlink() and (Path(d) / f) != marker]
        if files:
            files[0].write_bytes(files[0].read_bytes() + b"edited")
        else:
            (folder / "added.txt").write_text("added after")
        kinds.append("edited-after-marker")
    assert foreign_reason(folder, command) is not None, kinds  # the generator only makes foreign folders
    return ",".join(kinds)


def _case(tmp_path: Path, seed: int, command: str):
    rng = random.Random(seed)
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "target"
    kinds = populate(folder, outside, rng, command)
    return folder, outside, kinds


SEEDS = range(16)


@pytest.mark.parametrize("seed", SEEDS)
def test_convert_never_touches_a_foreign_folder(fast_export, tmp_path, capsys, seed):
    folder, outside, kinds = _case(tmp_path, seed, "sai convert")
    before, before_out = snapshot(folder), snapshot(outside)
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", folder, "-q", *SHAPE)
    assert snapshot(folder) == before, kinds  # first: not one byte of the user's lost
    assert_refused(rc, err)
    assert snapshot(outside) == before_out and leftovers(tmp_path) == []
    # --force: the folder is replaced by the new output; what its links pointed at is untouched
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", folder, "-q", "--force", *SHAPE)
    assert rc == 0, err
    assert "--force" in err and "deleted" in err
    assert sorted(p.name for p in folder.iterdir()) == [MARKER_NAME, "manifest.json", "model.cpu-fused.onnx",
                                                        "model.onnx", "model.trt.onnx"]
    assert foreign_reason(folder, "sai convert") is None
    assert snapshot(outside) == before_out and leftovers(tmp_path) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_export_triton_never_touches_a_foreign_folder(converted, tmp_path, capsys, seed):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="export-triton builds Triton's configs")
    folder, outside, kinds = _case(tmp_path, seed, "sai export-triton")
    before, before_out, before_src = snapshot(folder), snapshot(outside), snapshot(converted)
    rc, _, err = run_cli(capsys, "export-triton", converted, "-o", folder)
    assert snapshot(folder) == before, kinds  # first: not one byte of the user's lost
    assert_refused(rc, err)
    assert snapshot(outside) == before_out and leftovers(tmp_path) == []
    rc, _, err = run_cli(capsys, "export-triton", converted, "-o", folder, "--force")
    assert rc == 0, err
    assert (folder / "README.md").read_text().startswith("# Triton model repository")
    assert foreign_reason(folder, "sai export-triton") is None
    assert snapshot(outside) == before_out and snapshot(converted) == before_src and leftovers(tmp_path) == []


# ---- sai's own earlier outputs are replaced; a changed one is not --------------------------------------


def test_second_convert_replaces_its_own_output(fast_export, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, "convert", CKPT, "-o", out, "-q", *SHAPE)[0] == 0
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", out, "-q", "--shape", "2,3,64,64")
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["shapes"]["input"]["opt"] == [2, 3, 64, 64]
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["format"] == "sai-output/1" and marker["command"] == "sai convert"
    assert sorted(marker["entries"]) == ["manifest.json", "model.cpu-fused.onnx", "model.onnx", "model.trt.onnx"]
    # the user edits a file sai wrote, or drops one in: no longer provably sai's, so refused
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out)
    assert_refused(*run_cli(capsys, "convert", CKPT, "-o", out, "-q", *SHAPE)[::2])
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    (out / "manifest.json").write_text((out / "manifest.json").read_text() + " ")
    before = snapshot(out)
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", out, "-q", *SHAPE)
    assert_refused(rc, err)
    assert "changed since sai wrote it" in err and snapshot(out) == before


def test_second_export_triton_replaces_its_own_output(converted, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="export-triton builds Triton's configs")
    repo = tmp_path / "repo"
    assert run_cli(capsys, "export-triton", converted, "-o", repo)[0] == 0
    rc, _, err = run_cli(capsys, "export-triton", converted, "-o", repo, "--name", "again")
    assert rc == 0, err
    assert (repo / "again_onnx" / "config.pbtxt").is_file() and not (repo / "sparse_resnet18_onnx").exists()
    # a convert OUTDIR is not an export-triton repository, nor the reverse
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", repo, "-q", *SHAPE)
    assert_refused(rc, err)
    assert "sai export-triton" in err


def test_old_convert_output_without_marker(fast_export, converted, tmp_path, capsys):
    """An OUTDIR of a sai version before the marker is replaced only when every file in it is one convert
    writes, recorded with its sha256 in a manifest.json of convert's schema."""
    old = tmp_path / "old"
    shutil.copytree(converted, old)
    (old / MARKER_NAME).unlink()
    assert run_cli(capsys, "convert", CKPT, "-o", old, "-q", *SHAPE)[0] == 0
    assert foreign_reason(old, "sai convert") is None and (old / MARKER_NAME).is_file()

    def legacy(name: str, change) -> Path:
        d = tmp_path / name
        shutil.copytree(converted, d)
        (d / MARKER_NAME).unlink()
        change(d)
        return d

    cases = {
        "extra": lambda d: (d / "notes.txt").write_text("mine"),
        "edited": lambda d: (d / "model.trt.onnx").write_bytes(b"my own model"),
        "schema": lambda d: (d / "manifest.json").write_text('{"format": "sai-convert/1", "files": {}}'),
        "foreign": lambda d: (d / "manifest.json").write_text('{"name": "pwa"}'),
        "garbage": lambda d: (d / "manifest.json").write_bytes(b"\xff\x00not json"),
        "subdir": lambda d: (d / "model.plan").mkdir(),
    }
    for name, change in cases.items():
        d = legacy(name, change)
        before = snapshot(d)
        rc, _, err = run_cli(capsys, "convert", CKPT, "-o", d, "-q", *SHAPE)
        assert_refused(rc, err)
        assert snapshot(d) == before, name


def test_force_never_replaces_a_folder_holding_an_input(fast_export, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    ck = folder / "model.pth"
    shutil.copy(CKPT, ck)
    before = snapshot(folder)
    rc, _, err = run_cli(capsys, "convert", ck, "-o", folder, "-q", "--force", *SHAPE)
    assert rc == 2 and "refused even with --force" in err and "an input" in err, err
    assert snapshot(folder) == before
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", home, "-q", "--force", *SHAPE)
    assert rc == 2 and "home folder" in err, err
    assert (home / "project").is_dir()


def test_force_is_documented_in_help(capsys):
    for verb in ("convert", "export-triton"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--force" in text and "EVERYTHING in it are deleted" in text and MARKER_NAME in text


# ---- a signal after the output was published --------------------------------------------------------


def test_signal_held_during_the_commit_after_publish_exits_0(fast_export, tmp_path, capsys, monkeypatch):
    """SIGINT after the renames stood but before publish_dir's held signals are raised: the output is
    complete, so the run exits 0 and says so; the in-process caller gets its handlers back."""
    import sai.outputs as outputs

    real = outputs.AfterPublish.__call__

    def late_signal(self, path):
        signal.raise_signal(signal.SIGINT)  # held by publish_dir's deferred_signals
        real(self, path)

    monkeypatch.setattr(outputs.AfterPublish, "__call__", late_signal)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "convert", CKPT, "-o", out, "-q", *SHAPE)
    assert rc == 0, err
    assert "the output is complete" in err and foreign_reason(out, "sai convert") is None
    assert (out / "model.onnx").is_file() and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


WRAPPER = textwrap.dedent("""
    import atexit, json, shutil, sys, time, types
    import sai.exporter.export as ex
    from sai.cli.main import main  # as the console script: the sai CLI is this process's program

    SRC = sys.argv.pop(1)
    META = json.load(open(SRC + "/manifest.json"))

    def fake(arch, path, **kw):  # the real export of SRC, copied (the teardown is what is tested)
        shutil.copy(SRC + "/model.onnx", path)
        return types.SimpleNamespace(noise_inputs=[], sampling="deterministic", opset=META["export"]["opset"],
                                     input_names=["input"], output_names=["logits"], metadata=META["metadata"])

    ex.export_onnx = fake
    atexit.register(time.sleep, 1.5)  # a teardown that surely outlasts the signal's delivery
    sys.exit(main())
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_in_teardown_after_publish_exits_0(converted, tmp_path, sig):
    script = tmp_path / "sai_entry.py"
    script.write_text(WRAPPER)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(converted), "convert", str(CKPT), "-o", str(out), "-q",
                             *SHAPE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    first = proc.stdout.readline()  # "wrote OUTDIR: ...", printed after the publish
    assert first.startswith("wrote "), first + proc.stderr.read()
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (proc.returncode, err)
    assert foreign_reason(out, "sai convert") is None and leftovers(tmp_path) == []


# ---- sai demo --out and sai train-demo --out --------------------------------------------------------


@pytest.fixture
def fast_demo(monkeypatch):
    """sai demo's steps and report replaced by a few files (the folder handling is what is tested); returns
    the list of steps run."""
    import sai.demo.detection as detection
    import sai.demo.pipeline as pipeline
    import sai.demo.report as report

    calls = []

    def step(title, argv, logdir, capture_stdout=False, cwd=None):
        calls.append(argv)
        logdir.mkdir(parents=True, exist_ok=True)
        (logdir / f"{argv[0]}.log").write_text("log")
        return {"command": "sai " + " ".join(argv), "status": "failed (exit 1)", "rc": 1, "seconds": 0.0,
                "stdout": ""}

    def write_report(out, zoo, **kw):
        (out / "img").mkdir(parents=True, exist_ok=True)
        (out / "img" / "img0_input.png").write_bytes(b"png")
        (out / "report.html").write_text("<html></html>")
        (out / "report.json").write_text(json.dumps({"accuracy": {"sparse": 1.0, "dense": 1.0, "n": 1},
                                                     "mean_density": 0.5, "densities": {}, "steps": [],
                                                     "flops": {"kernel": {"ratio": 0.5}}}))
        return {"speed_summary": ""}

    monkeypatch.setattr(pipeline, "_run_step", step)
    monkeypatch.setattr(report, "write_report", write_report)
    monkeypatch.setattr(detection, "resolve_zoo", lambda zoo, skip=False: None)  # no detection part
    return calls


def _demo(capsys, out, *extra) -> tuple[int, str]:
    rc = main(["demo", "--out", str(out), "--sweep-sizes", "", "--no-torch-bench", *extra])
    return rc, capsys.readouterr().err


def test_demo_out_refuses_a_foreign_folder_before_any_step(fast_demo, tmp_path, capsys):
    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "report.html").write_text("my own report")
    (out / "logs").mkdir()
    (out / "logs" / "mine.txt").write_text("mine")
    before = snapshot(out)
    rc, err = _demo(capsys, out)
    assert snapshot(out) == before and fast_demo == [] and leftovers(tmp_path) == []
    assert_refused(rc, err)
    rc, err = _demo(capsys, out, "--force")
    assert rc == 1 and "--force" in err  # 1: the stubbed steps "failed"; the report is published anyway
    assert (out / "report.html").read_text() == "<html></html>" and not (out / "logs" / "mine.txt").exists()
    assert foreign_reason(out, "sai demo") is None and leftovers(tmp_path) == []


def test_demo_out_replaces_its_own_and_old_outputs(fast_demo, converted, tmp_path, capsys):
    from sai.demo.pipeline import legacy_output_reason

    out = tmp_path / "demo_out"
    assert _demo(capsys, out)[0] == 1 and foreign_reason(out, "sai demo") is None
    assert fast_demo[0][:1] == ["convert"] and fast_demo[0][fast_demo[0].index("-o") + 1] == "model"
    assert _demo(capsys, out)[0] == 1 and foreign_reason(out, "sai demo") is None  # its own: replaced
    # a demo_out of a sai before the marker (make demo ran before): recognised entry by entry
    def make_old(d: Path) -> Path:
        shutil.copytree(out, d)
        (d / MARKER_NAME).unlink()
        shutil.copytree(converted, d / "model")
        (d / "model" / MARKER_NAME).unlink()
        return d

    old = make_old(tmp_path / "old_out")
    assert legacy_output_reason(old) is None
    assert _demo(capsys, old)[0] == 1 and foreign_reason(old, "sai demo") is None
    for i, change in enumerate((lambda d: (d / "img" / "holiday.jpg").write_bytes(b"jpg"),
                                lambda d: (d / "model" / "notes.txt").write_text("x"),
                                lambda d: (d / "report.json").write_text("{}"))):
        d = make_old(tmp_path / f"old{i}")
        change(d)
        before = snapshot(d)
        rc, err = _demo(capsys, d)
        assert snapshot(d) == before
        assert_refused(rc, err)


@pytest.fixture
def fast_train(monkeypatch):
    """train-demo's training replaced by writing its four files (the folder handling is what is tested)."""
    import sai.models.train_demo as td
    from sai.outputs import write_atomic

    calls = []

    def train(out, cfg, progress=None):
        calls.append(out)
        metrics = {"accuracy": {"sparse": 0.9, "dense": 0.95, "gap_points": 5.0}, "mean_density": 0.4,
                   "flops": {"kernel": {"ratio": 0.5}}, "config": {},
                   "files": {"sparse": td.SPARSE_FILE, "dense": td.DENSE_FILE, "log": "train_log.jsonl"}}
        for name in (td.SPARSE_FILE, td.DENSE_FILE, "train_log.jsonl"):
            write_atomic(out / name, f"new {name}")
        write_atomic(out / "metrics.json", json.dumps(metrics))
        return metrics

    monkeypatch.setattr(td, "train_demo", train)
    return calls


def _train(capsys, out, *extra) -> tuple[int, str]:
    rc = main(["train-demo", "--out", str(out), "-q", *extra])
    return rc, capsys.readouterr().err


def test_train_demo_out_overwrites_only_its_own_files(fast_train, tmp_path, capsys):
    out = tmp_path / "models"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "other.pth").write_bytes(b"my checkpoint")
    assert _train(capsys, out)[0] == 0  # files of other names are never touched
    assert (out / "notes.txt").read_text() == "mine" and (out / "other.pth").read_bytes() == b"my checkpoint"
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["command"] == "sai train-demo"
    assert sorted(marker["entries"]) == ["metrics.json", "resnet18.pth", "sparse_resnet18.pth", "train_log.jsonl"]
    assert _train(capsys, out)[0] == 0 and len(fast_train) == 2  # its own earlier result
    (out / "resnet18.pth").write_bytes(b"the user's own resnet18")  # now the user's
    before = snapshot(out)
    rc, err = _train(capsys, out)
    assert snapshot(out) == before and len(fast_train) == 2
    assert rc == 2 and "resnet18.pth changed since sai wrote it" in err and "--force" in err, err
    assert _train(capsys, out, "--force")[0] == 0
    assert (out / "resnet18.pth").read_text() == "new resnet18.pth" and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("case", ["user-metrics", "user-checkpoint", "bad-marker", "other-marker"])
def test_train_demo_out_refuses_files_it_did_not_write(fast_train, tmp_path, capsys, case):
    out = tmp_path / "models"
    out.mkdir()
    if case == "user-metrics":
        (out / "metrics.json").write_text('{"loss": 0.1}')
    elif case == "user-checkpoint":
        (out / "resnet18.pth").write_bytes(b"torchvision weights")
    elif case == "bad-marker":
        (out / MARKER_NAME).write_text("{not json")
    else:
        write_marker(out, "sai demo")
    before = snapshot(out)
    rc, err = _train(capsys, out)
    assert snapshot(out) == before and fast_train == []
    assert rc == 2 and err.count("\n") == 1 and "--force" in err, err


def test_train_demo_accepts_the_shipped_zoo_layout(fast_train, tmp_path, capsys):
    """The shipped models/zoo/sai_demo_r18 (written before the marker) is a train-demo result."""
    out = tmp_path / "zoo"
    shutil.copytree(CKPT.parent, out)
    assert not (out / MARKER_NAME).exists()
    assert _train(capsys, out)[0] == 0 and len(fast_train) == 1
