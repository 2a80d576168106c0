"""sai.runtime: one engine API over TensorRT, ONNX Runtime and PyTorch backends."""
