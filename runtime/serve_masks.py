"""Mask density per block for `sai serve --mask-metrics`: the engine also returns every sampling mask (the
``mask.<block>.m{1,2}`` outputs of ``sai.runtime.validate``), the densities go to an observer (the server's
metrics: ``sai_mask_density{block,mask}``) and the masks never reach a client.

onnxruntime: a copy of the model with the masks as extra outputs (a temporary file in a folder named
``sai-serve-masks-<pid>@<host>-*``, so the next start removes those of servers killed with SIGKILL); torch: the
blocks' masks recorded on the way. TensorRT engines cannot add outputs after the build, so they are refused with the reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sai.errors import SaiError
from sai.outputs import owned_tempdir
from sai.runtime.engine import Engine
from sai.runtime.validate import MASK_PREFIX

TMP_PREFIX = "sai-serve-masks-"
Observer = Callable[[dict[str, float], int], None]  # (density per mask output, images in the batch)


class MaskMetricsEngine:
    """``engine`` with its mask outputs taken off: ``infer`` returns the model's own outputs and reports each
    mask's density (fraction of positions computed, over the batch) to ``observer``."""

    def __init__(self, engine: Any, observer: Optional[Observer] = None, tmpdir: Optional[Path] = None):
        self._engine = engine
        self.observer = observer
        self._tmpdir = tmpdir  # the onnxruntime copy's folder, removed on close
        self.outputs = [s for s in engine.outputs if not s.name.startswith(MASK_PREFIX)]

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def infer(self, feeds) -> dict[str, np.ndarray]:
        out = self._engine.infer(feeds)
        masks = {k: out.pop(k) for k in [k for k in out if k.startswith(MASK_PREFIX)]}
        if masks and self.observer is not None:
            n = int(next(iter(out.values())).shape[0]) if out else 1
            self.observer({k[len(MASK_PREFIX):]: float((v > 0).mean()) for k, v in masks.items()}, n)
        return out

    def close(self) -> None:
        self._engine.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def with_mask_outputs(engine: Engine, *, device: Optional[str] = None, threads: Optional[int] = None,
                      seed: Optional[int] = None) -> MaskMetricsEngine:
    """A ``MaskMetricsEngine`` over ``engine`` (closing ``engine`` where a new one replaces it)."""
    if engine.backend == "torch":
        from sai.runtime.validate import record_torch_masks

        recording = record_torch_masks(engine)
        if not recording.mask_names:
            recording.close()
            raise SaiError("--mask-metrics: the model has no sparse blocks, so it has no masks to measure")
        return MaskMetricsEngine(recording)
    if engine.backend != "onnxruntime":
        raise SaiError(f"--mask-metrics needs the onnxruntime or torch backend (a {engine.backend} engine cannot "
                       "add mask outputs after its build); pass --backend onnxruntime or torch")
    from sai.runtime.ort_backend import OnnxRuntimeEngine
    from sai.runtime.validate import onnx_with_masks

    tmp = owned_tempdir(TMP_PREFIX, flag="--mask-metrics")  # removes the folders of dead servers first
    try:
        path = tmp / "model_masks.onnx"
        names = onnx_with_masks(Path(engine.path), path)
        if not names:
            raise SaiError(f"--mask-metrics: {engine.path} has no sai SparseSampleConv nodes, so no masks to measure")
        masked = OnnxRuntimeEngine(str(path), device=device or engine.device, threads=threads, seed=seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    masked.set_profile(engine.min_shape, engine.max_shape)
    for k, v in engine.metadata.items():
        masked.metadata.setdefault(k, v)
    engine.close()
    return MaskMetricsEngine(masked, tmpdir=tmp)
