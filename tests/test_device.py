"""GPU data paths: device inputs through ``__cuda_array_interface__`` and ``__dlpack__``,
producer streams, device outputs, onnxruntime IOBinding, and the packaging of the GPU extra.

The CPU tests drive the parsing with fake producers (host memory behind a CUDA-typed DLPack capsule or
a CUDA array interface) and the binding code with host pointers; references are the producers' own
pointers, shapes and strides, and onnxruntime's plain ``run``. The ``gpu`` tests run the real thing.
"""

from __future__ import annotations

import ctypes
import gc
import types
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import tiny_outdir

import sai.runtime as rt
from sai.errors import SaiError
from sai.runtime import device as dev
from sai.runtime.device import DeviceArray

ROOT = Path(__file__).resolve().parents[1]


# ---- __cuda_array_interface__ --------------------------------------------------------------------


def _cai(**kw):
    base = {"shape": (2, 3, 4), "typestr": "<f4", "data": (4096, False), "version": 3}
    base.update(kw)
    return types.SimpleNamespace(__cuda_array_interface__=base)


def test_cuda_array_interface_fields():
    d = dev.as_device_array(_cai(stream=77))
    assert (d.ptr, d.shape, d.dtype, d.stream, d.is_c_contiguous) == (4096, (2, 3, 4), np.float32, 77, True)
    assert dev.as_device_array(_cai(version=2)).stream is None  # before v3: ready, no stream
    assert dev.as_device_array(_cai(stream=0)).stream == dev.LEGACY_STREAM  # 0 is ambiguous: legacy default
    assert dev.as_device_array(_cai(strides=(48, 16, 4))).is_c_contiguous  # explicit C strides
    assert dev.as_device_array(_cai(shape=(2, 1, 4), strides=(16, 999 * 4, 4))).is_c_contiguous  # size-1 dim
    t = dev.as_device_array(_cai(strides=(4, 8, 24)))
    assert t.strides == (1, 2, 6) and not t.is_c_contiguous
    assert dev.as_device_array(_cai(typestr="|u1", data=(8, True))).readonly
    with pytest.raises(rt.InputError, match="masked"):
        dev.as_device_array(_cai(mask=object()))
    with pytest.raises(rt.InputError, match="strides"):
        dev.as_device_array(_cai(strides=(48, 16, 3)))
    with pytest.raises(rt.InputError, match="malformed"):
        dev.as_device_array(types.SimpleNamespace(__cuda_array_interface__={"shape": (2,)}))
    # a DeviceArray is itself a producer (torch.as_tensor / cupy.asarray take it)
    assert dev.as_device_array(t).__cuda_array_interface__["strides"] == (4, 8, 24)
    for host in (np.zeros(3), [1, 2], torch.zeros(3)):
        assert dev.as_device_array(host) is None


# ---- DLPack ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.uint8, np.int8, np.int32, np.int64,
                                   np.bool_])
def test_dlpack_capsule_parsing_numpy(dtype):
    base = (np.arange(60) % 2).astype(dtype).reshape(3, 4, 5)
    view = base[:, ::2, 1:]
    ptr, shape, dt, strides, dev_type, dev_id, owner = dev.parse_dlpack(view.__dlpack__())
    assert ptr == view.ctypes.data and shape == view.shape and dt == np.dtype(dtype)
    assert strides == tuple(s // view.itemsize for s in view.strides) and (dev_type, dev_id) == (dev.KDL_CPU, 0)
    owner.release()


def test_dlpack_capsule_parsing_torch_and_lifetime():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous
    ptr, shape, dt, strides, *_ , owner = dev.parse_dlpack(t.__dlpack__())
    assert (ptr, shape, dt, strides) == (t.data_ptr(), (4, 3), np.float32, t.stride())
    a = np.arange(5.0)
    ref = weakref.ref(a)
    capsule = a.__dlpack__()
    *_, owner = dev.parse_dlpack(capsule)
    del a, capsule
    gc.collect()
    assert ref() is not None, "memory released while the consumer holds it"
    owner.release()
    owner.release()  # idempotent
    gc.collect()
    assert ref() is None, "the producer's deleter was not called"
    with pytest.raises(rt.InputError, match="unused 'dltensor'"):
        c = np.zeros(2).__dlpack__()
        dev.parse_dlpack(c)
        dev.parse_dlpack(c)  # consumed once already


class FakeCudaDLPack:
    """A CUDA-typed DLPack producer over host memory: records the stream it is asked to order its work before."""

    def __init__(self, arr: np.ndarray, device_id: int = 0):
        self.arr, self.device_id, self.streams, self.deleted = arr, device_id, [], 0
        self._keep = []

    def __dlpack_device__(self):
        return (dev.KDL_CUDA, self.device_id)

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        a = self.arr
        shape = (ctypes.c_int64 * a.ndim)(*a.shape)
        strides = (ctypes.c_int64 * a.ndim)(*(s // a.itemsize for s in a.strides))
        m = dev._DLManagedTensor()
        m.dl_tensor.data = a.ctypes.data
        m.dl_tensor.device = dev._DLDevice(dev.KDL_CUDA, self.device_id)
        m.dl_tensor.ndim = a.ndim
        m.dl_tensor.dtype = dev._DLDataType({"f": 2, "u": 1, "i": 0}[a.dtype.kind], a.itemsize * 8, 1)
        m.dl_tensor.shape, m.dl_tensor.strides = shape, strides

        def deleter(_ptr):
            self.deleted += 1

        cb = dev._DELETER(deleter)
        m.deleter = cb
        self._keep.append((shape, strides, m, cb))
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(m), b"dltensor", None)


def test_cuda_dlpack_producer_gets_the_consumer_stream():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    p = FakeCudaDLPack(x, device_id=1)
    d = dev.as_device_array(p, stream=1234)
    assert p.streams == [1234] and d.stream == 1234 and d.device_id == 1
    assert (d.ptr, d.shape, d.dtype, d.is_c_contiguous) == (x.ctypes.data, x.shape, np.float32, True)
    assert p.deleted == 0
    del d
    gc.collect()
    assert p.deleted == 1
    assert dev.as_device_array(FakeCudaDLPack(x[:, ::2])).strides == (12, 8, 1)
    assert FakeCudaDLPack(x).__dlpack_device__()[0] in dev.CUDA_DEVICE_TYPES


def test_protocol_choice_prefers_one_that_synchronises():
    """torch's __cuda_array_interface__ is v2 (no stream): its DLPack, called with our stream, is used instead;
    a v3 interface (CuPy, Numba) is used as it is; a v2 interface alone is taken as ready."""
    x = np.arange(6, dtype=np.float32)

    class TorchLike(FakeCudaDLPack):
        @property
        def __cuda_array_interface__(self):
            return {"shape": (6,), "typestr": "<f4", "data": (x.ctypes.data, False), "version": 2}

    p = TorchLike(x)
    d = dev.as_device_array(p, stream=42)
    assert p.streams == [42] and d.stream == 42

    class CupyLike(TorchLike):
        @property
        def __cuda_array_interface__(self):
            return {"shape": (6,), "typestr": "<f4", "data": (x.ctypes.data, False), "version": 3, "stream": 9}

    q = CupyLike(x)
    assert dev.as_device_array(q, stream=42).stream == 9 and q.streams == []
    assert dev.as_device_array(_cai(version=2)).stream is None


def test_cpu_dlpack_producers_are_host_arrays_without_copy():
    class CpuOnly:  # only the DLPack protocol, no __array__
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, stream=None):
            return self.a.__dlpack__()

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert dev.as_device_array(CpuOnly(a)) is None
    h = dev.as_host_array(CpuOnly(a))
    assert h.ctypes.data == a.ctypes.data and h.shape == (2, 3)
    t = torch.arange(6, dtype=torch.float32)
    assert dev.as_host_array(t).ctypes.data == t.data_ptr()


# ---- streams ---------------------------------------------------------------------------------------


class FakeCudart:
    def __init__(self):
        self.log = []

    def cudaEventCreateWithFlags(self, flags):
        self.log.append(("create", flags))
        return (0, "ev")

    def cudaEventRecord(self, ev, stream):
        self.log.append(("record", stream))
        return (0,)

    def cudaStreamWaitEvent(self, stream, ev, flags):
        self.log.append(("wait", stream))
        return (0,)

    def cudaEventDestroy(self, ev):
        self.log.append(("destroy",))
        return (0,)

    def cudaStreamCreate(self):
        return (0, 55)

    def cudaStreamDestroy(self, s):
        return (0,)


def test_stream_wait_orders_consumer_after_producer():
    cu = dev.Cuda(FakeCudart())
    dev.stream_wait(cu, 55, None)
    dev.stream_wait(cu, 55, 55)
    assert cu.rt.log == []
    dev.stream_wait(cu, 55, 77)
    assert [e[0] for e in cu.rt.log] == ["create", "record", "wait", "destroy"]
    assert cu.rt.log[1] == ("record", 77) and cu.rt.log[2] == ("wait", 55)
    bad = types.SimpleNamespace(cudaEventCreateWithFlags=lambda f: (3, None))
    with pytest.raises(SaiError, match="cudaEventCreateWithFlags failed"):
        dev.stream_wait(dev.Cuda(bad), 1, 2)


# ---- engines ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ort_engine(tmp_path_factory):
    out, info = tiny_outdir(tmp_path_factory)
    assert info["rc"] == 0, info
    with rt.load(out, backend="onnxruntime", threads=1) as e:
        yield e


def _x(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_cpu_engines_refuse_cuda_inputs_and_device_outputs(ort_engine):
    x = _x()
    fake = types.SimpleNamespace(__cuda_array_interface__={"shape": x.shape, "typestr": "<f4",
                                                           "data": (x.ctypes.data, False), "version": 3})
    with pytest.raises(rt.InputError, match="is a CUDA tensor but the onnxruntime engine runs on cpu"):
        ort_engine.infer({"input": fake})
    with pytest.raises(SaiError, match="has no device outputs"):
        ort_engine.infer(x, device_outputs=True)


def test_iobinding_matches_plain_run(ort_engine):
    """The IOBinding path (used for every run on CUDA) on the CPU: pointer-bound and host-bound inputs,
    host and device-side outputs, against session.run."""
    x = _x(3, seed=1)
    ref = ort_engine.infer(x)["logits"]
    bound = ort_engine._run_bound({"input": DeviceArray(x.ctypes.data, x.shape, x.dtype, owner=x)}, False)
    np.testing.assert_array_equal(bound["logits"], ref)
    np.testing.assert_array_equal(ort_engine._run_bound({"input": x}, False)["logits"], ref)
    outs = ort_engine._run_bound({"input": x}, True)
    t = outs["logits"]
    assert isinstance(t, dev.DeviceTensor) and t.shape == ref.shape and t.dtype == np.float32
    assert t.__cuda_array_interface__["data"][0] == t.ptr and t.__cuda_array_interface__["version"] == 3
    np.testing.assert_array_equal(t.to_host(), ref)


def test_iobinding_waits_for_the_producer_stream(ort_engine, monkeypatch):
    x = _x(1, seed=2)
    ref = ort_engine.infer(x)["logits"]
    fake = FakeCudart()
    monkeypatch.setattr(ort_engine, "_cu", dev.Cuda(fake))
    monkeypatch.setattr(ort_engine, "_stream", 55)
    d = DeviceArray(x.ctypes.data, x.shape, x.dtype, stream=77, owner=x)
    np.testing.assert_array_equal(ort_engine._run_bound({"input": d}, False)["logits"], ref)
    assert ("record", 77) in fake.log and ("wait", 55) in fake.log
    monkeypatch.setattr(ort_engine, "_cu", None)
    with pytest.raises(SaiError, match="cuda-python"):
        ort_engine._run_bound({"input": d}, False)


def test_ort_providers_take_the_compute_stream():
    from sai.runtime.ort_backend import providers_for

    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cuda", avail, stream=1234)[0] == ("CUDAExecutionProvider", {"user_compute_stream": "1234"})
    p = providers_for("tensorrt", avail, "/x.so", stream=99)
    assert p[0][1]["user_compute_stream"] == "99" and p[1] == ("CUDAExecutionProvider", {"user_compute_stream": "99"})
    assert providers_for("cuda", avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


# ---- packaging: the gpu extra --------------------------------------------------------------------


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_gpu_extra_does_not_pull_the_cpu_wheel():
    """onnxruntime and onnxruntime-gpu both install the ``onnxruntime`` module: the base requirements name
    neither, ``cpu`` names the CPU wheel, ``gpu`` the GPU wheel (+ cuda-python), so ``sai-deploy[gpu]``
    resolves without the CPU wheel and ``pip check`` has no unmet ``onnxruntime`` requirement."""
    from packaging.requirements import Requirement

    proj = _project()
    names = lambda reqs: {Requirement(r).name.lower() for r in reqs}  # noqa: E731
    extras = proj["optional-dependencies"]
    assert not names(proj["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    assert names(extras["cpu"]) == {"onnxruntime"}
    assert "onnxruntime-gpu" in names(extras["gpu"]) and "onnxruntime" not in names(extras["gpu"])
    assert "cuda-python" in names(extras["gpu"]) and names(extras["pycuda"]) == {"pycuda"}
    # the dev tools include the CPU runtime, so `make test` still gets onnxruntime
    assert any(Requirement(r).name == "sai-deploy" and "cpu" in Requirement(r).extras for r in extras["dev"])
    for extra in extras.values():  # no other extra brings the CPU wheel back beside the GPU one
        for r in extra:
            req = Requirement(r)
            assert not (req.name == "sai-deploy" and "cpu" in req.extras and "gpu" in req.extras)


# ---- on a GPU ---------------------------------------------------------------------------------------


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")


@pytest.mark.gpu
def test_torch_engine_cuda_inputs_zero_copy_and_device_outputs(tmp_path_factory):
    _cuda()
    out, _ = tiny_outdir(tmp_path_factory)
    x = _x(2, seed=3)
    with rt.load(out, backend="torch") as cpu_e, rt.load(out, backend="torch", device="cuda") as e:
        ref = cpu_e.infer(x)["logits"]
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):  # produced on a side stream: the engine must wait for it
            xt = torch.from_numpy(x).cuda(non_blocking=True) * 1.0
        np.testing.assert_allclose(e.infer({"input": xt})["logits"], ref, rtol=1e-3, atol=1e-3)
        y = e.infer(xt, device_outputs=True)["logits"]
        assert isinstance(y, torch.Tensor) and y.is_cuda
        np.testing.assert_allclose(y.cpu().numpy(), ref, rtol=1e-3, atol=1e-3)
        cupy = pytest.importorskip("cupy")
        xc = cupy.asarray(x)
        np.testing.assert_allclose(e.infer(xc)["logits"], ref, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_onnxruntime_cuda_iobinding(tmp_path_factory):
    _cuda()
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (pip install 'sai-deploy[gpu]')")
    out, _ = tiny_outdir(tmp_path_factory)
    x = _x(2, seed=4)
    with rt.load(out, backend="onnxruntime", device="cpu") as cpu_e, \
            rt.load(out, backend="onnxruntime", device="cuda") as e:
        ref = cpu_e.infer(x)["logits"]
        xt = torch.from_numpy(x).cuda()
        np.testing.assert_allclose(e.infer(xt)["logits"], ref, rtol=1e-3, atol=1e-3)
        y = e.infer(xt, device_outputs=True)["logits"]
        np.testing.assert_allclose(torch.as_tensor(y, device="cuda").cpu().numpy(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_pycuda_and_numba_producers(tmp_path_factory):
    _cuda()
    out, _ = tiny_outdir(tmp_path_factory)
    x = _x(1, seed=5)
    with rt.load(out, backend="torch") as cpu_e, rt.load(out, backend="torch", device="cuda") as e:
        ref = cpu_e.infer(x)["logits"]
        numba_cuda = pytest.importorskip("numba.cuda")
        np.testing.assert_allclose(e.infer(numba_cuda.to_device(x))["logits"], ref, rtol=1e-3, atol=1e-3)
        pytest.importorskip("pycuda.autoprimaryctx")
        gpuarray = pytest.importorskip("pycuda.gpuarray")
        np.testing.assert_allclose(e.infer(gpuarray.to_gpu(x))["logits"], ref, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_uint8_images_on_the_gpu_are_normalised_there(tmp_path):
    _cuda()
    from sai.models import demo_data

    ck = Path(demo_data.__file__).parent / "zoo" / "sai_demo_r18" / "sparse_resnet18.pth"
    images, _ = demo_data.make_split(0, "test", 4)
    with rt.load(ck, device="cuda") as e:
        ref = e.infer(images.numpy())["logits"]  # host uint8: sai.runtime.preprocess
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            gpu = images.cuda(non_blocking=True).permute(0, 2, 3, 1).contiguous()  # NHWC on a side stream
        np.testing.assert_allclose(e.infer(gpu)["logits"], ref, rtol=1e-3, atol=1e-3)
