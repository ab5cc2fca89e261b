"""Output checks that turn a "successful" pipeline call into a failure when it is one."""

from __future__ import annotations

import numpy as np

from storage.models import FailureKind

# On the [0, 1] scale: a safety checker's black-out and a collapsed VAE both land here.
BLACK_MAX_LEVEL = 0.02
# A uniform image (any colour) has a standard deviation near zero.
BLANK_MAX_STD = 0.004


def classify_output(image: np.ndarray) -> tuple[FailureKind, str] | None:
    """Return (kind, message) when the image is not a usable render, else None."""
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        return FailureKind.NAN_OUTPUT, f"{bad} of {image.size} values are NaN or infinite"
    peak = float(image.max())
    if peak <= BLACK_MAX_LEVEL:
        return FailureKind.BLACK_IMAGE, f"image is black (max level {peak:.4f})"
    spread = float(image.std())
    if spread <= BLANK_MAX_STD:
        return FailureKind.BLANK_IMAGE, f"image is a single flat colour (std {spread:.5f})"
    return None
