"""The one parser of shapes written as text: ``1x3x224x224``, ``1,3,224,224``, ``1, 3, 224, 224`` (and a
sequence of integers as is). Every flag and header that takes a shape (``--shape``, each item of ``--shapes``,
``--min-shape``, ``--max-shape``, serve's ``--max-shape`` and ``X-Shape``, sai flops' image size; the older
``--input-shape`` / ``--opt-shape`` spellings) goes through ``parse_shape``, so they accept the same syntax and fail with the same message: the
bad value and the expected form."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Optional, Union

from sai.errors import SaiError

# the name of each dimension, by the number of them
FORMS = {1: "N", 2: "H,W", 3: "C,H,W", 4: "N,C,H,W"}
EXAMPLES = {1: "224", 2: "224,224", 3: "3,224,224", 4: "1,3,224,224"}

ShapeLike = Union[str, Sequence[int]]


def expected_form(lengths: Optional[Sequence[int]]) -> str:
    """``"H,W or N,C,H,W"`` for ``lengths`` (2, 4); ``"D1,D2,..."`` for any length (None)."""
    if lengths is None:
        return "D1,D2,..."
    return " or ".join(FORMS.get(n, ",".join(f"D{i + 1}" for i in range(n))) for n in lengths)


def _dim(part) -> int:
    if isinstance(part, str):
        return int(part)
    if isinstance(part, bool):
        raise TypeError("a bool is not a dimension")
    return operator.index(part)  # ints and numpy integers, not floats


def parse_shape(value: ShapeLike, what: str = "shape", *, lengths: Optional[Sequence[int]] = (4,),
                minimum: int = 1, form: Optional[str] = None) -> tuple[int, ...]:
    """``value`` as a tuple of ints: ``x`` or ``,`` between them, spaces ignored; as many as one of
    ``lengths`` (None: any number, at least one), each at least ``minimum``. SaiError otherwise, e.g.
    ``--opt-shape must be N,C,H,W: integers >= 1 separated by x or , (e.g. 1,3,224,224), got '1,3,a'``
    (``form`` replaces the ``N,C,H,W`` part)."""
    if isinstance(value, str):
        parts: Optional[list] = [p for p in (s.strip() for s in value.lower().replace("x", ",").split(",")) if p]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        parts = None
    try:
        dims = tuple(_dim(p) for p in parts) if parts is not None else None
    except (TypeError, ValueError):
        dims = None
    ok_len = dims is not None and (len(dims) in lengths if lengths is not None else len(dims) >= 1)
    if not ok_len or min(dims) < minimum:  # type: ignore[type-var]
        n = lengths[-1] if lengths else 4
        example = EXAMPLES.get(n, ",".join(["8"] * n))
        shown = value if isinstance(value, str) and len(value) <= 80 else (
            value[:80] + "..." if isinstance(value, str) else value)
        raise SaiError(f"{what} must be {form or expected_form(lengths)}: integers >= {minimum} separated by x or , "
                       f"(e.g. {example}), got {shown!r}")
    return dims  # type: ignore[return-value]


__all__ = ["EXAMPLES", "FORMS", "expected_form", "parse_shape"]
