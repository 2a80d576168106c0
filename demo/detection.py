"""The detection part of `sai demo`: the shipped demo detector pair (models/zoo/sai_demo_det_r18, trained by
``sai train-demo --task detection``) on held-out test images: COCO mAP of the sparse detector and its dense twin,
the MACs of both (``detector_flops`` at the measured mask densities) and one picture per image
(``det/det<i>.png``: the sparse detector's boxes, the dense twin's, then the sparse backbone's masks of each
stage over the image). Runs on PyTorch (the fused CPU kernels of the backbone) or, where
``sai.runtime.load`` gives an engine for the checkpoint, through it."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from sai.errors import SaiError

DET_DIR = "det"
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230))
SCORE_MIN = 0.3  # boxes drawn in the pictures (the mAP counts every detection)


def default_zoo() -> Path:
    from sai.models.detector_train import DEFAULT_DET_OUT

    return DEFAULT_DET_OUT


def resolve_zoo(zoo: Optional[str], skip: bool = False) -> Optional[Path]:
    """The demo detector folder ``sai demo`` runs: ``--det-zoo`` (SaiError when it lacks the checkpoints), else
    the shipped one when present; None with ``skip`` (``--no-detection``) or when nothing is shipped."""
    from sai.models.detector_train import DENSE_DET_FILE, SPARSE_DET_FILE

    if skip:
        return None
    path = Path(zoo) if zoo is not None else default_zoo()
    missing = [f for f in (SPARSE_DET_FILE, DENSE_DET_FILE, "metrics.json") if not (path / f).is_file()]
    if missing and zoo is None:
        print(f"sai demo: no demo detector in {path} (missing {', '.join(missing)}): the detection part is skipped",
              flush=True)
        return None
    if missing:
        raise SaiError(f"--det-zoo {path} lacks {', '.join(missing)}; give a folder written by sai train-demo --task "
                       "detection, or pass --no-detection")
    return path.resolve()


def _e(x: Any) -> str:
    return html.escape(str(x))


def draw_detections(image_u8: np.ndarray, dets: np.ndarray, labels: np.ndarray, classes, scale: int = 2,
                    score_min: float = SCORE_MIN, title: str = "") -> np.ndarray:
    """``image_u8`` [H, W, 3] with the boxes ``dets`` [k, 5] (x1, y1, x2, y2, score; image pixels) of score
    ``>= score_min`` drawn (a colour per class, the class name and the score above each), upscaled."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.repeat(np.repeat(image_u8, scale, 0), scale, 1))
    d = ImageDraw.Draw(im)
    for (x1, y1, x2, y2, s), lab in zip(dets.tolist(), labels.tolist(), strict=True):
        if s < score_min or lab < 0:
            continue
        col = BOX_COLOURS[int(lab) % len(BOX_COLOURS)]
        d.rectangle([x1 * scale, y1 * scale, (x2 + 1) * scale - 1, (y2 + 1) * scale - 1], outline=col, width=2)
        text = f"{classes[int(lab)]} {s:.2f}"
        ty = max(0, y1 * scale - 11)
        d.rectangle([x1 * scale, ty, x1 * scale + 6 * len(text) + 2, ty + 10], fill=(0, 0, 0))
        d.text((x1 * scale + 1, ty - 1), text, fill=col)
    if title:  # bottom-left: the boxes' labels sit above the boxes
        y = im.size[1] - 12
        d.rectangle([0, y, 6 * len(title) + 4, y + 11], fill=(255, 255, 255))
        d.text((2, y), title, fill=(0, 0, 0))
    return np.asarray(im)


def _load_pair(zoo: Path):
    """The fused sparse detector and its dense twin; ``(sparse, dense, how)``."""
    from sai.models.detector_train import DENSE_DET_FILE, SPARSE_DET_FILE, load_demo_detector

    for f in (SPARSE_DET_FILE, DENSE_DET_FILE):
        if not (zoo / f).is_file():
            raise SaiError(f"demo detector checkpoint {zoo / f} not found (train it with: sai train-demo --task "
                           f"detection --out {zoo})")
    sp = load_demo_detector(zoo / SPARSE_DET_FILE, fuse=True)
    de = load_demo_detector(zoo / DENSE_DET_FILE, fuse=True)
    return sp, de, "PyTorch (sai.models.detector, the backbone fused: sai's CPU kernels)"


@torch.no_grad()
def _detect_with_masks(det, images: torch.Tensor) -> tuple[dict, dict]:
    """``det.detect`` on uint8 NHWC ``images`` and the sparse backbone's masks ``{block: (m1, m2)}``."""
    captured: dict[str, tuple] = {}

    def observe(block: str, which: str, mask: torch.Tensor) -> None:
        captured[block] = captured.get(block, ()) + (mask.detach().clone(),)

    with det.backbone.add_mask_observer(observe):
        out = det.detect(images, layout="NHWC")
    return out, captured


def write_pictures(sparse, dense, images: torch.Tensor, gt_labels, classes, outdir: Path, scale: int = 2) -> list:
    """One ``det<i>.png`` per image: sparse boxes | dense boxes | the first block's conv1 mask of each stage."""
    from sai.demo.report import _save_png, overlay

    outdir.mkdir(parents=True, exist_ok=True)
    sp_out, masks = _detect_with_masks(sparse, images)
    de_out = dense.detect(images, layout="NHWC")
    blocks = [b for b in masks if b.endswith(".0")] or list(masks)
    rows = []
    for n in range(images.shape[0]):
        img = images[n].numpy()
        panels = []
        for name, out in (("sparse", sp_out), ("dense twin", de_out)):
            k = int(out["num_dets"][n])
            panels.append(draw_detections(img, out["dets"][n, :k].numpy(), out["labels"][n, :k].numpy(), classes,
                                          scale, title=name))
        dens = []
        for b in blocks:
            m = masks[b][0][n, 0].numpy()
            dens.append(float((m > 0).mean()))
            panels.append(overlay(img, m, scale))
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        row = np.concatenate([c for a in panels for c in (a, gap)][:-1], axis=1)
        fname = f"det{n}.png"
        _save_png(row, outdir / fname)
        k = int(sp_out["num_dets"][n])
        found = sorted(classes[int(c)] for c, s in zip(sp_out["labels"][n, :k].tolist(),
                                                       sp_out["dets"][n, :k, 4].tolist(), strict=True)
                       if s >= SCORE_MIN)
        rows.append({"file": f"{outdir.name}/{fname}", "truth": sorted(classes[int(c)] for c in gt_labels[n].tolist()),
                     "sparse_found": found, "mask_blocks": blocks, "densities": dens})
    return rows


def run_detection(out: Path, zoo: Optional[Path] = None, *, n_images: int = 4, eval_size: Optional[int] = None,
                  progress: Callable[[str], None] = lambda s: None) -> dict:
    """Evaluate the pair and draw the pictures into ``out/det``; returns the report's detection section
    (``html`` and the figures)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: on a shared machine the fastest and the steadiest
    try:
        return _run_detection(out, zoo, n_images, eval_size, progress)
    finally:
        torch.set_num_threads(prev)


def _run_detection(out: Path, zoo: Optional[Path], n_images: int, eval_size: Optional[int],
                   progress: Callable[[str], None]) -> dict:
    from sai.models.detector_train import evaluate_detector, flops_table, make_det_split

    t0 = time.perf_counter()
    zoo = Path(zoo) if zoo is not None else default_zoo()
    metrics = json.loads((zoo / "metrics.json").read_text())
    ds = metrics["config"]
    n = int(eval_size or metrics.get("test_size", 300))
    sparse, dense, how = _load_pair(zoo)
    progress(f"detection: {n} held-out test images ({ds['image_size']}x{ds['image_size']}, seed {ds['seed']}), "
             f"COCO mAP of the sparse detector and its dense twin on {how.split(' (')[0]}")
    images, boxes, labels = make_det_split(int(ds["seed"]), "test", n, int(ds["image_size"]))
    ev_s = evaluate_detector(sparse, images, boxes, labels)
    ev_d = evaluate_detector(dense, images, boxes, labels)
    flops = flops_table(sparse.config, dense.config, ev_s["mask_stats"])
    classes = metrics["classes"]
    k = max(0, min(int(n_images), n))
    progress(f"detection: pictures of {k} test images (boxes and masks)")
    pics = write_pictures(sparse, dense, images[:k], labels[:k], classes, out / DET_DIR) if k else []
    res = {"zoo": str(zoo), "how": how, "n": n, "map": {"sparse": {x: ev_s[x] for x in ("mAP", "AP50", "AP75")},
                                                        "dense": {x: ev_d[x] for x in ("mAP", "AP50", "AP75")}},
           "recorded": metrics.get("map"), "mean_density": ev_s["mean_density"], "flops": flops, "pictures": pics,
           "seconds": round(time.perf_counter() - t0, 1)}
    res["html"] = render_section(res, metrics)
    return res


def render_section(res: dict, metrics: dict) -> str:
    """The report's detection section."""
    ms, md = res["map"]["sparse"], res["map"]["dense"]
    rec = res.get("recorded") or {}
    fl = res["flops"]
    cfg = metrics.get("config", {})

    def rec_map(which: str) -> str:
        r = rec.get(which) or {}
        return f"{r['mAP']:.2f} ({r.get('n', '?')} images)" if "mAP" in r else "-"

    rows = [("sparse_resnet18 Faster R-CNN (SAI masks)", ms, fl["sparse"]["total"], rec_map("sparse")),
            ("resnet18 Faster R-CNN (dense twin)", md, fl["dense"]["total"], rec_map("dense"))]
    body = "".join(f"<tr><td class='l'>{_e(name)}</td><td>{m['mAP']:.2f}</td><td>{m['AP50']:.2f}</td>"
                   f"<td>{m['AP75']:.2f}</td><td>{macs / 1e6:.1f} M</td><td>{_e(r)}</td></tr>"
                   for name, m, macs, r in rows)
    parts = ["<h2>Detection: the demo SAI-Det Faster R-CNN pair</h2>",
             f"<p class='note'>{_e(res['how'])}; {res['n']} held-out images of the procedural detection task "
             f"({len(metrics.get('classes', []))} shape classes, 1-5 per image, {_e(cfg.get('image_size'))} px), "
             f"COCO box mAP@[.5:.95] (pycocotools COCOeval). Checkpoints: <code>{_e(res['zoo'])}</code>, trained "
             f"by <code>sai train-demo --task detection</code> (seed {_e(cfg.get('seed'))}).</p>",
             "<table><tr><th>model</th><th>mAP</th><th>AP50</th><th>AP75</th><th>MACs (whole detector)</th>"
             f"<th>mAP recorded at training</th></tr>{body}</table>",
             f"<p>Gap dense - sparse: <b>{md['mAP'] - ms['mAP']:.2f} mAP points</b> at mean mask density "
             f"<b>{res['mean_density']:.3f}</b>; MACs sparse / dense <b>{fl['ratio']:.3f}</b> (backbone alone "
             f"{fl['backbone_ratio']:.3f}; neck, RPN and the RoI head of {fl['num_rois']} RoIs are dense: "
             f"{(fl['dense']['total'] - fl['dense']['backbone']) / 1e6:.1f} M of the dense twin's "
             f"{fl['dense']['total'] / 1e6:.1f} M, input {fl['input_hw'][0]}x{fl['input_hw'][1]}).</p>"]
    if res["pictures"]:
        blocks = res["pictures"][0]["mask_blocks"]
        parts.append("<p class='note'>Each picture: the sparse detector's boxes, the dense twin's (score &ge; "
                     f"{SCORE_MIN}), then the conv1 mask of {', '.join(_e(b) for b in blocks)} over the image "
                     "(<span style='color:#d22'>red</span>: computed; grey: interpolated).</p>")
        for p in res["pictures"]:
            parts.append(f"<p><img src='{_e(p['file'])}' alt='{_e(p['file'])}'><br><span class='note'>truth: "
                         f"{_e(', '.join(p['truth']))}; sparse found: {_e(', '.join(p['sparse_found']) or 'none')}; "
                         f"mask densities {', '.join(f'{d:.2f}' for d in p['densities'])}</span></p>")
    return "\n".join(parts)


__all__ = ["draw_detections", "render_section", "run_detection", "write_pictures"]
