"""TensorRT engine build (thin; runs only where TensorRT and a GPU exist, covered by GPU tests).

TensorRT 11 networks are always strongly typed: precision comes from the ONNX file (fp16 tensors).
TensorRT 10 builds weakly typed networks with the FP16 builder flag for fp16 models. The sai plugin
library is loaded into the builder's registry; version-compatible engines serialize it inside the plan.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from sai.errors import SaiError
from sai.runtime.engine import noise_shape


def build_plan(trt_major: int, precision: str, version_compatible: bool) -> dict:
    """What the builder must be told for a TensorRT major version (pure logic, tested on the CPU):
    network flags, builder flags, whether the plugin library is serialized into the plan."""
    network_flags, builder_flags = [], []
    if trt_major < 11:
        if precision == "fp16":
            builder_flags.append("FP16")
    if version_compatible:
        builder_flags.append("VERSION_COMPATIBLE")
    return {"network_flags": network_flags, "builder_flags": builder_flags,
            "serialize_plugins": bool(version_compatible), "strongly_typed": trt_major >= 11}


def profile_shapes(profile, noise_inputs: Sequence[tuple[str, int]], input_name: str = "input") -> dict:
    """name -> (min, opt, max) for the image input and every noise input."""
    lo, opt, hi = profile
    out = {input_name: (tuple(lo), tuple(opt), tuple(hi))}
    for name, stride in noise_inputs:
        out[name] = tuple(noise_shape(s, stride) for s in (lo, opt, hi))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_engine(onnx_path, plan_path, *, profile, noise_inputs=(), precision: str = "fp32",
                 workspace: Optional[int] = None, timing_cache=None, version_compatible: bool = False,
                 plugin_library: Optional[str] = None, trt=None) -> dict:
    """Parse ``onnx_path`` (functions stripped) and write a serialized engine to ``plan_path``."""
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
    if timing_cache:
        tc = Path(timing_cache)
        cache = config.create_timing_cache(tc.read_bytes() if tc.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise SaiError("TensorRT failed to build the engine (see the TensorRT log above)")
    plan_path = Path(plan_path)
    _write_atomic(plan_path, bytes(blob))
    if cache is not None:
        _write_atomic(Path(timing_cache), bytes(cache.serialize()))
    return {"tensorrt": str(trt.__version__), "plugin_library": str(plugin_library), **plan}
