"""Priority classes in the A/B report, on SQLite and PostgreSQL: the job metrics count only
the configured classes (interactive and bulk by default, never background), the report says
so, and it shows queue wait P50/P95 per class and arm (background too), so that a backlog
reads as queue wait and not as a slow model. Incremental (rolled-up) and full reports stay
equal with background jobs in the experiment."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from analysis import rollups
from analysis.dashboard import render_dashboard
from analysis.experiment_report import build_report
from analysis.gates import GatePolicy
from benchmarks import daily_report as bench
from canary.cli import ab_report
from storage import metrics as sql
from storage.db import get_engine
from storage.models import Assignment, Job, JobStatus
from tests.integration.conftest import fresh_database_url

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 2)
EXPERIMENT = "exp-classes"
NOTE = (
    "health metrics count interactive and bulk jobs; background jobs (golden replays and "
    "other work nobody waits for) are excluded"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    postgres = request.getfixturevalue("postgres_schema_url") if request.param != "sqlite" else ""
    found = get_engine(fresh_database_url(request.param, tmp_path, postgres))
    yield found
    found.dispose()


def _job(
    arm: str | None,
    priority: str,
    wait: float | None,
    *,
    end_to_end: float | None = 5_000.0,
    status: str = JobStatus.SUCCEEDED,
    experiment: str | None = EXPERIMENT,
    at: datetime | None = None,
    user: str = "u1",
    failure: str | None = None,
) -> Job:
    return Job(
        id=str(uuid.uuid4()), user_id=user, experiment=experiment, arm=arm, segment="default",
        priority_class=priority, model_version="v1" if arm != "candidate" else "v2",
        prompt="a cat", seed=1, steps=2, guidance=7.0, width=64, height=64, status=status,
        created_at=at or datetime.combine(DAY, datetime.min.time(), UTC) + timedelta(hours=3),
        queue_wait_ms=wait, end_to_end_ms=end_to_end if status == JobStatus.SUCCEEDED else None,
        peak_vram_bytes=2**30 if status == JobStatus.SUCCEEDED else None, failure_kind=failure,
    )  # fmt: skip


def _fill(engine: Engine) -> None:
    jobs = []
    # baseline: interactive waits 10..100 ms, bulk 1..20 s, background 5, 6, 7 million ms
    jobs += [_job("baseline", "interactive", 10.0 * i, user=f"i{i}") for i in range(1, 11)]
    jobs += [_job("baseline", "bulk", 1000.0 * i, user=f"b{i}") for i in range(1, 21)]
    jobs += [_job("baseline", "background", w, end_to_end=1e9, user="i1") for w in (7e6, 5e6, 6e6)]
    # candidate: interactive waits 1..4 ms; a background failure and a huge latency
    jobs += [_job("candidate", "interactive", float(w), user=f"c{w}") for w in (4, 2, 3, 1)]
    jobs += [_job("candidate", "background", 9e6, end_to_end=1e9, user="c1")]
    jobs += [
        _job("candidate", "background", 8e6, status=JobStatus.FAILED, failure="oom", user="c1")
    ]
    # not counted anywhere: queued (no wait yet), another experiment, outside the window,
    # a golden replay (no experiment)
    jobs += [_job("baseline", "bulk", None, status=JobStatus.QUEUED)]
    jobs += [_job("baseline", "interactive", 1e7, experiment="other")]
    jobs += [_job("baseline", "interactive", 1e7, at=datetime(2026, 11, 5, tzinfo=UTC))]
    jobs += [_job(None, "background", 1e7, experiment=None)]
    with Session(engine) as session:
        session.add_all(jobs)
        session.commit()


def test_queue_wait_per_class_and_arm(engine: Engine) -> None:
    _fill(engine)
    window = sql.Window.days(EXPERIMENT, DAY, DAY)
    found = sql.queue_wait_by_class(engine, window)
    assert found == {
        ("interactive", "baseline"): {"n": 10, "p50": 50.0, "p95": 100.0},
        ("bulk", "baseline"): {"n": 20, "p50": 10_000.0, "p95": 19_000.0},
        ("background", "baseline"): {"n": 3, "p50": 6e6, "p95": 7e6},
        ("interactive", "candidate"): {"n": 4, "p50": 2.0, "p95": 4.0},
        ("background", "candidate"): {"n": 2, "p50": 8e6, "p95": 9e6},
    }
    # every class is shown whatever the health metrics count
    assert sql.queue_wait_by_class(engine, sql.Window.days(EXPERIMENT, DAY, DAY, ["bulk"])) == (
        found
    )


def test_background_jobs_never_move_the_health_metrics(engine: Engine) -> None:
    _fill(engine)
    window = sql.Window.days(EXPERIMENT, DAY, DAY)
    assert window.classes == ("interactive", "bulk")
    p95 = sql.percentile_by_arm(engine, window, 0.95, by_day=False)
    assert p95 == {
        ("baseline", None): {"value": 5_000.0, "n": 30},
        ("candidate", None): {"value": 5_000.0, "n": 4},
    }
    assert sql.failures_by_kind(engine, window) == {}
    success = sql.sufficient_sums(engine, sql.success_rate, window, by_day=False)
    assert {key[0]: (sums[1], sums[2]) for key, sums in success.items()} == {
        "baseline": (30.0, 30.0),
        "candidate": (4.0, 4.0),
    }
    # a narrower set counts only its classes
    bulk = sql.Window.days(EXPERIMENT, DAY, DAY, ["bulk"])
    assert sql.percentile_by_arm(engine, bulk, 0.95, by_day=False) == {
        ("baseline", None): {"value": 5_000.0, "n": 20}
    }


@pytest.mark.parametrize("classes", [["background"], ["interactive", "background"], [], ["urgent"]])
def test_refused_class_sets(classes: list[str]) -> None:
    with pytest.raises(ValueError):
        sql.Window.days(EXPERIMENT, DAY, DAY, classes)


def test_class_set_is_normalised() -> None:
    window = sql.Window.days(EXPERIMENT, DAY, DAY, ["BULK", "interactive"])
    assert window.classes == ("interactive", "bulk")


# ---------------------------------------------------------------- the whole report


def _add_background_jobs(engine: Engine) -> int:
    """Background jobs of experiment users (their own arm and segment), every day: huge
    latency, failures, long waits. Returns how many."""
    with Session(engine) as session:
        users = session.exec(
            select(Assignment)
            .where(col(Assignment.experiment) == bench.EXPERIMENT)
            .order_by(col(Assignment.user_id))
            .limit(40)
        ).all()
        jobs = []
        for n, (user,) in enumerate(users):
            at = rollups.midnight(bench.FIRST_DAY + timedelta(days=n % bench.DAYS))
            at += timedelta(hours=12)
            job = _job(
                user.arm, "background", 3.6e6 + n, end_to_end=1e9, user=user.user_id, at=at,
                status=JobStatus.FAILED if n % 3 == 0 else JobStatus.SUCCEEDED,
                failure="timeout" if n % 3 == 0 else None,
            )  # fmt: skip
            job.experiment, job.segment, job.model_version = bench.EXPERIMENT, user.segment, "v1"
            jobs.append(job)
        session.add_all(jobs)
        session.commit()
        return len(jobs)


def _report(engine: Engine, *, incremental: bool = False, **extra: Any) -> dict[str, Any]:
    return build_report(
        engine, bench.experiment(), bench.FIRST_DAY, bench.LAST_DAY, GatePolicy(),
        incremental=incremental, **extra,
    )  # fmt: skip


def test_report_says_which_classes_and_ignores_background(
    engine: Engine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench.generate(engine, bench.Sizes(100, 1_000, 5_000))
    before = _report(engine)
    added = _add_background_jobs(engine)
    after = _report(engine)

    # only the queue-wait table moves: every metric, latency, failure count stays put
    changed = {path for path, _, _ in bench.report_differences(before, after)}
    assert changed and all(path.startswith(".queue_wait[") for path in changed), changed
    assert after["health_scope"] == {
        "classes": ["interactive", "bulk"], "excluded": ["background"], "note": NOTE,
    }  # fmt: skip
    rows = {row["class"]: row for row in after["queue_wait"]}
    assert list(rows) == ["interactive", "bulk", "background"]
    assert not rows["background"]["in_health_metrics"] and rows["bulk"]["in_health_metrics"]
    background_n = sum(rows["background"][arm]["n"] for arm in ("baseline", "candidate"))
    assert background_n == added
    assert rows["background"]["baseline"]["p50"] >= 3.6e6

    # roll-ups: the incremental report gives the same numbers with background jobs around
    bench.clear_rollups(engine)
    rollups.roll_up(engine, bench.EXPERIMENT, bench.FIRST_DAY, bench.LAST_DAY - timedelta(1))
    incremental = _report(engine, incremental=True)
    assert incremental["rollup"]["stored_days"] == 13
    for path, a, b in bench.report_differences(after, incremental):
        assert path.startswith(".metrics.mean_peak_vram_gb."), (path, a, b)
        assert a == pytest.approx(b, rel=1e-9), (path, a, b)
    # another class set is recomputed in full (roll-ups hold the default classes' rows)
    bulk_only = _report(engine, incremental=True, health_classes=["bulk"])
    assert bulk_only["rollup"]["mode"] == "full"
    assert bulk_only["health_scope"]["excluded"] == ["interactive", "background"]
    with pytest.raises(ValueError, match="never count background"):
        _report(engine, health_classes=["interactive", "background"])

    # the terminal report and the dashboard name the classes
    monkeypatch.setattr(ab_report, "console", Console(width=200, force_terminal=False))
    ab_report.print_ab_report(after)
    text = capsys.readouterr().out
    assert f"priority classes: {NOTE}" in text
    assert "Queue wait by priority class" in text
    assert "no (excluded)" in text
    print(text)  # shown with -s: the sample in the change's description
    html = render_dashboard(after)
    assert NOTE in html and "Queue wait by priority class" in html
    assert "excluded from health metrics" in html
