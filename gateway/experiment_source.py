"""The experiment configuration a gateway process serves: the file plus the live stages.

The file (re-read when it changes) defines experiments, stages and shares; the database
(``experiment_states``, written by `canary rollout` and the automatic mode) says which
stage each experiment is at and whether it is rolled back. Both are checked at most
once per ``check_every`` seconds, so every gateway follows a ramp or a rollback within
a few seconds, without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from canary.settings import Settings
from gateway.experiments import ExperimentConfig, load_config
from storage.rollout_state import states

log = logging.getLogger(__name__)
Live = tuple[tuple[str, str, bool], ...]  # (experiment, stage, rolled back)


def apply_live_states(config: ExperimentConfig, live: Live) -> ExperimentConfig:
    """The config with each experiment's stage and rollback taken from the database.

    A stored stage the file no longer has is ignored (the file's stage applies) and logged.
    """
    by_name = {name: (stage, rolled_back) for name, stage, rolled_back in live}
    experiments = []
    for experiment in config.experiments:
        if experiment.name in by_name:
            stage, rolled_back = by_name[experiment.name]
            if stage in {s.name for s in experiment.stages}:
                experiment = experiment.model_copy(
                    update={"stage": stage, "rolled_back": rolled_back}
                )
            else:
                log.error("%s: stored stage %r is not in the file", experiment.name, stage)
        experiments.append(experiment)
    return config.model_copy(update={"experiments": experiments})


class ExperimentSource:
    """Holds the current config; checks the file's mtime and the live states periodically.

    A file that becomes invalid is reported by ``load_error`` and the last good config stays
    in force, so a typo in an edit never takes the gateway down; an unreachable database
    keeps the last known stages.
    """

    def __init__(
        self,
        path: Path | None,
        versions: list[str],
        *,
        engine: Engine | None = None,
        check_every: float = 1.0,
    ) -> None:
        self.path = path
        self.versions = versions
        self.engine = engine
        self.check_every = check_every
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._mtime: float | None = None
        self._file_config = ExperimentConfig(default_version=versions[0])
        self._live: Live = ()
        self._config = self._file_config
        if path is not None:
            self._file_config = load_config(path, versions)  # a bad file at start-up is fatal
            self._mtime = path.stat().st_mtime
            self._config = self._file_config

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine | None = None) -> ExperimentSource:
        return cls(settings.resolved_experiment_file, settings.versions, engine=engine)

    @property
    def config(self) -> ExperimentConfig:
        if time.monotonic() - self._checked >= self.check_every:
            self._refresh()
        return self._config

    def _refresh(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            file_changed = self._maybe_reload_file()
            live = self._read_live()
            if file_changed or live != self._live:
                self._live = live
                self._config = apply_live_states(self._file_config, live)

    def _maybe_reload_file(self) -> bool:
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return False
            self._file_config = load_config(self.path, self.versions)
            self._mtime = mtime
            self.load_error = None
            return True
        except (OSError, ValueError) as exc:
            self.load_error = str(exc)
            return False

    def _read_live(self) -> Live:
        if self.engine is None or not self._file_config.experiments:
            return self._live
        try:
            found = states(self.engine)
        except SQLAlchemyError as exc:  # a missing table (old schema) or a DB outage
            log.warning("live experiment stages unavailable: %s", exc)
            return self._live
        return tuple(sorted((name, s.stage, s.rolled_back) for name, s in found.items()))
