"""Shadow traffic: a deterministic sample of live baseline jobs, copied to the candidate.

After the gateway has recorded live jobs, :meth:`Shadower.copy` picks those served by an
experiment's baseline whose job id hashes into the current stage's ``shadow`` share (and
segments), and records for each a shadow job: the same prompt, negative prompt, seed,
size, steps and guidance, ``source="shadow"``, ``shadow_of`` the live job, on the
candidate at background priority, with id ``uuid5(SHADOW_NAMESPACE, live job id)`` so a
replayed submission never makes a second copy. It is sent like every job (claimed, then
published by tasks/publish.py; one the broker refuses is sent by the outbox).

A shadow job is nobody's: no user, API key or batch, no arm (so no A/B metric counts it),
its image goes under ``shadow/`` and client keys get 404 for it.

The backlog is bounded: while the candidate has ``shadow_max_queued`` shadow jobs QUEUED,
new samples are skipped and counted. The bound is checked per submission, so concurrent
gateways may overshoot it by at most one submission's samples each.

Pause state and the sampled/skipped counters live in Redis (the broker every gateway
already talks to): a pause is an operator's switch every gateway must see within a second,
read on the submit path, and the counters need atomic increments from many processes.
A Redis that loses its data resumes paused experiments; the backlog bound still holds.
Copying never fails a live submission: an error is logged and the samples are lost.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import redis
from sqlalchemy.engine import Engine

from canary.contracts import PriorityClass
from gateway.experiments import Experiment, ExperimentConfig
from gateway.hashing import NUM_BUCKETS, bucket
from gateway.submit import PreparedJob, Producer, Submitted
from storage import jobs
from storage.models import Arm, Job, utcnow
from storage.shadow import SHADOW_SOURCE, queued_shadow_jobs

log = logging.getLogger(__name__)

SHADOW_NAMESPACE = uuid.UUID("3d0f6a52-9b1e-4c57-8f0b-5d2a7e91c4b3")
PAUSED_KEY = "canary:shadow:paused"  # Redis set of paused experiments
COUNTS_KEY_PREFIX = "canary:shadow:counts:"  # Redis hash per experiment
SAMPLED, SKIPPED_FULL = "sampled", "skipped_full"
REDIS_TIMEOUT_S = 0.5
PAUSE_CHECK_S = 1.0  # how stale a gateway's view of the pause switch may be


def shadow_job_id(live_job_id: str) -> str:
    """The id of a live job's shadow copy: the same for every replay of the job."""
    return str(uuid.uuid5(SHADOW_NAMESPACE, live_job_id))


def is_sampled(experiment: Experiment, job_id: str, segment: str | None) -> bool:
    """Whether the current stage copies this live job: its id's bucket under the
    experiment's seed (GrowthBook hash v2, so a re-run samples the same jobs) is below the
    stage's shadow share, and its segment is one the stage copies."""
    shadow = experiment.current_stage.shadow
    if experiment.rolled_back or not shadow.covers(segment):
        return False
    threshold = round(shadow.share * NUM_BUCKETS)
    return bucket(f"{experiment.hash_seed}:shadow", job_id) < threshold


class ShadowControls:
    """The pause switch and the counters, kept in Redis (see the module docstring)."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(
            redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._lock = threading.Lock()
        self._paused: frozenset[str] = frozenset()
        self._read_at = -float("inf")

    def paused(self) -> frozenset[str]:
        """The paused experiments, read at most once per PAUSE_CHECK_S; raises RedisError."""
        with self._lock:
            if time.monotonic() - self._read_at >= PAUSE_CHECK_S:
                members = self.client.smembers(PAUSED_KEY)
                self._paused = frozenset(_text(m) for m in members)
                self._read_at = time.monotonic()
            return self._paused

    def set_paused(self, experiment: str, paused: bool) -> None:
        if paused:
            self.client.sadd(PAUSED_KEY, experiment)
        else:
            self.client.srem(PAUSED_KEY, experiment)
        with self._lock:
            self._read_at = -float("inf")

    def is_paused(self, experiment: str) -> bool:
        return bool(self.client.sismember(PAUSED_KEY, experiment))

    def count(self, experiment: str, **amounts: int) -> None:
        wanted = {name: n for name, n in amounts.items() if n}
        if not wanted:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for name, n in wanted.items():
                pipe.hincrby(COUNTS_KEY_PREFIX + experiment, name, n)
            pipe.execute()

    def counts(self, experiment: str) -> dict[str, int]:
        """Samples and skips so far (0 when none)."""
        raw = self.client.hgetall(COUNTS_KEY_PREFIX + experiment)
        found = {_text(k): int(v) for k, v in raw.items()}
        return {name: found.get(name, 0) for name in (SAMPLED, SKIPPED_FULL)}

    def all_counts(self) -> dict[str, dict[str, int]]:
        """Counters of every experiment that has any."""
        prefix = COUNTS_KEY_PREFIX
        names = [_text(k)[len(prefix) :] for k in self.client.scan_iter(match=prefix + "*")]
        return {name: self.counts(name) for name in sorted(names)}

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class Copied:
    """What one call of :meth:`Shadower.copy` did."""

    sampled: int = 0
    recorded: int = 0  # new shadow jobs (a replay's existing copy is not recorded again)
    skipped_full: int = 0


class Shadower:
    def __init__(
        self, engine: Engine, producer: Producer, controls: ShadowControls, max_queued: int
    ) -> None:
        self.engine = engine
        self.producer = producer
        self.controls = controls
        self.max_queued = max_queued

    def copy(
        self,
        config: ExperimentConfig,
        prepared: Sequence[PreparedJob],
        submitted: Sequence[Submitted],
        priority: PriorityClass,
    ) -> Copied:
        """Copy the sampled live jobs of one submission; never raises (see module doc)."""
        try:
            return self._copy(config, prepared, submitted, priority)
        except Exception:  # shadow is best effort: the live jobs are already accepted
            log.exception("shadow copies of %d jobs were not made", len(submitted))
            return Copied()

    def _copy(
        self,
        config: ExperimentConfig,
        prepared: Sequence[PreparedJob],
        submitted: Sequence[Submitted],
        priority: PriorityClass,
    ) -> Copied:
        if priority == PriorityClass.BACKGROUND:  # golden replays, shadow jobs themselves
            return Copied()
        experiments = {e.name: e for e in config.experiments if e.current_stage.shadow.share}
        if not experiments:
            return Copied()
        samples: dict[str, list[str]] = {}  # experiment -> live job ids
        for job, sent in zip(prepared, submitted, strict=True):
            experiment = experiments.get(job.experiment or "")
            if (
                experiment is not None
                and job.arm == Arm.BASELINE
                and sent.model_version == experiment.baseline
                and is_sampled(experiment, sent.job_id, job.segment)
            ):
                samples.setdefault(experiment.name, []).append(sent.job_id)
        if not samples:
            return Copied()
        paused = self.controls.paused()
        total = Copied()
        for name, live_ids in samples.items():
            if name not in paused:
                copied = self._copy_experiment(experiments[name], live_ids)
                total = Copied(
                    total.sampled + copied.sampled,
                    total.recorded + copied.recorded,
                    total.skipped_full + copied.skipped_full,
                )
        return total

    def _copy_experiment(self, experiment: Experiment, live_ids: list[str]) -> Copied:
        room = max(0, self.max_queued - queued_shadow_jobs(self.engine, experiment.candidate))
        taken, skipped = live_ids[:room], len(live_ids) - min(room, len(live_ids))
        # the stored live jobs: a replay's inputs are the first submission's
        rows = [
            _shadow_row(live, experiment)
            for live in jobs.get_jobs(self.engine, taken)
            if live.shadow_of is None and live.model_version == experiment.baseline
        ]
        inserted = jobs.insert_new_jobs(self.engine, rows)
        # a replayed submission whose copy exists samples nothing new
        sampled = len(inserted) + skipped
        self.controls.count(experiment.name, sampled=sampled, skipped_full=skipped)
        new = [SimpleNamespace(**row) for row in rows if row["id"] in inserted]
        self.producer.publish(new)  # claimed and sent; one refused is the outbox's
        if skipped:
            log.info(
                "%s: %d shadow samples skipped, %s has %d or more shadow jobs queued",
                experiment.name, skipped, experiment.candidate, self.max_queued,
            )  # fmt: skip
        return Copied(sampled, len(inserted), skipped)


def _shadow_row(live: Job, experiment: Experiment) -> dict[str, object]:
    """The shadow job of a live one, as an unsent ``jobs`` row."""
    row = Job(
        id=shadow_job_id(live.id),
        source=SHADOW_SOURCE,
        shadow_of=live.id,
        priority_class=PriorityClass.BACKGROUND.value,
        experiment=experiment.name,
        segment=live.segment,
        model_version=experiment.candidate,
        prompt=live.prompt,
        negative_prompt=live.negative_prompt,
        seed=live.seed,
        steps=live.steps,
        guidance=live.guidance,
        width=live.width,
        height=live.height,
        created_at=utcnow(),
    )
    return row.model_dump()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
