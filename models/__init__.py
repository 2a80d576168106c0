"""sai.models: SparseResNet in PyTorch, the reference ops, checkpoints and FLOPs accounting."""

from sai.models import cpu_kernels as _cpu_kernels
from sai.models.checkpoint import (
    LoadReport,
    detect_layout,
    init_from_dense,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from sai.models.detector import SaiDetector, load_detector
from sai.models.detector_presets import PRESETS as DETECTOR_PRESETS
from sai.models.detector_presets import DetectorConfig
from sai.models.flops import kernel_flops, official_flops, official_input_size
from sai.models.fuse import cast_for_inference, fuse_for_inference
from sai.models.network import (
    ARCHS,
    DEFAULT_OPTIONS,
    HEADS,
    SAMPLING_MODES,
    SaiResNet,
    build_model,
    iter_sparse_blocks,
    noise_shapes,
    output_names,
    set_sampling,
)
from sai.models.ops import interpolate, sparse_sample_conv
from sai.models.twin import dense_twin

# The C++ CPU kernels (built by `make install`) become the CPU implementation of the sai ops when
# present; otherwise the PyTorch reference in ops.py runs.
_cpu_kernels.load()


def _register_gpu_kernels() -> None:
    """The Triton kernels (sai.kernels) become the CUDA implementation of the sai ops where a GPU and
    triton are; elsewhere nothing is imported and the reference runs on CUDA tensors."""
    import torch

    if not torch.cuda.is_available():
        return
    try:
        from sai.kernels import torch_ops
    except ImportError:  # no triton: the PyTorch reference serves CUDA tensors
        return
    torch_ops.register()


_register_gpu_kernels()

__all__ = [
    "ARCHS",
    "DEFAULT_OPTIONS",
    "DETECTOR_PRESETS",
    "DetectorConfig",
    "HEADS",
    "LoadReport",
    "SAMPLING_MODES",
    "SaiDetector",
    "SaiResNet",
    "build_model",
    "dense_twin",
    "detect_layout",
    "cast_for_inference",
    "fuse_for_inference",
    "init_from_dense",
    "interpolate",
    "iter_sparse_blocks",
    "kernel_flops",
    "load_detector",
    "load_checkpoint",
    "model_from_checkpoint",
    "noise_shapes",
    "official_flops",
    "official_input_size",
    "output_names",
    "save_checkpoint",
    "set_sampling",
    "sparse_sample_conv",
]
