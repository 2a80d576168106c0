"""TensorRT backend: a serialized engine (``model.plan``) run with the sai plugin library loaded.

Thin by design: the TensorRT and CUDA calls are the minimum; everything around them (profile choice
by shape, buffer bookkeeping, CUDA-graph caching, device-pointer inputs) is plain Python that the CPU
test suite drives with fake ``tensorrt``/``cudart`` modules. Both modules are imported lazily (and
can be injected), so importing this file never needs a GPU.

- one execution context + CUDA stream per slot; concurrent ``infer`` calls take different slots;
- the optimization profile is chosen from the input shapes (``select_profile``);
- host inputs are staged through pinned buffers; inputs exposing ``__cuda_array_interface__``
  (cupy, numba, pycuda, torch) or a CUDA ``__dlpack__`` are bound zero-copy (``sai.runtime.device``),
  after the slot's stream waits (an event) for the stream the producer left them on;
- ``infer(..., device_outputs=True)`` writes into fresh device buffers and returns them as
  ``DeviceTensor``s ready on the slot's stream (no copy to the host, no synchronisation);
- a CUDA graph of ``execute_async_v3`` is captured per (profile, shapes, addresses) and replayed.
"""

from __future__ import annotations

import ctypes
import queue
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from sai.errors import SaiError
from sai.lazy import lazy_import
from sai.runtime.device import LEGACY_STREAM, Cuda, DeviceArray, DeviceTensor, as_device_array, stream_wait
from sai.runtime.device import import_cudart as import_cudart
from sai.runtime.engine import Engine, InputError, TensorSpec

__all__ = ["DeviceArray", "TensorRTDetectorRunner", "TensorRTEngine", "as_device_array", "import_cudart",
           "import_tensorrt", "select_profile"]

Shape = tuple[int, ...]
GRAPH_CACHE_SIZE = 16


TENSORRT = lazy_import("tensorrt", purpose="run the tensorrt backend")  # the wheel imports only with libnvinfer


def import_tensorrt():
    return TENSORRT.load()


# ----------------------------------------------------------------------------------------------
# pure logic (tested on the CPU)
# ----------------------------------------------------------------------------------------------


def select_profile(profiles: Sequence[Mapping[str, tuple[Shape, Shape, Shape]]], shapes: Mapping[str, Shape]) -> int:
    """Index of the optimization profile whose [min, max] ranges hold every input shape; among several,
    the tightest (smallest total max volume). InputError listing the ranges when none fits."""
    best, best_cost = None, None
    for idx, prof in enumerate(profiles):
        fits = True
        for name, shape in shapes.items():
            if name not in prof:
                continue
            lo, _, hi = prof[name]
            if len(lo) != len(shape) or any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=False)):
                fits = False
                break
        if fits:
            cost = sum(int(np.prod(hi, dtype=np.int64)) for _, _, hi in prof.values())
            if best_cost is None or cost < best_cost:
                best, best_cost = idx, cost
    if best is None:
        ranges = "; ".join(
            f"profile {i}: " + ", ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, _, hi) in p.items())
            for i, p in enumerate(profiles))
        got = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
        raise InputError(f"input shapes {got} fit no optimization profile of the engine ({ranges}); rebuild with "
                         "sai convert --min-shape/--max-shape covering them")
    return best


def dims_from_profiles(profiles: Sequence[Mapping[str, tuple[Shape, Shape, Shape]]], name: str, shape: Sequence[int]):
    """An engine tensor shape (-1 for dynamic) -> spec dims: fixed ints, or names for dynamic dims."""
    labels = ("batch", None, "height", "width")
    out = []
    for i, d in enumerate(shape):
        if d >= 0:
            out.append(int(d))
        else:
            out.append(labels[i] if i < 4 and labels[i] else f"{name}_d{i}")
    return tuple(out)


class Buffer:
    """A growable allocation (device or pinned host) that only reallocates when it must grow."""

    def __init__(self, alloc, free):
        self._alloc, self._free = alloc, free
        self.ptr, self.capacity = 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.capacity:
            self.release()
            self.ptr = self._alloc(max(int(nbytes), 1))
            self.capacity = int(nbytes)
        return self.ptr

    def release(self) -> None:
        if self.ptr:
            self._free(self.ptr)
        self.ptr, self.capacity = 0, 0


def host_view(ptr: int, shape: Shape, dtype: np.dtype) -> np.ndarray:
    """A numpy view of pinned host memory at ``ptr``."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
    return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)


# ----------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------


class _Slot:
    """One execution context + stream + its buffers and CUDA graphs."""

    def __init__(self, engine: TensorRTEngine):
        self.e = engine
        cu = engine._cu
        self.context = engine.trt_engine.create_execution_context()
        if self.context is None:
            raise SaiError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cu("cudaStreamCreate")
        self.profile: Optional[int] = None
        self.device = {n: Buffer(lambda b: int(cu("cudaMalloc", b)), lambda p: cu("cudaFree", p)) for n in engine._io}
        self.host = {n: Buffer(lambda b: int(cu("cudaMallocHost", b)), lambda p: cu("cudaFreeHost", p))
                     for n in engine._io}
        self.graphs: OrderedDict[tuple, Any] = OrderedDict()
        self.graphs_ok = engine.cuda_graphs

    def _h2d(self, dst: int, src: int, nbytes: int) -> None:
        rt = self.e._cu.rt
        self.e._cu("cudaMemcpyAsync", dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)

    def _d2h(self, dst: int, src: int, nbytes: int) -> None:
        rt = self.e._cu.rt
        self.e._cu("cudaMemcpyAsync", dst, src, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)

    def run(self, feeds: Mapping[str, Any], device_outputs: bool = False) -> dict[str, Any]:
        e, ctx, cu = self.e, self.context, self.e._cu
        shapes = {n: tuple(v.shape) for n, v in feeds.items()}
        profile = select_profile(e.profiles, shapes)
        if profile != self.profile:
            if not ctx.set_optimization_profile_async(profile, int(self.stream)):
                raise SaiError(f"TensorRT refused optimization profile {profile}")
            self.profile = profile
            self._drop_graphs()
        addresses = {}
        for name, value in feeds.items():
            if not ctx.set_input_shape(name, shapes[name]):
                raise InputError(f"TensorRT rejected shape {list(shapes[name])} for input {name}")
            if isinstance(value, DeviceArray):
                stream_wait(cu, int(self.stream), value.stream)  # the producer's work first, host not blocked
                addresses[name] = value.ptr
                continue
            nbytes = value.nbytes
            staging = self.host[name].ensure(nbytes)
            np.copyto(host_view(staging, value.shape, value.dtype), value)
            addresses[name] = self.device[name].ensure(nbytes)
            self._h2d(addresses[name], staging, nbytes)
        out_shapes, fresh = {}, {}
        for name in e._outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise SaiError(f"TensorRT could not infer the shape of output {name} ({list(shape)})")
            out_shapes[name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * e._dtypes[name].itemsize
            if device_outputs:  # the caller owns these: a fresh buffer each, freed with its DeviceTensor
                fresh[name] = DeviceTensor(int(cu("cudaMalloc", max(nbytes, 1))), shape, e._dtypes[name],
                                           stream=int(self.stream), free=lambda p: cu("cudaFree", p),
                                           to_host=e._to_host)
                addresses[name] = fresh[name].ptr
                continue
            addresses[name] = self.device[name].ensure(nbytes)
            self.host[name].ensure(nbytes)
        for name, ptr in addresses.items():
            ctx.set_tensor_address(name, ptr)
        self._enqueue(profile, shapes, addresses, graphs=not device_outputs)
        if device_outputs:
            return fresh  # ready on the slot's stream (their __cuda_array_interface__ says so)
        results = {}
        for name, shape in out_shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * e._dtypes[name].itemsize
            self._d2h(self.host[name].ptr, addresses[name], nbytes)
        cu("cudaStreamSynchronize", self.stream)
        for name, shape in out_shapes.items():
            results[name] = host_view(self.host[name].ptr, shape, e._dtypes[name]).copy()
        return results

    def _enqueue(self, profile: int, shapes: Mapping[str, Shape], addresses: Mapping[str, int],
                 graphs: bool = True) -> None:
        ctx, cu = self.context, self.e._cu
        key = (profile, tuple(sorted(shapes.items())), tuple(sorted(addresses.items())))
        graphs = graphs and self.graphs_ok  # fresh output buffers every call would never replay a graph
        graph = self.graphs.get(key) if graphs else None
        if graph is not None:
            self.graphs.move_to_end(key)
            cu("cudaGraphLaunch", graph, self.stream)
            return
        if not ctx.execute_async_v3(int(self.stream)):
            raise SaiError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        if graphs:
            self._capture(key)

    def _capture(self, key: tuple) -> None:
        """Capture ``execute_async_v3`` into a CUDA graph for ``key`` (after one plain run: TensorRT
        needs it after a shape change). A plugin that cannot be captured disables graphs for the slot."""
        rt, cu = self.e._cu.rt, self.e._cu
        try:
            cu("cudaStreamBeginCapture", self.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            ok = self.context.execute_async_v3(int(self.stream))
            graph = cu("cudaStreamEndCapture", self.stream)
            if not ok:
                raise SaiError("enqueue failed during capture")
            exec_ = cu("cudaGraphInstantiate", graph, 0)
            cu("cudaGraphDestroy", graph)
        except SaiError:
            self.graphs_ok = False
            self._drop_graphs()
            return
        self.graphs[key] = exec_
        while len(self.graphs) > GRAPH_CACHE_SIZE:
            _, old = self.graphs.popitem(last=False)
            cu("cudaGraphExecDestroy", old)

    def _drop_graphs(self) -> None:
        for g in self.graphs.values():
            self.e._cu("cudaGraphExecDestroy", g)
        self.graphs.clear()

    def close(self) -> None:
        self._drop_graphs()
        for b in [*self.device.values(), *self.host.values()]:
            b.release()
        self.e._cu("cudaStreamDestroy", self.stream)
        self.context = None


class TensorRTEngine(Engine):
    """A deserialized TensorRT engine (``.plan``) with ``streams`` execution contexts."""

    backend = "tensorrt"

    def __init__(self, path: str, *, plugin_library: Optional[str] = None, streams: int = 2,
                 cuda_graphs: bool = True, seed: Optional[int] = None, metadata: Optional[dict] = None,
                 trt=None, cudart=None):
        super().__init__(seed=seed, async_workers=streams)
        trt = trt or import_tensorrt()
        self._cu = Cuda(cudart or import_cudart())
        self.trt, self.cuda_graphs, self.device = trt, bool(cuda_graphs), "cuda"
        self.path = str(path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if hasattr(self.runtime, "engine_host_code_allowed"):
            self.runtime.engine_host_code_allowed = True  # version-compatible engines with serialized plugins
        if plugin_library is None:
            from sai.runtime.plugins import find_plugin_library

            found = find_plugin_library()
            plugin_library = str(found) if found else None
        if plugin_library:
            self.runtime.get_plugin_registry().load_library(str(plugin_library))
        self.plugin_library = plugin_library
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as exc:
            raise SaiError(f"cannot read engine {path}: {exc}") from None
        self.trt_engine = self.runtime.deserialize_cuda_engine(blob)
        if self.trt_engine is None:
            hint = "" if plugin_library else " (the sai plugin library was not found: make plugins)"
            raise SaiError(f"TensorRT could not deserialize {path}: built by another TensorRT version or "
                           f"GPU, or plugins missing{hint}")
        self._describe_io()
        self.metadata = dict(metadata or {})
        names = {s.name for s in self.inputs}
        self.noise_inputs = [(str(n), int(s)) for n, s in self.metadata.get("noise_inputs", []) if n in names]
        self._slots: queue.LifoQueue[_Slot] = queue.LifoQueue()  # a sequential caller keeps one hot slot
        self._all_slots = [_Slot(self) for _ in range(max(1, int(streams)))]
        for s in self._all_slots:
            self._slots.put(s)

    def _describe_io(self) -> None:
        eng, trt = self.trt_engine, self.trt
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        self._io = names
        self._inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(eng.get_tensor_dtype(n))) for n in names}
        self.profiles = [
            {n: tuple(tuple(int(v) for v in s) for s in eng.get_tensor_profile_shape(n, p)) for n in self._inputs}
            for p in range(eng.num_optimization_profiles)
        ]
        self.inputs = [TensorSpec(n, self._dtypes[n], dims_from_profiles(self.profiles, n, eng.get_tensor_shape(n)))
                       for n in self._inputs]
        self.outputs = [TensorSpec(n, self._dtypes[n], dims_from_profiles(self.profiles, n, eng.get_tensor_shape(n)))
                        for n in self._outputs]
        primary = self._inputs[0]
        self.min_batch = min(p[primary][0][0] for p in self.profiles) if self.profiles else 1
        self.max_batch = max(p[primary][2][0] for p in self.profiles) if self.profiles else None

    def _device_stream(self) -> int:
        # the slot (and its stream) is chosen after the feeds are checked: __dlpack__ producers order their
        # work before the legacy default stream, and the slot's stream waits for that (stream_wait)
        return LEGACY_STREAM

    def _to_host(self, t: DeviceTensor) -> np.ndarray:
        cu = self._cu
        out = np.empty(t.shape, t.dtype)
        if t.stream is not None:
            cu("cudaStreamSynchronize", t.stream)
        cu("cudaMemcpy", out.ctypes.data, t.ptr, t.nbytes, cu.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        return out

    def _run_device(self, feeds):
        slot = self._slots.get()
        try:
            return slot.run(feeds, device_outputs=True)
        finally:
            self._slots.put(slot)

    def _run(self, feeds):
        slot = self._slots.get()
        try:
            return slot.run(feeds)
        finally:
            self._slots.put(slot)

    def _close(self) -> None:
        for s in self._all_slots:
            s.close()
        self._all_slots = []
        self.trt_engine = None


# ----------------------------------------------------------------------------------------------
# detectors
# ----------------------------------------------------------------------------------------------

DETECTOR_INPUTS = ("input", "img_shape", "scale_factor")
DETECTOR_OUTPUTS = ("dets", "labels", "num_dets")


class TensorRTDetectorRunner:
    """A detector's engine (built from ``export_detector(..., target="tensorrt")``) as a detector runner:
    ``run(feeds)`` -> ``(dets [N, K, 5] float32, labels [N, K] int64, num_dets [N] int64)``, the feeds being
    ``sai.runtime.detector_engine``'s padded batches (``input``, ``img_shape``, ``scale_factor``, noise)."""

    def __init__(self, path: str, *, engine: Optional[TensorRTEngine] = None, **engine_options):
        self.engine = engine if engine is not None else TensorRTEngine(path, **engine_options)
        names = {s.name for s in self.engine.inputs}
        outs = {s.name for s in self.engine.outputs}
        missing = [n for n in DETECTOR_INPUTS if n not in names] + [n for n in DETECTOR_OUTPUTS if n not in outs]
        if missing:
            self.engine.close()
            raise SaiError(f"engine {path} is not a detector's (no {', '.join(missing)}; it has inputs "
                           f"{sorted(names)}, outputs {sorted(outs)}); build it from the detector's tensorrt-target "
                           "ONNX (sai convert --preset NAME)")
        self.input_names = names
        self.path = str(path)

    def run(self, feeds: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.engine.infer({k: v for k, v in feeds.items() if k in self.input_names})
        return (np.asarray(out["dets"], np.float32), np.asarray(out["labels"], np.int64),
                np.asarray(out["num_dets"], np.int64))

    def close(self) -> None:
        self.engine.close()
