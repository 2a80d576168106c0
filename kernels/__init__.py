"""sai.kernels: the GPU kernels of both sai ops, written in Triton (docs/design.md 1 and 6).

- ``sparse_sample_conv(...)`` / ``interpolate(...)``: the signatures of ``sai.models.ops``, on CUDA
  tensors (or CPU tensors under ``TRITON_INTERPRET=1``: the interpreter runs the same kernel source
  in the test suite), any memory format in, logical NCHW in channels_last memory out.
- ``interpolate_add_relu(...)``: Interpolate with the fused bottleneck tail of docs/design.md 3.4.
- ``python -m sai.kernels.aot``: cubins/PTX for every target arch + embedded C++ (``make kernels``).
- ``sai.kernels.torch_ops.register()``: the kernels as the CUDA implementation of the ``sai::`` ops.

The public functions share their names with the modules that hold them (one module per op, found
by name); the names below are rebound to the functions, so inside the project import the modules
with ``from sai.kernels.sparse_sample_conv import ...``, never ``from sai.kernels import <module>``.
Importing this package imports triton (about 0.4 s); sai.models imports it only where CUDA is.
"""

from __future__ import annotations

from sai.kernels.interpolate import interpolate, interpolate_add_relu
from sai.kernels.sparse_sample_conv import fp32_precision, sparse_sample_conv

__all__ = ["fp32_precision", "interpolate", "interpolate_add_relu", "sparse_sample_conv"]
