"""Fair share: bulk jobs go to the broker gradually, a few per tenant at a time.

A batch is recorded at once but *held* in the database; the broker holds at most
``per_tenant`` (times the tenant's weight) queued bulk jobs of each tenant and version. As
workers take jobs, :meth:`Releaser.release` tops every tenant up again, interleaving the
tenants' jobs round-robin (weighted), so a tenant's 10,000-job batch and another's 100-job
batch progress side by side instead of one behind the other.

Who releases: the gateway right after recording a bulk submission (waiting for a release
in progress, so its jobs are counted), each worker's recorder after finishing a job (at
most every ``every_s``; skipped while another process is releasing), and beat every few
seconds (the case where no worker is finishing anything). One release per version runs at
a time (a Redis lock), so two releasers never both top up the same shortfall.

Crash safety is the submission's: a job is claimed (``enqueued_at`` stamped) before it is
sent and given back if the broker refuses it; a releaser that dies between the claim and
the send leaves a claimed, unsent job, which the lost-message reconciler re-sends
(scheduler/lost_messages.py); a worker's claim guard renders a job once whatever arrives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import LockError, RedisError

from storage import fair_share
from storage import jobs as job_records
from storage.models import Job
from tasks.publish import send_claimed

if TYPE_CHECKING:
    import redis
    from celery import Celery
    from sqlalchemy.engine import Engine

    from canary.settings import Settings

log = logging.getLogger(__name__)

LOCK_KEY = "canary:fair-share:release:{version}"
LOCK_TIMEOUT_S = 60.0  # a releaser that died lets go of the lock after this


@dataclass(frozen=True)
class Released:
    """One release of one version: jobs sent per tenant, and how many the broker refused."""

    version: str
    sent: dict[str, int] = field(default_factory=dict)  # per tenant
    sent_ids: frozenset[str] = frozenset()
    refused: int = 0
    skipped: bool = False  # another process was releasing this version

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def tenant_cap(per_tenant: int, weight: float | None) -> int:
    """Queued jobs a tenant may have in the broker: ``per_tenant`` x its weight, at least 1."""
    return max(1, round(per_tenant * (1.0 if weight is None else weight)))


def round_robin(batches: dict[str, list[Job]], caps: dict[str, int]) -> list[Job]:
    """The tenants' jobs interleaved, weighted by their caps: the i-th job of a tenant with
    cap c goes at virtual time (i + 1) / c, so a tenant with twice the cap sends two jobs
    for each of the other's; ties keep the tenants' order."""
    order = {tenant: n for n, tenant in enumerate(batches)}
    keyed = [
        ((i + 1) / caps[tenant], order[tenant], job)
        for tenant, jobs in batches.items()
        for i, job in enumerate(jobs)
    ]
    return [job for _, _, job in sorted(keyed, key=lambda item: (item[0], item[1]))]


def plan(
    waiting: list[fair_share.TenantWaiting], weights: dict[str, float | None], per_tenant: int
) -> dict[str, int]:
    """Jobs to release per tenant: its shortfall below its cap, at most what it holds."""
    shortfall = {}
    for row in waiting:
        cap = tenant_cap(per_tenant, weights.get(row.tenant))
        n = min(row.held, cap - row.queued)
        if n > 0:
            shortfall[row.tenant] = n
    return shortfall


class Releaser:
    """Releases held bulk jobs for one database and broker (one per process)."""

    def __init__(
        self,
        engine: Engine,
        app: Celery,
        redis_client: redis.Redis,
        per_tenant: int,
        every_s: float = 0.5,
    ) -> None:
        self.engine = engine
        self.app = app
        self.redis = redis_client
        self.per_tenant = per_tenant
        self.every_s = every_s
        self._last: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.per_tenant > 0

    def release(self, version: str, *, wait_s: float = 0.0) -> Released:
        """Top every tenant of ``version`` up to its cap. ``wait_s``: how long to wait for
        a release in progress elsewhere (0: skip it instead)."""
        lock = self.redis.lock(
            LOCK_KEY.format(version=version),
            timeout=LOCK_TIMEOUT_S,
            blocking=wait_s > 0,
            blocking_timeout=wait_s or None,
        )
        if not lock.acquire():
            return Released(version, skipped=True)
        try:
            return self._release_locked(version)
        finally:
            try:
                lock.release()
            except LockError:  # held past its timeout: another may have it now
                log.warning("the fair-share release of %s outlived its lock", version)

    def maybe_release(self, version: str) -> Released | None:
        """A worker's release after finishing a job: at most every ``every_s`` per version,
        skipped while another process releases; never raises (the worker goes on)."""
        now = time.monotonic()
        if not self.enabled or now - self._last.get(version, -self.every_s) < self.every_s:
            return None
        self._last[version] = now
        try:
            return self.release(version)
        except (RedisError, OSError) as exc:
            log.warning("fair-share release of %s failed, beat will retry: %s", version, exc)
        except Exception:
            log.exception("fair-share release of %s failed, beat will retry", version)
        return None

    def _release_locked(self, version: str) -> Released:
        waiting = fair_share.waiting_by_tenant(self.engine, version)
        weights: dict[str, float | None] = dict(
            fair_share.share_weights(self.engine, [w.tenant for w in waiting])
        )
        shortfall = plan(waiting, weights, self.per_tenant)
        if not shortfall:
            return Released(version)
        batches = {
            tenant: fair_share.held_jobs(self.engine, version, tenant, n)
            for tenant, n in shortfall.items()
        }
        caps = {t: tenant_cap(self.per_tenant, weights.get(t)) for t in batches}
        ordered = round_robin(batches, caps)
        claimed = job_records.claim_sends(self.engine, [job.id for job in ordered])
        unsent = send_claimed(self.engine, self.app, [j for j in ordered if j.id in claimed])
        sent_ids = frozenset(claimed - unsent)
        sent: dict[str, int] = {}
        for tenant, jobs in batches.items():
            n = sum(1 for job in jobs if job.id in sent_ids)
            if n:
                sent[tenant] = n
        return Released(version, sent, sent_ids, refused=len(unsent))

    def reroute_held(self, version: str, to: str) -> int:
        """Hand ``version``'s held bulk jobs to ``to`` (`canary retire --reroute-to`, a
        rollback's re-route), under ``version``'s release lock so that no release of it is
        half done. Returns how many were handed over; ``to``'s next release sends them."""
        with self.redis.lock(
            LOCK_KEY.format(version=version), timeout=LOCK_TIMEOUT_S, blocking_timeout=30
        ):
            return fair_share.reroute_held(self.engine, version, to)

    def release_all(self, *, wait_s: float = 0.0) -> list[Released]:
        """Release for every version that holds bulk jobs (beat)."""
        return [
            self.release(version, wait_s=wait_s)
            for version in fair_share.versions_with_held(self.engine)
        ]


def releaser_for(settings: Settings, engine: Engine, app: Celery) -> Releaser:
    """The process's releaser, on the broker's Redis (where its lock lives)."""
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=10)
    return Releaser(
        engine,
        app,
        client,
        per_tenant=settings.fair_share_queued,
        every_s=settings.fair_share_release_every_s,
    )
