"""The demo task: procedurally drawn shapes on plain or lightly textured backgrounds, made from a seed.

Ten classes of one object each (circle, ring, square, frame, triangle, plus, star, crescent,
semicircle, ellipse) with random colour, scale, position and rotation, on a plain, gradient or
low-frequency-textured background with pixel noise and a few small distractor specks. The object
covers a small part of the image, so a spatially adaptive network can skip most positions.

Every image is a pure function of ``(seed, split, index)`` (numpy ``default_rng([seed, split, i])``),
so any slice of any split is reproducible on its own; labels are ``index % 10`` (exactly balanced).
No downloads, nothing cached on disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from sai.errors import SaiError

CLASSES = ("circle", "ring", "square", "frame", "triangle", "plus", "star", "crescent", "semicircle", "ellipse")
SPLITS = {"train": 0, "val": 1, "test": 2}
IMAGE_SIZE = 64
# Input normalisation of the demo models: x = (rgb01 - MEAN) / STD (stored in the checkpoint meta).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
SUPERSAMPLE = 2
RADIUS = (0.22, 0.34)  # object radius as a fraction of the image size


def _polygon(u: np.ndarray, v: np.ndarray, n: int, radius: float) -> np.ndarray:
    """Inside a regular n-gon of circumradius ``radius`` centred at 0 (a vertex on +v)."""
    inside = np.ones(u.shape, dtype=bool)
    apothem = radius * math.cos(math.pi / n)
    for k in range(n):
        a = math.pi / 2 + (2 * k + 1) * math.pi / n
        inside &= u * math.cos(a) + v * math.sin(a) <= apothem
    return inside


def shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of the unit-size shape ``cls`` at object coordinates ``(u, v)`` (radius ~1)."""
    rho = np.hypot(u, v)
    name = CLASSES[cls]
    if name == "circle":
        return rho < 0.9
    if name == "ring":
        return (rho < 1.0) & (rho > 0.55)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if name == "frame":
        m = np.maximum(np.abs(u), np.abs(v))
        return (m < 0.85) & (m > 0.5)
    if name == "triangle":
        return _polygon(u, v, 3, 1.05)
    if name == "plus":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0))
    if name == "star":
        theta = np.arctan2(v, u)
        f = np.abs(((theta * 5 / (2 * math.pi)) % 1.0) - 0.5) * 2  # 1 at the tips, 0 between them
        return rho < 0.38 + 0.67 * f ** 1.5
    if name == "crescent":
        return (rho < 1.0) & (np.hypot(u - 0.5, v) > 0.8)
    if name == "semicircle":
        return (rho < 1.0) & (v > -0.1)
    if name == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.45) ** 2 < 1.0
    raise SaiError(f"unknown class index {cls}")


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = rng.uniform(0.15, 0.85, 3)
    kind = rng.integers(0, 3)  # 0 plain, 1 gradient, 2 low-frequency texture
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        ramp = (np.cos(a) * xx + np.sin(a) * yy) / size - 0.5
        img += ramp[..., None] * rng.uniform(-0.25, 0.25, 3)
    elif kind == 2:
        tex = np.zeros((size, size))
        for _ in range(2):
            fx, fy = rng.uniform(0.5, 3.0, 2) * 2 * math.pi / size
            tex += np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * math.pi))
        img += (tex / 2)[..., None] * rng.uniform(-0.08, 0.08, 3)
    return img


def _colour_apart(rng: np.random.Generator, bg: np.ndarray, min_dist: float = 0.35) -> np.ndarray:
    for _ in range(50):
        c = rng.uniform(0.0, 1.0, 3)
        if np.abs(c - bg).sum() >= min_dist * 3 / 2 and abs(c.mean() - bg.mean()) > 0.12:
            return c
    return np.where(bg > 0.5, 0.05, 0.95)


def _window(cy: float, cx: float, half: float, size: int):
    """Supersampled pixel-centre coordinates of the box of half-width ``half`` around ``(cy, cx)``:
    ``(slices, yy, xx)`` in image units."""
    ss = size * SUPERSAMPLE
    y0, y1 = max(0, int((cy - half) * SUPERSAMPLE)), min(ss, int(math.ceil((cy + half) * SUPERSAMPLE)) + 1)
    x0, x1 = max(0, int((cx - half) * SUPERSAMPLE)), min(ss, int(math.ceil((cx + half) * SUPERSAMPLE)) + 1)
    yy, xx = np.mgrid[y0:max(y0, y1), x0:max(x0, x1)].astype(np.float64)
    return (slice(y0, max(y0, y1)), slice(x0, max(x0, x1))), (yy + 0.5) / SUPERSAMPLE, (xx + 0.5) / SUPERSAMPLE


def render(seed: int, split: str, index: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, int]:
    """One image ``[size, size, 3]`` float32 in [0, 1] and its label (``index % 10``)."""
    if split not in SPLITS:
        raise SaiError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    label = int(index) % len(CLASSES)
    bg = _background(rng, size, *np.mgrid[0:size, 0:size].astype(np.float64))
    img = np.repeat(np.repeat(bg, SUPERSAMPLE, 0), SUPERSAMPLE, 1)
    bg_mean = bg.mean(axis=(0, 1))
    # distractors: small specks and short strokes, smaller than any object
    for _ in range(int(rng.integers(2, 7))):
        cy, cx = rng.uniform(0, size, 2)
        col = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:
            rad = rng.uniform(0.6, 1.6)
            sl, yy, xx = _window(cy, cx, rad + 1, size)
            m = np.hypot(yy - cy, xx - cx) < rad
        else:
            a = rng.uniform(0, math.pi)
            length = rng.uniform(2.0, 5.0)
            sl, yy, xx = _window(cy, cx, length + 1, size)
            du = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            dv = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            m = (np.abs(du) < length) & (np.abs(dv) < 0.5)
        img[sl][m] = col
    # the object
    radius = rng.uniform(*RADIUS) * size
    margin = radius * 1.1
    cy, cx = rng.uniform(margin, size - margin, 2)
    a = rng.uniform(0, 2 * math.pi)
    sl, yy, xx = _window(cy, cx, radius * 1.2, size)
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u = dx * math.cos(a) + dy * math.sin(a)
    v = -dx * math.sin(a) + dy * math.cos(a)
    m = shape_mask(label, u, v)
    colour = _colour_apart(rng, bg_mean)
    img[sl][m] = colour
    img = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), label


def make_split(seed: int, split: str, n: int, size: int = IMAGE_SIZE, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[n, 3, size, size]`` uint8 and labels ``[n]`` int64 for indices ``start .. start+n-1``."""
    imgs = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for k in range(n):
        img, lab = render(seed, split, start + k, size)
        imgs[k] = np.round(img * 255).astype(np.uint8)
        labels[k] = lab
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def normalize(images_u8: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> the float network input ``(x / 255 - mean) / std``."""
    x = images_u8.float() / 255.0
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


__all__ = ["CLASSES", "IMAGE_SIZE", "MEAN", "SPLITS", "STD", "make_split", "normalize", "render", "shape_mask"]
