"""Text every database can store, for every text field and path parameter of the API.

PostgreSQL refuses NUL characters in text, and UTF-8 has no encoding for a lone UTF-16
surrogate (JSON's ``"\\ud800"``), so either would fail deep in a query as a 500. They are
refused where text comes in: ``StorableStr`` for body fields, and one app-wide dependency
(gateway/http/app.py) for every path and query parameter.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator

# Letters, numbers, punctuation and symbols; not marks alone (variation selectors are
# marks), separators, controls or format characters (zero-width space, joiners, BOM).
VISIBLE_CATEGORIES = ("L", "N", "P", "S")


def unstorable_reason(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (lone surrogate characters)"
    return None


def check_storable(value: str) -> str:
    """A pydantic validator: ``value`` unchanged, or a ValueError saying what is wrong."""
    reason = unstorable_reason(value)
    if reason is not None:
        raise ValueError(reason)
    return value


def has_visible_character(value: str) -> bool:
    return any(unicodedata.category(char)[0] in VISIBLE_CATEGORIES for char in value)


def printable(value: str) -> str:
    """``value`` safe to echo in a UTF-8 answer: lone surrogates shown as ``\\udXXX``."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


StorableStr = Annotated[str, AfterValidator(check_storable)]
