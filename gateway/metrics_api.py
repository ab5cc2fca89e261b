"""`GET /metrics`: Prometheus metrics, collected from the broker and the database per scrape.

Flower exports task events but not queue depth; this endpoint adds what an operator
alerts on: queue depth per version, jobs by version and outcome, failure kinds, render
and end-to-end latency histograms, online workers per version and revision, and each
experiment's live stage. Counts come from the job table, so they survive restarts and
agree across several API processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.auth import Principal
from gateway.experiment_source import ExperimentSource
from gateway.http_auth import require_role
from storage import overview
from storage.models import TERMINAL_STATUSES, ApiKeyRole, Job
from tasks.queues import consumers, queue_depth

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 4, 6, 8.5, 12, 20, 30, 60, 120, 300)
Scraper = Annotated[Principal, Depends(require_role(ApiKeyRole.OPERATOR))]


class CanaryCollector(Collector):
    def __init__(
        self, settings: Settings, engine: Engine, app: Celery, experiments: ExperimentSource
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.app = app
        self.experiments = experiments

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._jobs()
        yield from self._latency()
        yield from self._workers()
        yield from self._experiments()

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "canary_queue_depth", "Messages waiting on a version's queue", labels=["version"]
        )
        for version in self.settings.versions:
            depth.add_metric([version], queue_depth(self.app, self.settings.queue_for(version)))
        yield depth

    def _jobs(self) -> Iterator[Metric]:
        current = GaugeMetricFamily(
            "canary_jobs", "Jobs by version, status and source (live or golden)",
            labels=["version", "status", "source"],
        )  # fmt: skip
        finished = GaugeMetricFamily(
            "canary_jobs_finished", "Finished jobs by version and outcome (only ever grows)",
            labels=["version", "outcome"],
        )  # fmt: skip
        totals: dict[tuple[str, str], int] = {}
        for version, status, source, n in overview.jobs_by_status(self.engine):
            current.add_metric([version, status, source], n)
            if status in TERMINAL_STATUSES:
                key = (version, status.lower())
                totals[key] = totals.get(key, 0) + n
        for (version, outcome), n in sorted(totals.items()):
            finished.add_metric([version, outcome], n)
        failures = GaugeMetricFamily(
            "canary_job_failures", "Failed jobs by version and failure kind",
            labels=["version", "kind"],
        )  # fmt: skip
        for version, kind, n in overview.failures_by_kind(self.engine):
            failures.add_metric([version, kind], n)
        yield from (current, finished, failures)

    def _latency(self) -> Iterator[Metric]:
        for name, column, help_text in (
            ("canary_render_seconds", Job.inference_ms, "Pipeline time of successful jobs"),
            ("canary_end_to_end_seconds", Job.end_to_end_ms, "Submission to result"),
        ):
            family = HistogramMetricFamily(name, help_text, labels=["version"])
            for version, h in sorted(
                overview.latency_histograms(self.engine, column, LATENCY_BUCKETS_S).items()
            ):
                buckets = [(f"{bound:g}", count) for bound, count in h.buckets]
                buckets.append(("+Inf", h.count))
                family.add_metric([version], buckets, h.total_seconds)
            yield family

    def _workers(self) -> Iterator[Metric]:
        """Online render workers (answering the broker) by version, device and revision."""
        records = {r.node: r for r in overview.worker_records(self.engine)}
        online = consumers(self.app, timeout=0.5)
        counts: dict[tuple[str, str, str], int] = {}
        for node, queues in online.items():
            for version in self.settings.versions:
                if self.settings.queue_for(version) in queues:
                    record = records.get(node)
                    device = record.device if record else "unknown"
                    revision = (record.revision or "none") if record else "unknown"
                    key = (version, device, revision)
                    counts[key] = counts.get(key, 0) + 1
        workers = GaugeMetricFamily(
            "canary_workers", "Online render workers", labels=["version", "device", "revision"]
        )
        for labels, n in sorted(counts.items()):
            workers.add_metric(list(labels), n)
        yield workers

    def _experiments(self) -> Iterator[Metric]:
        stage = GaugeMetricFamily(
            "canary_experiment_stage", "1 for each experiment's live stage; index is its rank",
            labels=["experiment", "stage", "index"],
        )  # fmt: skip
        share = GaugeMetricFamily(
            "canary_experiment_candidate_share", "Candidate share per segment now",
            labels=["experiment", "segment"],
        )  # fmt: skip
        rolled_back = GaugeMetricFamily(
            "canary_experiment_rolled_back", "1 when rolled back", labels=["experiment"]
        )
        for experiment in self.experiments.config.experiments:
            names = [s.name for s in experiment.stages]
            stage.add_metric(
                [experiment.name, experiment.stage, str(names.index(experiment.stage))], 1
            )
            rolled_back.add_metric([experiment.name], int(experiment.rolled_back))
            for segment, value in experiment.current_stage.shares.items():
                share.add_metric(
                    [experiment.name, segment], 0.0 if experiment.rolled_back else value
                )
        yield from (stage, share, rolled_back)


def metrics_router(
    settings: Settings, engine: Engine, app: Celery, experiments: ExperimentSource
) -> APIRouter:
    router = APIRouter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CanaryCollector(settings, engine, app, experiments))

    @router.get("/metrics", include_in_schema=False)
    def metrics(caller: Scraper) -> Response:
        """Prometheus text format (scrape with an operator key as bearer token)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
