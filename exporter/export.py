"""``export_onnx``: a (Sparse)ResNet -> ONNX with the ``sai`` custom ops (docs/design.md 1-3, 5).

Steps: build or take the model, load a checkpoint, fuse it for inference (BN folded, conv3
reorder), dynamo-export with the translations of ``sai.exporter.translation``, clean the custom
nodes, optionally convert to fp16 (mask subgraph kept fp32), attach the local functions (portable)
or strip them (tensorrt), write metadata, check, and write the file atomically.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import onnx

from sai.constants import DEFAULT_OPSET, PLUGIN_ATTRIBUTES, PRECISIONS, TARGETS
from sai.errors import SaiError, first_line
from sai.exporter import functions, graph, metadata
from sai.exporter.functions import DOMAIN, DOMAIN_VERSION, MIN_OPSET
from sai.shapes import parse_shape

MAX_OPSET = 23  # newest opset onnxruntime 1.31 and the dynamo exporter both handle
DYNAMIC_AXES = ("batch", "hw")
FOLD_SIZE_LIMIT = 1 << 20  # elements
MAX_ELEMENTS = (1 << 31) - 1  # per input tensor (TensorRT's limit)


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and how it took."""

    path: Path
    arch: str
    target: str
    precision: str
    sampling: str
    opset: int
    input_names: list[str]
    output_names: list[str]
    noise_inputs: list[tuple[str, int]]
    op_counts: dict[str, int]
    blocks: dict[str, dict[str, int]]
    export_seconds: float
    check_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        ops = ", ".join(f"{k} x{v}" for k, v in self.op_counts.items())
        return (
            f"wrote {self.path} ({self.arch}, {self.sampling}, {self.precision}, target {self.target}, "
            f"opset {self.opset}; {ops}) in {self.export_seconds:.1f} s + {self.check_seconds:.1f} s checks"
        )


# ----------------------------------------------------------------------------------------------
# argument validation
# ----------------------------------------------------------------------------------------------


def _parse_dynamic(dynamic: Union[bool, str, Iterable[str], None]) -> set[str]:
    if dynamic is None or dynamic is True:
        return set(DYNAMIC_AXES)
    if dynamic is False:
        return set()
    if isinstance(dynamic, str):
        dynamic = [d for d in dynamic.replace(" ", "").split(",") if d]
    vals = {str(d).lower() for d in dynamic}
    vals.discard("none")
    bad = sorted(vals - set(DYNAMIC_AXES))
    if bad:
        raise SaiError(f"unknown dynamic axis {', '.join(bad)}; use any of {', '.join(DYNAMIC_AXES)} (or none)")
    return vals


def parse_input_shape(shape: Union[str, Sequence[int]], what: str = "input shape") -> tuple[int, int, int, int]:
    """An image input's N,C,H,W (``sai.shapes.parse_shape``) that one TensorRT tensor can hold; SaiError
    naming ``what`` otherwise."""
    vals = parse_shape(shape, what)
    elements = vals[0] * vals[1] * vals[2] * vals[3]
    if elements > MAX_ELEMENTS:
        raise SaiError(f"{what} {list(vals)} has {elements:.3g} elements, more than 2^31-1 (the most one "
                       "TensorRT tensor holds); give a smaller shape, e.g. 1,3,224,224")
    return vals  # type: ignore[return-value]


def _cgroup_headroom() -> Optional[int]:
    """Bytes left under a cgroup v2 memory limit (containers), None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        return None if limit == "max" else max(int(limit) - int(used), 0)
    except (OSError, ValueError):
        return None


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (MemAvailable, or less under a container's limit),
    None where unknown."""
    have = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if have is None:
        try:
            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            have = None
    room = _cgroup_headroom()
    return room if have is None else have if room is None else min(have, room)


def check_trace_memory(shape: Sequence[int], base_width: int, arch: str) -> None:
    """Refuse an example input whose trace cannot fit in memory, before allocating anything.

    The export runs the model once at ``shape``; its peak is about N*H*W*(192 + 5*base_width) bytes
    (measured on SparseResNet-18/50 at base widths 16-64, with a 1.5x margin)."""
    n, _, h, w = (int(v) for v in shape)
    need = n * h * w * (192 + 5 * int(base_width))
    have = available_memory()
    if have is not None and need > have:
        raise SaiError(f"input shape {list(shape)} needs about {need / 1e9:.1f} GB to run {arch} once for the "
                       f"export, more than the {have / 1e9:.1f} GB available; export at a smaller --shape "
                       "(e.g. 1,3,224,224): with the default --dynamic batch,hw the model takes other sizes later")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SaiError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_opset(opset: int) -> int:
    try:
        opset = int(opset)
    except (TypeError, ValueError):
        raise SaiError(f"opset must be an integer, got {opset!r}") from None
    if opset < MIN_OPSET:
        raise SaiError(
            f"opset {opset} is not supported: the sai local functions need opset >= {MIN_OPSET} "
            "(string Equal, DeformConv); pass --opset 19 or newer"
        )
    if opset > MAX_OPSET:
        raise SaiError(f"opset {opset} is newer than this toolchain supports (max {MAX_OPSET}); pass --opset {MAX_OPSET}")
    return opset


# ----------------------------------------------------------------------------------------------
# model preparation
# ----------------------------------------------------------------------------------------------


def prepare_model(
    model_or_arch,
    *,
    checkpoint=None,
    sampling: Optional[str] = None,
    head: Optional[str] = None,
    num_classes: Optional[int] = None,
    dcn_stages=None,
    base_width: Optional[int] = None,
    seed: Optional[int] = None,
    fuse: bool = True,
):
    """Build (from an arch name) or take a model, load ``checkpoint``, set sampling, fuse.

    Returns ``(fused eval model, arch name)``.
    """
    import torch

    from sai import models

    if isinstance(model_or_arch, str):
        arch = model_or_arch
        if arch not in models.ARCHS:
            raise SaiError(f"unknown arch {arch!r}; valid archs: {', '.join(models.ARCHS)}")
        explicit = {"head": head, "num_classes": num_classes, "dcn_stages": dcn_stages,
                    "base_width": base_width}
        if checkpoint is not None:
            from sai.exporter import checkpoints

            opts, _ = checkpoints.resolve_options(arch, checkpoint, explicit)
        else:
            opts = {k: v for k, v in explicit.items() if v is not None}
        if seed is not None:
            opts["seed"] = int(seed)
        if sampling is not None and arch.startswith("sparse_"):
            opts["sampling"] = sampling
        model = models.build_model(arch, **opts)
        if checkpoint is not None:
            checkpoints.load_into(model, checkpoint)
    elif isinstance(model_or_arch, torch.nn.Module):
        model = model_or_arch
        arch = str(getattr(model, "arch", type(model).__name__))
        if checkpoint is not None:
            from sai.exporter import checkpoints

            checkpoints.load_into(model, checkpoint)
        if sampling is not None and hasattr(model, "sampling"):
            if getattr(model, "is_sparse", False):
                models.set_sampling(model, sampling)
    else:
        raise SaiError(f"export needs an arch name or a torch.nn.Module, got {type(model_or_arch).__name__}")
    model = model.eval()
    if fuse and isinstance(model, models.SaiResNet) and not getattr(model, "fused", False):
        model = models.fuse_for_inference(model)
    return model.eval(), arch


def _model_sampling(model) -> str:
    if not getattr(model, "is_sparse", True):
        return "dense"
    return str(getattr(model, "sampling", "deterministic"))


def _noise(model, input_shape) -> tuple[list[tuple[str, int]], list]:
    import torch

    specs = list(model.noise_specs()) if hasattr(model, "noise_specs") else []
    if not specs:
        return [], []
    from sai.models import noise_shapes

    shapes = noise_shapes(model, input_shape)
    gen = torch.Generator().manual_seed(0)
    return specs, [torch.rand(s, generator=gen) for _, s in shapes]


def _count_outputs(out) -> int:
    return len(out) if isinstance(out, (tuple, list)) else 1


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------


def _torch_export(model, args, input_names, output_names, dyn: set[str], noise_specs, opset: int, verbose: bool,
                 target: str = "portable", trt_blocks_mode: str = "per-op"):
    import torch

    from sai.compat import skip_noop_onnx_decomposition
    from sai.exporter import trt_blocks
    from sai.exporter.maskop import mask_as_one_node
    from sai.exporter.translation import translation_table

    blocks = trt_blocks.blocks_as_plugin_nodes(model) if target == "tensorrt" and trt_blocks_mode == "fused" else \
        contextlib.nullcontext()
    table = {**translation_table(), **trt_blocks.translations()}

    x_dims: dict[int, str] = {}
    if "batch" in dyn:
        x_dims[0] = "batch"
    if "hw" in dyn:
        x_dims[2], x_dims[3] = "height", "width"
    noise_dims = []
    for _name, stride in noise_specs:
        d: dict[int, str] = {}
        if "batch" in dyn:
            d[0] = "batch"
        if "hw" in dyn:
            d[2], d[3] = f"height_s{stride}", f"width_s{stride}"
        noise_dims.append(d)
    dynamic_shapes = (x_dims, tuple(noise_dims)) if noise_specs else (x_dims,)
    if not dyn:
        dynamic_shapes = None
    sink = io.StringIO()
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(sink)
    logger = logging.getLogger("torch.onnx")
    old_level = logger.level
    try:
        with quiet, warnings.catch_warnings(), torch.no_grad(), mask_as_one_node(model), \
                skip_noop_onnx_decomposition(), blocks:
            warnings.simplefilter("ignore")
            if not verbose:
                logger.setLevel(logging.ERROR)
            program = torch.onnx.export(
                model,
                tuple(args),
                dynamo=True,
                custom_translation_table=table,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=False,
                verbose=verbose,
                external_data=False,
            )
            optimize_ir(program.model)
    finally:
        logger.setLevel(old_level)
    return program.model_proto


def optimize_ir(model) -> None:
    """The dynamo exporter's ``optimize=True`` pipeline minus its pattern rewriter and fusions.

    Constant folding, dead-code removal, constant lifting, initializer dedup and CSE are what our
    graphs need; the generic rewrite rules (and the transformer fusions) found nothing to rewrite
    in them and took about 40% of the export time (their matcher visits every node per rule).
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import fold_constants_ir

    common_passes.InlinePass()(model)
    fold_constants_ir(
        model,
        onnx_shape_inference=True,
        # the fused blocks' stacked mask weights (torch.cat + slices, up to 2 x 2048 x 3 x 3) must
        # fold into initializers; the default 8192-element limit left Concat/Slice running per call
        input_size_limit=FOLD_SIZE_LIMIT,
        output_size_limit=FOLD_SIZE_LIMIT,
    )
    ir.passes.Sequential(
        common_passes.RemoveUnusedNodesPass(),
        common_passes.RemoveUnusedFunctionsPass(),
        common_passes.RemoveUnusedOpsetsPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )(model)


def _check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _model_tensors(model: onnx.ModelProto):
    """``(name, TensorProto, is_node_constant)`` of every weight a model carries: initializers and Constant values
    of the graph and its subgraphs (the local functions hold op constants such as ``-inf`` for "no activation",
    not weights; a target that inlines them puts those scalars into the graph as Constant nodes)."""
    def nodes_of(nodes, where):
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield (f"{where}{node.output[0] if node.output else node.name} ({node.op_type}.{attr.name})",
                           attr.t, True)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    yield from graph_of(attr.g, where)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        yield from graph_of(g, where)

    def graph_of(g, where=""):
        for init in g.initializer:
            yield f"{where}{init.name}", init, False
        for sparse in g.sparse_initializer:
            yield f"{where}{sparse.values.name}", sparse.values, False
        yield from nodes_of(g.node, where)

    yield from graph_of(model.graph)


def nonfinite_weights(model: onnx.ModelProto, limit: int = 3) -> list[str]:
    """Up to ``limit`` descriptions (``name (n NaN, m inf of k values)``) of a model's float weights that hold
    NaN or inf; empty when every weight is finite. A one-value Constant node holding +-inf is an op constant
    (an inlined function body's "no clamp" bound), not a weight: only NaN counts there."""
    import numpy as np
    from onnx import numpy_helper

    bad = []
    for name, tensor, node_constant in _model_tensors(model):
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        try:
            arr = numpy_helper.to_array(tensor)
        except Exception:  # external data that is not loaded: not ours to judge here
            continue
        finite = np.isfinite(arr)
        if node_constant and arr.size == 1 and not np.isnan(arr).any():
            continue
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum()) - n_nan
            what = ", ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if p)
            bad.append(f"{name} ({what} of {arr.size} values)")
            if len(bad) >= limit:
                break
    return bad


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def check_finite_weights(model: onnx.ModelProto, what: str = "the exported model") -> None:
    """SaiError naming the weights of ``model`` that hold NaN or inf: no such model is ever written."""
    bad = nonfinite_weights(model)
    if bad:
        raise SaiError(f"{what} would hold non-finite weights: {'; '.join(bad)}{' ...' if len(bad) == 3 else ''}; "
                       "nothing was written: the checkpoint's values (or their BatchNorm folding) are out of range, "
                       "use an earlier checkpoint")


def save_atomic(model: onnx.ModelProto, path: Union[str, os.PathLike]) -> Path:
    """Serialize to a temporary file next to ``path`` and rename it; no half-written file on error
    (a full disk or an unwritable folder is a SaiError naming ``path``), and no model with a NaN or inf
    weight (``check_finite_weights``: SaiError, nothing written)."""
    from sai.outputs import write_atomic

    check_finite_weights(model, f"model {Path(path).name}")
    return write_atomic(Path(path), model.SerializeToString())


def finalize(
    model: onnx.ModelProto, *, target: str, precision: str, opset: int, body: str = "sparse"
) -> tuple[dict[str, dict[str, int]], Optional[Any]]:
    """Post-export passes shared by every path: custom nodes, fp16, functions, opset imports.

    ``portable``: custom nodes + local functions of ``body``; ``tensorrt``: custom nodes, no
    functions; ``onnx-native``: the ``body`` functions inlined (standard ops only, no ``sai`` node).
    """
    fused = []
    if target == "tensorrt":
        from sai.exporter.trt_blocks import block_table, fill_absent_inputs

        fused = fill_absent_inputs(model)
    blocks = graph.fix_custom_nodes(model)
    if fused:
        blocks = block_table(model, blocks, fused)
    graph.strip_torch_metadata(model)
    sparse_bodies = target in ("portable", "onnx-native") and body == "sparse"
    graph.split_mask_convs(model, matmul=sparse_bodies)
    report = None
    if precision == "fp16":
        from sai.exporter.fp16 import convert_to_fp16

        report = convert_to_fp16(model)
    if sparse_bodies:
        graph.nhwc_residual_tails(model)
    if graph.custom_nodes(model) or target == "tensorrt":
        graph.ensure_opset_import(model, DOMAIN, DOMAIN_VERSION)
    if target in ("portable", "onnx-native"):
        functions.attach_functions(model, opset, body)
    else:
        functions.strip_functions(model)
    if model.ir_version < 10:
        model.ir_version = 10  # function overloads
    # value_info from the exporter may be stale after the passes above; re-infer from scratch
    del model.graph.value_info[:]
    return blocks, report


def export_onnx(
    model_or_arch,
    path: Union[str, os.PathLike],
    *,
    input_shape: Union[str, Sequence[int]] = (1, 3, 224, 224),
    dynamic: Union[bool, str, Iterable[str], None] = True,
    sampling: Optional[str] = None,
    precision: str = "fp32",
    target: str = "portable",
    body: str = "sparse",
    opset: int = DEFAULT_OPSET,
    checkpoint=None,
    head: Optional[str] = None,
    num_classes: Optional[int] = None,
    dcn_stages=None,
    base_width: Optional[int] = None,
    seed: Optional[int] = None,
    input_norm: Optional[dict] = None,
    trt_blocks: Optional[str] = None,
    check: bool = True,
    fuse: bool = True,
    verbose: bool = False,
) -> ExportResult:
    """Export a (Sparse)ResNet (arch name or module) to ONNX at ``path``; see the module docstring.

    ``dynamic``: True (batch and H/W), False, or a subset of ``{"batch", "hw"}``. ``sampling``:
    deterministic (default) | stochastic (uniform noise as named inputs, see ``noise_specs``) |
    dense. ``checkpoint``: a path, a state dict or a ``LoadedCheckpoint`` (read once); it decides DCN stages, head and classes, and an
    explicit flag that contradicts it is an error; its preprocessing and class names are recorded
    (``input_norm``, ``classes``: ``models/checkpoint_meta.py``). ``input_norm``: the preprocessing to record
    instead (``scale``/``mean``/``std``/``color``/``layout``; recorded with source ``given``). ``trt_blocks``
    (target tensorrt): ``fused`` (default) writes one ``sai::SparseBlock`` node per block the plugin takes,
    ``per-op`` the SparseSampleConv / Interpolate nodes only; None: ``SAI_TRT_SPARSE_BLOCK`` (1 / 0) or the
    default (``sai.exporter.trt_blocks.mode``).
    """
    import torch

    t0 = time.perf_counter()
    _check_choice("target", target, TARGETS)
    _check_choice("precision", precision, PRECISIONS)
    _check_choice("body", body, functions.BODIES)
    if sampling is not None:
        from sai.models import SAMPLING_MODES

        _check_choice("sampling", sampling, SAMPLING_MODES)
    opset = _check_opset(opset)
    from sai.exporter import trt_blocks as trt_blocks_module

    if trt_blocks is not None and target != "tensorrt":
        raise SaiError(f"--trt-blocks {trt_blocks} applies to --target tensorrt only (this export is {target}); "
                       "drop it or export with --target tensorrt")
    blocks_mode = trt_blocks_module.mode(trt_blocks) if target == "tensorrt" else "per-op"
    shape = parse_input_shape(input_shape)
    dyn = _parse_dynamic(dynamic)
    from sai.outputs import check_output_file

    check_output_file(path)  # before the slow work: a folder, a missing or unwritable parent
    if isinstance(checkpoint, (str, os.PathLike)):  # read once: options, weights and meta from the same bytes
        from sai.models.checkpoint import read_checkpoint_file

        checkpoint = read_checkpoint_file(checkpoint)

    model, arch = prepare_model(
        model_or_arch, checkpoint=checkpoint, sampling=sampling, head=head, num_classes=num_classes,
        dcn_stages=dcn_stages, base_width=base_width, seed=seed, fuse=fuse,
    )
    stem = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if stem is not None and shape[1] != stem.in_channels:
        raise SaiError(f"input shape {list(shape)} has {shape[1]} channels but {arch} takes {stem.in_channels}")
    if getattr(model, "arch", None) and min(shape[2:]) < 32:
        raise SaiError(f"input shape {list(shape)}: H and W must be at least 32 for {arch} (total stride 32)")
    check_trace_memory(shape, stem.out_channels if stem is not None else 64, arch)

    # how to feed it (preprocessing) and read it (class names): from the checkpoint (checked before the slow
    # trace), see models/checkpoint_meta.py
    from sai.models import checkpoint_meta as ckm

    ck_meta = ckm.checkpoint_meta(checkpoint) if checkpoint is not None else {}
    channels = stem.in_channels if stem is not None else 3
    norm = (ckm.canonical_input_norm(input_norm, "given", channels) if input_norm is not None
            else ckm.input_norm_from_checkpoint(ck_meta, channels))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    noise_specs, noise = _noise(model, shape)
    with torch.no_grad():
        try:
            out = model(x, *noise)
        except SaiError:
            raise
        except RuntimeError as exc:
            raise SaiError(f"{arch} cannot run on input shape {list(shape)}: {first_line(exc)}") from exc
    head_name = getattr(model, "head", None)
    input_names = ["input"] + [name for name, _ in noise_specs]
    from sai.models import output_names  # the graph's output names, the same on every backend

    out_names = output_names(_count_outputs(out), head_name)

    proto = _torch_export(model, [x, *noise], input_names, out_names, dyn, noise_specs, opset, verbose, target,
                          blocks_mode)
    blocks, fp16_report = finalize(proto, target=target, precision=precision, opset=opset, body=body)
    counts = graph.op_counts(proto)
    if target == "tensorrt" and blocks_mode == "fused":
        counts[trt_blocks_module.SPARSE_BLOCK] = sum(n.domain == DOMAIN and n.op_type == trt_blocks_module.SPARSE_BLOCK
                                                     for n in proto.graph.node)
    if target == "onnx-native":
        functions.inline_functions(proto)

    sampling_mode = _model_sampling(model)
    import sai

    meta = {
        "arch": arch,
        "sampling": sampling_mode,
        "precision": precision,
        "target": target,
        "body": body if target != "tensorrt" else "",
        **({"trt_blocks": blocks_mode} if target == "tensorrt" else {}),
        "head": head_name or "",
        "input_norm": norm,
        "example_input_shape": list(shape),
        "dynamic_axes": sorted(dyn),
        "noise_inputs": [[n, s] for n, s in noise_specs],
        "op_versions": {
            f"{DOMAIN}::{functions.SSC}": DOMAIN_VERSION,
            f"{DOMAIN}::{functions.INTERP}": DOMAIN_VERSION,
            **PLUGIN_ATTRIBUTES,
        },
        "producer": {
            "sai": sai.__version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
        },
        "sparse_ops": counts,
        "blocks": blocks,
    }
    opts = getattr(model, "options", None)
    if isinstance(opts, dict):
        meta["dcn_stages"] = [int(bool(v)) for v in opts.get("dcn_stages", ())]
        if head_name == "cls":
            meta["num_classes"] = int(opts.get("num_classes", 0))
            classes = ckm.classes_from_checkpoint(ck_meta, meta["num_classes"])
            if classes is not None:
                meta["classes"] = classes
        for key in ("gaussian_kernel", "grid_prior_interval", "T_eval", "base_width"):
            if key in opts:
                meta[key] = opts[key]
    if fp16_report is not None:
        meta["fp16_mask_subgraph_nodes"] = fp16_report.mask_nodes
    metadata.write_metadata(proto, meta)
    proto.producer_name = "sai-deploy"
    proto.producer_version = sai.__version__
    export_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    if check:
        try:
            _check(proto)
        except Exception as exc:  # a bug in the exporter, not a user error: keep the traceback
            raise RuntimeError(f"exported model for {arch} fails the ONNX checks: {exc}") from exc
    check_s = time.perf_counter() - t1
    out_path = save_atomic(proto, path)
    return ExportResult(
        path=out_path, arch=arch, target=target, precision=precision, sampling=sampling_mode, opset=opset,
        input_names=input_names, output_names=out_names, noise_inputs=noise_specs, op_counts=counts,
        blocks=blocks, export_seconds=export_s, check_seconds=check_s, metadata=meta,
    )
