"""sai.models: SparseResNet in PyTorch, the reference ops, checkpoints and FLOPs accounting."""

from sai.models.ops import interpolate, sparse_sample_conv

__all__ = ["interpolate", "sparse_sample_conv"]
