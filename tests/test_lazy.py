"""sai.lazy.lazy_import: nothing imported until used; a missing module gives one message naming the
fix; the backends' import helpers go through it."""

from __future__ import annotations

import re
import sys

import pytest

from sai.errors import MissingDependencyError
from sai.lazy import INSTALL, lazy_import


def test_nothing_is_imported_until_an_attribute_is_read(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    mod = lazy_import("colorsys", purpose="test")
    assert "colorsys" not in sys.modules
    assert mod.rgb_to_hsv(1, 0, 0) == (0.0, 1.0, 1.0) and "colorsys" in sys.modules
    assert mod.available() and mod.load() is sys.modules["colorsys"]


def test_missing_module_names_what_needs_it_and_the_fix():
    mod = lazy_import("sai_no_such_module", purpose="run the frobnicator", install="pip install frob")
    assert not mod.available()
    with pytest.raises(MissingDependencyError) as err:
        getattr(mod, "thing")  # noqa: B009  (the attribute read is what imports)
    assert str(err.value) == ("sai_no_such_module is required to run the frobnicator; install it with: "
                              "pip install frob")
    assert err.value.module == "sai_no_such_module"


def test_a_module_whose_native_library_fails_says_why(monkeypatch):
    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "sai_broken_native":
                raise OSError("libnvinfer.so.10: cannot open shared object file")
            return None

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(MissingDependencyError, match=r"^tensorrt is required to run it \(libnvinfer\.so\.10: cannot "
                                                     r"open shared object file\); install it with: pip install tensorrt"):
        lazy_import("sai_broken_native", purpose="run it", dist="tensorrt").load()


def test_fallback_names_and_default_fix(monkeypatch):
    mod = lazy_import("sai_no_such.runtime", purpose="manage streams", dist="cuda-python", fallbacks=("colorsys",))
    assert mod.load().__name__ == "colorsys"
    with pytest.raises(MissingDependencyError, match=re.escape("cuda-python is required to manage streams; install "
                                                               "it with: " + INSTALL["cuda-python"])):
        lazy_import("sai_no_such.runtime", purpose="manage streams", dist="cuda-python").load()


def test_backend_helpers_use_it(monkeypatch):
    from sai.runtime import device, ort_backend, torch_backend, trt_backend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # None in sys.modules: ImportError on import
    with pytest.raises(MissingDependencyError, match=r"^onnxruntime is required to run the onnxruntime backend; "
                                                     r"install it with: pip install 'sai-deploy\[cpu\]'"):
        ort_backend._import_ort()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"^tensorrt is required to run the tensorrt backend"):
        trt_backend.import_tensorrt()
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"^cuda-python is required to manage GPU memory"):
        device.import_cudart()
    assert torch_backend._import_torch() is sys.modules["torch"]
