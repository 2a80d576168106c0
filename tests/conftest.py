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


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    """The tiny `sai convert` OUTDIR of runtime_helpers (built once per session; a module may override)."""
    from runtime_helpers import tiny_outdir

    out, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0, info
    return out
