"""`sai doctor`: what is installed, and what each missing piece disables and how to fix it."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    disables: str = ""
    fix: str = ""


def _module_version(module: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a wheel whose native library is missing
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False, first[:160]
    return True, str(getattr(mod, "__version__", "installed"))


def _nvcc() -> tuple[bool, str]:
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


def _gpu() -> tuple[bool, str]:
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


def plugin_library_report(path) -> str:
    """What an installed plugin library carries: its kernels' archs, the TensorRT major it was built
    for (the autoload companion's libnvinfer soname), and whether the companion is beside it."""
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
    if sass or ptx:
        kern = "CUDA kernels: SASS " + ", ".join(f"sm_{a}" for a in sass)
        if ptx:
            kern += " + PTX " + ", ".join(f"compute_{a}" for a in ptx)
        parts.append(kern)
    else:
        parts.append("no CUDA kernels found in the library")
    return "; ".join(parts)


def _plugin_library() -> tuple[bool, str]:
    try:
        from sai.runtime.plugins import find_plugin_library  # arrives with the plugins issue
    except ImportError:
        return False, "plugin library locator not available in this build"
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


def run_checks() -> list[Check]:
    checks = [Check("python", True, platform.python_version())]
    table = [
        ("torch", "sai.models, sai export/convert, the torch backend (load/bench/validate/serve --backend torch)",
         "pip install torch==2.13.0 (the CPU build; an unpinned torch pulls a multi-GB CUDA build)"),
        ("onnx", "sai export/convert/info, sai validate's mask outputs, sai export-triton", "pip install 'onnx==1.23.*'"),
        ("onnxruntime", "the onnxruntime backend: sai bench/serve/validate on ONNX files and convert OUTDIRs",
         "pip install 'onnxruntime==1.31.*'"),
        ("onnxscript", "sai export/convert (dynamo translation of the sai custom ops)", "pip install 'onnxscript==0.7.*'"),
        ("polygraphy", "sai validate (its Comparator runs the backends)", "pip install 'polygraphy==0.53.*'"),
        ("tensorrt", "sai convert's model.plan (skipped with one line), --backend tensorrt in load/bench/serve/"
         "validate, the tensorrt_plan model of sai export-triton",
         "pip install tensorrt on a machine with an NVIDIA GPU and the TensorRT library (libnvinfer)"),
        ("cuda.bindings.runtime", "GPU memory, streams and CUDA graphs of the tensorrt backend (cuda-python)",
         "pip install 'cuda-python>=12,<14'"),
        ("tritonclient.grpc.model_config_pb2", "sai export-triton (configs are built as Triton's ModelConfig "
         "protobuf) and the KServe v2 gRPC endpoint of sai serve", "pip install 'sai-deploy[triton]'"),
    ]
    for module, disables, fix in table:
        ok, detail = _module_version(module)
        name = {"cuda.bindings.runtime": "cuda-python", "tritonclient.grpc.model_config_pb2": "tritonclient"}.get(
            module, module)
        if ok and module.startswith(("cuda.", "tritonclient.")):
            detail = _dist_version(name)
        checks.append(Check(name, ok, detail, "" if ok else disables, "" if ok else fix))
    checks += _ort_providers()
    checks.append(_cpu_kernels())
    checks.append(_ort_custom_ops())
    ok, detail = _nvcc()
    checks.append(Check("nvcc", ok, detail, "" if ok else "compiling the CUDA kernels (make plugins)",
                        "" if ok else "install the CUDA toolkit or: pip install nvidia-cuda-nvcc"))
    ok, detail = _gpu()
    checks.append(Check("gpu", ok, detail, "" if ok else "TensorRT engines, GPU benchmarks, make gpu-test",
                        "" if ok else "run on a machine with an NVIDIA GPU and driver"))
    ok, detail = _plugin_library()
    checks.append(Check("sai plugins", ok, detail,
                        "" if ok else "TensorRT engines with sai ops (convert's model.plan, the tensorrt backend, "
                        "onnxruntime --device tensorrt, Triton's tensorrt_plan model)",
                        "" if ok else "make plugins (needs TensorRT headers: set TENSORRT_ROOT)"))
    checks.append(_engine_build(checks))
    return checks


def _dist_version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "installed"


def _ort_providers() -> list[Check]:
    """The onnxruntime execution providers behind --device cuda / --device tensorrt."""
    try:
        import onnxruntime
    except Exception:
        return []
    avail = onnxruntime.get_available_providers()
    out = []
    for ep, device in (("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")):
        ok = ep in avail
        out.append(Check(f"onnxruntime {device} EP", ok, "available" if ok else f"not in {', '.join(avail)}",
                         "" if ok else f"--backend onnxruntime --device {device} (bench, serve, load)",
                         "" if ok else "pip uninstall onnxruntime && pip install 'onnxruntime-gpu==1.31.*' "
                         "(needs an NVIDIA GPU" + (" and TensorRT)" if device == "tensorrt" else ")")))
    return out


def _cpu_kernels() -> Check:
    try:
        from sai.models import cpu_kernels

        ok = bool(cpu_kernels.active())
    except Exception as exc:
        return Check("sai cpu kernels", False, str(exc).splitlines()[0][:160],
                     "the sparse C++ CPU kernels (the torch backend falls back to the slower PyTorch reference)",
                     "make install")
    return Check("sai cpu kernels", ok, "loaded" if ok else "not built",
                 "" if ok else "the sparse C++ CPU kernels (the torch backend falls back to the slower PyTorch "
                 "reference ops)", "" if ok else "make install (builds models/_lib/libsai_cpu_ops.so)")


def _ort_custom_ops() -> Check:
    """libsai_ort_ops.so: the onnxruntime custom-op library (sai.runtime.ort_ops)."""
    from sai.runtime import ort_ops

    ok, detail = ort_ops.status()
    return Check("sai ort ops", ok, detail,
                 "" if ok else "the sparse C++ kernels in onnxruntime (the onnxruntime backend runs the model's "
                 "portable function bodies instead, slower)",
                 "" if ok else "make install (builds runtime/lib/libsai_ort_ops.so; see runtime/build_ort_ops.py)")


def _engine_build(checks: list[Check]) -> Check:
    """Whether `sai convert` builds model.plan here, and the first missing piece if not."""
    by = {c.name: c for c in checks}
    for name in ("tensorrt", "gpu", "sai plugins"):  # what the build needs (cuda-python: only the runtime)
        c = by.get(name)
        if c is not None and not c.ok:
            return Check("engine build", False, f"sai convert will skip model.plan: {name} missing",
                         "TensorRT engines (sai convert writes the two ONNX files and the manifest only)", c.fix)
    return Check("engine build", True, "sai convert builds model.plan here")


def run(args: argparse.Namespace) -> int:
    checks = run_checks()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
        return 0
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok " if c.ok else "-- "
        print(f"{mark} {c.name:<{width}}  {c.detail}")
        if not c.ok:
            print(f"    {'':<{width}}  disables: {c.disables}")
            print(f"    {'':<{width}}  fix:      {c.fix}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report installed pieces and what each missing one disables")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
