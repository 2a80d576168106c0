"""The torch backend in fp16 / bf16 (`sai bench --backend torch --precision`), and its CUDA-graph switch.

The reference is the same model in fp32 (the eager fused model, fp32 weights): fp16 must agree to
fp16 rounding with identical masks, because the mask predictors stay fp32 (docs/design.md 7); bf16,
with 8 mantissa bits, to its own rounding on the outputs. CUDA graphs need a GPU: here only the
refusal on the CPU is checked (make gpu-check times the GPU path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sai.errors import SaiError
from sai.models import build_model, cast_for_inference, fuse_for_inference

DEMO = str(Path(__file__).resolve().parents[1] / "models" / "zoo" / "sai_demo_r18" / "sparse_resnet18.pth")


def _model():
    torch.manual_seed(0)
    model = build_model("sparse_resnet18", head="cls", num_classes=10, base_width=16).eval()
    g = torch.Generator().manual_seed(1)
    for name, mod in model.named_modules():
        if name.endswith(("conv1_mask", "conv2_mask")):
            with torch.no_grad():
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.05)
    return model


def _masks(model, x):
    got = []
    with model.add_mask_observer(lambda name, which, m: got.append(m)):
        out = model(x)
    return out, got


def test_cast_keeps_the_mask_predictors_fp32_and_matches_fp32():
    model = _model()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref, ref_masks = _masks(fuse_for_inference(model), x)
    half = cast_for_inference(fuse_for_inference(model), "fp16")
    for blk in (b for _, b in half.sparse_blocks()):
        assert blk.mask1_weight.dtype == torch.float32 and blk.mask2_bias.dtype == torch.float32
        assert blk.conv1_weight.dtype == torch.float16
    out, masks = _masks(half, x.half())
    assert out.dtype == torch.float16 and all(m.dtype == torch.float32 for m in masks)
    assert all(torch.equal(a > 0, b > 0) for a, b in zip(ref_masks, masks, strict=True)), "a mask decision flipped"
    err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
    assert err < 4e-3, err
    bf = cast_for_inference(fuse_for_inference(model), "bf16")
    out = bf(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_cast_refuses_unknown_precisions_and_unfused_models():
    with pytest.raises(SaiError, match="precision must be one of fp16, bf16, fp32"):
        cast_for_inference(fuse_for_inference(_model()), "int8")
    with pytest.raises(SaiError, match="needs a fused model"):
        cast_for_inference(_model(), "fp16")


def test_torch_engine_runs_fp16_with_float32_inputs_and_outputs():
    from sai.runtime.torch_backend import TorchEngine

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with TorchEngine(DEMO) as ref, TorchEngine(DEMO, precision="fp16") as half:
        assert half.metadata["precision"] == "fp16" and ref.metadata["precision"] == "fp32"
        a, b = ref.infer(x), half.infer(x)
        for name in a:
            assert b[name].dtype == np.float32  # the engine's interface stays float32
            scale = np.abs(a[name]).max()
            assert np.abs(a[name] - b[name]).max() / scale < 1e-2, name


def test_torch_engine_refuses_bad_options_clearly():
    from sai.runtime.torch_backend import TorchEngine

    with pytest.raises(SaiError, match="torch precision must be fp32, fp16 or bf16"):
        TorchEngine(DEMO, precision="int8")
    with pytest.raises(SaiError, match="CUDA graphs need --device cuda"):
        TorchEngine(DEMO, cuda_graphs=True)


def test_bench_cli_precision_is_a_torch_option(tmp_path, capsys):
    from sai.cli.main import main

    assert main(["bench", DEMO, "--backend", "torch", "--precision", "bf16", "--iterations", "1", "--warmup", "0",
                 "--shape", "64,64", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"backend": "torch"' in out
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    assert main(["bench", str(onnx), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "--precision and --cuda-graphs are options of the torch backend" in err
