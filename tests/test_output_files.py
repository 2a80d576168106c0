"""Single-file outputs (issue 23 leftover): `sai export -o`, `sai validate --report` and `sai bench-ops --json`
overwrite an existing file only when it is provably an earlier sai output of that kind (an ONNX whose producer is
sai-deploy with sai's metadata; a JSON carrying sai's ``"sai_output"`` tag; never a symbolic link, an empty file or
a file that a sai output folder's marker lists); anything else is refused before the work with one line naming
--force, byte for byte untouched; --force overwrites it.

References: the bytes, modes and times on the disk (os.stat / read_bytes, not the code under test), onnx's own
parser for what an ONNX model is, the CLI's exit status and stderr.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import types
from pathlib import Path

import onnx
import pytest

import sai.exporter
from sai.cli.main import main
from sai.errors import SaiError
from sai.outputs import MARKER_NAME, ONNX_KIND, check_output_file, file_owner_reason, json_tag, write_atomic

REPORT, BENCH = "sai-validate-report", "sai-bench-ops"
EXPORT = ["export", "--arch", "sparse_resnet18", "--base-width", "8", "--num-classes", "10",
          "--shape", "1,3,32,32"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def state(path: Path):
    """What is at ``path`` on the disk, links not followed."""
    if not os.path.lexists(path):
        return None
    st = os.lstat(path)
    if os.path.islink(path):
        return ("link", os.readlink(path), st.st_mtime_ns)
    if not stat.S_ISREG(st.st_mode):  # a fifo: never opened (a read would block)
        return ("special", st.st_mode, st.st_mtime_ns, st.st_ino)
    return ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns, st.st_ino)


def assert_refused(rc: int, err: str, path: Path) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and "--force" in err and "choose another path" in err, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name)


@pytest.fixture
def fake_export(outdir, monkeypatch):
    """`sai export`'s exporter writes a copy of the session's real sai ONNX (what is tested is the check around it)."""
    calls = []

    def fake(arch, path, **kw):
        calls.append(path)
        write_atomic(path, (outdir / "model.onnx").read_bytes())
        return types.SimpleNamespace(summary=lambda: f"wrote {path}")

    monkeypatch.setattr(sai.exporter, "export_onnx", fake)
    return calls


# ---- the rule, against onnx's own parser --------------------------------------------------------------


def test_a_sai_onnx_is_recognised_and_others_are_not(outdir, tmp_path):
    own = tmp_path / "own.onnx"
    shutil.copy(outdir / "model.onnx", own)
    model = onnx.load(str(own))
    assert model.producer_name == "sai-deploy"  # what the rule keys on, read by onnx itself
    assert file_owner_reason(own, ONNX_KIND) is None
    other = tmp_path / "other.onnx"
    model.producer_name = "pytorch"
    onnx.save(model, str(other))
    assert "not of sai" in file_owner_reason(other, ONNX_KIND)
    model.producer_name = "sai-deploy"
    del model.metadata_props[:]
    onnx.save(model, str(other))
    assert "without sai's metadata" in file_owner_reason(other, ONNX_KIND)
    data = own.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])  # a half-written model is never sai's
    assert file_owner_reason(tmp_path / "cut.onnx", ONNX_KIND) == "it is not an ONNX model"
    (tmp_path / "tail.onnx").write_bytes(data + b"\x00junk")
    assert file_owner_reason(tmp_path / "tail.onnx", ONNX_KIND) == "it is not an ONNX model"


def test_json_tag_rule(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({**json_tag(REPORT), "passed": True}))
    assert file_owner_reason(p, REPORT) is None
    assert file_owner_reason(p, BENCH) is not None  # another command's JSON is not this one's
    for doc in ({"passed": True, "backends": ["torch"]}, {"sai_output": REPORT}, {"sai_output": 1}, [json_tag(REPORT)]):
        p.write_text(json.dumps(doc))
        assert file_owner_reason(p, REPORT) is not None, doc


def test_a_file_listed_by_an_output_folder_is_not_overwritten(outdir, capsys):
    target = outdir / "model.onnx"  # sai's own ONNX, but it belongs to the convert OUTDIR (its marker lists it)
    assert MARKER_NAME in os.listdir(outdir)
    before = state(target)
    rc, _, err = run_cli(capsys, *EXPORT, "-o", target)
    assert_refused(rc, err, target)
    assert "sai convert output in" in err and state(target) == before


# ---- the verbs ----------------------------------------------------------------------------------------


def test_export_refuses_a_user_file_before_the_export(tmp_path, capsys, fake_export):
    target = tmp_path / "model.onnx"
    target.write_text("my notes\n")
    before = state(target)
    rc, _, err = run_cli(capsys, *EXPORT, "-o", target)
    assert_refused(rc, err, target)
    assert "exists and is not an earlier ONNX model written by sai (it is not an ONNX model)" in err
    assert state(target) == before and fake_export == [] and leftovers(tmp_path) == []
    rc, _, err = run_cli(capsys, *EXPORT, "-o", target, "--force")
    assert rc == 0, err
    assert "--force" in err and onnx.load(str(target)).producer_name == "sai-deploy"


def test_export_replaces_its_own_earlier_output(outdir, tmp_path, capsys, fake_export):
    target = tmp_path / "model.onnx"
    shutil.copy(outdir / "model.onnx", target)
    rc, _, err = run_cli(capsys, *EXPORT, "-o", target)
    assert rc == 0, err
    assert fake_export == [str(target)] and err == ""


def test_export_never_replaces_a_symbolic_link(outdir, tmp_path, capsys, fake_export):
    real = tmp_path / "real.onnx"
    shutil.copy(outdir / "model.onnx", real)  # even a link to sai's own model: sai never wrote the link
    link = tmp_path / "model.onnx"
    link.symlink_to(real)
    before_link, before_real = state(link), state(real)
    rc, _, err = run_cli(capsys, *EXPORT, "-o", link)
    assert_refused(rc, err, link)
    assert "symbolic link" in err and state(link) == before_link and state(real) == before_real


def test_validate_report_refuses_a_user_file_before_the_work(outdir, tmp_path, capsys):
    report = tmp_path / "r.json"
    report.write_text('{"my": "data"}\n')
    before = state(report)
    rc, out, err = run_cli(capsys, "validate", outdir, "-o", report, "--threads", "1", "--iterations", "1")
    assert_refused(rc, err, report)
    assert "validate:" not in out and state(report) == before  # refused before any backend ran


def test_validate_report_replaces_its_own_and_tags_it(outdir, tmp_path, capsys):
    report = tmp_path / "r.json"
    argv = ["validate", outdir, "-o", report, "--threads", "1", "--iterations", "1", "--no-masks"]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, out + err
    first = json.loads(report.read_text())
    assert first["sai_output"] == f"{REPORT}/1" and first["passed"] is True
    rc, out, err = run_cli(capsys, *argv)  # its own earlier report: replaced without --force
    assert rc == 0 and err == "", out + err
    assert json.loads(report.read_text())["sai_output"] == f"{REPORT}/1"


def test_bench_ops_json_refuses_a_user_file_before_timing(tmp_path, capsys):
    target = tmp_path / "bench.json"
    target.write_bytes(b'{"cases": []}')
    before = state(target)
    rc, out, err = run_cli(capsys, "bench-ops", "--sections", "op", "--iterations", "1", "-o", target)
    assert_refused(rc, err, target)
    assert "sai bench-ops:" not in out and state(target) == before


def test_a_file_that_appears_during_the_work_is_not_overwritten(tmp_path):
    """The check is repeated right before the rename: a file created meanwhile (the work takes minutes) stays."""
    target = tmp_path / "r.json"
    check_output_file(target, "--report", kind=REPORT)  # nothing there yet
    target.write_text("appeared while validating\n")
    with pytest.raises(SaiError, match="--report .* exists and is not an earlier sai-validate-report output"):
        write_atomic(target, json.dumps(json_tag(REPORT)), flag="--report", kind=REPORT)
    assert target.read_text() == "appeared while validating\n" and leftovers(tmp_path) == []
    write_atomic(target, json.dumps(json_tag(REPORT)), flag="--report", kind=REPORT, force=True)
    assert json.loads(target.read_text()) == json_tag(REPORT)


def test_force_is_documented_in_help(capsys):
    for verb in ("export", "validate", "bench-ops"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        assert "--force" in capsys.readouterr().out


# ---- a generator of existing files at the output path ---------------------------------------------------


def _random_file(rng: random.Random, path: Path, sai_onnx: bytes, tmp: Path) -> str:
    """Something at ``path`` that sai did not write (as the verb's kind); returns what."""
    choice = rng.randrange(11)
    if choice == 0:
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
        return "random bytes"
    if choice == 1:
        path.write_text("".join(rng.choice("abc{}[]\":,\n ") for _ in range(rng.randint(1, 300))))
        return "random text"
    if choice == 2:
        keys = rng.sample(["passed", "backends", "cases", "threads", "format", "sai_output", "name", "outputs"], 3)
        path.write_text(json.dumps({k: rng.choice([1, "x", None, [], {}, f"{BENCH}/1" if k != "format" else "x"])
                                    for k in keys if k != "sai_output" or rng.random() < 0.5}))
        return "a JSON object"
    if choice == 3:
        path.write_text(json.dumps(json_tag(rng.choice(["sai-other", "validate", "sai-validate-report-x"]))))
        return "a JSON of another kind"
    if choice == 4:
        path.write_bytes(b"")
        return "an empty file"
    if choice == 5:
        path.write_bytes(sai_onnx[: rng.randint(1, len(sai_onnx) - 1)])
        return "a truncated sai ONNX"
    if choice == 6:
        model = onnx.load_from_string(sai_onnx)
        model.producer_name = rng.choice(["pytorch", "tf2onnx", "sai", "sai-deploy "])
        path.write_bytes(model.SerializeToString())
        return "an ONNX of another producer"
    if choice == 7:
        target = tmp / f"target{rng.randrange(10**6)}"
        target.write_bytes(sai_onnx)
        path.symlink_to(target)
        return "a symbolic link"
    if choice == 8:
        path.symlink_to(tmp / "missing")
        return "a dangling symbolic link"
    if choice == 9:
        os.mkfifo(path)
        return "a fifo"
    data = bytearray(sai_onnx)
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)  # a flipped bit: may still parse, then it must still be proven sai's
    path.write_bytes(bytes(data))
    return "a bit-flipped sai ONNX"


@pytest.mark.parametrize("seed", range(6))
def test_generated_files_are_never_modified_without_force(outdir, tmp_path, capsys, fake_export, seed):
    rng = random.Random(seed)
    sai_onnx = (outdir / "model.onnx").read_bytes()
    verbs = {
        "export": (ONNX_KIND, lambda p: [*EXPORT, "-o", p]),
        "validate": (REPORT, lambda p: ["validate", outdir, "-o", p, "--iterations", "1", "--threads", "1"]),
        "bench-ops": (BENCH, lambda p: ["bench-ops", "--sections", "op", "--iterations", "1", "-o", p]),
    }
    for case in range(8):
        verb = rng.choice(sorted(verbs))
        kind, argv = verbs[verb]
        folder = tmp_path / f"c{case}"
        folder.mkdir()
        path = folder / rng.choice(["model.onnx", "r.json", "out", ".hidden", "ünï.json"])
        what = _random_file(rng, path, sai_onnx, tmp_path)
        if file_owner_reason(path, kind) is None:  # only a bit flip outside the checked fields can get here
            assert what == "a bit-flipped sai ONNX" and kind == ONNX_KIND
            continue
        before = state(path)
        rc, out, err = run_cli(capsys, *argv(path))
        assert_refused(rc, err, path)
        assert state(path) == before, (verb, what)
        assert sorted(os.listdir(folder)) == [path.name], (verb, what)
    assert fake_export == []
