"""sai-deploy's PEP 517 build backend: setuptools, plus the C++ libraries compiled at wheel build time.

``pip wheel .`` / ``python -m build --wheel`` build a wheel that carries, inside the package, the two C++
libraries of the CPU path and the sources and headers they were compiled from:

- ``sai/models/_lib/libsai_cpu_ops.so``: the PyTorch CPU extension (models/csrc/sai_cpu_ops.cpp), compiled
  against the torch of the build environment (get_requires_for_build_wheel asks for it; the library records
  that torch version and is not loaded under another one);
- ``sai/runtime/lib/libsai_ort_ops.so``: the onnxruntime custom-op library (models/csrc/ort/), on the ONNX
  Runtime headers that sai.runtime.build_ort_ops fetches (one pinned npm tarball, sha256-checked) and
  PyPI's scipy-openblas32 (also a runtime dependency, found through $ORIGIN);
- ``sai/models/csrc/`` (with ``common/``, the per-element math shared with the TensorRT plugins) and the
  ``*.inputs.json`` records of what each build read.

Both are built by the same code that ``make install`` runs in place (sai.models.cpu_kernels.build,
sai.runtime.build_ort_ops.build), in a copy of the source tree, so a wheel build never writes into the
checkout (except the header cache under build/). Everything else (metadata, sdist, the editable install
of ``make install``) is setuptools' unchanged: an editable install compiles nothing here (the Makefile
builds the libraries in place) and needs no torch in its build environment.

Prerequisites of a wheel build: g++ (C++17, OpenMP) and npm (the ONNX Runtime headers), or
``$SAI_ORT_INCLUDE_DIR`` pointing at an onnxruntime release's ``include/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (the hooks this backend does not change)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)
from setuptools.dist import Distribution

# What the compiles need in the build environment (a wheel build only). torch: the extension's headers and
# libraries (the Makefile pins the same release); scipy-openblas32: the GEMM of the onnxruntime library.
NATIVE_REQUIRES = ["torch>=2.6,<2.14", "scipy-openblas32==0.3.34.481.3"]
# Not copied into the staging tree: caches, environments, and the libraries the build makes anew.
_SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", "demo_out",
              "bench_out", "out", "_lib"}


def get_requires_for_build_wheel(config_settings=None):
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *NATIVE_REQUIRES]


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in _SKIP_DIRS or n.endswith(".egg-info")}
    if Path(folder).name == "lib" and Path(folder).parent.name == "runtime":
        skip |= {n for n in names if n.startswith("libsai_ort_ops.so")}
    return skip


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    src = Path.cwd()
    staging = Path(tempfile.mkdtemp(prefix="sai-wheel-"))
    try:
        tree = staging / "src"
        shutil.copytree(src, tree, ignore=_ignore, symlinks=True)
        env = dict(os.environ, SAI_NATIVE_RELOCATABLE="1", SAI_CPU_KERNELS="0")
        env.setdefault("SAI_ORT_HEADER_CACHE", str(src / "build" / "ort-headers"))
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "native", str(tree)], env=env)
        if proc.returncode != 0:
            raise SystemExit(f"sai-deploy: building the C++ libraries failed (exit {proc.returncode}); see above")
        os.chdir(tree)
        has_ext = Distribution.has_ext_modules
        # the wheel carries compiled libraries: a platform wheel (cp3xx-cp3xx-linux_x86_64), not py3-none-any
        Distribution.has_ext_modules = lambda self: True
        try:
            return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
        finally:
            Distribution.has_ext_modules = has_ext
            os.chdir(src)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _import_from(tree: Path) -> None:
    """Make ``sai`` (and its sub-packages, mapped to the top-level folders as pyproject.toml maps them)
    importable from ``tree`` without running sai.models' or sai.runtime's __init__ (which would import
    what only the installed package needs)."""
    import types

    sys.path.insert(0, str(tree))
    import sai

    for name in ("models", "runtime"):
        mod = types.ModuleType(f"sai.{name}")
        mod.__path__ = [str(tree / name)]
        sys.modules[f"sai.{name}"] = mod
        setattr(sai, name, mod)


def native(tree: Path) -> int:
    """Compile both libraries into ``tree`` (models/_lib, runtime/lib), the two compiles side by side."""
    from concurrent.futures import ThreadPoolExecutor

    _import_from(tree)
    from sai.models import cpu_kernels
    from sai.runtime import build_ort_ops

    include, why = build_ort_ops.find_headers()  # fetched (if at all) before the compiles start
    if include is None:
        print(f"sai-deploy wheel: no ONNX Runtime headers for libsai_ort_ops.so: {why}", file=sys.stderr)
        return 1
    with ThreadPoolExecutor(2) as pool:
        cpu = pool.submit(cpu_kernels.build)
        ort = pool.submit(build_ort_ops.build)
        print(cpu.result(), flush=True)
        path, why = ort.result()
    if path is None:
        print(f"sai-deploy wheel: cannot build libsai_ort_ops.so: {why}", file=sys.stderr)
        return 1
    print(path, flush=True)
    return 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "native":
    sys.exit(native(Path(sys.argv[2])))
