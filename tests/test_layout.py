"""The package layout of docs/design.md section 2: pyproject.toml's package-dir installs the benchmark and demo
folders as sai.benchmarks and sai.demo (which modules may import them: tests/test_layering.py)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_package_dir_maps_the_benchmark_and_demo_folders():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = tool["package-dir"]
    for pkg, folder in (("sai.benchmarks", "benchmarks"), ("sai.demo", "demo")):
        assert dirs.get(pkg) == folder and pkg in tool["packages"]
        assert (ROOT / folder / "__init__.py").is_file()


def test_the_demo_extra_carries_matplotlib_and_dev_installs_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("matplotlib>=3.8,<4") for r in extras["demo"])
    assert any(r.startswith("sai-deploy[") and "demo" in r for r in extras["dev"])
