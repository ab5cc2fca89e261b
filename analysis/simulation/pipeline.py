"""Simulated traffic through the real pipeline: gateway, producer rows, job records, events.

- Assignment: every generation is a request to the real ``Gateway.prepare`` (validation,
  sticky assignment with segments from the database, exposure records). The arm the
  gateway returns at a user's first request decides how the user behaves from then on.
- Jobs: the producer's own rows (``gateway.submit.new_job_row``) recorded with
  ``insert_new_jobs``, batched per day. Nothing is published: no worker must render
  simulated jobs, and nothing reads the broker afterwards. ``enqueued_at`` is set as
  publishing would.
- Outcomes: what a worker records (claim + finish: status, attempts, times, timings,
  failure kind, VRAM), as one guarded bulk UPDATE per day instead of two per job.
- Events: client batches through ``EventIngestor.ingest`` (validation, ownership,
  dedupe), with client noise: local UTC offsets, re-sent batches and invalid events.

Time: a ``time_machine`` traveller is moved to each request's simulated instant, so the
gateway's clock (first exposure, segment windows, sign-up age) and the producer's
``created_at`` are the simulated ones; events are ingested with ``now`` at the end of
their simulated day. The gateway's caches run on the real monotonic clock, as always.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from celery import Celery
from sqlalchemy.engine import Engine

from analysis.simulation.generate import Events, Jobs, Simulation, Simulator
from analysis.simulation.model import (
    CANDIDATE,
    DAY,
    FAILURE_KINDS,
    FEEDBACK_REASONS,
    SEGMENT_INDEX,
    SimulationSpec,
    prompt_text,
)
from canary.contracts import image_key
from canary.settings import Settings
from gateway.assignment import Assigner
from gateway.events import EventIngestor
from gateway.experiment_source import ExperimentSource
from gateway.segments import SEGMENTS
from gateway.service import Gateway
from gateway.submit import PreparedJob, new_job_row
from storage import jobs as job_records
from storage.models import EventType, Job, JobStatus

SOURCE = "simulator"
EXPERIMENT = "sim-canary"
STAGE = "sim"
ENQUEUE_US = 3_000  # from the job record to the broker
ROWS_PER_INSERT = 500
EVENTS_PER_BATCH = 1000
EVENT_TYPES = tuple(EventType)  # model.VIEW ... model.PAID
Progress = Callable[[int], None]


class SimulationMismatch(RuntimeError):
    """The pipeline decided differently from what the simulator's model of it expects."""


def experiment_config(
    spec: SimulationSpec, baseline: str, candidate: str, name: str = EXPERIMENT
) -> dict[str, Any]:
    """An experiment file with one stage at the spec's shares."""
    return {
        "default_version": baseline,
        "segments": spec.rules.model_dump(),
        "experiments": [
            {
                "name": name,
                "seed": f"{name}-seed",
                "baseline": baseline,
                "candidate": candidate,
                "stages": [{"name": STAGE, "shares": dict(spec.shares)}],
                "stage": STAGE,
            }
        ],
    }


def write_experiment_file(
    path: Path, spec: SimulationSpec, baseline: str, candidate: str, name: str = EXPERIMENT
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Written by the traffic simulator (analysis.simulation).\n"
    path.write_text(text + yaml.safe_dump(experiment_config(spec, baseline, candidate, name)))
    return path


@dataclass
class IngestTotals:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0

    def add(self, other: IngestTotals) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected


@dataclass
class PipelineRun:
    """A simulation as the pipeline recorded it (arms and segments from the gateway)."""

    simulation: Simulation
    experiment: str
    jobs: int = 0
    events: IngestTotals = field(default_factory=IngestTotals)

    @property
    def first(self) -> date:
        return self.simulation.start

    @property
    def last(self) -> date:
        return self.simulation.start + timedelta(days=self.simulation.spec.days - 1)


class _Clock:
    """Simulated wall-clock time for the code under test (time_machine)."""

    def __init__(self, origin: datetime) -> None:
        self.origin = origin
        self._traveller: Any = None

    @contextmanager
    def running(self) -> Iterator[None]:
        import time_machine  # a test/simulation dependency only

        with time_machine.travel(self.origin, tick=False) as traveller:
            self._traveller = traveller
            try:
                yield
            finally:
                self._traveller = None

    def at(self, t: int) -> datetime:
        when = self.when(t)
        self._traveller.move_to(when)
        return when

    def when(self, t: int) -> datetime:
        return self.origin + timedelta(microseconds=int(t))


class PipelineDriver:
    """Sends one simulation through the real pipeline of ``settings``/``engine`` (once)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        experiment_file: Path,
        simulator: Simulator,
        *,
        run_id: str,
        noise: bool = True,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.simulator = simulator
        self.spec = simulator.spec
        self.run_id = run_id
        self.noise = noise
        self.progress = progress or (lambda _: None)
        app = Celery("canary-simulator", set_as_current=False)  # nothing is published
        source = ExperimentSource(experiment_file, settings.versions, engine=engine)
        config = source.config
        if len(config.experiments) != 1:
            raise ValueError(f"{experiment_file}: the simulator needs exactly one experiment")
        self.experiment = config.experiments[0]
        self.gateway = Gateway(settings, engine, app, source)
        before = ExperimentSource(None, [config.default_version, *settings.versions])
        self.pre_gateway = Gateway(settings, engine, app, before)  # no experiment yet
        self.assigner = Assigner(config)
        self.ingestor = EventIngestor(settings, engine)
        origin = datetime.combine(simulator.start, time(), UTC)
        self.clock = _Clock(origin - timedelta(days=self.spec.pre_days))
        users = self.spec.users
        self.first_requests: dict[int, PreparedJob] = {}  # user -> their first request
        self.segments = np.full(users, -1)  # as the gateway decided
        self.lost = np.zeros(users, dtype=bool)  # by the broken client
        self.would = np.zeros(users, dtype=np.int64)  # the arm the hash gives each user
        self.lost_known = False
        self.pending: list[Events] = []  # events not yet sent
        self.job_ids: dict[int, str] = {}  # simulation's job index -> job id
        self.event_counter = 0
        self.previous_batch: list[dict[str, Any]] = []
        self.noise_rng = np.random.default_rng([simulator.seed, 7])
        self.totals = IngestTotals()
        self.recorded = 0

    # ------------------------------------------------------------ the run
    def run(self) -> PipelineRun:
        with self.clock.running():
            simulation = self.simulator.run(assign=self._assign, on_day=self._send_day)
            self._ingest_until(self.spec.horizon)
        segment = np.where(self.segments >= 0, self.segments, simulation.segment)
        simulation = replace(simulation, segment=segment)
        return PipelineRun(simulation, self.experiment.name, self.recorded, self.totals)

    # ------------------------------------------------------------ requests
    def user_id(self, user: int) -> str:
        return f"{self.run_id}-user-{user:05d}"

    def _request(self, user: int, t: int, prompt: int) -> dict[str, Any]:
        signed_up = self.clock.when(self.simulator.population.signed_up[user])
        return {
            "prompt": prompt_text(prompt, self.spec.rules),
            "user_id": self.user_id(user),
            "seed": int(t // 1000) % 2**31,
            "steps": 25,
            "width": 512,
            "height": 512,
            "idempotency_key": f"{self.run_id}-{user}-{t}",
            "user_attributes": {"signed_up_at": signed_up.isoformat()},
        }

    def _assign(self, arriving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First requests of today's new users, in order: the gateway decides the arm."""
        pop, expected = self.simulator.population, self.simulator.segments
        if self.spec.breaks_split and not self.lost_known:
            self._find_lost(expected)
        arms = np.zeros(len(arriving), dtype=np.int64)
        for i, user in enumerate(arriving.tolist()):
            if self.lost[user]:
                arms[i] = self.would[user]
                continue
            t = int(pop.arrival[user])
            self.clock.at(t)
            prepared = self.gateway.prepare(self._request(user, t, int(pop.first_prompt[user])))
            if prepared.experiment != self.experiment.name or prepared.segment is None:
                raise SimulationMismatch(f"user {user} was not enrolled: {prepared}")
            self.segments[user] = SEGMENT_INDEX[prepared.segment]
            if self.segments[user] != expected[user]:
                raise SimulationMismatch(
                    f"user {user}: gateway segment {prepared.segment}, expected "
                    f"{SEGMENTS[expected[user]]}"
                )
            arms[i] = CANDIDATE if prepared.arm == "candidate" else 0
            self.first_requests[user] = prepared
        return arms, self.lost[arriving]

    def _find_lost(self, expected: np.ndarray) -> None:
        """A buggy client knows its flag (the same pure hash as the gateway) and loses the
        user's traffic before any of it reaches the gateway."""
        users = np.arange(self.spec.users)
        would = np.array(
            [
                CANDIDATE if self.assigner.decide(self.user_id(u), SEGMENTS[expected[u]]).arm
                == "candidate" else 0
                for u in users.tolist()
            ]
        )  # fmt: skip
        self.would = would
        self.lost = self.simulator.lost(users, would)
        self.lost_known = True

    def _prepare(self, user: int, t: int, prompt: int, day: int) -> PreparedJob:
        if (
            day >= 0
            and user in self.first_requests
            and t == self.simulator.population.arrival[user]
        ):
            return self.first_requests.pop(user)
        gateway = self.gateway if day >= 0 else self.pre_gateway
        return gateway.prepare(self._request(user, t, prompt))

    # ------------------------------------------------------------ one day
    def _send_day(self, day: int, jobs: Jobs, events: Events, offset: int) -> None:
        rows: list[tuple[int, Job]] = []
        for index in range(len(jobs)):
            user = int(jobs.user[index])
            if day >= 0 and self.lost[user]:
                continue
            t = int(jobs.t[index])
            self.clock.at(t)
            prepared = self._prepare(user, t, int(jobs.prompt[index]), day)
            self._check_arm(prepared, int(jobs.arm[index]), user)
            # the producer's row (created_at: the simulated now), as a Job to annotate
            row = Job(**new_job_row(prepared, SOURCE, None, None))
            row.enqueued_at = self.clock.when(t + ENQUEUE_US)
            rows.append((index, row))
            self.job_ids[offset + index] = row.id
        self._record_jobs(jobs, rows)
        self.pending.append(events)
        self._ingest_until((self.spec.pre_days + day + 1) * DAY)
        self.progress(len(rows))

    def _check_arm(self, prepared: PreparedJob, arm: int, user: int) -> None:
        if arm < 0:
            if prepared.experiment is not None:
                raise SimulationMismatch(f"user {user}: in an experiment before it started")
            return
        if prepared.arm != ("candidate" if arm == CANDIDATE else "baseline"):
            raise SimulationMismatch(f"user {user}: the gateway moved them to {prepared.arm}")

    def _record_jobs(self, jobs: Jobs, rows: list[tuple[int, Job]]) -> None:
        """The producer's insert, then what the worker records when each job ends."""
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start : start + ROWS_PER_INSERT]
            inserted = job_records.insert_new_jobs(self.engine, [row for _, row in chunk])
            outcomes = [
                self._outcome(jobs, index, row) for index, row in chunk if row.id in inserted
            ]
            job_records.claim_and_finish_many(self.engine, outcomes)
            self.recorded += len(inserted)

    def _outcome(self, jobs: Jobs, index: int, row: Job) -> dict[str, Any]:
        created = int(jobs.t[index])
        started = created + int(jobs.queue_us[index])
        finished = started + int(jobs.run_us[index]) + int(jobs.upload_us[index])
        failed = bool(jobs.failed[index])
        kind = FAILURE_KINDS[int(jobs.failure[index])] if failed else None
        return {
            "id": row.id,
            "status": JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
            "started_at": self.clock.when(started),
            "finished_at": self.clock.when(finished),
            "worker_host": f"sim-{row.model_version}",
            "worker_version": row.model_version,
            "image_key": None if failed else image_key(row.id),
            "failure_kind": kind,
            "failure_message": f"simulated {kind}" if failed else None,
            "queue_wait_ms": None if failed else int(jobs.queue_us[index]) / 1000,
            "inference_ms": None if failed else int(jobs.run_us[index]) / 1000,
            "upload_ms": None if failed else int(jobs.upload_us[index]) / 1000,
            "end_to_end_ms": None if failed else (finished - created) / 1000,
            "peak_vram_bytes": None if failed else int(jobs.vram_bytes[index]),
        }

    # ------------------------------------------------------------ events
    def _ingest_until(self, end: int) -> None:
        """Send every pending event that happened before ``end``, as of ``end``."""
        if not self.pending:
            return
        pending = Events.concat(self.pending)
        due = pending.t < min(end, self.spec.horizon)
        later = pending.take(~due & (pending.t < self.spec.horizon))
        self.pending = [later] if len(later) else []
        start = self.spec.pre_days * DAY
        batch = pending.take(due & ~(self.lost[pending.user] & (pending.t >= start)))
        batch = batch.take(np.argsort(batch.t, kind="stable"))
        items = [self._event(batch, i) for i in range(len(batch))]
        now = self.clock.when(end)
        for start in range(0, len(items), EVENTS_PER_BATCH):
            self._ingest(items[start : start + EVENTS_PER_BATCH], now)

    def _event(self, events: Events, i: int) -> dict[str, Any]:
        user, kind = int(events.user[i]), int(events.kind[i])
        offset = timezone(timedelta(minutes=int(self.simulator.population.tz_minutes[user])))
        item: dict[str, Any] = {
            "event_id": f"{self.run_id}-event-{self.event_counter}",
            "type": EVENT_TYPES[kind].value,
            "user_id": self.user_id(user),
            "occurred_at": self.clock.when(int(events.t[i])).astimezone(offset).isoformat(),
        }
        self.event_counter += 1
        if events.job[i] >= 0:
            item["job_id"] = self.job_ids[int(events.job[i])]
        if events.dwell_ms[i] >= 0:
            item["dwell_ms"] = int(events.dwell_ms[i])
        if events.reason[i] >= 0:
            item["reason"] = FEEDBACK_REASONS[int(events.reason[i])]
        return item

    def _ingest(self, items: list[dict[str, Any]], now: datetime) -> None:
        sent, duplicates, invalid = self._with_noise(items, now) if self.noise else (items, 0, 0)
        outcome = self.ingestor.ingest(sent, now=now)
        expected = IngestTotals(len(items), duplicates, invalid)
        found = IngestTotals(outcome.accepted, outcome.duplicates, len(outcome.rejected))
        if found != expected:
            reasons = [r.errors for r in outcome.rejected][:5]
            raise SimulationMismatch(f"ingest gave {found}, expected {expected}: {reasons}")
        self.totals.add(found)
        self.previous_batch = items

    def _with_noise(
        self, items: list[dict[str, Any]], now: datetime
    ) -> tuple[list[dict[str, Any]], int, int]:
        """A client re-sending events and a few broken ones (all must be left out)."""
        rng = self.noise_rng
        again = [items[i] for i in rng.choice(len(items), size=len(items) // 30, replace=False)]
        if self.previous_batch:  # a batch retried after a timeout
            last = self.previous_batch
            again += [last[i] for i in rng.choice(len(last), size=min(5, len(last)), replace=False)]
        invalid = [self._invalid_login(now)]
        views = [item for item in items if "dwell_ms" in item]
        if views:
            view = views[int(rng.integers(len(views)))]
            other = self.user_id(int(rng.integers(self.spec.users)))
            invalid += [
                {**view, "event_id": f"{view['event_id']}-nodwell", "dwell_ms": None},
                {**view, "event_id": f"{view['event_id']}-unknown", "job_id": str(uuid.uuid4())},
            ]
            if other != view["user_id"]:
                invalid.append({**view, "event_id": f"{view['event_id']}-other", "user_id": other})
        sent = items + again + invalid
        order = rng.permutation(len(sent))
        return [sent[i] for i in order], len(again), len(invalid)

    def _invalid_login(self, now: datetime) -> dict[str, Any]:
        self.event_counter += 1
        too_old = now - timedelta(days=self.settings.event_max_age_days + 1)
        return {
            "event_id": f"{self.run_id}-stale-{self.event_counter}",
            "type": EventType.LOGIN.value,
            "user_id": self.user_id(0),
            "occurred_at": too_old.isoformat(),
        }
