"""Per-version post-processing: the steps a version's ``canary.yaml`` lists, in order.

Each version owns its steps, so a candidate can ship a different colour correction or
safety filter without touching the baseline (the file's format: tasks/version_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from tasks.version_config import ColorCorrect, VersionConfig

_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


@dataclass(frozen=True)
class PostProcessor:
    """Applies a version's colour correction and resize steps, in their configured order."""

    config: VersionConfig

    def __call__(self, image: np.ndarray, width: int, height: int) -> Image.Image:
        pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
        result = Image.fromarray(pixels)
        for step in self.config.postprocess:
            if step.color_correct is not None:
                result = _color_correct(result, step.color_correct)
            if step.resize is not None and result.size != (width, height):
                result = result.resize((width, height), _RESAMPLE[step.resize.method])
        return result


def _color_correct(image: Image.Image, settings: ColorCorrect) -> Image.Image:
    if settings.gamma != 1.0:
        table = [round(255 * (i / 255) ** (1 / settings.gamma)) for i in range(256)]
        image = image.point(table * len(image.getbands()))
    if settings.saturation != 1.0:
        image = ImageEnhance.Color(image).enhance(settings.saturation)
    if settings.contrast != 1.0:
        image = ImageEnhance.Contrast(image).enhance(settings.contrast)
    return image
