"""What a model version declares about itself in its folder's ``canary.yaml``.

Each version owns its post-processing and its render limits: a 24 GB GPU checkpoint and
a CPU tiny model can render very different sizes and step counts in very different
times, so the gateway refuses a request beyond what the version that would serve it
declares, and its workers run with the version's own time limits. Example
``MODEL_DIR/v2/canary.yaml``::

    postprocess:
      - safety_filter: {}                     # a flagged image fails as nsfw_filtered
      - color_correct: {gamma: 0.95, saturation: 1.05, contrast: 1.0}
      - resize: {}                            # to the job's requested width x height
    render_size: [512, 512]                   # optional: render here, then resize
    limits:                                   # optional; absent values: CANARY_* settings
      default_width: 1024
      default_height: 1024
      default_steps: 30
      max_width: 1536
      max_height: 1536
      max_steps: 60
      soft_time_limit_s: 60                   # per job; the hard limit kills the process
      time_limit_s: 90

Without the file a version renders at the requested size with the safety filter only,
within the global limits (``CANARY_MAX_SIDE``, ``CANARY_MAX_STEPS``, the task time
limits) and with the global defaults (512 x 512, 25 steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_FILE = "canary.yaml"
DEFAULT_SIDE = 512
DEFAULT_STEPS = 25


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


class RenderLimits(BaseModel):
    """Defaults for what a request leaves out, and the most a version accepts."""

    model_config = ConfigDict(extra="forbid")

    default_width: int = Field(default=DEFAULT_SIDE, ge=8)
    default_height: int = Field(default=DEFAULT_SIDE, ge=8)
    default_steps: int = Field(default=DEFAULT_STEPS, ge=1)
    max_width: int | None = Field(default=None, ge=8)
    max_height: int | None = Field(default=None, ge=8)
    max_steps: int | None = Field(default=None, ge=1)
    soft_time_limit_s: int | None = Field(default=None, ge=1)
    time_limit_s: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> RenderLimits:
        for name in ("width", "height", "steps"):
            default, most = getattr(self, f"default_{name}"), getattr(self, f"max_{name}")
            if most is not None and default > most:
                raise ValueError(f"default_{name} {default} exceeds max_{name} {most}")
        soft, hard = self.soft_time_limit_s, self.time_limit_s
        if (soft is None) != (hard is None):
            raise ValueError("set both soft_time_limit_s and time_limit_s, or neither")
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError("soft_time_limit_s must be below time_limit_s")
        return self


class VersionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    postprocess: list[Step] = Field(default_factory=lambda: [Step(safety_filter=SafetyFilter())])
    render_size: tuple[int, int] | None = None
    limits: RenderLimits = Field(default_factory=RenderLimits)

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
