"""User segments (the seed's defaults, thresholds configurable) and the attributes behind them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

NEW_USER = "new_user"
HIGH_FREQUENCY = "high_frequency"
STYLE_PREFERENCE = "style_preference"
EVERYONE_ELSE = "everyone_else"
# In precedence order: a user who is both new and prolific counts as new.
SEGMENTS = (NEW_USER, HIGH_FREQUENCY, STYLE_PREFERENCE, EVERYONE_ELSE)


class SegmentRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    new_user_days: float = Field(default=3, ge=0)
    high_frequency_min_generations: int = Field(default=10, ge=1)
    high_frequency_window_days: int = Field(default=7, ge=1)
    style_preference_min_uses: int = Field(default=5, ge=1)
    style_tags: list[str] = Field(
        default_factory=lambda: ["film", "cinematic", "analog", "35mm", "noir", "vintage"],
        min_length=1,
    )


@dataclass(frozen=True, slots=True)
class UserAttributes:
    """What segmentation needs to know about a user; None means unknown."""

    signed_up_at: datetime | None = None
    generations_7d: int | None = None
    style_tag_uses: int | None = None

    def missing(self) -> bool:
        return (
            self.signed_up_at is None
            or self.generations_7d is None
            or (self.style_tag_uses is None)
        )

    def merged(self, fallback: UserAttributes) -> UserAttributes:
        """These attributes, with unknown ones taken from ``fallback``."""
        return UserAttributes(
            self.signed_up_at if self.signed_up_at is not None else fallback.signed_up_at,
            self.generations_7d if self.generations_7d is not None else fallback.generations_7d,
            self.style_tag_uses if self.style_tag_uses is not None else fallback.style_tag_uses,
        )


def segment_of(attributes: UserAttributes, rules: SegmentRules, now: datetime) -> str:
    signed_up = attributes.signed_up_at
    if signed_up is not None:
        if (signed_up.tzinfo is None) != (now.tzinfo is None):
            # naive times are UTC (the storage convention; SQLite gives them back naive)
            if signed_up.tzinfo is None:
                signed_up = signed_up.replace(tzinfo=UTC)
            else:
                now = now.replace(tzinfo=UTC)
        if now - signed_up <= timedelta(days=rules.new_user_days):
            return NEW_USER
    generations = attributes.generations_7d
    if generations is not None and generations >= rules.high_frequency_min_generations:
        return HIGH_FREQUENCY
    uses = attributes.style_tag_uses
    if uses is not None and uses >= rules.style_preference_min_uses:
        return STYLE_PREFERENCE
    return EVERYONE_ELSE
