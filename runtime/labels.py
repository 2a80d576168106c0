"""Labels out: top-k classes of a classifier's logits, with the class names the checkpoint records
(``classes`` metadata, see ``sai.exporter.metadata``).

``topk`` gives ``Prediction``s (index, label, softmax probability, logit) per image;
``classification_strings`` gives Triton's classification-extension form (``"value:index:label"``,
value = the output's own value, as Triton's ``classification`` output parameter returns), so a server
can answer both ways from one batched result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from sai.errors import SaiError


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes: ``label`` is None where the model records no class names."""

    index: int
    label: Optional[str]
    score: float  # softmax probability over all classes
    logit: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "score": self.score, "logit": self.logit}


def _check(values: np.ndarray, k: int, labels: Optional[Sequence[str]]) -> tuple[np.ndarray, int]:
    v = np.asarray(values)
    if v.ndim != 2 or v.dtype.kind not in "fiu":
        raise SaiError(f"top-k needs [batch, classes] scores, got shape {list(v.shape)} of {v.dtype.name}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SaiError(f"k must be a positive integer, got {k!r}")
    if labels is not None and len(labels) != v.shape[1]:
        raise SaiError(f"{len(labels)} class names for {v.shape[1]} classes")
    return v, min(int(k), v.shape[1])


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """``[batch, k]`` class indices by decreasing value (ties: the lower index first)."""
    v, k = _check(values, k, None)
    return np.argsort(-v.astype(np.float64), axis=1, kind="stable")[:, :k]


def softmax(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, np.float64)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def topk(logits: np.ndarray, k: int = 5, labels: Optional[Sequence[str]] = None) -> list[list[Prediction]]:
    """The ``k`` most likely classes of every row of ``logits`` [batch, classes]. Non-finite logits are
    a SaiError (their probabilities are undefined)."""
    v, k = _check(logits, k, labels)
    if not np.isfinite(v).all():
        raise SaiError("the model's logits hold NaN or inf; no top-k can be given")
    idx = top_indices(v, k)
    prob = softmax(v)
    return [[Prediction(int(i), labels[i] if labels is not None else None, float(prob[r, i]), float(v[r, i]))
             for i in row] for r, row in enumerate(idx)]


def classification_strings(values: np.ndarray, k: int, labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """``[batch, k]`` object array of ``b"value:index:label"`` (``b"value:index"`` without names), Triton's
    classification extension form."""
    v, k = _check(values, k, labels)
    idx = top_indices(v, k)
    out = np.empty(idx.shape, dtype=object)
    for r, row in enumerate(idx):
        for j, i in enumerate(row):
            text = f"{float(v[r, i]):.6g}:{int(i)}" + (f":{labels[i]}" if labels is not None else "")
            out[r, j] = text.encode()
    return out
