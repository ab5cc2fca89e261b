"""Prometheus metrics of shadow traffic (gateway/shadow.py), for `GET /metrics`.

The collector in gateway/http/metrics.py adds them with ``yield from shadow_metrics(...)``:

- ``canary_shadow_sampled_total{experiment}``: live jobs sampled for a copy (new copies
  plus samples skipped), and ``canary_shadow_skipped_total{experiment, reason="full"}``:
  samples skipped because the candidate's shadow backlog was full. Both are counted in the
  broker by every gateway (they have no row); they start from 0 if it loses its data and
  are left out when it does not answer in time.
- ``canary_shadow_sent_total{experiment, version}``: copies handed to the broker;
  ``canary_shadow_finished_total{experiment, version, outcome}``: copies rendered
  (``completed``) or failed (``failed``) on the candidate. From the job table: they only
  grow and agree across API processes.
- ``canary_shadow_paused{experiment}``: 1 while `canary shadow pause` holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from gateway.experiments import ExperimentConfig
from gateway.shadow import SAMPLED, SKIPPED_FULL, ShadowControls
from storage.shadow import totals

log = logging.getLogger(__name__)


def shadow_metrics(
    config: ExperimentConfig, engine: Engine, broker_url: str, *, broker_up: bool
) -> Iterator[Metric]:
    sent = CounterMetricFamily(
        "canary_shadow_sent", "Shadow copies of live jobs sent to the candidate",
        labels=["experiment", "version"],
    )  # fmt: skip
    finished = CounterMetricFamily(
        "canary_shadow_finished", "Shadow copies finished on the candidate, by outcome "
        "(completed, failed)", labels=["experiment", "version", "outcome"],
    )  # fmt: skip
    for row in totals(engine):
        sent.add_metric([row.experiment, row.version], row.sent)
        finished.add_metric([row.experiment, row.version, "completed"], row.succeeded)
        finished.add_metric([row.experiment, row.version, "failed"], row.failed)
    yield from (sent, finished)
    if broker_up:
        yield from _broker_counts(config, broker_url)


def _broker_counts(config: ExperimentConfig, broker_url: str) -> Iterator[Metric]:
    controls = ShadowControls(broker_url)
    try:
        names = [e.name for e in config.experiments]
        counts = {name: controls.counts(name) for name in names}
        paused = {name: controls.is_paused(name) for name in names}
    except (RedisError, OSError) as exc:
        log.warning("shadow counters cannot be read from the broker: %s", exc)
        return
    finally:
        controls.close()
    sampled = CounterMetricFamily(
        "canary_shadow_sampled", "Live baseline jobs sampled for a shadow copy (kept in the "
        "broker)", labels=["experiment"],
    )  # fmt: skip
    skipped = CounterMetricFamily(
        "canary_shadow_skipped", "Shadow samples not copied: the candidate's shadow backlog "
        "was full (kept in the broker)", labels=["experiment", "reason"],
    )  # fmt: skip
    pause = GaugeMetricFamily(
        "canary_shadow_paused", "1 while an operator paused the experiment's shadow traffic",
        labels=["experiment"],
    )  # fmt: skip
    for name in names:
        sampled.add_metric([name], counts[name][SAMPLED])
        skipped.add_metric([name, "full"], counts[name][SKIPPED_FULL])
        pause.add_metric([name], int(paused[name]))
    yield from (sampled, skipped, pause)
