"""sai-deploy: spatially adaptive CNNs (Xie et al., ECCV 2020) from research code to inference engines."""

__version__ = "0.1.0"
