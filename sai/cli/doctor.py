"""`sai doctor`: what is installed, and what each missing piece disables and how to fix it."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Optional

from sai.cli.options import add_json, add_quiet
from sai.lazy import INSTALL


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    disables: str = ""
    fix: str = ""


def run_checks(progress: Optional[Callable[[str], None]] = None) -> list[Check]:
    """Every check, in the order printed; ``progress`` gets a line before each slow one (the imports: torch takes
    10-30 s on a cold start)."""
    from sai.runtime import environment as env

    say = progress or (lambda msg: None)

    checks = [Check("python", True, platform.python_version())]
    table = [
        ("torch", "sai.models, sai export/convert, the torch backend (load/bench/validate/serve --backend torch)"),
        ("onnx", "sai export/convert/info, sai validate's mask outputs, sai export-triton"),
        ("onnxruntime", "the onnxruntime backend: sai bench/serve/validate on ONNX files and convert OUTDIRs"),
        ("onnxscript", "sai export/convert (dynamo translation of the sai custom ops)"),
        ("polygraphy", "sai validate (its Comparator runs the backends)"),
        ("tensorrt", "sai convert's model.plan (skipped with one line), --backend tensorrt in load/bench/serve/"
         "validate, the tensorrt_plan model of sai export-triton"),
        ("cuda.bindings.runtime", "GPU memory, streams and CUDA graphs of the tensorrt backend (cuda-python)"),
        ("tritonclient.grpc.model_config_pb2", "sai export-triton (configs are built as Triton's ModelConfig "
         "protobuf) and the KServe v2 gRPC endpoint of sai serve"),
    ]
    for module, disables in table:
        say(f"importing {module}")
        ok, detail = env.module_version(module)
        name = {"cuda.bindings.runtime": "cuda-python", "tritonclient.grpc.model_config_pb2": "tritonclient"}.get(
            module, module)
        if ok and module.startswith(("cuda.", "tritonclient.")):
            detail = env.dist_version(name)
        checks.append(Check(name, ok, detail, "" if ok else disables, "" if ok else INSTALL[name]))
    checks += _ort_providers()
    say("loading the sai CPU kernels and the onnxruntime custom-op library")
    checks.append(_cpu_kernels())
    checks.append(_ort_custom_ops())
    ok, detail = env.nvcc()
    checks.append(Check("nvcc", ok, detail, "" if ok else "compiling the CUDA kernels (make plugins)",
                        "" if ok else "install the CUDA toolkit or: pip install nvidia-cuda-nvcc"))
    ok, detail = env.gpu()
    checks.append(Check("gpu", ok, detail, "" if ok else "TensorRT engines, GPU benchmarks, make gpu-test",
                        "" if ok else "run on a machine with an NVIDIA GPU and driver"))
    ok, detail = env.plugin_library()
    checks.append(Check("sai plugins", ok, detail,
                        "" if ok else "TensorRT engines with sai ops (convert's model.plan, the tensorrt backend, "
                        "onnxruntime --device tensorrt, Triton's tensorrt_plan model)",
                        "" if ok else "make plugins (needs TensorRT headers: set TENSORRT_ROOT)"))
    checks.append(_engine_build(checks))
    return checks


def _ort_providers() -> list[Check]:
    """The onnxruntime execution providers behind --device cuda / --device tensorrt."""
    from sai.runtime import environment as env

    avail = env.ort_providers()
    if avail is None:
        return []
    out = []
    for ep, device in (("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")):
        ok = ep in avail
        out.append(Check(f"onnxruntime {device} EP", ok, "available" if ok else f"not in {', '.join(avail)}",
                         "" if ok else f"--backend onnxruntime --device {device} (bench, serve, load)",
                         "" if ok else "pip uninstall onnxruntime && pip install 'onnxruntime-gpu==1.31.*' "
                         "(needs an NVIDIA GPU" + (" and TensorRT)" if device == "tensorrt" else ")")))
    return out


def _cpu_kernels() -> Check:
    from sai.runtime import environment as env

    ok, detail = env.cpu_kernels()
    if not ok and detail != "not built":
        return Check("sai cpu kernels", False, detail,
                     "the sparse C++ CPU kernels (the torch backend falls back to the slower PyTorch reference)",
                     "make install")
    return Check("sai cpu kernels", ok, detail,
                 "" if ok else "the sparse C++ CPU kernels (the torch backend falls back to the slower PyTorch "
                 "reference ops)", "" if ok else "make install (builds models/_lib/libsai_cpu_ops.so)")


def _ort_custom_ops() -> Check:
    """libsai_ort_ops.so: the onnxruntime custom-op library (sai.runtime.ort_ops)."""
    from sai.runtime import environment as env

    ok, detail = env.ort_custom_ops()
    return Check("sai ort ops", ok, detail,
                 "" if ok else "the sparse C++ kernels in onnxruntime (the onnxruntime backend runs the model's "
                 "portable function bodies instead, slower)",
                 "" if ok else "make install (builds runtime/lib/libsai_ort_ops.so; see runtime/build_ort_ops.py)")


def _engine_build(checks: list[Check]) -> Check:
    """Whether `sai convert` builds model.plan here, and the first missing piece if not."""
    by = {c.name: c for c in checks}
    for name in ("tensorrt", "gpu", "sai plugins"):  # what the build needs (cuda-python: only the runtime)
        c = by.get(name)
        if c is not None and not c.ok:
            return Check("engine build", False, f"sai convert will skip model.plan: {name} missing",
                         "TensorRT engines (sai convert writes the two ONNX files and the manifest only)", c.fix)
    return Check("engine build", True, "sai convert builds model.plan here")


def run(args: argparse.Namespace) -> int:
    from sai.cli.options import progress_printer

    checks = run_checks(progress_printer(args, "doctor"))
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
        return 0
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok " if c.ok else "-- "
        print(f"{mark} {c.name:<{width}}  {c.detail}")
        if not c.ok:
            print(f"    {'':<{width}}  disables: {c.disables}")
            print(f"    {'':<{width}}  fix:      {c.fix}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report installed pieces and what each missing one disables")
    add_json(p, what="the report")
    add_quiet(p)
    p.set_defaults(func=run)


_MOVED = ("plugin_library_report", "fatbin_archs", "_elf_sections", "_elf_needed")


def __getattr__(name: str):
    """The library probes live in ``sai.runtime.environment``; these names keep resolving here for older
    imports (imported on use, so building the parser imports nothing heavy)."""
    if name in _MOVED:
        from sai.runtime import environment

        return getattr(environment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
