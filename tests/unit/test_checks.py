"""Output checks on crafted images."""

from __future__ import annotations

import numpy as np

from storage.models import FailureKind
from tasks.checks import classify_output


def test_black_nan_flat_and_good_images() -> None:
    rng = np.random.default_rng(0)
    good = rng.random((64, 64, 3), dtype=np.float32)
    assert classify_output(good) is None
    black = np.zeros((64, 64, 3), dtype=np.float32)
    assert classify_output(black)[0] == FailureKind.BLACK_IMAGE
    nearly_black = black + 0.01
    assert classify_output(nearly_black)[0] == FailureKind.BLACK_IMAGE
    grey = np.full((64, 64, 3), 0.5, dtype=np.float32)
    assert classify_output(grey)[0] == FailureKind.BLANK_IMAGE
    with_nan = good.copy()
    with_nan[3, 4, 1] = np.nan
    kind, message = classify_output(with_nan)
    assert kind == FailureKind.NAN_OUTPUT and message.startswith("1 of")
    with_inf = good.copy()
    with_inf[0, 0, 0] = np.inf
    assert classify_output(with_inf)[0] == FailureKind.NAN_OUTPUT
    # a dark but real image is not black
    dark = good * 0.1
    assert classify_output(dark) is None
