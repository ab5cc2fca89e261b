"""Prometheus metrics of each version's lifecycle, for `GET /metrics`.

``lifecycle_metrics`` yields three families; the collector in gateway/http/metrics.py adds
them with ``yield from lifecycle_metrics(self.settings, self.engine, reading)``:

- ``canary_version_lifecycle{version, state}``: 1 for the version's current state, 0 for
  the others (active, retiring, retired, purged), as kube-state-metrics does for phases;
- ``canary_version_retired_timestamp_seconds{version}``: when routing to it stopped;
- ``canary_version_purge_timestamp_seconds{version}``: when its images and logs are (or
  were) deleted by the retention job.

Without a broker reading (the broker did not answer), a retired version with queued work
cannot be told from one without, so it is reported as retired, not retiring.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.engine import Engine

from canary.contracts import queue_for
from canary.settings import Settings
from gateway.http.broker_probe import BrokerReading
from storage import versions

STATES: tuple[str, ...] = get_args(versions.LifecycleState)


def busy_versions(settings: Settings, reading: BrokerReading | None) -> set[str]:
    """Versions with messages waiting or a worker consuming their queue."""
    if reading is None:
        return set()
    return {
        v for v in settings.versions
        if reading.depths.get(v)
        or any(queue_for(v) in queues for queues in reading.consumers.values())
    }  # fmt: skip


def lifecycle_metrics(
    settings: Settings, engine: Engine, reading: BrokerReading | None
) -> Iterator[Metric]:
    lifecycles = versions.lifecycles(
        engine, settings.versions, busy=busy_versions(settings, reading)
    )
    state = GaugeMetricFamily(
        "canary_version_lifecycle", "1 for each version's lifecycle state (active, retiring, "
        "retired, purged), 0 for the others", labels=["version", "state"],
    )  # fmt: skip
    retired = GaugeMetricFamily(
        "canary_version_retired_timestamp_seconds",
        "When a retired version stopped receiving jobs (Unix time)", labels=["version"],
    )  # fmt: skip
    purge = GaugeMetricFamily(
        "canary_version_purge_timestamp_seconds",
        "When a retired version's images and logs are deleted (Unix time; past once purged)",
        labels=["version"],
    )  # fmt: skip
    for version, life in lifecycles.items():
        for name in STATES:
            state.add_metric([version, name], int(life.state == name))
        if life.retired_since is not None:
            retired.add_metric([version], life.retired_since.timestamp())
        moment = life.purged_at or life.purge_after
        if moment is not None:
            purge.add_metric([version], moment.timestamp())
    yield from (state, retired, purge)
