"""`sai demo`: the whole toolchain on the shipped demo checkpoint, ending in demo_out/report.html
(the steps are in sai.demo.pipeline, the report in sai.demo.report)."""

from __future__ import annotations

import argparse

from sai.cli.options import add_force

SWEEP_SIZES = "128x128,256x256,384x384"


def run(args: argparse.Namespace) -> int:
    from sai.benchmarks.environment import stamp
    from sai.demo.pipeline import run_demo

    return run_demo(args, stamp=stamp)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="convert, validate, bench the shipped demo model and write demo_out/report.html")
    p.add_argument("--zoo", help="demo model directory (default: the package's models/zoo/sai_demo_r18)")
    p.add_argument("-o", "--out", default="demo_out",
                   help="output directory (default demo_out): new, empty or an earlier sai demo output, replaced "
                        "at the end")
    p.add_argument("--eval-size", type=int, help="held-out images to evaluate (default: as many as at training)")
    p.add_argument("--images", type=int, default=10,
                   help="test images to draw the mask overlays for, the first of each class (default 10: all)")
    p.add_argument("--batch", type=int, default=8, help="batch size of the benchmark")
    p.add_argument("--iterations", type=int, default=30, help="benchmark iterations per model")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads for validate/bench (default 1: stable timings on a shared machine; "
                        "0 = the runtime's default)")
    p.add_argument("--no-torch-bench", action="store_true",
                   help="bench only the ONNX model on onnxruntime (skip the PyTorch/C++ kernels run)")
    add_force(p, flag="--out")
    d = p.add_argument_group("detection (the demo Faster R-CNN pair of sai train-demo --task detection; 30-60 s)")
    d.add_argument("--det-zoo", help="demo detector folder (default: the package's models/zoo/sai_demo_det_r18, "
                                     "skipped with a note when it is not there)")
    d.add_argument("--det-images", type=int, default=4, help="test images drawn with boxes and masks (default 4)")
    d.add_argument("--det-eval-size", type=int, default=40,
                   help="held-out images of the detection mAP (default 40; the training recorded 300)")
    d.add_argument("--no-detection", action="store_true", help="skip the detection part")
    g = p.add_argument_group("the bench-ops sweep (where sparse wins; 1-1.5 minutes on 2 threads)")
    g.add_argument("--sweep-arch", default="sparse_resnet18", help="full-width model of the sweep")
    g.add_argument("--sweep-sizes", default=SWEEP_SIZES,
                   help=f"HxW comma list (default {SWEEP_SIZES}; empty: skip the sweep)")
    g.add_argument("--sweep-density", type=float, default=0.3, help="mask density of the size sweep")
    g.add_argument("--sweep-densities", default="0.1,0.3,0.5", help="densities timed at the largest size")
    g.add_argument("--sweep-repeats", type=int, default=6, help="bench-ops --repeats (medians of half as many, >= 3)")
    g.add_argument("--sweep-threads", type=int, default=2, help="threads of the sweep")
    p.set_defaults(func=run)
