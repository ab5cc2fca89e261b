"""The gate policy: what the gate checks and with which limits, read from a YAML file.

Policy file (YAML; every field has the seed's default)::

    guardrails:
      success_rate_min: 0.992       # candidate's success rate
      p95_latency_max_ms: 8500      # candidate's P95 end-to-end latency of successful jobs
      peak_vram_max_gb: 21.3        # candidate's mean peak VRAM
      must_not_worsen: [success_rate, negative_feedback_rate, download_rate]
      alpha: 0.05                   # family-wise (Holm) over must_not_worsen
      negative_feedback_may_rise: false   # true: leave it out of the family
      srm_alpha: 0.001              # sample-ratio mismatch alarm (joint + per segment)
      on_srm: hold                  # hold | rollback
      golden_s_not_worse: true      # candidate S-level count <= baseline's (last golden run)
      min_users_per_arm: 100        # below this nothing is decided: hold
    promotion:
      metric: long_dwell_share
      min_relative_lift: 0.08       # the daily relative lift must exceed this ...
      days: 3                       # ... on each of the last 3 days
      must_decrease: quick_retry_share
      evidence: point               # point | daily_interval | pooled_always_valid
    planning:
      planned_users_per_arm: {default: 5000}   # by stage name: the sample each stage plans
      tuning_users_per_arm: {}      # by experiment: the always-valid test's tuning size
      power: 0.8                    # for the minimum detectable effect and days needed

Evaluation: analysis.gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Guardrails(BaseModel):
    model_config = ConfigDict(extra="forbid")

    success_rate_min: float = Field(default=0.992, ge=0, le=1)
    p95_latency_max_ms: float = Field(default=8500, gt=0)
    peak_vram_max_gb: float = Field(default=21.3, gt=0)
    must_not_worsen: list[str] = Field(
        default_factory=lambda: ["success_rate", "negative_feedback_rate", "download_rate"]
    )
    alpha: float = Field(default=0.05, gt=0, lt=1)  # family-wise over must_not_worsen
    negative_feedback_may_rise: bool = False
    srm_alpha: float = Field(default=0.001, gt=0, lt=1)
    on_srm: Literal["hold", "rollback"] = "hold"
    golden_s_not_worse: bool = True
    min_users_per_arm: int = Field(default=100, ge=2)

    @field_validator("must_not_worsen")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        from analysis.metrics import METRICS

        unknown = sorted(set(names) - {metric.name for metric in METRICS})
        if unknown:
            raise ValueError(f"unknown metrics {unknown}")
        return names


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = "long_dwell_share"
    min_relative_lift: float = 0.08
    days: int = Field(default=3, ge=1)
    must_decrease: str | None = "quick_retry_share"
    # point: the seed's rule on daily point estimates; daily_interval: each day's 95%
    # interval clears the threshold; pooled_always_valid: the last days' pooled always-valid
    # interval does (both also need must_decrease's always-valid interval below 0)
    evidence: Literal["point", "daily_interval", "pooled_always_valid"] = "point"


class Planning(BaseModel):
    """The sample each stage plans for; the always-valid test is tuned to it."""

    model_config = ConfigDict(extra="forbid")

    planned_users_per_arm: dict[str, int] = Field(default_factory=lambda: {"default": 5_000})
    tuning_users_per_arm: dict[str, int] = Field(default_factory=dict)
    power: float = Field(default=0.8, gt=0, lt=1)

    @field_validator("planned_users_per_arm")
    @classmethod
    def _has_default(cls, planned: dict[str, int]) -> dict[str, int]:
        if "default" not in planned:
            raise ValueError("a 'default' planned size is required")
        if any(n < 2 for n in planned.values()):
            raise ValueError("planned sizes are at least 2 users per arm")
        return planned

    def tuning_users_per_arm_for(self, experiment: str, stage: str) -> int:
        """The experiment's own tuning size, else the planned size of its current stage."""
        if experiment in self.tuning_users_per_arm:
            return self.tuning_users_per_arm[experiment]
        return self.planned_users_per_arm.get(stage, self.planned_users_per_arm["default"])


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guardrails: Guardrails = Field(default_factory=Guardrails)
    promotion: Promotion = Field(default_factory=Promotion)
    planning: Planning = Field(default_factory=Planning)

    def worsening_family(self) -> list[str]:
        """The metrics whose significant worsening is a breach (Holm across them)."""
        g = self.guardrails
        return [
            name
            for name in g.must_not_worsen
            if not (name == "negative_feedback_rate" and g.negative_feedback_may_rise)
        ]


class GatePolicyError(ValueError):
    pass


def load_policy(path: Path | None) -> GatePolicy:
    if path is None:
        return GatePolicy()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return GatePolicy.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise GatePolicyError(f"{path}: {exc}") from None
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise GatePolicyError(f"{path}: {errors}") from None
