"""Every use of a dependency's private API in sai, each behind a public fallback.

Nothing else in the package touches a private attribute of torch, onnxscript or the standard library.
Each entry says what it uses, why, and what happens where it has moved: the fallback is public API
with the same result (slower at worst). ``tests/test_compat.py`` fails with the entry's message when
an installed version no longer has the private attribute, and checks that both paths agree.

- ``skip_noop_onnx_decomposition``: torch's dynamo ONNX exporter
  (``torch.onnx._internal.exporter._fx_passes.decompose_with_registry`` and ``_decomp``).
  Fallback: the exporter's own decomposition re-trace (identical graph, ~40% more export time).
  The only way with torch 2.13 (the pinned version): ``torch.onnx.export(dynamo=True)`` has no public option
  to skip ``run_decompositions``, so the hook is swapped for the export only and put back.
  ``tests/test_compat.py::test_the_decomposition_hook_is_still_needed`` fails once a torch stops
  re-tracing such graphs by itself: then this entry goes.
- ``is_batchnorm``: ``torch.nn.modules.batchnorm._BatchNorm``, the base of every BatchNorm class.
  Fallback: the public classes ``BatchNorm1d/2d/3d``, ``SyncBatchNorm`` and the lazy ones.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any, Optional

# (module, attribute) of every private API used here, with what moves where it is gone
PRIVATE_APIS: dict[str, tuple[str, str, str]] = {
    "torch_onnx_decompose": (
        "torch.onnx._internal.exporter._fx_passes", "decompose_with_registry",
        "sai export re-traces for the decomposition (same ONNX, slower)"),
    "torch_onnx_decomp_table": (
        "torch.onnx._internal.exporter._decomp", "create_onnx_friendly_decomposition_table",
        "sai export re-traces for the decomposition (same ONNX, slower)"),
    "torch_onnx_implemented": (
        "torch.onnx._internal.exporter._decomp", "get_onnx_implemented_overloads",
        "sai export re-traces for the decomposition (same ONNX, slower)"),
    "torch_batchnorm_base": (
        "torch.nn.modules.batchnorm", "_BatchNorm",
        "norm_eval recognises the public BatchNorm classes only"),
}


def private_api(key: str) -> Optional[Any]:
    """The private object ``PRIVATE_APIS[key]`` names, or None where this installed version lacks it."""
    module, attr, _ = PRIVATE_APIS[key]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def moved_message(key: str) -> str:
    """One line naming the private API, the consequence and the fix (the test's failure message)."""
    module, attr, effect = PRIVATE_APIS[key]
    return (f"{module}.{attr} is not in the installed version: {effect}; update sai/compat.py "
            f"({key}) to the new location or drop it")


# ----------------------------------------------------------------------------------------------
# torch's dynamo ONNX exporter: skip the decomposition re-trace when it would change nothing
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def skip_noop_onnx_decomposition(enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``torch.onnx.export(dynamo=True)`` skips its decomposition re-trace for graphs it
    would leave unchanged. Yields whether the skip is active (False: the public fallback, where torch moved
    the private hook or ``enabled`` is False).

    ``torch.onnx.export`` always runs ``ExportedProgram.run_decompositions`` with a table of the ops ONNX
    does not implement: a full second trace with symbolic shapes, ~40% of the export time here. Our graphs
    contain no such op and no mutating op, so the re-trace is the identity; any other graph still gets
    decomposed. torch offers no public switch for it, hence the private hook, swapped for the block only.
    """
    fx_passes = importlib.import_module(PRIVATE_APIS["torch_onnx_decompose"][0]) if enabled else None
    original = private_api("torch_onnx_decompose") if enabled else None
    table_of = private_api("torch_onnx_decomp_table") if enabled else None
    implemented = private_api("torch_onnx_implemented") if enabled else None
    if original is None or table_of is None or implemented is None:
        yield False
        return

    def decompose(exported_program, registry):
        table = table_of(set(implemented(registry)))
        for node in exported_program.graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            schema = getattr(target, "_schema", None)
            if target in table or (schema is not None and schema.is_mutable):
                return original(exported_program, registry)
            if schema is None and getattr(target, "__module__", "") not in ("_operator", "operator"):
                return original(exported_program, registry)  # a higher-order op or anything unusual
        return exported_program

    setattr(fx_passes, PRIVATE_APIS["torch_onnx_decompose"][1], decompose)
    try:
        yield True
    finally:
        setattr(fx_passes, PRIVATE_APIS["torch_onnx_decompose"][1], original)


# ----------------------------------------------------------------------------------------------
# BatchNorm layers
# ----------------------------------------------------------------------------------------------


def _public_batchnorm_classes() -> tuple[type, ...]:
    import torch.nn as nn

    names = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
             "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d")
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


def is_batchnorm(module: Any, *, private: bool = True) -> bool:
    """Whether ``module`` is a BatchNorm layer (any dimensionality, sync or lazy)."""
    base = private_api("torch_batchnorm_base") if private else None
    return isinstance(module, base if base is not None else _public_batchnorm_classes())


__all__ = ["PRIVATE_APIS", "is_batchnorm", "moved_message", "private_api", "skip_noop_onnx_decomposition"]
