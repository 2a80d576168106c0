"""Latency/throughput measurement of an Engine, and the dense twin of a sparse model (same weights)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sai.errors import SaiError
from sai.runtime.engine import Engine


@dataclass
class BenchResult:
    label: str
    backend: str
    device: str
    input_shape: list[int]
    iterations: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # images per second at the median latency

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (f"{self.label} {self.backend}/{self.device} input {self.input_shape}: p50 {self.p50_ms:.2f} ms  "
                f"p90 {self.p90_ms:.2f} ms  p99 {self.p99_ms:.2f} ms  mean {self.mean_ms:.2f} ms  "
                f"throughput {self.throughput:.1f} img/s ({self.iterations} iterations, {self.warmup} warmup)")


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "max_ms": float(a.max())}


def bench_feeds(engine: Engine, shape: Sequence[int], seed: int = 0) -> dict:
    """``engine.example_feeds(shape)`` after the checks that need no data, so a bad ``--batch``/``--shape`` is
    refused at once instead of after allocating and running it: the engine's batch range and shape profile
    (InputError/ProfileError), then the memory the inputs alone take (SaiError past half of what is available)."""
    from sai.exporter.export import available_memory
    from sai.runtime.engine import InputError, noise_shape

    shape = [int(v) for v in shape]
    n = shape[0]
    if n < engine.min_batch or (engine.max_batch is not None and n > engine.max_batch):
        hi = engine.max_batch if engine.max_batch is not None else "any"
        raise InputError(f"batch size {n} is outside the engine's profile [{engine.min_batch}, {hi}]; pass a "
                         "--batch within it")
    engine.check_profile(shape)
    itemsize = np.dtype(engine.primary_input.dtype).itemsize
    need = int(np.prod(shape, dtype=np.int64)) * itemsize
    need += sum(int(np.prod(noise_shape(shape, s), dtype=np.int64)) * 4 for _, s in engine.noise_inputs)
    have = available_memory()
    if have is not None and 2 * need > have:
        raise SaiError(f"input shape {shape} takes {need / 1e9:.1f} GB for the inputs alone (before any "
                       f"activation), more than half of the {have / 1e9:.1f} GB available; bench a smaller --batch "
                       "or --shape")
    return engine.example_feeds(shape, seed=seed)


def bench(engine: Engine, feeds: dict, *, iterations: int = 50, warmup: int = 5, label: str = "") -> BenchResult:
    """Time ``engine.infer(feeds)``: ``warmup`` untimed runs then ``iterations`` timed ones (noise, if any,
    is drawn per run as in serving)."""
    if iterations < 1 or warmup < 0:
        raise SaiError(f"need --iterations >= 1 and --warmup >= 0, got {iterations} and {warmup}")
    feeds = engine.check_feeds(feeds)
    noise = {n for n, _ in engine.noise_inputs}
    image = {k: v for k, v in feeds.items() if k not in noise}
    for _ in range(warmup):
        engine.infer(image)
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        engine.infer(image)
        samples.append((time.perf_counter() - t) * 1e3)
    stats = percentiles(samples)
    shape = list(feeds[engine.primary_input.name].shape)
    return BenchResult(label=label or str(engine.metadata.get("arch", "model")), backend=engine.backend,
                       device=engine.device, input_shape=shape, iterations=iterations, warmup=warmup,
                       throughput=shape[0] / (stats["p50_ms"] / 1e3), **stats)


def dense_twin_model(checkpoint):
    """``(model, arch)`` of ``sai.models.dense_twin(checkpoint)`` (a path or a checkpoint read once)."""
    from sai.models import dense_twin

    model = dense_twin(checkpoint)
    return model, model.arch


def dense_twin_engine(engine: Engine, checkpoint, *, workdir: Optional[Path] = None, threads: Optional[int] = None):
    """An engine of the same backend running the dense twin: torch runs the model directly, onnxruntime
    runs its export (written to ``workdir``, or to a temporary folder removed once the model is loaded)."""
    model, dense_arch = dense_twin_model(checkpoint)
    if engine.backend == "torch":
        from sai.runtime.torch_backend import TorchEngine

        # the twin runs as the sparse engine does: same precision, same CUDA graph setting
        return TorchEngine(model=model, device=engine.device, threads=threads,
                           precision=engine.metadata.get("precision", "fp32"),
                           cuda_graphs=bool(engine.metadata.get("cuda_graphs", False)))
    if engine.backend == "onnxruntime":
        from sai.exporter.export import export_onnx
        from sai.runtime.ort_backend import OnnxRuntimeEngine

        ex = engine.metadata.get("example_input_shape") or [1, 3, 224, 224]
        if workdir is not None:
            path = Path(workdir) / f"{dense_arch}.onnx"
            export_onnx(model, path, input_shape=ex)
            return OnnxRuntimeEngine(str(path), device=engine.device, threads=threads)
        from sai.outputs import tempdir

        with tempdir("sai-dense-") as tmp:  # onnxruntime reads the model at load: nothing stays in /tmp
            export_onnx(model, tmp / f"{dense_arch}.onnx", input_shape=ex)
            return OnnxRuntimeEngine(str(tmp / f"{dense_arch}.onnx"), device=engine.device, threads=threads)
    raise SaiError(f"--compare-dense is not available for the {engine.backend} backend here; "
                   "use --backend onnxruntime or torch (or build the dense engine with sai convert)")


# ----------------------------------------------------------------------------------------------
# detectors (sai.runtime.detector_engine): end to end, images in, detections out
# ----------------------------------------------------------------------------------------------


def _torch_backbone_timer(engine):
    """(samples list, handles) timing the torch detector's backbone inside each forward (forward hooks)."""
    backbone = engine._runner.detector.backbone
    samples: list[float] = []
    start: list[float] = []
    pre = backbone.register_forward_pre_hook(lambda *a: start.append(time.perf_counter()))
    post = backbone.register_forward_hook(lambda *a: samples.append((time.perf_counter() - start.pop()) * 1e3))
    return samples, (pre, post)


def bench_detector(engine, images, *, iterations: int = 10, warmup: int = 2, label: str = "") -> dict:
    """Time ``engine.infer(images)`` end to end (preprocessing included): ``warmup`` untimed runs, then
    ``iterations`` timed ones; p50/p90/p99/mean/min/max in ms, images per second at p50, and the backbone's
    share on torch (its forward inside each timed run; None on onnxruntime)."""
    if iterations < 1 or warmup < 0:
        raise SaiError(f"need --iterations >= 1 and --warmup >= 0, got {iterations} and {warmup}")
    images = list(images) if isinstance(images, (list, tuple)) else images
    for _ in range(warmup):
        engine.infer(images)
    back: list[float] = []
    handles: tuple = ()
    if engine.backend == "torch":
        back, handles = _torch_backbone_timer(engine)
    samples = []
    try:
        for _ in range(iterations):
            t = time.perf_counter()
            out = engine.infer(images)
            samples.append((time.perf_counter() - t) * 1e3)
    finally:
        for h in handles:
            h.remove()
    stats = percentiles(samples)
    n = int(out["num_dets"].shape[0])
    if engine.backend == "torch":
        share = float(sum(back) / sum(samples)) if samples else None
        how = "backbone forward time / end-to-end time (torch hooks)"
    else:  # the exported graph's plain nodes carry no module names, so onnxruntime's profile cannot tell them apart
        share, how = None, "not measured on onnxruntime (time the torch backend for the backbone's share)"
    return {"label": label or str(engine.metadata.get("preset", "detector")), "backend": engine.backend,
            "variant": engine.variant, "device": engine.device, "images": n, "iterations": iterations,
            "warmup": warmup, "throughput": n / (stats["p50_ms"] / 1e3), "backbone_share": share,
            "backbone_share_how": how, "detections": [int(v) for v in out["num_dets"]], **stats}


def detector_line(r: dict) -> str:
    share = f"{r['backbone_share']:.0%}" if r.get("backbone_share") is not None else "n/a"
    return (f"{r['label']} {r['backend']}/{r['variant']}/{r['device']} {r['images']} image(s) end to end: p50 "
            f"{r['p50_ms']:.1f} ms  p90 {r['p90_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  mean {r['mean_ms']:.1f} ms  "
            f"{r['throughput']:.2f} img/s; backbone {share} ({r['iterations']} iterations, {r['warmup']} warmup)")


def dense_twin_detector(config, checkpoint):
    """The dense twin of a sparse detector: the same weights on a dense ResNet backbone (the sparse-only keys left
    out, DCN offsets from the block input as the sparse blocks predict them), fused for inference."""
    from dataclasses import replace

    from sai.models.checkpoint import read_checkpoint
    from sai.models.detector import SaiDetector, load_detector_state
    from sai.models.twin import dense_options, is_sparse_only

    if not config.sparse:
        raise SaiError(f"the detector {config.name} is dense already; --compare-dense needs a sparse detector")
    dcfg = replace(config, sparse=False, name=f"{config.name}-dense-twin",
                   backbone_options=dense_options(config.arch, config.backbone_options))
    det = SaiDetector(dcfg)
    sd = {k: v for k, v in read_checkpoint(str(checkpoint))[0].items() if not is_sparse_only(k)}
    load_detector_state(det, {"state_dict": sd})
    return det.fuse_for_inference()


def dense_twin_detector_engine(engine, manifest: dict, outdir, *, threads: Optional[int] = None):
    """A detector engine of the same backend running the dense twin (torch directly; onnxruntime on its export,
    written to a temporary folder removed once the session is made)."""
    from sai.runtime.detector_engine import DetectorEngine, _OrtRunner, _TorchRunner, config_of
    from sai.runtime.outdir import checkpoint_of

    cfg = config_of(manifest, str(outdir))
    det = dense_twin_detector(cfg, checkpoint_of(manifest, Path(outdir)))
    common = dict(preprocessing=engine.preprocessing, metadata={**engine.metadata, "sampling": "dense"},
                  classes=engine.classes, max_per_img=engine.max_per_img, noise_inputs=[], path=None,
                  device=engine.device)
    if engine.backend == "torch":
        return DetectorEngine(_TorchRunner(det, device=engine.device, threads=threads), backend="torch",
                              variant="dense-twin", **common)
    from sai.exporter.detector_export import export_detector
    from sai.outputs import tempdir

    with tempdir("sai-dense-det-") as tmp:
        export_detector(det, tmp / "dense.onnx")
        runner = _OrtRunner(tmp / "dense.onnx", fused=False, library=None, device=engine.device, threads=threads)
    return DetectorEngine(runner, backend="onnxruntime", variant="dense-twin", **common)
