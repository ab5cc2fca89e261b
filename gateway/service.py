"""The gateway: the one entry point (HTTP API, bulk CLI, golden replay) for new jobs.

Validates, assigns a version through the experiment (unless the caller may pin one and
does), then hands the job to the producer. Every access path goes through here, so every
path assigns the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from sqlalchemy.engine import Engine

from canary.contracts import PriorityClass
from canary.settings import Settings
from gateway.assignment import Assigner, Decision, StickyAssigner
from gateway.experiment_source import ExperimentSource
from gateway.experiments import ExperimentConfig
from gateway.idempotency import replay_conflicts
from gateway.job_requests import InvalidJob, JobRequest, validate_request
from gateway.render_limits import VersionLimits
from gateway.segments import UserAttributes
from gateway.shadow import ShadowControls, Shadower
from gateway.submit import PreparedJob, Producer, Submitted
from storage.models import Arm
from storage.versions import RetiredVersions


class Gateway:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        app: Celery,
        experiments: ExperimentSource | None = None,
    ) -> None:
        self.settings = settings
        self.producer = Producer(settings, engine, app)
        self.experiments = experiments or ExperimentSource.from_settings(settings, engine)
        self._config: ExperimentConfig | None = None
        self._sticky: StickyAssigner | None = None
        self.retired = RetiredVersions(engine)
        self.limits = VersionLimits(settings.resolved_model_dir)
        self.shadower = Shadower(
            engine, self.producer, ShadowControls(settings.broker_url), settings.shadow_max_queued
        )

    @property
    def sticky(self) -> StickyAssigner:
        """The sticky assigner for the current config, rebuilt when the config changes."""
        config = self.experiments.config
        if self._sticky is None or config is not self._config:
            self._config = config
            self._sticky = StickyAssigner(Assigner(config), self.producer.engine)
        return self._sticky

    def assign(self, request: JobRequest) -> Decision:
        """The one rule for every path in: a job that names no version is assigned one for
        its user (the experiment's arm, else the default version), so it needs a user."""
        if request.user_id is None:
            raise InvalidJob(
                ["user_id: required when model_version is not given (versions are assigned "
                 "per user)"]
            )  # fmt: skip
        return self.sticky.assign(request.user_id, _attributes(request))

    def prepare(self, data: Any, *, may_pin_version: bool = True) -> PreparedJob:
        """Validate one request, decide its version and apply that version's render
        limits and defaults; raises InvalidJob."""
        return self.prepare_valid(validate_request(data, self.settings), may_pin_version)

    def prepare_valid(self, request: JobRequest, may_pin_version: bool = True) -> PreparedJob:
        """:meth:`prepare` for a request that validate_request has already checked (bulk
        files validate each line as they parse it)."""
        retired = self.retired.get()
        if request.model_version is not None:
            if not may_pin_version:
                raise InvalidJob(["model_version: only operator keys may choose the version"])
            if request.model_version in retired:
                raise InvalidJob([f"model_version: {request.model_version!r} is retired"])
            decision = Decision(request.model_version)
        else:
            decision = self.assign(request)
            if decision.variant in retired:
                decision = self._instead_of_retired(decision, retired)
        filled = self.limits.apply(request, decision.variant, name_version=may_pin_version)
        return PreparedJob(
            filled,
            decision.variant,
            decision.experiment,
            decision.arm,
            decision.segment,
            seed_given=request.seed is not None,
        )

    def _instead_of_retired(self, decision: Decision, retired: frozenset[str]) -> Decision:
        """A retired arm's users go to the experiment's other version while it is live."""
        config = self.experiments.config
        if decision.experiment is not None:
            experiment = config.experiment(decision.experiment)
            if decision.variant == experiment.candidate:
                other, arm = experiment.baseline, Arm.BASELINE
            else:
                other, arm = experiment.candidate, Arm.CANDIDATE
            if other not in retired:
                return Decision(other, experiment.name, arm, decision.segment, "retired")
        raise InvalidJob([f"model_version: {decision.variant!r} is retired and has no successor"])

    def prepare_many(
        self, requests: Sequence[JobRequest], *, may_pin_version: bool = True
    ) -> list[PreparedJob | InvalidJob]:
        """:meth:`prepare_valid` for validated requests, with the sticky assignments of all their
        users read (and first exposures recorded) in a few queries (bulk submission)."""
        self._prefetch_assignments(requests)
        prepared: list[PreparedJob | InvalidJob] = []
        for request in requests:
            try:
                prepared.append(self.prepare_valid(request, may_pin_version))
            except InvalidJob as exc:
                prepared.append(exc)
        return self._refuse_conflicting_replays(prepared)

    def _prefetch_assignments(self, requests: Sequence[JobRequest]) -> None:
        """Read the sticky assignments of the users of the requests that name no version, and
        record their first exposures, in a few queries per chunk of users; each request's
        ``assign`` then decides from the cache exactly as it would have alone."""
        unpinned = [
            (r.user_id, _attributes(r))
            for r in requests
            if r.model_version is None and r.user_id is not None
        ]
        if unpinned:
            self.sticky.prefetch(unpinned)

    def _refuse_conflicting_replays(
        self, prepared: list[PreparedJob | InvalidJob]
    ) -> list[PreparedJob | InvalidJob]:
        """Replace each job whose idempotency key names a different earlier job by the
        error that says so."""
        valid = [item for item in prepared if isinstance(item, PreparedJob)]
        conflicts = iter(replay_conflicts(self.producer.engine, valid))
        return [
            item if isinstance(item, InvalidJob) else (next(conflicts) or item) for item in prepared
        ]

    def prepare_all(
        self, items: Sequence[Any], *, may_pin_version: bool = True
    ) -> list[PreparedJob]:
        """All-or-nothing: every item is checked; errors carry the item's index. The items'
        sticky assignments are read and recorded in a few queries for the whole batch, as
        :meth:`prepare_many` does."""
        checked: list[JobRequest | InvalidJob] = []
        for item in items:
            try:
                checked.append(validate_request(item, self.settings))
            except InvalidJob as exc:
                checked.append(exc)
        self._prefetch_assignments([r for r in checked if isinstance(r, JobRequest)])
        prepared: list[PreparedJob | InvalidJob] = []
        for request in checked:
            if isinstance(request, InvalidJob):
                prepared.append(request)
                continue
            try:
                prepared.append(self.prepare_valid(request, may_pin_version))
            except InvalidJob as exc:
                prepared.append(exc)
        errors = [
            f"jobs.{index}.{message}"
            for index, item in enumerate(self._refuse_conflicting_replays(prepared))
            if isinstance(item, InvalidJob)
            for message in item.errors
        ]
        if errors:
            raise InvalidJob(errors)
        return [item for item in prepared if isinstance(item, PreparedJob)]

    def submit(
        self,
        data: Any,
        *,
        source: str = "api",
        api_key_id: str | None = None,
        may_pin_version: bool = True,
        priority: PriorityClass = PriorityClass.INTERACTIVE,
    ) -> Submitted:
        """Submit one job: someone waits for it, so it is interactive unless told."""
        [job] = self._refuse_conflicting_replays(
            [self.prepare(data, may_pin_version=may_pin_version)]
        )
        if isinstance(job, InvalidJob):
            raise job
        return self.submit_many([job], source=source, api_key_id=api_key_id, priority=priority)[0]

    def submit_many(
        self,
        jobs: Sequence[PreparedJob],
        *,
        source: str = "api",
        batch_id: str | None = None,
        api_key_id: str | None = None,
        priority: PriorityClass = PriorityClass.BULK,
    ) -> list[Submitted]:
        submitted = self.producer.submit_many(
            jobs, source=source, batch_id=batch_id, api_key_id=api_key_id, priority=priority
        )
        # after the live jobs are recorded and sent: a sample is copied to the candidate
        self.shadower.copy(self.experiments.config, jobs, submitted, priority)
        return submitted


def _attributes(request: JobRequest) -> UserAttributes | None:
    if request.user_attributes is None:
        return None
    return UserAttributes(**request.user_attributes.model_dump())
