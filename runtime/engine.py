"""The backend-independent part of an engine: tensor specs, feed checking, noise, async inference.

Every backend (``onnxruntime``, ``torch``, ``tensorrt``) subclasses ``Engine`` and implements only
``_run(feeds) -> dict`` (and, where it runs on a GPU, ``_run_device`` for device outputs); everything
a caller sees (``inputs``, ``outputs``, ``infer``, ``infer_async``, ``classify``, noise filling for
stochastic models, raw uint8 images normalised as recorded, device inputs) lives here so the backends
agree on it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from sai.errors import InputError, SaiError
from sai.runtime.device import LEGACY_STREAM, DeviceArray, as_device_array, as_host_array
from sai.runtime.labels import Prediction, topk
from sai.runtime.preprocess import preprocess as _preprocess
from sai.runtime.preprocess import preprocess_torch as _preprocess_torch
from sai.runtime.preprocess import usable_norm, why_not_applied

Dim = Union[int, str]
Feeds = Union[np.ndarray, Mapping[str, Any]]


class ProfileError(InputError):
    """An input outside the engine's shape profile; ``too_large`` when it exceeds the maximum. Servers answer 400
    (a shape the model does not accept, as Triton does; 413 stays for bodies over the byte limit), the message
    naming the accepted ranges."""

    def __init__(self, message: str, too_large: bool):
        super().__init__(message)
        self.too_large = too_large


def check_profile(name: str, shape: Sequence[int], min_shape: Optional[Sequence[int]],
                  max_shape: Optional[Sequence[int]]) -> None:
    """ProfileError naming the dim and the limit when ``shape`` lies outside [min_shape, max_shape] (None: no
    bound). Pure, so servers can check a declared shape before they decode or allocate the tensor."""
    labels = ("batch", "channels", "height", "width")
    for bound, over in ((max_shape, True), (min_shape, False)):
        if bound is None or len(bound) != len(shape):
            continue
        for i, (have, lim) in enumerate(zip(shape, bound, strict=True)):
            if (have > lim) if over else (have < lim):
                dim = labels[i] if len(shape) == 4 else f"dim {i}"
                which = "maximum" if over else "minimum"
                raise ProfileError(f"input {name!r} has shape {list(shape)}: {dim} {have} is {'above' if over else 'below'} "
                                   f"the engine profile's {which} {list(bound)}; accepted: "
                                   f"{accepted_ranges(min_shape, max_shape, len(shape))}; send a shape within it (or "
                                   "convert with a wider --min-shape/--max-shape)", too_large=over)


def accepted_ranges(min_shape: Optional[Sequence[int]], max_shape: Optional[Sequence[int]], rank: int) -> str:
    """``batch 1-8, channels 3, height 32-64, width 32-64`` (a bound that is not given: ``>= lo`` / ``<= hi``)."""
    labels = ("batch", "channels", "height", "width") if rank == 4 else tuple(f"dim {i}" for i in range(rank))
    lo = list(min_shape) if min_shape is not None and len(min_shape) == rank else [None] * rank
    hi = list(max_shape) if max_shape is not None and len(max_shape) == rank else [None] * rank
    parts = []
    for label, a, b in zip(labels, lo, hi, strict=True):
        if a is not None and b is not None:
            parts.append(f"{label} {a}" if a == b else f"{label} {a}-{b}")
        elif a is not None or b is not None:
            parts.append(f"{label} >= {a}" if a is not None else f"{label} <= {b}")
    return ", ".join(parts) or "any"


def dtype_label(dt: np.dtype) -> str:
    """A dtype's name, with its byte order where that is not this machine's (``float32 (big-endian)``), so two
    dtypes that differ only in byte order never read alike in a message."""
    dt = np.dtype(dt)
    if dt.byteorder in "<>":  # numpy writes "=" for the native order
        return f"{dt.name} ({'big' if dt.byteorder == '>' else 'little'}-endian)"
    return dt.name


def value_dtype(value: Any) -> Optional[np.dtype]:
    """The dtype of an array-like as given (None for lists and the like)."""
    dt = getattr(value, "dtype", None)
    try:
        return None if dt is None else np.dtype(dt)
    except TypeError:
        return None


def nonfinite_message(name: str, count: int, size: int, first: Optional[Sequence[int]] = None,
                      cast: bool = False) -> str:
    """The InputError text for an input holding NaN or infinity (the same words on every backend)."""
    where = f", first at index {list(first)}" if first is not None else ""
    beyond = " (or values beyond the model's dtype)" if cast else ""
    return (f"input {name!r} contains NaN or infinity{beyond}: {count} of {size} values{where}; no backend gives a "
            "meaningful answer for them: replace them (e.g. numpy.nan_to_num) or leave that image out")


def check_finite_input(name: str, arr: np.ndarray, cast: bool = False) -> None:
    """InputError when the float array ``arr`` holds NaN or +-inf: every backend refuses such inputs alike (the
    sai kernels would read a NaN mask logit as "not sampled" and answer confidently, the function bodies
    propagate NaN). One float64 sum first (it cannot overflow for float16/float32 data), the full scan only
    when the sum is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(arr, axis=None, dtype=np.float64)):
            return
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count:
        first = np.unravel_index(int(np.argmax(bad.reshape(-1))), arr.shape)
        raise InputError(nonfinite_message(name, count, arr.size, [int(i) for i in first], cast))


def _check_finite_device(name: str, dev: DeviceArray) -> None:
    """``check_finite_input`` for a CUDA input, counted on its GPU (after its producer's stream) with torch, or
    cupy where torch has no CUDA; unchecked where neither can (a GPU engine's host inputs always are)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        gpu = torch.device("cuda", dev.device_id)
        stream = torch.cuda.current_stream(gpu)
        if dev.stream is not None:
            stream.wait_stream(torch.cuda.ExternalStream(int(dev.stream), device=gpu))
        t = torch.as_tensor(dev, device=gpu)
        count = int((~torch.isfinite(t)).sum())  # synchronises the current stream
        size = t.numel()
    else:
        try:
            import cupy
        except ImportError:
            return
        with cupy.cuda.Device(dev.device_id):
            if dev.stream is not None:
                cupy.cuda.ExternalStream(int(dev.stream)).synchronize()
            a = cupy.asarray(dev)
            count, size = int((~cupy.isfinite(a)).sum()), int(a.size)
    if count:
        raise InputError(nonfinite_message(name, count, size))


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``shape`` holds ints for fixed dims and names (``"batch"``) for dynamic ones."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": np.dtype(self.dtype).name, "shape": list(self.shape)}


def noise_shape(input_shape: Sequence[int], stride: int) -> tuple[int, int, int, int]:
    """Shape of a noise input of feature stride ``stride`` for an image of ``input_shape`` [N,C,H,W].

    The stem (7x7/2 pad 3), max-pool (3x3/2 pad 1) and every mask conv (3x3/s pad 1) map a size h to
    ceil(h / stride), and nested ceilings compose: the mask grid is ``ceil(H / stride)``.
    """
    n, _, h, w = (int(v) for v in input_shape)
    return (n, 2, math.ceil(h / stride), math.ceil(w / stride))


def _dim_ok(want: Dim, have: int) -> bool:
    return not isinstance(want, int) or want == have


class Engine:
    """One interface over every backend.

    ``inputs``/``outputs``: ``TensorSpec`` lists (noise inputs of stochastic models included in
    ``inputs`` and listed in ``noise_inputs``). ``infer(feeds)``: ``feeds`` is a dict name -> array
    or one array for the image input; missing noise inputs are drawn from the engine's seeded
    generator (``seed=``), so a fixed seed gives a reproducible stream. ``infer_async`` returns a
    ``concurrent.futures.Future``. Engines are context managers; ``close()`` frees them.

    Images: a float image input is taken as normalised; raw uint8 images (NCHW or NHWC) are normalised
    as the model's ``input_norm`` records (``sai.runtime.preprocess``). Labels: ``classify(images, k)``
    gives the top-k ``Prediction``s with the recorded class names (``labels``). Device data: CUDA
    tensors (``__cuda_array_interface__`` / ``__dlpack__``) are bound zero-copy on GPU engines, and
    ``infer(..., device_outputs=True)`` returns ``DeviceTensor``s (``sai.runtime.device``).
    """

    backend = "base"

    def __init__(self, *, seed: Optional[int] = None, async_workers: int = 2):
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.noise_inputs: list[tuple[str, int]] = []
        self.metadata: dict[str, Any] = {}
        self.path: Optional[str] = None
        self.device = "cpu"
        self.min_batch, self.max_batch = 1, None  # None: no upper bound (onnxruntime, torch)
        # The image input's shape profile [N,C,H,W] (the manifest's shapes, or set_profile): None = unbounded
        self.min_shape: Optional[tuple[int, ...]] = None
        self.max_shape: Optional[tuple[int, ...]] = None
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()
        self._async_workers = max(1, int(async_workers))
        self._closed = False

    # -- what subclasses implement ----------------------------------------------------------------
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _run_device(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Outputs left on the GPU (``DeviceTensor`` or the framework's own CUDA tensor); GPU engines override."""
        raise SaiError(f"the {self.backend} engine runs on {self.device}, so it has no device outputs; load it "
                       "on a GPU (device='cuda') or leave device_outputs off")

    def _device_stream(self) -> Optional[int]:
        """The CUDA stream the engine consumes device inputs on (passed to ``__dlpack__``); None: none."""
        return None

    def _close(self) -> None:
        pass

    # -- public API -------------------------------------------------------------------------------
    @property
    def primary_input(self) -> TensorSpec:
        """The image input (the first input that is not noise)."""
        noise = {n for n, _ in self.noise_inputs}
        for spec in self.inputs:
            if spec.name not in noise:
                return spec
        raise SaiError("model has no image input")  # pragma: no cover

    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        return {s.name: s for s in self.inputs}

    @property
    def labels(self) -> Optional[list[str]]:
        """The class names in logit order where the checkpoint records them (``classes`` metadata), else None."""
        names = self.metadata.get("classes")
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return list(names)
        return None

    @property
    def input_norm(self) -> Optional[dict]:
        """The recorded preprocessing that ``infer`` applies to raw uint8 images (None: raw pixels refused)."""
        return usable_norm(self.metadata.get("input_norm"))

    def preprocess(self, images: Any, *, layout: Optional[str] = None, color: Optional[str] = None) -> np.ndarray:
        """uint8 images [N,C,H,W] or [N,H,W,C] (``layout``; default: told by the channel dim), in the model's
        colour order unless ``color`` says (RGB/BGR) -> the normalised float32 NCHW input."""
        spec = self.primary_input
        norm = self.input_norm
        if norm is None:
            raise InputError(self.dtype_error(spec, np.dtype(np.uint8)))
        channels = spec.shape[1] if isinstance(spec.shape[1], int) else len(norm["mean"])
        return _preprocess(as_host_array(images), norm, channels, layout=layout, color=color)

    def classify(self, feeds: Feeds, k: int = 5, *, output: Optional[str] = None, layout: Optional[str] = None,
                 color: Optional[str] = None) -> list[list[Prediction]]:
        """The top-``k`` classes of every image (``Prediction``: index, label, softmax score, logit) from the
        classifier output (``logits``, or ``output``); labels are the recorded class names (None without)."""
        name = output or ("logits" if any(s.name == "logits" for s in self.outputs) else None)
        if name is None or name not in {s.name for s in self.outputs}:
            outs = ", ".join(s.name for s in self.outputs)
            raise SaiError(f"classify needs a classifier output ('logits' or output=...); this model has {outs}")
        values = self.infer(feeds, layout=layout, color=color)[name]
        return topk(values, k, self.labels)

    def describe(self) -> dict:
        """A JSON-able summary (backend, device, specs, noise inputs, batch range, metadata keys)."""
        return {
            "backend": self.backend,
            "device": self.device,
            "path": self.path,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "noise_inputs": [list(n) for n in self.noise_inputs],
            "batch": [self.min_batch, self.max_batch],
            "profile": {"min": list(self.min_shape) if self.min_shape else None,
                        "max": list(self.max_shape) if self.max_shape else None},
            "arch": self.metadata.get("arch"),
            "sampling": self.metadata.get("sampling"),
            "precision": self.metadata.get("precision"),
            "input_norm": self.input_norm,  # what infer applies to raw uint8 images (None: they are refused)
            "labels": self.labels,
            # onnxruntime: which kernels run the sai nodes (sai.runtime.ort_ops.register)
            "custom_ops": getattr(self, "custom_ops", None),
        }

    def set_profile(self, min_shape: Optional[Sequence[int]] = None, max_shape: Optional[Sequence[int]] = None) -> None:
        """Bound the image input's shape (``infer`` raises ProfileError outside it); None leaves that side as is."""
        if min_shape is not None:
            self.min_shape = tuple(int(v) for v in min_shape)
        if max_shape is not None:
            self.max_shape = tuple(int(v) for v in max_shape)

    def check_profile(self, shape: Sequence[int]) -> None:
        """ProfileError when an image input of ``shape`` lies outside the engine's profile."""
        check_profile(self.primary_input.name, [int(v) for v in shape], self.min_shape, self.max_shape)

    def noise_for(self, input_shape: Sequence[int]) -> dict[str, np.ndarray]:
        """Fresh uniform noise for every noise input at ``input_shape`` (empty for deterministic models)."""
        out = {}
        with self._rng_lock:
            for name, stride in self.noise_inputs:
                out[name] = self._rng.random(noise_shape(input_shape, stride), dtype=np.float32)
        return out

    def check_feeds(self, feeds: Feeds, *, layout: Optional[str] = None,
                    color: Optional[str] = None) -> dict[str, np.ndarray]:
        """Validate and complete ``feeds``: names, ranks, fixed dims, batch range, dtypes, noise inputs filled.
        Only casts within a kind are applied (float64 -> float32); raw uint8 images are normalised as recorded
        (``preprocess``; ``layout``/``color`` as there, ``layout`` also transposes NHWC float images); any other
        kind (int, bool, uint8 where no preprocessing is recorded) is an InputError naming the dtypes and the
        fix, never a silent cast. InputError for the rest too."""
        if isinstance(feeds, np.ndarray) or not isinstance(feeds, Mapping):
            feeds = {self.primary_input.name: feeds}
        specs = self.input_specs
        unknown = sorted(set(feeds) - set(specs))
        if unknown:
            raise InputError(f"unknown input(s) {', '.join(unknown)}; the model takes {', '.join(specs)}")
        out: dict[str, np.ndarray] = {}
        image = self.primary_input.name
        for name, value in feeds.items():
            if name == image:
                value = self._image(specs[name], value, layout, color)
            out[name] = self._check_one(specs[name], value)
        primary = self.primary_input
        if primary.name not in out:
            raise InputError(f"missing input {primary.name!r} (shape {list(primary.shape)})")
        x = out[primary.name]
        n = int(x.shape[0])
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            hi = self.max_batch if self.max_batch is not None else "any"
            raise InputError(f"batch size {n} is outside the engine's profile [{self.min_batch}, {hi}]")
        self.check_profile(x.shape)
        missing_noise = [name for name, _ in self.noise_inputs if name not in out]
        if missing_noise:
            drawn = self.noise_for(x.shape)
            for name in missing_noise:
                out[name] = drawn[name]
        for name, stride in self.noise_inputs:
            want = noise_shape(x.shape, stride)
            if tuple(out[name].shape) != want:
                raise InputError(f"noise input {name} has shape {list(out[name].shape)}, expected {list(want)} "
                                 f"for input shape {list(x.shape)}")
        missing = sorted(set(specs) - set(out))
        if missing:
            raise InputError(f"missing input(s) {', '.join(missing)}")
        return out

    def _image(self, spec: TensorSpec, value: Any, layout: Optional[str], color: Optional[str]) -> Any:
        """The image input as the model takes it: raw uint8 pixels normalised (where recorded), an NHWC float
        batch transposed when ``layout="NHWC"``; device arrays and everything else as they are."""
        dev = as_device_array(value, self._device_stream())
        if dev is not None:  # parsed once (a __dlpack__ capsule is consumed)
            if dev.dtype == np.uint8 and np.dtype(spec.dtype).kind == "f" and self.input_norm is not None:
                return self._preprocess_device(spec, dev, layout, color)
            return dev
        try:
            arr = as_host_array(value)
        except Exception:
            return value  # _check_one reports it
        if arr.dtype == np.uint8 and np.dtype(spec.dtype).kind == "f" and self.input_norm is not None:
            return self.preprocess(arr, layout=layout, color=color)
        if layout is not None and str(layout).upper() == "NHWC" and arr.ndim == 4:
            return arr.transpose(0, 3, 1, 2)
        return arr

    def _preprocess_device(self, spec: TensorSpec, dev: DeviceArray, layout: Optional[str],
                           color: Optional[str]) -> DeviceArray:
        """Raw uint8 images already on the GPU: normalised there by torch (``preprocess_torch``, the same
        tables), after its stream waits for the producer's; the result is a device input ready on that stream."""
        try:
            import torch
        except ImportError:
            raise InputError(self.dtype_error(spec, np.dtype(np.uint8)) + " (uint8 images on the GPU are "
                             "normalised with torch, which is not installed)") from None
        gpu = torch.device("cuda", dev.device_id)
        stream = torch.cuda.current_stream(gpu)
        if dev.stream is not None:
            stream.wait_stream(torch.cuda.ExternalStream(int(dev.stream), device=gpu))
        channels = spec.shape[1] if isinstance(spec.shape[1], int) else len(self.input_norm["mean"])
        out = _preprocess_torch(torch.as_tensor(dev, device=gpu), self.input_norm, channels, layout=layout,
                                color=color)
        if np.dtype(spec.dtype) == np.float16:
            out = out.half()
        ready = as_device_array(out)
        ready.stream, ready.owner = int(stream.cuda_stream) or LEGACY_STREAM, out
        return ready

    def _check_one(self, spec: TensorSpec, value: Any) -> Any:
        dev = as_device_array(value, self._device_stream())
        if dev is not None:
            return self._check_device(spec, dev)
        try:
            arr = as_host_array(value)
        except Exception as exc:  # ragged lists and the like
            raise InputError(f"input {spec.name!r} is not a rectangular array: {exc}") from None
        want = np.dtype(spec.dtype)
        if arr.dtype != want:
            if arr.dtype.kind != want.kind or arr.dtype.kind not in "fiu" or not np.can_cast(arr.dtype, want,
                                                                                             "same_kind"):
                raise InputError(self.dtype_error(spec, arr.dtype))
            with np.errstate(over="ignore"):  # values beyond ``want`` become inf, refused below
                arr = arr.astype(want)
        if arr.ndim != len(spec.shape) or not all(_dim_ok(w, h) for w, h in zip(spec.shape, arr.shape, strict=False)):
            raise InputError(f"input {spec.name!r} has shape {list(arr.shape)}, expected {list(spec.shape)}")
        if 0 in arr.shape:
            raise InputError(f"input {spec.name!r} has an empty dimension: shape {list(arr.shape)}")
        arr = np.ascontiguousarray(arr)
        if arr.dtype.kind == "f":
            check_finite_input(spec.name, arr, cast=value_dtype(value) != arr.dtype)
        return arr

    def _check_device(self, spec: TensorSpec, dev: DeviceArray) -> DeviceArray:
        """A CUDA input: bound as it is, so dtype and shape must be the model's; only GPU engines take one."""
        if not str(self.device).startswith(("cuda", "tensorrt")):
            raise InputError(f"input {spec.name!r} is a CUDA tensor but the {self.backend} engine runs on "
                             f"{self.device}; load it with device='cuda', or pass host (numpy) data")
        if dev.dtype != np.dtype(spec.dtype):
            if dev.dtype == np.uint8 and spec.name == self.primary_input.name:
                raise InputError(self.dtype_error(spec, dev.dtype))
            raise InputError(f"device input {spec.name!r} has dtype {dtype_label(dev.dtype)}, expected "
                             f"{dtype_label(spec.dtype)} (device inputs are bound as they are, without casts)")
        if dev.ndim != len(spec.shape) or not all(_dim_ok(w, h) for w, h in zip(spec.shape, dev.shape, strict=False)):
            raise InputError(f"input {spec.name!r} has shape {list(dev.shape)}, expected {list(spec.shape)}")
        if 0 in dev.shape:
            raise InputError(f"input {spec.name!r} has an empty dimension: shape {list(dev.shape)}")
        if not dev.is_c_contiguous:
            raise InputError(f"device input {spec.name!r} is not C-contiguous; pass a contiguous copy "
                             "(.contiguous() / cupy.ascontiguousarray)")
        if np.dtype(dev.dtype).kind == "f":
            _check_finite_device(spec.name, dev)
        return dev

    def dtype_error(self, spec: TensorSpec, given: np.dtype) -> str:
        """The message for an input of a dtype the model does not take: what was given, what is expected, the fix
        (for the image input: how to normalise raw pixels, from the model's ``input_norm`` metadata)."""
        want, given = np.dtype(spec.dtype), np.dtype(given)
        msg = f"input {spec.name!r} has dtype {dtype_label(given)}, but the model takes {dtype_label(want)}"
        if given.newbyteorder("=") == want.newbyteorder("="):  # host arrays are converted; this is a bound one
            return (f"{msg} in this machine's byte order; convert it first (e.g. numpy: "
                    f"arr.astype(arr.dtype.newbyteorder('=')))")
        if spec.name in {n for n, _ in self.noise_inputs}:
            return f"{msg}; pass uniform [0, 1) noise as {want.name}, or leave it out to have it drawn from the seed"
        if want.kind != "f":
            return f"{msg}; convert it to {want.name}"
        norm = self.metadata.get("input_norm")
        how = "as the manifest's input_norm says"
        if isinstance(norm, Mapping) and norm.get("mean") is not None and norm.get("std") is not None:
            how = (f"as the model's input_norm says ({norm.get('color', '')} {norm.get('range', '')}: "
                   f"(pixel * scale {norm.get('scale', 1.0)} - mean {norm['mean']}) / std {norm['std']})")
        if given == np.uint8:
            return f"{msg} (raw pixels are not accepted: {why_not_applied(norm)}); convert it to {want.name} and " \
                   f"normalise it {how}"
        if given.kind in "iub" and usable_norm(norm) is not None:
            return f"{msg}; pass images as uint8 (normalised as recorded), or convert it to {want.name} and " \
                   f"normalise it {how}"
        pixels = " (raw pixels are not accepted)" if given.kind in "iu" else ""
        return f"{msg}{pixels}; convert it to {want.name} and normalise it {how}"

    def infer(self, feeds: Feeds, *, layout: Optional[str] = None, color: Optional[str] = None,
              device_outputs: bool = False) -> dict[str, Any]:
        """Run one (batched) inference; returns output name -> numpy array (``device_outputs``: left on the
        GPU, see ``sai.runtime.device``). ``layout``/``color``: how raw uint8 images are laid out (``preprocess``)."""
        if self._closed:
            raise SaiError(f"{self.backend} engine is closed; load the model again (sai.runtime.load) to infer")
        checked = self.check_feeds(feeds, layout=layout, color=color)
        if device_outputs:
            return self._run_device(checked)
        # C-contiguous host outputs on every backend: a fused block's NHWC result reaches torch's outputs as a
        # channels_last view, and consumers that reinterpret buffers (Polygraphy's comparator, tobytes
        # servers) need row-major data
        return {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in self._run(checked).items()}

    def infer_async(self, feeds: Feeds, **options) -> Future:
        """``infer`` on the engine's worker threads (``options`` as ``infer``'s); a Future of the output dict."""
        closed = SaiError(f"{self.backend} engine is closed; load the model again (sai.runtime.load) to infer")
        with self._pool_lock:
            if self._closed:
                raise closed
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._async_workers, thread_name_prefix=f"sai-{self.backend}")
            try:
                return self._pool.submit(self.infer, feeds, **options)
            except RuntimeError:  # the pool shut down
                raise closed from None

    def example_feeds(self, shape: Optional[Sequence[int]] = None, batch: int = 1, seed: int = 0) -> dict:
        """Random image feeds (standard normal, seeded) for ``shape`` [N,C,H,W] or the model's example
        input shape with batch ``batch``."""
        primary = self.primary_input
        if shape is None:
            ex = self.metadata.get("example_input_shape")
            if ex:
                shape = [batch, *ex[1:]]
            else:
                shape = [batch if not isinstance(d, int) else d for d in primary.shape[:2]]
                shape += [d if isinstance(d, int) else 224 for d in primary.shape[2:]]
        shape = [int(v) for v in shape]
        rng = np.random.default_rng(seed)
        return {primary.name: rng.standard_normal(shape).astype(np.dtype(primary.dtype))}

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=True)
        self._close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}{list(s.shape)}" for s in self.inputs if s.name not in dict(self.noise_inputs))
        return f"<{type(self).__name__} {self.backend}/{self.device} {self.path} inputs: {ins}>"
