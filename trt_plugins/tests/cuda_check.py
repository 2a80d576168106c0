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
  -Werror) against the CUDA 13 headers and against the CUDA 12 headers (nvidia-cuda-runtime-cu12);
* static evidence (sass_stats.py), for every image make kernels built, printed as a table (the archs
  of --table-archs; every arch in the JSON) and kept in <out>/kernels.json: registers, spills (stack,
  local memory), shared memory, resident CTAs per SM and what limits them, and per loop of the SASS
  the instructions, barrier waits and tensor-core instructions per iteration. It FAILS on a register
  spill in a tensor-core build, on shared memory a CTA cannot get, and on a K loop that is not
  pipelined across its outer loop (a loop around an MMA loop that drains every outstanding copy /
  wgmma / tcgen05 at each outer iteration: a tap loop around a channel loop). A spec in
  kernels/aot.py SPECS may carry ``"static_checks": {"nested_drain_ok": "<why>"}`` where a drain per
  outer iteration is the design (e.g. back-to-back GEMMs); the table prints that reason.

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
# the plugins' CUDA host code (each finds its own header beside it): launchers, SparseBlock's checks and runner
HOST_SOURCES = ["common/saiTritonLaunch.cpp", "sparseSampleConv/sparseSampleConvLaunch.cpp",
                "interpolate/interpolateLaunch.cpp", "sparseBlock/sparseBlockLaunch.cpp",
                "sparseBlock/sparseBlockRunner.cpp"]


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
    try:  # the Triton wheel ships cuobjdump and nvdisasm for the archs it targets
        import triton

        cands.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
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


def analyze_images(cuobjdump: str, kdir: Path, jobs: int) -> list[dict]:
    """sass_stats.analyze_cubin for every image make kernels wrote (sm_*/<stem>.json + .cubin)."""
    import json

    import sass_stats

    metas = []
    for meta_path in sorted(kdir.glob("sm_*/*.json")):
        meta = json.loads(meta_path.read_text())
        if isinstance(meta, dict) and "cc" in meta and meta_path.with_suffix(".cubin").is_file():
            metas.append((meta_path, meta))

    def one(item):
        meta_path, meta = item
        try:
            r = sass_stats.analyze_cubin(cuobjdump, str(meta_path.with_suffix(".cubin")), int(meta["cc"]),
                                         int(meta["num_warps"]), int(meta.get("shared", 0)))
        except Exception as e:  # noqa: BLE001 - reported as a problem of that image
            r = {"error": f"{type(e).__name__}: {e}"}
        return {"image": meta_path.stem, "spec": meta.get("spec", meta_path.stem), "cc": int(meta["cc"]),
                "tactic": meta.get("tactic", 1), "num_stages": meta.get("num_stages"),
                "tiles": {k: v for k, v in meta.get("constexprs", {}).items() if k in ("BM", "BN", "BK", "BP", "BC",
                                                                                        "BLOCK")}, **r}

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, metas))


def static_problems(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(failures, notes): spills in tensor-core builds, unlaunchable shared memory, nested drains."""
    from sai.kernels import aot

    problems, notes = [], []
    for r in rows:
        where = f"sm_{r['cc']}/{r['image']}"
        if "error" in r:
            problems.append(f"{where}: SASS analysis failed: {r['error']}")
            continue
        spilled = r["stack"] > 0 or r["local"] > 0 or r["local_memory_instructions"] > 0
        if spilled and r["tensor_cores"]:
            problems.append(f"{where}: register spill in a tensor-core build ({r['regs']} registers, stack "
                            f"{r['stack']} B, {r['local_memory_instructions']} local loads/stores): a smaller tile or "
                            "fewer stages for this build (kernels/configs/)")
        elif spilled:
            notes.append(f"{where}: spills ({r['regs']} registers, stack {r['stack']} B; no tensor cores)")
        if not r["launchable"]:
            problems.append(f"{where}: {r['shared_total']} B of shared memory per CTA is more than sm_{r['cc']} "
                            "gives one CTA: a smaller tile or fewer stages")
        base = aot.SPECS.get(r["spec"]) or next((s for n, s in aot.SPECS.items() if r["spec"].startswith(n + "_")),
                                                {})
        exempt = base.get("static_checks", {}).get("nested_drain_ok")
        r["nested_drain_ok"] = exempt
        if r["nested_drains"] and not exempt:
            problems.append(f"{where}: the K loop is not pipelined across its outer loop: a loop around the MMA "
                            f"loop drains at every outer iteration ({'; '.join(r['nested_drains'][:3])}): one "
                            "loop over taps x channel blocks")
    return problems, notes


def _table_key(r: dict) -> tuple:
    lp = r["main_loop"] or {}
    drains = len(r["nested_drains"]) if not r.get("nested_drain_ok") else "ok*"
    return (r["regs"], r["stack"], round(r["shared_total"] / 1024), r["ctas"], r["limited_by"], r["tensor_cores"],
            lp.get("instructions", "-"), lp.get("waits", "-"), lp.get("mma", "-"), drains)


def print_table(rows: list[dict], archs: set[int]) -> None:
    """A compact table for the --table-archs archs (images that differ only in fp16/bf16 or ReLU and
    have the same figures share a line, their count in front), and a summary line per arch."""
    import re

    print("cuda-check: static evidence per image; loop = the innermost loop with the most MMAs, per iteration")
    print(f"{'n':>2s} {'image':38s} {'arch':>6s} {'regs':>4s} {'stack':>5s} {'smem':>5s} {'CTA/SM':>9s} {'TC':>2s} "
          f"{'instr':>5s} {'waits':>5s} {'mma':>4s} {'drains':>6s}")
    groups: dict[tuple, list[str]] = {}
    for r in sorted(rows, key=lambda r: (r["cc"], r["image"])):
        if r["cc"] in archs and "error" not in r:
            name = re.sub(r"bf16", "*16", re.sub(r"fp16", "*16", r["image"])).replace("_relu", "")
            groups.setdefault((r["cc"], name, _table_key(r)), []).append(r["image"])
    for (cc, name, key), images in groups.items():
        regs, stack, smem, ctas, lim, tc, instr, waits, mma, drains = key
        label = images[0] if len(images) == 1 else name + ("[_relu]" if any("_relu" in i for i in images) else "")
        print(f"{len(images):2d} {label[:38]:38s} {'sm_' + str(cc):>6s} {regs:4d} {stack:5d} {smem:4d}K "
              f"{str(ctas) + ' ' + lim[:4]:>9s} {'y' if tc else '-':>2s} {instr:>5} {waits:>5} {mma:>4} {drains:>6}")
    for cc in sorted({r["cc"] for r in rows}):
        rs = [r for r in rows if r["cc"] == cc and "error" not in r]
        tc = [r for r in rs if r["tensor_cores"]]
        print(f"cuda-check: sm_{cc}: {len(rs)} images, {len(tc)} on tensor cores, max {max((r['regs'] for r in rs), default=0)} "
              f"registers, spills in {sum(1 for r in tc if r['stack'] or r['local'])} tensor-core / "
              f"{sum(1 for r in rs if not r['tensor_cores'] and (r['stack'] or r['local']))} other builds, "
              f"nested drains in {sum(1 for r in rs if r['nested_drains'])}")


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
    incs = [*cuda_include, REPO / "kernels" / "launcher", kdir, ROOT / "common", REPO / "models" / "csrc" / "common",
            ROOT / "sparseSampleConv",
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
    ap.add_argument("--table-archs", default="80,90", help="archs printed in the table (all go to kernels.json)")
    ap.add_argument("--static-only", action="store_true", help="only the static evidence (no CUDA 12, no host code)")
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
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rows = analyze_images(cuobjdump, kdir, args.jobs)
    static, notes = static_problems(rows)
    print_table(rows, {int(a) for a in args.table_archs.split(",") if a})
    import json

    from sai.outputs import write_atomic

    write_atomic(out / "kernels.json", json.dumps({"kernels": str(kdir), "images": rows, "problems": static,
                                                   "notes": notes}, indent=1) + "\n", flag="--out")
    for n in notes:
        print(f"cuda-check: note: {n}")
    print(f"cuda-check: static evidence of {len(rows)} images -> {out / 'kernels.json'} ({time.time() - t0:.1f}s)")
    if args.static_only:
        for p in static:
            print(f"cuda-check: PROBLEM: {p}", file=sys.stderr)
        print(f"cuda-check: {'FAILED' if static else 'OK'}")
        return 1 if static else 0

    t0 = time.time()
    problems, n_cubins = check_cubins(cuobjdump, kdir, args.jobs)
    problems = static + problems
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
