"""Schedule expressions in settings: a 5-field crontab or ``every N`` seconds.

Here (L0) rather than in scheduler/ so that settings can validate them without importing a
higher layer.
"""

from __future__ import annotations

import re

from celery.schedules import crontab, schedule

_EVERY = re.compile(r"^every\s+(\d+(?:\.\d+)?)\s*s?$")


def parse_schedule(expression: str) -> crontab | schedule:
    """A 5-field crontab (minute hour day-of-month month day-of-week) or 'every N' seconds."""
    text = expression.strip()
    interval = _EVERY.match(text)
    if interval:
        seconds = float(interval.group(1))
        if seconds <= 0:
            raise ValueError(f"{expression!r}: the interval must be positive")
        return schedule(run_every=seconds)
    try:
        return crontab.from_string(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{expression!r} is neither a crontab ('30 2 * * *') nor 'every N': {exc}"
        ) from None
