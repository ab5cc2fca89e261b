"""Prometheus metrics of fair share among bulk tenants (tasks/release.py), for `GET /metrics`.

The collector in gateway/http/metrics.py adds them with ``yield from fair_share_metrics(...)``:

- ``canary_jobs_waiting{state, tenant, version}``: bulk jobs no worker has taken yet, per
  tenant: ``held`` in the database until fair share releases them, ``queued`` in the
  broker. Only tenants with waiting bulk jobs have series, so the family stays small while
  no batch is waiting. A tenant is an API key shown by its name (``key:<name>``), else the
  CLI batch the jobs came in (``batch:<id>``), else ``local``.

From the job table, like the other job gauges: exported whether or not the broker answers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.engine import Engine

from storage import fair_share

HELD = "held"
QUEUED = "queued"


def fair_share_metrics(engine: Engine) -> Iterator[Metric]:
    waiting = fair_share.waiting_by_tenant(engine)
    names = fair_share.key_names(engine, sorted({w.tenant for w in waiting}))
    # two keys may share a name: their jobs are added up under it (one series per label set)
    counts: dict[tuple[str, str, str], int] = {}
    for row in waiting:
        tenant = names.get(row.tenant, row.tenant)
        for state, n in ((HELD, row.held), (QUEUED, row.queued)):
            counts[(state, tenant, row.version)] = counts.get((state, tenant, row.version), 0) + n
    family = GaugeMetricFamily(
        "canary_jobs_waiting",
        "Bulk jobs no worker has taken yet, per version and tenant (API key as key:<name>, "
        "else batch:<id> or local): state held = kept in the database until fair share "
        "releases them (at most CANARY_FAIR_SHARE_QUEUED x the key's share weight per tenant "
        "in the broker), queued = sent to the broker, waiting for a worker",
        labels=["state", "tenant", "version"],
    )
    for labels, n in sorted(counts.items()):
        family.add_metric(list(labels), n)
    yield family
