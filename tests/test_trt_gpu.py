"""TensorRT engines with the sai plugins against the PyTorch reference (needs a GPU and TensorRT).

Each test builds an engine from a single-node ONNX model in the TensorRT form (domain ``sai``,
``plugin_version`` / ``plugin_namespace`` attributes, no model-local function, so the parser falls
back to the plugin registry), with libsai_trt_plugins.so loaded through
``IPluginRegistry.load_library`` (the library has getCreators, no static registration). Shapes are
dynamic (one optimization profile, run at two shapes); fp32 and fp16 (fp16 tensors in the model;
strongly typed network where TensorRT supports it); masks from empty to full.

Run with ``make gpu-test`` (builds the plugins first). Skipped where there is no GPU (conftest).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sai.models import ops

pytestmark = pytest.mark.gpu

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def trt_env():
    trt = pytest.importorskip("tensorrt", reason="TensorRT Python bindings are not installed")
    from sai.runtime.plugins import find_plugin_library

    lib = find_plugin_library()
    if lib is None:
        pytest.fail("libsai_trt_plugins.so is not built: run make plugins (with TENSORRT_ROOT)")
    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    handle = registry.load_library(str(lib))
    assert handle is not None, f"IPluginRegistry.load_library failed for {lib}"
    names = {(c.name, c.plugin_version, c.plugin_namespace) for c in registry.all_creators}
    assert ("SparseSampleConv", "1", "sai") in names and ("Interpolate", "1", "sai") in names, names
    yield trt, logger
    registry.deregister_library(handle)


def _np_type(fp16: bool):
    return np.float16 if fp16 else np.float32


def _onnx_type(fp16: bool):
    return TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT


def build_engine(trt, logger, model_bytes: bytes, profile: dict[str, tuple], fp16: bool):
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise AssertionError("ONNX parse failed:\n" + "\n".join(errors))
    config = builder.create_builder_config()
    if fp16 and not flags and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10 without a strongly typed network
    prof = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        prof.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(prof)
    blob = builder.build_serialized_network(network, config)
    assert blob is not None, "engine build failed"
    return trt.Runtime(logger).deserialize_cuda_engine(blob)


def run_engine(engine, feeds: dict[str, np.ndarray], out_name: str, out_dtype) -> np.ndarray:
    """Runs one inference with torch CUDA buffers if available, else cuda-python."""
    ctx = engine.create_execution_context()
    if torch.cuda.is_available():
        bufs = {}
        for name, arr in feeds.items():
            bufs[name] = torch.from_numpy(np.ascontiguousarray(arr)).cuda()
            ctx.set_input_shape(name, arr.shape)
            ctx.set_tensor_address(name, bufs[name].data_ptr())
        shape = tuple(ctx.get_tensor_shape(out_name))
        out = torch.empty(shape, dtype=torch.float16 if out_dtype == np.float16 else torch.float32, device="cuda")
        ctx.set_tensor_address(out_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        assert ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out.cpu().numpy()
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = pytest.importorskip("cuda.cudart", reason="needs torch with CUDA or cuda-python")
    ptrs = []
    try:
        for name, arr in feeds.items():
            arr = np.ascontiguousarray(arr)
            _, p = cudart.cudaMalloc(arr.nbytes)
            ptrs.append(p)
            cudart.cudaMemcpy(p, arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            ctx.set_input_shape(name, arr.shape)
            ctx.set_tensor_address(name, p)
        shape = tuple(ctx.get_tensor_shape(out_name))
        out = np.empty(shape, out_dtype)
        _, po = cudart.cudaMalloc(max(out.nbytes, 1))
        ptrs.append(po)
        ctx.set_tensor_address(out_name, po)
        _, stream = cudart.cudaStreamCreate()
        assert ctx.execute_async_v3(stream)
        cudart.cudaStreamSynchronize(stream)
        cudart.cudaMemcpy(out.ctypes.data, po, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        cudart.cudaStreamDestroy(stream)
        return out
    finally:
        for p in ptrs:
            cudart.cudaFree(p)


def make_mask(n, h, w, kind, dtype):
    if kind == "empty":
        return np.zeros((n, 1, h, w), dtype)
    if kind == "full":
        return np.ones((n, 1, h, w), dtype)
    keep = RNG.random((n, 1, h, w)) < 0.3
    if kind == "hard":
        return keep.astype(dtype)
    return np.where(keep, RNG.uniform(0.5, 1.0, (n, 1, h, w)), 0).astype(dtype)


def out_size(size, k, s, pb, pe, d):
    return (size + pb + pe - d * (k - 1) - 1) // s + 1


# ------------------------------------------------------------------ SparseSampleConv

SSC_CASES = [
    # cin, cout, k, stride, pads, dil, group, dg, bias, offset, act
    (16, 24, 3, 1, (1, 1, 1, 1), 1, 1, 1, True, False, "relu"),
    (16, 16, 3, 2, (1, 1, 1, 1), 1, 2, 1, False, False, "none"),
    (8, 12, 5, 1, (4, 4, 4, 4), 2, 1, 1, True, False, "relu"),
    (32, 64, 1, 1, (0, 0, 0, 0), 1, 1, 1, False, False, "none"),
    (16, 16, 3, 1, (1, 1, 1, 1), 1, 1, 1, True, True, "relu"),
    (16, 32, 3, 2, (1, 1, 1, 1), 1, 1, 2, True, True, "none"),
]


def ssc_model(case, fp16):
    cin, cout, k, s, pads, d, g, dg, use_b, use_off, act = case
    t = _onnx_type(fp16)
    wt = (RNG.standard_normal((cout, cin // g, k, k)) * 0.2).astype(_np_type(fp16))
    b = RNG.standard_normal(cout).astype(_np_type(fp16))
    inputs = ["X", "M", "W"] + (["B"] if use_b or use_off else []) + (["O"] if use_off else [])
    inits = [numpy_helper.from_array(wt, "W")]
    if use_b or use_off:
        bias = b if use_b else np.zeros(cout, _np_type(fp16))
        inits.append(numpy_helper.from_array(bias, "B"))
    node = helper.make_node("SparseSampleConv", inputs, ["Y"], domain="sai", strides=[s, s], pads=list(pads),
                            dilations=[d, d], group=g, deform_groups=dg, activation=act,
                            plugin_version="1", plugin_namespace="sai")
    vi = [helper.make_tensor_value_info("X", t, ["N", cin, "H", "W_"]),
          helper.make_tensor_value_info("M", t, ["N", 1, "Ho", "Wo"])]
    if use_off:
        vi.append(helper.make_tensor_value_info("O", t, ["N", 2 * dg * k * k, "Ho", "Wo"]))
    graph = helper.make_graph([node], "ssc", vi, [helper.make_tensor_value_info("Y", t, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("sai", 1)])
    return model.SerializeToString(), wt, (b if use_b else None)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", SSC_CASES, ids=lambda c: f"k{c[2]}s{c[3]}g{c[6]}{'dcn' if c[9] else ''}")
def test_sparse_sample_conv_engine(trt_env, case, fp16):
    trt, logger = trt_env
    cin, cout, k, s, pads, d, g, dg, use_b, use_off, act = case
    model, wt, b = ssc_model(case, fp16)
    shapes = [(1, 9, 13), (2, 24, 31), (3, 40, 37)]  # (N, H, W): min, opt, max

    def dims(n, h, w):
        ho = out_size(h, k, s, pads[0], pads[2], d)
        wo = out_size(w, k, s, pads[1], pads[3], d)
        out = {"X": (n, cin, h, w), "M": (n, 1, ho, wo)}
        if use_off:
            out["O"] = (n, 2 * dg * k * k, ho, wo)
        return out

    per = [dims(*sh) for sh in shapes]
    profile = {name: tuple(p[name] for p in per) for name in per[0]}
    engine = build_engine(trt, logger, model, profile, fp16)
    dt = _np_type(fp16)
    for (n, h, w), kind in [((2, 24, 31), "soft"), ((3, 40, 37), "hard"), ((1, 9, 13), "empty"), ((2, 17, 20), "full")]:
        dd = dims(n, h, w)
        x = RNG.standard_normal(dd["X"]).astype(dt)
        m = make_mask(*[dd["M"][i] for i in (0, 2, 3)], kind, dt)
        feeds = {"X": x, "M": m}
        off = None
        if use_off:
            off = (RNG.standard_normal(dd["O"]) * 2).astype(dt)
            feeds["O"] = off
        y = run_engine(engine, feeds, "Y", dt)
        ref = ops.sparse_sample_conv(
            torch.from_numpy(x.astype(np.float32)), torch.from_numpy(m.astype(np.float32)),
            torch.from_numpy(wt.astype(np.float32)), None if b is None else torch.from_numpy(b.astype(np.float32)),
            stride=s, padding=list(pads), dilation=d, groups=g, activation=act,
            offset=None if off is None else torch.from_numpy(off.astype(np.float32)), deform_groups=dg,
        ).numpy()
        tol = 3e-2 if fp16 else 1e-3
        np.testing.assert_allclose(y.astype(np.float32), ref, rtol=tol, atol=tol, err_msg=f"{(n, h, w)} {kind}")
        assert np.all(y[np.broadcast_to(m == 0, y.shape)] == 0)


# ------------------------------------------------------------------ Interpolate


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kernel_size,sigma", [(7, 1.0), (5, 0.6), (3, 2.0)])
def test_interpolate_engine(trt_env, kernel_size, sigma, fp16):
    trt, logger = trt_env
    c = 24
    t = _onnx_type(fp16)
    node = helper.make_node("Interpolate", ["F", "M"], ["Y"], domain="sai", kernel_size=kernel_size, sigma=sigma,
                            eps=1e-5, plugin_version="1", plugin_namespace="sai")
    graph = helper.make_graph([node], "interp", [helper.make_tensor_value_info("F", t, ["N", c, "H", "W"]),
                                                 helper.make_tensor_value_info("M", t, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("Y", t, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("sai", 1)])
    shapes = [(1, 8, 9), (2, 32, 40), (3, 50, 61)]
    profile = {"F": tuple((n, c, h, w) for n, h, w in shapes), "M": tuple((n, 1, h, w) for n, h, w in shapes)}
    engine = build_engine(trt, logger, model.SerializeToString(), profile, fp16)
    dt = _np_type(fp16)
    for (n, h, w), kind in [((2, 32, 40), "soft"), ((3, 50, 61), "hard"), ((1, 8, 9), "empty"), ((2, 21, 19), "full")]:
        f = RNG.standard_normal((n, c, h, w)).astype(dt)
        m = make_mask(n, h, w, kind, dt)
        y = run_engine(engine, {"F": f, "M": m}, "Y", dt)
        ref = ops.interpolate(torch.from_numpy(f.astype(np.float32)), torch.from_numpy(m.astype(np.float32)),
                              sigma, kernel_size, 1e-5).numpy()
        tol = 3e-2 if fp16 else 1e-4
        np.testing.assert_allclose(y.astype(np.float32), ref, rtol=tol, atol=tol, err_msg=f"{(n, h, w)} {kind}")
