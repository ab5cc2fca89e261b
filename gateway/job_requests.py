"""Validation of job requests: every path in (CLI, HTTP, golden replay) goes through here."""

from __future__ import annotations

from typing import Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from canary.settings import Settings
from gateway.text import StorableStr, has_visible_character

MAX_SEED = 2**63 - 1


class UserAttributesIn(BaseModel):
    """Optional facts about the user for segmentation; unknown ones come from the database."""

    model_config = ConfigDict(extra="forbid")

    signed_up_at: AwareDatetime | None = None
    generations_7d: int | None = Field(default=None, ge=0)
    style_tag_uses: int | None = Field(default=None, ge=0)


class JobRequest(BaseModel):
    """What a caller asks for. Without ``model_version`` the experiment assigns one; size
    and steps left out take the serving version's defaults, a seed left out is drawn."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: StorableStr = Field(min_length=1)
    negative_prompt: StorableStr = ""
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    steps: int | None = Field(default=None, ge=1)
    guidance: float = Field(default=7.5, ge=0.0, le=50.0, allow_inf_nan=False)
    width: int | None = None
    height: int | None = None
    model_version: StorableStr | None = Field(default=None, min_length=1)
    user_id: StorableStr | None = Field(default=None, min_length=1, max_length=200)
    idempotency_key: StorableStr | None = Field(default=None, min_length=1, max_length=200)
    user_attributes: UserAttributesIn | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not has_visible_character(value):
            raise ValueError("prompt must have a visible character")
        return value


class InvalidJob(ValueError):
    """A request that cannot be accepted; ``errors`` are human-readable, one per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def format_pydantic(error: ValidationError) -> list[str]:
    """A validation error as "field: message" lines, one per problem."""
    messages = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "request"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        messages.append(f"{where}: {message}")
    return messages


def validate_request(data: Any, settings: Settings) -> JobRequest:
    """Parse and check a request against the schema and the global limits (the serving
    version's own limits and defaults are applied once it is known: gateway/render_limits)."""
    if isinstance(data, JobRequest):
        request = data
    else:
        if not isinstance(data, dict):
            raise InvalidJob([f"request must be an object, not {type(data).__name__}"])
        try:
            request = JobRequest.model_validate(data)
        except ValidationError as exc:
            raise InvalidJob(format_pydantic(exc)) from None
    errors = []
    if len(request.prompt) > settings.max_prompt_chars:
        errors.append(f"prompt: longer than {settings.max_prompt_chars} characters")
    if len(request.negative_prompt) > settings.max_prompt_chars:
        errors.append(f"negative_prompt: longer than {settings.max_prompt_chars} characters")
    if request.steps is not None and request.steps > settings.max_steps:
        errors.append(f"steps: at most {settings.max_steps}")
    for name in ("width", "height"):
        side = getattr(request, name)
        if side is None:
            continue
        if not settings.min_side <= side <= settings.max_side:
            errors.append(f"{name}: must be between {settings.min_side} and {settings.max_side}")
        elif side % 8:
            errors.append(f"{name}: must be a multiple of 8, got {side}")
    if request.model_version is not None and request.model_version not in settings.versions:
        errors.append(
            f"model_version: unknown version {request.model_version!r} "
            f"(configured: {', '.join(settings.versions)})"
        )
    if errors:
        raise InvalidJob(errors)
    return request
