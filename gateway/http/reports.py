"""A/B reports over HTTP (operators): the JSON report and the daily dashboard page.

The dashboard for a past day is served from the file the daily job wrote; without one
(or for today) it is computed on request. The statistics stack (scipy, statsmodels,
matplotlib) is imported by the first request that computes a report, not when the API
starts.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.auth import Principal
from gateway.experiment_source import ExperimentSource
from gateway.http.auth import require_role
from gateway.http.dependencies import AppSettings, Database, Experiments
from scheduler.dashboards import dashboard_paths
from storage.models import ApiKeyRole, utcnow

Operator = Annotated[Principal, Depends(require_role(ApiKeyRole.OPERATOR))]
Day = Annotated[date | None, Query(alias="date", description="Last day (UTC); default today")]


router = APIRouter()


def known(experiments: ExperimentSource, name: str) -> None:
    if name not in {e.name for e in experiments.config.experiments}:
        raise HTTPException(404, f"no experiment {name}")


def live(
    settings: Settings, engine: Engine, experiments: ExperimentSource, name: str, day: date
) -> dict[str, Any]:
    from analysis.experiment_report import report_for_experiment

    return report_for_experiment(settings, engine, experiments.config, name, day)


@router.get("/v1/experiments/{name}/report")
def experiment_report(
    name: str,
    caller: Operator,
    settings: AppSettings,
    engine: Database,
    experiments: Experiments,
    day: Day = None,
) -> dict[str, Any]:
    """Every metric per variant with lifts, intervals, SRM and the gate verdict."""
    known(experiments, name)
    day = day or utcnow().date()
    _, stored = dashboard_paths(settings, name, day)
    if stored.exists() and day < utcnow().date():
        report: dict[str, Any] = json.loads(stored.read_text(encoding="utf-8"))
        return report
    return live(settings, engine, experiments, name, day)


@router.get("/v1/experiments/{name}/dashboard.html", response_class=HTMLResponse)
def dashboard(
    name: str,
    caller: Operator,
    settings: AppSettings,
    engine: Database,
    experiments: Experiments,
    day: Day = None,
) -> HTMLResponse:
    known(experiments, name)
    day = day or utcnow().date()
    stored, _ = dashboard_paths(settings, name, day)
    if stored.exists() and day < utcnow().date():
        return HTMLResponse(stored.read_text(encoding="utf-8"))
    from analysis.dashboard import render_dashboard
    from analysis.gates import load_policy

    limit = load_policy(settings.gate_policy_file).guardrails.p95_latency_max_ms
    return HTMLResponse(render_dashboard(live(settings, engine, experiments, name, day), limit))
