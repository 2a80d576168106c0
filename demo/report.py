"""The `make demo` report: accuracy, densities, FLOPs, speed, parity and where the network computes.

``write_report`` takes the demo zoo directory (checkpoints + metrics.json from ``sai train-demo``)
and the results of the pipeline steps (convert manifest, validate and bench results, as dicts or
None when a step did not run) and writes ``report.html`` with PNG files beside it (``img/``):

- accuracy of the sparse model and its dense twin, recomputed here on the held-out test split in
  deterministic inference mode, next to the numbers recorded at training time;
- the measured per-block mask densities (fraction of positions computed) on those images;
- MACs: our kernel count sparse vs dense and the official-style accounting;
- the CPU latency ratio from ``sai bench --compare-dense`` and the parity figures of ``sai validate``;
- where the speed is real: plots (PNG, ``plots/``) of latency vs input size and vs density, sparse vs dense on
  torch and onnxruntime, from a short ``sai bench-ops --json`` run, with its run-to-run spread;
- plots of accuracy vs MACs of the shipped pair and of the per-block densities;
- the environment (CPU, threads, versions) the numbers were measured in;
- overlays: for one test image of each class, each block's masks (upsampled, blended over the image).
"""

from __future__ import annotations

import html
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from sai.errors import SaiError
from sai.outputs import write_atomic

SAMPLED_TINT = np.array([255, 48, 32], dtype=np.float32)  # red over computed positions


# ----------------------------------------------------------------------------------------------
# masks and overlays
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def block_masks(fused_model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, OrderedDict[str, tuple]]:
    """Run a fused sparse model on ``x``; return ``(logits, {block: (m1, m2)})`` (masks [N,1,h,w]).

    The masks come from the model's mask observer (``SaiResNet.add_mask_observer``), removed afterwards."""
    if not getattr(fused_model, "fused", False) or not hasattr(fused_model, "add_mask_observer"):
        raise SaiError(f"block_masks needs a fused model: pass a model from sai.models.fuse_for_inference, "
                       f"got {type(fused_model).__name__}")
    captured: OrderedDict[str, tuple] = OrderedDict()

    def observe(block: str, which: str, mask: torch.Tensor) -> None:
        captured[block] = captured.get(block, ()) + (mask.detach().clone(),)

    with fused_model.add_mask_observer(observe):
        logits = fused_model(x)
    return logits, captured


def overlay(image_u8: np.ndarray, mask: np.ndarray, scale: int = 2) -> np.ndarray:
    """``image_u8`` [H,W,3] and a mask [h,w] (>0 = computed) -> [H*scale, W*scale, 3] uint8: computed
    positions tinted red, skipped (interpolated) positions dark grey; mask cells upsampled (nearest)."""
    h, w = image_u8.shape[:2]
    mh, mw = mask.shape
    rows = np.minimum((np.arange(h) * mh) // h, mh - 1)
    cols = np.minimum((np.arange(w) * mw) // w, mw - 1)
    on = (mask > 0)[rows][:, cols][..., None]
    img = image_u8.astype(np.float32)
    grey = img.mean(axis=2, keepdims=True)
    out = np.where(on, 0.45 * img + 0.55 * SAMPLED_TINT, 0.3 * grey)
    out = np.clip(out, 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(out, scale, 0), scale, 1)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    from sai.outputs import atomic_path

    with atomic_path(path) as tmp:  # the temporary's suffix is not .png: the format given
        Image.fromarray(arr).save(tmp, format="PNG", optimize=True)


def write_overlays(fused_model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                   outdir: Path, normalize: Callable[[torch.Tensor], torch.Tensor], scale: int = 2) -> dict:
    """One row per image (the image, then each block's mask1 and mask2); PNGs in ``outdir``.
    Returns ``{"columns": [...], "rows": [{"label", "pred", "cells": [file, ...], "density"}]}``."""
    outdir.mkdir(parents=True, exist_ok=True)
    logits, masks = block_masks(fused_model, normalize(images_u8))
    preds = logits.argmax(1)
    columns = ["input"] + [f"{name} m{i}" for name in masks for i in (1, 2)]
    rows = []
    for n in range(images_u8.shape[0]):
        img = images_u8[n].permute(1, 2, 0).numpy()
        cells = [f"{outdir.name}/img{n}_input.png"]
        _save_png(np.repeat(np.repeat(img, scale, 0), scale, 1), outdir / f"img{n}_input.png")
        strip = [np.repeat(np.repeat(img, scale, 0), scale, 1)]
        dens = []
        for name, (m1, m2) in masks.items():
            for i, m in ((1, m1), (2, m2)):
                mk = m[n, 0].numpy()
                dens.append(float((mk > 0).mean()))
                arr = overlay(img, mk, scale)
                fname = f"img{n}_{name.replace('.', '_')}_m{i}.png"
                _save_png(arr, outdir / fname)
                cells.append(f"{outdir.name}/{fname}")
                strip.append(arr)
        gap = np.full((strip[0].shape[0], 4, 3), 255, np.uint8)
        row = np.concatenate([c for a in strip for c in (a, gap)][:-1], axis=1)
        _save_png(row, outdir / f"img{n}_row.png")
        rows.append({"label": classes[int(labels[n])], "pred": classes[int(preds[n])], "cells": cells,
                     "row": f"{outdir.name}/img{n}_row.png", "densities": dens})
    return {"columns": columns, "rows": rows}


def pick_examples(labels: torch.Tensor, count: int) -> list[int]:
    """The first image of each class, in class order, until ``count`` images."""
    seen, picks = set(), []
    for i, lab in enumerate(labels.tolist()):
        if lab not in seen:
            seen.add(lab)
            picks.append(i)
        if len(picks) == count:
            break
    return picks


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


def load_zoo(zoo: Path) -> tuple[dict, nn.Module, Optional[nn.Module]]:
    """``(metrics, sparse model, dense twin or None)`` from a demo zoo directory (strict loading)."""
    from sai.models import model_from_checkpoint
    from sai.models.train_demo import DENSE_FILE, SPARSE_FILE

    zoo = Path(zoo)
    mpath = zoo / "metrics.json"
    if not mpath.is_file():
        raise SaiError(f"{mpath} not found: train the demo first (sai train-demo --out {zoo})")
    metrics = json.loads(mpath.read_text())
    files = metrics.get("files", {})
    sparse, _ = model_from_checkpoint(zoo / files.get("sparse", SPARSE_FILE), strict=True)
    dense_path = zoo / files.get("dense", DENSE_FILE)
    dense = model_from_checkpoint(dense_path, strict=True)[0] if dense_path.is_file() else None
    return metrics, sparse.eval(), (dense.eval() if dense is not None else None)


def test_split(metrics: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the held-out test split the metrics were computed on."""
    from sai.models import demo_data

    ds = metrics["dataset"]
    return demo_data.make_split(int(ds["seed"]), "test", int(n), int(ds["image_size"]))


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.ok { color: #080; font-weight: bold; } .bad { color: #b00; font-weight: bold; }
.masks td { padding: 1px; text-align: center; font-size: 11px; } .masks img { display: block; }
code, pre { background: #f6f6f6; } pre { padding: 0.6em; overflow-x: auto; }
.note { color: #555; font-size: 0.92em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pct(v: Optional[float], digits: int = 2) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1, cls: str = "") -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _steps_section(steps: Sequence[dict]) -> str:
    if not steps:
        return ""
    rows = [[f"<code>{_e(s['command'])}</code>", _e(s.get("status", "")), f"{s.get('seconds', 0):.1f} s"]
            for s in steps]
    return "<h2>Pipeline</h2>" + _table(["command", "status", "time"], rows)


def _validate_section(validate: Optional[dict]) -> str:
    if not validate:
        return "<h2>Parity (sai validate)</h2><p>not run.</p>"
    out = ["<h2>Parity (sai validate)</h2>"]
    if validate.get("source"):
        out.append(f'<p class="note">{_e(validate["source"])}</p>')
    ok = validate.get("passed")
    if ok is not None:
        out.append(f'<p>Result: <span class="{"ok" if ok else "bad"}">{"PASSED" if ok else "FAILED"}</span></p>')
    rows = []
    for c in validate.get("comparisons", []):
        rows.append([_e(c.get("name", "")), _e(c.get("output", "")), f"{c.get('max_abs', float('nan')):.3g}",
                     f"{c.get('mean_abs', float('nan')):.3g}", f"{c.get('max_rel', float('nan')):.3g}",
                     _e(c.get("tolerance", "")), _e(c.get("extra", ""))])
    if rows:
        out.append(_table(["comparison", "output", "max |diff|", "mean |diff|", "max rel", "tolerance", ""], rows,
                          left=2))
    mk = validate.get("masks")
    if mk:
        out.append(f"<p>Sampling decisions (M &gt; 0) of {mk['compared']} masks compared: worst agreement "
                   f"<b>{mk['worst_agreement']:.4f}</b> ({_e(mk['worst_mask'])}; threshold {_e(mk['threshold'])}), "
                   f"{mk['disagree_total']} positions disagree in total.</p>")
    if validate.get("text"):
        out.append(f"<details><summary>validate output</summary><pre>{_e(validate['text'])}</pre></details>")
    return "".join(out)


def speed_words(dense_over_sparse: float) -> str:
    """``1.43`` -> "sparse 1.43x faster", ``0.5`` -> "sparse 2.00x slower"."""
    if dense_over_sparse >= 1:
        return f"sparse {dense_over_sparse:.2f}x faster"
    return f"sparse {1 / dense_over_sparse:.2f}x slower"


def sweep_cases(bench_ops: Optional[dict]) -> list[dict]:
    """The cases of a ``sai bench-ops --json`` run that ran (have timings)."""
    return [c for c in (bench_ops or {}).get("cases", []) if c.get("sparse_ms") is not None and "extra" in c]


RUNTIMES = ("torch", "onnxruntime", "onnxruntime+libsai_ort_ops")


def best_cases(bench_ops: Optional[dict]) -> dict[str, dict]:
    """Per runtime (torch; onnxruntime = the portable ONNX; onnxruntime+libsai_ort_ops = the same file with the
    library's fused blocks, what sai.runtime runs where it is built), the sweep case (any size, any density) with
    the best dense/sparse ratio: where sparse wins, if it wins anywhere."""
    best: dict[str, dict] = {}
    for c in sweep_cases(bench_ops):
        backend = c["extra"].get("backend")
        if backend in RUNTIMES and (backend not in best or c["ratio"] > best[backend]["ratio"]):
            best[backend] = c
    return best


def speed_summary(bench, bench_ops: Optional[dict]) -> str:
    """The demo's closing line: the measured sparse/dense ratios of the demo model at its own size (sai bench)
    and, from the bench-ops sweep, where sparse wins (or the closest it came)."""
    parts = []
    runs = [b for b in (bench if isinstance(bench, (list, tuple)) else [bench]) if b and b.get("sparse_over_dense_p50")]
    if runs:
        shape = runs[0]["results"][0].get("input_shape") or []
        hw = "x".join(str(v) for v in shape[-2:]) if len(shape) >= 2 else "the demo size"
        parts.append(f"demo model at {hw}: " + ", ".join(
            f"{speed_words(1 / b['sparse_over_dense_p50'])} ({b['results'][0].get('backend')})" for b in runs))
    best = best_cases(bench_ops)
    if best:
        items = []
        for backend, c in best.items():
            at = f"{c['extra']['height']}x{c['extra']['width']}, density {c['density']:.2f}"
            if c["ratio"] >= 1:
                items.append(f"{speed_words(c['ratio'])} at {at} ({backend})")
            else:
                items.append(f"no measured point where sparse wins on {backend} (closest: {speed_words(c['ratio'])} "
                             f"at {at})")
        parts.append(f"{(bench_ops or {}).get('arch', '')} (sai bench-ops): " + ", ".join(items))
    if not parts:
        return "CPU latency sparse vs dense: not measured"
    return "CPU latency sparse vs dense: " + "; ".join(parts)


BENCH_NOTE = (
    "Latency of one batch, sparse model vs the dense ResNet-18 with the same weights (what "
    "<code>sai bench --compare-dense</code> times), on this machine's CPU while other jobs may share it. "
    "At the demo's 64x64 input the feature maps are tiny (16x16 down to 2x2) and the whole network is a "
    "few MMACs, so per-op overheads of the sparse path (mask predictors, gather/scatter, interpolation) "
    "outweigh the skipped MACs: on a CPU at this size the sparse model is slower than dense. The saving "
    "grows with resolution and channel width (next section, from <code>sai bench-ops</code>); the paper's "
    "setting is detection at ~1000 px on GPUs, where the TensorRT plugins run.")


def _bench_section(bench) -> str:
    runs = [b for b in (bench if isinstance(bench, (list, tuple)) else [bench]) if b]
    if not runs:
        return "<h2>CPU speed (sai bench --compare-dense)</h2><p>not run.</p>"
    out = ["<h2>CPU speed (sai bench --compare-dense)</h2>", f"<p class='note'>{BENCH_NOTE}</p>"]
    rows = []
    for b in runs:
        for r in b.get("results", []):
            rows.append([_e(r.get("label", "")), _e(r.get("backend", "")), _e(r.get("input_shape", "")),
                         f"{r.get('p50_ms', 0):.2f}", f"{r.get('p90_ms', 0):.2f}", f"{r.get('p99_ms', 0):.2f}",
                         f"{r.get('throughput', 0):.1f}"])
    out.append(_table(["model", "backend", "input", "p50 ms", "p90 ms", "p99 ms", "images/s"], rows, left=3))
    for b in runs:
        ratio = b.get("sparse_over_dense_p50")
        if ratio:
            verdict = f"sparse is {1 / ratio:.2f}x faster" if ratio < 1 else f"sparse is {ratio:.2f}x slower"
            src = f" (<code>{_e(b['source'])}</code>)" if b.get("source") else ""
            out.append(f"<p>sparse / dense p50 latency: <b>{ratio:.3f}</b> ({verdict}){src}.</p>")
    return "".join(out)


SWEEP_NOTE = (
    "The same comparison where the feature maps are large enough for the skipped work to matter: "
    "<code>{arch}</code> at its full width (not the demo's narrow network), batch 1, mask predictors calibrated to "
    "the density named, sparse and dense with the same weights, timed in turn in one process "
    "(<code>{command}</code>). torch: the fused model with the sai C++ CPU kernels vs the fused dense ResNet; "
    "onnxruntime: the portable ONNX (function bodies) and the same file with <code>libsai_ort_ops.so</code> "
    "registered vs the dense ResNet's ONNX. Labels on the sparse curves: dense / sparse latency (&gt; 1: sparse "
    "faster). On a shared CPU these move by 10-30% from run to run; the spread column is the min..max of the "
    "per-round ratio.")


def _img(rel: Optional[str], alt: str) -> str:
    return f"<p><img src='{_e(rel)}' alt='{_e(alt)}' style='max-width:100%'></p>" if rel else ""


def _plot_error(ctx: dict) -> str:
    err = ctx.get("plots", {}).get("error")
    return f"<p class='note'>Plots not drawn: {_e(err)}</p>" if err else ""


def _sweep_section(ctx: dict) -> str:
    bo = ctx.get("bench_ops")
    title = "<h2>Where the speed is real: larger inputs (sai bench-ops)</h2>"
    if not bo:
        return title + "<p>not run.</p>"
    plots = ctx.get("plots", {})
    out = [title, f"<p class='note'>{SWEEP_NOTE.format(arch=_e(bo.get('arch', '')), command=_e(bo.get('command', '')))}"
           "</p>", f"<p><b>{_e(speed_summary(ctx.get('bench'), bo))}</b></p>", _plot_error(ctx),
           _img(plots.get("latency_vs_size"), "latency vs input size"),
           _img(plots.get("latency_vs_density"), "latency vs density")]
    rows = []
    for c in bo.get("cases", []):
        ex = c.get("extra", {})
        size = f"{ex.get('height')}x{ex.get('width')}" if "height" in ex else ""
        if c.get("sparse_ms") is None:
            rows.append([_e(c["name"]), _e(ex.get("backend", "")), size, f"{c.get('density') or 0:.2f}",
                         _e(c.get("note", "")), "", "", ""])
            continue
        rs = c.get("ratio_spread") or (None, None)
        rows.append([_e(c["name"]), _e(ex.get("backend", "")), size, f"{c['density']:.2f}",
                     f"{c['sparse_ms']:.1f} [{c['sparse_spread'][0]:.1f}-{c['sparse_spread'][1]:.1f}]",
                     f"{c['dense_ms']:.1f} [{c['dense_spread'][0]:.1f}-{c['dense_spread'][1]:.1f}]",
                     f"<b>{c['ratio']:.2f}</b>", f"{rs[0]:.2f}-{rs[1]:.2f}" if rs[0] is not None else ""])
    out.append(_table(["case", "runtime", "input", "density", "sparse ms [min-max]", "dense ms [min-max]",
                       "dense / sparse", "spread (per round)"], rows, left=2))
    env = bo.get("environment")
    if env:
        line = bo.get("environment_line") or ", ".join(f"{k} {v}" for k, v in env.items() if k != "versions")
        out.append(f"<p class='note'>Measured on: {_e(line)}</p>")
    return "".join(out)


def _environment_section(ctx: dict) -> str:
    env = ctx.get("environment")
    if not env:
        return "<h2>Environment</h2><p>not recorded.</p>"
    rows = [["CPU", _e(env.get("cpu"))], ["cores usable", _e(env.get("cores"))],
            ["threads (validate, sai bench)", _e(ctx.get("threads", env.get("threads")))],
            ["threads (sai bench-ops)", _e((ctx.get("bench_ops") or {}).get("threads", "not run"))],
            ["load average (1, 5, 15 min) at the report", _e(env.get("load_average"))],
            ["OS", _e(env.get("os"))], ["Python", _e(env.get("python"))]]
    rows += [[_e(k), _e(v)] for k, v in (env.get("env") or {}).items()]
    rows += [[_e(k), _e(v or "not installed")] for k, v in env.get("versions", {}).items()]
    return ("<h2>Environment</h2><p class='note'>Where these numbers were measured; CPU timings are only "
            "comparable within one machine and one run.</p>" + _table(["", ""], rows))


def render_html(ctx: dict) -> str:
    """The report page from the collected context (see ``write_report``)."""
    m, acc = ctx["metrics"], ctx["accuracy"]
    rec = m.get("accuracy", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sai demo report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>sai demo: a trained spatially adaptive ResNet-18, end to end on the CPU</h1>",
             f"<p class='note'>Generated {_e(ctx['created'])} from <code>{_e(ctx['zoo'])}</code> "
             f"(task: {_e(m.get('task', ''))}, {len(m.get('classes', []))} classes, "
             f"{_e(m['input']['height'])}x{_e(m['input']['width'])} RGB; seed {_e(m.get('seed'))}).</p>"]
    parts.append(f"<p><b>{_e(speed_summary(ctx.get('bench'), ctx.get('bench_ops')))}</b></p>")
    parts.append(_steps_section(ctx.get("steps", [])))
    plots = ctx.get("plots", {})
    # accuracy
    parts.append("<h2>Accuracy on the held-out test split (deterministic inference)</h2>")
    rows = [["sparse_resnet18 (SAI masks)", _pct(acc["sparse"]), _pct(rec.get("sparse")), _e(acc["n"])]]
    if acc.get("dense") is not None:
        rows.append(["resnet18 (dense twin: same start, data and schedule)", _pct(acc["dense"]), _pct(rec.get("dense")),
                     _e(acc["n"])])
    if acc.get("onnxruntime") is not None:
        rows.append(["sparse, exported model.onnx on onnxruntime", _pct(acc["onnxruntime"]),
                     f"PyTorch on the same images: {_pct(acc.get('sparse_same_images'))}", _e(acc["n_onnx"])])
    parts.append(_table(["model", "accuracy (now)", "recorded at training", "images"], rows))
    if acc.get("dense") is not None:
        gap = 100 * (acc["dense"] - acc["sparse"])
        parts.append(f"<p>Gap dense - sparse: <b>{gap:.2f} points</b> at mean density "
                     f"<b>{ctx['mean_density']:.3f}</b>.</p>")
    parts.append(_img(plots.get("accuracy_vs_macs"), "accuracy vs MACs"))
    if m.get("recipe"):
        parts.append(f"<p class='note'>How the pair was trained (<code>sai train-demo</code>, metrics.json): "
                     f"{_e(m['recipe'])}.</p>")
    # densities
    parts.append("<h2>Where the sparse model computes: per-block mask density</h2>"
                 "<p class='note'>d = fraction of positions whose mask is &gt; 0 (computed by the sparse "
                 "convolution); the rest are filled by the Gaussian interpolation. Measured now on the "
                 "evaluation images. mask grid: the resolution of the block's masks for this input.</p>")
    drows = [[_e(k), f"{v['d1']:.3f}", f"{v['d2']:.3f}", _e(v.get("grid", ""))]
             for k, v in ctx["densities"].items()]
    drows.append(["<b>mean</b>", "", "", f"<b>{ctx['mean_density']:.3f}</b>"])
    parts.append(_table(["block", "d1 (conv1 mask)", "d2 (conv2 mask)", "mask grid"], drows))
    parts.append(_img(plots.get("block_densities"), "per-block densities"))
    parts.append(_plot_error(ctx))
    # flops
    fl = ctx["flops"]
    k, o = fl["kernel"], fl["official"]
    parts.append("<h2>Compute (multiply-accumulates)</h2>")
    parts.append(_table(
        ["accounting", "sparse MACs", "dense MACs", "sparse / dense", "saved"],
        [[f"our kernels (what the fused model executes, {k['input_hw'][0]}x{k['input_hw'][1]} input, incl. "
          "mask predictors, interpolation, stem, head)",
          f"{k['sparse_macs'] / 1e6:.2f} M", f"{k['dense_macs'] / 1e6:.2f} M", f"{k['ratio']:.3f}",
          _pct(1 - k["ratio"], 1)],
         [f"official SAI accounting (docs/design.md 4; backbone at res {o['res']})",
          f"{o['sparse_macs'] / 1e6:.2f} M", f"{o['dense_macs'] / 1e6:.2f} M", f"{o['ratio']:.3f}",
          _pct(1 - o["ratio"], 1)]]))
    parts.append(_bench_section(ctx.get("bench")))
    parts.append(_sweep_section(ctx))
    parts.append(_validate_section(ctx.get("validate")))
    # overlays
    ov = ctx.get("overlays")
    if ov:
        parts.append("<h2>Sampled positions per block</h2><p class='note'>Each row is one test image (the first of "
                     "each class); each "
                     "column one mask (m1 = conv1's mask, m2 = conv2's mask of a block), upsampled to the image. "
                     "<span style='color:#d22'>Red</span>: computed by the sparse convolution; dark grey: skipped "
                     "and filled by the interpolation. Deeper blocks have coarser grids (16x16, 8x8, 4x4, 2x2 for a 64x64 "
                     "input). The grid prior (every 11th row and column from the top-left) always computes the top-left cell, which on the 4x4 and 2x2 maps is a whole quadrant.</p>")
        head = "".join(f"<th>{_e(c)}</th>" for c in ["label / pred"] + ov["columns"])
        body = []
        for r in ov["rows"]:
            mark = "ok" if r["label"] == r["pred"] else "bad"
            cells = "".join(f"<td><img src='{_e(c)}' alt='{_e(c)}'>"
                            + (f"{d:.2f}" if i else "") + "</td>"
                            for i, (c, d) in enumerate(zip(r["cells"], [0.0] + r["densities"], strict=True)))
            body.append(f"<tr><td class='l'>{_e(r['label'])}<br><span class='{mark}'>{_e(r['pred'])}</span></td>"
                        f"{cells}</tr>")
        parts.append(f"<table class='masks'><tr>{head}</tr>{''.join(body)}</table>")
    if ctx.get("detection"):
        parts.append(ctx["detection"]["html"])
    parts.append("<h2>On a machine with an NVIDIA GPU and TensorRT</h2><p>The same <code>make demo</code> "
                 "also builds <code>model.plan</code> (TensorRT engine with the sai plugins) in the convert "
                 "step, and <code>sai bench</code> / <code>sai validate</code> can run it "
                 "(<code>--backend tensorrt</code>); here the engine step is skipped and the ONNX files run on "
                 "onnxruntime.</p>")
    parts.append(_environment_section(ctx))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: Path, zoo: Path, *, eval_size: Optional[int] = None, n_images: int = 10,
                 steps: Sequence[dict] = (), bench=None, validate: Optional[dict] = None,
                 onnx_path: Optional[Path] = None, bench_ops: Optional[dict] = None, threads: Optional[int] = None,
                 environment: Optional[dict] = None, progress: Callable[[str], None] = lambda s: None,
                 detection: Optional[dict] = None) -> dict:
    """Evaluate, draw the overlays and the plots and write ``out/report.html``; returns the context it rendered.
    ``detection``: the demo detector's section (``sai.demo.detection.run_detection``), or None.
    ``bench_ops``: the JSON of a ``sai bench-ops --json`` run (the size and density sweep), or None.
    ``threads``: the thread count the pipeline's validate/bench steps used; ``environment``: where the report was
    made (``sai.benchmarks.environment.stamp()``; default: the sweep's, else none)."""
    from sai.models import demo_data, fuse_for_inference
    from sai.models.train_demo import DemoConfig, flops_summary

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, sparse, dense = load_zoo(Path(zoo))
    n = int(eval_size or metrics["dataset"]["splits"]["test"][1])
    progress(f"report: generating {n} held-out test images")
    images, labels = test_split(metrics, n)
    inp = metrics["input"]

    def normalize(u8: torch.Tensor) -> torch.Tensor:
        return demo_data.normalize(u8, inp["mean"], inp["std"])

    progress("report: accuracy of the sparse model and its dense twin (deterministic inference)")
    fused = fuse_for_inference(sparse)
    fused.sampling = "deterministic"
    fused.reset_densities()
    acc: dict[str, Any] = {"n": n}
    with torch.no_grad():
        pred = torch.cat([fused(normalize(images[i:i + 250])).argmax(1) for i in range(0, n, 250)])
        acc["sparse"] = float((pred == labels).float().mean())
        stats = fused.mask_stats()
        if dense is not None:
            dfused = fuse_for_inference(dense)
            dpred = torch.cat([dfused(normalize(images[i:i + 250])).argmax(1) for i in range(0, n, 250)])
            acc["dense"] = float((dpred == labels).float().mean())
    if onnx_path is not None and Path(onnx_path).is_file():
        progress("report: accuracy of the exported ONNX model on onnxruntime")
        k = min(n, 500)
        acc.update(_onnx_accuracy(Path(onnx_path), normalize(images[:k]), labels[:k]))
        acc["sparse_same_images"] = float((pred[:k] == labels[:k]).float().mean())
    h = w = int(inp["height"])
    densities = OrderedDict((k, dict(v)) for k, v in stats.items())
    grid = _mask_grids(fused, h, w)
    for k in densities:
        densities[k]["grid"] = grid.get(k, "")
    ds = [d for v in densities.values() for d in (v["d1"], v["d2"])]
    mean_density = sum(ds) / len(ds)
    cfg = DemoConfig(base_width=int(sparse.options["base_width"]), image_size=h)
    flops = flops_summary(cfg, {k: {kk: v[kk] for kk in ("d1", "d2", "u1", "u2")} for k, v in densities.items()})
    progress(f"report: mask overlays for {n_images} test images")
    picks = pick_examples(labels, n_images)
    ov = write_overlays(fused, images[picks], labels[picks], metrics["classes"], out / "img", normalize)
    ctx = {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "zoo": str(zoo), "metrics": metrics,
           "accuracy": acc, "densities": densities, "mean_density": mean_density, "flops": flops,
           "bench": bench, "validate": validate, "overlays": ov, "steps": list(steps), "bench_ops": bench_ops,
           "environment": environment or (bench_ops or {}).get("environment"), "threads": threads,
           "detection": detection}
    progress("report: plots (latency vs size and density, accuracy vs MACs, per-block densities)")
    ctx["plots"] = write_plots(out / "plots", ctx)
    ctx["speed_summary"] = speed_summary(bench, bench_ops)
    write_atomic(out / "report.html", render_html(ctx))
    summary = {k: ctx[k] for k in ("accuracy", "mean_density", "densities", "flops", "bench", "validate", "steps",
                                   "bench_ops", "environment", "plots", "speed_summary")}
    if detection is not None:
        summary["detection"] = {k: v for k, v in detection.items() if k != "html"}
    write_atomic(out / "report.json", json.dumps(summary, indent=2, default=str) + "\n")
    progress("report: wrote report.html and report.json")
    return ctx


def write_plots(outdir: Path, ctx: dict) -> dict:
    """The report's PNGs in ``outdir``: ``{name: path relative to the report}``, or ``{"error": why}`` where
    matplotlib is missing."""
    from sai.demo import plots

    rel = outdir.name
    out: dict[str, str] = {}
    try:
        acc, k = ctx["accuracy"], ctx["flops"]["kernel"]
        rows = [{"label": "sparse_resnet18 (SAI masks)", "macs": k["sparse_macs"], "accuracy": acc["sparse"]}]
        if acc.get("dense") is not None:
            rows.append({"label": "resnet18 (dense twin)", "macs": k["dense_macs"], "accuracy": acc["dense"]})
        plots.accuracy_vs_macs(rows, outdir / "accuracy_vs_macs.png")
        out["accuracy_vs_macs"] = f"{rel}/accuracy_vs_macs.png"
        plots.block_densities(ctx["densities"], outdir / "block_densities.png")
        out["block_densities"] = f"{rel}/block_densities.png"
        bo = ctx.get("bench_ops")
        if bo and sweep_cases(bo):
            arch = bo.get("arch", "")
            if bo.get("density") is not None:
                plots.latency_vs_size(bo["cases"], bo["density"], outdir / "latency_vs_size.png", arch)
                out["latency_vs_size"] = f"{rel}/latency_vs_size.png"
            if bo.get("sizes") and len(bo.get("densities") or []) > 1:
                plots.latency_vs_density(bo["cases"], tuple(bo["sizes"][-1]), outdir / "latency_vs_density.png", arch)
                out["latency_vs_density"] = f"{rel}/latency_vs_density.png"
    except SaiError as exc:  # matplotlib missing: the report without plots, saying how to get them
        out["error"] = str(exc)
    return out


def _mask_grids(fused: nn.Module, h: int, w: int) -> dict[str, str]:
    """``block -> "HxW"`` of its masks for an ``h x w`` input (from one forward of a blank image)."""
    _, masks = block_masks(fused, torch.zeros(1, 3, h, w))
    return {k: "x".join(str(s) for s in m1.shape[-2:]) for k, (m1, _) in masks.items()}


def _onnx_accuracy(path: Path, x: torch.Tensor, labels: torch.Tensor) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        return {}
    name, dim0 = inputs[0].name, inputs[0].shape[0]
    bs = 100 if not isinstance(dim0, int) else dim0
    preds = []
    for i in range(0, x.shape[0], bs):
        preds.append(torch.from_numpy(sess.run(None, {name: x[i:i + bs].numpy()})[0]).argmax(1))
    pred = torch.cat(preds)
    return {"onnxruntime": float((pred == labels).float().mean()), "n_onnx": int(labels.shape[0])}


__all__ = ["block_masks", "load_zoo", "overlay", "pick_examples", "render_html", "speed_summary", "write_overlays",
           "write_plots", "write_report"]
