"""Fault injection for tests: markers in a prompt make the real code path fail on purpose.

Only active when ``CANARY_FAULT_INJECTION=true`` (never in production). Markers, e.g.
``"a cat [[fault:nan]]"``:

- ``nan``: the pipeline's latents turn to NaN mid-denoising (real NaN detection follows)
- ``oom``: torch.cuda.OutOfMemoryError from inside the pipeline on every try
- ``oom-once``: the same, on the first try only (the OOM retry path succeeds)
- ``nsfw``: the safety-checker hook flags the image
- ``slow=S``: each denoising step sleeps S seconds (a long render to kill mid-way)
- ``hang=S``: the first step sleeps S seconds and ignores the soft time limit (a stuck
  kernel, which only the hard time limit stops)
- ``upload-slow=S``: the upload sleeps S seconds first (to kill mid-upload)
- ``upload-error=N``: the first N upload attempts raise ConnectionError
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MARKER = re.compile(r"\[\[fault:([a-z-]+)(?:=([0-9.]+))?\]\]")


@dataclass(frozen=True)
class Faults:
    nan: bool = False
    oom: bool = False
    oom_once: bool = False
    nsfw: bool = False
    slow_s: float = 0.0
    hang_s: float = 0.0
    upload_slow_s: float = 0.0
    upload_errors: int = 0

    @classmethod
    def parse(cls, prompt: str, enabled: bool) -> Faults:
        if not enabled:
            return NO_FAULTS
        found: dict[str, Any] = {}
        for name, value in MARKER.findall(prompt):
            if name in ("nan", "oom", "nsfw"):
                found[name] = True
            elif name == "oom-once":
                found["oom_once"] = True
            elif name == "slow":
                found["slow_s"] = float(value or 1)
            elif name == "hang":
                found["hang_s"] = float(value or 60)
            elif name == "upload-slow":
                found["upload_slow_s"] = float(value or 1)
            elif name == "upload-error":
                found["upload_errors"] = int(float(value or 1))
        return cls(**found) if found else NO_FAULTS


StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


def batch_step_callback(faults: list[Faults], attempt: int) -> StepCallback | None:
    """The step callback of one pipeline call rendering ``faults[i]``'s job as image ``i``:
    ``nan`` spoils only that image's latents; the other faults hit the whole call."""
    slow_s = max(f.slow_s for f in faults)
    hang_s = max(f.hang_s for f in faults)
    oom_now = any(f.oom or (f.oom_once and attempt == 0) for f in faults)
    nan_rows = [i for i, f in enumerate(faults) if f.nan]
    if not (nan_rows or oom_now or slow_s or hang_s):
        return None

    def inject(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if slow_s:
            time.sleep(slow_s)
        if hang_s and step == 0:
            _hang(hang_s)
        if oom_now:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        if nan_rows:
            latents = kwargs["latents"].clone()
            latents[nan_rows] = float("nan")
            kwargs["latents"] = latents
        return kwargs

    return inject


NO_FAULTS = Faults()


def _hang(seconds: float) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            continue
