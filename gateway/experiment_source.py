"""The experiment configuration a gateway process serves, re-read when its file changes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from canary.settings import Settings
from gateway.experiments import ExperimentConfig, load_config


class ExperimentSource:
    """Holds the current config; checks the file's mtime at most once per ``check_every``.

    A file that becomes invalid is reported by ``load_error`` and the last good config stays
    in force, so a typo in an edit never takes the gateway down.
    """

    def __init__(self, path: Path | None, versions: list[str], *, check_every: float = 1.0) -> None:
        self.path = path
        self.versions = versions
        self.check_every = check_every
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime: float | None = None
        self._config = ExperimentConfig(default_version=versions[0])
        if path is not None:
            self._config = load_config(path, versions)  # a bad file at start-up is fatal
            self._mtime = path.stat().st_mtime

    @classmethod
    def from_settings(cls, settings: Settings) -> ExperimentSource:
        return cls(settings.experiment_file, settings.versions)

    @property
    def config(self) -> ExperimentConfig:
        if self.path is not None and time.monotonic() - self._checked >= self.check_every:
            self._maybe_reload()
        return self._config

    def _maybe_reload(self) -> None:
        assert self.path is not None
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self.path.stat().st_mtime
                if mtime == self._mtime:
                    return
                self._config = load_config(self.path, self.versions)
                self._mtime = mtime
                self.load_error = None
            except (OSError, ValueError) as exc:
                self.load_error = str(exc)
