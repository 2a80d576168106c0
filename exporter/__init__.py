"""sai.exporter: PyTorch -> ONNX with the sai custom ops SparseSampleConv and Interpolate."""
