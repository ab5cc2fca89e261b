"""Each version's declared render limits, applied to a request once its version is known.

A version's ``canary.yaml`` (tasks/version_config.py) gives the defaults for size and
steps a request leaves out and the most it accepts; a request beyond that is refused at
submission rather than accepted only to time out minutes later on the worker. The file
is re-read when it changes. A gateway without the model folders (an API host in a
multi-host stack) applies the global limits and defaults.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from gateway.job_requests import InvalidJob, JobRequest
from tasks.version_config import (
    CONFIG_FILE,
    RenderLimits,
    VersionConfigError,
    load_version_config,
)

log = logging.getLogger(__name__)
LIMITED_FIELDS = ("width", "height", "steps")


class VersionLimits:
    """Render limits per version, from ``model_dir/<version>/canary.yaml``."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._cache: dict[str, tuple[float | None, RenderLimits]] = {}

    def of(self, version: str) -> RenderLimits:
        folder = self.model_dir / version
        try:
            mtime: float | None = (folder / CONFIG_FILE).stat().st_mtime
        except OSError:
            mtime = None
        cached = self._cache.get(version)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            limits = load_version_config(folder).limits
        except VersionConfigError as exc:
            # the version's workers refuse to load it too (model_load); say so once
            log.error("%s; applying the global render limits to %s", exc, version)
            limits = RenderLimits()
        self._cache[version] = (mtime, limits)
        return limits

    def apply(self, request: JobRequest, version: str, *, name_version: bool) -> JobRequest:
        """``request`` with the version's defaults and a seed filled in; raises InvalidJob
        naming each limit it exceeds (and the version, where the caller may know it)."""
        limits = self.of(version)
        filled = {
            name: getattr(request, name)
            if getattr(request, name) is not None
            else getattr(limits, f"default_{name}")
            for name in LIMITED_FIELDS
        }
        where = f"model version {version}" if name_version else "the version serving this user"
        errors = []
        for name in LIMITED_FIELDS:
            most = getattr(limits, f"max_{name}")
            if most is not None and filled[name] > most:
                errors.append(f"{name}: at most {most} on {where}, got {filled[name]}")
        if errors:
            raise InvalidJob(errors)
        if request.seed is None:
            filled["seed"] = secrets.randbelow(2**31)
        return request.model_copy(update=filled)
