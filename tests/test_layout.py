"""The package layout of docs/design.md section 2: every package folder ships as ``sai.<folder>`` (which modules
may import which: tests/test_layering.py), installed or run from a checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_ships():
    """Every folder of the checkout that holds an ``__init__.py`` (found on disk, not in pyproject.toml) is a
    package the wheel carries, under the name its place gives it: folder X as sai.X, X/Y as sai.X.Y."""
    tool = _setuptools()
    dirs = {folder: pkg for pkg, folder in tool["package-dir"].items()}
    found = {}
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("build", "tests"):
            continue
        top = rel.parts[0]
        assert top in dirs, f"{top}/ holds a package but pyproject.toml's package-dir does not map it"
        found[".".join([dirs[top], *rel.parts[1:]])] = rel
    assert sorted(found) == sorted(tool["packages"])
    for pkg, rel in found.items():
        assert pkg == "sai" or pkg == "sai." + ".".join(rel.parts[1:] if rel.parts[0] == "sai" else rel.parts), pkg


def test_the_checkout_resolves_each_package_to_its_folder():
    """``make gpu-check`` runs from a checkout that is not installed (benchmarks/gpu_check.py's bootstrap: the root
    on sai's search path): in an interpreter without site-packages each top-level package resolves to the
    folder pyproject.toml installs it from."""
    dirs = _setuptools()["package-dir"]
    code = ("import importlib.util, json, sys; sys.path.insert(0, sys.argv[1]); import gpu_check; "
            "gpu_check.bootstrap_from_checkout(); "
            "print(json.dumps({n: importlib.util.find_spec(n).origin for n in sys.argv[2:]}))")
    names = [n for n in dirs if n.count(".") == 1]
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT / "benchmarks"), *names],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    origins = json.loads(proc.stdout)
    for name in names:
        assert Path(origins[name]) == ROOT / dirs[name] / "__init__.py", name


def test_the_demo_extra_carries_matplotlib_and_dev_installs_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("matplotlib>=3.8,<4") for r in extras["demo"])
    assert any(r.startswith("sai-deploy[") and "demo" in r for r in extras["dev"])
