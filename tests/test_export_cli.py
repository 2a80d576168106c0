"""`sai export` and `sai info` (in-process through sai.cli.main.main: no interpreter start-up)."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from sai.cli.main import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from sai.models import build_model, save_checkpoint

    tmp = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_model("sparse_resnet18", head="cls", num_classes=7, base_width=8, dcn_stages=(0, 0, 1, 1))
    return save_checkpoint(model, tmp / "r18.pth"), tmp


@pytest.fixture(scope="module")
def exported(ckpt):
    path, tmp = ckpt
    out = tmp / "r18.onnx"
    code = main(["export", "--checkpoint", str(path), "--shape", "1,3,64,64", "--target", "tensorrt",
                 "-o", str(out)])
    assert code == 0
    return out


def test_export_from_checkpoint(exported, capsys):
    m = onnx.load(str(exported))
    onnx.checker.check_model(m, full_check=True)
    assert [o.name for o in m.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 7]  # classes from the checkpoint
    assert not m.functions


def test_info(exported, capsys):
    """The default tensorrt target: one SparseBlock node per block the plugin takes. At base width 8 the blocks
    layer1.0, layer1.1 and layer2.0 have 8-channel convs (the plugin's builds need multiples of 16) and keep 2
    SparseSampleConv + 2 Interpolate each (no DCN in stages 1-2); the other 5 blocks are SparseBlock nodes."""
    assert main(["info", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "sparse_resnet18" in out and "SparseSampleConv x6" in out and "Interpolate x6" in out
    assert "SparseBlock x5" in out and "layer4.1" in out and "tensorrt" in out
    assert main(["info", "--json", str(exported)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sparse_ops"] == {"SparseSampleConv": 6, "Interpolate": 6, "SparseBlock": 5}
    assert info["metadata"]["dcn_stages"] == [0, 0, 1, 1] and info["metadata"]["trt_blocks"] == "fused"
    assert len(info["blocks"]) == 8 and info["local_functions"] == []
    assert [name for name, c in info["blocks"].items() if c["SparseBlock"]] == [
        "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert "SparseSampleConv[deform]" not in info["sparse_op_variants"]  # the DCN blocks are all fused


def test_export_per_op_blocks(ckpt, capsys):
    """--trt-blocks per-op: every block as per-op nodes (2 convs + 1 DCN offset conv in stages 3-4, 2
    Interpolates per block); --trt-blocks with another target is a one-line error, nothing written."""
    path, tmp = ckpt
    out = tmp / "r18_per_op.onnx"
    assert main(["export", "--checkpoint", str(path), "--shape", "1,3,64,64", "--target", "tensorrt",
                 "--trt-blocks", "per-op", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sparse_ops"] == {"SparseSampleConv": 20, "Interpolate": 16}
    assert info["sparse_op_variants"]["SparseSampleConv[deform]"] == 4
    bad = tmp / "bad_trt_blocks.onnx"
    assert main(["export", "--checkpoint", str(path), "--trt-blocks", "fused", "-o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--trt-blocks fused applies to --target tensorrt only" in err and err.count("\n") == 1, err
    assert not bad.exists()


@pytest.mark.parametrize("argv, match", [
    (["--head", "fpn"], "--head fpn contradicts checkpoint"),
    (["--num-classes", "10"], "--num-classes 10 contradicts"),
    (["--dcn-stages", "0,1,1,1"], "--dcn-stages 0,1,1,1 contradicts"),
    (["--arch", "sparse_resnet50"], "holds a sparse_resnet18 but --arch is sparse_resnet50"),
    (["--opset", "18"], "opset 18 is not supported"),
    (["--shape", "1,3,0,64"], "input shape"),
])
def test_flag_errors(ckpt, capsys, argv, match):
    path, tmp = ckpt
    out = tmp / "bad.onnx"
    assert main(["export", "--checkpoint", str(path), *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not out.exists()


def test_checkpoint_that_does_not_fit(ckpt, capsys):
    path, tmp = ckpt
    sd = torch.load(path, weights_only=True)["state_dict"]
    sd["layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)  # a 3x3 conv in a BasicBlock
    torch.save({"state_dict": sd}, tmp / "broken.pth")
    assert main(["export", "--checkpoint", str(tmp / "broken.pth"), "-o", str(tmp / "b.onnx")]) == 2
    err = capsys.readouterr().err
    assert "layer1.0.conv1.weight" in err


def test_unknown_arch_and_missing_file(tmp_path, capsys):
    assert main(["export", "--arch", "resnet19", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "unknown arch 'resnet19'" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_reads_the_checkpoint_once_and_says_each_step(ckpt, tmp_path, capsys, monkeypatch):
    """Issue 28 item 5: `sai export --checkpoint` unpickles the file once (it was read four times: the arch, the
    options, the weights, the meta), and on a terminal a line per step goes to stderr (issue 27 item 7)."""
    import sai.cli.options as options

    calls = []
    real_load = torch.load

    def counting_load(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("f"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(options, "_interactive", lambda: True)
    path, _ = ckpt
    out = tmp_path / "once.onnx"
    assert main(["export", "--checkpoint", str(path), "--shape", "1x3x64x64", "--no-check", "-o", str(out)]) == 0
    assert len(calls) == 1, calls
    cap = capsys.readouterr()
    assert f"sai export: reading {path}" in cap.err and "sai export: exporting sparse_resnet18 at 1x3x64x64" in cap.err
    assert "random weights" not in cap.out
    assert [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim] == [
        "batch", 7]  # the checkpoint's classifier: the one read gave the options too
    assert main(["export", "--checkpoint", str(path), "--shape", "1x3x64x64", "--no-check", "-q", "--force",
                 "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""  # -q: no progress lines


def test_export_without_checkpoint_says_the_weights_are_random(tmp_path, capsys):
    argv = ["export", "--arch", "sparse_resnet18", "--base-width", "8", "--num-classes", "10", "--shape", "1x3x32x32",
            "--no-check", "-o", str(tmp_path / "r.onnx")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "note: no --checkpoint, so sparse_resnet18 has random weights" in out
    assert main([*argv, "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["random_weights"] is True
