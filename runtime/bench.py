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
