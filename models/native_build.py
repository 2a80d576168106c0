"""What the package's C++ builds read, and when a built library is stale.

Both C++ libraries of the package, the PyTorch CPU extension (``sai.models.cpu_kernels``) and the
onnxruntime custom-op library (``sai.runtime.build_ort_ops``), compile sources of ``models/csrc/``
and include headers by bare name from two folders: ``models/csrc/`` and ``models/csrc/common/`` (the
per-element math shared with the TensorRT plugins, ``trt_plugins/``). Each compile runs with
``-MMD``: the compiler itself lists every file it read. The ones inside the package (``models/``) are
recorded with their sha256 in ``<library>.inputs.json`` beside the library, with a tag (the torch
version the extension was built against). A library is stale when it or that record is missing, the
tag differs, a recorded file is gone, or a recorded file is newer than the library *and* its bytes
differ from the recorded ones: an edit of any included header, found or added through any include
folder, makes it stale; an installed wheel (whose files all carry the install time) does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

PACKAGE = Path(__file__).resolve().parent  # models/ (sai.models)
CSRC = PACKAGE / "csrc"
# Header-only math shared by the CPU kernels, the onnxruntime library and the TensorRT plugins.
SHARED_INCLUDE = CSRC / "common"
# The include folders of both CPU builds (headers are included by bare name).
INCLUDE_DIRS = [CSRC, SHARED_INCLUDE]
RECORD_SUFFIX = ".inputs.json"


def march() -> str:
    """The -march of both CPU builds: ``$SAI_NATIVE_MARCH``, else this machine's (``native``) for a build in
    place, and for a wheel (``$SAI_NATIVE_RELOCATABLE=1``, another machine runs it) x86-64-v3 on x86-64 (AVX2
    and FMA, which the block GEMM's register tiles use; Haswell or newer), ``armv8-a`` on aarch64."""
    env = os.environ.get("SAI_NATIVE_MARCH")
    if env:
        return env
    if os.environ.get("SAI_NATIVE_RELOCATABLE") == "1":
        machine = platform.machine().lower()
        if machine in ("x86_64", "amd64"):
            return "x86-64-v3"
        if machine in ("aarch64", "arm64"):
            return "armv8-a"
    return "native"


def record_path(library: Path) -> Path:
    return library.with_name(library.name + RECORD_SUFFIX)


def depfile_flags(depfile: Path) -> list[str]:
    """g++/clang flags that write the files a compile reads (user headers, not system ones) to depfile."""
    return ["-MMD", "-MF", str(depfile)]


def parse_depfile(text: str) -> list[Path]:
    """The prerequisites of a make-style depfile (``target: a b \\`` continuation lines, ``\\ `` escapes)."""
    text = text.replace("\\\r\n", " ").replace("\\\n", " ")
    deps: list[Path] = []
    for line in text.splitlines():
        m = re.match(r"^((?:\\.|[^:\\])+|[A-Za-z]:[^:]*):\s", line + " ")
        if not m:
            continue
        body = line[m.end(1) + 1:]
        for tok in re.findall(r"(?:\\.|[^\s\\])+", body):
            deps.append(Path(re.sub(r"\\(.)", r"\1", tok)))
    return deps


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_inputs(paths: Iterable[Path], root: Path = PACKAGE) -> dict[str, str]:
    """{path relative to ``root``: sha256} of the ``paths`` inside ``root`` (system and torch headers and
    the fetched onnxruntime headers lie outside and are not recorded)."""
    out: dict[str, str] = {}
    for p in paths:
        p = Path(p).resolve()
        try:
            rel = p.relative_to(root)
        except ValueError:
            continue
        out[rel.as_posix()] = _sha256(p)
    return out


def write_record(library: Path, depfile: Path, extra: Iterable[Path] = (), tag: str = "",
                 root: Path = PACKAGE) -> Path:
    """Record what built ``library`` (the depfile of its compile plus ``extra`` inputs such as a linker map)."""
    from sai.outputs import atomic_path

    inputs = package_inputs([*parse_depfile(depfile.read_text()), *extra], root)
    if not inputs:
        raise ValueError(f"{depfile} lists no file inside {root}")
    path = record_path(library)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"library": library.name, "tag": tag, "inputs": inputs}, indent=1,
                                  sort_keys=True) + "\n")
    return path


def stale_reason(library: Path, tag: str = "", root: Path = PACKAGE) -> Optional[str]:
    """Why ``library`` must be rebuilt, or None when it is up to date with every file its build read."""
    if not library.is_file():
        return f"{library.name} is not built"
    rec = record_path(library)
    try:
        data = json.loads(rec.read_text())
        inputs = data["inputs"]
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError("no inputs")
    except (OSError, ValueError, KeyError, TypeError):
        return f"{library.name} has no record of its inputs ({rec.name})"
    if data.get("tag", "") != tag:
        return f"{library.name} was built for {data.get('tag') or 'another build'}, this is {tag or 'another'}"
    built = library.stat().st_mtime
    for rel, digest in sorted(inputs.items()):
        p = root / rel
        try:
            newer = p.stat().st_mtime > built
        except OSError:
            return f"{rel}, an input of {library.name}, is gone"
        if newer and _sha256(p) != digest:
            return f"{rel} changed since {library.name} was built"
    return None
