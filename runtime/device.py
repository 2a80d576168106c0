"""GPU data paths shared by every backend: device inputs taken zero-copy, their producer's stream
honoured, device outputs handed back.

Inputs: anything exposing ``__cuda_array_interface__`` (CuPy, Numba, PyCUDA ``GPUArray``, torch) or a
CUDA ``__dlpack__`` (torch, CuPy, JAX, ...) becomes a ``DeviceArray`` (pointer, shape, dtype, element
strides, device, the stream its data is ready on) without a copy; CPU DLPack producers become numpy
arrays without a copy (``as_host_array``).

Streams:
- ``__cuda_array_interface__`` v3 names the producer's stream (``stream``: None = ready, 1 = legacy
  default, 2 = per-thread default, else a ``cudaStream_t``); the consumer makes its own stream wait for
  it with an event (``stream_wait``), so nothing blocks the host;
- ``__dlpack__(stream=S)`` is called with the consumer's stream S: the producer orders its work
  before S itself (the DLPack protocol), so the array is ready on S.

Outputs: ``DeviceTensor`` owns (or keeps alive) device memory and exposes ``__cuda_array_interface__``
v3 with the stream it is ready on, so ``cupy.asarray``, ``torch.as_tensor(..., device="cuda")`` and
Numba take it zero-copy; ``to_host()`` copies it to numpy.

Everything except the CUDA calls is plain Python, tested on the CPU with fake producers; the CUDA
calls go through ``cudart`` (cuda-python, injected or imported lazily).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from sai.errors import InputError, SaiError
from sai.lazy import lazy_import

# DLPack device types (dlpack.h)
KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13
CUDA_DEVICE_TYPES = (KDL_CUDA, KDL_CUDA_MANAGED)
# DLPack dtype codes -> numpy kind
_DL_KINDS = {0: "i", 1: "u", 2: "f", 6: "b"}
LEGACY_STREAM = 1  # cudaStreamLegacy


@dataclass
class DeviceArray:
    """A CUDA tensor handed in by the caller: bound as it is (zero-copy), never cast.

    ``strides`` are in elements (None: C-contiguous); ``stream`` is the CUDA stream its data is ready
    on (None: ready now); ``owner`` keeps the producer (or the DLPack capsule) alive while bound."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    strides: Optional[tuple[int, ...]] = None
    device_id: int = 0
    stream: Optional[int] = None
    owner: Any = None
    readonly: bool = False

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_c_contiguous(self) -> bool:
        return self.strides is None or tuple(self.strides) == c_strides(self.shape)

    @property
    def __cuda_array_interface__(self) -> dict:  # so torch.as_tensor / cupy.asarray take it as is
        itemsize = np.dtype(self.dtype).itemsize
        strides = None if self.is_c_contiguous else tuple(s * itemsize for s in self.strides)
        return {"version": 3, "shape": tuple(self.shape), "typestr": np.dtype(self.dtype).str,
                "data": (int(self.ptr), bool(self.readonly)), "strides": strides, "stream": self.stream}


def c_strides(shape) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape`` (dims of size 1 may have any stride: normalised)."""
    out, acc = [], 1
    for s in reversed(tuple(shape)):
        out.append(acc)
        acc *= int(s)
    return tuple(reversed(out))


def _contiguous(shape, strides) -> bool:
    want = c_strides(shape)
    return all(int(s) == 1 or a == b for s, a, b in zip(shape, strides, want, strict=True))


def from_cuda_array_interface(value: Any, cai: dict) -> DeviceArray:
    """Parse a ``__cuda_array_interface__`` dict (versions 0-3); InputError for masks, odd strides, bad fields."""
    try:
        shape = tuple(int(s) for s in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        ptr, readonly = cai["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed __cuda_array_interface__ ({exc}); expected shape, typestr, data") from None
    if cai.get("mask") is not None:
        raise InputError("masked __cuda_array_interface__ arrays are not supported")
    strides = cai.get("strides")
    elems = None
    if strides is not None:
        strides = tuple(int(s) for s in strides)
        if len(strides) != len(shape) or any(s % dtype.itemsize for s in strides):
            raise InputError(f"__cuda_array_interface__ strides {strides} do not fit shape {shape} of {dtype}")
        elems = tuple(s // dtype.itemsize for s in strides)
        if _contiguous(shape, elems):
            elems = None
    stream = cai.get("stream")
    if stream is not None:
        stream = int(stream)
        if stream == 0:  # disallowed by the protocol (ambiguous); producers mean the legacy default stream
            stream = LEGACY_STREAM
    return DeviceArray(int(ptr or 0), shape, dtype, elems, _cai_device(value), stream, value, bool(readonly))


def _cai_device(value: Any) -> int:
    dev = getattr(value, "device", None)
    for attr in ("index", "id"):
        v = getattr(dev, attr, None)
        if isinstance(v, int):
            return v
    return 0


# ---- DLPack capsules (ctypes view of dlpack.h's DLManagedTensor) --------------------------------


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]

_api = ctypes.pythonapi
_api.PyCapsule_IsValid.restype, _api.PyCapsule_IsValid.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype, _api.PyCapsule_SetName.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]


class DLPackOwner:
    """Holds a consumed DLPack capsule: the producer's memory lives until this is released (its deleter)."""

    def __init__(self, capsule: Any, managed: ctypes.POINTER(_DLManagedTensor)):
        self._capsule, self._managed = capsule, managed

    def release(self) -> None:
        managed, self._managed = self._managed, None
        if managed is not None and managed.contents.deleter:
            managed.contents.deleter(managed)

    def __del__(self):
        self.release()


def parse_dlpack(capsule: Any) -> tuple[int, tuple[int, ...], np.dtype, tuple[int, ...], int, int, DLPackOwner]:
    """``(ptr, shape, dtype, element strides, device_type, device_id, owner)`` of a ``dltensor`` capsule,
    which is consumed (renamed ``used_dltensor``; ``owner`` calls its deleter when released)."""
    if not _api.PyCapsule_IsValid(capsule, b"dltensor"):
        raise InputError("__dlpack__ did not return an unused 'dltensor' capsule")
    managed = ctypes.cast(_api.PyCapsule_GetPointer(capsule, b"dltensor"), ctypes.POINTER(_DLManagedTensor))
    _api.PyCapsule_SetName(capsule, b"used_dltensor")
    owner = DLPackOwner(capsule, managed)
    t = managed.contents.dl_tensor
    kind = _DL_KINDS.get(int(t.dtype.code))
    if kind is None or t.dtype.lanes != 1 or t.dtype.bits % 8:
        owner.release()
        raise InputError(f"DLPack dtype (code {t.dtype.code}, {t.dtype.bits} bits, {t.dtype.lanes} lanes) is not "
                           "supported (bfloat16, complex and vector types are not)")
    dtype = np.dtype(f"{'?' if kind == 'b' else kind + str(t.dtype.bits // 8)}")
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    strides = tuple(int(t.strides[i]) for i in range(t.ndim)) if t.strides else c_strides(shape)
    ptr = int(t.data or 0) + int(t.byte_offset)
    return ptr, shape, dtype, strides, int(t.device.device_type), int(t.device.device_id), owner


def dlpack_device(value: Any) -> Optional[tuple[int, int]]:
    """``(device_type, device_id)`` of a DLPack producer, None for objects that are not one."""
    fn = getattr(value, "__dlpack_device__", None)
    if fn is None or not hasattr(value, "__dlpack__"):
        return None
    try:
        dev_type, dev_id = fn()
    except Exception:
        return None
    return int(dev_type), int(dev_id)


def from_dlpack(value: Any, stream: Optional[int] = None) -> DeviceArray:
    """A CUDA DLPack producer as a ``DeviceArray``: ``__dlpack__(stream=stream)`` orders the producer's work
    before ``stream`` (the consumer's), so the array is ready there."""
    try:
        try:
            capsule = value.__dlpack__(stream=stream) if stream is not None else value.__dlpack__()
        except TypeError:  # a producer without the stream keyword
            capsule = value.__dlpack__()
    except Exception as exc:  # e.g. torch: tensors that require grad
        raise InputError(f"cannot take the CUDA tensor through DLPack: {str(exc).splitlines()[0][:200]}") from None
    ptr, shape, dtype, strides, dev_type, dev_id, owner = parse_dlpack(capsule)
    if dev_type not in CUDA_DEVICE_TYPES:
        owner.release()
        raise InputError(f"DLPack device type {dev_type} is not a CUDA device")
    return DeviceArray(ptr, shape, dtype, None if _contiguous(shape, strides) else strides, dev_id,
                       stream, owner=(value, owner))


def as_device_array(value: Any, stream: Optional[int] = None) -> Optional[DeviceArray]:
    """A ``DeviceArray`` for CUDA producers, None for host data. Which protocol: one that says how to
    synchronise - a ``__cuda_array_interface__`` v3 (its ``stream``), else a CUDA ``__dlpack__`` (called with
    the consumer's ``stream``: torch's interface is v2, without a stream, but its DLPack orders its current
    stream before ours), else an interface without a stream (data taken as ready, as the protocol says)."""
    if isinstance(value, (np.ndarray, np.generic, list, tuple, int, float)):
        return None
    if isinstance(value, DeviceArray):
        return value
    try:
        cai = getattr(value, "__cuda_array_interface__", None)
    except Exception:  # torch raises for CPU tensors / tensors that require grad
        cai = None
    if isinstance(cai, dict) and "stream" in cai:
        return from_cuda_array_interface(value, cai)
    dev = dlpack_device(value)
    if dev is not None and dev[0] in CUDA_DEVICE_TYPES:
        return from_dlpack(value, stream)
    if isinstance(cai, dict):
        return from_cuda_array_interface(value, cai)
    if dev is not None and dev[0] == KDL_CUDA_HOST:
        raise InputError("pinned-host (kDLCUDAHost) DLPack tensors are not supported; pass a numpy array or "
                           "a CUDA tensor")
    return None


def as_host_array(value: Any) -> np.ndarray:
    """``value`` as a numpy array: numpy's own conversion, or a CPU DLPack producer taken zero-copy."""
    if isinstance(value, np.ndarray):
        return value
    if not hasattr(value, "__array__") and not hasattr(value, "__array_interface__"):
        dev = dlpack_device(value)
        if dev is not None and dev[0] == KDL_CPU:
            return np.from_dlpack(value)
    return np.asarray(value)


# ---- CUDA calls ---------------------------------------------------------------------------------


# cuda-python >= 12.6 has cuda.bindings.runtime; older ones cuda.cudart
CUDART = lazy_import("cuda.bindings.runtime", purpose="manage GPU memory and streams", dist="cuda-python",
                     fallbacks=("cuda.cudart",))


def import_cudart():
    return CUDART.load()


class Cuda:
    """cudart calls with error checking (each returns ``(err, *values)``)."""

    def __init__(self, cudart):
        self.rt = cudart

    def __call__(self, fn: str, *args):
        res = getattr(self.rt, fn)(*args)
        res = res if isinstance(res, tuple) else (res,)
        err, values = res[0], res[1:]
        if int(err) != 0:
            raise SaiError(f"CUDA {fn} failed: {err}")
        return values[0] if len(values) == 1 else (values or None)


def stream_wait(cu: Cuda, consumer: int, producer: Optional[int]) -> None:
    """Make ``consumer`` wait for the work queued on ``producer`` (an event; the host does not block).
    Nothing to do when the producer's data is ready (None) or both are the same stream."""
    if producer is None or int(producer) == int(consumer):
        return
    rt = cu.rt
    flags = getattr(getattr(rt, "cudaEventFlags", None), "cudaEventDisableTiming", 2)
    event = cu("cudaEventCreateWithFlags", flags)
    try:
        cu("cudaEventRecord", event, int(producer))
        cu("cudaStreamWaitEvent", int(consumer), event, 0)
    finally:
        cu("cudaEventDestroy", event)  # freed once the wait has completed, as CUDA defines


class DeviceTensor:
    """A device output: ``__cuda_array_interface__`` v3 (ready on ``stream``), ``to_host()``; the memory
    is freed by ``free`` (or kept alive by ``owner``) when this object goes away."""

    def __init__(self, ptr: int, shape, dtype, *, device_id: int = 0, stream: Optional[int] = None,
                 owner: Any = None, free: Optional[Callable[[int], None]] = None,
                 to_host: Optional[Callable[[DeviceTensor], np.ndarray]] = None):
        self.ptr, self.shape, self.dtype = int(ptr), tuple(int(s) for s in shape), np.dtype(dtype)
        self.device_id, self.stream, self.owner = int(device_id), stream, owner
        self._free, self._to_host = free, to_host

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"version": 3, "shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": None, "stream": self.stream}

    def to_host(self) -> np.ndarray:
        if self._to_host is None:
            raise SaiError("this device output has no copy to the host")
        return self._to_host(self)

    def __del__(self):
        free, self._free = self._free, None
        if free is not None and self.ptr:
            try:
                free(self.ptr)
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"DeviceTensor(shape={list(self.shape)}, dtype={self.dtype.name}, device=cuda:{self.device_id})"
