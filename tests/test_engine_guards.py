"""Checks that come before the work (issue 23): `sai bench` refuses a batch outside the engine's profile, or
inputs beyond the memory, before it allocates or runs anything; inputs in the other byte order run as the
same values (host) or are refused with the byte order named (device inputs, bound as they are)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

import sai.runtime as rt
from sai.cli.main import main
from sai.runtime.engine import Engine, InputError


@pytest.fixture
def no_alloc(monkeypatch):
    """Fail the test if bench builds its input feeds (the allocation the checks must come before)."""
    calls = []

    def refuse(self, *a, **k):
        calls.append(a)
        raise AssertionError("example_feeds ran before the checks")

    monkeypatch.setattr(Engine, "example_feeds", refuse)
    return calls


def test_bench_checks_the_profile_first(outdir, no_alloc, capsys):
    rc = main(["bench", str(outdir), "--backend", "onnxruntime", "--batch", "100000", "--iterations", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "batch 100000 is above the engine profile's maximum [8, 3, 64, 64]" in err
    assert not no_alloc


def test_bench_checks_the_memory_first(outdir, no_alloc, monkeypatch, capsys):
    """No profile bounds a checkpoint on torch: the inputs' size against the memory available (a small
    budget here: 1000 x 3 x 224 x 224 float32 = 0.60 GB, more than half of 1 GB)."""
    monkeypatch.setattr("sai.exporter.export.available_memory", lambda: 10**9)
    ck = json.loads((outdir / "manifest.json").read_text())["checkpoint"]["path"]
    rc = main(["bench", ck, "--backend", "torch", "--batch", "1000", "--shape", "224,224", "--iterations", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"takes {1000 * 3 * 224 * 224 * 4 / 1e9:.1f} GB for the inputs alone" in err and "--batch" in err
    assert not no_alloc


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_big_endian_host_input_gives_the_same_answer(outdir, backend):
    ck = json.loads((outdir / "manifest.json").read_text())["checkpoint"]["path"]
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with rt.load(ck if backend == "torch" else outdir, backend=backend, threads=1, verify=False) as eng:
        big = x.astype(">f4")
        assert big.dtype.byteorder == ">" and np.array_equal(big, x)
        np.testing.assert_array_equal(eng.infer(big)["logits"], eng.infer(x)["logits"])
        msg = eng.dtype_error(eng.primary_input, np.dtype(">f4"))
        assert "float32 (big-endian)" in msg and "byte order" in msg


def test_big_endian_device_input_names_the_byte_order(tmp_path):
    from test_runtime_trt import FakeCudart, fake_trt

    from sai.runtime.trt_backend import TensorRTEngine

    cudart = FakeCudart()
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    eng = TensorRTEngine(str(plan), plugin_library="/fake/lib.so", streams=1, trt=fake_trt(cudart), cudart=cudart)
    with eng:
        _, ptr = cudart.cudaMalloc(2 * 3 * 8 * 8 * 4)
        dev = types.SimpleNamespace(__cuda_array_interface__={"shape": (2, 3, 8, 8), "typestr": ">f4",
                                                              "data": (ptr, False), "version": 3})
        with pytest.raises(InputError, match=r"dtype float32 \(big-endian\), expected float32"):
            eng.infer({"input": dev})
