"""Cross-backend validation with Polygraphy's ``Comparator``: the same inputs (image and, for stochastic
models, the same noise) through every backend, per-output tolerances, and the agreement of the sampling
masks (where each backend computes positions: ``M > 0``), which explains fp16/stochastic differences.

Backends run as custom Polygraphy runners wrapping ``sai.runtime`` engines (Polygraphy's own PyTorch
runner needs CUDA). Masks come from extra graph outputs on the ONNX side (the mask input of every
``SparseSampleConv``) and from the model's mask observer on the torch side.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sai.errors import SaiError
from sai.runtime.engine import Engine
from sai.runtime.onnx_masks import MASK_PREFIX, load_checked_onnx, onnx_with_masks


class TorchMasksEngine:
    """A TorchEngine whose ``infer`` also returns each sparse block's masks as ``mask.<block>.m{1,2}``,
    taken through the model's mask observer (``SaiResNet.add_mask_observer``); everything else is the
    wrapped engine's. ``close`` removes the observer and closes the engine."""

    def __init__(self, engine):
        import threading

        self._engine = engine
        self._recorded: dict[str, Any] = {}
        self._lock = threading.Lock()  # one forward's masks at a time
        self._handle = engine.model.add_mask_observer(self._observe)
        self.mask_names = [f"{MASK_PREFIX}{n}.{w}" for n in self._handle.names for w in ("m1", "m2")]

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _observe(self, block: str, which: str, mask) -> None:
        self._recorded[f"{MASK_PREFIX}{block}.{which}"] = mask

    def infer(self, feeds, **options) -> dict[str, np.ndarray]:
        with self._lock:
            self._recorded.clear()
            out = self._engine.infer(feeds, **options)
            out.update({k: v.detach().float().cpu().numpy() for k, v in self._recorded.items()})
            self._recorded.clear()
        return out

    def close(self) -> None:
        self._handle.remove()
        self._engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_torch_masks(engine) -> TorchMasksEngine:
    """``engine`` (a TorchEngine) returning its sparse blocks' (m1, m2) as extra outputs ``mask.<block>.m{1,2}``
    (``.mask_names``; empty for a dense model)."""
    return TorchMasksEngine(engine)


# ----------------------------------------------------------------------------------------------
# Polygraphy runner
# ----------------------------------------------------------------------------------------------


def make_runner(engine: Engine, name: str):
    """A Polygraphy runner over a sai engine; mask outputs are kept aside in ``runner.masks``."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class EngineRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name)
            self.engine = engine
            self.masks: list[dict[str, np.ndarray]] = []
            self.nonfinite: list[dict[str, tuple[int, int]]] = []  # per iteration: output -> (NaN/inf values, size)

        def activate_impl(self):
            pass

        def deactivate_impl(self):
            pass

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for spec in engine.inputs:
                meta.add(spec.name, np.dtype(spec.dtype), [d if isinstance(d, int) else -1 for d in spec.shape])
            return meta

        def infer_impl(self, feed_dict):
            t = time.perf_counter()
            out = engine.infer(dict(feed_dict))
            self.inference_time = time.perf_counter() - t
            self.masks.append({k: v for k, v in out.items() if k.startswith(MASK_PREFIX)})
            outs = OrderedDict((k, v) for k, v in out.items() if not k.startswith(MASK_PREFIX))
            self.nonfinite.append({k: (int(v.size - np.isfinite(v).sum()), int(v.size)) for k, v in outs.items()
                                   if v.dtype.kind == "f" and not np.isfinite(v).all()})
            return outs

    return EngineRunner()


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


@dataclass
class Report:
    backends: list[str]
    inputs: list[list[int]]
    atol: dict[str, float]
    rtol: dict[str, float]
    outputs: list[dict] = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)
    nonfinite: list[dict] = field(default_factory=list)  # outputs holding NaN/inf: each one fails the validation
    mask_threshold: float = 0.999
    passed: bool = False
    densities: dict = field(default_factory=dict)  # see sampling_densities / exported_densities
    warnings: list[str] = field(default_factory=list)  # e.g. dense masks (``dense_mask_warning``)

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    def text(self) -> str:
        lines = [f"validate: {' vs '.join(self.backends)} on inputs {self.inputs}"]
        for o in self.outputs:
            mark = "PASS" if o["passed"] else "FAIL"
            lines.append(f"  {mark} {o['pair']} iter {o['iteration']} {o['output']}: max abs {o['max_abs']:.3g} "
                         f"max rel {o['max_rel']:.3g} mean abs {o['mean_abs']:.3g} (atol {o['atol']:g}, "
                         f"rtol {o['rtol']:g})")
        for o in self.nonfinite:
            lines.append(f"  FAIL {o['backend']} iter {o['iteration']} {o['output']}: {o['count']} of {o['size']} "
                         "values are NaN or inf (non-finite weights or an overflow in the model)")
        if self.masks:
            worst = min(self.masks, key=lambda m: m["agreement"])
            bad = [m for m in self.masks if not m["passed"]]
            lines.append(f"  masks: {len(self.masks)} compared, worst agreement {worst['agreement']:.4f} "
                         f"({worst['pair']} {worst['mask']}), threshold {self.mask_threshold}")
            for m in bad[:10]:
                lines.append(f"  FAIL {m['pair']} iter {m['iteration']} {m['mask']}: {m['agreement']:.4f} of positions "
                             f"agree on M > 0 ({m['disagree']} differ)")
        lines += densities_text(self.densities)
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines.append("validate: PASSED" if self.passed else "validate: FAILED")
        return "\n".join(lines)


OFFICIAL_SAMPLING_NOTE = ("official SAI-Det evaluation is stochastic (Gumbel noise at test time, T=0.03, unseeded); "
                          "sai's default sampling is deterministic (noise-free)")


def densities_text(dens: dict) -> list[str]:
    """Report lines for ``Report.densities``: mean (d1, d2) per mode, the official sampling note."""
    if not dens:
        return []
    parts = []
    exp = dens.get("exported")
    if exp:
        parts.append(f"exported model ({exp['sampling']}, {exp['backend']} masks) {exp['mean'][0]:.4f}/{exp['mean'][1]:.4f}")
    for mode in ("deterministic", "stochastic"):
        d = dens.get(mode)
        if d:
            label = mode if mode == "deterministic" else f"stochastic seed {d['seed']}"
            parts.append(f"torch {label} {d['mean'][0]:.4f}/{d['mean'][1]:.4f}")
    lines = ["  densities (mean d1/d2 over blocks, per-forward average as the official counters): " + "; ".join(parts)]
    if dens.get("note"):
        lines.append(f"  note: {dens['note']}")
    return lines


DENSE = 0.99  # a mean density (d1 and d2) at or above this: (about) every position is computed


def dense_mask_warning(dens: dict) -> Optional[str]:
    """A warning when the mean densities (d1 and d2) are about 1.0: the model computes every position, so it runs
    no faster than dense and agreement says nothing about the sparse path. Judged on the exported model's masks
    (the mode that runs) where they were recorded, else on every torch sampling mode. None when fewer positions
    are sampled or nothing was measured."""
    modes = {k: v["mean"] for k, v in dens.items() if isinstance(v, dict) and "mean" in v}
    if "exported" in modes:
        modes = {"exported": modes["exported"]}
    if not modes or any(min(m) < DENSE for m in modes.values()):
        return None
    vals = "; ".join(f"{k} {m[0]:.4f}/{m[1]:.4f}" for k, m in modes.items())
    return (f"the masks are dense (mean densities {vals}): every position is computed, so the sparse saving will "
            "not show and the sparse path is not exercised; is the checkpoint trained (a random-initialised one "
            "samples everything)? Validate a trained checkpoint, or give real inputs (--images / --load-inputs)")


def _mean_pairs(blocks: dict) -> list[float]:
    vals = list(blocks.values())
    return [sum(v[0] for v in vals) / len(vals), sum(v[1] for v in vals) / len(vals)] if vals else [0.0, 0.0]


def exported_densities(masks: Sequence[dict]) -> dict:
    """Per-block ``[d1, d2]`` from a runner's recorded ``mask.<block>.m{1,2}`` outputs: each forward's
    fraction of ``M > 0`` over its whole batch, averaged over forwards (the official counter)."""
    sums: dict[str, list[float]] = OrderedDict()
    for it in masks:
        for name, arr in it.items():
            block, idx = name[len(MASK_PREFIX):].rsplit(".m", 1)
            sums.setdefault(block, [0.0, 0.0])[int(idx) - 1] += float((np.asarray(arr) > 0).mean())
    n = max(len(masks), 1)
    return OrderedDict((b, [v[0] / n, v[1] / n]) for b, v in sums.items())


def sampling_densities(model, images: Sequence[np.ndarray], seed: int = 0) -> dict:
    """Per-block and mean ``[d1, d2]`` of a sparse ``SaiResNet`` (fused or not) on ``images`` in
    deterministic and in stochastic sampling (noise drawn from ``seed``), averaged per forward as the
    official counters. The model's sampling mode, noise generator and density counters are restored."""
    import torch

    from sai.models import set_sampling

    old_mode, src = model.sampling, model.noise_source
    old_seed, old_gen = src.seed, src.generator
    device = next(model.parameters()).device
    out: dict = {}
    try:
        for mode in ("deterministic", "stochastic"):
            set_sampling(model, mode)
            model.reseed(seed)
            model.reset_densities()
            with torch.no_grad():
                for x in images:
                    model(torch.as_tensor(np.asarray(x, dtype=np.float32), device=device))
            blocks = OrderedDict((k, list(v)) for k, v in model.densities().items())
            out[mode] = {"mean": _mean_pairs(blocks), "blocks": blocks}
        out["stochastic"]["seed"] = seed
    finally:
        set_sampling(model, old_mode)
        src.seed, src.generator = old_seed, old_gen
        model.reset_densities()
    return out


def parse_tolerances(values: Optional[Sequence[str]], default: float, what: str) -> dict[str, float]:
    """Polygraphy style: ``1e-4`` (all outputs) and/or ``NAME:1e-3`` (one output). ``""`` is the default."""
    out = {"": float(default)}
    for item in values or []:
        name, _, val = item.rpartition(":")
        try:
            out[name] = float(val)
        except ValueError:
            raise SaiError(f"{what} must be a number or NAME:NUMBER, got {item!r}") from None
    return out


def _densities(engines: dict[str, Engine], runners: list, feeds_list: Sequence[dict], seed: int) -> dict:
    """``Report.densities``: the exported mode's (from the first runner with masks) and, where a torch
    engine holds a sparse model, both sampling modes' from the checkpoint."""
    out: dict = {}
    runner = next((r for r in runners if any(r.masks)), None)
    if runner is not None:
        blocks = exported_densities(runner.masks)
        sampling = next((e.metadata.get("sampling") for e in engines.values() if e.metadata.get("sampling")), "?")
        out["exported"] = {"sampling": sampling, "backend": runner.name, "mean": _mean_pairs(blocks),
                           "blocks": blocks}
    model = getattr(engines.get("torch"), "model", None)
    if model is not None and getattr(model, "is_sparse", False):
        out.update(sampling_densities(model, [f["input"] for f in feeds_list if "input" in f], seed))
    if out:
        out["note"] = OFFICIAL_SAMPLING_NOTE
    return out


def validate(engines: dict[str, Engine], feeds_list: Sequence[dict], *, atol: dict[str, float],
             rtol: dict[str, float], mask_threshold: float = 0.999, density_seed: int = 0) -> Report:
    """Run ``feeds_list`` through every engine with Polygraphy and compare each engine with the first.

    The report also carries mask densities (``Report.densities``): the exported mode's, and with a torch
    engine both the deterministic and the stochastic (noise seeded by ``density_seed``) ones, since the
    official SAI-Det evaluation is stochastic while sai's default is deterministic."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    if len(engines) < 2:
        raise SaiError(f"validate needs at least two backends, got {', '.join(engines) or 'none'}")
    runners = [make_runner(e, n) for n, e in engines.items()]
    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        results = Comparator.run(runners, data_loader=list(feeds_list))
        (acc,) = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol,
                                                                                      check_shapes=True))
    finally:
        G_LOGGER.module_severity = old
    report = Report(backends=list(engines), inputs=[list(next(iter(f.values())).shape) for f in feeds_list],
                    atol=atol, rtol=rtol, mask_threshold=mask_threshold)
    for (r0, r1), iterations in acc.items():
        pair = f"{r0} vs {r1}"
        for it, iter_result in enumerate(iterations):
            for out_name, res in iter_result.items():
                tol = (atol.get(out_name, atol[""]), rtol.get(out_name, rtol[""]))
                report.outputs.append({
                    "pair": pair, "iteration": it, "output": out_name, "passed": bool(res),
                    "max_abs": float(res.max_absdiff), "max_rel": float(res.max_reldiff),
                    "mean_abs": float(res.mean_absdiff), "atol": tol[0], "rtol": tol[1]})
    ref = runners[0]
    for other in runners[1:]:
        for it, (ma, mb) in enumerate(zip(ref.masks, other.masks, strict=False)):
            for name in sorted(set(ma) & set(mb)):
                a, b = ma[name] > 0, mb[name] > 0
                if a.shape != b.shape:
                    agree, differ = 0.0, -1
                else:
                    differ = int((a != b).sum())
                    agree = 1.0 - differ / max(a.size, 1)
                report.masks.append({"pair": f"{ref.name} vs {other.name}", "iteration": it, "mask": name,
                                     "agreement": agree, "disagree": differ, "passed": agree >= mask_threshold})
    for runner in runners:
        for it, counts in enumerate(runner.nonfinite):
            for out_name, (count, size) in counts.items():
                report.nonfinite.append({"backend": runner.name, "iteration": it, "output": out_name, "count": count,
                                         "size": size})
    report.densities = _densities(engines, runners, feeds_list, density_seed)
    dense = dense_mask_warning(report.densities)
    if dense:
        report.warnings.append(dense)
    outputs_ok = bool(report.outputs) and all(o["passed"] for o in report.outputs) and not report.nonfinite
    report.passed = bool(acc) and outputs_ok and all(m["passed"] for m in report.masks)
    return report


def load_backends(model, backends: Sequence[str], *, checkpoint=None, masks: bool = True,
                  threads: Optional[int] = None, verify: bool = True) -> tuple[dict[str, Engine], list[str]]:
    """Engines for the requested backends (``auto``: every available one). Returns (engines, skipped lines).
    ``verify``: check an OUTDIR's files (and the checkpoint it records) against its manifest first."""
    import sai.runtime as rt
    from sai.runtime.environment import tensorrt_usable
    from sai.runtime.integrity import verify_checkpoint
    from sai.runtime.loader import PLAN_NAME, read_manifest, verify_model_path

    p = Path(model)
    if verify:
        verify_model_path(p)
    outdir = p if p.is_dir() else p.parent
    manifest = read_manifest(outdir) if (outdir / "manifest.json").is_file() else None
    onnx_file = p / "model.onnx" if p.is_dir() else p
    if checkpoint is None and manifest:
        ck = (manifest.get("checkpoint") or {}).get("path")
        checkpoint = ck if ck and Path(ck).is_file() else None
        if checkpoint and verify:
            verify_checkpoint(manifest, Path(checkpoint), outdir)
    wanted = list(backends)
    skipped = []
    if wanted == ["auto"]:
        wanted = []
        if checkpoint:
            wanted.append("torch")
        else:
            skipped.append("torch: no checkpoint (pass --checkpoint)")
        wanted.append("onnxruntime")
        if (outdir / PLAN_NAME).is_file() and tensorrt_usable():
            wanted.append("tensorrt")
        else:
            skipped.append("tensorrt: no model.plan or no TensorRT here")
    engines: dict[str, Engine] = {}
    sampling = ((manifest or {}).get("metadata") or {}).get("sampling")
    for b in wanted:
        if b == "torch":
            if not checkpoint:
                raise SaiError("the torch backend needs the checkpoint: pass --checkpoint")
            engine = rt.load(checkpoint, backend="torch", threads=threads, verify=False,
                             sampling=sampling if sampling in ("deterministic", "stochastic") else None)
            if masks:
                engine = record_torch_masks(engine)
        elif b == "onnxruntime":
            if not onnx_file.is_file() or onnx_file.suffix != ".onnx":
                raise SaiError(f"no ONNX model at {onnx_file}")
            if masks:  # a copy with the masks as outputs; onnxruntime reads it at load, so it goes right after
                import warnings

                from sai.outputs import tempdir

                with tempdir("sai-validate-") as tmp, warnings.catch_warnings():
                    if (manifest or {}).get("metadata"):  # lost metadata is restored from it below
                        warnings.simplefilter("ignore")
                    onnx_with_masks(onnx_file, tmp / "model.masks.onnx")
                    engine = rt.load(tmp / "model.masks.onnx", backend="onnxruntime", threads=threads, verify=False)
            else:
                load_checked_onnx(onnx_file)
                engine = rt.load(onnx_file, backend="onnxruntime", threads=threads, verify=False)
            if engine.metadata.get("sampling") and sampling is None:
                sampling = engine.metadata["sampling"]
        elif b == "tensorrt":
            if onnx_file.is_file() and "onnxruntime" not in wanted:  # the engine's weights came from it
                load_checked_onnx(onnx_file)
            engine = rt.load(outdir, backend="tensorrt", verify=False)
        else:
            raise SaiError(f"unknown backend {b!r}; use torch, onnxruntime, tensorrt")
        engines[b] = engine
    meta = (manifest or {}).get("metadata") or {}
    ort = engines.get("onnxruntime")
    if ort is not None and not ort.metadata and meta:  # a sanitized ONNX (metadata_props dropped): the manifest's
        from sai.runtime.loader import restore_metadata

        restore_metadata(ort, meta)
    example = meta.get("example_input_shape")
    for engine in engines.values():  # one input size for every backend (torch has no export metadata)
        if example and not engine.metadata.get("example_input_shape"):
            engine.metadata["example_input_shape"] = example
    return engines, skipped


# ----------------------------------------------------------------------------------------------
# real inputs: Polygraphy's input JSON, image folders
# ----------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_input_feeds(path, engine: Engine) -> list[dict]:
    """The feeds of a Polygraphy input file (``polygraphy run --save-inputs`` / ``--load-inputs``: a JSON list
    of {name: array}), read with Polygraphy's own loader; every name must be a model input. Noise inputs the file
    leaves out are drawn by the caller (``Engine.noise_for``)."""
    from polygraphy.json import load_json

    p = Path(path)
    if not p.is_file():
        raise SaiError(f"--load-inputs {p} does not exist; give a file written by polygraphy run --save-inputs")
    try:
        data = load_json(str(p), description="input data")
    except Exception as exc:  # polygraphy raises its own PolygraphyException and json/KeyError for bad files
        raise SaiError(f"--load-inputs {p} is not a Polygraphy input file ({type(exc).__name__}: "
                       f"{str(exc)[:200]}); write one with polygraphy run --save-inputs") from None
    if isinstance(data, Mapping):
        data = [data]
    names = {s.name for s in engine.inputs}
    feeds = []
    for i, item in enumerate(data if isinstance(data, Sequence) else []):
        if not isinstance(item, Mapping) or not item:
            raise SaiError(f"--load-inputs {p}: entry {i} is not a {{name: array}} feed dict")
        unknown = sorted(set(item) - names)
        if unknown:
            raise SaiError(f"--load-inputs {p}: entry {i} names {unknown}, which the model does not take "
                           f"(its inputs: {sorted(names)})")
        feeds.append({str(k): np.asarray(v) for k, v in item.items()})
    if not feeds:
        raise SaiError(f"--load-inputs {p} holds no feeds; it must be a JSON list of {{name: array}} dicts")
    return feeds


def load_image_batches(folder, engine: Engine, shape: Sequence[int]) -> list[dict]:
    """The PNG/JPEG files of ``folder`` (sorted by name) as feeds of the image input: each image RGB, resized
    to ``shape``'s H x W (bilinear) and normalised as the model's ``input_norm`` says (``sai.runtime.
    preprocess``), in batches of ``shape[0]`` (the last one may be smaller)."""
    from PIL import Image, UnidentifiedImageError

    from sai.runtime.preprocess import preprocess, usable_norm, why_not_applied

    d = Path(folder)
    if not d.is_dir():
        raise SaiError(f"--images {d} is not a folder; give a folder of .png/.jpg files")
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SaiError(f"--images {d} holds no .png/.jpg/.jpeg files")
    norm = usable_norm(engine.metadata.get("input_norm"))
    if norm is None:
        raise SaiError(f"--images cannot be normalised for this model ({why_not_applied(engine.metadata.get('input_norm'))}); "
                       "pass normalised float inputs with --load-inputs")
    n, c, h, w = (int(v) for v in shape)
    if c != 3:
        raise SaiError(f"--images gives RGB images, but the model takes {c} channels")
    pixels = []
    for f in files:
        try:
            with Image.open(f) as im:
                pixels.append(np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as exc:
            raise SaiError(f"--images: cannot read {f} ({str(exc)[:120]}); remove it or fix it") from None
    name = engine.primary_input.name
    batches = []
    for i in range(0, len(pixels), n):
        nhwc = np.stack(pixels[i:i + n])
        x = preprocess(nhwc, norm, c, layout="NHWC")
        batches.append({name: np.ascontiguousarray(x, dtype=np.float32)})
    return batches


# ----------------------------------------------------------------------------------------------
# detectors: runtimes compared by detections (sai.runtime.detector_engine)
# ----------------------------------------------------------------------------------------------

DETECTOR_IOU = 0.9  # a detection matches a reference one of the same label at this IoU (v0.6's +1 convention)
DETECTOR_SHARE = 0.9  # the share of the reference's detections that must match, per image


def box_iou_plus1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` in mmdetection v0.6's convention (a box covers x1..x2: width x2 - x1 + 1)."""
    a, b = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt + 1, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0] + 1) * (x[:, 3] - x[:, 1] + 1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def match_detections(dets, labels, ref_dets, ref_labels, iou: float = DETECTOR_IOU) -> dict:
    """One image: each reference detection (in score order) matched to the unused detection of its label with the
    highest IoU, when that IoU >= ``iou``. Returns ``matched``, ``reference``, ``count``, ``share`` (matched /
    reference; 1.0 when both are empty, 0.0 when only the reference is), ``max_box_err`` (px) and
    ``max_score_err`` over the matched pairs."""
    dets, ref_dets = np.asarray(dets, np.float64).reshape(-1, 5), np.asarray(ref_dets, np.float64).reshape(-1, 5)
    labels, ref_labels = np.asarray(labels).reshape(-1), np.asarray(ref_labels).reshape(-1)
    ious = box_iou_plus1(ref_dets, dets) if len(ref_dets) and len(dets) else np.zeros((len(ref_dets), len(dets)))
    used = np.zeros(len(dets), bool)
    box_err = score_err = 0.0
    hit = 0
    for r in np.argsort(-ref_dets[:, 4], kind="stable"):
        cand = np.where(~used & (labels == ref_labels[r]))[0]
        if not cand.size:
            continue
        j = cand[np.argmax(ious[r, cand])]
        if ious[r, j] >= iou:
            used[j] = True
            hit += 1
            box_err = max(box_err, float(np.abs(dets[j, :4] - ref_dets[r, :4]).max()))
            score_err = max(score_err, float(abs(dets[j, 4] - ref_dets[r, 4])))
    n_ref = len(ref_dets)
    share = hit / n_ref if n_ref else (1.0 if len(dets) == 0 else 0.0)
    return {"matched": hit, "reference": n_ref, "count": len(dets), "share": share, "max_box_err": box_err,
            "max_score_err": score_err}


@dataclass
class DetectorReport:
    backends: list[str]
    inputs: list[list[int]]
    iou: float
    min_share: float
    images: list[dict] = field(default_factory=list)  # per pair and image: match_detections + pair, image
    masks: list[dict] = field(default_factory=list)  # per pair and block: agreement of M > 0
    nonfinite: list[dict] = field(default_factory=list)
    densities: dict = field(default_factory=dict)
    mask_threshold: float = 0.999
    warnings: list[str] = field(default_factory=list)
    passed: bool = False

    def to_dict(self) -> dict:
        return {"kind": "detector", **self.__dict__}

    def text(self) -> str:
        lines = [f"validate (detector): {' vs '.join(self.backends)} on padded batches {self.inputs}; a detection "
                 f"matches by label at IoU >= {self.iou}, pass: >= {self.min_share:.0%} of the reference's per image"]
        pairs: dict[str, list[dict]] = OrderedDict()
        for r in self.images:
            pairs.setdefault(r["pair"], []).append(r)
        for pair, rows in pairs.items():
            ref = sum(r["reference"] for r in rows)
            hit = sum(r["matched"] for r in rows)
            worst = min(rows, key=lambda r: r["share"])
            ok = all(r["share"] >= self.min_share for r in rows)
            lines.append(f"  {'PASS' if ok else 'FAIL'} {pair}: {hit}/{ref} detections matched "
                         f"({hit / ref if ref else 1.0:.1%}; worst image {worst['image']} {worst['share']:.1%}), "
                         f"matched ones: box error <= {max(r['max_box_err'] for r in rows):.3g} px, score error <= "
                         f"{max(r['max_score_err'] for r in rows):.3g}; counts "
                         f"{[r['count'] for r in rows]} vs {[r['reference'] for r in rows]}")
        for o in self.nonfinite:
            lines.append(f"  FAIL {o['backend']} batch {o['iteration']} {o['output']}: {o['count']} NaN/inf values")
        if self.masks:
            by_pair: dict[str, list[dict]] = OrderedDict()
            for m in self.masks:
                by_pair.setdefault(m["pair"], []).append(m)
            for pair, rows in by_pair.items():
                worst = min(rows, key=lambda m: m["agreement"])
                below = sorted({m["mask"] for m in rows if m["agreement"] < self.mask_threshold})
                lines.append(f"  masks {pair}: {len(rows)} compared, worst agreement {worst['agreement']:.4f} "
                             f"({worst['mask']}); {len(below)} below {self.mask_threshold} (a position at the 0.5 "
                             "threshold flips with float rounding; judged by the detections)")
        lines += densities_text(self.densities)
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines.append("validate: PASSED" if self.passed else "validate: FAILED")
        return "\n".join(lines)


def load_detector_backends(outdir, manifest: dict, backends: Sequence[str], *, checkpoint=None, masks: bool = True,
                           threads: Optional[int] = None) -> tuple[dict, list[str]]:
    """Detector engines (``sai.runtime.detector_engine``) for ``backends``: ``auto`` = torch (where the checkpoint
    is there), onnxruntime (portable, masks recorded) and onnxruntime-fused (where the fused file and
    libsai_ort_ops.so exist). Returns (engines by name, skipped lines)."""
    from sai.runtime.detector_engine import _library_for, load_detector_engine
    from sai.runtime.outdir import FUSED_ONNX_NAME

    outdir = Path(outdir)
    ck = checkpoint or (manifest.get("checkpoint") or {}).get("path")
    has_ck = bool(ck) and Path(ck).is_file()
    fused_file = outdir / FUSED_ONNX_NAME if (outdir / FUSED_ONNX_NAME).is_file() else None
    lib, why_not = _library_for(fused_file)
    wanted, skipped = list(backends), []
    if wanted == ["auto"]:
        wanted = []
        if has_ck:
            wanted.append("torch")
        else:
            skipped.append("torch: the checkpoint recorded in the manifest is not there (pass --checkpoint)")
        wanted.append("onnxruntime")
        if lib is not None:
            wanted.append("onnxruntime-fused")
        else:
            skipped.append(f"onnxruntime-fused: {why_not}")
        skipped.append("tensorrt: the detector's TensorRT engine is not built by sai convert yet")
    engines: dict = {}
    try:
        for b in wanted:
            if b == "torch":
                if not has_ck:
                    raise SaiError("the torch backend needs the detector checkpoint: pass --checkpoint")
                engines[b] = load_detector_engine(outdir, manifest, "torch", threads=threads, checkpoint=ck,
                                                  record_masks=masks)
            elif b == "onnxruntime":
                load_checked_onnx(outdir / "model.onnx")
                engines[b] = load_detector_engine(outdir, manifest, "onnxruntime", threads=threads, fused=False,
                                                  record_masks=masks)
            elif b == "onnxruntime-fused":
                engines[b] = load_detector_engine(outdir, manifest, "onnxruntime", threads=threads, fused=True)
            else:
                raise SaiError(f"backend {b!r} does not run detectors; use torch, onnxruntime, onnxruntime-fused")
    except BaseException:
        for e in engines.values():
            e.close()
        raise
    return engines, skipped


def detector_image_feeds(engine, images: Sequence[np.ndarray]) -> list[dict]:
    """uint8 RGB images (any sizes) -> the graph's padded batches (``DetectorEngine.batches``, noise drawn once)."""
    return [feeds for _, feeds in engine.batches(list(images))]


def random_detector_images(n: int, seed: int, scale: Sequence[int]) -> list[np.ndarray]:
    """``n`` random uint8 RGB images of different sizes and aspect ratios around ``scale`` (long, short)."""
    rng = np.random.default_rng(seed)
    long_edge, short_edge = max(scale), min(scale)
    out = []
    for i in range(n):
        h = int(short_edge * rng.uniform(0.6, 1.2))
        w = int(long_edge * rng.uniform(0.6, 1.2))
        if i % 2:
            h, w = w, h
        out.append(rng.integers(0, 256, (max(h, 8), max(w, 8), 3), dtype=np.uint8))
    return out


def read_image_folder(folder) -> list[np.ndarray]:
    """The PNG/JPEG files of ``folder`` (sorted by name) as uint8 RGB arrays at their own sizes."""
    from PIL import Image, UnidentifiedImageError

    d = Path(folder)
    if not d.is_dir():
        raise SaiError(f"--images {d} is not a folder; give a folder of .png/.jpg files")
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SaiError(f"--images {d} holds no .png/.jpg/.jpeg files")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as exc:
            raise SaiError(f"--images: cannot read {f} ({str(exc)[:120]}); remove it or fix it") from None
    return out


def load_detector_input_feeds(path, engine) -> list[dict]:
    """Polygraphy input file feeds for the detector graph: each entry holds ``input`` (padded, normalised
    ``[N, 3, H, W]``), ``img_shape [N, 2]`` and ``scale_factor [N]`` (noise inputs drawn where left out)."""
    from polygraphy.json import load_json

    p = Path(path)
    if not p.is_file():
        raise SaiError(f"--load-inputs {p} does not exist; give a file written by polygraphy run --save-inputs")
    try:
        data = load_json(str(p), description="input data")
    except Exception as exc:
        raise SaiError(f"--load-inputs {p} is not a Polygraphy input file ({type(exc).__name__}: "
                       f"{str(exc)[:200]}); write one with polygraphy run --save-inputs") from None
    if isinstance(data, Mapping):
        data = [data]
    need = ("input", "img_shape", "scale_factor")
    allowed = set(need) | {n for n, _ in engine.noise_inputs}
    feeds = []
    for i, item in enumerate(data if isinstance(data, Sequence) else []):
        if not isinstance(item, Mapping) or any(k not in item for k in need):
            raise SaiError(f"--load-inputs {p}: entry {i} must hold {', '.join(need)} (the detector graph's inputs)")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise SaiError(f"--load-inputs {p}: entry {i} names {unknown}, which the detector does not take "
                           f"(its inputs: {sorted(allowed)})")
        f = {"input": np.ascontiguousarray(item["input"], np.float32),
             "img_shape": np.asarray(item["img_shape"], np.int64),
             "scale_factor": np.asarray(item["scale_factor"], np.float32)}
        x = f["input"]
        if x.ndim != 4 or x.shape[1] != 3 or f["img_shape"].shape != (x.shape[0], 2) or \
                f["scale_factor"].shape != (x.shape[0],):
            raise SaiError(f"--load-inputs {p}: entry {i} has input {list(x.shape)}, img_shape "
                           f"{list(f['img_shape'].shape)}, scale_factor {list(f['scale_factor'].shape)}; expected "
                           "[N, 3, H, W], [N, 2], [N]")
        if not np.isfinite(x).all():
            raise SaiError(f"--load-inputs {p}: entry {i}'s input holds NaN or inf; pass finite values")
        f.update({k: np.asarray(item[k], np.float32) for k in item if k not in need})
        f.update({k: v for k, v in engine.noise_for(x.shape).items() if k not in f})
        feeds.append(f)
    if not feeds:
        raise SaiError(f"--load-inputs {p} holds no feeds; it must be a JSON list of {{name: array}} dicts")
    return feeds


def validate_detector(engines: dict, feeds_list: Sequence[dict], *, iou: float = DETECTOR_IOU,
                      min_share: float = DETECTOR_SHARE, mask_threshold: float = 0.999) -> DetectorReport:
    """Every engine on the same padded batches (identical noise); each compared with the first by detections
    (``match_detections`` per image) and by the agreement of each block's masks (``M > 0``) where both record
    them. Passes when every image of every pair matches at least ``min_share`` of the reference's detections and
    no output holds NaN/inf; masks are reported (a warning when all are dense), not judged: a mask position at
    the threshold flips with float rounding and the detections say what that changes (docs/design.md 9)."""
    if len(engines) < 2:
        raise SaiError(f"validate needs at least two backends, got {', '.join(engines) or 'none'}")
    names = list(engines)
    report = DetectorReport(backends=names, inputs=[list(f["input"].shape) for f in feeds_list], iou=iou,
                            min_share=min_share, mask_threshold=mask_threshold)
    outs = {n: [engines[n].run_batch(f) for f in feeds_list] for n in names}
    ref = names[0]
    for name in names:
        for it, o in enumerate(outs[name]):
            bad = int(o["dets"].size - np.isfinite(o["dets"]).sum())
            if bad:
                report.nonfinite.append({"backend": name, "iteration": it, "output": "dets", "count": bad})
    for other in names[1:]:
        pair = f"{ref} vs {other}"
        image = 0
        for it, (a, b) in enumerate(zip(outs[ref], outs[other], strict=True)):
            for i in range(a["dets"].shape[0]):
                na, nb = int(a["num_dets"][i]), int(b["num_dets"][i])
                m = match_detections(b["dets"][i, :nb], b["labels"][i, :nb], a["dets"][i, :na], a["labels"][i, :na],
                                     iou)
                report.images.append({"pair": pair, "batch": it, "image": image, **m})
                image += 1
            for mask in sorted(k for k in a if k.startswith(MASK_PREFIX) and k in b):
                x, y = a[mask] > 0, b[mask] > 0
                differ = int((x != y).sum()) if x.shape == y.shape else -1
                agree = 1.0 - differ / max(x.size, 1) if differ >= 0 else 0.0
                report.masks.append({"pair": pair, "iteration": it, "mask": mask, "agreement": agree,
                                     "disagree": differ})
    rec = next((n for n in names if any(k.startswith(MASK_PREFIX) for k in outs[n][0])), None)
    if rec is not None:
        masks = [{k: v for k, v in o.items() if k.startswith(MASK_PREFIX)} for o in outs[rec]]
        blocks = exported_densities(masks)
        sampling = engines[rec].metadata.get("sampling", "?")
        report.densities = {"exported": {"sampling": sampling, "backend": rec, "mean": _mean_pairs(blocks),
                                         "blocks": blocks}, "note": OFFICIAL_SAMPLING_NOTE}
        dense = dense_mask_warning(report.densities)
        if dense:
            report.warnings.append(dense)
    report.passed = bool(report.images) and all(r["share"] >= min_share for r in report.images) \
        and not report.nonfinite
    return report
