"""The whole SAI-Det detector on the CPU: sparse vs dense end to end, with the same weights, in one run.

    python -m sai.benchmarks.detector_speed [--threads 2] [--repeats 3] [--size 1000x1667] [--density 0.3]

A random-initialised official-layout R101 detector of the sparse configs (DCN in stages 2-4, test scale
1667x1000) whose mask predictors get random weights and biases calibrated on the benchmark image so that
about ``--density`` of the positions are computed (the measured density is printed), and heads scaled so
that the image gives dozens of detections (as the tests' checkpoints). Its dense twin is the dense
detector with the same backbone, neck and head weights (the mask predictors dropped; DCN offsets from the
block input, as the sparse blocks predict them). Both are timed interleaved (sparse, dense, sparse, ...)
on one preprocessed image:

- PyTorch: the fused inference models (``fuse_for_inference``: BN folded, the fused sparse block kernel),
  the whole detector (``forward``: backbone, FPN, RPN, proposals, RoIAlign, box head, NMS) and the
  backbone alone;
- ONNX Runtime: the portable detector graphs (``sai.exporter.detector_export``), the sparse one with
  ``libsai_ort_ops.so`` registered and its blocks fused (``sai.runtime.ort_fuse``), as ``sai.runtime`` runs
  it; beside it the backbones exported alone (``--no-ort-backbone`` skips those two exports).

Then one forward of each PyTorch detector split by stage, and (``--profile``) the ONNX Runtime profile of
the fused sparse session split into the backbone/neck/RPN convolutions and the post-processing nodes.
Prints medians, the spread (min..max) and the ratio dense / sparse (> 1: sparse faster); no assertion.
Numbers measured with it are recorded in docs/benchmarks.md only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sai.benchmarks.environment import one_line, stamp  # noqa: E402
from sai.benchmarks.opbench import (  # noqa: E402
    _custom_op_session,
    calibrate_mask_bias,
    measured_density,
    randomize_masks,
    time_interleaved,
)
from sai.errors import SaiError  # noqa: E402

PRESET = "sparse_resnet_101_faster_rcnn_sparse_loss_weight_0_1"


def _parse_size(text: str) -> tuple[int, int]:
    from sai.shapes import parse_shape

    h, w = parse_shape(text, "--size", lengths=(2,), minimum=32, form="HxW")
    return int(h), int(w)


def build_pair(size: tuple[int, int], density: float, seed: int = 0, scale=None):
    """(sparse detector, dense detector with its weights, preprocessed meta of the benchmark image), both
    unfused. The masks are calibrated on the image itself; the heads scaled from the sparse model's FPN."""
    from sai.models import dense_twin
    from sai.models.detector import SaiDetector, preprocess
    from sai.models.detector_presets import preset

    torch.manual_seed(seed)
    cfg = preset(PRESET) if scale is None else preset(PRESET).with_scale(scale)
    det = SaiDetector(cfg).eval()
    img = np.random.RandomState(seed).randint(0, 256, (*size, 3)).astype(np.uint8)
    meta = preprocess(img, cfg)[0]
    x = meta["img"][None]
    randomize_masks(det.backbone, seed)
    calibrate_mask_bias(det.backbone, x, density)
    with torch.no_grad():
        feats = det.extract_feat(x)
        cls, _ = det.rpn_head(feats)
        det.rpn_head.rpn_cls.weight.mul_(2.0 / float(torch.cat([c.flatten() for c in cls]).std()))
        head = det.bbox_head
        z = torch.randn(64, head.shared_fcs[0].in_features) * float(feats[0].std())
        for fc in head.shared_fcs:
            z = F.relu(fc(z))
        head.fc_cls.weight.mul_(2.5 / float(head.fc_cls(z).std()))
        head.fc_reg.weight.mul_(0.5 / float(head.fc_reg(z).std()))
    dense_cfg = replace(cfg, name=cfg.name + "-dense-twin", sparse=False,
                        backbone_options={k: v for k, v in cfg.backbone_options.items()
                                          if k in ("frozen_stages", "norm_eval")})
    dense = SaiDetector(dense_cfg, dcn_offset_from="input").eval()
    dense.backbone = dense_twin(det.backbone)
    for part in ("neck", "rpn_head", "bbox_head"):
        getattr(dense, part).load_state_dict(getattr(det, part).state_dict())
    return det, dense, meta


def _med(ts):
    return statistics.median(ts)


def _row(name: str, ts, td, extra: str = "") -> dict:
    ms, md = _med(ts), _med(td)
    per = [d / s for s, d in zip(ts, td, strict=True)]
    print(f"  {name:<44} sparse {ms:8.0f} ms [{min(ts):.0f}-{max(ts):.0f}]  dense {md:8.0f} ms "
          f"[{min(td):.0f}-{max(td):.0f}]  ratio {md / ms:5.2f} [{min(per):.2f}-{max(per):.2f}]{extra}")
    return {"case": name, "sparse_ms": ms, "dense_ms": md, "ratio": md / ms, "sparse_times": ts, "dense_times": td,
            "ratio_spread": [min(per), max(per)]}


def torch_stage_times(det, x, img_shape, scale_factor) -> dict:
    """One forward of ``det`` split by stage (ms), the same calls as ``SaiDetector.forward``."""
    out = {}

    def tick(name, fn):
        t0 = time.perf_counter()
        r = fn()
        out[name] = out.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
        return r

    with torch.inference_mode():
        c = tick("backbone", lambda: det.backbone(x))
        feats = tick("neck (FPN)", lambda: det.neck(c))
        cls, reg = tick("rpn head convs", lambda: det.rpn_head(feats))
        props = tick("proposals (top-k, delta2bbox, NMS)", lambda: det.proposals(cls, reg, 0, img_shape))
        rf = tick("RoIAlign", lambda: det.roi_features(feats[:4], 0, props[:, :4]))
        cs, rg = tick("box head FCs", lambda: det.bbox_head(rf))
        d, _ = tick("detections (per-class NMS)",
                    lambda: det.detections(props[:, :4], cs, rg, img_shape, scale_factor))
    out["num_dets"] = int(d.shape[0])
    return out


def ort_profile(path_or_model, lib, threads: int, feeds: dict, workdir: str) -> dict:
    """One run of a profiled session: ms per group (``det/`` post-processing nodes vs the exported
    backbone/neck/RPN convolutions) and per op type."""
    import onnxruntime as ort

    from sai.benchmarks.opmodels import bench_session_options

    so = bench_session_options(threads)
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(workdir, "ortprof")
    sess = ort.InferenceSession(path_or_model, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    sess.run(None, feeds)
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    by_group, by_op = defaultdict(float), defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < last_start:
            continue
        ms = e["dur"] / 1e3
        name = e["name"][:-len("_kernel_time")]
        by_group["post-processing (det/ nodes: RPN proposals, RoIAlign, box head, NMS)" if "det/" in name
                 else "backbone + FPN + RPN convs"] += ms
        by_op[e.get("args", {}).get("op_name", "?")] += ms
    total = runs[-1]["dur"] / 1e3 if runs else sum(by_group.values())
    return {"run_ms": total, "by_group": dict(by_group), "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="1000x1667", help="image HxW (the sparse configs' scale: 1000x1667)")
    p.add_argument("--density", type=float, default=0.3)
    p.add_argument("--scale", help="test scale LONG,SHORT instead of the preset's 1667,1000 (quick checks)")
    p.add_argument("--no-ort", action="store_true", help="PyTorch only")
    p.add_argument("--no-ort-backbone", action="store_true", help="skip the backbone-only ONNX exports")
    p.add_argument("--profile", action="store_true", help="also profile the fused onnxruntime session")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if not 0 < args.density <= 1:
        raise SaiError(f"--density must lie in (0, 1], got {args.density}")
    size = _parse_size(args.size)
    torch.set_num_threads(args.threads)
    env = stamp(args.threads)
    print(f"# {one_line(env)}")
    result: dict = {"env": env, "size": size, "target_density": args.density, "preset": PRESET, "rows": []}
    t_start = time.perf_counter()

    scale = None if not args.scale else tuple(int(v) for v in args.scale.split(","))
    det, dense, meta = build_pair(size, args.density, scale=scale)
    x = meta["img"][None]
    shp, sf = meta["img_shape"], meta["scale_factor"]
    det.fuse_for_inference()
    dense.fuse_for_inference()
    with torch.inference_mode():
        det.backbone.reset_densities()
        det.backbone(x)
    dens = measured_density(det.backbone)
    stats = det.backbone.densities()
    d1 = statistics.mean(v[0] for v in stats.values())
    d2 = statistics.mean(v[1] for v in stats.values())
    result["measured_density"] = {"mean": dens, "d1": d1, "d2": d2}
    print(f"{PRESET} (random init, masks calibrated), image {size[0]}x{size[1]} -> input {list(x.shape[2:])}, "
          f"img_shape {shp}; measured density {dens:.3f} (mean d1 {d1:.3f}, d2 {d2:.3f}); "
          f"setup {time.perf_counter() - t_start:.0f} s")

    print(f"PyTorch, fused inference models, {args.threads} threads, median of {args.repeats} (interleaved):")
    runs = time_interleaved([lambda: det(x, [shp], [sf]), lambda: dense(x, [shp], [sf]),
                             lambda: det.backbone(x), lambda: dense.backbone(x)], args.repeats)
    result["rows"].append(_row("torch detector end to end", runs[0], runs[1]))
    result["rows"].append(_row("torch backbone only", runs[2], runs[3]))
    with torch.inference_mode():
        nd = int(det(x, [shp], [sf])[2][0])
    stages = {"sparse": torch_stage_times(det, x, shp, sf), "dense": torch_stage_times(dense, x, shp, sf)}
    result["torch_stages_ms"] = stages
    print(f"  one forward by stage (ms), {nd} detections (sparse):")
    for k in stages["sparse"]:
        if k != "num_dets":
            print(f"    {k:<40} sparse {stages['sparse'][k]:8.1f}  dense {stages['dense'][k]:8.1f}")

    if not args.no_ort:
        import onnxruntime as ort

        from sai.benchmarks.opmodels import bench_session_options
        from sai.exporter import export_onnx
        from sai.exporter.detector_export import export_detector, preprocessed_inputs
        from sai.runtime import ort_ops

        lib, why = ort_ops.built_library()
        feeds = preprocessed_inputs([meta])
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            export_detector(det, f"{tmp}/sparse.onnx", input_shape=(1, 3, 128, 192), check=False)
            export_detector(dense, f"{tmp}/dense.onnx", input_shape=(1, 3, 128, 192), check=False)
            opts = bench_session_options(args.threads)
            d_sess = ort.InferenceSession(f"{tmp}/dense.onnx", opts, providers=["CPUExecutionProvider"])
            c_sess, why_c = _custom_op_session(f"{tmp}/sparse.onnx", args.threads)
            print(f"onnxruntime, {args.threads} threads (exports and sessions {time.perf_counter() - t0:.0f} s):")
            if c_sess is None:
                print(f"  the fused-block session did not run: {why_c or why}")
            else:
                runs = time_interleaved([lambda: c_sess.run(None, feeds), lambda: d_sess.run(None, feeds)],
                                        args.repeats)
                result["rows"].append(_row("onnxruntime detector, fused blocks vs dense", runs[0], runs[1]))
                if args.profile:
                    model, _, _ = ort_ops.fused_model(f"{tmp}/sparse.onnx")
                    result["ort_profile"] = {"sparse_fused": ort_profile(model, lib, args.threads, feeds, tmp),
                                             "dense": ort_profile(f"{tmp}/dense.onnx", None, args.threads,
                                                                  feeds, tmp)}
                    for which, pr in result["ort_profile"].items():
                        print(f"  profile {which}: run {pr['run_ms']:.0f} ms; " + "; ".join(
                            f"{k} {v:.0f} ms" for k, v in pr["by_group"].items()))
                        print("    by op: " + ", ".join(f"{k} {v:.0f}" for k, v in list(pr["by_op"].items())[:10]))
            del c_sess, d_sess
            if not args.no_ort_backbone:
                export_onnx(det.backbone, f"{tmp}/sb.onnx", input_shape=(1, 3, 128, 192), check=False)
                export_onnx(dense.backbone, f"{tmp}/db.onnx", input_shape=(1, 3, 128, 192), check=False)
                db = ort.InferenceSession(f"{tmp}/db.onnx", opts, providers=["CPUExecutionProvider"])
                cb, why_b = _custom_op_session(f"{tmp}/sb.onnx", args.threads)
                if cb is None:
                    print(f"  backbone: the fused-block session did not run: {why_b}")
                else:
                    bf = {cb.get_inputs()[0].name: feeds["input"]}
                    df = {db.get_inputs()[0].name: feeds["input"]}
                    runs = time_interleaved([lambda: cb.run(None, bf), lambda: db.run(None, df)], args.repeats)
                    result["rows"].append(_row("onnxruntime backbone only, fused vs dense", runs[0], runs[1]))
    end_env = stamp(args.threads)
    result["load_average_end"] = end_env["load_average"]
    print(f"# load average at the end: {end_env['load_average']}; {time.perf_counter() - t_start:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
