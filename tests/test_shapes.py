"""sai.shapes.parse_shape: one syntax (x or , between integers, spaces ignored) and one message (the flag,
the expected form, an example, the bad value) for every shape a user writes."""

from __future__ import annotations

import numpy as np
import pytest

from sai.errors import SaiError
from sai.shapes import parse_shape


@pytest.mark.parametrize("text", ["1x3x224x224", "1,3,224,224", "1, 3, 224, 224", " 1X3x224x224 ", "1,3,224,224,",
                                  (1, 3, 224, 224), [1, 3, 224, 224], np.array([1, 3, 224, 224]).tolist(),
                                  tuple(np.array([1, 3, 224, 224]))])
def test_accepted_spellings(text):
    assert parse_shape(text) == (1, 3, 224, 224)


@pytest.mark.parametrize("text", ["1,3,a,224", "1,3,224", "1,3,0,224", "1,3,-2,224", "", "1.5,3,224,224",
                                  (1, 3, 2.5, 4), (True, 3, 4, 4), None, 12])
def test_refused_with_the_value_and_the_form(text):
    with pytest.raises(SaiError) as err:
        parse_shape(text, "--opt-shape")
    msg = str(err.value)
    assert msg.startswith("--opt-shape must be N,C,H,W: integers >= 1 separated by x or , (e.g. 1,3,224,224), got ")
    assert msg.endswith(repr(text))


def test_lengths_minimum_and_form():
    assert parse_shape("224,320", "--shape", lengths=(2, 4)) == (224, 320)
    with pytest.raises(SaiError, match=r"--shape must be H,W or N,C,H,W: .* got '1,2,3'"):
        parse_shape("1,2,3", "--shape", lengths=(2, 4))
    assert parse_shape("9,3,32,40,7", "X-Shape", lengths=None) == (9, 3, 32, 40, 7)
    with pytest.raises(SaiError, match=r"image size must be SIDE or H,W: integers >= 32 .* got '16'"):
        parse_shape("16", "image size", lengths=(1, 2), minimum=32, form="SIDE or H,W")


def test_the_callers_share_it():
    from sai.exporter.export import parse_input_shape
    from sai.runtime.convert import parse_shape as profile_shape

    for parse in (parse_input_shape, profile_shape):
        assert parse("2x3x64x64") == (2, 3, 64, 64)
    with pytest.raises(SaiError, match=r"^--max-shape must be N,C,H,W: .* got '8,3,64'$"):
        profile_shape("8,3,64", "--max-shape")
    with pytest.raises(SaiError, match=r"--max-shape \[65536, 3, 4096, 4096\] has .* more than 2\^31-1"):
        profile_shape("65536,3,4096,4096", "--max-shape")
