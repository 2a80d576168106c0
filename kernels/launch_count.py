"""GPU kernel launches of a forward on the torch CUDA path, counted on the CPU (issue 24 items 6-7).

With ``SAI_KERNELS_ON_CPU=1`` and ``TRITON_INTERPRET=1`` the fused inference model takes its CUDA code
path on CPU tensors (``sai.models.fuse``: the Triton kernels run under the interpreter). A
``TorchDispatchMode`` counts every aten op that would be a CUDA kernel (views, metadata ops and
allocations are not; a copy or fill is), and a wrapper around ``sai.kernels``' launch objects counts
each Triton launch. An aten op counts as one launch (cuDNN may use two or three for a convolution:
the dense baseline is, if anything, under-counted). ``per_op=True`` counts the per-op path instead
(``FAST_BLOCKS`` off; each ``sai::`` op runs its CUDA implementation, ``sai.kernels.torch_ops``, with
its zero-fill + partition + kernel): what the CUDA device ran before the fused block.

``python -m sai.kernels.launch_count --out build/launch_counts.json`` prints and writes the counts of
one sparse Bottleneck and BasicBlock, sparse_resnet101 (fused and per-op) and resnet101 at a small size
(``make cuda-check`` runs it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

_aten = torch.ops.aten
# ops that launch nothing on a GPU: allocations and metadata (views are recognised by OpOverload.is_view)
_NO_KERNEL = {
    _aten.empty.memory_format, _aten.empty_strided.default, _aten.empty_like.default, _aten.detach.default,
    _aten.lift_fresh.default, _aten.set_.source_Storage_storage_offset, _aten.resize_.default,
    _aten.sym_size.int, _aten.sym_stride.int, _aten.sym_numel.default, _aten.sym_storage_offset.default,
    _aten.is_same_size.default, _aten.alias.default, _aten._unsafe_view.default,
}


class LaunchCounter(TorchDispatchMode):
    """Counts the aten ops that would be GPU kernels (``aten``) and, with ``count_triton()``, Triton launches."""

    def __init__(self, per_op: bool = False):
        super().__init__()
        self.aten: collections.Counter = collections.Counter()
        self.triton: collections.Counter = collections.Counter()
        self.per_op = per_op

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()
        if self.per_op and name in ("sai::sparse_sample_conv", "sai::interpolate"):
            from sai.kernels import torch_ops

            impl = torch_ops.sparse_sample_conv_cuda if name == "sai::sparse_sample_conv" else torch_ops.interpolate_cuda
            inner = LaunchCounter()  # the CUDA implementation's own aten ops (its zero-fill of the counts)
            with inner:
                out = impl(*args, **kwargs)
            self.aten.update(inner.aten)
            return out
        if not (func.is_view or func in _NO_KERNEL):
            self.aten[name.replace("aten::", "")] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.aten.values()) + sum(self.triton.values())

    def summary(self) -> dict:
        return {"launches": self.total, "triton": sum(self.triton.values()), "aten": sum(self.aten.values()),
                "triton_kernels": dict(sorted(self.triton.items())), "aten_ops": dict(sorted(self.aten.items()))}


@contextlib.contextmanager
def count_triton(counter: LaunchCounter, execute: bool = True) -> Iterator[None]:
    """Count every launch of a ``sai.kernels`` kernel (``Kernel.on(device)[grid](...)``) into ``counter``;
    with ``execute=False`` the kernels are counted and not run (their outputs stay uninitialised: the
    torch CUDA path has no value-dependent branch, so the launch sequence is the same)."""
    from sai.kernels._jit import Kernel

    orig = Kernel.on

    def on(self, device):
        fn = orig(self, device)
        name = self.__name__

        class _Counted:
            def __getitem__(self, grid):
                launch = fn[grid]

                def call(*args, **kwargs):
                    counter.triton[name] += 1
                    if not execute:
                        return None
                    with _disable_current_modes():  # the interpreter's own host copies are no launches
                        return launch(*args, **kwargs)

                return call

        return _Counted()

    Kernel.on = on
    try:
        yield
    finally:
        Kernel.on = orig


@contextlib.contextmanager
def _cuda_path_on_cpu(per_op: bool) -> Iterator[None]:
    """The environment of the CUDA code path on CPU tensors; ``per_op``: the fused blocks off, the mask
    logits as the plain convolutions CUDA runs (the CPU's 1x1 + shifted-add form is CPU only)."""
    import sai.models.fuse as fuse

    saved = {k: os.environ.get(k) for k in ("SAI_KERNELS_ON_CPU", "TRITON_INTERPRET")}
    flags = (fuse.FAST_BLOCKS, fuse.FAST_MASK_LOGITS)
    os.environ["SAI_KERNELS_ON_CPU"] = "1"
    os.environ["TRITON_INTERPRET"] = "1"
    fuse.FAST_BLOCKS = not per_op
    fuse.FAST_MASK_LOGITS = False
    try:
        yield
    finally:
        fuse.FAST_BLOCKS, fuse.FAST_MASK_LOGITS = flags
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@torch.no_grad()
def count_launches(fn, *args, per_op: bool = False, warmup: bool = True, execute: bool = True) -> LaunchCounter:
    """The launches of ``fn(*args)`` on the torch CUDA path (run on CPU tensors; see the module docstring).
    ``warmup``: one call first, so the one-time weight packing and workspaces are not counted;
    ``execute=False``: Triton kernels counted, not interpreted (whole models at full width in seconds)."""
    with _cuda_path_on_cpu(per_op):
        if warmup:
            with count_triton(LaunchCounter(), execute):
                fn(*args)
        counter = LaunchCounter(per_op=per_op)
        with count_triton(counter, execute), counter:
            fn(*args)
    return counter


def _model(arch: str, **options):
    from sai.models import build_model, fuse_for_inference

    torch.manual_seed(0)
    model = fuse_for_inference(build_model(arch, num_classes=10, seed=0, **options).eval())
    model.record_stats = False  # density statistics are a host sync per block (GPU timing turns them off too)
    return model


def measure(size: tuple[int, int] = (64, 64), batch: int = 1, execute: bool = False) -> dict:
    """Launch counts of one sparse Bottleneck (stage 3's first, with downsample, a plain one, a deformable
    one) and BasicBlock (sparse_resnet18's stage 2, with and without downsample), sparse_resnet101 (fused, per-op, and with DCN in stages 2-4) and resnet101 at ``size``;
    ``execute``: interpret the Triton kernels too (slow at full width)."""
    x = torch.randn(batch, 3, *size)
    res: dict = {"size": list(size), "batch": batch, "note": "torch CUDA path counted on CPU tensors "
                 "(SAI_KERNELS_ON_CPU=1, TRITON_INTERPRET=1): Triton launches + aten ops that are CUDA kernels"}
    sparse = _model("sparse_resnet101")
    dense = _model("resnet101")
    dcn = _model("sparse_resnet101", dcn_stages=(0, 1, 1, 1))
    with torch.no_grad():  # the inputs of single blocks: the stage outputs of a per-op forward
        feats = sparse.layer2(sparse.layer1(sparse.maxpool(sparse.relu(sparse.conv1(x)))))
        basic = _model("sparse_resnet18")
        bfeats = basic.layer1(basic.maxpool(basic.relu(basic.conv1(x))))
    blocks = {"bottleneck_downsample": (sparse.layer3[0], feats),
              "bottleneck": (sparse.layer3[1], sparse.layer3[0](feats)),
              "bottleneck_dcn": (dcn.layer3[1], dcn.layer3[0](feats)),
              "basic_block_downsample": (basic.layer2[0], bfeats),
              "basic_block": (basic.layer2[1], basic.layer2[0](bfeats))}
    for name, (blk, inp) in blocks.items():
        inp = inp.contiguous(memory_format=torch.channels_last)
        res[name] = {"fused": count_launches(blk, inp, execute=execute).summary(),
                     "per_op": count_launches(blk, inp, per_op=True, execute=execute).summary()}
    for name, model, per_op in (("sparse_resnet101", sparse, False), ("sparse_resnet101_per_op", sparse, True),
                                ("sparse_resnet101_dcn", dcn, False), ("resnet101", dense, False)):
        t = time.time()
        res[name] = count_launches(model, x, per_op=per_op, execute=execute).summary()
        res[name]["seconds_on_cpu"] = round(time.time() - t, 1)
    res["ratio_sparse_to_dense"] = round(res["sparse_resnet101"]["launches"] / res["resnet101"]["launches"], 3)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sai.kernels.launch_count", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the counts as JSON here")
    ap.add_argument("--size", default="64x64", help="input HxW (default 64x64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--execute", action="store_true",
                    help="interpret the Triton kernels too (the counts are the same; much slower)")
    a = ap.parse_args(argv)
    from sai.errors import SaiError
    from sai.shapes import parse_shape

    try:
        size = tuple(parse_shape(a.size, "--size", lengths=(2,), form="HxW"))
    except SaiError as e:
        print(f"launch_count: {e}", file=sys.stderr)
        return 2
    res = measure(size, a.batch, a.execute)
    for key, val in res.items():
        if isinstance(val, dict) and "fused" in val:
            print(f"{key:28s} fused {val['fused']['launches']:5d}   per-op {val['per_op']['launches']:5d}")
        elif isinstance(val, dict):
            print(f"{key:28s} {val['launches']:5d}   (triton {val['triton']}, aten {val['aten']})")
    print(f"sparse_resnet101 / resnet101 launches: {res['ratio_sparse_to_dense']}")
    if a.out:
        from sai.outputs import write_atomic

        a.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(a.out, json.dumps(res, indent=1) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
