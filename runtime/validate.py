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

from sai.constants import DOMAIN, SPARSE_SAMPLE_CONV
from sai.errors import SaiError
from sai.runtime.engine import Engine

MASK_PREFIX = "mask."


# ----------------------------------------------------------------------------------------------
# masks as outputs
# ----------------------------------------------------------------------------------------------


def load_checked_onnx(src: Path):
    """The ONNX model at ``src``; SaiError when it is unreadable or any weight holds NaN or inf (such a model
    gives garbage on every backend, and the backends may agree on it, so validate refuses it outright)."""
    import onnx

    from sai.exporter.export import nonfinite_weights

    try:
        model = onnx.load(str(src))
    except Exception as exc:  # protobuf DecodeError on a truncated file, OSError, ...
        detail = " ".join(str(exc).split())[:160]
        raise SaiError(f"{src} is not a readable ONNX model ({type(exc).__name__}: {detail}); re-run sai convert") from None
    bad = nonfinite_weights(model)
    if bad:
        raise SaiError(f"{src} holds non-finite weights: {'; '.join(bad)}{' ...' if len(bad) == 3 else ''}; its "
                       "outputs are garbage: convert the checkpoint again with this sai (which refuses such weights) "
                       "or use an earlier checkpoint")
    return model


def onnx_with_masks(src: Path, dest: Path) -> list[str]:
    """Copy ``src`` to ``dest`` with one extra output per sampling mask: ``mask.<block>.m1`` (the mask of
    the block's first SparseSampleConv) and ``mask.<block>.m2`` (its second). Returns the names."""
    import onnx
    from onnx import TensorProto, helper

    model = load_checked_onnx(src)
    per_block: dict[str, list[str]] = OrderedDict()
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == SPARSE_SAMPLE_CONV and "/" in node.name:
            block = node.name.split("/")[0]
            per_block.setdefault(block, []).append(node.input[1])
    names = []
    elem = TensorProto.FLOAT
    for block, masks in per_block.items():
        for idx, tensor in enumerate(masks[:2], 1):
            name = f"{MASK_PREFIX}{block}.m{idx}"
            model.graph.node.append(helper.make_node("Cast", [tensor], [name], to=elem, name=f"sai_validate/{name}"))
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            names.append(name)
    onnx.save(model, str(dest))
    return names


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
