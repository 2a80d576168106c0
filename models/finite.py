"""``check_finite``: the NaN / inf check of a state dict (the checkpoint reader, the detector loader and
``fuse_for_inference`` run it). A leaf module, so ``sai.models.fuse`` needs neither the checkpoint reader
nor the network."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from sai.errors import SaiError


def check_finite(sd: Mapping[str, Tensor], source: str = "the checkpoint") -> None:
    """SaiError naming the first tensors that hold NaN or inf (a diverged training run, a damaged file):
    such weights export and run, but every output is garbage."""
    bad = []
    for k, v in sd.items():
        if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel():
            finite = torch.isfinite(v)
            if not bool(finite.all()):
                n_nan = int(torch.isnan(v).sum())
                n_inf = int((~finite).sum()) - n_nan
                what = ", ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if p)
                bad.append(f"{k} ({what} of {v.numel()})")
                if len(bad) == 3:
                    break
    if bad:
        raise SaiError(f"{source} holds non-finite weights: {'; '.join(bad)}{' ...' if len(bad) == 3 else ''}; "
                       "it comes from a diverged training run or a damaged file: use an earlier checkpoint")
