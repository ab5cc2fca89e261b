"""`GET /metrics`: Prometheus metrics, collected from the broker and the database per scrape.

Flower exports task events but not queue depth; this endpoint adds what an operator
alerts on (monitoring/alerts.yaml, monitoring/grafana-dashboard.json): queue depth per
version, finished jobs by version and outcome, bulk jobs waiting per tenant (held for
fair share or queued: gateway/http/fair_share_metrics.py), failure kinds, render and
end-to-end latency histograms, online workers per version and revision, each experiment's
live stage and latest gate verdict. Counts come from the job table (rows are never deleted), so they
only grow, survive restarts and agree across several API processes: they are counters.
Lost messages re-sent by the reconciler (scheduler/lost_messages.py) are counted in the
broker, which every reconciler shares; that count restarts if the broker loses its data.

Conventions: ``canary_`` prefix, base units in names (``_seconds``, ``_ratio``,
``_messages``), counters end in ``_total``, and labels take values from small closed sets
(versions, statuses, kinds, experiments, segments), never job or user ids.

The broker is read with a deadline (gateway/http/broker_probe.py): when it does not answer,
``canary_broker_up`` is 0, the broker-derived gauges are left out and everything else is
still exported, so a scrape answers in about a second whatever the broker does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from canary.contracts import queue_for
from canary.settings import Settings
from gateway.auth import Principal
from gateway.experiment_source import ExperimentSource
from gateway.http.auth import require_role
from gateway.http.broker_probe import BrokerProbe, BrokerReading, broker_reader
from gateway.http.dependencies import MetricsRegistry
from gateway.http.fair_share_metrics import fair_share_metrics
from gateway.http.lifecycle_metrics import lifecycle_metrics
from gateway.http.shadow_metrics import shadow_metrics
from gateway.key_limits import refusal_counts
from storage import overview
from storage.models import TERMINAL_STATUSES, ApiKeyRole

log = logging.getLogger(__name__)
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 4, 6, 8.5, 12, 20, 30, 60, 120, 300)
# A scrape answers within Prometheus's default 10 s timeout and the 2 s operators set;
# the broker gets this long (a ping, then each recorded worker's reply), the database rest.
BROKER_DEADLINE_S = 1.0
BROKER_TIMEOUT_S = 0.5
VERDICTS = ("advance", "hold", "rollback")
Scraper = Annotated[Principal, Depends(require_role(ApiKeyRole.OPERATOR))]


class CanaryCollector(Collector):
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        app: Celery,
        experiments: ExperimentSource,
        broker: BrokerProbe | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.app = app
        self.experiments = experiments
        self.broker = broker or BrokerProbe(
            broker_reader(settings, app, self._recorded_nodes, BROKER_TIMEOUT_S),
            BROKER_DEADLINE_S,
        )

    def _recorded_nodes(self) -> list[str]:
        return [r.node for r in overview.worker_records(self.engine)]

    def collect(self) -> Iterator[Metric]:
        reading = self.broker.read()
        up = GaugeMetricFamily(
            "canary_broker_up", "1 if the broker answered this scrape in time, else 0 (queue "
            "and worker gauges are then left out)", value=int(reading is not None),
        )  # fmt: skip
        yield up
        if reading is not None:
            yield from self._refusals()
            yield from self._queues(reading)
            yield from self._workers(reading)
            yield from self._storage_breakers(reading)
        yield from self._jobs()
        yield from fair_share_metrics(self.engine)
        yield from self._latency()
        yield from self._experiments()
        yield from lifecycle_metrics(self.settings, self.engine, reading)
        yield from shadow_metrics(
            self.experiments.config,
            self.engine,
            self.settings.broker_url,
            broker_up=reading is not None,
        )

    def _queues(self, reading: BrokerReading) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "canary_queue_messages",
            "Messages waiting on a version's queues (all classes)",
            labels=["version"],
        )
        by_class = GaugeMetricFamily(
            "canary_queue_messages_by_class",
            "Messages waiting on a version's queue of one priority class (interactive, bulk, "
            "background: what an autoscaler reads)",
            labels=["version", "class"],
        )
        for version in self.settings.versions:
            depth.add_metric([version], reading.depths[version])
            for priority, waiting in reading.by_class.get(version, {}).items():
                by_class.add_metric([version, priority], waiting)
        yield depth
        yield by_class
        resent = CounterMetricFamily(
            "canary_jobs_resent", "QUEUED jobs sent again because the broker had lost their "
            "message (kept in the broker: starts again from 0 if it loses its data)",
            labels=["version"],
        )  # fmt: skip
        for version in self.settings.versions:
            resent.add_metric([version], reading.resent.get(version, 0))
        yield resent

    def _refusals(self) -> Iterator[Metric]:
        """Requests refused by a limit of their API key (gateway/key_limits.py), counted in
        the broker by every API process; left out when it cannot be read in time."""
        try:
            counts = refusal_counts(self.settings.broker_url, BROKER_TIMEOUT_S)
        except (RedisError, OSError) as exc:
            log.warning("refused requests cannot be read from the broker: %s", exc)
            return
        refused = CounterMetricFamily(
            "canary_requests_refused", "Requests answered 429 by a limit of their API key: "
            "rate (requests per second) or queued (unfinished jobs); kept in the broker",
            labels=["reason"],
        )  # fmt: skip
        for reason, n in counts.items():
            refused.add_metric([reason], n)
        yield refused

    def _jobs(self) -> Iterator[Metric]:
        unfinished = GaugeMetricFamily(
            "canary_jobs_unfinished", "Jobs queued or running, by version, status and source "
            "(live, golden or shadow)", labels=["version", "status", "source"],
        )  # fmt: skip
        finished = CounterMetricFamily(
            "canary_jobs_finished", "Finished jobs by version, outcome and source",
            labels=["version", "outcome", "source"],
        )  # fmt: skip
        for version, status, source, n in sorted(overview.jobs_by_status(self.engine)):
            if status in TERMINAL_STATUSES:
                finished.add_metric([version, status.lower(), source], n)
            else:
                unfinished.add_metric([version, status.lower(), source], n)
        failures = CounterMetricFamily(
            "canary_job_failures", "Failed jobs by version and failure kind",
            labels=["version", "kind"],
        )  # fmt: skip
        for version, kind, n in sorted(overview.failures_by_kind(self.engine)):
            failures.add_metric([version, kind], n)
        yield from (unfinished, finished, failures)

    def _latency(self) -> Iterator[Metric]:
        latencies: tuple[tuple[str, overview.Duration, str], ...] = (
            ("canary_render_seconds", "inference_ms", "Pipeline time of successful jobs"),
            ("canary_end_to_end_seconds", "end_to_end_ms", "Submission to result"),
        )
        for name, duration, help_text in latencies:
            family = HistogramMetricFamily(name, help_text, labels=["version"])
            for version, h in sorted(
                overview.latency_histograms(self.engine, duration, LATENCY_BUCKETS_S).items()
            ):
                buckets = [(f"{bound:g}", count) for bound, count in h.buckets]
                buckets.append(("+Inf", h.count))
                family.add_metric([version], buckets, h.total_seconds)
            yield family

    def _workers(self, reading: BrokerReading) -> Iterator[Metric]:
        """Online render workers (answering the broker) by version, and by device and
        revision (mixed revisions of one version are a deployment error)."""
        records = {r.node: r for r in overview.worker_records(self.engine)}
        per_version = dict.fromkeys(self.settings.versions, 0)
        counts: dict[tuple[str, str, str], int] = {}
        for node, queues in reading.consumers.items():
            for version in self.settings.versions:
                if queue_for(version) in queues:  # its workers consume all its queues
                    record = records.get(node)
                    device = record.device if record else "unknown"
                    revision = (record.revision or "none") if record else "unknown"
                    key = (version, device, revision)
                    counts[key] = counts.get(key, 0) + 1
                    per_version[version] += 1
        online = GaugeMetricFamily(
            "canary_workers_online", "Online render workers per version (0: none)",
            labels=["version"],
        )  # fmt: skip
        for version, n in per_version.items():
            online.add_metric([version], n)
        by_revision = GaugeMetricFamily(
            "canary_workers_online_by_revision", "Online render workers by version, device "
            "and weights revision", labels=["version", "device", "revision"],
        )  # fmt: skip
        for labels, n in sorted(counts.items()):
            by_revision.add_metric(list(labels), n)
        yield from (online, by_revision)

    def _storage_breakers(self, reading: BrokerReading) -> Iterator[Metric]:
        """Object-store outages as the workers see them (tasks/spool.py): breakers open
        (the worker takes no jobs), images waiting in spools, spooled images uploaded."""
        versions = self.settings.versions
        opened, spooled = dict.fromkeys(versions, 0), dict.fromkeys(versions, 0)
        uploads, requeued = dict.fromkeys(versions, 0), dict.fromkeys(versions, 0)
        for state in reading.breakers.values():
            if state.version in opened:
                opened[state.version] += int(state.open)
                spooled[state.version] += state.spooled
                uploads[state.version] += state.uploads_total
                requeued[state.version] += state.requeued_total
        families: tuple[GaugeMetricFamily | CounterMetricFamily, ...] = (
            GaugeMetricFamily(
                "canary_storage_breaker_open", "Render workers of the version whose object-"
                "store breaker is open (storage down: they take no jobs and spool images)",
                labels=["version"],
            ),
            GaugeMetricFamily(
                "canary_spooled_images", "Rendered images waiting in workers' spools for the "
                "object store (their jobs stay RUNNING)", labels=["version"],
            ),
            CounterMetricFamily(
                "canary_spool_uploads", "Spooled images uploaded and their jobs recorded, "
                "summed over the live workers (restarts from 0 with a worker)",
                labels=["version"],
            ),
            CounterMetricFamily(
                "canary_spool_requeued_jobs", "Jobs sent back to the queue because the spool "
                "was full or unwritable, summed over the live workers", labels=["version"],
            ),
        )  # fmt: skip
        for family, values in zip(families, (opened, spooled, uploads, requeued), strict=True):
            for version, n in values.items():
                family.add_metric([version], n)
            yield family

    def _experiments(self) -> Iterator[Metric]:
        stage = GaugeMetricFamily(
            "canary_experiment_stage", "1 for each experiment's live stage",
            labels=["experiment", "stage"],
        )  # fmt: skip
        index = GaugeMetricFamily(
            "canary_experiment_stage_index", "Rank of the live stage (0: the first)",
            labels=["experiment"],
        )  # fmt: skip
        share = GaugeMetricFamily(
            "canary_experiment_candidate_share_ratio", "Candidate share per segment now (0-1)",
            labels=["experiment", "segment"],
        )  # fmt: skip
        rolled_back = GaugeMetricFamily(
            "canary_experiment_rolled_back", "1 when rolled back", labels=["experiment"]
        )
        verdict = GaugeMetricFamily(
            "canary_experiment_gate_verdict", "1 for the gate verdict of the latest daily "
            "dashboard (advance, hold, rollback); absent before the first",
            labels=["experiment", "verdict"],
        )  # fmt: skip
        for experiment in self.experiments.config.experiments:
            names = [s.name for s in experiment.stages]
            stage.add_metric([experiment.name, experiment.stage], 1)
            index.add_metric([experiment.name], names.index(experiment.stage))
            rolled_back.add_metric([experiment.name], int(experiment.rolled_back))
            for segment, value in experiment.current_stage.shares.items():
                share.add_metric(
                    [experiment.name, segment], 0.0 if experiment.rolled_back else value
                )
            latest = self._latest_verdict(experiment.name)
            if latest is not None:
                for name in VERDICTS:
                    verdict.add_metric([experiment.name, name], int(name == latest))
        yield from (stage, index, share, rolled_back, verdict)

    def _latest_verdict(self, experiment: str) -> str | None:
        from scheduler.dashboards import dashboard_paths

        path = dashboard_paths(self.settings, experiment, None)[1]
        try:
            found = json.loads(path.read_text(encoding="utf-8"))["gates"]["verdict"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return found if found in VERDICTS else None


def registry_for(
    settings: Settings, engine: Engine, app: Celery, experiments: ExperimentSource
) -> CollectorRegistry:
    """The registry ``GET /metrics`` exports: one collector (and broker probe) per app."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CanaryCollector(settings, engine, app, experiments))
    return registry


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(caller: Scraper, registry: MetricsRegistry) -> Response:
    """Prometheus text format (scrape with an operator key as bearer token)."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
