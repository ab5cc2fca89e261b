"""Golden replay: every case of the golden set, through the baseline and the candidate.

Cases go through the gateway like live traffic (same validation, same producer, same
queues) with the version pinned, ``source="golden"`` (live A/B metrics skip that source)
and the run id as batch id. Each (run, case, version) has a fixed idempotency key, so its
job id is fixed: starting the same run twice, a retried task or a resumed run finds the
job that exists instead of adding one. Only the holder of the run's lease submits.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from analysis.golden.cases import GoldenCase, GoldenSet, parse_golden_set
from canary.contracts import PriorityClass
from canary.settings import Settings
from gateway.experiments import ExperimentConfig
from gateway.service import Gateway
from gateway.submit import job_id_for
from storage import golden
from storage.models import GoldenResult, GoldenRun, GoldenRunStatus

GOLDEN_SOURCE = "golden"
CHUNK = 50

Progress = Callable[[int, int], None]


class GoldenRunRefused(RuntimeError):
    """A run that cannot start or resume (no versions to compare, a retired version...)."""


@dataclass(frozen=True)
class ReplayOutcome:
    run_id: str
    created: bool  # this call created the run
    submitted: bool  # this call submitted (or finished submitting) its cases
    new_jobs: int  # jobs this call added
    status: str


def versions_under_test(settings: Settings, config: ExperimentConfig) -> tuple[str, str]:
    """(baseline, candidate): the golden experiment's, else the first experiment's."""
    experiments = config.experiments
    if settings.golden_experiment is not None:
        matching = [e for e in experiments if e.name == settings.golden_experiment]
        if not matching:
            raise GoldenRunRefused(
                f"golden_experiment {settings.golden_experiment!r} is not in the experiment file"
            )
        experiments = matching
    if experiments:
        return experiments[0].baseline, experiments[0].candidate
    if len(settings.versions) < 2:
        raise GoldenRunRefused("a golden run compares two versions; only one is configured")
    return settings.versions[0], settings.versions[1]


def nightly_run_id(now: datetime, timezone: str) -> str:
    """One run per calendar night in the schedule's zone, whoever triggers it."""
    return f"nightly-{now.astimezone(ZoneInfo(timezone)).date().isoformat()}"


def manual_run_id(now: datetime) -> str:
    return f"manual-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def idempotency_key(run_id: str, case_id: str, version: str) -> str:
    return f"golden:{run_id}:{case_id}:{version}"


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class GoldenReplay:
    def __init__(self, settings: Settings, gateway: Gateway, owner: str | None = None) -> None:
        self.settings = settings
        self.gateway = gateway
        self.engine = gateway.producer.engine
        self.owner = owner or default_owner()

    def start(
        self,
        run_id: str,
        golden_set: GoldenSet,
        set_text: str,
        *,
        trigger: str,
        baseline: str,
        candidate: str,
        progress: Progress | None = None,
    ) -> ReplayOutcome:
        """Create the run (unless it exists) and submit whatever of it is not submitted."""
        if baseline == candidate:
            raise GoldenRunRefused(f"baseline and candidate are both {baseline!r}")
        retired = self.gateway.retired.get() & {baseline, candidate}
        if retired:
            raise GoldenRunRefused(f"retired version(s): {', '.join(sorted(retired))}")
        run = GoldenRun(
            id=run_id,
            trigger=trigger,
            set_name=golden_set.name,
            set_sha256=golden_set.sha256,
            set_text=set_text,
            case_count=len(golden_set.cases),
            baseline=baseline,
            candidate=candidate,
        )
        created = golden.create_run(self.engine, run)
        outcome = self.resume(run_id, progress=progress)
        return ReplayOutcome(run_id, created, outcome.submitted, outcome.new_jobs, outcome.status)

    def resume(self, run_id: str, *, progress: Progress | None = None) -> ReplayOutcome:
        """Submit the cases of a run that were not submitted (a crash, a lost lease)."""
        run = golden.get_run(self.engine, run_id)
        if run is None:
            raise GoldenRunRefused(f"no golden run {run_id!r}")
        if run.status != GoldenRunStatus.SUBMITTING:
            return ReplayOutcome(run_id, False, False, 0, run.status)
        if not golden.acquire_lease(self.engine, run_id, self.owner, self.settings.golden_lease_s):
            return ReplayOutcome(run_id, False, False, 0, run.status)
        golden_set = parse_golden_set(run.set_text, self.settings, f"golden run {run_id}")
        new_jobs = self._submit(run, golden_set.cases, progress)
        finished = golden.finish_submission(self.engine, run_id, self.owner)
        status = GoldenRunStatus.RUNNING if finished else GoldenRunStatus.SUBMITTING
        return ReplayOutcome(run_id, False, finished, new_jobs, status)

    def _submit(
        self, run: GoldenRun, cases: tuple[GoldenCase, ...], progress: Progress | None
    ) -> int:
        versions = (run.baseline, run.candidate)
        pairs = [(case, version) for case in cases for version in versions]
        new_jobs = 0
        for start in range(0, len(pairs), CHUNK * len(versions)):
            chunk = pairs[start : start + CHUNK * len(versions)]
            prepared = [
                self.gateway.prepare(
                    case.request(version, idempotency_key(run.id, case.id, version))
                )
                for case, version in chunk
            ]
            golden.add_results(
                self.engine,
                [
                    GoldenResult(
                        run_id=run.id,
                        case_id=case.id,
                        version=version,
                        job_id=job_id_for(job.request),
                        category=case.category,
                    )
                    for (case, version), job in zip(chunk, prepared, strict=True)
                ],
            )
            submitted = self.gateway.submit_many(
                prepared, source=GOLDEN_SOURCE, batch_id=run.id, priority=PriorityClass.BACKGROUND
            )
            new_jobs += sum(item.created for item in submitted)
            if progress is not None:
                progress(start + len(chunk), len(pairs))
            # keep the lease while working; losing it means another process took over
            if not golden.acquire_lease(
                self.engine, run.id, self.owner, self.settings.golden_lease_s
            ):
                break
        return new_jobs
