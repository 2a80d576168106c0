import os
import shutil
import signal

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


@pytest.fixture(scope="module")
def ort_engine(outdir):
    """The onnxruntime engine over ``outdir`` (one thread), one per module."""
    import sai.runtime as rt

    with rt.load(outdir, backend="onnxruntime", threads=1) as e:
        yield e


@pytest.fixture(scope="module")
def engine(ort_engine):
    """The serve tests' name for ``ort_engine`` (the engine behind the server under test)."""
    return ort_engine


@pytest.fixture(scope="module")
def reference(outdir):
    """A second, independent engine over ``outdir``'s model.onnx, profile off: the expected results."""
    import sai.runtime as rt

    with rt.load(outdir / "model.onnx", threads=1, verify=False) as e:
        e.set_profile(None, None)
        yield e


@pytest.fixture(autouse=True)
def _interactive_sigint():
    """Ctrl-C as an interactive user has it: SIGINT raises KeyboardInterrupt. A pytest started as a background
    job (``cmd &`` in a script, as CI may run it) inherits SIGINT ignored, and the tests that send SIGINT to
    ``sai convert`` (or check the handler it restores) would then test an ignored signal instead."""
    prev = signal.getsignal(signal.SIGINT)
    if prev is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if prev is signal.SIG_IGN:
        signal.signal(signal.SIGINT, prev)

