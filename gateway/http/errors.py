"""The shape of every error answer of the HTTP API (see the handlers in app.py)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    detail: str
    errors: list[str] = Field(default_factory=list)
