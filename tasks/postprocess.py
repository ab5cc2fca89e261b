"""Per-version post-processing, configured in the version's folder (``canary.yaml``).

Each version owns its steps, so a candidate can ship a different colour correction or
safety filter without touching the baseline. Example ``MODEL_DIR/v2/canary.yaml``::

    postprocess:
      - safety_filter: {}                     # a flagged image fails as nsfw_filtered
      - color_correct: {gamma: 0.95, saturation: 1.05, contrast: 1.0}
      - resize: {}                            # to the job's requested width x height
    render_size: [512, 512]                   # optional: render here, then resize

Without the file a version renders at the requested size with the safety filter only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image, ImageEnhance
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_FILE = "canary.yaml"


class ColorCorrect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gamma: float = Field(default=1.0, gt=0, le=5)
    saturation: float = Field(default=1.0, ge=0, le=5)
    contrast: float = Field(default=1.0, ge=0, le=5)


class Resize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["lanczos", "bicubic", "bilinear"] = "lanczos"


class SafetyFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    safety_filter: SafetyFilter | None = None
    color_correct: ColorCorrect | None = None
    resize: Resize | None = None


class VersionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    postprocess: list[Step] = Field(default_factory=lambda: [Step(safety_filter=SafetyFilter())])
    render_size: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _resized_when_rendered_elsewhere(self) -> VersionConfig:
        if self.render_size and not any(step.resize for step in self.postprocess):
            raise ValueError("render_size needs a resize step, or images come out the wrong size")
        return self

    @property
    def safety_filter(self) -> bool:
        return any(step.safety_filter is not None for step in self.postprocess)


class VersionConfigError(ValueError):
    pass


def load_version_config(folder: Path) -> VersionConfig:
    path = folder / CONFIG_FILE
    if not path.exists():
        return VersionConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return VersionConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise VersionConfigError(f"{path}: {exc}") from None


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
