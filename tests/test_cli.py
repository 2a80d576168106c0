"""The `sai` console script: help, version, doctor, and one-line errors."""

import json
import subprocess
import sys

import pytest

import sai


def run_sai(*args):
    return subprocess.run([sys.executable, "-m", "sai", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    out = run_sai("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"sai {sai.__version__}"
    out = run_sai("--help")
    assert out.returncode == 0 and "doctor" in out.stdout


def test_doctor_reports_every_piece_and_what_missing_ones_disable():
    out = run_sai("doctor", "--json")
    assert out.returncode == 0, out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    for name in ("python", "torch", "onnx", "onnxruntime", "polygraphy", "tensorrt", "nvcc", "gpu"):
        assert name in checks
    import torch

    assert checks["torch"]["ok"] and checks["torch"]["detail"] == torch.__version__
    for c in checks.values():
        if not c["ok"]:
            assert c["disables"] and c["fix"], c


def test_unknown_verb_is_a_usage_error():
    out = run_sai("no-such-verb")
    assert out.returncode == 2 and "invalid choice" in out.stderr


# ---- one convention across verbs (issue 27 item 7) -------------------------------------------------------------

def _verb_parsers():
    import argparse

    from sai.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _visible_actions(p):
    import argparse

    return [a for a in p._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]


def test_every_option_has_help_and_shows_its_default():
    problems = []
    for verb, p in _verb_parsers().items():
        formatter = p._get_formatter()
        for a in _visible_actions(p):
            name = "/".join(a.option_strings) or a.dest
            text = formatter._expand_help(a) if a.help else ""
            if not text.strip():
                problems.append(f"sai {verb} {name}: no help text")
            elif a.option_strings and a.nargs != 0 and not a.required and "default" not in text:
                problems.append(f"sai {verb} {name}: the help does not state the default ({text[:60]!r})")
    assert not problems, "\n".join(problems)


def test_rendered_help_shows_value_defaults():
    from sai.constants import DEFAULT_OPSET

    verbs = _verb_parsers()
    export_help = " ".join(verbs["export"].format_help().split())
    assert f"ONNX opset (>= 19) (default: {DEFAULT_OPSET})" in export_help
    bench_help = " ".join(verbs["bench"].format_help().split())
    assert "untimed runs before the timed ones (default: 5)" in bench_help


def test_output_json_shape_and_count_options_are_spelled_once():
    verbs = _verb_parsers()
    for verb in ("export", "convert", "export-triton", "validate", "bench-ops"):  # the verbs that write a file
        opts = {s for a in verbs[verb]._actions for s in a.option_strings}
        assert {"-o", "--output"} <= opts, verb
    for verb, p in verbs.items():
        for a in p._actions:
            if "--json" in a.option_strings:  # a flag everywhere (bench-ops: also the deprecated --json PATH)
                assert a.nargs == 0 or (a.nargs == "?" and a.const is True), verb
            if set(a.option_strings) & {"--repeats", "--sizes", "--input-shape", "--opt-shape", "--report"}:
                assert a.help == "==SUPPRESS==", (verb, a.option_strings)  # hidden aliases only
    for verb in ("bench", "validate", "bench-ops"):
        assert "--iterations" in {s for a in verbs[verb]._actions for s in a.option_strings}, verb


ALIASES = [
    (["export", "-o", "m.onnx", "--input-shape", "1,3,64,64"], "--input-shape", "--shape", "shape", "1,3,64,64"),
    (["convert", "ck.pth", "-o", "out", "--opt-shape", "2,3,64,64"], "--opt-shape", "--shape", "opt_shape",
     "2,3,64,64"),
    (["validate", "out", "--report", "r.json"], "--report", "-o/--output", "report", "r.json"),
    (["bench-ops", "--sizes", "64x64,128x96"], "--sizes", "--shapes", "shapes", "64x64,128x96"),
    (["bench-ops", "--repeats", "3"], "--repeats", "--iterations", "iterations", 3),
    (["bench-ops", "--json", "b.json"], "--json PATH", "-o PATH", "output", "b.json"),
]


@pytest.mark.parametrize("argv, old, new, dest, value", ALIASES, ids=[a[1] for a in ALIASES])
def test_old_spellings_still_work_with_one_warning(capsys, argv, old, new, dest, value):
    from sai.cli.main import build_parser

    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old} is deprecated, use {new}" in err, err
    args = build_parser().parse_args(argv + argv[-2:])  # given twice: still one warning
    assert getattr(args, dest) == value and capsys.readouterr().err.count("\n") == 1


def test_new_spellings_parse_silently(capsys):
    from sai.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "-o", "m.onnx", "--shape", "1x3x64x64"])
    assert args.shape == "1x3x64x64" and args.output == "m.onnx"
    args = parser.parse_args(["bench-ops", "--shapes", "64x64", "128x96", "--iterations", "3", "--json", "-o", "b"])
    assert args.shapes == ["64x64", "128x96"] and args.iterations == 3 and args.json is True and args.output == "b"
    args = parser.parse_args(["validate", "out", "-o", "r.json", "--json"])
    assert args.report == "r.json" and args.json is True
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("given, sizes", [
    ("256x416,512x832", [(256, 416), (512, 832)]),  # the old --sizes comma list
    (["256x416", "512X832"], [(256, 416), (512, 832)]),  # --shapes A B
    (["64,64"], [(64, 64)]),  # one H,W
    (["64x64,96x128", "32x32"], [(64, 64), (96, 128), (32, 32)]),
])
def test_bench_ops_shapes(given, sizes):
    from sai.cli.bench_ops import _sizes

    assert _sizes(given) == sizes


def test_bench_ops_shapes_error_names_a_form_that_works():
    from sai.cli.bench_ops import DEFAULT_SIZES, _sizes
    from sai.errors import SaiError

    with pytest.raises(SaiError) as info:
        _sizes(["256,416,512,832"])
    msg = str(info.value)
    assert "HxW" in msg and f"--shapes {DEFAULT_SIZES}" in msg
    assert _sizes(DEFAULT_SIZES.split()) == [(256, 416), (512, 832), (800, 1333)]  # the example itself parses


def test_flops_table_shows_small_totals_with_units_and_measures_the_counted_size(capsys):
    """Issue 27: `sai flops` printed "0.00 G" for every small total and measured one size while counting another.
    The numbers in the table are the JSON's exact MAC counts with a unit; --measure alone measures at the counted
    input; a different --measure size is said in a note."""
    from sai.cli.main import main

    argv = ["flops", "--arch", "sparse_resnet18", "--res", "64", "--input", "classification", "--base-width", "8"]
    assert main([*argv, "--density", "0.5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 1e6 < res["kernel_macs"] < 1e9 and 1e6 < res["official_macs"] < 1e9  # a small total: shown in M
    assert main([*argv, "--density", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "0.00 G" not in text and f"{res['official_macs'] / 1e6:.2f} M" in text
    assert f"{res['kernel_macs'] / 1e6:.2f} M" in text
    for op, macs in res["kernel_by_op_macs"].items():
        if macs:
            share = f"{macs / res['kernel_macs']:.1%}"
            assert any(line.split()[:1] == [op] and line.rstrip().endswith(share) for line in text.splitlines()), op
    assert main([*argv, "--measure", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["measured_hw"] == res["input_hw"] == [64, 64]
    assert main([*argv, "--measure", "32"]) == 0
    assert "densities measured at 32x32, MACs counted at 64x64" in capsys.readouterr().out


def test_bench_ops_json_flag_prints_the_document_alone_on_stdout(capsys):
    """--json means the same in every verb: the result as JSON on stdout; bench-ops' table and progress move to
    stderr so `sai bench-ops --json | jq` reads one document."""
    from sai.cli.main import main

    assert main(["bench-ops", "--sections", "op", "--iterations", "1", "--threads", "1", "--json"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["sai_output"] == "sai-bench-ops/1" and doc["cases"]
    assert "--iterations 1" in doc["command"] and "sai bench-ops:" in cap.err
