"""The wheel: ``pip wheel --no-deps .`` builds the C++ CPU kernels and libsai_ort_ops.so into the package
(build_backend/sai_build.py), with every file they were compiled from; installed into a fresh virtual
environment (the wheel alone, its dependencies seen from this one), ``sai doctor`` run outside the checkout
finds both libraries inside that environment and loads them.

Slow (two C++ compiles, about a minute on 2 idle cores): the build runs without build isolation, on this
environment's torch and scipy-openblas32, and the ONNX Runtime headers of build/ort-headers (make install
fetches them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAI_", "PYTHON", "PIP_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    from sai.runtime import build_ort_ops

    if build_ort_ops.find_headers(fetch=False)[0] is None and not os.environ.get("SAI_ORT_INCLUDE_DIR"):
        pytest.skip("no cached ONNX Runtime headers (make install fetches them into build/ort-headers)")
    out = tmp_path_factory.mktemp("wheel")
    env = _clean_env(SAI_ORT_HEADER_CACHE=str(build_ort_ops.header_cache()))
    if os.environ.get("SAI_ORT_INCLUDE_DIR"):
        env["SAI_ORT_INCLUDE_DIR"] = os.environ["SAI_ORT_INCLUDE_DIR"]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(ROOT)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    wheels = list(out.glob("sai_deploy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_carries_the_libraries_and_what_they_were_built_from(wheel):
    # a platform wheel: it holds compiled code
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        records = {lib: json.loads(zf.read(lib + ".inputs.json")) for lib in
                   ("sai/models/_lib/libsai_cpu_ops.so", "sai/runtime/lib/libsai_ort_ops.so")}
        for lib, rec in records.items():
            assert lib in names
            # every file the compiler read inside the package ships with it (stale() checks them)
            for rel in rec["inputs"]:
                assert f"sai/models/{rel}" in names, (lib, rel)
        shared = {n for n in names if n.startswith("sai/models/csrc/common/")}
        assert {"sai/models/csrc/common/sparseSampleConvMath.h", "sai/models/csrc/common/interpolateMath.h",
                "sai/models/csrc/common/saiCommon.h"} <= shared
        assert set(records["sai/models/_lib/libsai_cpu_ops.so"]["inputs"]) >= {
            "csrc/sai_cpu_ops.cpp", "csrc/common/sparseSampleConvMath.h", "csrc/common/interpolateMath.h"}
        assert records["sai/models/_lib/libsai_cpu_ops.so"]["tag"].startswith("torch ")
        ort_lib = zf.read("sai/runtime/lib/libsai_ort_ops.so")
    # no path of the build machine in the library's runpath (readelf is the reference reader)
    tmp = wheel.with_name("libsai_ort_ops.so")
    tmp.write_bytes(ort_lib)
    dyn = subprocess.run(["readelf", "-d", str(tmp)], capture_output=True, text=True)
    if dyn.returncode != 0:
        pytest.skip("readelf is not installed")
    runpath = [ln for ln in dyn.stdout.splitlines() if "RUNPATH" in ln or "RPATH" in ln]
    assert runpath and all("$ORIGIN" in p for ln in runpath for p in ln.split("[", 1)[1].rstrip("]").split(":")), runpath


def test_installed_wheel_doctor_finds_both_libraries(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, onnxruntime, scipy-openblas32...) from this environment, as
    # --system-site-packages would give them; this environment's editable sai is not seen (its .pth hook
    # runs only in its own site folder)
    (site / "sai_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                        str(wheel)], capture_output=True, text=True, timeout=600, env=_clean_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    r = subprocess.run([str(venv / "bin" / "sai"), "doctor", "--json"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env=_clean_env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    cpu, ort = checks["sai cpu kernels"], checks["sai ort ops"]
    assert cpu["ok"], cpu
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    if "avx2" in flags and "fma" in flags:  # the wheel's -march=x86-64-v3 keeps the AVX2 register tiles
        assert "avx2" in cpu["detail"], cpu["detail"]
    assert ort["ok"], ort
    assert str(site) in ort["detail"] and str(ROOT) not in ort["detail"], ort["detail"]
    where = subprocess.run([str(py), "-c", "import sai.models.cpu_kernels as c; print(c.LIBRARY)"],
                           capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
