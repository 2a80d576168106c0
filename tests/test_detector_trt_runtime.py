"""sai.runtime.trt_backend.TensorRTDetectorRunner with fake ``tensorrt``/``cudart`` modules (no GPU here).

The fake engine has the detector graph's I/O (``input``, ``img_shape``, ``scale_factor`` -> ``dets``,
``labels``, ``num_dets``; labels and counts int32, as an engine may narrow them) and computes, from whatever its
bound input addresses hold, one box per image: the image's ``(0, 0, w - 1, h - 1) / scale_factor`` scored by
the mean of its pixels, label 7, the rest padded. The results are checked against numpy on batches of other
sizes, so staging, binding and the int64 -> int32 input cast must all be right for the numbers to come out.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest
from test_runtime_trt import FakeCudart

from sai.errors import SaiError
from sai.runtime.trt_backend import TensorRTDetectorRunner

K = 4
IO = {"input": ("f32", (-1, 3, -1, -1)), "img_shape": ("i32", (-1, 2)), "scale_factor": ("f32", (-1,)),
      "dets": ("f32", (-1, K, 5)), "labels": ("i32", (-1, K)), "num_dets": ("i32", (-1,))}
PROFILE = {"input": ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128)), "img_shape": ((1, 2), (2, 2), (4, 2)),
           "scale_factor": ((1,), (2,), (4,))}
NP = {"f32": np.float32, "i32": np.int32}


def _view(ptr, shape, dtype):
    n = int(np.prod(shape))
    return np.frombuffer((ctypes.c_byte * (n * np.dtype(dtype).itemsize)).from_address(ptr), dtype).reshape(shape)


class Context:
    def __init__(self, cudart):
        self.cudart, self.shapes, self.addr = cudart, {}, {}

    def set_optimization_profile_async(self, p, stream):
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        lo, _, hi = PROFILE[name]
        return all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True))

    def get_tensor_shape(self, name):
        n = self.shapes["input"][0]
        return {"dets": (n, K, 5), "labels": (n, K), "num_dets": (n,)}[name]

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream):
        s, a = self.shapes, self.addr

        def kernel():
            n = s["input"][0]
            x = _view(a["input"], s["input"], np.float32)
            hw = _view(a["img_shape"], (n, 2), np.int32)
            sf = _view(a["scale_factor"], (n,), np.float32)
            d, lab, num = _view(a["dets"], (n, K, 5), np.float32), _view(a["labels"], (n, K), np.int32), \
                _view(a["num_dets"], (n,), np.int32)
            d[:], lab[:], num[:] = 0, -1, 1
            for i in range(n):
                d[i, 0] = [0, 0, (hw[i, 1] - 1) / sf[i], (hw[i, 0] - 1) / sf[i], x[i].mean()]
                lab[i, 0] = 7

        if stream in self.cudart.capturing:
            self.cudart.capturing[stream].append(kernel)
        else:
            kernel()
        return True


def fake_trt(cudart, io=IO):
    names = list(io)

    class Engine:
        num_io_tensors, num_optimization_profiles = len(names), 1

        def get_tensor_name(self, i):
            return names[i]

        def get_tensor_mode(self, n):
            return "in" if n in PROFILE else "out"

        def get_tensor_dtype(self, n):
            return io[n][0]

        def get_tensor_shape(self, n):
            return io[n][1]

        def get_tensor_profile_shape(self, n, p):
            return PROFILE[n]

        def create_execution_context(self):
            return Context(cudart)

    class Runtime:
        def __init__(self, logger):
            pass

        def get_plugin_registry(self):
            return types.SimpleNamespace(load_library=lambda p: None)

        def deserialize_cuda_engine(self, blob):
            return Engine()

    return types.SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 1, "__init__": lambda self, lvl: None}), Runtime=Runtime,
        TensorIOMode=types.SimpleNamespace(INPUT="in"), nptype=lambda d: NP[d])


@pytest.fixture
def runner(tmp_path):
    cudart = FakeCudart()
    plan = tmp_path / "det.plan"
    plan.write_bytes(b"PLAN")
    r = TensorRTDetectorRunner(str(plan), plugin_library="/fake/lib.so", streams=1, trt=fake_trt(cudart),
                               cudart=cudart)
    yield r
    r.close()


@pytest.mark.parametrize("n,h,w", [(2, 64, 96), (1, 32, 32), (3, 128, 64)])
def test_detector_runner_results(runner, n, h, w):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
    hw = np.stack([rng.integers(20, h + 1, n), rng.integers(20, w + 1, n)], 1).astype(np.int64)
    sf = rng.uniform(0.5, 2.0, n).astype(np.float32)
    noise = np.zeros((n, 1, 4, 4), np.float32)  # a feed the engine does not take is left out
    d, lab, num = runner.run({"input": x, "img_shape": hw, "scale_factor": sf, "noise0": noise})
    assert d.dtype == np.float32 and lab.dtype == np.int64 and num.dtype == np.int64
    assert d.shape == (n, K, 5) and lab.shape == (n, K) and num.tolist() == [1] * n
    want = np.stack([(hw[:, 1] - 1) / sf, (hw[:, 0] - 1) / sf, x.mean((1, 2, 3))], 1)
    np.testing.assert_allclose(d[:, 0, 2:], want, rtol=1e-5)
    assert (lab[:, 0] == 7).all() and (lab[:, 1:] == -1).all() and not d[:, 1:].any()


def test_engine_that_is_not_a_detector_is_refused(tmp_path):
    cudart = FakeCudart()
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"PLAN")
    io = {k: v for k, v in IO.items() if k != "num_dets"}
    with pytest.raises(SaiError, match=r"not a detector's \(no num_dets.*sai convert --preset"):
        TensorRTDetectorRunner(str(plan), plugin_library="/fake/lib.so", streams=1, trt=fake_trt(cudart, io),
                               cudart=cudart)
