"""The dependency rule of docs/design.md section 2, checked on the source: every import of every module
(top-level and inside functions) goes down the layers

    sai.cli -> sai.runtime -> sai.exporter -> sai.models -> sai.errors (and the other sai/*.py helpers)
                                               sai.kernels beside sai.models

and nothing imports ``sai.cli``. The benchmarks and the demo are applications like the CLI: only the CLI
imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the subpackage of ``sai`` it installs as: pyproject.toml's package-dir, the one map
FOLDERS = {folder: package for package, folder in
           tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].items()}
BASE = "base"  # sai/*.py: errors, outputs (file io), compat, lazy, shapes, constants
APPS = {"cli", "benchmarks", "demo"}
ALLOWED = {
    "cli": {"cli", "benchmarks", "demo", "runtime", "exporter", "models", "kernels", BASE},
    "benchmarks": {"benchmarks", "runtime", "exporter", "models", "kernels", BASE},
    "demo": {"demo", "runtime", "exporter", "models", "kernels", BASE},
    "runtime": {"runtime", "exporter", "models", "kernels", BASE},
    "exporter": {"exporter", "models", "kernels", BASE},
    "models": {"models", "kernels", BASE},
    "kernels": {"kernels", "models", BASE},
    BASE: {BASE},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "sai":
        raise ValueError(module)
    if len(parts) == 1:
        return BASE
    if parts[1] == "__main__":  # python -m sai: the console script
        return "cli"
    if parts[1] in ("cli", "runtime", "exporter", "models", "kernels", "benchmarks", "demo"):
        return parts[1]
    return BASE  # sai.errors, sai.outputs, ...


def modules() -> list[tuple[str, Path]]:
    out = []
    for folder, package in FOLDERS.items():
        base = ROOT / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            if any(p.startswith(".") or p in ("tests", "__pycache__") for p in rel.parts):
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([package, *parts]), path))
    return out


def sai_imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import of a ``sai`` module in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sai"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sai":
                continue
            if target == "sai":  # from sai import models -> sai.models
                found += [(node.lineno, f"sai.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def violations() -> list[str]:
    bad = []
    for module, path in modules():
        own = layer_of(module)
        for line, target in sai_imports(module, path):
            try:
                theirs = layer_of(target)
            except ValueError:
                continue
            if theirs in ALLOWED[own]:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {module} ({own}) imports {target} ({theirs})")
    return bad


def test_every_import_follows_the_dependency_rule():
    bad = violations()
    assert not bad, "imports against docs/design.md section 2:\n" + "\n".join(bad)


def test_nothing_outside_the_cli_imports_it():
    bad = [v for v in violations() if "(cli)" in v.split(" imports ")[-1]]
    assert not bad, bad
    users = [m for m, p in modules() if layer_of(m) != "cli"
             and any(t.startswith("sai.cli") for _, t in sai_imports(m, p))]
    assert users == [], users


@pytest.mark.parametrize("source, expected", [
    ("from sai.cli.doctor import _gpu\n", "sai.cli.doctor"),
    ("from sai import models\n", "sai.models"),
    ("def f():\n    import sai.exporter.export\n", "sai.exporter.export"),
    ("from .graph import x\n", "sai.exporter.graph"),
    ("from . import graph\n", "sai.exporter"),
])
def test_the_checker_sees_every_kind_of_import(tmp_path, source, expected):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert [t for _, t in sai_imports("sai.exporter.mod", path)] == [expected]


def test_the_checker_flags_a_runtime_module_importing_the_cli(tmp_path):
    path = tmp_path / "convert.py"
    path.write_text("def f():\n    from sai.cli.doctor import _gpu\n")
    (target,) = [t for _, t in sai_imports("sai.runtime.convert", path)]
    assert layer_of(target) == "cli" and "cli" not in ALLOWED["runtime"]
    assert layer_of("sai.runtime.engine") not in ALLOWED["models"]


def test_the_torch_backend_takes_its_names_from_the_models_not_the_exporter():
    path = ROOT / "runtime" / "torch_backend.py"
    assert not [t for _, t in sai_imports("sai.runtime.torch_backend", path) if t.startswith("sai.exporter")]


# sai serve (docs/design.md, "sai serve"): one data plane, thin front ends that import it and never each other
SERVE_DATA_PLANE = "sai.runtime.serve_dataplane"
SERVE_FRONT_ENDS = ("sai.runtime.serve_http", "sai.runtime.serve_grpc")


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports and every ``module.name`` it takes from one (``from a import b`` -> a, a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def serve_violations(module: str, path: Path) -> list[str]:
    """A serve module's imports against the rule: a front end imports no other front end nor the server module
    built on them, nothing private from another serve module; the data plane imports no front end."""
    names = imported_names(path)
    if module in SERVE_FRONT_ENDS:
        banned = [m for m in (*SERVE_FRONT_ENDS, "sai.runtime.serve") if m != module]
    elif module == SERVE_DATA_PLANE:
        banned = [*SERVE_FRONT_ENDS, "sai.runtime.serve"]
    else:
        banned = []
    bad = [n for n in names for b in banned if n == b or n.startswith(b + ".")]
    bad += [n for n in names if n.startswith("sai.runtime.serve") and n.rsplit(".", 1)[1].startswith("_")]
    return sorted(set(bad))


def test_serve_front_ends_import_the_data_plane_and_not_each_other():
    paths = dict(modules())
    for module in SERVE_FRONT_ENDS:
        assert SERVE_DATA_PLANE in imported_names(paths[module]), module
    bad = {m: serve_violations(m, paths[m]) for m in (*SERVE_FRONT_ENDS, SERVE_DATA_PLANE)}
    assert not any(bad.values()), bad


@pytest.mark.parametrize("module, source", [
    ("sai.runtime.serve_http", "from sai.runtime.serve_grpc import make_grpc_server\n"),
    ("sai.runtime.serve_http", "def f():\n    from sai.runtime import serve_grpc\n"),
    ("sai.runtime.serve_grpc", "from sai.runtime.serve_http import make_app\n"),
    ("sai.runtime.serve_grpc", "from sai.runtime.serve import InferenceServer\n"),
    ("sai.runtime.serve_grpc", "from sai.runtime.serve_dataplane import _settle\n"),
    ("sai.runtime.serve_dataplane", "import sai.runtime.serve_http\n"),
])
def test_the_serve_checker_flags_a_front_end_importing_another(tmp_path, module, source):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert serve_violations(module, path)


# ---- import cycles (issue 28): none between modules at import time; the lazy ones on a shrinking list ------------


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if not node.level:
        return node.module or ""
    base = package.split(".")
    return ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))


def _statements(body: list, lazy: bool):
    """The statements of ``body`` that run when the module is imported (``if``/``try`` branches, not
    ``if TYPE_CHECKING:``); with ``lazy`` also those inside functions and classes."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _statements(node.orelse, lazy)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, field, []), lazy)
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body, lazy)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if lazy:
                yield from _statements(node.body, lazy)
        else:
            yield node


def import_edges(module: str, path: Path, known: set[str], lazy: bool = False) -> set[str]:
    """The project modules ``module`` imports (``from a import b`` -> ``a.b`` where that is a module, else ``a``).
    A package that holds ``module`` is left out: Python has already begun importing it, so that is no cycle."""
    out = set()
    for node in _statements(ast.parse(path.read_text(), filename=str(path)).body, lazy):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            subs = {f"{target}.{a.name}" for a in node.names} & known
            out |= subs if len(subs) == len(node.names) else subs | {target}
    return {t for t in out if t in known and t != module and not module.startswith(t + ".")}


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    paths = dict(modules())
    return {m: import_edges(m, p, set(paths), lazy) for m, p in paths.items()}


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle of ``graph``, each as a tuple starting at its smallest module."""
    found = set()
    for start in sorted(graph):  # cycles through ``start`` whose other modules sort after it
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    found.add(tuple(trail))
                elif nxt > start and nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
    return found


# Cycles closed only by imports inside functions (they import, but only when called). Each is a debt of issue
# 28; the list only shrinks: a new cycle fails the test below, and so does an entry that no longer exists.
KNOWN_LAZY_CYCLES: set[tuple[str, ...]] = {
    ("sai.kernels.sparse_sample_conv", "sai.models.ops", "sai.kernels.torch_ops"),  # argument checks in models.ops
    ("sai.kernels.torch_ops", "sai.models.ops"),
}


def test_no_import_cycle_at_import_time():
    found = cycles(import_graph())
    assert not found, "import cycles between modules (top-level imports):\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_new_import_cycle_through_lazy_imports():
    found = cycles(import_graph(lazy=True))
    new = sorted(found - KNOWN_LAZY_CYCLES)
    assert not new, "new import cycles (break them or import from a neutral module):\n" + "\n".join(
        " -> ".join(c) for c in new)
    gone = sorted(KNOWN_LAZY_CYCLES - found)
    assert not gone, f"these cycles are gone: remove them from KNOWN_LAZY_CYCLES: {gone}"


@pytest.mark.parametrize("files, cyclic", [
    ({"a.py": "from sai.x import b\n", "b.py": "import sai.x.a\n"}, True),
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from sai.x.a import g\n"}, False),
    ({"a.py": "from sai.x import b\n", "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
      "    from sai.x import a\n"}, False),
    ({"__init__.py": "from sai.x.a import f\n", "a.py": "from sai.x import b\n", "b.py": ""}, False),
    ({"__init__.py": "from sai.x.a import f\n", "a.py": "", "b.py": "from sai.x import f\n",
      "c.py": "try:\n    import sai.x.b\nexcept ImportError:\n    pass\n"}, False),
    ({"__init__.py": "from sai.x.b import f\n", "a.py": "", "b.py": "from sai.x import a\nimport sai.x\n"}, False),
    ({"a.py": "try:\n    from sai.x.b import f\nexcept ImportError:\n    pass\n", "b.py": "import sai.x.a\n"}, True),
])
def test_the_cycle_finder_sees_top_level_cycles_only(tmp_path, files, cyclic):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    names = {"sai.x" if n == "__init__.py" else "sai.x." + n[:-3]: tmp_path / n for n in files}
    graph = {m: import_edges(m, p, set(names)) for m, p in names.items()}
    assert bool(cycles(graph)) == cyclic, graph


def test_the_cycle_finder_sees_lazy_cycles_when_asked(tmp_path):
    (tmp_path / "a.py").write_text("import sai.x.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from sai.x.a import g\n")
    names = {"sai.x.a": tmp_path / "a.py", "sai.x.b": tmp_path / "b.py"}
    graph = {m: import_edges(m, p, set(names), lazy=True) for m, p in names.items()}
    assert cycles(graph) == {("sai.x.a", "sai.x.b")}
