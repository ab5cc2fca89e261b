"""The golden set file: curated cases replayed every night through both versions.

Format (YAML)::

    name: canary-golden
    format: 1
    defaults:                        # optional; every case may override each field
      negative_prompt: "lowres, watermark"
      steps: 30
      guidance: 7.5
      width: 512
      height: 512
      tolerance: {drift: 0.02, element_score: 0.2}
      levels:                        # failure-level wording shared by all cases
        S: severe distortion, broken anatomy or NSFW content
    cases:
      - id: pose-001
        category: pose_control       # pose_control | lighting_narrative | material_detail
                                     # | style_transfer
        prompt: a dancer mid-leap, arms raised above the head
        seed: 1001
        expected: [dancer, both arms raised, feet off the ground]
        levels:
          A: the leap or the raised arms are missing
          B: the pose is there but hands or feet are smeared

``tolerance.drift`` is the largest pixel RMSE (0-1 scale) allowed between a case's image and
the same case's image the previous night for the same version; ``tolerance.element_score``
is the image-text score above which an expected element counts as present (when a scorer
is configured). The file's SHA-256 is recorded with every run, so a report always says
which version of the set it measured.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from canary.settings import Settings
from gateway.job_requests import InvalidJob, validate_request

CASE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
FORMAT = 1


class Category(StrEnum):
    POSE_CONTROL = "pose_control"
    LIGHTING_NARRATIVE = "lighting_narrative"
    MATERIAL_DETAIL = "material_detail"
    STYLE_TRANSFER = "style_transfer"


class Level(StrEnum):
    """A graded image: PASS, or a failure level from worst (S) to mildest (B)."""

    PASS = "pass"
    B = "B"
    A = "A"
    S = "S"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Level.PASS: 0, Level.B: 1, Level.A: 2, Level.S: 3}
FAILURE_LEVELS = (Level.S, Level.A, Level.B)


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drift: float = Field(default=0.02, ge=0.0, le=1.0, allow_inf_nan=False)
    element_score: float = Field(default=0.2, ge=-1.0, le=1.0, allow_inf_nan=False)


class LevelDefinitions(BaseModel):
    """What S, A and B mean for a case (file defaults fill the ones a case leaves out)."""

    model_config = ConfigDict(extra="forbid")

    S: str | None = Field(default=None, min_length=1)
    A: str | None = Field(default=None, min_length=1)
    B: str | None = Field(default=None, min_length=1)


class CaseDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    negative_prompt: str = ""
    steps: int = Field(default=30, ge=1)
    guidance: float = Field(default=7.5, ge=0.0, le=50.0, allow_inf_nan=False)
    width: int = 512
    height: int = 512
    tolerance: Tolerance = Field(default_factory=Tolerance)
    levels: LevelDefinitions = Field(default_factory=LevelDefinitions)


class CaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=CASE_ID_PATTERN)
    category: Category
    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    seed: int = Field(ge=0, le=2**32 - 1)
    steps: int | None = Field(default=None, ge=1)
    guidance: float | None = Field(default=None, ge=0.0, le=50.0, allow_inf_nan=False)
    width: int | None = None
    height: int | None = None
    expected: list[str] = Field(min_length=1)
    tolerance: Tolerance | None = None
    levels: LevelDefinitions = Field(default_factory=LevelDefinitions)

    @model_validator(mode="after")
    def _elements_named(self) -> CaseIn:
        if any(not element.strip() for element in self.expected):
            raise ValueError("expected: elements must not be empty")
        if len(set(self.expected)) != len(self.expected):
            raise ValueError("expected: elements must be unique")
        return self


class GoldenSetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    format: int
    defaults: CaseDefaults = Field(default_factory=CaseDefaults)
    cases: list[CaseIn] = Field(min_length=1)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != FORMAT:
            raise ValueError(f"this version reads format {FORMAT}, not {value}")
        return value


@dataclass(frozen=True)
class GoldenCase:
    """A case with the file's defaults applied: everything a replay and a grader need."""

    id: str
    category: Category
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    expected: tuple[str, ...]
    tolerance: Tolerance
    levels: dict[str, str]

    def request(self, version: str, idempotency_key: str) -> dict[str, Any]:
        """The job request for one version: identical inputs and seed for every version."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "width": self.width,
            "height": self.height,
            "model_version": version,
            "idempotency_key": idempotency_key,
        }


@dataclass(frozen=True)
class GoldenSet:
    name: str
    sha256: str
    cases: tuple[GoldenCase, ...]

    def case(self, case_id: str) -> GoldenCase:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)

    @property
    def categories(self) -> tuple[Category, ...]:
        return tuple(c for c in Category if any(case.category == c for case in self.cases))


class GoldenSetError(ValueError):
    """A golden set file that cannot be used; ``errors`` name the case and field."""

    def __init__(self, source: str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.errors = errors


def _where(loc: tuple[Any, ...], raw: Any) -> str:
    """`cases.12.seed` -> `case 'pose-013' (cases.12).seed`, so an editor finds the case."""
    parts = [str(part) for part in loc]
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        cases = raw.get("cases") if isinstance(raw, dict) else None
        case = cases[loc[1]] if isinstance(cases, list) and loc[1] < len(cases) else None
        if isinstance(case, dict) and isinstance(case.get("id"), str):
            rest = ".".join(parts[2:])
            return f"case {case['id']!r} (cases.{loc[1]})" + (f".{rest}" if rest else "")
    return ".".join(parts) or "file"


def _resolve(case: CaseIn, defaults: CaseDefaults) -> GoldenCase:
    levels = {**defaults.levels.model_dump(exclude_none=True)}
    levels.update(case.levels.model_dump(exclude_none=True))
    return GoldenCase(
        id=case.id,
        category=case.category,
        prompt=case.prompt,
        negative_prompt=(
            case.negative_prompt if case.negative_prompt is not None else defaults.negative_prompt
        ),
        seed=case.seed,
        steps=case.steps or defaults.steps,
        guidance=case.guidance if case.guidance is not None else defaults.guidance,
        width=case.width or defaults.width,
        height=case.height or defaults.height,
        expected=tuple(case.expected),
        tolerance=case.tolerance or defaults.tolerance,
        levels=levels,
    )


def parse_golden_set(
    text: str, settings: Settings, source: str = "golden set", *, check_limits: bool = True
) -> GoldenSet:
    """Validate a golden set against its schema and (``check_limits``) the job limits.

    A run's stored copy is read with ``check_limits=False``: a limit lowered after the run
    must not make its review page or report unreadable.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GoldenSetError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise GoldenSetError(source, ["the file must be a mapping with name, format and cases"])
    try:
        parsed = GoldenSetIn.model_validate(raw)
    except ValidationError as exc:
        errors: list[str] = [f"{_where(item['loc'], raw)}: {item['msg']}" for item in exc.errors()]
        raise GoldenSetError(source, errors) from None

    errors = []
    seen: dict[str, int] = {}
    cases: list[GoldenCase] = []
    for index, case_in in enumerate(parsed.cases):
        where = f"case {case_in.id!r} (cases.{index})"
        if case_in.id in seen:
            errors.append(f"{where}.id: duplicate of cases.{seen[case_in.id]}")
            continue
        seen[case_in.id] = index
        case = _resolve(case_in, parsed.defaults)
        missing = [level for level in ("S", "A", "B") if level not in case.levels]
        if missing:
            errors.append(f"{where}.levels: no definition for {', '.join(missing)}")
        if check_limits:
            try:
                validate_request(case.request(settings.versions[0], f"check:{case.id}"), settings)
            except InvalidJob as exc:
                errors.extend(f"{where}.{message}" for message in exc.errors)
        cases.append(case)
    if errors:
        raise GoldenSetError(source, errors)
    sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return GoldenSet(name=parsed.name, sha256=sha256, cases=tuple(cases))


def load_golden_set(path: Path, settings: Settings) -> GoldenSet:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GoldenSetError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise GoldenSetError(str(path), [f"not UTF-8 text: {exc}"]) from None
    return parse_golden_set(text, settings, str(path))
