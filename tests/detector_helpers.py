"""A small detector OUTDIR for the serving and Triton tests: a random-init tiny dense ``DetectorConfig`` whose
class logits are scaled so that random images give detections, converted by ``sai.runtime.convert``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCALE = (96, 64)


def tiny_detector_config():
    from sai.models.detector_presets import DetectorConfig

    return DetectorConfig(name="tiny_serve_dense", sparse=False, depth=18, fpn_in_channels=(64, 128, 256, 512),
                          fpn_out_channels=32, feat_channels=32, fc_out_channels=64, img_scale=SCALE,
                          backbone_options={"frozen_stages": 0, "norm_eval": True})


def tiny_detector_outdir(dest: Path) -> Path:
    """``dest/out``: a converted tiny detector (the tensorrt target skipped: one export)."""
    import pytest
    import torch

    from sai.models.detector import SaiDetector
    from sai.runtime import convert as conv

    cfg = tiny_detector_config()
    torch.manual_seed(3)
    det = SaiDetector(cfg)
    with torch.no_grad():  # spread the class logits and make background rare: dozens of detections per image
        det.bbox_head.fc_cls.weight.mul_(40.0)
        det.bbox_head.fc_cls.bias[0] = -5.0
    sd = {k: v for k, v in det.state_dict().items() if not k.endswith("num_batches_tracked")}
    ck = Path(dest) / "tiny_det.pth"
    torch.save({"state_dict": sd, "meta": {"mmdet_version": "0.6.0"}}, ck)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv, "_tensorrt_detector_target", lambda *a: {"file": None, "reason": "skipped by the test"})
        conv.convert_detector(ck, cfg, Path(dest) / "out")
    return Path(dest) / "out"


def detector_images() -> list[np.ndarray]:
    rs = np.random.RandomState(7)
    return [rs.randint(0, 256, (72, 120, 3)).astype(np.uint8), rs.randint(0, 256, (90, 52, 3)).astype(np.uint8)]
