"""The stale check of the package's C++ builds (sai.models.native_build): what a build records is what the
compiler reads, and an edit of any of those files makes the library stale.

The reference for "every header a build includes" is an independent run of the compiler in ``-MM``
mode over the same command line (sources and include folders), not the record under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sai.models import cpu_kernels, native_build
from sai.runtime import build_ort_ops

REQUIRE = os.environ.get("SAI_REQUIRE_CPU_KERNELS") == "1"


def _mm_inputs(cmd: list[str], source: Path) -> dict[str, str]:
    """In-package files that ``g++ -MM`` says the compile of ``source`` reads (the -I/-D flags of ``cmd``)."""
    flags = [a for a in cmd[1:] if a.startswith(("-I", "-D", "-std="))]
    r = subprocess.run([cmd[0], "-MM", *flags, str(source)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    names = [t for t in r.stdout.replace("\\\n", " ").split()[1:]]
    return native_build.package_inputs([Path(n) for n in names])


def _record(library: Path) -> dict[str, str]:
    return json.loads(native_build.record_path(library).read_text())["inputs"]


def _built_or_skip(library: Path, stale_reason) -> None:
    why = stale_reason()
    if why is not None:
        if REQUIRE:
            pytest.fail(f"{why}: run make install")
        pytest.skip(why)


def test_parse_depfile_continuations_and_escapes():
    text = "out/lib.so: /a/x.cpp /a/b\\ c.h \\\n /a/common/m.h\n/a/common/m.h:\n"
    assert native_build.parse_depfile(text) == [Path("/a/x.cpp"), Path("/a/b c.h"), Path("/a/common/m.h")]


def test_cpu_kernels_record_is_what_the_compiler_reads():
    _built_or_skip(cpu_kernels.LIBRARY, cpu_kernels.stale_reason)
    cmd = cpu_kernels._compile_command(Path("unused.so"))
    expected = _mm_inputs(cmd, cpu_kernels.SOURCE)
    # the shared math is reached through models/csrc/common (the -MM reference says so too)
    assert {"csrc/common/sparseSampleConvMath.h", "csrc/common/interpolateMath.h"} <= set(expected)
    assert _record(cpu_kernels.LIBRARY) == expected


def test_ort_library_record_is_what_the_compiler_reads():
    _built_or_skip(build_ort_ops.LIBRARY, build_ort_ops.stale_reason)
    include, why = build_ort_ops.find_headers(fetch=False)
    blas, why_blas = build_ort_ops.find_blas()
    if include is None or blas is None:
        pytest.skip(why or why_blas)
    cmd = build_ort_ops.compile_command(include, blas, Path("unused.so"))
    expected = _mm_inputs(cmd, build_ort_ops.SOURCE)
    expected.update(native_build.package_inputs([build_ort_ops.LINKER_MAP]))
    assert _record(build_ort_ops.LIBRARY) == expected


def test_editing_any_recorded_input_makes_the_library_stale(tmp_path):
    """On a copy of models/csrc with a library built from it: up to date, then each recorded file edited
    in turn (new bytes, newer mtime) is named as the reason; a touch without new bytes is not."""
    root = tmp_path / "models"
    shutil.copytree(native_build.CSRC, root / "csrc")
    lib = root / "_lib" / "libtiny.so"
    lib.parent.mkdir()
    src = root / "csrc" / "tiny.cpp"
    src.write_text('#include "sai_cpu_kernels.h"\n#include "sparseSampleConvMath.h"\nint tiny() { return 1; }\n')
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    dep = tmp_path / "deps.d"
    r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", f"-I{root / 'csrc'}", f"-I{root / 'csrc' / 'common'}",
                        *native_build.depfile_flags(dep), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lib.write_bytes(b"\x7fELF stand-in")
    native_build.write_record(lib, dep, tag="t1", root=root)
    recorded = _record(lib)
    # what the compiler read through both include folders, and nothing it did not read
    assert {"csrc/tiny.cpp", "csrc/sai_cpu_kernels.h", "csrc/common/saiCommon.h",
            "csrc/common/sparseSampleConvMath.h", "csrc/common/interpolateMath.h"} <= set(recorded)
    assert "csrc/sai_cpu_gemm.h" not in recorded and "csrc/ort/sai_ort_ops.cpp" not in recorded
    assert native_build.stale_reason(lib, tag="t1", root=root) is None

    later = lib.stat().st_mtime + 10
    for rel in recorded:
        p = root / rel
        original = p.read_bytes()
        os.utime(p, (later, later))  # touched, same bytes: the build would be the same
        assert native_build.stale_reason(lib, tag="t1", root=root) is None, rel
        p.write_bytes(original + b"\n// edited\n")
        os.utime(p, (later, later))
        why = native_build.stale_reason(lib, tag="t1", root=root)
        assert why is not None and rel in why, (rel, why)
        p.write_bytes(original)
        os.utime(p, (later, later))
        assert native_build.stale_reason(lib, tag="t1", root=root) is None, rel

    assert "built for t1" in native_build.stale_reason(lib, tag="t2", root=root)
    (root / "csrc" / "common" / "saiCommon.h").unlink()
    assert "gone" in native_build.stale_reason(lib, tag="t1", root=root)
    native_build.record_path(lib).unlink()
    assert "no record" in native_build.stale_reason(lib, tag="t1", root=root)
