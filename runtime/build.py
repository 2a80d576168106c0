"""TensorRT engine build (thin; runs only where TensorRT and a GPU exist, covered by GPU tests).

TensorRT 11 networks are always strongly typed: precision comes from the ONNX file (fp16 tensors,
the mask subgraph kept fp32 by the exporter). TensorRT 10 builds weakly typed networks with the FP16
builder flag for fp16 models; there the mask subgraph (every layer that only feeds the mask input of
a sai plugin) is pinned to fp32 by precision constraints, so fp16 rounding cannot flip a mask
decision, as on 11. The Interpolate normaliser is fp32 inside the plugin on both. The sai plugin
library is loaded into the builder's registry; version-compatible engines serialize it inside the plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from sai.errors import SaiError
from sai.runtime.engine import noise_shape


def build_plan(trt_major: int, precision: str, version_compatible: bool) -> dict:
    """What the builder must be told for a TensorRT major version (pure logic, tested on the CPU):
    network flags, builder flags, whether the plugin library is serialized into the plan."""
    network_flags, builder_flags = [], []
    mask_fp32 = False
    if trt_major < 11:
        if precision == "fp16":
            builder_flags += ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
            mask_fp32 = True
    if version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
    return {"network_flags": network_flags, "builder_flags": builder_flags,
            "serialize_plugins": bool(version_compatible), "strongly_typed": trt_major >= 11,
            "mask_fp32": mask_fp32}


MASK_INPUT = 1  # input 1 of SparseSampleConv and Interpolate is the mask M


def mask_subgraph_layers(network, trt) -> list[int]:
    """Indices of the layers whose outputs reach only mask inputs of sai plugin layers, directly or
    through other such layers (the TensorRT twin of the exporter's fp16 mask-subgraph rule)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugin_type = trt.LayerType.PLUGIN_V3
    consumers: dict[str, list[tuple[int, int]]] = {}
    for li, layer in enumerate(layers):
        for k in range(layer.num_inputs):
            t = layer.get_input(k)
            if t is not None:
                consumers.setdefault(t.name, []).append((li, k))
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    mask_only: set[int] = set()
    for li in range(len(layers) - 1, -1, -1):
        layer = layers[li]
        if layer.type == plugin_type or layer.num_outputs == 0:
            continue
        ok = True
        for j in range(layer.num_outputs):
            name = layer.get_output(j).name
            uses = consumers.get(name, [])
            if name in outputs or not uses or not all(
                    (layers[c].type == plugin_type and k == MASK_INPUT) or c in mask_only for c, k in uses):
                ok = False
                break
        if ok:
            mask_only.add(li)
    return sorted(mask_only)


def pin_mask_subgraph_fp32(network, trt) -> int:
    """precision + output types fp32 on the mask subgraph's float layers; returns how many."""
    floats = {trt.float32, trt.float16}
    pinned = 0
    for li in mask_subgraph_layers(network, trt):
        layer = network.get_layer(li)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(o.dtype in floats for o in outs):
            continue  # comparisons, shapes, casts to other types: nothing to pin
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def profile_shapes(profile, noise_inputs: Sequence[tuple[str, int]], input_name: str = "input") -> dict:
    """name -> (min, opt, max) for the image input and every noise input."""
    lo, opt, hi = profile
    out = {input_name: (tuple(lo), tuple(opt), tuple(hi))}
    for name, stride in noise_inputs:
        out[name] = tuple(noise_shape(s, stride) for s in (lo, opt, hi))
    return out


def build_engine(onnx_path, plan_path, *, profile, noise_inputs=(), precision: str = "fp32",
                 workspace: Optional[int] = None, timing_cache=None, version_compatible: bool = False,
                 plugin_library: Optional[str] = None, force: bool = False, trt=None) -> dict:
    """Parse ``onnx_path`` (functions stripped) and write a serialized engine to ``plan_path``.
    ``timing_cache``: read (``check_timing_cache``, before any builder call) and written back atomically
    (``write_timing_cache``); ``force``: also when it is not a timing cache sai wrote."""
    cache_path, cache_bytes = check_timing_cache(timing_cache, force=force) if timing_cache else (None, b"")
    if trt is None:
        from sai.runtime.trt_backend import import_tensorrt

        trt = import_tensorrt()
    if plugin_library is None:
        from sai.runtime.plugins import find_plugin_library

        found = find_plugin_library()
        if found is None:
            raise SaiError("the sai plugin library is not built; run make plugins (TensorRT headers needed)")
        plugin_library = str(found)
    major = int(str(trt.__version__).split(".")[0])
    plan = build_plan(major, precision, version_compatible)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    builder.get_plugin_registry().load_library(str(plugin_library))
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SaiError(f"TensorRT cannot parse {onnx_path}: {errors[:500]}")
    if plan["mask_fp32"]:
        plan["mask_layers_fp32"] = pin_mask_subgraph_fp32(network, trt)
    config = builder.create_builder_config()
    for flag in plan["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan["serialize_plugins"]:
        config.plugins_to_serialize = [str(plugin_library)]
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    prof = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(profile, noise_inputs).items():
        prof.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(prof)
    cache = None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise SaiError("TensorRT failed to build the engine (see the TensorRT log above)")
    plan_path = Path(plan_path)
    from sai.outputs import write_atomic

    write_atomic(plan_path, bytes(blob))
    if cache is not None:
        write_timing_cache(cache_path, bytes(cache.serialize()), force=force, tensorrt=str(trt.__version__))
    return {"tensorrt": str(trt.__version__), "plugin_library": str(plugin_library), **plan}


# ----------------------------------------------------------------------------------------------
# the timing cache: read, and written back only when it is sai's
# ----------------------------------------------------------------------------------------------
#
# TensorRT's serialized timing cache is an opaque blob with no documented header, and TensorRT cannot run
# where convert's checks run, so its content cannot prove who wrote it. sai proves it with a sidecar:
# every cache sai writes gets ``<name>.sai.json`` beside it (``json_tag(TIMING_CACHE_SIDECAR_KIND)``, the
# cache's sha256 and size). An existing ``--timing-cache FILE`` is written back only when that sidecar is
# there and its sha256 matches FILE's bytes (sai wrote it and nothing changed it since), or with
# ``--force``; otherwise the run is refused before the export and the build. A symbolic link, a folder, a
# special file are never sai's (with ``--force`` a link is replaced by a file; its target is never written).
# Both files are written atomically (``sai.outputs.write_atomic``); a kill between the two leaves a sidecar
# that no longer matches, so the next run refuses rather than overwrite (conservative).

TIMING_CACHE_FLAG = "--timing-cache"
TIMING_CACHE_SIDECAR_KIND = "timing-cache-sidecar"
TIMING_CACHE_SIDECAR_SUFFIX = ".sai.json"


def timing_cache_sidecar(path) -> Path:
    """``<path>.sai.json``: the record that sai wrote the timing cache at ``path``."""
    p = Path(path)
    return p.with_name(p.name + TIMING_CACHE_SIDECAR_SUFFIX)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def timing_cache_reason(path) -> Optional[str]:
    """None when nothing is at ``path`` or it is a timing cache that sai wrote (its sidecar records its
    sha256); otherwise a short reason why sai must not overwrite it."""
    from sai.outputs import FILE_TAG

    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link, which sai never writes"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    side = timing_cache_sidecar(p)
    try:
        doc = json.loads(side.read_bytes()) if side.is_file() and not side.is_symlink() else None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if not isinstance(doc, dict) or str(doc.get(FILE_TAG, "")).rpartition("/")[0] != TIMING_CACHE_SIDECAR_KIND:
        return f"no {side.name} of sai beside it records it"
    try:
        data = p.read_bytes()
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if doc.get("sha256") != _sha256_bytes(data):
        return f"it changed since sai wrote it: its sha256 is not the one {side.name} records"
    return None


def check_timing_cache(path, *, force: bool = False) -> tuple[Path, bytes]:
    """Before the slow work: whether ``path`` may be read and later written back (see the rule above).
    Returns the absolute path and the cache bytes to give TensorRT (b"" when no file is there yet).
    SaiError (one line) for a folder, a missing or unwritable folder, an unreadable file, or an existing file
    that sai did not write (unless ``force``: a line on stderr says it will be overwritten)."""
    from sai.outputs import check_output_file, os_error_message

    flag = TIMING_CACHE_FLAG
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise SaiError(f"{flag} {path} is a folder; give a file path (e.g. {Path(path) / 'timing.cache'})")
    check_output_file(p, flag)  # its folder exists and takes new files
    reason = timing_cache_reason(p)
    if reason is not None:
        if not force:
            raise SaiError(f"{flag} {p} exists and is not a timing cache sai wrote ({reason}); give another "
                           f"{flag} path (a new cache is created there), or pass --force to read it and "
                           "overwrite it")
        with contextlib.suppress(Exception):
            print(f"{flag} --force: {p} will be overwritten after the build ({reason})", file=sys.stderr,
                  flush=True)
    check_output_file(timing_cache_sidecar(p), flag, kind=TIMING_CACHE_SIDECAR_KIND, force=force)
    try:
        data = p.read_bytes() if p.is_file() else b""
    except OSError as exc:
        raise SaiError(os_error_message(exc, p, f"{flag}: cannot read")) from None
    return p, data


def write_timing_cache(path, data: bytes, *, force: bool = False, tensorrt: str = "") -> Path:
    """Write the cache TensorRT serialized to ``path`` and its sidecar, each atomically (a temporary beside it,
    then a rename: never half a file). The owner check runs again first: the file may have changed during
    the build."""
    from sai.outputs import json_tag, write_atomic

    p = Path(path)
    reason = timing_cache_reason(p)
    if reason is not None and not force:
        raise SaiError(f"{TIMING_CACHE_FLAG} {p} changed during the build and is not a timing cache sai wrote "
                       f"({reason}); left as it is: give another {TIMING_CACHE_FLAG} path, or pass --force")
    write_atomic(p, data, flag=TIMING_CACHE_FLAG)
    side = {**json_tag(TIMING_CACHE_SIDECAR_KIND), "file": p.name, "sha256": _sha256_bytes(data),
            "bytes": len(data), "tensorrt": tensorrt}
    write_atomic(timing_cache_sidecar(p), json.dumps(side, indent=2, sort_keys=True) + "\n",
                 flag=TIMING_CACHE_FLAG, kind=TIMING_CACHE_SIDECAR_KIND, force=force)
    return p
