"""`python -m sai.runtime.build_ort_ops [--force] [--require]`: build libsai_ort_ops.so, the onnxruntime custom-op
library of the sai ops (models/csrc/ort/sai_ort_ops.cpp on the kernels of models/csrc/sai_cpu_kernels.h),
into ``runtime/lib/`` where ``sai.runtime.ort_ops`` finds it. Run by the Makefile's install step.

What it needs, and where each piece comes from:

- ONNX Runtime's C/C++ API headers (``onnxruntime_c_api.h``, ``onnxruntime_cxx_api.h``). PyPI's
  ``onnxruntime`` wheel ships none (only ``libonnxruntime.so`` and the Python binding), nor does any
  other wheel found on PyPI (onnxruntime-extensions, -genai, -gpu, onnx-extended: none). The official
  headers do ship inside the npm registry's ``com.github.asus4.onnxruntime`` package (the ONNX Runtime
  Unity plugin, MIT, which carries Microsoft's iOS xcframework with its ``Headers/``); this script takes
  them from there with ``npm pack`` of one pinned version whose tarball's sha256 it checks (NPM_SHA256)
  before reading it, into ``build/ort-headers/`` (``$SAI_ORT_HEADER_CACHE`` elsewhere; never committed).
  The official onnxruntime release tarball (GitHub) or NuGet package would be the first choice, but the
  machines that build this project reach only PyPI, Debian and npm; npm is the registry that carries
  Microsoft's header files unchanged. ``$SAI_ORT_INCLUDE_DIR`` points at another copy (e.g. an
  onnxruntime release's ``include/``) instead. Headers of an older C API version than the installed
  onnxruntime are fine (the library asks for exactly the version it was compiled with).
- A BLAS for the GEMM: PyPI's ``scipy-openblas32`` (headers, ``libscipy_openblas.so``), which the
  Makefile installs into the venv.

Without headers or BLAS it prints one line saying what is missing and exits 0: the portable model
(its ONNX function bodies) is then what onnxruntime runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from sai.errors import SaiError
from sai.models import native_build
from sai.outputs import atomic_path, owned_tempdir, publish_dir, recover_interrupted

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCE = ROOT / "models" / "csrc" / "ort" / "sai_ort_ops.cpp"
LINKER_MAP = ROOT / "models" / "csrc" / "ort" / "sai_ort_ops.map"
# Headers by bare name from models/csrc/ and models/csrc/common/ (shared with the CPU extension and the
# TensorRT plugins); every file the compile reads is recorded beside the library (sai.models.native_build).
INCLUDES = native_build.INCLUDE_DIRS
LIBRARY = HERE / "lib" / "libsai_ort_ops.so"
ENV_INCLUDE = "SAI_ORT_INCLUDE_DIR"
ENV_CACHE = "SAI_ORT_HEADER_CACHE"
# A wheel build (build_backend/sai_build.py) sets it: the library then finds the BLAS through $ORIGIN
# (site-packages/sai/runtime/lib -> site-packages/scipy_openblas32/lib), not a path of the build machine.
ENV_RELOCATABLE = "SAI_NATIVE_RELOCATABLE"

# The npm package that carries the official ONNX Runtime headers (C API version 29 = onnxruntime 1.29).
NPM_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"
NPM_SHA256 = "e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d"  # of its .tgz (150 MB)
NPM_HEADERS = "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/"


def api_version(include_dir: Path) -> Optional[int]:
    """ORT_API_VERSION of the headers in ``include_dir``."""
    try:
        text = (include_dir / "onnxruntime_c_api.h").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", text)
    return int(m.group(1)) if m else None


def header_cache() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else ROOT / "build" / "ort-headers"


def _source_line() -> str:
    return f"npm {NPM_PACKAGE} sha256 {NPM_SHA256}: {NPM_HEADERS}\n"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _usable(d: Path) -> bool:
    return (d / "onnxruntime_c_api.h").is_file() and (d / "onnxruntime_cxx_api.h").is_file()


def _npm_headers(dest: Path) -> tuple[Optional[Path], str]:
    """Extract the headers of NPM_PACKAGE into ``dest/include``; (path, "") or (None, why not)."""
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed (the headers come from the npm registry)"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run([npm, "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
                                  capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"npm pack {NPM_PACKAGE} failed: {exc}"
        tgz = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tgz:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no tarball"]
            return None, f"npm pack {NPM_PACKAGE} failed: {last[0][:200]}"
        got = _sha256_file(tgz[0])
        if got != NPM_SHA256:
            return None, (f"npm pack {NPM_PACKAGE}: the tarball's sha256 is {got}, not the pinned {NPM_SHA256}; "
                          f"refusing its headers (point ${ENV_INCLUDE} at an onnxruntime release's include/)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted(dest)
        staging = owned_tempdir(f".{dest.name}.tmp-", dest.parent)
        try:
            (staging / "include").mkdir()
            with tarfile.open(tgz[0]) as tf:
                for member in tf.getmembers():
                    name = member.name
                    if member.isfile() and name.startswith(NPM_HEADERS) and name.endswith(".h") and "/" not in name[len(NPM_HEADERS):]:
                        data = tf.extractfile(member).read()
                        (staging / "include" / Path(name).name).write_bytes(data)
                    elif member.isfile() and name == "package/LICENSE":
                        (staging / "LICENSE").write_bytes(tf.extractfile(member).read())
            (staging / "SOURCE").write_text(_source_line())
            if not _usable(staging / "include"):
                return None, f"{NPM_PACKAGE} has no onnxruntime headers under {NPM_HEADERS}"
            if dest.exists() and not (dest / "SOURCE").is_file():  # the cache is ours: an unmarked one is replaced too
                shutil.rmtree(dest, ignore_errors=True)
            publish_dir(staging, dest, "sai's onnxruntime header fetch", force=True)  # our own cache under build/
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest / "include", ""


def find_headers(fetch: bool = True) -> tuple[Optional[Path], str]:
    """The include dir with onnxruntime_c_api.h: $SAI_ORT_INCLUDE_DIR, the onnxruntime wheel (should a
    future one ship headers), the build/ cache, else (``fetch``) the npm package. (dir, "") or (None, why)."""
    env = os.environ.get(ENV_INCLUDE)
    if env:
        d = Path(env)
        return (d, "") if _usable(d) else (None, f"${ENV_INCLUDE}={env} has no onnxruntime_c_api.h/onnxruntime_cxx_api.h")
    try:
        import onnxruntime

        wheel = Path(onnxruntime.__file__).parent
        for d in (wheel / "include", wheel / "capi" / "include"):
            if _usable(d):
                return d, ""
    except ImportError:
        pass
    cache = header_cache()
    try:
        pinned = (cache / "SOURCE").read_text() == _source_line()  # a cache of another version is fetched again
    except OSError:
        pinned = False
    if pinned and _usable(cache / "include"):
        return cache / "include", ""
    if not fetch:
        return None, "no onnxruntime headers (PyPI's onnxruntime wheel ships none)"
    return _npm_headers(cache)


def find_blas() -> tuple[Optional[dict], str]:
    try:
        import scipy_openblas32 as sob
    except ImportError:
        return None, "scipy-openblas32 is not installed (pip install scipy-openblas32)"
    return {"include": sob.get_include_dir(), "lib": sob.get_lib_dir(), "name": sob.get_library()}, ""


def _runtime_api_version() -> Optional[int]:
    try:
        import onnxruntime
    except ImportError:
        return None
    m = re.match(r"1\.(\d+)", onnxruntime.__version__)
    return int(m.group(1)) if m else None


def compile_command(include: Path, blas: dict, output: Path) -> list[str]:
    cmd = [os.environ.get("CXX", "g++"), "-O3", f"-march={native_build.march()}", "-std=c++17", "-fPIC", "-shared",
           "-fvisibility=hidden", "-Wall", "-Wno-unused-parameter", "-Wno-unused-function",
           f"-I{include}", f"-I{blas['include']}"]
    cmd += [f"-I{d}" for d in INCLUDES]
    # $ORIGIN: a copy finds the BLAS beside it; $ORIGIN/../../..: the scipy_openblas32 of an installed wheel's
    # site-packages; the BLAS folder itself for a build in place (not for a wheel: a path of the build machine)
    rpath = ["$ORIGIN", "$ORIGIN/../../../scipy_openblas32/lib"]
    if os.environ.get(ENV_RELOCATABLE) != "1":
        rpath.append(str(blas["lib"]))
    cmd += [str(SOURCE), "-o", str(output), f"-Wl,--version-script={LINKER_MAP}",
            f"-L{blas['lib']}", f"-l{blas['name']}", f"-Wl,-rpath,{':'.join(rpath)}", "-Wl,--no-undefined", "-lpthread"]
    return cmd


def stale_reason() -> Optional[str]:
    """Why the library must be rebuilt (missing, its source, linker map or any header its compile read
    edited since), or None."""
    return native_build.stale_reason(LIBRARY)


def stale() -> bool:
    return stale_reason() is not None


def build(verbose: bool = True) -> tuple[Optional[Path], str]:
    """Compile the library (to a temporary name, then renamed). (path, "") or (None, why it was skipped);
    SaiError when the compiler fails."""
    include, why = find_headers()
    if include is None:
        return None, why
    blas, why = find_blas()
    if blas is None:
        return None, why
    hdr, rt = api_version(include), _runtime_api_version()
    if hdr is not None and rt is not None and hdr > rt:
        return None, (f"the onnxruntime headers in {include} are C API {hdr}, newer than the installed "
                      f"onnxruntime (1.{rt}); point ${ENV_INCLUDE} at headers of version <= 1.{rt}")
    LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        depfile = Path(scratch) / "deps.d"
        with atomic_path(LIBRARY) as tmp:
            cmd = compile_command(include, blas, tmp) + native_build.depfile_flags(depfile)
            if verbose:
                print(f"building {LIBRARY.name}: {cmd[0]} ... {SOURCE.name} (onnxruntime C API {hdr} headers "
                      f"from {include}, {blas['name']})", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SaiError(f"building {LIBRARY.name} failed:\n{proc.stderr[-4000:]}")
        native_build.write_record(LIBRARY, depfile, extra=[LINKER_MAP])
    return LIBRARY, ""


def main(argv: list[str]) -> int:
    if not stale() and "--force" not in argv:
        print(f"{LIBRARY} is up to date")
        return 0
    path, why = build()
    if path is None and "--require" in argv:  # a wheel build: the wheel promises the library
        print(f"build_ort_ops: cannot build {LIBRARY.name}: {why}", file=sys.stderr)
        return 1
    if path is None:
        print(f"build_ort_ops: *** skipped {LIBRARY.name}: {why}; onnxruntime runs the portable model "
              "(function bodies) ***")
        return 0
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
