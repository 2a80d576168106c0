"""Ahead-of-time build of the Triton kernels: cubins + PTX for every target arch, embedded in C++.

``python -m sai.kernels.aot --out build/kernels`` (``make kernels``) compiles each specialization in
``SPECS`` with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` (no GPU needed)
and writes ``sm_<cc>/<spec>.{cubin,ptx,json}`` (the JSON: entry name, warps, stages, shared bytes,
scratch sizes, the exact parameter list with the two trailing hidden scratch pointers, constexprs,
grid rule), then ``sai_kernels_embedded.cpp`` (the cubins as byte arrays + metadata table) and
``sai_kernels_generated.h`` (one typed argument struct and launch per kernel) for the hand-written
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

from sai.kernels.configs import CONV_TACTICS

ARCHS = (75, 80, 86, 89, 90, 100, 120)
HERE = Path(__file__).resolve().parent
LAUNCHER_DIR = HERE / "launcher"

# Every configuration the TensorRT plugins accept has a specialization here (the plugins reject the
# rest when the engine is built). Names are stable: the plugins' launch code looks them up.
#
# - "fast" builds (fp16/bf16): channels innermost (NHWC, NHWC8, NHWC16: channel stride 1 compiled
#   in), 16-divisible channel counts and position strides (vectorised loads), 1x1 and 3x3 (KH, KW
#   compiled in as constants of the one pipelined K loop over taps x channel blocks, which stays a
#   loop: the taps are not unrolled); two tile configs each (the plugins' tactics);
# - "any" builds (fp32, fp16, bf16): every stride and the kernel size at run time, no divisibility
#   assumed except 16-byte aligned pointers: NCHW (TensorRT's kLINEAR), odd channel counts, any
#   kh x kw. fp32 multiplies in IEEE fp32 (exact), never TF32.
# - the bias is always read (the plugins pass zeros when a node has none); ReLU both ways.
# What a build may assume 16-divisible (tt.divisibility: pointers in bytes, integers as values). The
# buffers the plugins carve out of their workspace (packed weights, zero bias, the partition) always
# are; TensorRT's tensors need not be (an NCHW tensor inside a concatenation starts wherever the
# previous one ends), so only the fast builds assume it of X and Y, and the launchers check it
# (launchNamed refuses a launch that breaks an assumption of its build).
_CONV_OURS = ["w_ptr", "b_ptr", "idx_ptr", "cnt_ptr"]
_CONV_DIV = _CONV_OURS + ["x_ptr", "y_ptr", "CIN_G", "COUT_G", "sxn", "sxh", "sxw", "syn", "syh", "syw"]
_INTERP_OURS = ["idx_ptr", "cnt_ptr"]
_INTERP_DIV = _INTERP_OURS + ["f_ptr", "y_ptr", "C", "sfn", "sfh", "sfw", "syn", "syh", "syw"]
_CONV_GRID = "(cdiv(P, BM), groups * cdiv(COUT_G, BN), 1); P = N*Ho*Wo; cnt from mask_partition (gt0)"
_INTERP_GRID = "(cdiv(P, BP), cdiv(C, BC), 1); P = N*H*W; cnt from mask_partition (lt1)"

# tactic id -> name of the conv's tile classes (configs.CONV_TACTICS: 1 the arch's tuned entry, 2 a fixed
# 64x64x32, 3.. the arch's tile entries). Ids are stable (engines store them). A fast fp16/bf16 conv build
# carries every tactic its arch's table defines (the tiles configs.conv_config picks from at run time),
# the other conv builds tactic 1 only.
TACTIC_NAMES = CONV_TACTICS
_SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def _conv(dtype: str, k: int | None, deform: bool, relu: bool) -> dict:
    fast = k is not None
    const = dict(HAS_BIAS=True, DEFORM=deform, RELU=relu, PRECISION="ieee", UPCAST_DOT=False)
    if fast:
        const.update(KH=k, KW=k, sxc=1, syc=1, **({"soc": 1} if deform else {}))
    return {
        "module": "sai.kernels.sparse_sample_conv", "kernel": "sparse_conv_kernel", "cfg_kernel": "sparse_sample_conv",
        "dtype": dtype, "constexprs": const,
        "features": dict(dtype=dtype, k=k if fast else 3, deform=deform, build="fast" if fast else "any"),
        "divisible": _CONV_DIV if fast else _CONV_OURS,
        "tactics": list(TACTIC_NAMES) if fast and not deform else [1],
        "grid": _CONV_GRID,
    }


def _interp(dtype: str, mask_dtype: str, fast: bool) -> dict:
    return {
        "module": "sai.kernels.interpolate", "kernel": "interpolate_kernel", "cfg_kernel": "interpolate",
        "dtype": dtype, "mask_dtype": mask_dtype,
        "constexprs": dict(FUSED=False, **({"sfc": 1, "syc": 1} if fast else {})),
        "features": dict(dtype=dtype, k=7, fused=False),
        "divisible": _INTERP_DIV if fast else _INTERP_OURS,
        "grid": _INTERP_GRID,
    }


def _partition(dtype: str) -> dict:
    return {
        "module": "sai.kernels.compact", "kernel": "mask_partition_kernel", "cfg_kernel": None, "dtype": dtype,
        "constexprs": {"BLOCK": 1024}, "features": {}, "divisible": ["idx_ptr", "cnt_ptr"],
        "grid": "(cdiv(P, 1024), 1, 1); cnt zeroed first; MODE_LT1 is a constexpr: one spec per mode",
        "variants": {"gt0": {"MODE_LT1": False}, "lt1": {"MODE_LT1": True}},
    }


def _copy(bits: int) -> dict:
    return {
        "module": "sai.kernels.pack", "kernel": "copy4d_kernel", "cfg_kernel": None, "dtype": f"i{bits}",
        "constexprs": {"BLOCK": 1024}, "features": {}, "divisible": ["dst_ptr"],
        "grid": "(cdiv(D0*D1*D2*D3, 1024), 1, 1)",
    }


def _build_specs() -> dict[str, dict]:
    specs: dict[str, dict] = {}
    for dt in ("float16", "bfloat16", "float32"):
        s = _SHORT[dt]
        specs[f"mask_partition_{s}"] = _partition(dt)
    for dt in ("float16", "bfloat16", "float32"):
        s = _SHORT[dt]
        for relu in (True, False):
            r = "_relu" if relu else ""
            if dt != "float32":
                for k in (1, 3):
                    specs[f"sparse_conv_{s}_k{k}{r}"] = _conv(dt, k, False, relu)
                specs[f"sparse_conv_{s}_k3_deform{r}"] = _conv(dt, 3, True, relu)
            specs[f"sparse_conv_{s}_any{r}"] = _conv(dt, None, False, relu)
            specs[f"sparse_conv_{s}_any_deform{r}"] = _conv(dt, None, True, relu)
    for dt, mdt in (("float16", "float16"), ("float16", "float32"), ("bfloat16", "bfloat16"),
                    ("bfloat16", "float32"), ("float32", "float32")):
        base = f"interpolate_{_SHORT[dt]}_m{_SHORT[mdt]}"
        if dt != "float32":
            specs[base] = _interp(dt, mdt, True)
        specs[f"{base}_any"] = _interp(dt, mdt, False)
    specs["copy4d_b16"] = _copy(16)
    specs["copy4d_b32"] = _copy(32)
    specs.update(_block_specs())
    return specs


def _block_specs() -> dict[str, dict]:
    """The fused sparse block's own kernels (sai.kernels.sparse_block): the mask kernel and the separable
    Interpolate (plain, and the tail with bias + identity or the downsample GEMM), NHWC (channel strides 1),
    7x7 Gaussian, fp32 masks; the tiles of sparse_block._DEFAULTS. The convs are the conv builds above."""
    specs: dict[str, dict] = {}
    # NHWC with 16-divisible channel counts (as the fast conv builds): vectorised channel loads
    div = ["f_ptr", "y_ptr", "t_ptr", "td_ptr", "C", "sfn", "sfh", "sfw", "syn", "syh", "syw"]
    tail_div = ["id_ptr", "xd_ptr", "wd_ptr", "CIN", "sin_", "sih", "siw", "sdn", "sdh", "sdw"]
    for dt in ("float16", "bfloat16", "float32"):
        s = _SHORT[dt]
        specs[f"block_masks_{s}"] = {
            "module": "sai.kernels.sparse_block", "kernel": "block_masks_kernel", "cfg_kernel": None, "dtype": dt,
            "constexprs": {"HAS_GRID": True, "BLOCK": 128, "BC": 16, "sxc": 1}, "features": {}, "divisible": [],
            "types": {"wm_ptr": "*fp32", "bm_ptr": "*fp32", "u1_ptr": "*fp32", "u2_ptr": "*fp32", "m_ptr": "*fp32",
                      "acc_ptr": "*i32", "TD": "fp32"},
            "grid": "(cdiv(N*H1*W1, 128) + cdiv(N*H2*W2, 128), 1, 1); acc_ptr: 8 int32 zeroed once, left zeroed",
            "variants": {"det": {"STOCH": False}, "stoch": {"STOCH": True}}, "num_warps": 8,
        }
        for name, const in (("interp", dict(FUSED=False, HAS_BIAS=False, DOWN=False, BC=64 if s == "fp32" else 128)),
                            ("tail", dict(FUSED=True, HAS_BIAS=True, DOWN=False, sic=1, BC=64)),
                            ("tail_down", dict(FUSED=True, HAS_BIAS=True, DOWN=True, sdc=1, BC=64))):
            specs[f"block_{name}_{s}"] = {
                "module": "sai.kernels.sparse_block", "kernel": "interp_sep_kernel", "cfg_kernel": None, "dtype": dt,
                "constexprs": {"KS": 7, "TH": 8, "HRP": 16, "TW": 8, "BKD": 32, **const, "sfc": 1, "syc": 1,
                               "PRECISION": "ieee", "UPCAST_DOT": False, "F_ZERO": True},
                "features": {}, "divisible": div + (tail_div if const["FUSED"] else []),
                "types": {"m_ptr": "*fp32", "t_ptr": "*fp32", "td_ptr": "*fp32"},
                "grid": f"(N * cdiv(H, 8) * cdiv(W, 8), cdiv(C, {const['BC']}), 1); t_ptr/td_ptr: per-program "
                        "fp32 scratch; C % 16 == 0 (even: C % BC == 0)",
                "variants": {"even": {"EVEN_C": True}, "c16": {"EVEN_C": False}}, "num_warps": 8,
            }
    return specs


SPECS: dict[str, dict] = _build_specs()

_TT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "fp16": "fp16", "i16": "i16", "i32": "i32"}
_CPP = {"i32": "int32_t", "fp32": "float"}


def _expand_specs(names: list[str]) -> list[tuple[str, dict, int]]:
    """(name, spec, tactic) of every image: one per mode variant and tile tactic."""
    out = []
    for name in names:
        spec = SPECS[name]
        for suffix, extra in spec.get("variants", {"": {}}).items():
            s = dict(spec)
            s["constexprs"] = {**spec["constexprs"], **extra}
            for tactic in spec.get("tactics", [1]):
                out.append((f"{name}_{suffix}" if suffix else name, s, tactic))
    return out


def tile_config(spec: dict, cc: int, tactic: int) -> dict:
    """The tile config a conv spec's ``tactic`` compiles with on sm_<cc> (configs.conv_tactics)."""
    from sai.kernels import configs

    return configs.conv_tactics(f"sm_{cc}", **spec["features"])[tactic]


def image_stem(name: str, tactic: int) -> str:
    """File name (without extension) of one image in ``sm_<cc>/``."""
    return name if tactic == 1 else f"{name}__t{tactic}"


def supported(spec: dict, cc: int) -> bool:
    """bfloat16 needs sm_80 (TensorRT has no BF16 below it either)."""
    return not (cc < 80 and "bfloat16" in (spec["dtype"], spec.get("mask_dtype")))


def _signature(jit, spec: dict, const: dict) -> dict[str, str]:
    tt = _TT[spec["dtype"]]
    sig = {}
    for arg in jit.arg_names:
        if arg in const:
            sig[arg] = "constexpr"
        elif arg in spec.get("types", {}):
            sig[arg] = spec["types"][arg]
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


def compile_one(name: str, spec: dict, cc: int, out: Path, tactic: int = 1) -> dict:
    """Compile one specialization (and tile tactic) for sm_<cc>; write cubin/ptx/json; return the metadata."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sai.kernels import configs

    mod = importlib.import_module(spec["module"])
    jit = getattr(mod, spec["kernel"]).jit
    if spec["cfg_kernel"] == "sparse_sample_conv":
        cfg = tile_config(spec, cc, tactic)
    elif spec["cfg_kernel"]:
        cfg = configs.lookup(spec["cfg_kernel"], f"sm_{cc}", **spec["features"])
    else:
        cfg = {"num_warps": spec.get("num_warps", 4), "num_stages": 1}
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
        "spec": name, "module": spec["module"], "kernel": spec["kernel"], "tactic": tactic, "tactic_name": TACTIC_NAMES[tactic], "cc": cc, "entry": md.name, "num_warps": md.num_warps, "num_stages": cfg["num_stages"],
        "shared": md.shared, "global_scratch_size": getattr(md, "global_scratch_size", 0),
        "global_scratch_align": getattr(md, "global_scratch_align", 1),
        "profile_scratch_size": getattr(md, "profile_scratch_size", 0),
        "profile_scratch_align": getattr(md, "profile_scratch_align", 1),
        "params": params, "hidden_params": ["global_scratch:*i8", "profile_scratch:*i8"],
        "divisible": [a for a in spec["divisible"] if a not in const],
        "constexprs": {k: v for k, v in const.items()}, "grid": spec["grid"],
        "target": f"cuda:{cc}:32", "triton": triton.__version__, "compile_s": round(time.time() - t0, 2),
    }
    d = out / f"sm_{cc}"
    d.mkdir(parents=True, exist_ok=True)
    stem = image_stem(name, tactic)
    from sai.outputs import write_atomic

    for ext, data in (("cubin", kernel.asm["cubin"]), ("ptx", kernel.asm["ptx"].encode()),
                      ("json", (json.dumps(meta, indent=1) + "\n").encode())):
        write_atomic(d / f"{stem}.{ext}", data, flag="--out")
    return meta


def tensor_core_summary(out: Path, metas: list[dict]) -> dict:
    """Per arch and image: which tensor-core instructions the PTX holds (mma.sync, ldmatrix, wgmma, tcgen05)."""
    found = {}
    for m in sorted(metas, key=lambda m: (m["cc"], m["spec"], m["tactic"])):
        stem = image_stem(m["spec"], m["tactic"])
        text = (out / f"sm_{m['cc']}" / f"{stem}.ptx").read_text()
        found.setdefault(f"sm_{m['cc']}", {})[stem] = [
            ins for ins, key in (("mma.sync", "mma.sync"), ("ldmatrix", "ldmatrix"), ("wgmma", "wgmma.mma_async"),
                                 ("tcgen05", "tcgen05.mma")) if key in text]
    return found


# ----------------------------------------------------------------------------------------------
# C++ generation
# ----------------------------------------------------------------------------------------------


# Typed launch code: one argument struct per kernel family (every argument some build of that
# Triton kernel takes at run time or compiles in as a semantic constant), one pack function per
# distinct build signature (the build's checks as integer compares), and the image table.
_TILE_KEYS = {"BM", "BN", "BK", "BP", "BC", "BLOCK"}


def _family_struct(kernel: str) -> str:
    """``sparse_conv_kernel`` -> ``SparseConvKernelArgs``."""
    return "".join(w[:1].upper() + w[1:] for w in kernel.split("_")) + "Args"


def _semantic_constants(metas: list[dict]) -> dict[str, set[str]]:
    """Per spec, the compiled-in integer/bool constants a caller must pass: not the tile configs
    (known tile names and whatever differs between the images of one spec), never strings."""
    by_spec: dict[str, list[dict]] = {}
    for m in metas:
        by_spec.setdefault(m["spec"], []).append(m)
    tiles = set(_TILE_KEYS) | {"num_warps", "num_stages"}
    out = {}
    for spec, ms in by_spec.items():
        keys = set(ms[0]["constexprs"])
        varying = {k for k in keys if len({repr(m["constexprs"].get(k)) for m in ms}) > 1}
        out[spec] = {k for k in keys - tiles - varying - {"num_warps", "num_stages"}
                     if isinstance(ms[0]["constexprs"][k], (bool, int))}
    return out


def _families(metas: list[dict], consts: dict[str, set[str]]) -> dict[str, dict]:
    """kernel -> {"id", "struct", "module", "fields": {name: "ptr" | "int" | "float"} in argument order}."""
    fams: dict[str, dict] = {}
    for m in sorted(metas, key=lambda m: (m["kernel"], m["spec"])):
        f = fams.setdefault(m["kernel"], {"id": 0, "struct": _family_struct(m["kernel"]), "module": m["module"],
                                          "fields": {}, "order": []})
        for p in m["params"]:
            kind = "ptr" if p["type"].startswith("*") else ("float" if p["type"] == "fp32" else "int")
            f["fields"].setdefault(p["name"], kind)
    # a constant is a field where it tells the family's builds apart (or is a parameter elsewhere):
    # one every build compiles in alike (HAS_BIAS, UPCAST_DOT, ...) is no choice a host can get wrong
    for kernel, f in fams.items():
        ms = [m for m in metas if m["kernel"] == kernel]
        for k in sorted(set().union(*(consts[m["spec"]] for m in ms))):
            if k in f["fields"] or len({repr(m["constexprs"].get(k)) for m in ms}) > 1:
                f["fields"].setdefault(k, "int")
    for i, name in enumerate(sorted(fams)):
        fams[name]["id"] = i + 1
    return fams


def _field_order(metas: list[dict], fam: dict, kernel: str) -> list[str]:
    """The fields in the kernel's argument order (parameters and constants interleaved as declared)."""
    order: list[str] = []
    for m in metas:
        if m["kernel"] != kernel:
            continue
        # params keep the declaration order; constants sit where the kernel declares them (their
        # order in the metadata's constexprs follows the spec, so place them after the params)
        for p in m["params"]:
            if p["name"] not in order:
                order.append(p["name"])
    order += sorted(k for k in fam["fields"] if k not in order)
    return order


def _pack_body(m: dict, consts: set[str]) -> list[str]:
    """The statements of one build's pack function: constants, then each parameter in order."""
    lines = []
    for k in sorted(consts):
        v = int(m["constexprs"][k])
        lines.append(f'    if (a.{k} != {v}LL) return packFail(e, "{k}", a.{k} == kUnsetInt ? PackError::kUnset '
                     f': PackError::kConstant, a.{k}, {v}LL);')
    div = set(m["divisible"])
    for i, p in enumerate(m["params"]):
        n, t = p["name"], p["type"]
        if t.startswith("*"):
            lines.append(f'    if (a.{n} == kUnsetPointer) return packFail(e, "{n}", PackError::kUnset, 0);')
            if n in div:
                lines.append(f'    if (a.{n} % 16 != 0) return packFail(e, "{n}", PackError::kAlignment, '
                             f'static_cast<long long>(a.{n}));')
            lines.append(f"    s[{i}].pointer = a.{n};")
        elif t == "fp32":
            lines.append(f'    if (a.{n} != a.{n}) return packFail(e, "{n}", PackError::kUnset, 0);')
            lines.append(f"    s[{i}].f32 = a.{n};")
        elif t == "i32":
            lines.append(f'    if (a.{n} < INT32_MIN || a.{n} > INT32_MAX) return packFail(e, "{n}", '
                         f'a.{n} == kUnsetInt ? PackError::kUnset : PackError::kInt32, a.{n});')
            if n in div:
                lines.append(f'    if (a.{n} % 16 != 0) return packFail(e, "{n}", PackError::kMultiple16, a.{n});')
            lines.append(f"    s[{i}].i32 = static_cast<int32_t>(a.{n});")
        else:
            raise ValueError(f"{m['spec']}: parameter type {t} of {n} has no C++ launch slot")
    return lines


def generate_cpp(out: Path, metas: list[dict]) -> list[Path]:
    """``sai_kernels_embedded.cpp`` (the cubins, pulled in by the assembler's ``.incbin`` from
    ``sm_<cc>/``, + the image table with each build's pack function) and ``sai_kernels_generated.h``
    (one typed argument struct per kernel family and its ``launch`` overload on a ResolvedKernel)."""
    metas = sorted(metas, key=lambda m: (m["spec"], m["cc"], m["tactic"]))
    consts = _semantic_constants(metas)
    fams = _families(metas, consts)
    body = ["// Generated by python -m sai.kernels.aot: do not edit, do not commit.",
            "// The cubins are read by the assembler (.incbin) from the files beside this one.",
            '#include "sai_kernels_generated.h"', "", "#include <cstddef>", "#include <cstdint>", ""]
    for m in metas:
        stem = image_stem(m["spec"], m["tactic"])
        sym = f"sai_cubin_{stem}_sm{m['cc']}"
        path = (out / f"sm_{m['cc']}" / f"{stem}.cubin").resolve()
        size = path.stat().st_size
        body += [f'asm(".section .rodata.sai_cubins,\\"a\\",@progbits\\n.balign 16\\n.globl {sym}\\n'
                 f'.hidden {sym}\\n{sym}:\\n.incbin \\"{path}\\"\\n.byte 0\\n.previous");',
                 f'extern "C" const unsigned char {sym}[{size + 1}];']
    # what the library carries, readable from the file without loading it (sai doctor)
    specs: dict[str, dict] = {}
    for m in metas:
        e = specs.setdefault(m["spec"], {"archs": [], "tactics": []})
        for key, val in (("archs", m["cc"]), ("tactics", m["tactic"])):
            if val not in e[key]:
                e[key].append(val)
    from sai.constants import KERNELS_MANIFEST_MARKER

    manifest = KERNELS_MANIFEST_MARKER + json.dumps({"triton": metas[0]["triton"] if metas else "", "specs": specs},
                                            separators=(",", ":"))
    manifest = manifest.replace("\\", "\\\\").replace('"', '\\"')
    body += ["", "// sai doctor reads this section: which specs, archs and tactics the library carries",
             '__attribute__((used, section(".sai_kernels"))) const char kSaiKernelsManifest[] =',
             f'    "{manifest}";', "", "namespace sai {", "namespace kernels {", "namespace {", ""]
    # one pack function per distinct build signature (the archs of a spec usually share one)
    packs: dict[str, str] = {}
    rows = []
    for m in metas:
        if len(m["params"]) > 62:
            raise ValueError(f"{m['spec']}: {len(m['params'])} parameters, the launcher holds 62 (kMaxLaunchParams)")
        fam = fams[m["kernel"]]
        lines = _pack_body(m, consts[m["spec"]] & set(fam["fields"]))
        key = fam["struct"] + "\n" + "\n".join(lines)
        if key not in packs:
            fn = f"pack{len(packs)}"
            packs[key] = fn
            body += [f"// {m['spec']} (and every build with the same parameters, constants and assumptions)",
                     f"bool {fn}(const void* args, LaunchSlot* s, PackError* e) {{",
                     f"    const auto& a = *static_cast<const {fam['struct']}*>(args);", *lines,
                     "    return true;", "}", ""]
        plist = ",".join(f"{p['name']}:{p['type']}" for p in m["params"])
        const = ",".join(f"{k}={v}" for k, v in m["constexprs"].items())
        c = m["constexprs"]
        rows_, cols_ = c.get("BM", c.get("BP", c.get("BLOCK", 1))), c.get("BN", c.get("BC", 1))
        stem = image_stem(m["spec"], m["tactic"])
        sym = f"sai_cubin_{stem}_sm{m['cc']}"
        size = (out / f"sm_{m['cc']}" / f"{stem}.cubin").stat().st_size
        rows.append(f'    {{"{m["spec"]}", {m["cc"]}, {m["tactic"]}, {sym}, {size}, "{m["entry"]}", {m["num_warps"]}, '
                    f'{m["shared"]}, {m["global_scratch_size"]}, {m["global_scratch_align"]}, '
                    f'{m["profile_scratch_size"]}, {m["profile_scratch_align"]}, {len(m["params"])}, "{plist}", '
                    f'"{const}", "{",".join(m["divisible"])}", {rows_}, {cols_}, {fam["struct"]}::kFamily, '
                    f'{packs[key]}}},')
    body += ["const KernelImage kImages[] = {", *rows, "};", "}  // namespace", "",
             "const KernelImage* embeddedImages(size_t* count) {",
             "    *count = sizeof(kImages) / sizeof(kImages[0]);", "    return kImages;", "}", "",
             "}  // namespace kernels", "}  // namespace sai", ""]
    header = ["// Generated by python -m sai.kernels.aot: do not edit, do not commit.",
              "// Typed launches of the embedded builds: one argument struct per Triton kernel (every argument",
              "// some build takes at run time, and the constants a build compiles in, which a launch checks),",
              "// unset fields refused. Resolve an image once per context (resolveKernel), then launch(k, ...).",
              "#pragma once", '#include "sai_kernel_launcher.h"', "", "#include <cstdint>", "",
              "namespace sai {", "namespace kernels {", ""]
    ctype = {"ptr": "CUdeviceptr", "int": "int64_t", "float": "float"}
    unset = {"ptr": "kUnsetPointer", "int": "kUnsetInt", "float": "kUnsetFloat"}
    for kernel, fam in sorted(fams.items(), key=lambda kv: kv[1]["id"]):
        specs_of = sorted({m["spec"] for m in metas if m["kernel"] == kernel})
        header += [f"// {fam['module']}.{kernel}: builds {', '.join(specs_of)}",
                   f"struct {fam['struct']} {{", f"    static constexpr int kFamily = {fam['id']};"]
        header += [f"    {ctype[fam['fields'][n]]} {n} = {unset[fam['fields'][n]]};"
                   for n in _field_order(metas, fam, kernel)]
        header += ["};", "inline CUresult launch(const ResolvedKernel& k, CUstream stream, unsigned gridX, "
                   "unsigned gridY, unsigned gridZ,", f"                       const {fam['struct']}& args, "
                   "CUdeviceptr globalScratch = 0) {",
                   f"    return launchResolved(k, stream, gridX, gridY, gridZ, {fam['struct']}::kFamily, &args, "
                   "globalScratch);", "}", ""]
    header += ["}  // namespace kernels", "}  // namespace sai", ""]
    from sai.outputs import write_atomic

    paths = [out / "sai_kernels_embedded.cpp", out / "sai_kernels_generated.h"]
    for path, text in zip(paths, ("\n".join(body), "\n".join(header)), strict=True):
        write_atomic(path, text, flag="--out")
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
    jobs = [(n, s, cc, t) for n, s, t in _expand_specs(names) for cc in archs if supported(s, cc)]
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:
        with cf.ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(compile_one, n, s, cc, args.out, t) for n, s, cc, t in jobs]
            metas = [f.result() for f in futures]
    else:
        metas = [compile_one(n, s, cc, args.out, t) for n, s, cc, t in jobs]
    generate_cpp(args.out, metas)
    summary = tensor_core_summary(args.out, metas)
    from sai.outputs import write_atomic

    write_atomic(args.out / "tensor_cores.json", json.dumps(summary, indent=1) + "\n", flag="--out")
    print(f"aot: {len(metas)} kernels ({len(names)} specs, their tactics, x {len(archs)} archs) in {time.time() - t0:.1f}s -> {args.out}")
    for arch, specs in summary.items():
        if "sparse_conv_fp16_k3_relu" in specs:
            conv = specs["sparse_conv_fp16_k3_relu"]
            print(f"  {arch}: sparse_conv_fp16_k3_relu uses {', '.join(conv) or 'no tensor-core instructions (FMA)'}")
    if args.cxx:
        objs = compile_cpp(args.out)
        print(f"aot: compiled {', '.join(o.name for o in objs)} against {cuda_include_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
