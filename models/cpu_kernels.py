"""The C++ CPU kernels of the sai ops (models/csrc/sai_cpu_ops.cpp): build, load, register.

`python -m sai.models.build_cpu_kernels` (run by the Makefile's install step) compiles the
extension with the host C++ compiler against the installed torch, into ``models/_lib/``. On import of
``sai.models`` the library is loaded if present and registered as the CPU implementation of
``sai::sparse_sample_conv`` and ``sai::interpolate`` for float32; other dtypes and machines without
the built library use the pure-PyTorch reference of ``sai.models.ops`` (also the test oracle).
``SAI_CPU_KERNELS=0`` disables the C++ kernels; ``SAI_REQUIRE_CPU_KERNELS=1`` makes a missing build
an error.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import torch

from sai.errors import SaiError
from sai.models import native_build, ops

HERE = Path(__file__).resolve().parent
# Includes sai_cpu_kernels.h (the kernels, shared with the onnxruntime custom-op library, models/csrc/ort/),
# sai_cpu_blocks.h (the fused NHWC kernels of a whole sparse block, sai::sparse_block, used by
# sai.models.fuse) and sai_cpu_gemm.h (their GEMM); the per-element math from models/csrc/common/
# (native_build.SHARED_INCLUDE, shared with the TensorRT plugins' CUDA kernels). Every file the compile
# reads is recorded beside the library (native_build), which is what stale() checks.
SOURCE = HERE / "csrc" / "sai_cpu_ops.cpp"
LIBRARY = HERE / "_lib" / "libsai_cpu_ops.so"
# At or above this fraction of active positions the dense convolution is used (exact either way).
DENSE_ABOVE = 0.8

_state = {"loaded": False, "registered": False}


def _compile_command(output: Path) -> list[str]:
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [os.environ.get("CXX", "g++"), "-O3", f"-march={native_build.march()}", "-std=c++17", "-fPIC", "-shared",
           "-fopenmp", "-Wall", "-Wno-unused-parameter", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
           *[f"-I{d}" for d in native_build.INCLUDE_DIRS], f"-I{sysconfig.get_paths()['include']}"]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
    # `import torch` has loaded its libraries before this one is; the rpath is for tools (ldd): the torch of an
    # installed wheel's site-packages, and for a build in place (not a wheel's) this torch's folder
    rpath = ["$ORIGIN/../../../torch/lib"]
    if os.environ.get("SAI_NATIVE_RELOCATABLE") != "1":
        rpath.append(str(torch_lib))
    cmd += [str(SOURCE), "-o", str(output), f"-L{torch_lib}", f"-Wl,-rpath,{':'.join(rpath)}",
            "-lc10", "-ltorch_cpu", "-ltorch"]
    return cmd


def build(verbose: bool = True) -> Path:
    """Compile the extension (written to a temporary name, then renamed)."""
    from sai.outputs import atomic_path

    LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        depfile = Path(scratch) / "deps.d"
        with atomic_path(LIBRARY) as tmp:
            cmd = _compile_command(tmp) + native_build.depfile_flags(depfile)
            if verbose:
                print("building sai CPU kernels:", " ".join(cmd[:2]), "...", SOURCE.name, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SaiError(f"building the sai CPU kernels failed:\n{proc.stderr[-4000:]}")
        native_build.write_record(LIBRARY, depfile, tag=build_tag())
    return LIBRARY


def build_tag() -> str:
    """The extension links against this torch: one built for another version is stale."""
    return f"torch {torch.__version__}"


def stale_reason() -> str | None:
    """Why the library must be rebuilt (missing, built for another torch, a source or any header its
    compile read edited since), or None."""
    return native_build.stale_reason(LIBRARY, tag=build_tag())


def stale() -> bool:
    return stale_reason() is not None


def load() -> bool:
    """Load the built library and register it for the CPU; False when it is not available."""
    if _state["registered"]:
        return True
    if os.environ.get("SAI_CPU_KERNELS", "1") == "0":
        return False
    if stale():
        if os.environ.get("SAI_REQUIRE_CPU_KERNELS") == "1":
            raise SaiError(f"{LIBRARY}: {stale_reason()}: run `make install` "
                           "(or python -m sai.models.build_cpu_kernels)")
        return False
    if not _state["loaded"]:
        torch.ops.load_library(str(LIBRARY))
        _state["loaded"] = True

    # Outputs are contiguous NCHW whatever the input's memory format (the dense path of the C++
    # kernel and the reference would keep channels_last): what the fake kernels state, see
    # ops.output_memory_format.
    def ssc_cpu(x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups, activation):
        if x.dtype != torch.float32 or weight.dtype != torch.float32 or mask.dtype != torch.float32:
            return ops.sparse_sample_conv_reference(
                x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups, activation).contiguous()
        return torch.ops.sai_cpu.sparse_sample_conv(
            x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups, activation,
            DENSE_ABOVE).contiguous()

    def interp_cpu(feature, mask, sigma, kernel_size, eps):
        if feature.dtype != torch.float32 or mask.dtype != torch.float32:
            return ops.interpolate_reference(feature, mask, sigma, kernel_size, eps).contiguous()
        return torch.ops.sai_cpu.interpolate(feature, mask, sigma, kernel_size, eps).contiguous()

    torch.library.register_kernel("sai::sparse_sample_conv", "cpu", ssc_cpu)
    torch.library.register_kernel("sai::interpolate", "cpu", interp_cpu)
    _state["registered"] = True
    return True


def block_gemm() -> str:
    """What the fused block kernel's GEMMs (models/csrc/sai_cpu_gemm.h) run on: "avx2+fma 6x16" (register
    tiles, x86-64 with AVX2/FMA) or "portable C++"; "" when the C++ kernels are not loaded."""
    return str(torch.ops.sai_cpu.block_gemm()) if _state["registered"] else ""


def active() -> bool:
    """True when the C++ kernels are the CPU implementation of the sai ops."""
    return _state["registered"]
