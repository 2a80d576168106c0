"""PyTorch backend: the eager model from a checkpoint (ours or the official layout), fused for inference.

Input and output names follow the exporter (``input``, ``noise.<block>.mask{1,2}``; ``logits`` /
``p2..p6`` / ``c2..c5``), so feeds and results compare name by name with the ONNX backends; the
preprocessing and class names come from the checkpoint exactly as the exporter records them.

On CUDA, device inputs (``sai.runtime.device``) become torch tensors zero-copy
(``torch.as_tensor`` of their ``__cuda_array_interface__``) after the current stream waits for their
producer's stream; ``device_outputs=True`` returns the CUDA tensors themselves.

``precision`` "fp16" / "bf16" casts the fused model (``sai.models.cast_for_inference``: the mask
predictors stay fp32) and feeds it the input in that dtype; inputs and outputs of the engine stay
float32. ``cuda_graphs=True`` (CUDA only) captures one CUDA graph per input shape after an eager
warm-up call at that shape (the Triton kernels compile and pack their weights there) and replays it
from then on: the inputs are copied into the graph's static buffers and the outputs copied out.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import numpy as np

from sai.constants import TORCH_PRECISIONS
from sai.errors import SaiError
from sai.lazy import lazy_import
from sai.runtime.device import DeviceArray
from sai.runtime.engine import Engine, TensorSpec, noise_shape

TORCH = lazy_import("torch", purpose="run the torch backend")


def _import_torch():
    return TORCH.load()


class TorchEngine(Engine):
    """A fused ``SaiResNet`` in eval mode. ``sampling`` overrides the checkpoint's mode (e.g. to match
    an exported stochastic model); ``model`` may be given directly instead of a checkpoint path."""

    backend = "torch"

    def __init__(self, path: Optional[str] = None, *, model=None, sampling: Optional[str] = None,
                 device: str = "cpu", threads: Optional[int] = None, seed: Optional[int] = None,
                 async_workers: int = 2, strict: bool = True, precision: str = "fp32",
                 cuda_graphs: bool = False):
        super().__init__(seed=seed, async_workers=async_workers)
        torch = _import_torch()
        from sai import models
        from sai.models import checkpoint_meta

        ck_meta: dict = {}
        if model is None:
            if path is None or not os.path.isfile(path):
                raise SaiError(f"checkpoint {path} does not exist")
            overrides = {"sampling": sampling} if sampling else {}
            try:
                model, report = models.model_from_checkpoint(str(path), strict=strict, **overrides)
                ck_meta = dict(getattr(report, "meta", None) or {})
            except SaiError:
                raise
            except Exception as exc:
                raise SaiError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0][:300]}") from exc
        elif sampling and getattr(model, "is_sparse", False):
            models.set_sampling(model, sampling)
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise SaiError(f"torch device must be cpu or cuda[:N], got {device!r}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise SaiError("torch has no CUDA device here; use --device cpu (this torch build is CPU-only)")
        if threads:
            torch.set_num_threads(int(threads))
        if precision not in TORCH_PRECISIONS:
            raise SaiError(f"torch precision must be {', '.join(TORCH_PRECISIONS[:-1])} or {TORCH_PRECISIONS[-1]}, "
                           f"got {precision!r}")
        if cuda_graphs and not str(device).startswith("cuda"):
            raise SaiError("CUDA graphs need --device cuda (they capture GPU work)")
        model = model.eval()
        if isinstance(model, models.SaiResNet) and not getattr(model, "fused", False):
            model = models.fuse_for_inference(model).eval()
        if precision != "fp32":
            if not isinstance(model, models.SaiResNet):
                raise SaiError(f"precision {precision} needs a sai model (sai.models.build_model), got "
                               f"{type(model).__name__}")
            models.cast_for_inference(model, precision)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self._graphs: dict = {}  # input shapes -> (graph, static inputs, static outputs)
        self._cuda_graphs = bool(cuda_graphs)
        self.model = model.to(device)
        self._torch = torch
        self._output_names = models.output_names  # the names the exported graphs use
        self.path, self.device = (str(path) if path else None), str(device)
        self.noise_inputs = list(model.noise_specs()) if hasattr(model, "noise_specs") else []
        opts = dict(getattr(model, "options", {}))
        self.metadata = {
            "arch": getattr(model, "arch", type(model).__name__),
            "sampling": ("dense" if not getattr(model, "is_sparse", True) else str(getattr(model, "sampling", ""))),
            "precision": precision,
            "cuda_graphs": bool(cuda_graphs),
            "head": getattr(model, "head", ""),
            "noise_inputs": [list(n) for n in self.noise_inputs],
            "base_width": opts.get("base_width"),
        }
        cin = next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 3)
        self.metadata["input_norm"] = checkpoint_meta.input_norm_from_checkpoint(ck_meta, cin)
        if getattr(model, "head", None) == "cls":
            classes = checkpoint_meta.classes_from_checkpoint(ck_meta, opts.get("num_classes"))
            if classes is not None:
                self.metadata["classes"] = classes
        self.inputs = [TensorSpec("input", np.dtype(np.float32), ("batch", cin, "height", "width"))]
        self.inputs += [TensorSpec(n, np.dtype(np.float32), ("batch", 2, f"height_s{s}", f"width_s{s}"))
                        for n, s in self.noise_inputs]
        graphs, self._cuda_graphs = self._cuda_graphs, False  # the probe runs eagerly
        self.outputs = self._probe_outputs(cin)
        self._cuda_graphs = graphs
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core per op

    def _probe_outputs(self, cin: int) -> list[TensorSpec]:
        shape = (1, cin, 64, 64)
        # constant noise, not ``noise_for``: drawing from the engine's generator here would shift its
        # stream by one sample, and the same seed would then give other noise than the ONNX backends
        feeds = {"input": np.zeros(shape, np.float32),
                 **{n: np.full(noise_shape(shape, s), 0.5, np.float32) for n, s in self.noise_inputs}}
        outs = self._forward(feeds)
        specs = []
        for name, arr in outs.items():
            dims = ["batch", *arr.shape[1:]]
            if arr.ndim == 4:
                dims[2], dims[3] = f"{name}_height", f"{name}_width"
            specs.append(TensorSpec(name, arr.dtype, tuple(dims)))
        return specs

    def _device_stream(self):
        if not self.device.startswith("cuda"):
            return None
        return int(self._torch.cuda.current_stream(self._torch.device(self.device)).cuda_stream)

    def _tensor(self, value):
        torch = self._torch
        if not isinstance(value, DeviceArray):
            return torch.from_numpy(value).to(self.device)
        if value.stream is not None and value.stream != self._device_stream():
            producer = torch.cuda.ExternalStream(int(value.stream), device=torch.device(self.device))
            torch.cuda.current_stream(torch.device(self.device)).wait_stream(producer)
        return torch.as_tensor(value, device=self.device)  # its __cuda_array_interface__: no copy

    def _call_model(self, x, noise):
        """The model's outputs as a list, through the shape's CUDA graph where graphs are on."""
        torch = self._torch
        with torch.inference_mode():
            if not self._cuda_graphs:
                out = self.model(x.to(self._dtype), *noise)
                return list(out) if isinstance(out, (tuple, list)) else [out]
            key = (tuple(x.shape), *(tuple(t.shape) for t in noise))
            entry = self._graphs.get(key)
            if entry is None:
                # eager warm-up at this shape (Triton compiles, weights are packed), then the capture
                out = self.model(x.to(self._dtype), *noise)
                static_in = [x.to(self._dtype).clone(), *(t.clone() for t in noise)]
                side = torch.cuda.Stream()  # a second warm-up on a side stream, as torch's graph docs ask
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self.model(*static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self.model(*static_in)
                static_out = list(static_out) if isinstance(static_out, (tuple, list)) else [static_out]
                self._graphs[key] = (graph, static_in, static_out)
                return list(out) if isinstance(out, (tuple, list)) else [out]
            graph, static_in, static_out = entry
            static_in[0].copy_(x)
            for dst, src in zip(static_in[1:], noise, strict=True):
                dst.copy_(src)
            graph.replay()
            return [t.clone() for t in static_out]  # the next replay overwrites the static outputs

    def _forward(self, feeds, device_outputs: bool = False):
        x = self._tensor(feeds["input"])
        noise = [self._tensor(feeds[n]) for n, _ in self.noise_inputs]
        outs = self._call_model(x, noise)
        names = self._output_names(len(outs), getattr(self.model, "head", None))
        # row-major (a fused block's NHWC output is a channels_last view of the NCHW tensor)
        if device_outputs:
            return {n: t.detach().float().contiguous() for n, t in zip(names, outs, strict=True)}
        return {n: t.detach().float().contiguous().cpu().numpy() for n, t in zip(names, outs, strict=True)}

    def _run_device(self, feeds):
        if not self.device.startswith("cuda"):
            return super()._run_device(feeds)
        with self._lock:
            return self._forward(feeds, device_outputs=True)

    def _run(self, feeds):
        with self._lock:
            try:
                return self._forward(feeds)
            except SaiError:
                raise
            except RuntimeError as exc:
                raise SaiError(f"torch inference failed: {str(exc).splitlines()[0][:300]}") from exc

    def _close(self) -> None:
        self._graphs.clear()
        self.model = None
