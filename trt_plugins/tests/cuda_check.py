#!/usr/bin/env python3
"""Check the CUDA code of the plugin library for every target architecture with CUDA 13 and CUDA 12.

What `make cuda-check` runs (docs/design.md section 6: no GPU here, so every kernel is at least built).
The plugins' kernels are the Triton kernels of kernels/, compiled ahead of time by `make kernels`
(build/kernels: a cubin + PTX per spec, tactic and arch); their host code is C++ on the driver API.

* cubins: `cuobjdump --list-elf` must show the arch each image was built for (sm_90a / sm_100a /
  sm_120a: Triton builds those with their arch-specific features), for every spec of kernels/aot.py and every arch sm_75 .. sm_120;
* tensor cores: every FP16/BF16 conv build for sm_80+ has mma.sync / wgmma / tcgen05 in its PTX;
* CUDA 12: every PTX must assemble with CUDA 12.9's ptxas (PyPI's nvidia-cuda-nvcc-cu12) for its
  arch, so that a toolchain or driver of the CUDA 12 line can JIT it;
* host code: the kernels' launcher and the plugins' launch code compile warning-free (-Wall -Wextra
  -Werror) against the CUDA 13 headers and against the CUDA 12 headers (nvidia-cuda-runtime-cu12).

Exit status 0 when everything checked out; prints a timing summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # trt_plugins/
REPO = ROOT.parent
ARCHS = ["75", "80", "86", "89", "90", "100", "120"]
HOST_SOURCES = ["common/saiTritonLaunch.cpp", "sparseSampleConv/sparseSampleConvLaunch.cpp",
                "interpolate/interpolateLaunch.cpp"]


def arch_suffix(cc: str) -> str:
    """Triton builds sm_90, sm_100 and sm_120 with their arch-specific features: sm_90a, sm_100a, sm_120a."""
    return f"sm_{cc}a" if int(cc) >= 90 else f"sm_{cc}"


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


def cuda12_paths() -> dict[str, Path] | None:
    nv = nvidia_dir()
    if nv is None:
        return None
    paths = {
        "include": nv / "cuda_runtime" / "include",
        "crt": nv / "cuda_nvcc" / "include",  # crt/host_defines.h of the CUDA 12 runtime headers
        "ptxas": nv / "cuda_nvcc" / "bin" / "ptxas",
    }
    return paths if all(p.exists() for p in paths.values()) else None

def check_cubins(cuobjdump: str, kdir: Path, jobs: int) -> tuple[list[str], int]:
    """Every image of every spec for every arch is there, and cuobjdump sees the right arch in it."""
    from sai.kernels import aot

    problems, images = [], []
    for name, spec, tactic in aot._expand_specs(list(aot.SPECS)):
        for cc in ARCHS:
            if not aot.supported(spec, int(cc)):
                continue
            cubin = kdir / f"sm_{cc}" / f"{aot.image_stem(name, tactic)}.cubin"
            if cubin.is_file():
                images.append((cc, cubin))
            else:
                problems.append(f"{cubin.relative_to(kdir)} missing (make kernels)")

    def one(item):
        cc, cubin = item
        listing = run([cuobjdump, "--list-elf", str(cubin)]).stdout
        if f".{arch_suffix(cc)}." in listing:
            return []
        return [f"{cubin.name}: cuobjdump does not show {arch_suffix(cc)}: {listing.strip()}"]

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for probs in pool.map(one, images):
            problems += probs
    return problems, len(images)


def check_tensor_cores(kdir: Path) -> tuple[list[str], int]:
    """Every FP16/BF16 conv build for sm_80 and newer multiplies on tensor cores (mma.sync, wgmma or
    tcgen05 in its PTX, from make kernels' tensor_cores.json): a silent fall back to FMA fails here."""
    import json

    summary = json.loads((kdir / "tensor_cores.json").read_text())
    problems, checked = [], 0
    for arch, images in summary.items():
        if int(arch.split("_")[1]) < 80:
            continue  # sm_75: Triton 3.6 has no tensor-core path there
        for stem, found in images.items():
            if stem.startswith("sparse_conv_") and ("_fp16_" in stem or "_bf16_" in stem):
                checked += 1
                if not {"mma.sync", "wgmma", "tcgen05"} & set(found):
                    problems.append(f"{arch}/{stem}: no tensor-core instructions in the PTX ({found or 'FMA only'})")
    return problems, checked


def check_ptx_cuda12(ptxas: Path, kdir: Path, out: Path, jobs: int) -> tuple[list[str], int]:
    ptxs = sorted(kdir.glob("sm_*/*.ptx"))

    def one(ptx: Path):
        cc = ptx.parent.name.split("_")[1]
        r = run([str(ptxas), f"-arch={arch_suffix(cc)}", str(ptx), "-o",
                 str(out / f"{ptx.parent.name}-{ptx.stem}.cubin")])
        return [] if r.returncode == 0 else [f"{ptx.parent.name}/{ptx.name}: CUDA 12 ptxas failed: {r.stderr.strip()}"]

    problems = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for probs in pool.map(one, ptxs):
            problems += probs
    return problems, len(ptxs)


def check_host_code(cuda_include: list[Path], kdir: Path, out: Path) -> list[str]:
    problems = []
    incs = [*cuda_include, REPO / "kernels" / "launcher", kdir, ROOT / "common", ROOT / "sparseSampleConv",
            ROOT / "interpolate"]
    for src in [REPO / "kernels" / "launcher" / "sai_kernel_launcher.cpp", *[ROOT / s for s in HOST_SOURCES]]:
        cmd = [shutil.which("g++") or "g++", "-std=c++17", "-O2", "-fPIC", "-Wall", "-Wextra", "-Werror",
               *[f"-I{i}" for i in incs], "-c", str(src), "-o", str(out / (src.stem + ".o"))]
        r = run(cmd)
        if r.returncode != 0 or r.stderr.strip():
            problems.append(f"{src.name} against {cuda_include[0]}:\n{r.stderr.strip()}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/cuda-check", help="output folder for objects and cubins")
    ap.add_argument("--kernels", default=str(REPO / "build" / "kernels"), help="the output of make kernels")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-cuda12", action="store_true")
    args = ap.parse_args()

    kdir = Path(args.kernels)
    cuobjdump = find_cuobjdump()
    nvcc = find_nvcc()
    if not (kdir / "sai_kernels_embedded.cpp").is_file():
        print(f"cuda-check: FAILED: no compiled kernels in {kdir}: run `make kernels` first", file=sys.stderr)
        return 1
    if cuobjdump is None:
        print("cuda-check: FAILED: cuobjdump not found (pip install nvidia-cuda-cuobjdump; make install does)",
              file=sys.stderr)
        return 1
    if nvcc is None:
        print("cuda-check: FAILED: the CUDA 13 toolkit (nvcc) not found; set NVCC or put it on PATH", file=sys.stderr)
        return 1
    sys.path.insert(0, str(REPO))
    from sai.kernels.aot import cuda_include_dir

    cuda13_include = cuda_include_dir()  # CUDA_HOME, nvcc's toolkit, /usr/local/cuda
    out = Path(args.out)
    for sub in ("cu13", "cu12"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    problems, n_cubins = check_cubins(cuobjdump, kdir, args.jobs)
    tc_problems, n_tc = check_tensor_cores(kdir)
    problems += tc_problems + check_host_code([cuda13_include], kdir, out / "cu13")
    print(f"cuda-check: {n_cubins} cubins for sm_{', sm_'.join(ARCHS)} (cuobjdump), {n_tc} FP16/BF16 conv builds "
          f"on tensor cores, host code against the CUDA 13 headers: {time.time() - t0:.1f}s")

    if not args.skip_cuda12:
        paths = cuda12_paths()
        if paths is None:
            print("cuda-check: FAILED: CUDA 12 ptxas/headers not found (pip install nvidia-cuda-nvcc-cu12 "
                  "nvidia-cuda-runtime-cu12; make install does)", file=sys.stderr)
            return 1
        t0 = time.time()
        probs, n_ptx = check_ptx_cuda12(paths["ptxas"], kdir, out / "cu12", args.jobs)
        problems += probs + check_host_code([paths["include"], paths["crt"]], kdir, out / "cu12")
        ver = run([str(paths["ptxas"]), "--version"]).stdout.strip().splitlines()[-1]
        print(f"cuda-check: CUDA 12 ptxas ({ver}): {n_ptx} PTX files assembled, host code against the CUDA 12 "
              f"headers: {time.time() - t0:.1f}s")

    for p in problems:
        print(f"cuda-check: PROBLEM: {p}", file=sys.stderr)
    print(f"cuda-check: {'FAILED' if problems else 'OK'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
