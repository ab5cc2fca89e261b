"""Checks on a real `/metrics` exposition: naming conventions, and that the shipped alert
rules and Grafana dashboard only query metrics that are exported."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
# every label an exported series may carry: small closed sets, never a job or user id
ALLOWED_LABELS = {
    "version", "status", "source", "outcome", "kind", "device", "revision", "experiment",
    "stage", "segment", "verdict", "state", "le", "reason", "class", "tenant",
}  # fmt: skip
UNITS = ("_seconds", "_bytes", "_ratio", "_messages")
MAX_SERIES_PER_FAMILY = 200
METRIC_NAME = re.compile(r"\bcanary_[a-z0-9_]+")


def scrape_with(scrape: Callable[[], str], names: tuple[str, ...], timeout: float = 20) -> str:
    """The first exposition from ``scrape`` that has a sample of every one of ``names``.

    Series read from the broker are left out of a scrape the broker does not answer in
    time (gateway/http/broker_probe.py): on a loaded machine, the next scrape has them.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = scrape()
        exported = exported_sample_names(text)
        if all(name in exported for name in names) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def assert_prometheus_conventions(exposition: str) -> None:
    families = list(text_string_to_metric_families(exposition))
    assert families
    for family in families:
        name = family.name
        assert name.startswith("canary_"), name
        assert family.documentation, f"{name} has no HELP"
        assert family.type in {"counter", "gauge", "histogram"}, (name, family.type)
        assert len(family.samples) <= MAX_SERIES_PER_FAMILY, name
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (sample.name, sample.labels)
        if family.type == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples), name
        if family.type == "gauge":
            assert not name.endswith(("_total", "_count", "_sum", "_bucket")), name
        if family.type == "histogram":
            assert name.endswith(UNITS), f"{name}: a histogram names its unit"
    names = {f.name for f in families}
    assert "canary_broker_up" in names
    assert {"canary_jobs_finished", "canary_job_failures"} <= {
        f.name for f in families if f.type == "counter"
    }


def exported_sample_names(exposition: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}


def queries() -> dict[str, str]:
    """Every PromQL expression shipped in monitoring/, by where it is."""
    found = {}
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found[f"alert {rule['alert']}"] = rule["expr"]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return found


def assert_monitoring_files_use(exposition: str) -> None:
    exported = exported_sample_names(exposition)
    for where, expr in queries().items():
        used = set(METRIC_NAME.findall(expr))
        assert used, f"{where} queries no canary metric"
        assert used <= exported, f"{where} queries {sorted(used - exported)}, not exported"
