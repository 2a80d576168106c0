"""sai.exporter: PyTorch -> ONNX with the sai custom ops SparseSampleConv and Interpolate."""

from sai.exporter.export import ExportResult, export_onnx, prepare_model, save_atomic
from sai.exporter.functions import attach_functions, strip_functions
from sai.exporter.metadata import read_metadata

__all__ = [
    "ExportResult",
    "attach_functions",
    "export_onnx",
    "prepare_model",
    "read_metadata",
    "save_atomic",
    "strip_functions",
]
