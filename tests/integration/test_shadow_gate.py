"""Shadow health as a gate input: an experiment at its first stage (internal) with shadow
traffic leaves it only on a passing shadow-health verdict on the report window's pairs;
the verdict is in the report, the dashboard and `canary status`. Pairs are job rows
written directly (SQLite; the pairing query runs on both backends in test_shadow_copies)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy.engine import Engine
from sqlmodel import Session

from analysis.dashboard import render_dashboard
from analysis.experiment_report import build_report
from analysis.gates import GatePolicy
from analysis.shadow import Margins
from canary.cli import overview
from canary.settings import Settings
from gateway.experiments import Experiment, parse_config
from gateway.shadow import shadow_job_id
from storage.db import get_engine, init_db
from storage.models import Job, JobStatus

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 20)
MARGINS = Margins(max_failure_increase=0.2, max_p95_ratio=1.5, min_pairs=30)


def config_data(stage: str, shadow: float = 0.05) -> dict[str, Any]:
    return {
        "default_version": "v1",
        "experiments": [
            {
                "name": "v2-canary",
                "baseline": "v1",
                "candidate": "v2",
                "stage": stage,
                "stages": [
                    {"name": "internal", "shares": {"default": 0.0}, "shadow": shadow},
                    {"name": "5%", "shares": {"default": 0.05}, "shadow": shadow},
                ],
            }
        ],
    }


def experiment_at(stage: str, shadow: float = 0.05) -> Experiment:
    return parse_config(config_data(stage, shadow), ["v1", "v2"]).experiments[0]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    found = get_engine(f"sqlite:///{tmp_path / 'canary.db'}")
    init_db(found)
    yield found
    found.dispose()


def add_pairs(engine: Engine, n: int, *, shadow_failure: str | None = None) -> None:
    """``n`` finished live baseline jobs and their shadow copies (the first copy fails
    with ``shadow_failure`` when given)."""
    at = datetime.combine(DAY, datetime.min.time(), UTC) + timedelta(hours=10)
    rows = []
    for i in range(n):
        live = Job(
            id=f"live-{i}", user_id=f"u{i}", experiment="v2-canary", arm="baseline",
            segment="everyone_else", model_version="v1", prompt=f"scene {i}", seed=i,
            steps=2, guidance=7.0, width=64, height=64, status=JobStatus.SUCCEEDED,
            created_at=at, inference_ms=1000.0 + i % 7, end_to_end_ms=1500.0,
        )  # fmt: skip
        failed = shadow_failure is not None and i == 0
        copy = Job(
            id=shadow_job_id(live.id), source="shadow", shadow_of=live.id,
            priority_class="background", experiment="v2-canary", segment=live.segment,
            model_version="v2", prompt=live.prompt, seed=i, steps=2, guidance=7.0, width=64,
            height=64, status=JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
            failure_kind=shadow_failure if failed else None, created_at=at,
            inference_ms=None if failed else 1000.0 + i % 7,
        )  # fmt: skip
        rows += [live, copy]
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()


def report_at(engine: Engine, stage: str) -> dict[str, Any]:
    return build_report(
        engine, experiment_at(stage), DAY, DAY, GatePolicy(), shadow_margins=MARGINS
    )


def shadow_check(report: dict[str, Any]) -> dict[str, Any] | None:
    found = [c for c in report["gates"]["checks"] if c["name"] == "shadow health"]
    return found[0] if found else None


def test_too_few_pairs_hold_the_candidate_at_internal(engine: Engine) -> None:
    add_pairs(engine, 10)
    report = report_at(engine, "internal")
    assert report["shadow"]["required"] and report["shadow"]["health"]["verdict"] == "insufficient"
    check = shadow_check(report)
    assert check is not None and check["status"] == "insufficient"
    assert check["detail"] == "10 live jobs copied to the candidate and compared: " + (
        "10 finished pairs, 30 needed"
    )
    assert report["gates"]["verdict"] != "advance"
    assert any(r.startswith("shadow health: 10 live jobs") for r in report["gates"]["reasons"])


def test_enough_clean_pairs_pass(engine: Engine) -> None:
    add_pairs(engine, 40)
    check = shadow_check(report_at(engine, "internal"))
    assert check is not None and check["status"] == "pass", check
    assert check["detail"] == "40 live jobs copied to the candidate and compared"


def test_a_new_failure_kind_on_the_candidate_holds(engine: Engine) -> None:
    add_pairs(engine, 40, shadow_failure="oom")  # a kind the live jobs never had
    report = report_at(engine, "internal")
    check = shadow_check(report)
    assert check is not None and check["status"] == "fail"
    assert check["breach"] == "hold" and "new failure kinds: oom" in check["detail"]
    assert report["gates"]["verdict"] != "rollback"  # no user is on the candidate yet


def test_later_stages_show_the_verdict_without_gating(engine: Engine) -> None:
    add_pairs(engine, 10)
    report = report_at(engine, "5%")
    assert report["shadow"] is not None and not report["shadow"]["required"]
    assert shadow_check(report) is None
    off = build_report(engine, experiment_at("internal", shadow=0.0), DAY, DAY, GatePolicy())
    assert off["shadow"] is None and shadow_check(off) is None


def test_the_dashboard_and_canary_status_show_the_verdict(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_pairs(engine, 10)
    report = report_at(engine, "internal")
    page = render_dashboard(report)
    assert "Shadow traffic: <span class='chip wait'>insufficient</span>" in page
    assert "the gate needs a pass to leave this stage" in page
    assert "10 finished pairs, 30 needed" in page

    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps(config_data("internal")))
    settings = Settings(home=tmp_path, experiment_file=experiments, versions=["v1", "v2"])
    latest = overview.latest_dashboard(settings, "v2-canary")
    latest.parent.mkdir(parents=True)
    latest.write_text(json.dumps(report))
    _, (entry,) = overview._experiments(settings, engine)
    assert entry["shadow"] == {
        "share": 0.05, "verdict": "insufficient", "pairs": 10, "gate": True,
        "day": DAY.isoformat(),
    }  # fmt: skip
    console = Console(width=250, record=True)
    monkeypatch.setattr(overview, "console", console)
    overview._print_experiments(settings, {"experiments": [entry]})
    text = console.export_text()
    assert "5% copied; insufficient (10 pairs, 2026-11-20, gates leaving this stage)" in text

    experiments.write_text(json.dumps(config_data("internal", shadow=0.0)))
    _, (entry,) = overview._experiments(settings, engine)
    assert entry["shadow"] is None
    overview._print_experiments(settings, {"experiments": [entry]})
    assert " off " in console.export_text()
