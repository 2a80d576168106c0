"""Shared by the runtime/CLI tests: one tiny checkpoint and one `sai convert` OUTDIR per test session.

The export is the slow part (~20 s of CPU), so it runs once, through the real CLI, in the session's
base temp dir; every test module that needs it calls ``tiny_outdir(tmp_path_factory)``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

ARCH = "sparse_resnet18"
OPTIONS = {"base_width": 8, "num_classes": 10, "seed": 0}
SHAPE = (1, 3, 32, 32)


def tiny_model():
    """sparse_resnet18 at base width 8, with mask predictors set so masks are ~half sparse (the default
    init makes every mask all-ones, which would leave the sparse paths untested). Deterministic."""
    import torch

    from sai.models import build_model

    torch.manual_seed(0)
    return half_sparse(build_model(ARCH, **OPTIONS))


def half_sparse(model, offsets: bool = False):
    """``model`` with its mask predictors set so masks are about half sparse (deterministic); with
    ``offsets``, deformable blocks' offset convs give offsets of about a pixel (their zero init samples the
    regular grid, which would leave the bilinear sampling untested). Returns the model."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, blk in model.sparse_blocks():
            for conv in (blk.conv1_mask, blk.conv2_mask):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
                conv.bias.fill_(0.05)
            if offsets and blk.with_dcn:
                blk.conv2_offset.weight.copy_(torch.randn(blk.conv2_offset.weight.shape, generator=gen) * 0.02)
                blk.conv2_offset.bias.copy_(torch.randn(blk.conv2_offset.bias.shape, generator=gen))
    return model


def tiny_checkpoint(root: Path) -> Path:
    from sai.models import save_checkpoint

    path = Path(root) / "tiny.pth"
    if not path.is_file():
        save_checkpoint(tiny_model(), path)
    return path


def tiny_outdir(tmp_path_factory) -> tuple[Path, dict]:
    """``(outdir, {"rc", "stdout", "stderr"})`` of ``sai convert`` on the tiny checkpoint (cached)."""
    from sai.cli.main import main

    root = tmp_path_factory.getbasetemp() / "sai_tiny"
    outdir, record = root / "out", root / "convert.json"
    if record.is_file():
        return outdir, json.loads(record.read_text())
    root.mkdir(exist_ok=True)
    ck = tiny_checkpoint(root)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["convert", str(ck), "--arch", ARCH, "-o", str(outdir), "--shape", ",".join(map(str, SHAPE)),
                   "--max-shape", "8,3,64,64"])
    info = {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}
    record.write_text(json.dumps(info))
    return outdir, info


def record_files(outdir: Path, *names: str) -> None:
    """Record ``names`` (files a test changed or added in a copied OUTDIR) in its manifest with their new sha256
    and size, as sai convert would have written them."""
    import hashlib

    path = Path(outdir) / "manifest.json"
    manifest = json.loads(path.read_text())
    for name in names:
        data = (Path(outdir) / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    path.write_text(json.dumps(manifest, indent=2))


def demo_outdir(tmp_path_factory) -> Path:
    """A ``sai convert`` OUTDIR of the shipped demo checkpoint (64x64, batch up to 16), cached per session:
    it records the checkpoint's preprocessing and class names."""
    from sai.cli.main import main
    from sai.models import demo_data

    root = tmp_path_factory.getbasetemp() / "sai_demo"
    outdir = root / "out"
    if (outdir / "manifest.json").is_file():
        return outdir
    root.mkdir(exist_ok=True)
    ck = Path(demo_data.__file__).parent / "zoo" / "sai_demo_r18" / "sparse_resnet18.pth"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["convert", str(ck), "-o", str(outdir), "--shape", "1,3,64,64", "--max-shape", "16,3,64,64"])
    assert rc == 0, out.getvalue() + err.getvalue()
    return outdir


def request(srv, method: str, path: str, body: bytes = b"", headers=None, timeout: float = 60):
    """One HTTP request to the `sai serve` server ``srv`` on a fresh connection: ``(status, headers, body)``."""
    import http.client

    c = http.client.HTTPConnection(srv.host, srv.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        c.close()
