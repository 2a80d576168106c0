"""The detector engine: raw uint8 RGB images in, ``dets`` / ``labels`` / ``num_dets`` out, in the original
images' pixels, on torch (the sai kernels), onnxruntime with the portable ``model.onnx`` (function bodies) or
onnxruntime with ``model.cpu-fused.onnx`` and libsai_ort_ops.so.

The test pipeline of mmdetection v0.6 runs here, in numpy, from what ``sai convert`` recorded (the manifest's
``preprocessing``, or the ONNX model's metadata): keep-ratio resize to ``img_scale`` (size ``int(x * s + 0.5)``,
bilinear with half-pixel centres computed in float32 as PyTorch's CPU kernel, rounded to uint8 as the official
uint8 resize; ``resize_bilinear``), ``(x - mean) / std`` in RGB, zero padding to a multiple of ``size_divisor``. Images whose padded
sizes are equal run as one batch with their own ``img_shape`` and ``scale_factor`` (each group as the official
test runs an image: nothing padded beyond its own multiple of 32); the graph divides the boxes by the scale
factor, so they come back in the original images' coordinates.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sai.errors import InputError, SaiError, first_line
from sai.runtime.engine import noise_shape

OUTPUT_NAMES = ("dets", "labels", "num_dets")
KIND = "detector"
PREPROCESSING_KEYS = ("img_scale", "mean", "std", "to_rgb", "size_divisor")

# mmdetection v0.6 ``mmdet/core/evaluation/class_names.py: coco_classes()``: label i of the detector is class i
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic_light",
    "fire_hydrant", "stop_sign", "parking_meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports_ball", "kite", "baseball_bat", "baseball_glove", "skateboard", "surfboard",
    "tennis_racket", "bottle", "wine_glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot_dog", "pizza", "donut", "cake", "chair", "couch",
    "potted_plant", "bed", "dining_table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell_phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy_bear",
    "hair_drier", "toothbrush",
)


def is_detector_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """Whether a (mapped) state dict holds the detector heads (``rpn_head.*`` / ``bbox_head.*``)."""
    return any(str(k).replace("module.", "", 1).startswith(("rpn_head.", "bbox_head.")) for k in state_dict)


# ----------------------------------------------------------------------------------------------
# preprocessing (numpy)
# ----------------------------------------------------------------------------------------------


def check_preprocessing(pre: Any, where: str) -> dict:
    """The recorded preprocessing with its types checked; SaiError naming the field and the fix."""
    fix = "re-run sai convert with this sai"
    if not isinstance(pre, Mapping):
        raise SaiError(f"{where} records no detector preprocessing; {fix}")
    missing = [k for k in PREPROCESSING_KEYS if k not in pre]
    if missing:
        raise SaiError(f"{where}: the detector preprocessing lacks {', '.join(missing)}; {fix}")
    try:
        scale = tuple(int(v) for v in pre["img_scale"])
        mean = tuple(float(v) for v in pre["mean"])
        std = tuple(float(v) for v in pre["std"])
        div = int(pre["size_divisor"])
    except (TypeError, ValueError):
        raise SaiError(f"{where}: the detector preprocessing is not numbers ({dict(pre)}); {fix}") from None
    if len(scale) != 2 or min(scale) < 1 or len(mean) != 3 or len(std) != 3 or min(std) <= 0 or div < 1:
        raise SaiError(f"{where}: the detector preprocessing is out of range ({dict(pre)}); {fix}")
    return {"img_scale": scale, "mean": mean, "std": std, "to_rgb": bool(pre["to_rgb"]), "size_divisor": div}


def rescale_size(h: int, w: int, img_scale: Sequence[int]) -> tuple[int, int, float]:
    """mmcv ``imrescale`` with a (long, short) scale: ``(new_h, new_w, scale_factor)``, v0.6's rounding."""
    long_edge, short_edge = max(img_scale), min(img_scale)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * float(s) + 0.5), int(w * float(s) + 0.5), float(s)


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` with one rounding (a fused multiply-add: the product of two float32 values is exact
    in float64)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a half-pixel linear resize, in float32 as PyTorch's CPU kernel computes
    them (``scale * (i + 0.5) - 0.5`` as one fused multiply-add)."""
    scale = np.float32(n_in) / np.float32(n_out)
    half = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = _fma(np.full(n_out, scale, np.float32), half, np.full(n_out, -0.5, np.float32))
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, (np.float32(1.0) - lam).astype(np.float32), lam


def resize_bilinear(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """``[3, H, W]`` float32 pixels resized bilinearly (half-pixel centres), rounded and saturated to 0..255.
    The operations of PyTorch's CPU kernel (``F.interpolate``, which ``sai.models.detector`` uses) in their
    order, with its fused multiply-adds: per row ``fma(x0, w0, x1 * w1)``, then ``fma(top, h0, bottom * h1)``."""
    if (new_h, new_w) == img.shape[1:]:
        return img
    y0, y1, hy0, hy1 = _linear_taps(img.shape[1], new_h)
    x0, x1, wx0, wx1 = _linear_taps(img.shape[2], new_w)
    top, bottom = img[:, y0, :], img[:, y1, :]
    t = _fma(top[:, :, x0], wx0, top[:, :, x1] * wx1)
    b = _fma(bottom[:, :, x0], wx0, bottom[:, :, x1] * wx1)
    out = _fma(t, hy0[:, None], b * hy1[:, None])
    return np.clip(np.floor(out + np.float32(0.5)), 0, 255).astype(np.float32)


def _as_array(img: Any) -> np.ndarray:
    if isinstance(img, np.ndarray):
        arr = img
    elif hasattr(img, "detach") and hasattr(img, "cpu"):  # a torch tensor
        arr = img.detach().cpu().numpy()
    else:
        raise InputError(f"images must be numpy arrays or torch tensors of uint8 RGB pixels, got "
                         f"{type(img).__name__}; pass e.g. numpy.asarray(PIL.Image.open(f).convert('RGB'))")
    if arr.dtype != np.uint8:
        raise InputError(f"images must be uint8 RGB pixels (0..255), got dtype {arr.dtype}; convert with "
                         ".astype(numpy.uint8) (pixels, not normalised values: the engine normalises them)")
    return arr


def image_list(images: Any, layout: Optional[str] = None) -> list[np.ndarray]:
    """``images`` (a batch ``[N, H, W, 3]`` / ``[N, 3, H, W]``, one image ``[H, W, 3]`` / ``[3, H, W]``, or a list
    of images of any sizes) -> ``[3, H, W]`` float32 RGB pixel arrays; InputError naming the problem and fix."""
    if layout is not None and str(layout).upper() not in ("NHWC", "NCHW"):
        raise InputError(f"layout must be 'NHWC' or 'NCHW' (or None to tell it from the channel dim), got {layout!r}")
    lay_given = str(layout).upper() if layout is not None else None
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images given; pass an [N, H, W, 3] uint8 batch or a list of [H, W, 3] images")
        items = [_as_array(im) for im in images]
        for a in items:
            if a.ndim != 3:
                raise InputError(f"each image of a list must have rank 3 ([H, W, 3] or [3, H, W]), got shape "
                                 f"{list(a.shape)}")
    else:
        a = _as_array(images)
        if a.ndim == 3:
            items = [a]
        elif a.ndim == 4:
            if a.shape[0] == 0:
                raise InputError("the batch holds no images (N = 0); pass at least one image")
            items = list(a)
        else:
            raise InputError(f"images must have rank 4 ([N, H, W, 3] or [N, 3, H, W]) or 3 (one image), got rank "
                             f"{a.ndim} (shape {list(a.shape)})")
    out = []
    for a in items:
        lay = lay_given
        if lay is None:
            last3, first3 = a.shape[-1] == 3, a.shape[0] == 3
            if last3 and first3:
                raise InputError(f"cannot tell the layout of an image of shape {list(a.shape)} (3 both first and "
                                 "last); pass layout='NHWC' or layout='NCHW'")
            if not (last3 or first3):
                raise InputError(f"images must have 3 channels (RGB), as [H, W, 3] or [3, H, W]; got shape "
                                 f"{list(a.shape)}; convert grey or RGBA images to RGB first")
            lay = "NHWC" if last3 else "NCHW"
        chw = a.transpose(2, 0, 1) if lay == "NHWC" else a
        if chw.shape[0] != 3:
            raise InputError(f"images must have 3 channels (RGB) in layout {lay}, got shape {list(a.shape)}")
        if chw.shape[1] == 0 or chw.shape[2] == 0:
            raise InputError(f"an image has zero size ({chw.shape[1]}x{chw.shape[2]} pixels); pass non-empty images")
        out.append(np.ascontiguousarray(chw, dtype=np.float32))
    return out


def preprocess(images: Any, pre: Mapping[str, Any], layout: Optional[str] = None) -> list[dict]:
    """The v0.6 test pipeline per image: ``{"img": [3, Hp, Wp] float32, "img_shape": (h, w), "scale_factor": s,
    "ori_shape": (H, W)}`` (``pre``: ``check_preprocessing``'s record)."""
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    d = int(pre["size_divisor"])
    metas = []
    for img in image_list(images, layout):
        h, w = img.shape[1:]
        nh, nw, s = rescale_size(h, w, pre["img_scale"])
        if nh < 1 or nw < 1:
            raise InputError(f"an image of {h}x{w} pixels rescales to {nh}x{nw} at img_scale "
                             f"{tuple(pre['img_scale'])}; pass images of a less extreme aspect ratio")
        x = resize_bilinear(img, nh, nw)
        if not pre["to_rgb"]:  # a BGR-trained model: the official pipeline would not swap the channels
            x = x[::-1]
        x = (x - mean) / std
        ph, pw = -(-nh // d) * d, -(-nw // d) * d
        padded = np.zeros((3, ph, pw), np.float32)
        padded[:, :nh, :nw] = x
        metas.append({"img": padded, "img_shape": (nh, nw), "scale_factor": s, "ori_shape": (h, w)})
    return metas


# ----------------------------------------------------------------------------------------------
# the graph's runners: one padded batch -> dets, labels, num_dets
# ----------------------------------------------------------------------------------------------


class _OrtRunner:
    """The detector ONNX on an onnxruntime session (portable, or the fused file with the library)."""

    def __init__(self, path: Path, *, fused: bool, library: Optional[Path], device: str, threads: Optional[int],
                 extra_outputs: Sequence[str] = ()):
        from sai.runtime.ort_backend import _import_ort, providers_for, read_session_metadata

        ort = _import_ort()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        if fused:
            try:
                so.register_custom_ops_library(str(library))
            except Exception as exc:
                raise SaiError(f"{library} could not be registered ({first_line(exc)}); rebuild it "
                               "(python -m sai.runtime.build_ort_ops) or load with fused=False") from None
        providers = providers_for(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:
            raise SaiError(f"onnxruntime cannot load {path}: {first_line(exc)[:300]}") from None
        self.metadata = read_session_metadata(self.session)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [*OUTPUT_NAMES, *extra_outputs]
        self.path = path

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        try:
            values = self.session.run(self.output_names, feeds)
        except Exception as exc:
            raise SaiError(f"onnxruntime inference failed: {first_line(exc)[:300]}") from None
        return dict(zip(self.output_names, values, strict=True))

    def close(self) -> None:
        self.session = None


class _TorchRunner:
    """``sai.models.SaiDetector`` (fused backbone: the sai kernels) on the same padded batches."""

    def __init__(self, detector, *, device: str, threads: Optional[int], record_masks: bool = False):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise SaiError(f"torch device must be cpu or cuda[:N], got {device!r}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise SaiError("torch has no CUDA device here; use device='cpu' (this torch build is CPU-only)")
        self.torch = torch
        self.detector = detector.to(device)
        self.device = device
        self.noise_names = [n for n, _ in getattr(detector.backbone, "noise_specs", lambda: [])()]
        self._masks: dict[str, Any] = {}
        self._handle = None
        if record_masks and hasattr(detector.backbone, "add_mask_observer"):
            self._handle = detector.backbone.add_mask_observer(self._observe)

    def _observe(self, block: str, which: str, mask) -> None:
        self._masks[f"mask.{block}.{which}"] = mask.detach().float().cpu().numpy()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(feeds["input"]).to(self.device)
        noise = [torch.from_numpy(feeds[n]).to(self.device) for n in self.noise_names]
        shapes = [(int(h), int(w)) for h, w in feeds["img_shape"]]
        scales = [float(s) for s in feeds["scale_factor"]]
        self._masks.clear()
        try:
            with torch.no_grad():
                d, lab, n = self.detector(x, shapes, scales, *noise)
        except SaiError:
            raise
        except RuntimeError as exc:
            raise SaiError(f"torch inference failed: {first_line(exc)[:300]}") from None
        out = {"dets": d.float().cpu().numpy(), "labels": lab.cpu().numpy(), "num_dets": n.cpu().numpy()}
        out.update(self._masks)
        self._masks.clear()
        return out

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self.detector = None


# ----------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------


class DetectorEngine:
    """Images in, detections out (module docstring). ``infer(images, layout=None)`` ->
    ``{"dets" [N, K, 5] float32, "labels" [N, K] int64, "num_dets" [N] int64}``; ``classes`` names label i."""

    kind = KIND

    def __init__(self, runner, *, backend: str, variant: str, preprocessing: Mapping[str, Any], metadata: dict,
                 classes: Optional[Sequence[str]], max_per_img: int, noise_inputs: Sequence, path: Optional[str],
                 device: str, seed: Optional[int] = None):
        self._runner = runner
        self.backend, self.variant, self.device, self.path = backend, variant, device, path
        self.preprocessing = dict(preprocessing)
        self.metadata = dict(metadata)
        self.classes = list(classes) if classes else None
        self.max_per_img = int(max_per_img)
        self.noise_inputs = [(str(n), int(s)) for n, s in noise_inputs]
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._closed = False

    # what the graph takes ------------------------------------------------------------------------
    def batches(self, images: Any, layout: Optional[str] = None) -> list[tuple[list[int], dict[str, np.ndarray]]]:
        """The preprocessed images grouped by padded size: ``[(image indices, feeds)]``; the feeds are the
        graph's inputs (``input``, ``img_shape``, ``scale_factor``, noise drawn from the engine's seed)."""
        metas = preprocess(images, self.preprocessing, layout)
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(metas):
            groups.setdefault(m["img"].shape, []).append(i)
        out = []
        for idx in groups.values():
            feeds = {"input": np.stack([metas[i]["img"] for i in idx]),
                     "img_shape": np.array([metas[i]["img_shape"] for i in idx], np.int64),
                     "scale_factor": np.array([metas[i]["scale_factor"] for i in idx], np.float32)}
            feeds.update(self.noise_for(feeds["input"].shape))
            out.append((idx, feeds))
        return out

    def noise_for(self, input_shape: Sequence[int]) -> dict[str, np.ndarray]:
        """Uniform noise for every noise input (stochastic sampling) at ``input_shape``; empty otherwise."""
        return {n: self._rng.random(noise_shape(input_shape, s), dtype=np.float32) for n, s in self.noise_inputs}

    def run_batch(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One padded batch as the graph takes it (``batches``' feeds) -> the graph's outputs (plus the sampling
        masks ``mask.<block>.m{1,2}`` where the engine was loaded to record them)."""
        if self._closed:
            raise SaiError(f"{self.backend} detector engine is closed; load the model again (sai.runtime.load)")
        with self._lock:
            out = self._runner.run(dict(feeds))
        out["dets"] = np.asarray(out["dets"], np.float32)
        out["labels"] = np.asarray(out["labels"], np.int64)
        out["num_dets"] = np.asarray(out["num_dets"], np.int64)
        return out

    def infer(self, images: Any, *, layout: Optional[str] = None) -> dict[str, np.ndarray]:
        """uint8 RGB images (NHWC or NCHW; a batch, one image, or a list of any sizes) -> ``dets [N, K, 5]``
        (x1, y1, x2, y2, score in the original image's pixels; by score, zero padded), ``labels [N, K]``
        (0-based, -1 padded), ``num_dets [N]``."""
        groups = self.batches(images, layout)
        n = sum(len(idx) for idx, _ in groups)
        k = self.max_per_img
        dets = np.zeros((n, k, 5), np.float32)
        labels = np.full((n, k), -1, np.int64)
        num = np.zeros(n, np.int64)
        for idx, feeds in groups:
            out = self.run_batch(feeds)
            for j, i in enumerate(idx):
                dets[i], labels[i], num[i] = out["dets"][j], out["labels"][j], out["num_dets"][j]
        return {"dets": dets, "labels": labels, "num_dets": num}

    def detections(self, images: Any, *, layout: Optional[str] = None, score_thr: float = 0.0) -> list[list[dict]]:
        """Per image, ``{"box", "score", "label", "class"}`` of each detection scoring above ``score_thr``."""
        out = self.infer(images, layout=layout)
        res = []
        for d, lab, n in zip(out["dets"], out["labels"], out["num_dets"], strict=True):
            res.append([{"box": [float(v) for v in d[j, :4]], "score": float(d[j, 4]), "label": int(lab[j]),
                         "class": self.classes[int(lab[j])] if self.classes and 0 <= lab[j] < len(self.classes)
                         else None} for j in range(int(n)) if d[j, 4] > score_thr])
        return res

    def describe(self) -> dict:
        return {"kind": KIND, "backend": self.backend, "variant": self.variant, "device": self.device,
                "path": self.path, "preprocessing": self.preprocessing, "outputs": list(OUTPUT_NAMES),
                "max_per_img": self.max_per_img, "noise_inputs": [list(n) for n in self.noise_inputs],
                "classes": len(self.classes) if self.classes else None, "preset": self.metadata.get("preset"),
                "sampling": self.metadata.get("sampling")}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._runner.close()

    def __enter__(self) -> DetectorEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DetectorEngine {self.backend}/{self.variant}/{self.device} {self.path}>"


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------


def is_detector_manifest(manifest: Optional[Mapping]) -> bool:
    return isinstance(manifest, Mapping) and manifest.get("kind") == KIND


def config_of(manifest: Mapping, where: str):
    """The ``DetectorConfig`` a detector manifest records (its ``config`` fields, or the preset's name)."""
    from dataclasses import fields

    from sai.models.detector_presets import DetectorConfig, preset

    rec = manifest.get("config")
    if isinstance(rec, Mapping):
        names = {f.name for f in fields(DetectorConfig)}
        unknown = sorted(set(rec) - names)
        if unknown:
            raise SaiError(f"{where} records detector config fields this sai does not know ({', '.join(unknown)}); "
                           "re-run sai convert with this sai")
        vals = {k: (tuple(v) if isinstance(v, list) else v) for k, v in rec.items()}
        try:
            return DetectorConfig(**vals)
        except TypeError as exc:
            raise SaiError(f"{where}: its detector config does not build ({exc}); re-run sai convert") from None
    return preset(str(manifest.get("preset")))


def _library_for(fused_file: Optional[Path]) -> tuple[Optional[Path], str]:
    """The library for the fused file, or (None, why it cannot run)."""
    from sai.runtime.ort_ops import LIBRARY_NAME, find_library

    if fused_file is None:
        return None, "the OUTDIR has no fused CPU model (no sparse block matched the fused kernel)"
    lib, why = find_library()
    if lib is None:
        return None, f"{why}; {fused_file.name} needs {LIBRARY_NAME}"
    return lib, ""


def _rename_outputs(path: Path, names: Sequence[str]) -> None:
    """Rename ``mask.backbone.<block>.mK`` outputs (the exported graph's node names) to ``mask.<block>.mK`` (the
    torch mask observer's block names), in place."""
    import onnx

    model = onnx.load(str(path))
    want = {n.replace("mask.", "mask.backbone.", 1): n for n in names}
    for node in model.graph.node:
        node.output[:] = [want.get(o, o) for o in node.output]
    for out in model.graph.output:
        out.name = want.get(out.name, out.name)
    onnx.save(model, str(path))


def load_detector_engine(outdir: Path, manifest: Mapping, backend: str, *, device: Optional[str] = None,
                         seed: Optional[int] = None, threads: Optional[int] = None, fused: Optional[bool] = None,
                         checkpoint=None, record_masks: bool = False) -> DetectorEngine:
    """The engine of a detector OUTDIR. ``backend``: ``onnxruntime`` (``fused``: None = ``model.cpu-fused.onnx``
    with libsai_ort_ops.so where both exist and the device is the CPU, else the portable ``model.onnx``; True
    = the fused one or a SaiError saying why not; False = the portable one) or ``torch`` (the recorded
    checkpoint, or ``checkpoint``, on ``sai.models.SaiDetector``). ``record_masks``: ``run_batch`` also returns the
    backbone's sampling masks ``mask.<block>.m{1,2}`` (torch: the mask observer; the portable ONNX: a copy with the
    masks as outputs; the fused model computes them inside its blocks and returns none)."""
    from sai.runtime.outdir import FUSED_ONNX_NAME, MANIFEST_NAME, ONNX_NAME

    outdir = Path(outdir)
    where = str(outdir / MANIFEST_NAME)
    pre = check_preprocessing(manifest.get("preprocessing"), where)
    classes = manifest.get("classes")
    meta = dict(manifest.get("metadata") or {})
    noise = meta.get("noise_inputs") or []
    k = int(meta.get("max_per_img") or 100)
    if backend == "onnxruntime":
        device = device or "cpu"
        entry = manifest.get("fused") or {}
        fused_file = outdir / FUSED_ONNX_NAME if entry.get("file") == FUSED_ONNX_NAME and \
            (outdir / FUSED_ONNX_NAME).is_file() else None
        lib, why = _library_for(fused_file)
        if fused and (lib is None or device != "cpu"):
            raise SaiError(f"the fused CPU detector cannot run here: {why or f'device {device} (CPU kernels only)'}; "
                           "load with fused=False for the portable model.onnx")
        use = bool(lib is not None and device == "cpu" and fused is not False)
        path = fused_file if use else outdir / ONNX_NAME
        if not path.is_file():
            raise SaiError(f"{outdir} has no {ONNX_NAME}; re-run sai convert")
        extra: list[str] = []
        if record_masks and not use:
            import tempfile

            from sai.runtime.onnx_masks import onnx_with_masks

            with tempfile.TemporaryDirectory(prefix="sai-detector-masks-") as tmp:
                masked = Path(tmp) / "model.masks.onnx"
                extra = [n.replace("mask.backbone.", "mask.", 1) for n in onnx_with_masks(path, masked)]
                _rename_outputs(masked, extra)
                runner = _OrtRunner(masked, fused=False, library=None, device=device, threads=threads,
                                    extra_outputs=extra)
        else:
            runner = _OrtRunner(path, fused=use, library=lib, device=device, threads=threads)
        variant = "fused" if use else "portable"
        return DetectorEngine(runner, backend="onnxruntime", variant=variant, preprocessing=pre, metadata=meta,
                              classes=classes, max_per_img=k, noise_inputs=noise, path=str(path), device=device,
                              seed=seed)
    if backend == "torch":
        from sai.models.detector import load_detector
        from sai.runtime.outdir import checkpoint_of

        cfg = config_of(manifest, where)
        ck = Path(checkpoint) if checkpoint is not None else checkpoint_of(manifest, outdir)
        overrides = {}
        if cfg.sparse and meta.get("sampling") in ("deterministic", "stochastic", "dense"):
            overrides["sampling"] = meta["sampling"]
        det = load_detector(cfg, str(ck), fuse=True, **overrides)
        runner = _TorchRunner(det, device=device or "cpu", threads=threads, record_masks=record_masks)
        return DetectorEngine(runner, backend="torch", variant="sai-kernels", preprocessing=pre, metadata=meta,
                              classes=classes, max_per_img=k, noise_inputs=noise, path=str(ck),
                              device=device or "cpu", seed=seed)
    raise SaiError(f"the {backend} backend does not run detectors yet; use backend='onnxruntime' or 'torch' "
                   "(the detector's TensorRT engine is not built by sai convert)")
