"""The package layout of docs/design.md section 2: pyproject.toml's package-dir, and imports going one way
(sai.cli -> sai.benchmarks, sai.demo -> sai.runtime -> sai.exporter -> sai.models -> sai.errors)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent

# folder -> the sai subpackages its modules must not import
FORBIDDEN = {
    "models": ("sai.exporter", "sai.runtime", "sai.benchmarks", "sai.demo", "sai.cli"),
    "exporter": ("sai.runtime", "sai.benchmarks", "sai.demo", "sai.cli"),
    "runtime": ("sai.benchmarks", "sai.demo", "sai.cli"),
    "benchmarks": ("sai.demo", "sai.cli"),
    "demo": ("sai.cli",),
}

# known exceptions, each to be removed with the import it names
KNOWN = {("runtime/convert.py", "sai.cli.doctor")}  # the GPU probe of `sai doctor`, used by convert


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_package_dir_maps_every_python_folder():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = tool["package-dir"]
    for pkg, folder in (("sai.benchmarks", "benchmarks"), ("sai.demo", "demo")):
        assert dirs.get(pkg) == folder and pkg in tool["packages"]
        assert (ROOT / folder / "__init__.py").is_file()


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_go_one_way(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for line, name in _imports(path):
            if any((rel, k) in KNOWN for k in (name, name.rsplit(".", 1)[0])):
                continue
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder]):
                bad.append(f"{rel}:{line} imports {name}")
    assert not bad, "\n".join(bad)
