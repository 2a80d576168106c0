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
from pathlib import Path

import torch

from sai.errors import SaiError
from sai.models import ops

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "csrc" / "sai_cpu_ops.cpp"
# The kernels themselves (shared with the onnxruntime custom-op library, models/csrc/ort/).
KERNELS_HEADER = HERE / "csrc" / "sai_cpu_kernels.h"
# The fused NHWC kernels of a whole sparse block (sai::sparse_block, used by sai.models.fuse).
BLOCKS_HEADER = HERE / "csrc" / "sai_cpu_blocks.h"
# Their GEMM (packed weights, AVX2 register tiles; shared with the onnxruntime library too).
GEMM_HEADER = HERE / "csrc" / "sai_cpu_gemm.h"
LIBRARY = HERE / "_lib" / "libsai_cpu_ops.so"
# The shared __host__ __device__ index math of the TensorRT plugins (one source for both kernels).
COMMON_INCLUDE = HERE.parent / "trt_plugins" / "common"
# At or above this fraction of active positions the dense convolution is used (exact either way).
DENSE_ABOVE = 0.8

_state = {"loaded": False, "registered": False}


def _compile_command(output: Path) -> list[str]:
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [os.environ.get("CXX", "g++"), "-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fopenmp",
           "-Wall", "-Wno-unused-parameter", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
           f"-I{COMMON_INCLUDE}", f"-I{sysconfig.get_paths()['include']}"]
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd += [str(SOURCE), "-o", str(output), f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}",
            "-lc10", "-ltorch_cpu", "-ltorch"]
    return cmd


def build(verbose: bool = True) -> Path:
    """Compile the extension (written to a temporary name, then renamed)."""
    from sai.outputs import atomic_path

    LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(LIBRARY) as tmp:
        cmd = _compile_command(tmp)
        if verbose:
            print("building sai CPU kernels:", " ".join(cmd[:2]), "...", SOURCE.name, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SaiError(f"building the sai CPU kernels failed:\n{proc.stderr[-4000:]}")
    return LIBRARY


def stale() -> bool:
    if not LIBRARY.exists():
        return True
    newest = max(p.stat().st_mtime for p in (SOURCE, KERNELS_HEADER, BLOCKS_HEADER, GEMM_HEADER))
    return LIBRARY.stat().st_mtime < newest


def load() -> bool:
    """Load the built library and register it for the CPU; False when it is not available."""
    if _state["registered"]:
        return True
    if os.environ.get("SAI_CPU_KERNELS", "1") == "0":
        return False
    if stale():
        if os.environ.get("SAI_REQUIRE_CPU_KERNELS") == "1":
            raise SaiError(f"{LIBRARY} is missing or older than its source: run `make install`")
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
