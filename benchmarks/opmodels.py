"""One-node ONNX models of the sai ops (any body), and the Conv + Mul baseline: for tests and benches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sai.constants import (
    DEFAULT_OPSET,
    DOMAIN,
    DOMAIN_VERSION,
    INTERPOLATE,
    PLUGIN_ATTRIBUTES,
    SPARSE_SAMPLE_CONV,
)
from sai.exporter.functions import attach_functions

IR_VERSION = 10  # onnxruntime 1.31 reads up to 13; function overloads need 10


def _model(nodes, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "sai_op", inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    m.producer_name = "sai-deploy"
    return m


def sparse_sample_conv_model(
    weight: np.ndarray,
    bias: Optional[np.ndarray] = None,
    *,
    stride: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
    activation: str = "none",
    body: str = "sparse",
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """``Y = SparseSampleConv(X, M, W [, B])`` with dynamic N/H/W and the local functions of ``body``."""
    cout, cin_g = int(weight.shape[0]), int(weight.shape[1])
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", cin_g * group, "H", "W"])
    m = helper.make_tensor_value_info("M", TensorProto.FLOAT, ["N", 1, "Ho", "Wo"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", cout, "Ho", "Wo"])
    inits = [numpy_helper.from_array(np.asarray(weight, np.float32), "W")]
    names = ["X", "M", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(bias, np.float32), "B"))
        names.append("B")
    node = helper.make_node(
        SPARSE_SAMPLE_CONV, names, ["Y"], domain=DOMAIN, strides=list(stride), pads=list(pads), dilations=list(dilation),
        group=int(group), deform_groups=1, activation=activation, **PLUGIN_ATTRIBUTES)
    model = _model([node], [x, m], [y], inits, opset)
    model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    attach_functions(model, opset, body)
    return model


def deform_sparse_sample_conv_model(
    weight: np.ndarray,
    bias: Optional[np.ndarray] = None,
    *,
    stride: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
    deform_groups: int = 1,
    activation: str = "none",
    body: str = "sparse",
    deform_body: Optional[str] = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """``Y = SparseSampleConv(X, M, W, B, Offset)`` (deformable, overload ``deform``) with dynamic N/H/W,
    ``Offset`` a graph input and the local functions of ``body`` / ``deform_body`` (``all_functions``).
    No bias: a zero bias, as the exporter passes."""
    cout, cin_g, kh, kw = (int(s) for s in weight.shape)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", cin_g * group, "H", "W"])
    m = helper.make_tensor_value_info("M", TensorProto.FLOAT, ["N", 1, "Ho", "Wo"])
    off = helper.make_tensor_value_info("Offset", TensorProto.FLOAT, ["N", 2 * deform_groups * kh * kw, "Ho", "Wo"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", cout, "Ho", "Wo"])
    b = np.zeros([cout], np.float32) if bias is None else np.asarray(bias, np.float32)
    inits = [numpy_helper.from_array(np.asarray(weight, np.float32), "W"), numpy_helper.from_array(b, "B")]
    node = helper.make_node(
        SPARSE_SAMPLE_CONV, ["X", "M", "W", "B", "Offset"], ["Y"], domain=DOMAIN, strides=list(stride), pads=list(pads),
        dilations=list(dilation), group=int(group), deform_groups=int(deform_groups), activation=activation,
        **PLUGIN_ATTRIBUTES)
    model = _model([node], [x, m, off], [y], inits, opset)
    model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    attach_functions(model, opset, body, deform_body=deform_body)
    return model


def interpolate_model(
    channels: int, sigma: float, *, kernel_size: int = 7, eps: float = 1e-5, body: str = "sparse",
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """``Y = Interpolate(F, M)`` with dynamic N/H/W and the local function of ``body``."""
    f = helper.make_tensor_value_info("F", TensorProto.FLOAT, ["N", channels, "H", "W"])
    m = helper.make_tensor_value_info("M", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", channels, "H", "W"])
    node = helper.make_node(INTERPOLATE, ["F", "M"], ["Y"], domain=DOMAIN, kernel_size=int(kernel_size),
                            sigma=float(sigma), eps=float(eps), channels=int(channels),
                            **PLUGIN_ATTRIBUTES)
    model = _model([node], [f, m], [y], [], opset)
    model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    attach_functions(model, opset, body)
    return model


def conv_mul_model(weight: np.ndarray, bias: Optional[np.ndarray] = None, *, pads=(1, 1, 1, 1),
                   activation: str = "relu", opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The dense baseline: ``Conv`` (+ ``Relu``) then ``Mul`` by ``Cast(M > 0)``."""
    cout, cin = int(weight.shape[0]), int(weight.shape[1])
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", cin, "H", "W"])
    m = helper.make_tensor_value_info("M", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", cout, "H", "W"])
    inits = [numpy_helper.from_array(np.asarray(weight, np.float32), "W"),
             numpy_helper.from_array(np.zeros([], np.float32), "zero")]
    conv_in = ["X", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(bias, np.float32), "B"))
        conv_in.append("B")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=list(pads))]
    last = "c"
    if activation == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        last = "r"
    nodes += [
        helper.make_node("Greater", ["M", "zero"], ["keep"]),
        helper.make_node("Cast", ["keep"], ["keep_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [last, "keep_f"], ["Y"]),
    ]
    return _model(nodes, [x, m], [y], inits, opset)


def bench_session_options(threads: int = 0):
    """onnxruntime options for timing sessions against each other in alternation: ``threads`` intra-op
    threads, no spin-waiting. With spinning (the default) an idle session's threads keep spinning after
    each run and take the cores from the session timed next: on 2 cores that doubled the measured
    times of a 10-40 ms model and skewed their ratio."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _time_alternating(sessions: dict, feed: dict, repeats: int, warmup: int = 1) -> tuple[dict, dict]:
    """Run every session ``warmup`` times, then ``repeats`` rounds of one run each, in turn.
    Returns (times in ms per session, median per session)."""
    import statistics
    import time

    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times, {k: statistics.median(v) for k, v in times.items()}


def bench_sparse_sample_conv(
    repeats: int = 10, *, size: int = 64, channels: int = 256, densities=(0.1, 0.25, 0.5, 1.0), threads: int = 2,
) -> list[dict]:
    """One SparseSampleConv 3x3 ``channels -> channels`` at ``size`` x ``size`` in onnxruntime:
    sparse body vs ``Conv`` + ``Mul`` (interleaved medians; ``ratio`` = conv_mul / sparse)."""

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    opts = bench_session_options(threads)
    sessions = {
        "sparse": sparse_sample_conv_model(w, b, pads=(1, 1, 1, 1), activation="relu", body="sparse"),
        "conv_mul": conv_mul_model(w, b),
    }
    sessions = {k: ort.InferenceSession(v.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                for k, v in sessions.items()}
    x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
    results = []
    for r in densities:
        mask = (rng.random((1, 1, size, size)) < r).astype(np.float32)
        times, med = _time_alternating(sessions, {"X": x, "M": mask}, repeats)
        results.append({"density": float(r), "sparse_ms": med["sparse"], "conv_mul_ms": med["conv_mul"],
                        "ratio": med["conv_mul"] / med["sparse"], "sparse_times": times["sparse"],
                        "conv_mul_times": times["conv_mul"]})
    return results


def bench_deform_sparse_sample_conv(
    repeats: int = 10, *, size: int = 64, channels: int = 256, densities=(0.1, 0.25, 0.5, 1.0), threads: int = 2,
    offset_std: float = 2.0,
) -> list[dict]:
    """One deformable SparseSampleConv 3x3 ``channels -> channels`` at ``size`` x ``size``, batch 1, offsets
    ~ N(0, ``offset_std``) in onnxruntime: the sparse deform body vs the dense ``DeformConv`` body (interleaved
    medians in ms; ``ratio`` = dense / sparse, > 1 when the sparse body is faster)."""

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    opts = bench_session_options(threads)
    models = {k: deform_sparse_sample_conv_model(w, b, pads=(1, 1, 1, 1), activation="relu", deform_body=k)
              for k in ("sparse", "dense")}
    sessions = {k: ort.InferenceSession(v.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                for k, v in models.items()}
    x = rng.standard_normal((1, channels, size, size)).astype(np.float32)
    off = (rng.standard_normal((1, 18, size, size)) * offset_std).astype(np.float32)
    results = []
    for r in densities:
        mask = (rng.random((1, 1, size, size)) < r).astype(np.float32)
        times, med = _time_alternating(sessions, {"X": x, "M": mask, "Offset": off}, repeats, warmup=2)
        results.append({"density": float(r), "sparse_ms": med["sparse"], "dense_ms": med["dense"],
                        "ratio": med["dense"] / med["sparse"], "sparse_times": times["sparse"],
                        "dense_times": times["dense"]})
    return results
