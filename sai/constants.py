"""Names and choices fixed across sai, defined once: the custom ops and their TensorRT plugins, and the
choices the CLI verbs offer (each also the set the library function checks).

The C++ plugins keep their own copies (``trt_plugins/common/saiPluginCommon.h``: ``kSAI_PLUGIN_VERSION``,
``kSAI_PLUGIN_NAMESPACE``; the creators' ``kNAME``); ``tests/test_constants.py`` parses the headers and
fails when the two sides differ. Nothing heavy is imported here, so the CLI builds its parsers from it.
"""

from __future__ import annotations

# ---- the custom ops (docs/design.md 3.2, 3.3) -------------------------------------------------
DOMAIN = "sai"  # ONNX domain of the custom nodes and their model-local functions
DOMAIN_VERSION = 1
SPARSE_SAMPLE_CONV = "SparseSampleConv"
INTERPOLATE = "Interpolate"
OP_TYPES = (SPARSE_SAMPLE_CONV, INTERPOLATE)
# SparseSampleConv's function overloads (a node picks its body by ``overload``; "" is the plain body)
DEFORM_OVERLOAD = "deform"
POINTWISE_OVERLOAD = "pointwise"  # sparse body only: 1x1 kernel, zero pads, one group
# A whole sparse block: an op of libsai_ort_ops.so only, put in by sai.runtime.ort_fuse (never exported)
SPARSE_BLOCK = "SparseBlock"

# ---- their TensorRT plugins: what the ONNX parser matches a node against ----------------------
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "sai"
PLUGIN_ATTRIBUTES = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}

# ---- the kernels a plugin library carries ------------------------------------------------------
# sai.kernels.aot writes this marker + a JSON manifest into the embedded kernels' C++ (a section of
# libsai_trt_plugins.so); sai.runtime.environment reads it back for sai doctor.
KERNELS_MANIFEST_MARKER = "SAI_KERNELS_MANIFEST="

# ---- choices (the CLI's and the library's) ----------------------------------------------------
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
ORT_DEVICES = ("cpu", "cuda", "tensorrt")  # onnxruntime execution providers behind --device
TORCH_DEVICES = ("cpu", "cuda")  # and cuda:N
PRECISIONS = ("fp32", "fp16")  # what sai convert exports
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")  # what the torch backend runs a checkpoint in
SAMPLING_MODES = ("deterministic", "stochastic", "dense")
HEADS = ("cls", "fpn", "none")
TARGETS = ("portable", "tensorrt", "onnx-native")
BODIES = ("sparse", "dense")
DCN_OFFSET_FROM = ("input", "conv1")  # what a DCN offset conv reads: the block input (SAI-Det) or conv1's output
FLOPS_INPUT_RULES = ("auto", "detection", "classification")  # the official calculator's input size rule
DEFAULT_OPSET = 21  # the ONNX opset sai exports by default (MIN_OPSET of sai.exporter.functions .. MAX_OPSET)

__all__ = [
    "BACKENDS", "BODIES", "DCN_OFFSET_FROM", "DEFAULT_OPSET", "DEFORM_OVERLOAD", "DOMAIN", "FLOPS_INPUT_RULES", "DOMAIN_VERSION", "HEADS", "INTERPOLATE", "KERNELS_MANIFEST_MARKER", "OP_TYPES", "ORT_DEVICES",
    "PLUGIN_ATTRIBUTES", "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "POINTWISE_OVERLOAD", "PRECISIONS", "SAMPLING_MODES", "TORCH_PRECISIONS",
    "SPARSE_SAMPLE_CONV", "TARGETS", "TORCH_DEVICES",
]
