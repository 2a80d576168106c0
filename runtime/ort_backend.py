"""ONNX Runtime backend: CPU, the CUDA execution provider (onnxruntime-gpu), or the TensorRT EP with
the sai plugin library (``trt_extra_plugin_lib_paths``).

On CUDA every run goes through IOBinding: CUDA inputs (``__cuda_array_interface__`` / ``__dlpack__``,
see ``sai.runtime.device``) are bound by pointer, host inputs with ``bind_cpu_input``, and outputs are
bound on the device for ``device_outputs=True`` (else copied to the host once). The session computes
on a stream of its own (``user_compute_stream``, created with cuda-python where it is installed), which
waits for a device input's producer stream with an event.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from sai.constants import ORT_DEVICES
from sai.errors import MissingDependencyError, SaiError
from sai.lazy import INSTALL, lazy_import
from sai.runtime.device import LEGACY_STREAM, Cuda, DeviceArray, DeviceTensor, import_cudart, stream_wait
from sai.runtime.engine import Engine, TensorSpec

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
DEVICES = ORT_DEVICES


ONNXRUNTIME = lazy_import("onnxruntime", purpose="run the onnxruntime backend")


def _import_ort():
    return ONNXRUNTIME.load()


def providers_for(device: str, available: list[str], plugin_library: Optional[str] = None,
                  cache_dir: Optional[str] = None, stream: Optional[int] = None) -> list:
    """The provider list for ``device`` (cpu | cuda | tensorrt); SaiError when the EP is not installed.
    ``stream``: a cudaStream_t the GPU providers compute on (``user_compute_stream``)."""
    gpu_opts = {"user_compute_stream": str(int(stream))} if stream else {}
    if device not in DEVICES:
        raise SaiError(f"onnxruntime device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise SaiError("onnxruntime has no CUDAExecutionProvider here (available: "
                           f"{', '.join(available)}); install onnxruntime-gpu and run on an NVIDIA GPU")
        return [("CUDAExecutionProvider", gpu_opts) if gpu_opts else "CUDAExecutionProvider", "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available:
        raise SaiError("onnxruntime has no TensorrtExecutionProvider here (available: "
                       f"{', '.join(available)}); install onnxruntime-gpu with TensorRT on an NVIDIA GPU")
    if plugin_library is None:
        raise SaiError("the TensorRT execution provider needs the sai plugin library for the sai ops; "
                       "build it with `make plugins` or set SAI_TRT_PLUGIN_LIBRARY")
    trt_opts = {"trt_extra_plugin_lib_paths": str(plugin_library), **gpu_opts}
    if cache_dir:
        trt_opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache_dir),
                        trt_timing_cache_enable="True")
    cuda = ("CUDAExecutionProvider", gpu_opts) if gpu_opts else "CUDAExecutionProvider"
    return [("TensorrtExecutionProvider", trt_opts), cuda, "CPUExecutionProvider"]


def _dims(shape) -> tuple:
    return tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else "?") for d in shape)


class OnnxRuntimeEngine(Engine):
    """An ``onnxruntime.InferenceSession`` behind the ``Engine`` interface (its ``run`` is thread-safe)."""

    backend = "onnxruntime"

    def __init__(self, path: str, *, device: Optional[str] = None, threads: Optional[int] = None,
                 seed: Optional[int] = None, async_workers: int = 2, plugin_library: Optional[str] = None):
        super().__init__(seed=seed, async_workers=async_workers)
        ort = _import_ort()
        if not os.path.isfile(path):
            raise SaiError(f"ONNX model {path} does not exist")
        if device is None:  # the GPU when onnxruntime-gpu has it, else the CPU
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        if device == "tensorrt" and plugin_library is None:
            from sai.runtime.plugins import find_plugin_library

            found = find_plugin_library()
            plugin_library = str(found) if found else None
        self._cu, self._stream = None, None
        if device in ("cuda", "tensorrt"):
            try:  # a stream of our own, so device inputs can be ordered after their producer's
                self._cu = Cuda(import_cudart())
                self._stream = int(self._cu("cudaStreamCreate"))
            except (MissingDependencyError, SaiError):
                self._cu, self._stream = None, None
        providers = providers_for(device, ort.get_available_providers(), plugin_library, stream=self._stream)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        from sai.runtime import ort_ops  # libsai_ort_ops.so runs the sai nodes where it is built
        self.custom_ops = ort_ops.register(so, device, str(path))
        model = self.custom_ops.pop("model")  # the model with its sparse blocks fused, or the path
        try:
            self.session = ort.InferenceSession(model, so, providers=providers)
        except Exception as exc:
            raise SaiError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}") from exc
        self.path, self.device = str(path), device
        self.inputs = [TensorSpec(i.name, np.dtype(ORT_DTYPES.get(i.type, np.float32)), _dims(i.shape))
                       for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, np.dtype(ORT_DTYPES.get(o.type, np.float32)), _dims(o.shape))
                        for o in self.session.get_outputs()]
        self.metadata = read_session_metadata(self.session)
        names = {s.name for s in self.inputs}
        self.noise_inputs = [(str(n), int(s)) for n, s in self.metadata.get("noise_inputs", []) if n in names]
        self._output_names = [o.name for o in self.outputs]
        self._ort = ort
        self._io_device = "cuda" if device in ("cuda", "tensorrt") else "cpu"
        self._iobinding = self._io_device == "cuda"  # every GPU run binds its inputs and outputs

    def _device_stream(self) -> int:
        return self._stream if self._stream is not None else LEGACY_STREAM

    def _run(self, feeds):
        if self._iobinding or any(isinstance(v, DeviceArray) for v in feeds.values()):
            return self._run_bound(feeds, device_outputs=False)
        try:
            values = self.session.run(self._output_names, feeds)
        except Exception as exc:
            raise SaiError(f"onnxruntime inference failed: {str(exc).splitlines()[0][:300]}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def _run_device(self, feeds):
        if self._io_device != "cuda":
            return super()._run_device(feeds)
        return self._run_bound(feeds, device_outputs=True)

    def _run_bound(self, feeds, device_outputs: bool) -> dict:
        """One run through IOBinding: device inputs by pointer (after their producer's stream), host inputs
        copied by onnxruntime, outputs on ``_io_device`` (``device_outputs``) or the host."""
        io = self.session.io_binding()
        dev_id = 0
        for name, value in feeds.items():
            if isinstance(value, DeviceArray):
                if value.stream is not None:
                    if self._cu is None or self._stream is None:
                        raise MissingDependencyError("cuda-python", "order CUDA inputs after their producer's "
                                                     "stream in onnxruntime", INSTALL["cuda-python"])
                    stream_wait(self._cu, self._stream, value.stream)
                dev_id = value.device_id
                io.bind_input(name, self._io_device, value.device_id, np.dtype(value.dtype), list(value.shape),
                              int(value.ptr))
            else:
                io.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._output_names:
            io.bind_output(name, self._io_device if device_outputs else "cpu", dev_id if device_outputs else 0)
        try:
            self.session.run_with_iobinding(io)
        except Exception as exc:
            raise SaiError(f"onnxruntime inference failed: {str(exc).splitlines()[0][:300]}") from exc
        if not device_outputs:
            return dict(zip(self._output_names, io.copy_outputs_to_cpu(), strict=True))
        out = {}
        for name, value in zip(self._output_names, io.get_outputs(), strict=True):
            # run_with_iobinding synchronises the session's stream: the outputs are ready (stream None)
            out[name] = DeviceTensor(value.data_ptr(), value.shape(), ORT_DTYPES.get(value.data_type(), np.float32),
                                     device_id=dev_id, owner=value, to_host=lambda t: t.owner.numpy())
        return out

    def _close(self) -> None:
        self.session = None
        if self._cu is not None and self._stream is not None:
            self._cu("cudaStreamDestroy", self._stream)
            self._stream = None


def read_session_metadata(session) -> dict:
    """The ``sai.*`` metadata_props of a session's model, JSON values decoded."""
    out = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        if not key.startswith("sai."):
            continue
        try:
            out[key[4:]] = json.loads(value)
        except json.JSONDecodeError:
            out[key[4:]] = value
    return out
