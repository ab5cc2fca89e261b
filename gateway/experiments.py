"""The experiment file: versions under test, segments, ramp stages, allowlist, namespaces.

Example (YAML)::

    default_version: v1            # users in no experiment get this
    segments:                      # optional: the seed's defaults
      new_user_days: 3
      high_frequency_min_generations: 10
      style_preference_min_uses: 5
      style_tags: [film, cinematic]
    experiments:
      - name: v2-canary
        seed: v2-canary-2026-11    # hashing seed (GrowthBook "seed")
        baseline: v1
        candidate: v2
        namespace: {id: render-models, start: 0.0, end: 1.0}
        allowlist: [alice@example.com]
        stages:
          - {name: internal, shares: {default: 0.0}, shadow: 0.05}
          - {name: 5%, shares: {default: 0.05}, shadow: {share: 0.05, segments: [new_user]}}
          - {name: 15%, shares: {default: 0.15, new_user: 0.05}}
        stage: 5%
        rolled_back: false

Shares are the candidate's share of a segment's users at a stage; they may not fall from
one stage to the next (a ramp only adds users to the candidate).

``shadow`` (default off): the share of the baseline's live jobs copied to the candidate at
background priority during that stage (gateway/shadow.py), a number or
``{share: ..., segments: [...]}`` to copy only those segments' jobs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.segments import SEGMENTS, SegmentRules

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:%-]{0,99}$"
Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


def _field_error(path: str, message: str) -> PydanticCustomError:
    """A cross-field error reported at ``path`` below the validated model (see ``_format``)."""
    return PydanticCustomError("field_error", "{message}", {"path": path, "message": message})


class ExperimentFileError(ValueError):
    """An experiment file that cannot be used; ``errors`` name the bad fields."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.errors = errors


class Namespace(BaseModel):
    """GrowthBook-style namespace: experiments with the same id and disjoint ranges never
    share a user."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NAME_PATTERN)
    start: Share = 0.0
    end: Share = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> Namespace:
        if self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be below end ({self.end})")
        return self


class Shadow(BaseModel):
    """Shadow traffic of a stage: the share of live baseline jobs copied to the candidate,
    optionally only those of some segments (None: every segment)."""

    model_config = ConfigDict(extra="forbid")

    share: Share = 0.0
    segments: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_share(cls, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, int | float | dict | Shadow):
            raise ValueError("a share from 0 to 1 (e.g. 0.05) or {share: ..., segments: [...]}")
        return {"share": data} if isinstance(data, int | float) else data

    @field_validator("segments")
    @classmethod
    def _known_segments(cls, segments: list[str] | None) -> list[str] | None:
        unknown = sorted(set(segments or ()) - set(SEGMENTS))
        if unknown:
            raise ValueError(
                f"unknown segment(s) {', '.join(unknown)} (known: {', '.join(SEGMENTS)})"
            )
        return segments

    def covers(self, segment: str | None) -> bool:
        """Whether jobs of ``segment`` are sampled at all (share above 0 and segment kept)."""
        return self.share > 0 and (self.segments is None or segment in self.segments)


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    shares: dict[str, Share] = Field(default_factory=lambda: {"default": 0.0})
    shadow: Shadow = Field(default_factory=Shadow)

    @field_validator("shares")
    @classmethod
    def _known_segments(cls, shares: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(shares) - {"default", *SEGMENTS})
        if unknown:
            raise ValueError(
                f"unknown segment(s) {', '.join(unknown)} (known: default, {', '.join(SEGMENTS)})"
            )
        if "default" not in shares:
            raise ValueError("a 'default' share is required")
        return shares

    def share(self, segment: str) -> float:
        return self.shares.get(segment, self.shares["default"])


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    seed: str | None = Field(default=None, min_length=1, max_length=200)
    baseline: str
    candidate: str
    namespace: Namespace | None = None
    allowlist: list[str] = Field(default_factory=list)
    stages: list[Stage] = Field(min_length=1)
    stage: str
    rolled_back: bool = False

    @property
    def hash_seed(self) -> str:
        return self.seed or self.name

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.baseline == self.candidate:
            raise _field_error(
                "candidate", f"must differ from the baseline (both are {self.baseline!r})"
            )
        names = [s.name for s in self.stages]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _field_error(f"stages.{index}.name", f"duplicate stage name {name!r}")
        if self.stage not in names:
            raise _field_error(
                "stage", f"{self.stage!r} is not one of the stages ({', '.join(names)})"
            )
        for segment in ("default", *SEGMENTS):
            previous = None
            for index, stage in enumerate(self.stages):
                share = stage.share(segment)
                if previous is not None and share < previous[1]:
                    inherited = "" if segment in stage.shares else " (its default share)"
                    raise _field_error(
                        f"stages.{index}.shares.{segment}",
                        f"the {segment} share falls from {previous[1]} at {previous[0]!r} to "
                        f"{share}{inherited} at {stage.name!r}; a ramp may only grow "
                        "(use rolled_back to send everyone to the baseline)",
                    )
                previous = (stage.name, share)
        return self

    @property
    def current_stage(self) -> Stage:
        return next(s for s in self.stages if s.name == self.stage)


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_version: str
    segments: SegmentRules = Field(default_factory=SegmentRules)
    experiments: list[Experiment] = Field(default_factory=list)

    @model_validator(mode="after")
    def _namespaces_disjoint(self) -> ExperimentConfig:
        names = [e.name for e in self.experiments]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _field_error(f"experiments.{index}.name", f"duplicate experiment {name!r}")
        if len(self.experiments) > 1:
            for index, experiment in enumerate(self.experiments):
                if not experiment.namespace:
                    raise _field_error(
                        f"experiments.{index}.namespace",
                        "required when there are several experiments (a namespace range "
                        "keeps their users apart)",
                    )
        spans_by_id: dict[str, list[tuple[float, float, int]]] = {}
        for index, experiment in enumerate(self.experiments):
            if experiment.namespace:
                ns = experiment.namespace
                spans_by_id.setdefault(ns.id, []).append((ns.start, ns.end, index))
        for key, spans in spans_by_id.items():
            spans.sort()
            for (_, end, first), (start, _, second) in itertools.pairwise(spans):
                if start < end:
                    raise _field_error(
                        f"experiments.{second}.namespace",
                        f"range of {names[second]} overlaps the range of {names[first]} "
                        f"in namespace {key!r}",
                    )
        return self

    def check_versions(self, known: list[str]) -> list[str]:
        errors = []
        if self.default_version not in known:
            errors.append(f"default_version: unknown version {self.default_version!r}")
        for i, experiment in enumerate(self.experiments):
            for field in ("baseline", "candidate"):
                version = getattr(experiment, field)
                if version not in known:
                    errors.append(f"experiments.{i}.{field}: unknown version {version!r}")
        return errors

    def experiment(self, name: str) -> Experiment:
        for experiment in self.experiments:
            if experiment.name == name:
                return experiment
        raise KeyError(name)


def _format(error: ValidationError) -> list[str]:
    out = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        if item["type"] == "field_error":
            loc.append(item["ctx"]["path"])
        where = ".".join(loc) or "file"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        out.append(f"{where}: {message}")
    return out


def parse_config(
    data: Any, known_versions: list[str], source: str = "experiments"
) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ExperimentFileError(source, ["the file must hold a mapping at the top level"])
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ExperimentFileError(source, _format(exc)) from None
    errors = config.check_versions(known_versions)
    if errors:
        raise ExperimentFileError(source, errors)
    return config


def load_config(path: Path, known_versions: list[str]) -> ExperimentConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ExperimentFileError(str(path), [f"not valid YAML: {exc}"]) from None
    except OSError as exc:
        raise ExperimentFileError(str(path), [f"cannot read: {exc.strerror}"]) from None
    return parse_config(data, known_versions, str(path))
