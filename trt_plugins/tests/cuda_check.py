#!/usr/bin/env python3
"""Compile every trt_plugins .cu file for every target architecture with CUDA 13 and CUDA 12.

What `make cuda-check` runs (docs/design.md section 6: no GPU here, so every kernel is at least built):

* CUDA 13: `nvcc -c` of each .cu (host launchers and device code) for sm_75 80 86 89 90 100 120
  plus compute_120 PTX, warnings as errors; `cuobjdump --list-elf/--list-ptx` must show each arch.
* CUDA 12: PyPI has no CUDA 12 nvcc driver (nvidia-cuda-nvcc-cu12 ships only ptxas and libnvvm),
  so the device code of each .cu is compiled by NVRTC 12.9 (nvidia-cuda-nvrtc-cu12, the CUDA 12
  front end + NVVM as a library) to a cubin per arch and compute_120 PTX; that PTX is assembled
  again by CUDA 12's ptxas; cuobjdump must show the right arch in each cubin.

Exit status 0 when everything compiled and every arch is present; prints a timing summary.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # trt_plugins/
ARCHS = ["75", "80", "86", "89", "90", "100", "120"]
PTX_ARCH = "120"


def cu_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.cu") if "tests" not in p.parts)


def include_dirs() -> list[Path]:
    return [ROOT / "common"] + sorted({p.parent for p in cu_files()})


def find_nvcc() -> str | None:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def nvidia_dir() -> Path | None:
    try:
        import nvidia  # namespace package of the PyPI CUDA wheels
    except ImportError:
        return None
    for p in nvidia.__path__:
        return Path(p)
    return None


def find_cuobjdump() -> str | None:
    cands = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    nv = nvidia_dir()
    if nv:
        cands += [str(nv / "cu13" / "bin" / "cuobjdump"), str(nv / "cuda_cuobjdump" / "bin" / "cuobjdump")]
    for cand in cands:
        if cand and Path(cand).is_file():
            return cand
    return None


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


# ---------------------------------------------------------------------------------------------
# CUDA 13 (nvcc)
# ---------------------------------------------------------------------------------------------


def nvcc_compile(nvcc: str, src: Path, out_dir: Path) -> tuple[Path, str]:
    obj = out_dir / (src.stem + ".o")
    gencode = []
    for a in ARCHS:
        code = f"[sm_{a},compute_{a}]" if a == PTX_ARCH else f"sm_{a}"
        gencode.append(f"-gencode=arch=compute_{a},code={code}")
    cmd = [nvcc, "-c", "-std=c++17", "-O3", "-Werror=all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
           *gencode, *[f"-I{d}" for d in include_dirs()], str(src), "-o", str(obj)]
    r = run(cmd)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed for {src.name}:\n{' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return obj, r.stdout + r.stderr


def check_object(cuobjdump: str, obj: Path) -> list[str]:
    problems = []
    elf = run([cuobjdump, "--list-elf", str(obj)]).stdout
    ptx = run([cuobjdump, "--list-ptx", str(obj)]).stdout
    for a in ARCHS:
        if not re.search(rf"\bsm_{a}\b", elf):
            problems.append(f"{obj.name}: no sm_{a} ELF (cuobjdump --list-elf)")
    if not re.search(rf"\bsm_{PTX_ARCH}\b", ptx):
        problems.append(f"{obj.name}: no compute_{PTX_ARCH} PTX (cuobjdump --list-ptx)")
    return problems


# ---------------------------------------------------------------------------------------------
# CUDA 12 (NVRTC 12.x + ptxas 12.x from PyPI)
# ---------------------------------------------------------------------------------------------


class Nvrtc:
    def __init__(self, lib: Path):
        self.lib = ctypes.CDLL(str(lib))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        self.version = f"{major.value}.{minor.value}"
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def compile(self, src: Path, arch: str, includes: list[Path]) -> tuple[bytes, str]:
        """Compiles src for `arch` (sm_XX: cubin, compute_XX: PTX); returns (image, log)."""
        prog = ctypes.c_void_p()
        code = src.read_bytes()
        rc = self.lib.nvrtcCreateProgram(ctypes.byref(prog), code, src.name.encode(), 0, None, None)
        if rc != 0:
            raise RuntimeError(f"nvrtcCreateProgram: {self.lib.nvrtcGetErrorString(rc)}")
        try:
            opts = [f"--gpu-architecture={arch}", "-std=c++17", "--device-as-default-execution-space",
                    *[f"-I{d}" for d in includes]]
            arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            rc = self.lib.nvrtcCompileProgram(prog, len(opts), arr)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace")
            if rc != 0:
                raise RuntimeError(f"NVRTC {self.version} failed for {src.name} ({arch}):\n{log}")
            if arch.startswith("sm_"):
                self.lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
                buf = ctypes.create_string_buffer(size.value)
                self.lib.nvrtcGetCUBIN(prog, buf)
            else:
                self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
                buf = ctypes.create_string_buffer(size.value)
                self.lib.nvrtcGetPTX(prog, buf)
            return buf.raw[: size.value], log
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cuda12_paths() -> dict[str, Path] | None:
    nv = nvidia_dir()
    if nv is None:
        return None
    paths = {
        "nvrtc": nv / "cuda_nvrtc" / "lib" / "libnvrtc.so.12",
        "include": nv / "cuda_runtime" / "include",
        "ptxas": nv / "cuda_nvcc" / "bin" / "ptxas",
    }
    return paths if all(p.exists() for p in paths.values()) else None


def cuda12_compile(nvrtc: Nvrtc, paths: dict[str, Path], cuobjdump: str, src: Path, out_dir: Path) -> list[str]:
    problems = []
    includes = include_dirs() + [paths["include"]]
    for a in ARCHS:
        cubin, log = nvrtc.compile(src, f"sm_{a}", includes)
        if "warning" in log:
            problems.append(f"{src.name} (sm_{a}): NVRTC warnings:\n{log}")
        f = out_dir / f"{src.stem}.sm_{a}.cubin"
        f.write_bytes(cubin)
        listing = run([cuobjdump, "--list-elf", str(f)]).stdout
        if not re.search(rf"\bsm_{a}\b", listing):
            problems.append(f"{f.name}: cuobjdump does not show sm_{a}: {listing.strip()}")
        funcs = run([cuobjdump, "--dump-resource-usage", str(f)]).stdout
        if "Function" not in funcs:
            problems.append(f"{f.name}: no kernels in the cubin")
    ptx, _ = nvrtc.compile(src, f"compute_{PTX_ARCH}", includes)
    pf = out_dir / f"{src.stem}.compute_{PTX_ARCH}.ptx"
    pf.write_bytes(ptx.rstrip(b"\0"))
    if f".target sm_{PTX_ARCH}" not in pf.read_text():
        problems.append(f"{pf.name}: PTX does not target sm_{PTX_ARCH}")
    r = run([str(paths["ptxas"]), f"-arch=sm_{PTX_ARCH}", str(pf), "-o", str(pf.with_suffix(".ptxas.cubin"))])
    if r.returncode != 0:
        problems.append(f"{pf.name}: CUDA 12 ptxas failed: {r.stderr}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/cuda-check", help="output folder for objects and cubins")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-cuda12", action="store_true")
    args = ap.parse_args()

    nvcc = find_nvcc()
    cuobjdump = find_cuobjdump()
    if nvcc is None:
        print("cuda-check: FAILED: nvcc (CUDA 13) not found; set NVCC or put it on PATH", file=sys.stderr)
        return 1
    if cuobjdump is None:
        print("cuda-check: FAILED: cuobjdump not found (pip install nvidia-cuda-cuobjdump; make install does)",
              file=sys.stderr)
        return 1
    out13 = Path(args.out) / "cu13"
    out12 = Path(args.out) / "cu12"
    out13.mkdir(parents=True, exist_ok=True)
    out12.mkdir(parents=True, exist_ok=True)
    files = cu_files()
    problems: list[str] = []
    nvcc_version = run([nvcc, "--version"]).stdout.strip().splitlines()[-1]

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda s: nvcc_compile(nvcc, s, out13), files))
    for obj, log in results:
        if log.strip():
            problems.append(f"{obj.name}: nvcc printed output (warnings?):\n{log}")
        problems += check_object(cuobjdump, obj)
    t13 = time.time() - t0
    print(f"cuda-check: CUDA 13 nvcc ({nvcc_version}): {len(files)} files x sm_{', sm_'.join(ARCHS)} "
          f"+ compute_{PTX_ARCH} PTX in {t13:.1f}s")

    if not args.skip_cuda12:
        paths = cuda12_paths()
        if paths is None:
            print("cuda-check: FAILED: CUDA 12 NVRTC/ptxas/headers not found (pip install "
                  "nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12; make install does)",
                  file=sys.stderr)
            return 1
        t0 = time.time()
        nvrtc = Nvrtc(paths["nvrtc"])
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for probs in pool.map(lambda s: cuda12_compile(nvrtc, paths, cuobjdump, s, out12), files):
                problems += probs
        t12 = time.time() - t0
        print(f"cuda-check: CUDA {nvrtc.version} NVRTC (device code) + ptxas: {len(files)} files x "
              f"sm_{', sm_'.join(ARCHS)} + compute_{PTX_ARCH} PTX in {t12:.1f}s")

    for p in problems:
        print(f"cuda-check: PROBLEM: {p}", file=sys.stderr)
    print(f"cuda-check: {'FAILED' if problems else 'OK'}: {', '.join(f.relative_to(ROOT).as_posix() for f in files)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
