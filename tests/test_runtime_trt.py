"""The TensorRT backend's bookkeeping with fake ``tensorrt``/``cudart`` modules (no GPU here).

The fakes keep "device" memory in real host buffers addressed by pointer, and the fake engine
computes ``y = 2 * x.sum((2, 3))`` from whatever its bound input address holds when it runs, so the
results are checked against numpy: staging, binding, profile switches and CUDA-graph replay (which
reads the addresses captured earlier) must all be right for the numbers to come out. Real TensorRT
runs are in the ``gpu``-marked tests at the end.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

from sai.errors import SaiError
from sai.runtime.engine import InputError
from sai.runtime.trt_backend import TensorRTEngine, as_device_array, select_profile


class FakeCudart:
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self):
        self.mem, self.capturing, self.calls = {}, {}, {}
        self._stream = 100

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def _alloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.mem[ctypes.addressof(buf)] = buf
        return (0, ctypes.addressof(buf))

    def cudaMalloc(self, n):
        self._count("cudaMalloc")
        return self._alloc(n)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, p):
        del self.mem[p]
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self._count(f"memcpy{kind}")
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreate(self):
        self._stream += 1
        return (0, self._stream)

    def cudaStreamDestroy(self, s):
        return (0,)

    def cudaStreamSynchronize(self, s):
        return (0,)

    def cudaStreamBeginCapture(self, s, mode):
        self.capturing[s] = []
        return (0,)

    def cudaStreamEndCapture(self, s):
        return (0, self.capturing.pop(s))

    def cudaGraphInstantiate(self, graph, flags):
        return (0, list(graph))

    def cudaGraphLaunch(self, exec_, s):
        self._count("cudaGraphLaunch")
        for fn in exec_:
            fn()
        return (0,)

    def cudaGraphDestroy(self, g):
        return (0,)

    def cudaGraphExecDestroy(self, g):
        return (0,)

    def cudaEventCreateWithFlags(self, flags):
        self._count("cudaEventCreate")
        return (0, object())

    def cudaEventRecord(self, event, stream):
        self.calls.setdefault("recorded_on", []).append(stream)
        return (0,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        self.calls.setdefault("waits", []).append(stream)
        return (0,)

    def cudaEventDestroy(self, event):
        return (0,)

    def cudaMemcpy(self, dst, src, n, kind):
        self._count(f"memcpy{kind}")
        ctypes.memmove(dst, src, n)
        return (0,)


PROFILES = [((1, 3, 8, 8), (2, 3, 16, 16), (4, 3, 32, 32)), ((1, 3, 8, 8), (8, 3, 32, 32), (16, 3, 64, 64))]


class FakeContext:
    def __init__(self, cudart):
        self.cudart, self.shapes, self.addr, self.profile, self.executes = cudart, {}, {}, None, 0

    def set_optimization_profile_async(self, p, stream):
        self.profile = p
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = PROFILES[self.profile]
        self.shapes[name] = tuple(shape)
        return all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True))

    def get_tensor_shape(self, name):
        return (self.shapes["input"][0], 3)

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream):
        shape, xa, ya = self.shapes["input"], self.addr["input"], self.addr["y"]

        def kernel():
            x = np.frombuffer((ctypes.c_float * int(np.prod(shape))).from_address(xa), np.float32).reshape(shape)
            y = np.frombuffer((ctypes.c_float * (shape[0] * 3)).from_address(ya), np.float32).reshape(shape[0], 3)
            y[:] = 2 * x.sum((2, 3))

        if stream in self.cudart.capturing:
            self.cudart.capturing[stream].append(kernel)
        else:
            self.executes += 1
            kernel()
        return True


def fake_trt(cudart):
    class Engine:
        num_io_tensors, num_optimization_profiles = 2, 2

        def __init__(self):
            self.contexts = []

        def get_tensor_name(self, i):
            return ["input", "y"][i]

        def get_tensor_mode(self, n):
            return "in" if n == "input" else "out"

        def get_tensor_dtype(self, n):
            return "f32"

        def get_tensor_shape(self, n):
            return (-1, 3, -1, -1) if n == "input" else (-1, 3)

        def get_tensor_profile_shape(self, n, p):
            return PROFILES[p]

        def create_execution_context(self):
            self.contexts.append(FakeContext(cudart))
            return self.contexts[-1]

    class Registry:
        loaded = []

        def load_library(self, path):
            self.loaded.append(path)

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def get_plugin_registry(self):
            return Registry()

        def deserialize_cuda_engine(self, blob):
            return Engine() if blob == b"PLAN" else None

    return types.SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 1, "__init__": lambda self, lvl: None}),
        Runtime=Runtime, TensorIOMode=types.SimpleNamespace(INPUT="in"), nptype=lambda d: np.float32,
        Registry=Registry,
    )


@pytest.fixture
def fake(tmp_path):
    cudart = FakeCudart()
    trt = fake_trt(cudart)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    engine = TensorRTEngine(str(plan), plugin_library="/fake/libsai_trt_plugins.so", streams=2, trt=trt,
                            cudart=cudart)
    yield engine, cudart, trt
    engine.close()


def _x(n, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def test_select_profile_prefers_tightest_and_names_ranges():
    profs = [{"input": p} for p in PROFILES]
    assert select_profile(profs, {"input": (2, 3, 16, 16)}) == 0
    assert select_profile(profs, {"input": (8, 3, 16, 16)}) == 1
    assert select_profile(profs, {"input": (2, 3, 48, 48)}) == 1
    with pytest.raises(InputError, match=r"profile 1: input \[1, 3, 8, 8\]..\[16, 3, 64, 64\]"):
        select_profile(profs, {"input": (32, 3, 16, 16)})
    with pytest.raises(InputError):
        select_profile(profs, {"input": (1, 3, 4, 4)})


def test_specs_batch_range_and_plugin_loaded(fake):
    engine, _, trt = fake
    assert [s.name for s in engine.inputs] == ["input"] and engine.inputs[0].shape == ("batch", 3, "height", "width")
    assert engine.outputs[0].shape == ("batch", 3)
    assert (engine.min_batch, engine.max_batch) == (1, 16)
    assert trt.Registry.loaded[-1] == "/fake/libsai_trt_plugins.so" and engine.runtime.engine_host_code_allowed


def test_results_profiles_and_graph_replay(fake):
    engine, cudart, _ = fake
    seq = [(2, 16, 16), (3, 16, 16), (10, 32, 32), (2, 16, 16), (2, 16, 16), (10, 32, 32)]
    for i, (n, h, w) in enumerate(seq):
        x = _x(n, h, w, seed=i)
        y = engine.infer(x)["y"]
        np.testing.assert_allclose(y, 2 * x.sum((2, 3)), rtol=1e-5, err_msg=str((n, h, w)))
    # a new graph per (profile, shape); repeats replay it instead of enqueueing
    assert cudart.calls.get("cudaGraphLaunch", 0) >= 1
    executes = sum(c.executes for c in engine.trt_engine.contexts)
    assert executes + cudart.calls["cudaGraphLaunch"] == len(seq)
    with pytest.raises(InputError, match="fit no optimization profile"):
        engine.infer(_x(2, 80, 80))
    with pytest.raises(InputError, match=r"outside the engine's profile \[1, 16\]"):
        engine.infer(_x(17, 16, 16))


def test_buffers_grow_only(fake):
    engine, cudart, _ = fake
    slot = engine._all_slots[0]
    engine._slots = __import__("queue").Queue()
    engine._slots.put(slot)  # pin one slot to count its allocations
    engine.infer(_x(8, 32, 32))
    before = cudart.calls["cudaMalloc"]
    for n in (1, 4, 8, 2):
        engine.infer(_x(n, 32, 32))
    assert cudart.calls["cudaMalloc"] == before


def test_zero_copy_device_input(fake):
    engine, cudart, _ = fake
    x = _x(2, 16, 16, seed=5)
    _, ptr = cudart.cudaMalloc(x.nbytes)
    ctypes.memmove(ptr, x.ctypes.data, x.nbytes)
    dev = types.SimpleNamespace(__cuda_array_interface__={"shape": x.shape, "typestr": "<f4", "data": (ptr, False),
                                                          "version": 3, "strides": None})
    h2d = cudart.calls.get("memcpy1", 0)
    y = engine.infer({"input": dev})["y"]
    np.testing.assert_allclose(y, 2 * x.sum((2, 3)), rtol=1e-5)
    assert cudart.calls.get("memcpy1", 0) == h2d, "device input was copied"
    strided = types.SimpleNamespace(__cuda_array_interface__={"shape": (2, 3, 16, 16), "typestr": "<f4",
                                                              "data": (ptr, False), "strides": (4, 8, 24, 384)})
    assert not as_device_array(strided).is_c_contiguous
    with pytest.raises(InputError, match="contiguous"):
        engine.infer({"input": strided})
    wrong = types.SimpleNamespace(__cuda_array_interface__={"shape": (2, 3, 16, 16), "typestr": "<f2",
                                                            "data": (ptr, False)})
    with pytest.raises(InputError, match="dtype"):
        engine.infer({"input": wrong})


def test_async_uses_both_streams(fake):
    engine, _, _ = fake
    xs = [_x(1 + i % 4, 16, 16, seed=i) for i in range(12)]
    futs = [engine.infer_async(x) for x in xs]
    for x, f in zip(xs, futs, strict=True):
        np.testing.assert_allclose(f.result(timeout=30)["y"], 2 * x.sum((2, 3)), rtol=1e-5)


def test_bad_plan_names_the_cause(tmp_path):
    cudart = FakeCudart()
    plan = tmp_path / "bad.plan"
    plan.write_bytes(b"garbage")
    with pytest.raises(SaiError, match="could not deserialize"):
        TensorRTEngine(str(plan), plugin_library="/x.so", trt=fake_trt(cudart), cudart=cudart)


def test_build_plan_per_tensorrt_version():
    from sai.runtime.build import build_plan, profile_shapes

    assert build_plan(10, "fp16", False)["builder_flags"] == ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
    assert build_plan(10, "fp16", False)["mask_fp32"] and not build_plan(11, "fp16", False)["mask_fp32"]
    assert build_plan(11, "fp16", False)["builder_flags"] == [] and build_plan(11, "fp16", False)["strongly_typed"]
    vc = build_plan(10, "fp32", True)
    assert vc["builder_flags"] == ["VERSION_COMPATIBLE"] and vc["serialize_plugins"]
    shapes = profile_shapes(((1, 3, 32, 32), (2, 3, 64, 64), (8, 3, 100, 100)), [("noise.a", 4), ("noise.b", 32)])
    assert shapes["noise.a"] == ((1, 2, 8, 8), (2, 2, 16, 16), (8, 2, 25, 25))
    assert shapes["noise.b"][2] == (8, 2, 4, 4)


# ---- real TensorRT (make gpu-test) -----------------------------------------------------------


@pytest.mark.gpu
def test_gpu_convert_builds_plan_and_matches_onnxruntime(tmp_path):
    from runtime_helpers import ARCH, tiny_checkpoint

    import sai.runtime as rt
    from sai.runtime.convert import convert

    ck = tiny_checkpoint(tmp_path)
    res = convert(ck, ARCH, tmp_path / "out", opt_shape="2,3,64,64", max_shape="8,3,128,128")
    assert res.engine_built, res.engine_skip_reason
    x = _x(3, 64, 96)
    with rt.load(tmp_path / "out", backend="tensorrt") as trt_e, rt.load(tmp_path / "out", backend="onnxruntime") as o:
        np.testing.assert_allclose(trt_e.infer(x)["logits"], o.infer(x)["logits"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(trt_e.infer(x)["logits"], o.infer(x)["logits"], rtol=1e-3, atol=1e-3)  # graph


@pytest.mark.gpu
def test_gpu_zero_copy_torch_cuda_input(tmp_path):
    import torch
    from runtime_helpers import ARCH, tiny_checkpoint

    import sai.runtime as rt
    from sai.runtime.convert import convert

    convert(tiny_checkpoint(tmp_path), ARCH, tmp_path / "out", opt_shape="1,3,64,64")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with rt.load(tmp_path / "out", backend="tensorrt") as e:
        np.testing.assert_allclose(e.infer(x)["logits"], e.infer(x.cpu().numpy())["logits"], rtol=1e-5, atol=1e-5)


def test_build_engine_drives_tensorrt_builder(tmp_path):
    """build_engine with a recording fake TensorRT: plugin library loaded into the builder's registry,
    flags per version, one profile over the image and noise inputs, timing cache written back."""
    from sai.runtime.build import build_engine

    calls = []

    class Obj:
        def __init__(self, name):
            self._name = name

        def __getattr__(self, attr):
            if attr in ("num_layers", "num_outputs"):  # an empty network for the mask-subgraph pass
                return 0

            def f(*a, **k):
                calls.append((self._name, attr, a))
                return {"parse_from_file": True, "build_serialized_network": b"ENGINE",
                        "serialize": b"CACHE"}.get(attr, Obj(attr))
            return f

        def __setattr__(self, k, v):
            if k.startswith("_"):
                return object.__setattr__(self, k, v)
            calls.append((self._name, "set:" + k, v))

    trt = types.SimpleNamespace(
        __version__="10.9.0", Logger=type("L", (), {"WARNING": 1, "__init__": lambda s, lvl: None}),
        Builder=lambda logger: Obj("builder"), OnnxParser=lambda net, logger: Obj("parser"),
        BuilderFlag=types.SimpleNamespace(FP16="FP16", VERSION_COMPATIBLE="VC", PREFER_PRECISION_CONSTRAINTS="PPC"),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WS"), LayerType=types.SimpleNamespace(PLUGIN_V3="PV3"),
        float32="f32", float16="f16")
    info = build_engine(tmp_path / "m.trt.onnx", tmp_path / "model.plan", profile=((1, 3, 32, 32), (2, 3, 64, 64),
                        (8, 3, 128, 128)), noise_inputs=[("noise.a", 4)], precision="fp16", workspace=1 << 30,
                        timing_cache=tmp_path / "tc.bin", version_compatible=True, plugin_library="/p/lib.so", trt=trt)
    assert (tmp_path / "model.plan").read_bytes() == b"ENGINE" and (tmp_path / "tc.bin").read_bytes() == b"CACHE"
    assert ("get_plugin_registry", "load_library", ("/p/lib.so",)) in calls
    assert [args for _, a, args in calls if a == "set_flag"] == [("FP16",), ("PPC",), ("VC",)]
    assert ("create_builder_config", "set:plugins_to_serialize", ["/p/lib.so"]) in calls
    assert ("create_builder_config", "set_memory_pool_limit", ("WS", 1 << 30)) in calls
    shapes = {args[0]: args[1:] for _, a, args in calls if a == "set_shape"}
    assert shapes == {"input": ((1, 3, 32, 32), (2, 3, 64, 64), (8, 3, 128, 128)),
                      "noise.a": ((1, 2, 8, 8), (2, 2, 16, 16), (8, 2, 32, 32))}
    assert info["builder_flags"] == ["FP16", "PREFER_PRECISION_CONSTRAINTS", "VERSION_COMPATIBLE"]
    assert info["serialize_plugins"] and info["mask_fp32"] and info["mask_layers_fp32"] == 0


def test_device_input_waits_for_its_producer_stream(fake):
    """A __cuda_array_interface__ v3 stream: the slot's stream waits for it with an event (no host sync)."""
    engine, cudart, _ = fake
    x = _x(2, 16, 16, seed=6)
    _, ptr = cudart.cudaMalloc(x.nbytes)
    ctypes.memmove(ptr, x.ctypes.data, x.nbytes)
    dev = types.SimpleNamespace(__cuda_array_interface__={"shape": x.shape, "typestr": "<f4", "data": (ptr, False),
                                                          "version": 3, "strides": None, "stream": 7777})
    y = engine.infer({"input": dev})["y"]
    np.testing.assert_allclose(y, 2 * x.sum((2, 3)), rtol=1e-5)
    assert cudart.calls["recorded_on"] == [7777]
    assert cudart.calls["waits"][0] in [int(s.stream) for s in engine._all_slots]


def test_device_outputs_stay_on_the_device(fake):
    engine, cudart, _ = fake
    x = _x(3, 16, 16, seed=7)
    d2h = cudart.calls.get("memcpy2", 0)
    out = engine.infer(x, device_outputs=True)["y"]
    assert cudart.calls.get("memcpy2", 0) == d2h, "device output was copied to the host"
    cai = out.__cuda_array_interface__
    assert cai["shape"] == (3, 3) and cai["typestr"] == "<f4" and cai["version"] == 3
    assert cai["stream"] in [int(s.stream) for s in engine._all_slots]
    np.testing.assert_allclose(out.to_host(), 2 * x.sum((2, 3)), rtol=1e-5)
    ptr = out.ptr
    assert ptr in cudart.mem
    del out
    assert ptr not in cudart.mem, "device output not freed with its DeviceTensor"
