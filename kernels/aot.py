"""Ahead-of-time build of the Triton kernels: cubins + PTX for every target arch, embedded in C++.

``python -m sai.kernels.aot --out build/kernels`` (``make kernels``) compiles each specialization in
``SPECS`` with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` (no GPU needed)
and writes ``sm_<cc>/<spec>.{cubin,ptx,json}`` (the JSON: entry name, warps, stages, shared bytes,
scratch sizes, the exact parameter list with the two trailing hidden scratch pointers, constexprs,
grid rule), then ``sai_kernels_embedded.cpp`` (the cubins as byte arrays + metadata table) and
``sai_kernels_generated.h`` (one typed launch function per specialization) for the hand-written
driver-API launcher in ``kernels/launcher/``. With ``--cxx`` it compiles the C++ with g++ against
the CUDA headers (compile only, no GPU, no libcuda link). Tile configs come from ``configs/``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ARCHS = (75, 80, 86, 89, 90, 100, 120)
HERE = Path(__file__).resolve().parent
LAUNCHER_DIR = HERE / "launcher"

_NHWC_ONE = {"sxc": 1, "syc": 1}  # channels innermost: the layout the plugins hand over

# name -> (module, kernel, dtype, constexprs (non-tile), config features, divisibility-16 args, grid rule)
_CONV_DIV = ["x_ptr", "w_ptr", "b_ptr", "off_ptr", "idx_ptr", "cnt_ptr", "y_ptr", "CIN_G", "COUT_G",
             "sxn", "sxh", "sxw", "syn", "syh", "syw"]
_INTERP_DIV = ["f_ptr", "m_ptr", "idx_ptr", "cnt_ptr", "b_ptr", "id_ptr", "y_ptr", "C",
               "sfn", "sfh", "sfw", "sin_", "sih", "siw", "syn", "syh", "syw"]


def _conv(dtype: str, k: int, deform: bool, relu: bool = True) -> dict:
    return {
        "module": "sai.kernels.sparse_sample_conv", "kernel": "sparse_conv_kernel", "cfg_kernel": "sparse_sample_conv",
        "dtype": dtype,
        "constexprs": dict(KH=k, KW=k, HAS_BIAS=True, DEFORM=deform, RELU=relu, PRECISION="ieee",
                           UPCAST_DOT=False, **_NHWC_ONE, **({"soc": 1} if deform else {})),
        "features": dict(dtype=dtype, k=k, deform=deform),
        "divisible": _CONV_DIV if not deform else _CONV_DIV + ["son", "soh", "sow"],
        "grid": "(cdiv(P, BM), groups * cdiv(COUT_G, BN), 1); P = N*Ho*Wo; cnt from mask_partition (gt0)",
    }


def _interp(dtype: str, k: int, fused: bool) -> dict:
    return {
        "module": "sai.kernels.interpolate", "kernel": "interpolate_kernel", "cfg_kernel": "interpolate",
        "dtype": dtype,
        "constexprs": dict(KS=k, FUSED=fused, sfc=1, syc=1, **({"sic": 1} if fused else {})),
        "features": dict(dtype=dtype, k=k, fused=fused),
        "divisible": _INTERP_DIV,
        "grid": "(cdiv(P, BP), cdiv(C, BC), 1); P = N*H*W; cnt from mask_partition (lt1)",
    }


SPECS: dict[str, dict] = {
    "mask_partition_fp16": {
        "module": "sai.kernels.compact", "kernel": "mask_partition_kernel", "cfg_kernel": None, "dtype": "fp16",
        "constexprs": {"BLOCK": 1024}, "features": {}, "divisible": ["m_ptr", "idx_ptr", "cnt_ptr"],
        "grid": "(cdiv(P, 1024), 1, 1); MODE_LT1 is a constexpr: one spec per mode",
        "variants": {"gt0": {"MODE_LT1": False}, "lt1": {"MODE_LT1": True}},
    },
    "mask_partition_fp32": {
        "module": "sai.kernels.compact", "kernel": "mask_partition_kernel", "cfg_kernel": None, "dtype": "float32",
        "constexprs": {"BLOCK": 1024}, "features": {}, "divisible": ["m_ptr", "idx_ptr", "cnt_ptr"],
        "grid": "(cdiv(P, 1024), 1, 1)",
        "variants": {"gt0": {"MODE_LT1": False}, "lt1": {"MODE_LT1": True}},
    },
    "sparse_conv_fp16_k3": _conv("float16", 3, False),
    "sparse_conv_fp16_k1": _conv("float16", 1, False, relu=False),
    "sparse_conv_fp16_k3_deform": _conv("float16", 3, True),
    "interpolate_fp16_k7": _interp("float16", 7, False),
    "interpolate_fp16_k7_add_relu": _interp("float16", 7, True),
}

_TT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "fp16": "fp16"}
_CPP = {"i32": "int32_t", "fp32": "float"}


def _expand_specs(names: list[str]) -> list[tuple[str, dict]]:
    out = []
    for name in names:
        spec = SPECS[name]
        for suffix, extra in spec.get("variants", {"": {}}).items():
            s = dict(spec)
            s["constexprs"] = {**spec["constexprs"], **extra}
            out.append((f"{name}_{suffix}" if suffix else name, s))
    return out


def _signature(jit, spec: dict, const: dict) -> dict[str, str]:
    tt = _TT[spec["dtype"]]
    sig = {}
    for arg in jit.arg_names:
        if arg in const:
            sig[arg] = "constexpr"
        elif arg in ("idx_ptr", "cnt_ptr"):
            sig[arg] = "*i32"
        elif arg == "m_ptr":  # the mask may be fp32 beside fp16/bf16 data (the plugins accept both)
            sig[arg] = f"*{_TT[spec.get('mask_dtype', spec['dtype'])]}"
        elif arg == "b_ptr" and spec["kernel"] == "interpolate_kernel":
            sig[arg] = "*fp32"
        elif arg.endswith("_ptr"):
            sig[arg] = f"*{tt}"
        elif arg in ("HALF_S2", "NORM", "EPS"):
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
    return sig


def compile_one(name: str, spec: dict, cc: int, out: Path) -> dict:
    """Compile one specialization for sm_<cc>; write cubin/ptx/json; return the metadata."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sai.kernels import configs

    mod = importlib.import_module(spec["module"])
    jit = getattr(mod, spec["kernel"]).jit
    if spec["cfg_kernel"]:
        cfg = configs.lookup(spec["cfg_kernel"], f"sm_{cc}", **spec["features"])
    else:
        cfg = {"num_warps": 4, "num_stages": 1}
    tiles = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    const = {**spec["constexprs"], **tiles}
    sig = _signature(jit, spec, const)
    attrs = {(jit.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec["divisible"] if a not in const}
    t0 = time.time()
    kernel = triton.compile(ASTSource(fn=jit, signature=sig, constexprs=const, attrs=attrs),
                            target=GPUTarget("cuda", cc, 32),
                            options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
    md = kernel.metadata
    if getattr(md, "profile_scratch_size", 0) > 0:
        raise RuntimeError(f"{name} sm_{cc}: profile scratch ({md.profile_scratch_size} B) means an instrumented "
                           "build (TRITON_* profiling knobs set?); the C++ launcher passes null there")
    params = [{"name": a, "type": sig[a]} for a in jit.arg_names if sig[a] != "constexpr"]
    meta = {
        "spec": name, "cc": cc, "entry": md.name, "num_warps": md.num_warps, "num_stages": cfg["num_stages"],
        "shared": md.shared, "global_scratch_size": getattr(md, "global_scratch_size", 0),
        "global_scratch_align": getattr(md, "global_scratch_align", 1),
        "profile_scratch_size": getattr(md, "profile_scratch_size", 0),
        "profile_scratch_align": getattr(md, "profile_scratch_align", 1),
        "params": params, "hidden_params": ["global_scratch:*i8", "profile_scratch:*i8"],
        "constexprs": {k: v for k, v in const.items()}, "grid": spec["grid"],
        "target": f"cuda:{cc}:32", "triton": triton.__version__, "compile_s": round(time.time() - t0, 2),
    }
    d = out / f"sm_{cc}"
    d.mkdir(parents=True, exist_ok=True)
    for ext, data in (("cubin", kernel.asm["cubin"]), ("ptx", kernel.asm["ptx"].encode())):
        tmp = d / f".{name}.{ext}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, d / f"{name}.{ext}")
    (d / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def tensor_core_summary(out: Path) -> dict:
    """Per arch and spec: which tensor-core instructions the PTX holds (mma.sync, ldmatrix, wgmma, tcgen05)."""
    found = {}
    for ptx in sorted(out.glob("sm_*/*.ptx")):
        text = ptx.read_text()
        found.setdefault(ptx.parent.name, {})[ptx.stem] = [
            ins for ins, key in (("mma.sync", "mma.sync"), ("ldmatrix", "ldmatrix"), ("wgmma", "wgmma.mma_async"),
                                 ("tcgen05", "tcgen05.mma")) if key in text]
    return found


# ----------------------------------------------------------------------------------------------
# C++ generation
# ----------------------------------------------------------------------------------------------


def _cpp_bytes(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), 24):
        lines.append("    " + ",".join(f"0x{b:02x}" for b in data[i:i + 24]) + ",")
    return "\n".join(lines)


def _param_cpp(p: dict) -> str:
    return ("CUdeviceptr " if p["type"].startswith("*") else _CPP[p["type"]] + " ") + p["name"]


def generate_cpp(out: Path, metas: list[dict]) -> list[Path]:
    """``sai_kernels_embedded.cpp`` (cubins + table) and ``sai_kernels_generated.h`` (typed launchers)."""
    metas = sorted(metas, key=lambda m: (m["spec"], m["cc"]))
    body = ["// Generated by python -m sai.kernels.aot: do not edit, do not commit.",
            '#include "sai_kernel_launcher.h"', '#include "sai_kernels_generated.h"', "",
            "namespace sai {", "namespace kernels {", "namespace {"]
    rows = []
    for m in metas:
        sym = f"k_{m['spec']}_sm{m['cc']}"
        data = (out / f"sm_{m['cc']}" / f"{m['spec']}.cubin").read_bytes()
        body += [f"alignas(16) const unsigned char {sym}[{len(data)}] = {{", _cpp_bytes(data), "};"]
        plist = ",".join(f"{p['name']}:{p['type']}" for p in m["params"])
        const = ",".join(f"{k}={v}" for k, v in m["constexprs"].items())
        c = m["constexprs"]
        rows_, cols_ = c.get("BM", c.get("BP", c.get("BLOCK", 1))), c.get("BN", c.get("BC", 1))
        rows.append(f'    {{"{m["spec"]}", {m["cc"]}, {sym}, sizeof({sym}), "{m["entry"]}", {m["num_warps"]}, '
                    f'{m["shared"]}, {m["global_scratch_size"]}, {m["global_scratch_align"]}, '
                    f'{m["profile_scratch_size"]}, {m["profile_scratch_align"]}, {len(m["params"])}, "{plist}", '
                    f'"{const}", {rows_}, {cols_}}},')
    body += ["const KernelImage kImages[] = {", *rows, "};", "}  // namespace", "",
             "const KernelImage* embeddedImages(size_t* count) {",
             "    *count = sizeof(kImages) / sizeof(kImages[0]);", "    return kImages;", "}", ""]
    header = ["// Generated by python -m sai.kernels.aot: do not edit, do not commit.", "#pragma once",
              '#include "sai_kernel_launcher.h"', "", "namespace sai {", "namespace kernels {", ""]
    seen = {}
    for m in metas:
        seen.setdefault(m["spec"], m)
    for spec, m in seen.items():
        args = ", ".join(_param_cpp(p) for p in m["params"])
        tiles = ("BM", "BN", "BK", "BP", "BC")
        const = ", ".join(f"{k}={v}" for k, v in m["constexprs"].items() if k not in tiles)
        proto = f"CUresult launch_{spec}(CUstream stream, unsigned gridX, unsigned gridY, unsigned gridZ, {args})"
        header += [f"// {spec}: {const}; tiles per arch: findImage(spec, cc)->tileRows / tileCols",
                   f"// grid {m['grid']}", proto + ";", ""]
        ptrs = ", ".join(f"&{p['name']}" for p in m["params"])
        body += [proto + " {", f"    void* args[] = {{{ptrs}}};",
                 f'    return launch("{spec}", stream, gridX, gridY, gridZ, args, {len(m["params"])});', "}", ""]
    header += ["}  // namespace kernels", "}  // namespace sai", ""]
    body += ["}  // namespace kernels", "}  // namespace sai", ""]
    paths = [out / "sai_kernels_embedded.cpp", out / "sai_kernels_generated.h"]
    for path, text in zip(paths, ("\n".join(body), "\n".join(header)), strict=True):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def cuda_include_dir() -> Path:
    """The CUDA include dir holding cuda.h: CUDA_HOME, nvcc's toolkit, /usr/local/cuda, triton's copy."""
    cands = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    cands.append("/usr/local/cuda")
    for c in cands:
        if c and (Path(c) / "include" / "cuda.h").exists():
            return Path(c) / "include"
    import triton

    inc = Path(triton.__file__).parent / "backends" / "nvidia" / "include"
    if (inc / "cuda.h").exists():
        return inc
    from sai.errors import SaiError

    raise SaiError("cuda.h not found: set CUDA_HOME to a CUDA toolkit (or put nvcc on PATH)")


def compile_cpp(out: Path, cxx: str = "g++") -> list[Path]:
    """Compile (no link) the launcher and the embedded cubins against the CUDA headers."""
    inc = cuda_include_dir()
    objs = []
    for src in (LAUNCHER_DIR / "sai_kernel_launcher.cpp", out / "sai_kernels_embedded.cpp"):
        obj = out / (src.stem + ".o")
        cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror", f"-I{inc}", f"-I{LAUNCHER_DIR}",
               f"-I{out}", "-c", str(src), "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            from sai.errors import SaiError

            raise SaiError(f"compiling {src.name} failed:\n{proc.stderr[-3000:]}")
        objs.append(obj)
    return objs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sai.kernels.aot", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/kernels"))
    ap.add_argument("--arch", default=",".join(map(str, ARCHS)), help="compute capabilities, e.g. 80,90")
    ap.add_argument("--specs", default=",".join(SPECS), help=f"subset of {','.join(SPECS)}")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cxx", action="store_true", help="also compile the generated C++ with g++ (no link)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot: TRITON_INTERPRET=1 is set; unset it to compile kernels", file=sys.stderr)
        return 2
    archs = [int(a) for a in args.arch.split(",") if a]
    names = [s for s in args.specs.split(",") if s]
    unknown = [s for s in names if s not in SPECS]
    if unknown:
        print(f"aot: unknown specs {unknown}; known: {', '.join(SPECS)}", file=sys.stderr)
        return 2
    jobs = [(n, s, cc) for n, s in _expand_specs(names) for cc in archs]
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        with cf.ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(compile_one, n, s, cc, args.out) for n, s, cc in jobs]
            metas = [f.result() for f in futures]
    else:
        metas = [compile_one(n, s, cc, args.out) for n, s, cc in jobs]
    generate_cpp(args.out, metas)
    summary = tensor_core_summary(args.out)
    (args.out / "tensor_cores.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"aot: {len(metas)} kernels ({len(names)} specs x {len(archs)} archs) in {time.time() - t0:.1f}s -> {args.out}")
    for arch, specs in summary.items():
        conv = specs.get("sparse_conv_fp16_k3", [])
        print(f"  {arch}: sparse_conv_fp16_k3 uses {', '.join(conv) or 'no tensor-core instructions (FMA)'}")
    if args.cxx:
        objs = compile_cpp(args.out)
        print(f"aot: compiled {', '.join(o.name for o in objs)} against {cuda_include_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
