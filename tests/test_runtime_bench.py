"""sai bench and the dense twin (same weights) used by --compare-dense."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from runtime_helpers import tiny_checkpoint, tiny_outdir

from sai.cli.main import main
from sai.runtime.bench import dense_twin_model, percentiles


def test_percentiles_match_definition():
    s = percentiles(list(range(1, 101)))
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01) and s["min_ms"] == 1 and s["max_ms"] == 100


def test_dense_twin_equals_sparse_model_in_dense_mode(tmp_path):
    """Same weights: the sparse model with every position sampled computes exactly the dense ResNet."""
    from sai.models import model_from_checkpoint

    ck = tiny_checkpoint(tmp_path)
    twin, arch = dense_twin_model(ck)
    sparse, _ = model_from_checkpoint(str(ck), sampling="dense")
    assert arch == "resnet18"
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 48, 40)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(twin(x), sparse.eval()(x), rtol=1e-4, atol=1e-4)


def _run_json(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_bench_onnxruntime_outdir_json(tmp_path_factory, capsys):
    outdir, _ = tiny_outdir(tmp_path_factory)
    rep = _run_json(capsys, ["bench", str(outdir), "--backend", "onnxruntime", "--batch", "2", "--iterations", "8",
                             "--warmup", "1", "--threads", "1", "--json"])
    (r,) = rep["results"]
    assert r["backend"] == "onnxruntime" and r["input_shape"] == [2, 3, 32, 32] and r["iterations"] == 8
    assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["throughput"] == pytest.approx(2 / (r["p50_ms"] / 1e3))


def test_bench_torch_compare_dense_text(tmp_path, capsys):
    ck = tiny_checkpoint(tmp_path)
    rc = main(["bench", str(ck), "--shape", "32,32", "--iterations", "4", "--warmup", "1", "--compare-dense"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("sparse_resnet18 torch/cpu input [1, 3, 32, 32]: p50 ")
    assert out[1].startswith("resnet18 (dense twin) torch/cpu")
    assert out[2].startswith("sparse/dense p50 latency ratio: ")


def test_bench_bad_shape_is_one_line_error(tmp_path, capsys):
    ck = tiny_checkpoint(tmp_path)
    assert main(["bench", str(ck), "--shape", "32"]) == 2
    assert "--shape must be H,W or N,C,H,W" in capsys.readouterr().err


def test_bench_ops_onnx_op_cases_tiny():
    """`sai bench-ops --sections onnx` op cases run end to end (timings are printed, never asserted)."""
    from sai.benchmarks.opbench import bench_onnx_op, format_table

    cases = bench_onnx_op(1, size=9, channels=4, densities=(0.5, 1.0), threads=1)
    assert [(c.name.split()[0], c.density) for c in cases] == [
        ("SparseSampleConv", 0.5), ("SparseSampleConv", 1.0), ("deformable", 0.5), ("deformable", 1.0)]
    for c in cases:
        assert c.sparse_ms > 0 and c.dense_ms > 0 and c.ratio == pytest.approx(c.dense_ms / c.sparse_ms)
    assert "vs DeformConv" in format_table(cases, 1)


def test_bench_ops_custom_op_case_says_not_built(tmp_path, monkeypatch):
    """Without libsai_ort_ops.so the custom-op line is there and says "not built" (no timings, no failure)."""
    from sai.benchmarks import opbench
    from sai.runtime import ort_ops

    monkeypatch.setattr(ort_ops, "built_library", lambda: (None, "libsai_ort_ops.so is not built (make install)"))
    cases = opbench.bench_onnx(1, "sparse_resnet18", [(32, 32)], 0.3, threads=1, workdir=str(tmp_path),
                               options={"base_width": 8})
    assert [c.name.split()[0] for c in cases] == ["portable", "custom-op"]
    custom = cases[1]
    assert custom.name.startswith("custom-op sparse_resnet18") and custom.sparse_ms is None
    assert custom.note.startswith("not built")
    line = [ln for ln in opbench.format_table(cases, 1).splitlines() if ln.split()[1:2] == ["custom-op"]]
    assert len(line) == 1 and "not built" in line[0]
    json.loads(opbench.to_json(cases, 1, "test"))  # strict JSON: no NaN for the missing timings


def test_bench_ops_model_sections_at_several_sizes_json(tmp_path, capsys):
    """`sai bench-ops` model lines at every --shapes entry on torch and onnxruntime, the --densities sweep at the
    largest size, the environment and the command in the JSON (shape only, never speed)."""
    out = tmp_path / "b.json"
    rc = main(["bench-ops", "--sections", "model,onnx-model", "--model-arch", "sparse_resnet18",
               "--model-base-width", "8", "--shapes", "32x32", "32x48", "--densities", "0.3,0.6", "--iterations", "1",
               "--threads", "1", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    rep = json.loads(out.read_text())
    got = sorted((c["extra"]["backend"], c["extra"]["height"], c["extra"]["width"], c["density"])
                 for c in rep["cases"])
    want = sorted((b, 32, w, 0.3) for b in ("torch", "onnxruntime", "onnxruntime+libsai_ort_ops") for w in (32, 48))
    want += [(b, 32, 48, 0.6) for b in ("torch", "onnxruntime", "onnxruntime+libsai_ort_ops")]
    assert got == sorted(want)
    env = rep["environment"]
    assert env["cpu"] and env["cores"] >= 1 and env["threads"] == 1 and env["versions"]["torch"]
    assert rep["command"].startswith("sai bench-ops --sections model,onnx-model") and "--shapes 32x32 32x48" in rep["command"]
    assert "custom-op sparse_resnet18 vs resnet18 ONNX, onnxruntime 32x48" in text


@pytest.mark.parametrize("flag, value, needle", [("--shapes", "512", "--shapes item must be HxW"), ("--densities", "0,0.5", "(0, 1]"),
                                                 ("--sections", "onnx,gpu", "unknown section")])
def test_bench_ops_bad_flags_are_one_line_errors(capsys, flag, value, needle):
    assert main(["bench-ops", flag, value]) == 2
    assert needle in capsys.readouterr().err

