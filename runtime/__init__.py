"""sai.runtime: one engine API over TensorRT, ONNX Runtime and PyTorch backends.

    import sai.runtime as rt
    with rt.load("out/", backend="auto") as engine:       # a `sai convert` OUTDIR, .onnx, .plan or .pth
        print(engine.inputs, engine.outputs)
        y = engine.infer(x)                                # x: [N,3,H,W] float32 -> {"logits": ...}
        fut = engine.infer_async({"input": x})             # concurrent.futures.Future

Backends are imported lazily: ``load(..., backend="onnxruntime")`` never imports tensorrt or torch.
"""

from __future__ import annotations

from sai.runtime.engine import Engine, InputError, TensorSpec, noise_shape
from sai.runtime.loader import BACKENDS, load, resolve

__all__ = ["BACKENDS", "Engine", "InputError", "TensorSpec", "load", "noise_shape", "resolve"]
