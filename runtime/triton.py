"""A Triton model repository from a `sai convert` OUTDIR: a TensorRT plan model (when model.plan
exists) and an onnxruntime model for the portable ONNX, each with dynamic batching and instance
groups, the plugin library, and a README saying how Triton loads it."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sai.errors import SaiError
from sai.runtime.convert import publish_dir
from sai.runtime.loader import MANIFEST_NAME, ONNX_NAME, PLAN_NAME, read_manifest

TRITON_DTYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32",
                 2: "TYPE_UINT8", 3: "TYPE_INT8", 9: "TYPE_BOOL"}


@dataclass
class IOSpec:
    name: str
    data_type: str
    dims: list[int]  # without the batch dim; -1 for dynamic


def onnx_io(path: Path) -> tuple[list[IOSpec], list[IOSpec]]:
    """Graph inputs/outputs of an ONNX file as Triton specs (batch dim dropped)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(v) -> IOSpec:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        if t.elem_type not in TRITON_DTYPES:
            raise SaiError(f"tensor {v.name} has an ONNX type ({t.elem_type}) Triton configs do not map here")
        return IOSpec(v.name, TRITON_DTYPES[t.elem_type], dims[1:])

    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def _io_block(kind: str, specs: list[IOSpec]) -> str:
    items = []
    for s in specs:
        dims = ", ".join(str(d) for d in s.dims)
        items.append(f'  {{\n    name: "{s.name}"\n    data_type: {s.data_type}\n    dims: [ {dims} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def model_config(name: str, platform: str, inputs: list[IOSpec], outputs: list[IOSpec], *, max_batch_size: int,
                 kind: str, instances: int, max_queue_delay_us: int, preferred: list[int],
                 gpus: Optional[list[int]] = None) -> str:
    """config.pbtxt text (Triton ModelConfig protobuf text format)."""
    pref = ", ".join(str(p) for p in preferred if p <= max_batch_size)
    group = f"  {{\n    count: {instances}\n    kind: {kind}\n"
    if gpus:
        group += f"    gpus: [ {', '.join(str(g) for g in gpus)} ]\n"
    group += "  }"
    text = (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            + _io_block("input", inputs) + _io_block("output", outputs)
            + "dynamic_batching {\n"
            + (f"  preferred_batch_size: [ {pref} ]\n" if pref else "")
            + f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
            + f"instance_group [\n{group}\n]\n")
    return text


README = """# Triton model repository for {arch} ({sampling}, {precision})

Written by `sai export-triton` from `{outdir}`.

| model | platform | file |
| --- | --- | --- |
{rows}

Both models take `input` as [N, {channels}, H, W] float (N up to the model's `max_batch_size`) and
batch requests dynamically (same-shaped requests only; see `dynamic_batching` in each config.pbtxt).
{noise_note}
## Starting Triton

The onnxruntime model needs nothing else: the sai custom ops carry ONNX model-local functions that
ONNX Runtime inlines. The TensorRT model needs the sai plugin library (`plugins/{plugin_name}`):

    tritonserver --model-repository=$PWD \\
        --backend-config=tensorrt,plugins=$PWD/plugins/{plugin_name}

or, equivalently for the dynamic loader,

    LD_PRELOAD=$PWD/plugins/{plugin_name} tritonserver --model-repository=$PWD

Both make the process `dlopen` the library before the plan is deserialized. The plan must come from
the same TensorRT version and GPU architecture as the Triton container, unless it was built with
`sai convert --version-compatible` (the plugin library is then serialized into the plan).
{plugin_note}
## Checking

    curl localhost:8000/v2/models/{onnx_name}/config
    curl localhost:8000/v2/health/ready
"""


def export_triton(outdir, repo, *, name: Optional[str] = None, max_batch: Optional[int] = None,
                  instances: int = 1, max_queue_delay_us: int = 5000, gpus: Optional[list[int]] = None,
                  plugin_library: Optional[str] = None) -> dict:
    """Write the repository into ``repo`` (atomically: a temporary sibling renamed at the end)."""
    outdir = Path(outdir)
    manifest = read_manifest(outdir)
    if manifest is None or not (outdir / ONNX_NAME).is_file():
        raise SaiError(f"{outdir} is not a sai convert OUTDIR (no {MANIFEST_NAME} / {ONNX_NAME}); run sai convert first")
    meta = manifest.get("metadata") or {}
    base = name or str(manifest.get("arch") or "sai_model")
    shapes = (manifest.get("shapes") or {}).get("input") or {}
    profile_max = int((shapes.get("max") or [8])[0])
    mbs = int(max_batch or profile_max)
    inputs, outputs = onnx_io(outdir / ONNX_NAME)
    preferred = sorted({p for p in (2, 4, 8, 16, 32) if p <= mbs} | {mbs})
    repo = Path(repo).resolve()
    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.tmp-", dir=repo.parent))
    written = {}
    try:
        onnx_name = f"{base}_onnx"
        (tmp / onnx_name / "1").mkdir(parents=True)
        shutil.copy2(outdir / ONNX_NAME, tmp / onnx_name / "1" / "model.onnx")
        (tmp / onnx_name / "config.pbtxt").write_text(model_config(
            onnx_name, "onnxruntime_onnx", inputs, outputs, max_batch_size=mbs, kind="KIND_CPU" if not gpus else
            "KIND_GPU", instances=instances, max_queue_delay_us=max_queue_delay_us, preferred=preferred, gpus=gpus))
        written[onnx_name] = "onnxruntime_onnx"
        rows = [f"| `{onnx_name}` | onnxruntime_onnx | `{onnx_name}/1/model.onnx` |"]
        trt_name = f"{base}_trt"
        plan = outdir / PLAN_NAME
        skipped = None
        if plan.is_file():
            trt_mbs = min(mbs, profile_max)
            (tmp / trt_name / "1").mkdir(parents=True)
            shutil.copy2(plan, tmp / trt_name / "1" / "model.plan")
            (tmp / trt_name / "config.pbtxt").write_text(model_config(
                trt_name, "tensorrt_plan", inputs, outputs, max_batch_size=trt_mbs, kind="KIND_GPU",
                instances=max(instances, 2), max_queue_delay_us=max_queue_delay_us,
                preferred=[p for p in preferred if p <= trt_mbs], gpus=gpus or [0]))
            written[trt_name] = "tensorrt_plan"
            rows.append(f"| `{trt_name}` | tensorrt_plan | `{trt_name}/1/model.plan` |")
        else:
            skipped = f"no {PLAN_NAME} in {outdir} (engines are built by sai convert where TensorRT and a GPU exist)"
        if plugin_library is None:
            from sai.runtime.plugins import find_plugin_library

            found = find_plugin_library()
            plugin_library = str(found) if found else None
        plugin_name = "libsai_trt_plugins.so"
        plugin_note = ""
        if plugin_library:
            (tmp / "plugins").mkdir()
            shutil.copy2(plugin_library, tmp / "plugins" / plugin_name)
        else:
            plugin_note = ("\nThe plugin library was not built where this repository was written: build it with "
                           "`make plugins` and copy it to `plugins/`.\n")
        noise = meta.get("noise_inputs") or []
        noise_note = ""
        if noise:
            noise_note = (f"\nThis model is stochastic: every request must also carry the {len(noise)} noise inputs "
                          "(`noise.<block>.mask{1,2}`, uniform [0, 1) of shape [N, 2, ceil(H/s), ceil(W/s)] for the "
                          "stride s in the model's `sai.noise_inputs` metadata); Triton does not draw them.\n")
        (tmp / "README.md").write_text(README.format(
            arch=manifest.get("arch"), sampling=meta.get("sampling"), precision=meta.get("precision"),
            outdir=outdir, rows="\n".join(rows), channels=inputs[0].dims[0] if inputs and inputs[0].dims else "C",
            noise_note=noise_note, plugin_name=plugin_name, plugin_note=plugin_note, onnx_name=onnx_name))
        publish_dir(tmp, repo, "README.md", "sai export-triton")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"repo": str(repo), "models": written, "skipped": skipped, "plugin_library": plugin_library}
