"""The incremental daily report (analysis.rollups) on real SQLite and PostgreSQL: it gives
the full recomputation's numbers with the completed days rolled up, finds late events and
late job outcomes and stays exact until the roll-up folds them in (and counts them); the
daily job rolls up; `canary report` reads roll-ups by default and recomputes with --full;
the benchmark's side-by-side run works on a small data set.

The data is benchmarks.daily_report's generator at a small size (200 users, 2,000 jobs,
20,000 events over 14 days). Numbers must be equal, except the mean peak VRAM on
PostgreSQL: its per-job values are fractions, and PostgreSQL sums rows in whatever order the
plan gives them, so the last bits of its sums of squares may differ (the full report is no
more reproducible than that between two plans); those are held to 1e-9 relative.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from analysis import rollups
from analysis.experiment_report import build_report
from analysis.gates import GatePolicy
from benchmarks import daily_report as bench
from scheduler.dashboards import roll_up_experiments
from storage.db import get_engine, init_db
from storage.models import Assignment, Event, Job, JobStatus, utcnow
from tests.integration.conftest import PROJECT_ROOT, TEST_POSTGRES_URL

pytestmark = pytest.mark.integration
FIRST, LAST = bench.FIRST_DAY, bench.LAST_DAY
ONE_DAY = timedelta(days=1)
SIZES = bench.Sizes(200, 2_000, 20_000)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database with the small generated data set (made once per backend)."""
    if request.param == "sqlite":
        found = f"sqlite:///{tmp_path_factory.mktemp('incremental') / 'canary.db'}"
    else:
        schema = f"canary_incr_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        found = f"{TEST_POSTGRES_URL}?options=-csearch_path%3D{schema}"
    engine = get_engine(found)
    init_db(engine)
    bench.generate(engine, SIZES)
    yield found
    engine.dispose()
    if request.param == "postgresql":
        with psycopg.connect(TEST_POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def report(engine: Engine, *, incremental: bool) -> dict[str, Any]:
    return build_report(
        engine, bench.experiment(), FIRST, LAST, GatePolicy(), incremental=incremental
    )


def assert_same_numbers(full: dict[str, Any], other: dict[str, Any]) -> None:
    for path, a, b in bench.report_differences(full, other):
        assert path.startswith(".metrics.mean_peak_vram_gb."), (path, a, b)
        assert isinstance(a, float) and isinstance(b, float), (path, a, b)
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-300), (path, a, b)


def test_incremental_report_equals_full_and_handles_late_data(url: str) -> None:
    engine = get_engine(url)
    bench.clear_rollups(engine)
    full = report(engine, incremental=False)
    assert full["rollup"] == {"mode": "full"}
    assert full["users"]["baseline"] > 0 and full["users"]["candidate"] > 0

    # nothing rolled up yet: everything live, the same numbers
    nothing = report(engine, incremental=True)
    assert nothing["rollup"]["stored_days"] == 0
    assert_same_numbers(full, nothing)

    run = rollups.roll_up(engine, bench.EXPERIMENT, FIRST, LAST - ONE_DAY)
    assert run.rolled_up == [FIRST + n * ONE_DAY for n in range(13)] and not run.rerolled
    stored = report(engine, incremental=True)
    assert stored["rollup"]["stored_days"] == 13
    assert stored["rollup"]["stored_through"] == (LAST - ONE_DAY).isoformat()
    assert stored["rollup"]["late_events"] == 0
    assert_same_numbers(full, stored)
    # a report that ends earlier reads a prefix of the same roll-ups, its last day too (a
    # quick retry just after that day's midnight then does not count: stored both ways)
    earlier = LAST - 3 * ONE_DAY
    shorter = build_report(engine, bench.experiment(), FIRST, earlier, GatePolicy())
    shorter_incremental = build_report(
        engine, bench.experiment(), FIRST, earlier, GatePolicy(), incremental=True
    )
    assert shorter_incremental["rollup"]["stored_through"] == earlier.isoformat()
    assert_same_numbers(shorter, shorter_incremental)

    # late data: a long view of a day-5 image, a day-4 login of a user exposed on day 2,
    # and a job of day 6 or later that was still running at its roll-up and has succeeded
    day5, day6 = FIRST + 4 * ONE_DAY, FIRST + 5 * ONE_DAY
    with Session(engine, expire_on_commit=False) as session:
        job = session.exec(
            select(Job)
            .where(col(Job.experiment) == bench.EXPERIMENT, col(Job.status) == "SUCCEEDED")
            .where(col(Job.created_at) >= rollups.midnight(day5))
            .where(col(Job.created_at) < rollups.midnight(day5 + ONE_DAY))
            .order_by(col(Job.id))
            .limit(1)
        ).one()[0]
        user = session.exec(
            select(Assignment)
            .where(col(Assignment.experiment) == bench.EXPERIMENT)
            .where(col(Assignment.first_seen) >= rollups.midnight(FIRST + ONE_DAY))
            .where(col(Assignment.first_seen) < rollups.midnight(FIRST + 2 * ONE_DAY))
            .order_by(col(Assignment.user_id))
            .limit(1)
        ).one()[0]
        running = session.exec(
            select(Job)
            .where(col(Job.experiment) == bench.EXPERIMENT, col(Job.status) == "RUNNING")
            .where(col(Job.arm).is_not(None))
            .where(col(Job.created_at) >= rollups.midnight(day6))
            .where(col(Job.created_at) < rollups.midnight(LAST - ONE_DAY))
            .order_by(col(Job.created_at))
            .limit(1)
        ).one()[0]
        day6 = running.created_at.date()  # the first day from day 6 on with an unfinished job
        session.add(
            Event(
                id=f"late-view-{uuid.uuid4()}", type="image_viewed", user_id=job.user_id,
                job_id=job.id, occurred_at=job.created_at + timedelta(days=1), dwell_ms=40_000,
            )
        )  # fmt: skip
        session.add(
            Event(
                id=f"late-login-{uuid.uuid4()}", type="login", user_id=user.user_id,
                occurred_at=user.first_seen + timedelta(days=2),
            )
        )  # fmt: skip
        session.commit()
    with engine.begin() as connection:
        connection.execute(
            update(Job)
            .where(col(Job.id) == running.id)
            .values(
                status=JobStatus.SUCCEEDED, finished_at=utcnow(), end_to_end_ms=3000.0,
                peak_vram_bytes=18 * 2**30,
            )
        )  # fmt: skip
    full = report(engine, incremental=False)
    found = report(engine, incremental=True)
    assert found["rollup"]["late_events_found"] == 2
    assert found["rollup"]["late_outcomes_found"] == 1
    assert found["rollup"]["late_events"] == 2
    # the login on day 4 reaches the cohorts stored by the roll-ups of days 4..12
    assert day5.isoformat() in found["rollup"]["stale_days"]
    assert day6.isoformat() in found["rollup"]["stale_days"]
    assert found["rollup"]["stored_through"] < day5.isoformat()
    assert_same_numbers(full, found)

    rerun = rollups.roll_up(engine, bench.EXPERIMENT, FIRST, LAST - ONE_DAY)
    assert (rerun.late_events, rerun.late_outcomes) == (2, 1) and not rerun.rolled_up
    assert {day5, day6} <= set(rerun.rerolled)
    folded = report(engine, incremental=True)
    assert folded["rollup"]["stored_days"] == 13
    assert folded["rollup"]["late_events_found"] == 0
    assert folded["rollup"]["late_events_folded"] == 2
    assert folded["rollup"]["late_outcomes_folded"] == 1
    assert folded["rollup"]["late_events"] == 2
    assert_same_numbers(full, folded)
    # nothing new came: the next run re-rolls nothing
    quiet = rollups.roll_up(engine, bench.EXPERIMENT, FIRST, LAST - ONE_DAY)
    assert not quiet.rerolled and quiet.late_events == 0


def test_daily_job_rolls_up_the_completed_days(url: str, tmp_path: Path) -> None:
    engine = get_engine(url)
    bench.clear_rollups(engine)
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(bench.CONFIG))
    from canary.settings import Settings

    settings = Settings(experiment_file=experiment_file, database_url=url, report_days=14)
    # the job at 00:45 on the day after the last: every day of the window is complete
    now = datetime.combine(LAST + ONE_DAY, datetime.min.time(), UTC) + timedelta(minutes=45)
    (run,) = roll_up_experiments(settings, engine, now)
    assert run.rolled_up == [LAST - 13 * ONE_DAY + n * ONE_DAY for n in range(14)]
    # before the lookahead for quick retries has passed, the last day is not complete
    bench.clear_rollups(engine)
    early = datetime.combine(LAST + ONE_DAY, datetime.min.time(), UTC) + timedelta(seconds=30)
    (run,) = roll_up_experiments(settings, engine, early)
    assert run.rolled_up[-1] == LAST - ONE_DAY
    assert report(engine, incremental=True)["rollup"]["stored_days"] == 13


def test_cli_report_reads_roll_ups_and_recomputes_with_full(url: str, tmp_path: Path) -> None:
    if not url.startswith("sqlite"):
        pytest.skip("the CLI is the same on both databases; SQLite is enough here")
    engine = get_engine(url)
    bench.clear_rollups(engine)
    experiment_file = tmp_path / "experiments.yaml"
    experiment_file.write_text(yaml.safe_dump(bench.CONFIG))
    env = {
        **os.environ, "CANARY_DATABASE_URL": url, "CANARY_EXPERIMENT_FILE": str(experiment_file),
        "CANARY_HOME": str(tmp_path / "home"), "COLUMNS": "200",
    }  # fmt: skip

    def canary(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "canary.cli", "report", bench.EXPERIMENT, "--date",
             LAST.isoformat(), "--json", *args],
            env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    rolled = canary("--roll-up")
    assert rolled.returncode == 0, rolled.stderr
    assert re.search(r"rolled up 14 days, re-rolled 0 \(0 late events", rolled.stderr)
    full = canary("--full")
    assert full.returncode == 0, full.stderr
    incremental, recomputed = json.loads(rolled.stdout), json.loads(full.stdout)
    assert incremental["rollup"]["stored_days"] == 14
    assert recomputed["rollup"] == {"mode": "full"}
    assert_same_numbers(recomputed, incremental)


def test_benchmark_prints_full_and_incremental_side_by_side() -> None:
    """A quick smoke run of the side-by-side benchmark (figures not meaningful at this size;
    the numbers' agreement is). SQLite only: test_measurement_benchmarks_smoke's --quick run
    goes through the same incremental part on PostgreSQL too."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.daily_report", "--users", "100", "--jobs", "1000",
         "--events", "10000", "--backend", "sqlite"],
        capture_output=True, text=True, cwd=PROJECT_ROOT,
        env={**os.environ, "BENCH_POSTGRES_URL": TEST_POSTGRES_URL}, timeout=240, check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for backend in ("sqlite",):
        line = re.search(
            rf"^{backend} incremental report \(all 14 days rolled up\): [\d.]+ s \| \d+ "
            r"queries \| nightly roll-up of the completed day [\d.]+ s \| daily update [\d.]+ s "
            r"= [\d.]+ of the full report's [\d.]+ s$",
            out,
            re.MULTILINE,
        )
        assert line, out
        section = out[line.end() :].split("\n\n")[0]
        agreement = re.findall(r"numbers(?: vs the full report)?: (.*)$", section, re.MULTILINE)
        assert len(agreement) == 4, section
        for said in agreement:
            assert said.startswith("identical") or (
                "(in mean_peak_vram_gb)" in said
                and float(re.search(r"difference ([\d.e+-]+)", said).group(1)) < 1e-9  # type: ignore[union-attr]
            ), section
        late = re.search(r"late data .*: report [\d.]+ s, ([\d,]+) late events", section)
        folded = re.search(r"\(([\d,]+) late events folded in\)", section)
        assert late and folded and late.group(1) == folded.group(1) != "0", section


def test_rollup_rows_are_what_the_days_queries_give(url: str) -> None:
    """What is stored for a day is the metric's per-user rows of that day, read back."""
    engine = get_engine(url)
    bench.clear_rollups(engine)
    day = FIRST + 10 * ONE_DAY  # it also completes the cohorts of days 3 and 4
    rollups.roll_up_day(engine, bench.EXPERIMENT, day)
    with engine.connect() as connection:
        counts = dict(
            connection.execute(
                text("SELECT metric, count(*) FROM metric_unit_rows GROUP BY metric")
            ).all()
        )
    assert set(counts) == {
        "success_rate", "mean_peak_vram_gb", "long_dwell_share", "download_rate",
        "quick_retry_share", "quick_retry_share@last", "negative_feedback_rate",
        "retention_7d", "generations_per_week", "dwell_vs_retention",
    }  # fmt: skip  # trial_to_paid is never stored
    assert all(n > 0 for n in counts.values()), counts
    assert rollups.is_complete(day, rollups.midnight(day + ONE_DAY) + rollups.LOOKAHEAD)
    assert not rollups.is_complete(day, rollups.midnight(day + ONE_DAY))
