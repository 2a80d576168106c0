"""sai.kernels as the CUDA implementation of the torch custom ops ``sai::sparse_sample_conv`` / ``sai::interpolate``.

``register()`` is called by ``sai.models`` on import where CUDA is available (so the fused model and
``sai.runtime``'s torch backend run these kernels on a GPU); ``SAI_TRITON_KERNELS=0`` keeps the
PyTorch reference on CUDA instead. Dtypes the kernels do not take (float64, ...) fall back to the
reference. Outputs are channels_last from the kernels and contiguous NCHW from the fallback, as
``sai.models.ops.output_memory_format`` tells the fake kernels (torch.compile plans with their
strides). For CUDA graphs, run each shape once before capture (Triton compiles and the weights are
packed on first use).
"""

from __future__ import annotations

import os

import torch

_state = {"registered": False}


def sparse_sample_conv_cuda(x, mask, weight, bias, offset, stride, pads, dilation, groups, deform_groups,
                            activation):
    """The kernel behind ``torch.ops.sai.sparse_sample_conv`` on CUDA tensors."""
    from sai.models import ops

    if not ops.kernels_take_conv(x, mask, weight, offset):
        return ops.sparse_sample_conv_reference(x, mask, weight, bias, offset, stride, pads, dilation, groups,
                                                deform_groups, activation).contiguous()
    from sai.kernels.sparse_sample_conv import sparse_sample_conv_attrs

    return sparse_sample_conv_attrs(x, mask, weight, bias, offset, list(stride), list(pads), list(dilation),
                                    groups, deform_groups, activation)


def interpolate_cuda(feature, mask, sigma, kernel_size, eps):
    """The kernel behind ``torch.ops.sai.interpolate`` on CUDA tensors."""
    from sai.models import ops

    if not ops.kernels_take_interp(feature, mask):
        return ops.interpolate_reference(feature, mask, sigma, kernel_size, eps).contiguous()
    from sai.kernels.interpolate import interpolate

    return interpolate(feature, mask, sigma, kernel_size, eps)


def register() -> bool:
    """Register the kernels for the CUDA dispatch key; False when disabled (``SAI_TRITON_KERNELS=0``)."""
    if _state["registered"]:
        return True
    if os.environ.get("SAI_TRITON_KERNELS", "1") == "0":
        return False
    import sai.models.ops  # noqa: F401  (defines the custom ops)

    torch.library.register_kernel("sai::sparse_sample_conv", "cuda", sparse_sample_conv_cuda)
    torch.library.register_kernel("sai::interpolate", "cuda", interpolate_cuda)
    _state["registered"] = True
    return True


def registered() -> bool:
    """True when the Triton kernels are the CUDA implementation of the sai ops."""
    return _state["registered"]
