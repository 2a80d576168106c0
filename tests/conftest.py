import os
import shutil

import pytest


def _have_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


def pytest_collection_modifyitems(config, items):
    if _have_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and TensorRT (run make gpu-test on such a machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
