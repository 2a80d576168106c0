"""What this machine has: the probes of the environment (optional modules and their versions, the
onnxruntime execution providers, nvcc, an NVIDIA GPU, the sai libraries) in one place, used by
``sai doctor`` (which prints them with what each missing piece disables), ``sai convert`` (whether it
builds an engine, the versions in its manifest) and the backends' loader (``auto`` picks TensorRT only
where it imports). Every probe answers without raising.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
from typing import Optional

# the distributions recorded in a sai convert manifest
RECORDED_VERSIONS = ("sai-deploy", "torch", "onnx", "onnxruntime", "onnxscript", "tensorrt")


def module_version(module: str) -> tuple[bool, str]:
    """(imports, its __version__ or the first line of why not)."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a wheel whose native library is missing
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False, first[:160]
    return True, str(getattr(mod, "__version__", "installed"))


def nvcc() -> tuple[bool, str]:
    """(found, path and release) of the CUDA compiler."""
    candidates = [shutil.which("nvcc")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for path in candidates:
        if path and os.path.exists(path):
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
                release = [ln for ln in out.stdout.splitlines() if "release" in ln]
                return True, f"{path}: {release[-1].strip() if release else 'unknown version'}"
            except (OSError, subprocess.SubprocessError) as exc:
                return False, f"{path} failed: {exc}"
    return False, "nvcc not found on PATH, in $CUDA_HOME or /usr/local/cuda"


def gpu() -> tuple[bool, str]:
    """(an NVIDIA GPU is visible, its name and driver)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30,
            )
            if out.returncode == 0 and out.stdout.strip():
                return True, out.stdout.strip().replace("\n", "; ")
        except (OSError, subprocess.SubprocessError):
            pass
    if os.path.exists("/dev/nvidia0"):
        return True, "/dev/nvidia0 present"
    return False, "no NVIDIA GPU visible (no nvidia-smi output, no /dev/nvidia0)"


def _elf_sections(data: bytes) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of an ELF64 little-endian file's sections."""
    import struct

    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not an ELF64 little-endian file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    hdrs = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = hdrs[shstrndx][4]
    out = {}
    for name, _type, _flags, _addr, off, size in hdrs:
        start = names_off + name
        out[data[start:data.index(b"\0", start)].decode()] = (off, size)
    return out


def _elf_needed(data: bytes, sections: dict[str, tuple[int, int]]) -> list[str]:
    import struct

    if ".dynamic" not in sections or ".dynstr" not in sections:
        return []
    (doff, dsize), (soff, _) = sections[".dynamic"], sections[".dynstr"]
    needed = []
    for i in range(0, dsize - 15, 16):
        tag, val = struct.unpack_from("<qQ", data, doff + i)
        if tag == 1:  # DT_NEEDED
            needed.append(data[soff + val:data.index(b"\0", soff + val)].decode())
    return needed


def fatbin_archs(data: bytes, sections: dict[str, tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(SASS archs, PTX archs) of the CUDA fat binaries in an ELF's .nv_fatbin section."""
    import struct

    if ".nv_fatbin" not in sections:
        return [], []
    off, size = sections[".nv_fatbin"]
    sass, ptx = set(), set()
    pos = off
    while pos + 16 <= off + size:
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != 0xBA55ED50:
            pos += 8
            continue
        entry, end = pos + hsize, pos + hsize + fsize
        while entry + 32 <= end:
            kind, _, ehs, esize = struct.unpack_from("<HHIQ", data, entry)
            arch, = struct.unpack_from("<I", data, entry + 28)
            (ptx if kind == 1 else sass).add(arch)
            if ehs == 0:
                break
            entry += ehs + esize
        pos = end
    return sorted(sass), sorted(ptx)


def kernels_manifest(data: bytes) -> dict | None:
    """The manifest of the embedded Triton kernels in a library's bytes (no loading, no GPU):
    ``{"triton": version, "specs": {spec: {"archs": [...], "tactics": [...]}}}``; None without one."""
    import json

    from sai.constants import KERNELS_MANIFEST_MARKER

    at = data.find(KERNELS_MANIFEST_MARKER.encode())
    if at < 0:
        return None
    end = data.find(b"\0", at)
    try:
        return json.loads(data[at + len(KERNELS_MANIFEST_MARKER):end].decode())
    except (ValueError, UnicodeDecodeError):
        return None


def describe_kernels(manifest: dict) -> str:
    """One line: how many kernel builds, for which archs, with which tactics."""
    specs = manifest.get("specs", {})
    archs = sorted({a for e in specs.values() for a in e.get("archs", [])})
    tactics = sorted({t for e in specs.values() for t in e.get("tactics", [])})
    bf16 = sorted({a for name, e in specs.items() if "bf16" in name for a in e.get("archs", [])})
    text = (f"Triton {manifest.get('triton', '?')} kernels: {len(specs)} builds for "
            + ", ".join(f"sm_{a}" for a in archs))
    if bf16 and archs and bf16[0] != archs[0]:
        text += f" (BF16 from sm_{bf16[0]})"
    return text + f", tactics {', '.join(map(str, tactics))}"


def plugin_library_report(path) -> str:
    """What an installed plugin library carries: its kernels (the embedded Triton builds, or the
    archs of a CUDA fat binary), the TensorRT major it was built for (the autoload companion's
    libnvinfer soname), and whether the companion is beside it."""
    from pathlib import Path

    path = Path(path)
    data = path.read_bytes()
    sec = _elf_sections(data)
    sass, ptx = fatbin_archs(data, sec)
    parts = [str(path)]
    companion = path.with_name("libsai_trt_plugins_autoload.so")
    if companion.is_file():
        cdata = companion.read_bytes()
        nv = [n for n in _elf_needed(cdata, _elf_sections(cdata)) if n.startswith("libnvinfer.so.")]
        parts.append(f"for TensorRT {nv[0].rsplit('.', 1)[-1]}" if nv else "TensorRT version unknown")
        parts.append("autoload library beside it (LD_PRELOAD / Polygraphy)")
    else:
        parts.append("no autoload library beside it (LD_PRELOAD needs it: make plugins)")
    manifest = kernels_manifest(data)
    if manifest is not None:
        parts.append(describe_kernels(manifest))
    elif sass or ptx:
        kern = "CUDA kernels: SASS " + ", ".join(f"sm_{a}" for a in sass)
        if ptx:
            kern += " + PTX " + ", ".join(f"compute_{a}" for a in ptx)
        parts.append(kern)
    else:
        parts.append("no CUDA kernels found in the library")
    return "; ".join(parts)


def plugin_library() -> tuple[bool, str]:
    """(libsai_trt_plugins.so is built, what it carries)."""
    from sai.runtime.plugins import find_plugin_library

    try:
        path = find_plugin_library()
    except Exception as exc:
        return False, str(exc).splitlines()[0]
    if path is None:
        return False, "libsai_trt_plugins.so not built"
    try:
        return True, plugin_library_report(path)
    except (OSError, ValueError, IndexError) as exc:  # unreadable or not an ELF: say so, still found
        return True, f"{path} (cannot read its contents: {exc})"


def dist_version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "installed"


def versions(dists=RECORDED_VERSIONS) -> dict[str, str]:
    """python and the installed version of each of ``dists`` (absent ones left out)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def tensorrt_usable() -> bool:
    """True when the tensorrt module imports (it needs libnvinfer) - not whether a GPU is free."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def ort_providers() -> Optional[list[str]]:
    """onnxruntime's available execution providers, None where onnxruntime does not import."""
    try:
        import onnxruntime
    except Exception:
        return None
    return list(onnxruntime.get_available_providers())


def cpu_kernels() -> tuple[bool, str]:
    """(the sai C++ CPU kernels are loaded, "loaded" / "not built" / why they fail)."""
    try:
        from sai.models import cpu_kernels as ck

        ok = bool(ck.active())
        gemm = ck.block_gemm() if ok else ""
    except Exception as exc:
        return False, str(exc).splitlines()[0][:160]
    if not ok:
        return False, ck.stale_reason() or "not built"  # e.g. built for another torch: make install
    return True, f"loaded; fused sparse blocks (float32), GEMM {gemm}"


def ort_custom_ops() -> tuple[bool, str]:
    """(libsai_ort_ops.so is on, what sai.runtime.ort_ops says)."""
    from sai.runtime import ort_ops

    return ort_ops.status()


def engine_unavailable_reason() -> Optional[str]:
    """Why no TensorRT engine can be built here (None when TensorRT, a GPU and the plugin library are)."""
    if not tensorrt_usable():
        return "the tensorrt module does not import (no TensorRT library)"
    ok, _ = gpu()
    if not ok:
        return "no NVIDIA GPU visible"
    from sai.runtime.plugins import find_plugin_library

    if find_plugin_library() is None:
        return "the sai plugin library is not built (make plugins)"
    return None
